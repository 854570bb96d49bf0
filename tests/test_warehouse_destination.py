"""The warehouse destinations in a running hub: ``[destinations.NAME]`` with ``kind =
"parquet"`` or ``"postgresql"``, fed by the hub's relay as events are recorded and customers
erased."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import duckdb
import pytest

from prm_core.config import Config, load_config
from prm_core.feed.reading import bounds
from prm_core.feed.relay import open_destinations
from prm_core.hub import Hub
from prm_core.plugins import collect_registrations, make_plugin_manager
from prm_core.privacy.erasure import erase_customer
from prm_core.testing import POSTGRES_ENV, postgres_database
from prm_core.warehouse.kinds import WarehouseSink
from prm_core.warehouse.loading import Warehouse
from prm_core.warehouse.parquet import ParquetWarehouse
from prm_core.warehouse.postgres import PostgresWarehouse

ANN = "ann@example.com"


def visit(i: int, who: str) -> dict[str, Any]:
    return {
        "id": f"v{i}",
        "type": "page",
        "occurred_at": f"2026-11-0{1 + i % 3}T09:00:00Z",
        "identities": {"email": who},
        "data": {"path": f"/p/{i}", "who": who},
    }


async def caught_up(hub: Hub, warehouse: Warehouse) -> None:
    """Until the relay has delivered every change there is to the warehouse."""
    _, head = await hub.store.read(bounds)
    for _ in range(600):
        if (await warehouse.mark()).through >= head:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"the destination did not reach position {head}")


def duck(path: Path, table: str, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect()
    con.execute(f"CREATE VIEW t AS SELECT * FROM read_parquet('{path}/{table}/**/*.parquet', hive_partitioning = true)")
    return con.execute(sql).fetchall()


async def test_a_parquet_destination_follows_the_hub(database_url, tmp_path):
    lake = tmp_path / "lake"
    raw = {"destinations": {"lake": {"kind": "parquet", "path": str(lake), "batch_size": 5}}}
    config = Config(database_url=database_url, public_url="http://hub.test", raw=raw)
    async with Hub.open(config, autoload=True) as hub:
        await hub.record(hub.parse_events({"events": [visit(i, f"u{i % 4}@example.com") for i in range(12)]}, "web"))
        await hub.record(hub.parse_events({"events": [visit(i, ANN) for i in range(12, 15)]}, "web"))
        warehouse = ParquetWarehouse(lake)
        await caught_up(hub, warehouse)
        assert duck(lake, "events", "SELECT count(*), count(DISTINCT event_id) FROM t") == [(15, 15)]
        assert len(duck(lake, "customers", "SELECT DISTINCT customer_id FROM t")) == 5

        await erase_customer(hub, f"email:{ANN}")
        await caught_up(hub, warehouse)
        datas = duck(lake, "events", "SELECT data FROM t WHERE event_id IN ('v12', 'v13', 'v14')")
        assert [json.loads(d) for (d,) in datas] == [{"erased": True}] * 3
        assert not [p for p in lake.rglob("*.parquet") if ANN.encode() in p.read_bytes()]


@pytest.fixture
def warehouse_url() -> Iterator[str]:
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set: the postgresql destination needs a server")
    yield from postgres_database(base)


async def test_a_postgresql_destination_follows_the_hub(database_url, warehouse_url):
    raw = {"destinations": {"bi": {"kind": "postgresql", "url": warehouse_url, "schema": "bi"}}}
    config = Config(database_url=database_url, public_url="http://hub.test", raw=raw)
    async with Hub.open(config, autoload=True) as hub:
        people = [visit(i, ANN if i < 2 else "bo@example.com") for i in range(5)]
        await hub.record(hub.parse_events({"events": people}, "web"))
        warehouse = PostgresWarehouse(warehouse_url, "bi")
        try:
            await caught_up(hub, warehouse)
            conn = await asyncpg.connect(warehouse_url)
            try:
                assert await conn.fetchval("SELECT count(*) FROM bi.events") == 5
                await erase_customer(hub, f"email:{ANN}")
                await caught_up(hub, warehouse)
                erased = await conn.fetch("SELECT erased, identities FROM bi.customers WHERE erased")
                assert [(r["erased"], r["identities"]) for r in erased] == [(True, [])]
                assert await conn.fetchval("SELECT count(*) FROM bi.events WHERE data::text LIKE '%ann@%'") == 0
            finally:
                await conn.close()
        finally:
            await warehouse.close()


def test_the_documented_destinations_are_accepted_at_start(monkeypatch, tmp_path):
    """docs/warehouse.md's [destinations] as the hub checks them when it starts (the sample is
    not started whole: it names a folder on the reader's machine and their database)."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "warehouse.md").read_text(encoding="utf-8")
    marker = "test_the_documented_destinations_are_accepted_at_start -->\n```toml\n"
    sample = page[page.index(marker) + len(marker) :].split("```", 1)[0]
    monkeypatch.setenv("WAREHOUSE_URL", "postgresql://user:password@db.example.com/warehouse")
    file = tmp_path / "prm.toml"
    file.write_text(sample, encoding="utf-8")
    config = load_config(file, database_url=f"sqlite:///{tmp_path}/prm.db")
    registrations = collect_registrations(make_plugin_manager(autoload=False), config)
    opened = open_destinations(config, registrations.destination_kinds)
    assert [(d.settings.name, d.settings.kind) for d in opened] == [("bi", "postgresql"), ("lake", "parquet")]
    lake = opened[1].sink
    assert isinstance(lake, WarehouseSink) and isinstance(lake.warehouse, ParquetWarehouse)
    assert str(lake.warehouse.path) == "/srv/prm-warehouse" and lake.warehouse.compact_files == 50
    bi = opened[0].sink
    assert isinstance(bi, WarehouseSink) and isinstance(bi.warehouse, PostgresWarehouse)
    assert bi.warehouse.schema == "prm"
