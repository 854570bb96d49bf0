"""The ``postgresql`` destination: the warehouse tables in a PostgreSQL schema.

A star schema for BI tools that speak SQL (Metabase, Superset): ``events``, ``offers``,
``fulfillments`` and ``merges`` are the facts, ``customers`` and ``dialogues`` the dimensions
they name. Unlike the Parquet files, each table holds one row per key, the current one:
rows are upserted (``INSERT ... ON CONFLICT DO UPDATE``) and an older version never
overwrites a newer one (``position``). The schema and its tables are created if missing.

Each batch is one transaction: its rows, its erasures and the warehouse's mark (table
``_prm_warehouse``) commit together, so a batch delivered again changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ..store.engine import async_url
from .loading import Batch, Mark
from .reading import Columns, as_json, as_money, as_time
from .schema import BIGINT, FLAG, JSON, MONEY, TABLES, TEXT, TEXTS, TIME

__all__ = ["PostgresWarehouse", "warehouse_tables"]

_SQL_TYPES: dict[str, Any] = {
    TEXT: sa.Text(),
    JSON: postgresql.JSONB(),
    BIGINT: sa.BigInteger(),
    TIME: sa.DateTime(timezone=True),
    MONEY: sa.Numeric(18, 4),
    FLAG: sa.Boolean(),
    TEXTS: postgresql.ARRAY(sa.Text()),
}
_CONVERT = {TIME: as_time, JSON: as_json, MONEY: as_money}
_CHUNK = 1000
MARK_TABLE = "_prm_warehouse"


def warehouse_tables(schema: str) -> tuple[sa.MetaData, dict[str, sa.Table], sa.Table]:
    """The tables in ``schema``: the warehouse's six and its mark."""
    meta = sa.MetaData(schema=schema)
    tables = {}
    for table in TABLES.values():
        columns = [
            sa.Column(c.name, _SQL_TYPES[c.type], primary_key=c.name in table.key, nullable=c.name not in table.key)
            for c in table.columns
        ]
        t = sa.Table(table.name, meta, *columns, comment=table.about)
        for name in table.customer:
            sa.Index(f"ix_{table.name}_{name}", t.c[name])
        tables[table.name] = t
    sa.Index("ix_events_occurred_at", tables["events"].c.occurred_at)
    mark = sa.Table(
        MARK_TABLE, meta, sa.Column("name", sa.Text(), primary_key=True), sa.Column("mark", postgresql.JSONB())
    )
    return meta, tables, mark


class PostgresWarehouse:
    """The warehouse tables in ``schema`` of the database at ``url`` (see the module's docstring)."""

    def __init__(self, url: str, schema: str) -> None:
        self.url = url
        self.schema = schema
        self.meta, self.tables, self.mark_table = warehouse_tables(schema)
        self._engine: AsyncEngine | None = None
        self._created = False

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            # parameters stay out of error messages: they are personal data
            self._engine = create_async_engine(async_url(self.url), pool_size=1, max_overflow=1, hide_parameters=True)
        return self._engine

    async def mark(self) -> Mark:
        async with self.engine.connect() as conn:
            return await conn.run_sync(self._read_mark)

    def _read_mark(self, conn: Connection) -> Mark:
        exists = conn.execute(sa.select(sa.func.to_regclass(f"{self.schema}.{MARK_TABLE}"))).scalar()
        if exists is None:
            return Mark()
        doc = conn.execute(sa.select(self.mark_table.c.mark).where(self.mark_table.c.name == "mark")).scalar()
        return Mark() if doc is None else Mark.from_json(doc)

    async def write(self, batch: Batch) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(self.write_now, batch)

    def write_now(self, conn: Connection, batch: Batch) -> None:
        if not self._created:
            conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
            self.meta.create_all(conn, checkfirst=True)
            self._created = True
        for name, cols in batch.tables.items():
            self._upsert(conn, name, cols)
        for position, ids in batch.erasures:
            self.erase(conn, ids, position)
        m = self.mark_table
        upsert = postgresql.insert(m).values(name="mark", mark=batch.mark.to_json())
        conn.execute(upsert.on_conflict_do_update(index_elements=[m.c.name], set_={"mark": upsert.excluded.mark}))

    def _upsert(self, conn: Connection, name: str, cols: Columns) -> None:
        table = TABLES[name]
        t = self.tables[name]
        rows = _rows(name, cols)
        if not rows:
            return
        stmt = postgresql.insert(t)
        stmt = stmt.on_conflict_do_update(
            index_elements=[t.c[k] for k in table.key],
            set_={c: stmt.excluded[c] for c in table.names if c not in table.key},
            # a version delivered late (or again) never replaces a newer one
            where=t.c.position <= stmt.excluded.position,
        )
        for start in range(0, len(rows), _CHUNK):
            conn.execute(stmt, rows[start : start + _CHUNK])

    def erase(self, conn: Connection, customer_ids: Sequence[str], before: int) -> None:
        """Blank what the rows of these customers written before ``before`` say about them."""
        ids = list(customer_ids)
        events, customers = self.tables["events"], self.tables["customers"]
        conn.execute(
            events.update()
            .where(events.c.customer_id.in_(ids), events.c.position < before)
            .values(data={"erased": True})
        )
        own = self.tables["changes"]
        conn.execute(own.update().where(own.c.customer_id.in_(ids), own.c.position < before).values(data={}))
        blank: Mapping[str, Any] = {"traits": {}, "identities": [], "tier": None, "tier_source": None, "erased": True}
        conn.execute(
            customers.update().where(customers.c.customer_id.in_(ids), customers.c.position < before).values(**blank)
        )

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None


def _rows(name: str, cols: Columns) -> list[dict[str, Any]]:
    """Columns as row dicts of Python values (datetimes, decoded JSON, decimals)."""
    columns = TABLES[name].columns
    converted = []
    for c in columns:
        convert = _CONVERT.get(c.type)
        values = cols[c.name]
        converted.append([convert(v) for v in values] if convert else values)
    names = [c.name for c in columns]
    return [dict(zip(names, row, strict=True)) for row in zip(*converted, strict=True)]
