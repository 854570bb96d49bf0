"""``prm export``: everything the hub holds, once, into a warehouse.

The same loading a warehouse destination does (:mod:`.loading`): the history as of a
snapshot of the feed (every table, including what was recorded before the feed existed),
then every change after it, up to the newest. Progress is kept at the target itself (the
mark), so an interrupted export continues where it stopped, and a later run adds only what
changed since; a warehouse destination configured on the same folder or schema continues
from there too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from attrs import define
from sqlalchemy.engine import Connection
from tqdm import tqdm

from ..config import Config
from ..errors import ConfigError
from ..feed import Change
from ..feed.reading import bounds, read_changes
from ..store.engine import Store
from .kinds import PYARROW_MISSING, SCHEMA_NAME, pyarrow_installed
from .loading import Loader, Warehouse
from .reading import history_size

__all__ = ["ExportResult", "export", "open_target"]


@define
class ExportResult:
    history_rows: int = 0
    changes: int = 0
    position: int = 0


def open_target(target: str, schema: str = "prm") -> Warehouse:
    """``parquet:DIR`` or a ``postgresql://`` URL as a warehouse."""
    if target.startswith("parquet:"):
        if not pyarrow_installed():
            raise ConfigError(f"--to parquet: {PYARROW_MISSING}")
        from .parquet import ParquetWarehouse

        folder = Path(target.removeprefix("parquet:")).expanduser()
        if not str(folder) or (folder.exists() and not folder.is_dir()):
            raise ConfigError("--to parquet:DIR must name a folder")
        return ParquetWarehouse(folder)
    if target.startswith(("postgresql://", "postgres://", "postgresql+asyncpg://")):
        if not SCHEMA_NAME.match(schema):
            raise ConfigError("--schema must be a lower-case SQL name (letters, digits, _)")
        from .postgres import PostgresWarehouse

        return PostgresWarehouse(target, schema)
    raise ConfigError("--to must be parquet:DIR or a postgresql:// URL")


def _changes_after(conn: Connection, after: int, limit: int) -> list[Change]:
    # check=False: the target's mark is never past this feed's head unless it was written
    # from another hub's, and then reading nothing is the answer; a mark that retention
    # passed raises FellBehind, which names the problem
    return read_changes(conn, after, limit, check=False).changes


async def export(
    config: Config,
    target: str,
    *,
    schema: str = "prm",
    batch_size: int = 1000,
    page: int = 10_000,
    progress: bool = True,
    stop_after: Callable[[ExportResult], bool] | None = None,
) -> ExportResult:
    """Export everything into ``target`` (see :func:`open_target`), resuming an earlier run.

    ``stop_after`` (tests, benchmarks) is asked after each page or batch written whether to
    stop there, as an interruption would.
    """
    warehouse = open_target(target, schema)
    store = Store.open(config.database_url, pool_size=2)
    result = ExportResult()
    try:
        await store.migrate()
        loader = Loader(warehouse, store.read, page=page)
        mark = await loader.mark()
        if not mark.history_done():
            total = await store.read(lambda conn: history_size(conn, mark.snapshot))
            stopped = False

            with tqdm(total=total, unit=" rows", desc="history", disable=not progress) as bar:

                def advance(table: str, rows: int) -> None:
                    bar.update(rows)
                    result.history_rows += rows
                    if stop_after is not None and stop_after(result):
                        raise _Stop

                try:
                    mark = await loader.history(advance)
                except _Stop:
                    stopped = True
            if stopped:
                result.position = (await loader.mark()).through
                return result
        _, head = await store.read(bounds)
        through = mark.through
        with tqdm(total=max(0, int(head) - through), unit=" changes", desc="changes", disable=not progress) as bar:
            while True:
                batch = await store.read(functools.partial(_changes_after, after=through, limit=batch_size))
                if not batch:
                    break
                result.changes += await loader.changes(batch)
                bar.update(batch[-1].seq - through)
                through = batch[-1].seq
                if stop_after is not None and stop_after(result):
                    break
        result.position = through
        return result
    finally:
        await warehouse.close()
        await store.dispose()


class _Stop(Exception):
    """Raised from the progress callback to stop the history where it is."""
