"""The ``parquet`` and ``postgresql`` destination kinds.

.. code-block:: toml

    [destinations.lake]
    kind = "parquet"
    path = "/srv/warehouse"          # one folder per table under it
    compact_files = 50               # fold a day's small files into one past this many (0: never)

    [destinations.bi]
    kind = "postgresql"
    url = "env:WAREHOUSE_URL"        # postgresql://user:password@host/db
    schema = "prm"                   # created if missing

A new warehouse first receives everything the hub holds (``history = false`` skips that),
then every change. ``pyarrow`` comes with the ``warehouse`` extra (``pip install
'prm-hub[warehouse]'``); a hub configured with a ``parquet`` destination and without it stops
as it starts, saying so.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ..feed import Change, DestinationKind, DestinationSettings
from ..store.engine import Store
from .loading import Loader, Warehouse

__all__ = ["SCHEMA_NAME", "WarehouseSink", "open_parquet", "open_postgresql", "warehouse_destination_kinds"]

SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
PYARROW_MISSING = "needs pyarrow, which is not installed: pip install 'prm-hub[warehouse]'"


def pyarrow_installed() -> bool:
    try:
        import pyarrow  # noqa: F401  # only whether it imports
    except ImportError:
        return False
    return True


class WarehouseSink:
    """Delivers the feed to a warehouse: its history on the first delivery, then each batch.

    It reads the rows the changes name from the hub's database through a store of its own,
    opened on the first delivery from the hub's ``database_url``.
    """

    def __init__(self, settings: DestinationSettings, warehouse: Warehouse) -> None:
        self.settings = settings
        self.warehouse = warehouse
        self.history = settings.flag("history", default=True)
        self._store: Store | None = None
        self._loader: Loader | None = None

    async def _ready(self) -> Loader:
        if self._loader is None:
            if self._store is None:
                self._store = Store.open(self.settings.config.database_url, pool_size=2)
            loader = Loader(self.warehouse, self._store.read)
            if self.history:
                # an interrupted history continues from the warehouse's mark on the next delivery
                await loader.history()
            self._loader = loader
        return self._loader

    async def deliver(self, changes: Sequence[Change]) -> None:
        loader = await self._ready()
        await loader.changes(changes)

    async def close(self) -> None:
        await self.warehouse.close()
        if self._store is not None:
            await self._store.dispose()


def open_parquet(settings: DestinationSettings) -> WarehouseSink:
    if not pyarrow_installed():
        raise settings.invalid("kind", PYARROW_MISSING)
    from .parquet import ParquetWarehouse

    path = Path(settings.text("path")).expanduser()
    if path.exists() and not path.is_dir():
        raise settings.invalid("path", "must be a folder")
    compact = settings.integer("compact_files", default=50, minimum=0)
    return WarehouseSink(settings, ParquetWarehouse(path, compact_files=compact))


def open_postgresql(settings: DestinationSettings) -> WarehouseSink:
    from .postgres import PostgresWarehouse

    url = settings.text("url")
    if not url.startswith(("postgresql://", "postgresql+asyncpg://", "postgres://")):
        raise settings.invalid("url", "must be a postgresql:// URL")
    schema = settings.text("schema", default="prm")
    if not SCHEMA_NAME.match(schema):
        raise settings.invalid("schema", "must be a lower-case SQL name (letters, digits, _)")
    return WarehouseSink(settings, PostgresWarehouse(url, schema))


def warehouse_destination_kinds() -> list[DestinationKind]:
    """The kinds the core registers with its own (``prm_core.feed.builtin``)."""
    return [
        DestinationKind(
            name="parquet",
            open=open_parquet,
            about="Parquet files per table, partitioned by day, for DuckDB, Spark, pandas and BI tools",
        ),
        DestinationKind(
            name="postgresql",
            open=open_postgresql,
            about="a star schema in PostgreSQL, upserted, for BI tools that speak SQL",
        ),
    ]
