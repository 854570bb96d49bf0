"""The warehouse: Parquet files and a PostgreSQL schema of the hub's facts, kept by the feed."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import duckdb
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from prm_core import hookimpl
from prm_core.cli import main
from prm_core.config import Config
from prm_core.errors import ConfigError
from prm_core.feed import Change, DestinationSettings, NewChange
from prm_core.feed.reading import read_changes
from prm_core.hub import Hub
from prm_core.privacy.erasure import erase_customer
from prm_core.testing import POSTGRES_ENV, postgres_database
from prm_core.warehouse.export import ExportResult, export
from prm_core.warehouse.kinds import open_parquet, open_postgresql
from prm_core.warehouse.loading import Loader
from prm_core.warehouse.parquet import MARK_FILE, ParquetWarehouse, arrow_schema
from prm_core.warehouse.postgres import PostgresWarehouse
from prm_core.warehouse.reading import take_snapshot
from prm_core.warehouse.schema import BIGINT, FLAG, JSON, MONEY, TABLES, TEXT, TEXTS, TIME

ANN = "ann@example.com"


def event(i: int, day: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"e{i}",
        "type": "page",
        "occurred_at": f"2026-11-{day:02d}T10:{i % 60:02d}:00Z",
        "identities": {"email": f"user{i % 3}@example.com"},
        "data": {"n": i},
        **extra,
    }


async def record(hub: Any, events: list[dict[str, Any]], touchpoint: str = "web") -> None:
    await hub.record(hub.parse_events({"events": events}, touchpoint))


async def prm(*args: str) -> Any:
    """The ``prm`` command, run as from a shell (in a thread: it runs its own event loop)."""
    return await asyncio.to_thread(CliRunner().invoke, main, list(args))


def duck(path: Path, table: str, sql: str = "SELECT * FROM t") -> list[tuple[Any, ...]]:
    con = duckdb.connect()
    con.execute(f"CREATE VIEW t AS SELECT * FROM read_parquet('{path}/{table}/**/*.parquet', hive_partitioning = true)")
    return con.execute(sql).fetchall()


async def test_history_lands_in_day_partitions_duckdb_reads(hub, tmp_path):
    await record(hub, [event(i, 3 + i % 2) for i in range(10)])
    loader = Loader(ParquetWarehouse(tmp_path), hub.store.read, page=4)
    mark = await loader.history()
    assert mark.history_done()

    days = sorted(p.name for p in (tmp_path / "events").iterdir())
    assert days == ["day=2026-11-03", "day=2026-11-04"]
    rows = duck(tmp_path, "events", "SELECT event_id, type, customer_id, day, occurred_at FROM t ORDER BY event_id")
    assert [r[0] for r in rows] == sorted(f"e{i}" for i in range(10))
    assert {str(r[3]) for r in rows} == {"2026-11-03", "2026-11-04"}
    assert all(r[2].startswith("cus_") for r in rows)
    one = pq.read_table(next((tmp_path / "events").glob("day=2026-11-03/*.parquet")))
    assert {"event_id", "customer_id", "touchpoint", "type", "occurred_at"} <= set(one.schema.names)
    assert str(one.schema.field("occurred_at").type) == "timestamp[us, tz=UTC]"
    assert json.loads(one.column("data")[0].as_py()).keys() == {"n"}

    customers = duck(tmp_path, "customers", "SELECT customer_id, identities, event_count FROM t ORDER BY 1")
    assert len(customers) == 3
    assert sorted(c[1][0] for c in customers) == [f"email:user{i}@example.com" for i in range(3)]
    assert sum(c[2] for c in customers) == 10
    dialogues = duck(tmp_path, "dialogues", "SELECT count(*) FROM t")
    assert dialogues[0][0] >= 3
    assert json.loads((tmp_path / MARK_FILE).read_text())["history"]["events"]["done"] is True


async def test_export_command_resumes_after_an_interruption(hub, database_url, tmp_path):
    await record(hub, [event(i, 1 + i % 5) for i in range(40)])
    wh = tmp_path / "wh"
    target = f"parquet:{wh}"

    # interrupted after its second page: what was written stays, and the mark says where
    def second_page(result: ExportResult) -> bool:
        return result.history_rows >= 20

    first = await export(hub.config, target, page=10, progress=False, stop_after=second_page)
    assert first.history_rows == 20
    mark = json.loads((wh / MARK_FILE).read_text())
    assert mark["history"]["events"] == {"done": False, "after": mark["history"]["events"]["after"]}

    run = await prm("export", "--to", target, "--database", database_url)
    assert run.exit_code == 0, run.output
    assert "written, through position" in run.output
    events = duck(wh, "events", "SELECT event_id, count(*) FROM t GROUP BY 1")
    assert sorted(e[0] for e in events) == sorted(f"e{i}" for i in range(40))
    assert {e[1] for e in events} == {1}  # the interrupted page was written once, not twice

    again = await prm("export", "--to", target, "--database", database_url)
    assert again.exit_code == 0, again.output
    assert "0 history rows and 0 changes written" in again.output
    assert duck(wh, "events", "SELECT count(*) FROM t") == [(40,)]

    # later events come through the feed; an export stopped after its first batch of changes
    # continues from its mark
    await record(hub, [event(i, 6) for i in range(40, 60)])
    stopped = await export(hub.config, target, batch_size=5, progress=False, stop_after=lambda result: True)
    assert stopped.history_rows == 0 and stopped.changes == 5
    rest = await prm("export", "--to", target, "--database", database_url, "--batch-size", "7")
    assert rest.exit_code == 0, rest.output
    counts = duck(wh, "events", "SELECT event_id, count(*) FROM t GROUP BY 1")
    assert sorted(counts) == sorted((f"e{i}", 1) for i in range(60))


def test_export_refuses_a_target_it_does_not_know(database_url):
    run = CliRunner().invoke(main, ["export", "--to", "s3://bucket", "--database", database_url])
    assert run.exit_code == 1
    assert "--to must be parquet:DIR or a postgresql:// URL" in run.output


@pytest.fixture
def warehouse_url() -> Iterator[str]:
    """A throw-away PostgreSQL database for the warehouse (the hub's own may be SQLite)."""
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set: the postgresql destination needs a server")
    yield from postgres_database(base)


async def pg_rows(url: str, sql: str) -> list[Any]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


async def test_export_to_postgresql_builds_the_star_schema_and_upserts(hub, warehouse_url):
    await record(hub, [event(i, 2) for i in range(12)])
    run = await prm("export", "--to", warehouse_url, "--schema", "analytics", "--database", hub.config.database_url)
    assert run.exit_code == 0, run.output

    tables = await pg_rows(
        warehouse_url, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'analytics'"
    )
    assert {t["table_name"] for t in tables} == {
        "events", "customers", "dialogues", "offers", "fulfillments", "merges", "changes", "_prm_warehouse"
    }  # fmt: skip
    events = await pg_rows(warehouse_url, "SELECT event_id, customer_id, occurred_at, data FROM analytics.events")
    assert sorted(e["event_id"] for e in events) == sorted(f"e{i}" for i in range(12))
    assert all(e["occurred_at"].tzinfo is not None for e in events)
    per_customer = await pg_rows(
        warehouse_url,
        "SELECT c.identities, count(*) AS n FROM analytics.events e "
        "JOIN analytics.customers c USING (customer_id) GROUP BY 1 ORDER BY 1",
    )
    assert [(r["identities"], r["n"]) for r in per_customer] == [([f"email:user{i}@example.com"], 4) for i in range(3)]

    # more events, exported again: only what is new, nothing twice
    await record(hub, [event(i, 3) for i in range(12, 15)])
    again = await prm("export", "--to", warehouse_url, "--schema", "analytics", "--database", hub.config.database_url)
    assert again.exit_code == 0, again.output
    assert (await pg_rows(warehouse_url, "SELECT count(*) AS n FROM analytics.events"))[0]["n"] == 15


DOC = Path(__file__).resolve().parent.parent / "docs" / "warehouse.md"


def doc_block(test: str, lang: str) -> str:
    marker = f"<!-- sample: tested-by tests/test_warehouse.py::{test} -->"
    (block,) = re.findall(re.escape(marker) + rf"\n```{lang}\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    return str(block)


def test_the_documented_schema_is_the_written_one():
    """docs/warehouse.md lists every table's columns and types as schema.py defines them."""
    documented = {}
    for entry in re.split(r"\n(?=\w+:)", doc_block("test_the_documented_schema_is_the_written_one", "text").strip()):
        name, _, columns = entry.partition(":")
        documented[name] = [tuple(c.split()) for c in " ".join(columns.split()).split(", ")]
    shown = {
        TEXT: "text",
        BIGINT: "bigint",
        TIME: "timestamp",
        JSON: "json",
        MONEY: "money",
        FLAG: "bool",
        TEXTS: "text[]",
    }
    assert documented == {t.name: [(c.name, shown[c.type]) for c in t.columns] for t in TABLES.values()}
    for table in TABLES:
        assert arrow_schema(table).names == TABLES[table].names


async def test_the_documented_queries_run_in_duckdb(hub, tmp_path):
    await record(hub, [event(i, 1 + i % 3) for i in range(9)])
    await record(hub, [event(i, 1 + i % 3) for i in range(9, 12)], touchpoint="pos")
    await export(hub.config, f"parquet:{tmp_path}", progress=False)
    sql = doc_block("test_the_documented_queries_run_in_duckdb", "sql").replace("/srv/prm-warehouse", str(tmp_path))
    per_day, current = (q for q in sql.split(";") if q.strip())
    con = duckdb.connect()
    rows = con.execute(per_day).fetchall()
    assert sum(r[2] for r in rows) == 12
    assert {(r[0], str(r[1])) for r in rows} >= {("web", "2026-11-01"), ("pos", "2026-11-01")}
    customers = con.execute(current).fetchall()
    assert len(customers) == 3 and len({c[1] for c in customers}) == 3


async def feed_after(hub: Any, after: int, limit: int = 1000) -> list[Change]:
    return (await hub.store.read(lambda conn: read_changes(conn, after, limit, check=False))).changes


async def test_redelivered_batches_write_each_row_once(hub, tmp_path):
    loader = Loader(ParquetWarehouse(tmp_path), hub.store.read)
    await loader.history()  # an empty hub: the warehouse starts at the feed's beginning
    await record(hub, [event(i, 5) for i in range(10)])
    changes = await feed_after(hub, 0)
    assert {c.type for c in changes} >= {"event.recorded", "customer.created", "dialogue.opened"}
    first, rest = changes[:8], changes[8:]

    assert await loader.changes(first) == 8
    files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.parquet"))
    assert await loader.changes(first) == 0  # delivered again: already there, skipped
    # a fresh process whose mark was never moved past it (a crash before the mark) writes the
    # same files again, not more
    (tmp_path / MARK_FILE).write_text(json.dumps({**json.loads((tmp_path / MARK_FILE).read_text()), "position": 0}))
    assert await Loader(ParquetWarehouse(tmp_path), hub.store.read).changes(first) == 8
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.parquet")) == files

    # the rest written, then "lost" with the mark: the next process re-delivers it in other batches
    before = (tmp_path / MARK_FILE).read_text()
    await loader.changes(rest)
    (tmp_path / MARK_FILE).write_text(before)
    stray = tmp_path / "events" / "day=2026-11-05" / ".part-x.parquet.tmp"  # a write cut short
    stray.write_bytes(b"PAR1")
    again = Loader(ParquetWarehouse(tmp_path), hub.store.read)
    await again.changes(rest[:3])
    await again.changes(rest[3:])
    counts = duck(tmp_path, "events", "SELECT event_id, count(*) FROM t GROUP BY 1")
    assert sorted(counts) == sorted((f"e{i}", 1) for i in range(10))
    assert not list(tmp_path.rglob(".*.tmp"))
    current = duck(
        tmp_path,
        "dialogues",
        "SELECT dialogue_id FROM t QUALIFY row_number() OVER (PARTITION BY dialogue_id ORDER BY position DESC) = 1",
    )
    assert len(current) == len({c.data["dialogue_id"] for c in changes if c.type == "dialogue.opened"})


def contains(folder: Path, text: str) -> list[Path]:
    return [p for p in folder.rglob("*.parquet") if text.encode() in p.read_bytes()]


async def test_an_erasure_rewrites_the_partitions_that_held_the_person(hub, tmp_path):
    ann = {"email": ANN}
    evs = [{**event(i, 1 + i), "identities": ann, "data": {"note": f"ann said {ANN}"}} for i in range(3)]
    await record(hub, [*evs, event(7, 1)])
    await hub.update_customer(f"email:{ANN}", {"traits": {"first_name": "Ann"}})
    # history for what was there, the feed for what comes after
    loader = Loader(ParquetWarehouse(tmp_path), hub.store.read)
    await loader.history()
    await record(hub, [{**event(4, 4), "identities": ann, "data": {"note": ANN}}])
    mark = await loader.mark()
    await loader.changes(await feed_after(hub, mark.through))
    assert len(contains(tmp_path / "events", ANN)) == 4  # four days' partitions
    assert contains(tmp_path / "customers", ANN)

    erasure = await erase_customer(hub, f"email:{ANN}")
    changes = await feed_after(hub, (await loader.mark()).through)
    assert "customer.erased" in {c.type for c in changes}
    await loader.changes(changes)

    assert contains(tmp_path, ANN) == [] and contains(tmp_path, "Ann") == []
    ann_events = duck(tmp_path, "events", f"SELECT data FROM t WHERE customer_id = '{erasure.customer_id}'")
    assert [json.loads(d) for (d,) in ann_events] == [{"erased": True}] * 4
    others = duck(tmp_path, "events", f"SELECT data FROM t WHERE customer_id <> '{erasure.customer_id}'")
    assert [json.loads(d) for (d,) in others] == [{"n": 7}]
    versions = duck(
        tmp_path, "customers", f"SELECT erased, identities, traits FROM t WHERE customer_id = '{erasure.customer_id}'"
    )
    assert versions == [(True, [], "{}")]


async def test_the_postgresql_destination_upserts_once_and_obeys_erasure(hub, warehouse_url):
    await record(hub, [{**event(i, 6), "identities": {"email": ANN}} for i in range(3)])
    settings = DestinationSettings(
        name="bi", kind="postgresql", raw={"url": warehouse_url, "schema": "bi"}, config=hub.config
    )
    sink = open_postgresql(settings)
    try:
        # the first delivery writes the history, then the batch; the second is a re-delivery
        await record(hub, [event(3, 6), {**event(4, 6), "identities": {"email": ANN}}])
        changes = await feed_after(hub, 0)
        await sink.deliver(changes)
        await sink.deliver(changes)
        again = PostgresWarehouse(warehouse_url, "bi")  # a restarted hub writing the batch again
        await Loader(again, hub.store.read).changes(changes)  # its mark says done: nothing to do
        await again.close()
        rows = await pg_rows(warehouse_url, "SELECT event_id, data FROM bi.events ORDER BY event_id")
        assert [r["event_id"] for r in rows] == ["e0", "e1", "e2", "e3", "e4"]
        (ann,) = await pg_rows(warehouse_url, f"SELECT * FROM bi.customers WHERE '{'email:' + ANN}' = ANY(identities)")
        assert ann["event_count"] == 4 and ann["erased"] is False

        erasure = await erase_customer(hub, f"email:{ANN}")
        await sink.deliver(await feed_after(hub, changes[-1].seq))
        erased = await pg_rows(warehouse_url, f"SELECT * FROM bi.customers WHERE customer_id = '{erasure.customer_id}'")
        assert [(r["erased"], r["identities"], r["traits"]) for r in erased] == [(True, [], "{}")]
        datas = await pg_rows(
            warehouse_url, f"SELECT data FROM bi.events WHERE customer_id = '{erasure.customer_id}' ORDER BY event_id"
        )
        assert [json.loads(r["data"]) for r in datas] == [{"erased": True}] * 4
        assert [
            json.loads(r["data"])
            for r in await pg_rows(warehouse_url, "SELECT data FROM bi.events WHERE event_id = 'e3'")
        ] == [{"n": 3}]
    finally:
        await sink.close()


def test_a_parquet_destination_without_pyarrow_stops_the_hub_saying_so(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed: importing it fails
    settings = DestinationSettings(name="lake", kind="parquet", raw={"path": str(tmp_path)}, config=Config())
    with pytest.raises(ConfigError) as raised:
        open_parquet(settings)
    assert str(raised.value) == (
        "[destinations.lake].kind needs pyarrow, which is not installed: pip install 'prm-hub[warehouse]'"
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "[destinations.w].url is required"),
        ({"url": "mysql://x"}, "[destinations.w].url must be a postgresql:// URL"),
        ({"url": "postgresql://h/db", "schema": "Drop Table"}, "[destinations.w].schema must be a lower-case SQL name"),
    ],
)
def test_postgresql_settings_are_checked_at_start(raw, message):
    settings = DestinationSettings(name="w", kind="postgresql", raw=raw, config=Config())
    with pytest.raises(ConfigError) as raised:
        open_postgresql(settings)
    assert str(raised.value).startswith(message)


async def test_small_files_are_folded_into_one_per_partition(hub, tmp_path):
    loader = Loader(ParquetWarehouse(tmp_path, compact_files=3), hub.store.read)
    await loader.history()
    for n in range(7):
        await record(hub, [event(10 * n + i, 8) for i in range(2)])
    changes = await feed_after(hub, 0)
    events = [c for c in changes if c.type == "event.recorded"]
    # one batch per two events, as a destination with a small batch_size would get them
    bounds = [c.seq for c in events[1::2]]
    start = 0
    kept = {}
    for upto in bounds:
        batch = [c for c in changes if start < c.seq <= upto]
        await loader.changes(batch)
        start = upto
        for p in (tmp_path / "events" / "day=2026-11-08").glob("part-*.parquet"):
            kept[p.name] = p.read_bytes()
    names = sorted(p.name for p in (tmp_path / "events" / "day=2026-11-08").iterdir())
    # batches 1-3 folded, then with 4-6 into one file; batch 7 waits for two more
    assert [n.split("-")[0] for n in names] == ["compact", "part"], names
    assert sorted(duck(tmp_path, "events", "SELECT event_id FROM t")) == sorted(
        (f"e{10 * n + i}",) for n in range(7) for i in range(2)
    )
    # a compaction that stopped before removing what it folded: the next writer removes it
    leftover = next(name for name in kept if name not in names)
    (tmp_path / "events" / "day=2026-11-08" / leftover).write_bytes(kept[leftover])
    await record(hub, [event(99, 8)])
    await Loader(ParquetWarehouse(tmp_path, compact_files=3), hub.store.read).changes(await feed_after(hub, start))
    counts = duck(tmp_path, "events", "SELECT event_id, count(*) FROM t GROUP BY 1")
    assert len(counts) == 15 and {c for _, c in counts} == {1}


class Loyalty:
    """A plugin adding a change type of its own: points earned for each purchase."""

    @hookimpl
    def prm_event_changes(self, recorded):
        for r in recorded:
            if r.event.type == "order.completed":
                yield NewChange("loyalty.earned", r.customer_id, {"points": 10, "email": ANN})


async def test_changes_of_plugin_types_are_kept_and_erased_with_the_person(hub_config, tmp_path):
    purchase = {**event(1, 9), "type": "order.completed", "identities": {"email": ANN}}
    async with Hub.open(hub_config, plugins=[Loyalty()], autoload=True) as hub:
        await record(hub, [purchase])  # before the warehouse: it comes with the history
        loader = Loader(ParquetWarehouse(tmp_path), hub.store.read)
        await loader.history()
        await record(hub, [{**purchase, "id": "e2"}])  # after: it comes with the feed
        await loader.changes(await feed_after(hub, (await loader.mark()).through))
        rows = duck(tmp_path, "changes", "SELECT type, data FROM t ORDER BY position")
        assert [(t, json.loads(d)) for t, d in rows] == [("loyalty.earned", {"points": 10, "email": ANN})] * 2

        await erase_customer(hub, f"email:{ANN}")
        await loader.changes(await feed_after(hub, (await loader.mark()).through))
        assert [json.loads(d) for (d,) in duck(tmp_path, "changes", "SELECT data FROM t")] == [{}, {}]
        assert contains(tmp_path, ANN) == []


class GatedWarehouse(ParquetWarehouse):
    """Parquet files whose writes wait for a gate: a write still running when its caller gives up."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.writing = threading.Event()

    def write_now(self, batch: Any) -> None:
        self.writing.set()
        self.gate.wait(30)
        super().write_now(batch)


async def test_a_delivery_cancelled_mid_write_leaves_one_writer_and_no_duplicates(hub, tmp_path):
    warehouse = GatedWarehouse(tmp_path)
    warehouse.gate.set()
    loader = Loader(warehouse, hub.store.read)
    await loader.history()
    await record(hub, [event(i, 7) for i in range(6)])
    changes = await feed_after(hub, 0)
    warehouse.gate.clear()
    warehouse.writing.clear()
    first = asyncio.create_task(loader.changes(changes))
    await asyncio.to_thread(warehouse.writing.wait, 30)
    first.cancel()  # as a destination's delivery timeout does; the write goes on in its thread
    with pytest.raises(asyncio.CancelledError):
        await first
    retry = asyncio.create_task(loader.changes(changes))  # the relay delivers the batch again
    await asyncio.sleep(0.05)
    assert not retry.done()  # it waits for the write still running
    warehouse.gate.set()
    assert await retry == 0  # that write finished the batch: nothing left to write
    assert sorted(duck(tmp_path, "events", "SELECT event_id FROM t")) == [(f"e{i}",) for i in range(6)]


async def test_a_new_warehouse_folder_is_the_hub_users_alone(hub, tmp_path):
    await record(hub, [event(1, 1)])
    await export(hub.config, f"parquet:{tmp_path / 'new'}", progress=False)
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700


async def test_the_export_includes_what_was_recorded_before_the_feed(database_url, tmp_path):
    """Events recorded with no change records (before the feed's migration, or with the feed
    off) come with the history; those after it with the feed."""
    quiet = Config(database_url=database_url, raw={"feed": {"enabled": False}})
    async with Hub.open(quiet, autoload=True) as hub:
        await record(hub, [event(i, 2) for i in range(5)])
        assert await feed_after(hub, 0) == []
    wh = tmp_path / "wh"
    async with Hub.open(Config(database_url=database_url), autoload=True) as hub:
        await export(hub.config, f"parquet:{wh}", progress=False)
        await record(hub, [event(i, 3) for i in range(5, 8)])
        assert await feed_after(hub, 0) != []
        await export(hub.config, f"parquet:{wh}", progress=False)
    counts = duck(wh, "events", "SELECT event_id, count(*) FROM t GROUP BY 1")
    assert sorted(counts) == sorted((f"e{i}", 1) for i in range(8))


def guest(i: int, day: int) -> dict[str, Any]:
    """An event of a person of its own (no two of them wait for the same customer's lock)."""
    return {**event(i, day), "identities": {"email": f"guest{i}@example.com"}}


def events_once(path: Path) -> list[tuple[str, int]]:
    """The event ids whose rows the warehouse holds other than once."""
    return duck(path, "events", "SELECT event_id, count(*) FROM t GROUP BY 1 HAVING count(*) <> 1")


async def test_events_committed_as_the_history_starts_are_written_once(hub, tmp_path):
    """A commit landing while the snapshot is read (between any two of its statements: on
    PostgreSQL each statement of a read sees what committed before it) is either in the
    history or in the changes after it, never both."""
    await record(hub, [guest(i, 4) for i in range(12)])
    loop = asyncio.get_running_loop()
    interrupted: list[int] = []

    def commit_now() -> None:
        if hub.store.dialect == "postgresql":
            from sqlalchemy.util import await_only  # the read runs in SQLAlchemy's greenlet

            await_only(record(hub, [guest(i, 4) for i in range(12, 15)]))
        else:  # the read runs in a thread: the loop is free to record meanwhile
            asyncio.run_coroutine_threadsafe(record(hub, [guest(i, 4) for i in range(12, 15)]), loop).result(30)
        interrupted.append(1)

    class Interrupting:
        """A connection that lets another transaction commit after its first statement."""

        def __init__(self, conn: Any) -> None:
            self.conn = conn

        def execute(self, *args: Any, **kwargs: Any) -> Any:
            result = self.conn.execute(*args, **kwargs)
            if not interrupted:
                commit_now()
            return result

        def __getattr__(self, name: str) -> Any:
            return getattr(self.conn, name)

    async def read(fn: Any) -> Any:
        if fn is take_snapshot:
            return await hub.store.read(lambda conn: fn(Interrupting(conn)))
        return await hub.store.read(fn)

    loader = Loader(ParquetWarehouse(tmp_path), read)
    mark = await loader.history()
    assert interrupted
    assert mark.snapshot is not None
    await loader.changes(await feed_after(hub, mark.snapshot.position))
    assert duck(tmp_path, "events", "SELECT count(*), count(DISTINCT event_id) FROM t") == [(15, 15)]
    assert events_once(tmp_path) == []


async def test_an_event_committed_after_the_snapshot_under_a_lower_number_is_written_once(hub, tmp_path, monkeypatch):
    """PostgreSQL numbers events as they are inserted and positions changes as they commit:
    an event numbered before the snapshot's last event may commit after the snapshot, and be
    there when the history reads its page. It is written once, by the change after it."""
    if hub.store.dialect != "postgresql":
        pytest.skip("SQLite has one writer: an event commits before the next one is numbered")
    from sqlalchemy.util import await_only

    from prm_core.feed import writing

    await record(hub, [guest(i, 4) for i in range(3)])
    paused, resume = asyncio.Event(), asyncio.Event()
    held: list[bool] = [True]
    flush = writing.flush

    async def hold() -> None:
        paused.set()
        await resume.wait()

    def held_flush(conn: Any) -> Any:
        recording = any(c["type"] == "event.recorded" for c in conn.info.get(writing._PENDING) or ())
        if held and recording:  # the first recording after this: its events inserted, its changes not yet
            held.clear()
            await_only(hold())
        return flush(conn)

    monkeypatch.setattr(writing, "flush", held_flush)
    # one hub records a batch at a time: two hubs on one database record at once
    async with Hub.open(hub.config, autoload=True) as other:
        slow = asyncio.create_task(record(other, [guest(i, 4) for i in range(3, 5)]))
        try:
            await asyncio.wait_for(paused.wait(), 30)
            # numbered after the slow one's events, committed before them
            # another touch point: two batches of one touch point wait for each other (its day's counts)
            await asyncio.wait_for(record(hub, [guest(5, 4)], "callcenter"), 30)

            async def read(fn: Any) -> Any:
                result = await hub.store.read(fn)
                if fn is take_snapshot:  # the slow transaction commits before the history's pages
                    resume.set()
                    await slow
                return result

            loader = Loader(ParquetWarehouse(tmp_path), read)
            mark = await loader.history()
            assert slow.done() and mark.snapshot is not None
            await loader.changes(await feed_after(hub, mark.snapshot.position))
        finally:
            resume.set()
            await asyncio.gather(slow, return_exceptions=True)
    assert duck(tmp_path, "events", "SELECT count(*), count(DISTINCT event_id) FROM t") == [(6, 6)]
    assert events_once(tmp_path) == []
