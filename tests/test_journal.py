"""Journaled ingest ([ingest] journal = true): acknowledged once journaled, processed behind,
read-your-writes with the answer's position, duplicates counted at append, back-pressure."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import pytest
import sqlalchemy as sa

from prm_core.config import Config
from prm_core.errors import ConfigError, Overloaded
from prm_core.hub import Hub
from prm_core.journal import JournalSettings, journal_path
from prm_core.model import Event, Identity
from prm_core.server.state import HUB

EVENTS = "/v1/touchpoints/web/events"


@pytest.fixture
def hub_config(database_url: str) -> Config:
    # a read with a position waits as long as a loaded CI machine may need; the test of the 503 shortens it
    ingest = {"journal": True, "read_wait_ms": 30_000}
    return Config(database_url=database_url, public_url="http://hub.test", raw={"ingest": ingest})


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def event(n: int, **identities: str) -> dict:
    return {
        "id": f"j{n}",
        "type": "page.viewed",
        "occurred_at": "2026-11-23T08:00:00Z",
        "identities": identities or {"anonymous_id": f"device-{n % 7}"},
    }


def library_event(n: int, *identities: str) -> Event:
    return Event(
        id=f"lib{n}",
        type="page.viewed",
        occurred_at=datetime(2026, 11, 23, 8, 0, tzinfo=UTC),
        touchpoint="web",
        identities=tuple(Identity.parse(i) for i in identities),
    )


async def test_read_your_writes_with_the_position(hub_client, make_key):
    web, read = await make_key("touchpoint:web"), await make_key("read")
    for n in range(30):
        # a person whose devices log in: each write links or merges what the one before made
        ids = (
            {"anonymous_id": f"device-{n}", "email": "ann@example.com"}
            if n % 3 == 0
            else {"anonymous_id": f"device-{n - 1}"}
        )
        resp = await hub_client.post(EVENTS, json={"events": [event(n, **ids)]}, headers=bearer(web))
        assert resp.status == 200
        body = await resp.json()
        assert body["accepted"] == 1 and body["duplicates"] == 0
        position = body["position"]
        if n % 2:
            got = await hub_client.get(
                f"/v1/customers/anonymous_id:device-{n - 1 if n % 3 else n}?after={position}", headers=bearer(read)
            )
        else:
            got = await hub_client.get(
                f"/v1/customers/anonymous_id:device-{n - 1 if n % 3 else n}",
                headers={**bearer(read), "PRM-After-Position": position},
            )
        assert got.status == 200, await got.text()
        view = await got.json()
        assert f"j{n}" in {item["event_id"] for item in view["timeline"]}, n


async def test_after_is_validated(hub_client, make_key):
    read = await make_key("read")
    resp = await hub_client.get("/v1/customers/email:ann@example.com?after=abc", headers=bearer(read))
    assert resp.status == 422
    assert (await resp.json())["error"]["field"] == "after"


async def test_a_position_not_reached_in_time_answers_503_with_retry_after(hub_client, make_key):
    read = await make_key("read")
    hub = hub_client.app[HUB]
    assert hub.journal is not None
    hub.journal.settings = attrs.evolve(hub.journal.settings, read_wait_ms=200)
    ahead = hub.journal.head + 1000  # no event is there yet: the processor cannot have passed it
    resp = await hub_client.get(f"/v1/customers/email:ann@example.com?after={ahead}", headers=bearer(read))
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert (await resp.json())["error"]["code"] == "not_processed_yet"


async def test_duplicates_are_counted_at_append(hub_client, make_key):
    web, read = await make_key("touchpoint:web"), await make_key("read")
    batch = [event(n, email="bob@example.com") for n in range(5)]
    first = await (await hub_client.post(EVENTS, json={"events": [*batch, batch[0]]}, headers=bearer(web))).json()
    assert (first["accepted"], first["duplicates"]) == (5, 1)  # the same id twice in one batch
    again = await (await hub_client.post(EVENTS, json={"events": batch}, headers=bearer(web))).json()
    assert (again["accepted"], again["duplicates"]) == (0, 5)  # journaled, maybe not processed yet
    hub = hub_client.app[HUB]
    assert await hub.processed_after(int(again["position"]), 10)
    # processed (and on SQLite trimmed from the journal file): still a duplicate, from the events
    later = await (await hub_client.post(EVENTS, json={"events": batch[:2]}, headers=bearer(web))).json()
    assert (later["accepted"], later["duplicates"]) == (0, 2)
    got = await hub_client.get(f"/v1/customers/email:bob@example.com?after={later['position']}", headers=bearer(read))
    view = await got.json()
    assert sorted(item["event_id"] for item in view["timeline"]) == [f"j{n}" for n in range(5)]

    def count(conn: sa.Connection) -> int:
        return int(conn.execute(sa.text("SELECT count(*) FROM events WHERE touchpoint = 'web'")).scalar())

    assert await hub.store.read(count) == 5


async def test_health_and_metrics_report_depth_and_lag(hub_client, make_key):
    web = await make_key("touchpoint:web")
    resp = await hub_client.post(EVENTS, json={"events": [event(1)]}, headers=bearer(web))
    hub = hub_client.app[HUB]
    assert await hub.processed_after(int((await resp.json())["position"]), 10)
    health = await (await hub_client.get("/healthz")).json()
    assert health["journal"]["depth"] == 0
    assert health["journal"]["lag_s"] == 0
    assert int(health["journal"]["processed"]) >= 1
    text = await (await hub_client.get("/metrics")).text()
    assert "prm_journal_depth 0.0" in text
    assert "prm_journal_lag_seconds 0.0" in text


async def test_back_pressure_past_the_bound(database_url, tmp_path):
    config = Config(database_url=database_url, raw={"ingest": {"journal": True, "max_depth": 8}})
    # the processor runs elsewhere (not at all here): the journal only grows
    async with Hub.open(config, autoload=True, journal_processor="elsewhere") as hub:
        assert hub.journal is not None
        accepted = await hub.accept([library_event(n, f"email:p{n}@example.com") for n in range(6)])
        assert accepted.accepted == 6
        with pytest.raises(Overloaded):
            await hub.accept([library_event(n, f"email:q{n}@example.com") for n in range(10, 13)])
        assert hub.journal.depth == 6  # the refused events are not journaled
        assert (await hub.accept([library_event(20, "email:r@example.com")])).accepted == 1
        health_lag = await hub.journal.lag_s()
        assert health_lag >= 0


async def test_back_pressure_over_http_is_503_with_retry_after(database_url, aiohttp_client):
    from prm_core.keys import create_key
    from prm_core.server.app import create_app

    config = Config(database_url=database_url, raw={"ingest": {"journal": True, "max_depth": 4}})
    client = await aiohttp_client(create_app(config))
    key, _ = await create_key(client.app[HUB].store, "touchpoint:web")
    resp = await client.post(EVENTS, json={"events": [event(n) for n in range(5)]}, headers=bearer(key))
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert client.app[HUB].journal.head == 0  # nothing journaled


async def test_a_synchronous_write_sees_journaled_events_first(database_url):
    config = Config(database_url=database_url, raw={"ingest": {"journal": True}})
    async with Hub.open(config, autoload=True) as hub:
        for round_ in range(5):
            await hub.accept([library_event(100 + round_, f"anonymous_id:d{round_}", f"email:s{round_}@example.com")])
            # the direct path names only the device: it must find the customer the journal made
            (recorded,) = await hub.record([library_event(200 + round_, f"anonymous_id:d{round_}")])
            assert recorded.customer_id == await hub.resolve(f"email:s{round_}@example.com")


async def test_the_journal_keeps_a_batchs_order_and_reads_back_each_event(database_url):
    from attrs import evolve

    from prm_core.journal import decode

    config = Config(database_url=database_url, raw={"ingest": {"journal": True}})
    order = [7, 3, 9, 0, 5]  # positions follow the batch, not the ids
    batch = [library_event(n, f"email:o{n}@example.com") for n in order]
    # what orjson writes, and what it leaves to the standard library (an integer past 64 bits)
    batch[1] = evolve(batch[1], data={"name": "Zoë", "nested": {"a": [1, 2.5, None, True]}}, dialogue="d-1")
    batch[2] = evolve(batch[2], data={"n": 2**70, "m": -(2**64)}, verified=False)
    async with Hub.open(config, autoload=True, journal_processor="elsewhere") as hub:
        assert hub.journal is not None
        journal = hub.journal
        accepted = await hub.accept(batch)
        assert (accepted.accepted, accepted.duplicates) == (5, 0)
        rows = await hub.store.read(lambda conn: journal.read_after(conn, 0, 100))
    assert [position for position, _ in rows] == sorted(position for position, _ in rows)
    assert rows[-1][0] == accepted.position
    decoded = [decode(body) for _, body in rows]
    assert [evolve(ev, received_at=None) for ev in decoded] == batch
    assert all(ev.received_at is not None for ev in decoded)


async def test_the_same_id_at_two_touch_points_is_two_events(database_url):
    config = Config(database_url=database_url, raw={"ingest": {"journal": True}})
    web = [library_event(n, f"email:w{n}@example.com") for n in range(3)]
    pos = [evolve_touchpoint(ev, "pos") for ev in web]
    async with Hub.open(config, autoload=True) as hub:
        first = await hub.accept([*web, pos[0]])
        assert (first.accepted, first.duplicates, first.flags) == (4, 0, (False, False, False, False))
        assert await hub.processed_after(first.position, 10)  # recorded: found in the events now
        again = await hub.accept([pos[1], web[0], pos[0], pos[1]])
        assert (again.accepted, again.duplicates, again.flags) == (1, 3, (False, True, True, True))


def evolve_touchpoint(ev: Event, touchpoint: str) -> Event:
    from attrs import evolve

    return evolve(ev, touchpoint=touchpoint)


async def test_the_journal_survives_a_restart_and_is_processed(database_url):
    config = Config(database_url=database_url, raw={"ingest": {"journal": True}})
    async with Hub.open(config, autoload=True, journal_processor="elsewhere") as hub:
        accepted = await hub.accept([library_event(n, f"email:t{n % 3}@example.com") for n in range(9)])
        assert accepted.accepted == 9
    async with Hub.open(config, autoload=True) as hub:
        assert await hub.processed_after(accepted.position, 10)
        view = await hub.view("email:t0@example.com")
        assert sorted(item.event_id for item in view.timeline) == ["lib0", "lib3", "lib6"]
        assert hub.journal is not None and hub.journal.depth == 0


def test_sqlite_journal_lives_beside_the_database(tmp_path: Path):
    assert journal_path(f"sqlite:///{tmp_path}/prm.db") == tmp_path / "prm.journal.db"
    with pytest.raises(ConfigError, match="file"):
        journal_path("sqlite://")


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"journal": "yes"}, "true or false"),
        ({"journal": True, "max_depth": 0}, "max_depth"),
        ({"jornal": True}, "jornal"),
    ],
)
async def test_bad_ingest_settings_stop_the_hub(database_url, section, message):
    with pytest.raises(ConfigError, match=message):
        async with Hub.open(Config(database_url=database_url, raw={"ingest": section})):
            pass


async def test_without_the_journal_events_answer_without_a_position(database_url, aiohttp_client):
    from prm_core.keys import create_key
    from prm_core.server.app import create_app

    off = Config(database_url=database_url, raw={"ingest": {"journal": False}})
    client = await aiohttp_client(create_app(off))
    key, _ = await create_key(client.app[HUB].store, "touchpoint:web")
    body = await (await client.post(EVENTS, json={"events": [event(1)]}, headers=bearer(key))).json()
    assert body == {"accepted": 1, "duplicates": 0}
    read, _ = await create_key(client.app[HUB].store, "read")
    got = await client.get("/v1/customers/anonymous_id:device-1?after=5", headers=bearer(read))
    assert got.status == 200  # every acknowledged event is recorded already


async def test_concurrent_writers_and_readers(hub_client, make_key):
    web, read = await make_key("touchpoint:web"), await make_key("read")

    async def one(n: int) -> None:
        resp = await hub_client.post(
            EVENTS, json={"events": [event(1000 + n, email=f"c{n}@example.com")]}, headers=bearer(web)
        )
        position = (await resp.json())["position"]
        got = await hub_client.get(f"/v1/customers/email:c{n}@example.com?after={position}", headers=bearer(read))
        assert got.status == 200

    await asyncio.gather(*(one(n) for n in range(40)))


@pytest.mark.parametrize(
    ("toml", "processors", "message"),
    [
        ("[ingest]\njournal = true\n", "2", "SQLite takes one journal processor"),
        (
            "[ingest]\njournal = false\n",
            "1",
            "--processors needs the journal, which [ingest] journal = false turns off",
        ),
    ],
)
def test_serve_refuses_processors_it_cannot_run(tmp_path, toml, processors, message):
    from click.testing import CliRunner

    from prm_core.cli import main

    (tmp_path / "prm.toml").write_text(toml)
    url = f"sqlite:///{tmp_path}/prm.db"
    result = CliRunner().invoke(
        main, ["serve", "--config", str(tmp_path / "prm.toml"), "--database", url, "--processors", processors]
    )
    assert result.exit_code == 1
    assert message in result.output
    assert not (tmp_path / "prm.db").exists()  # refused before anything was written


def test_prm_process_freezes_its_heap_and_stops_cleanly(tmp_path):
    """``prm process`` owns its process, as ``prm serve`` does: the started heap is frozen, so a
    batch's collections do not walk what start-up left ([server] freeze_heap unset)."""
    import os
    import signal
    import subprocess
    import sys
    import threading

    (tmp_path / "prm.toml").write_text("[ingest]\njournal = true\n")
    argv = [sys.executable, "-m", "prm_core.cli", "process", "--config", str(tmp_path / "prm.toml")]
    argv += ["--database", f"sqlite:///{tmp_path}/prm.db", "--log-level", "debug"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRM_")}
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    frozen = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if '"event": "heap frozen"' in line:
                frozen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        frozen.wait(60)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        reader.join(timeout=10)
    assert frozen.is_set(), "".join(lines)
    assert proc.returncode == 0, "".join(lines)


async def test_import_journals_and_reports_once_processed(database_url, tmp_path):
    import json

    from prm_core.importer import import_events

    config = Config(database_url=database_url, raw={"ingest": {"journal": True, "max_depth": 50}})
    lines = [event(n, email=f"imp{n % 4}@example.com") for n in range(120)]  # past max_depth: it waits, not fails
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in [*lines, lines[0]]) + "\n")
    result = await import_events(config, path, "web", batch_size=25, progress=False)
    assert (result.accepted, result.duplicates) == (120, 1)
    async with Hub.open(config, autoload=True) as hub:
        assert hub.journal is not None and hub.journal.depth == 0
        view = await hub.view("email:imp1@example.com", limit=200)
        assert len(view.timeline) == 30


async def test_the_feed_waits_for_the_position_in_the_header(hub_client, make_key):
    web, read = await make_key("touchpoint:web"), await make_key("read")
    resp = await hub_client.post(EVENTS, json={"events": [event(7, email="feed@example.com")]}, headers=bearer(web))
    position = (await resp.json())["position"]
    got = await hub_client.get("/v1/changes?limit=1000", headers={**bearer(read), "PRM-After-Position": position})
    assert got.status == 200
    changes = (await got.json())["changes"]
    assert any(c["type"] == "event.recorded" and c["data"].get("event_id") == "j7" for c in changes), changes
    bad = await hub_client.get("/v1/changes", headers={**bearer(read), "PRM-After-Position": "x"})
    assert bad.status == 422


async def test_a_synchronous_write_waits_only_for_the_people_it_names(database_url):
    config = Config(database_url=database_url, raw={"ingest": {"journal": True, "sync_wait_ms": 400}})
    # no processor at all: what a synchronous write waits for is never processed
    async with Hub.open(config, autoload=True, journal_processor="elsewhere") as hub:
        await hub.accept([library_event(1, "email:busy@example.com")])
        await hub.record([library_event(2, "email:other@example.com")])
        assert hub.sync_wait_expired == 0  # nobody it names is journaled: it did not wait out its budget
        started = asyncio.get_running_loop().time()
        await hub.record([library_event(3, "anonymous_id:d9", "email:busy@example.com")])
        assert asyncio.get_running_loop().time() - started >= 0.4  # it waited its whole budget
        assert hub.sync_wait_expired == 1


async def test_an_event_the_processor_cannot_record_is_kept_not_lost(database_url, monkeypatch):
    from prm_core import journal as journal_module

    record_batch = journal_module.record_batch

    def failing(conn, batch, rules):
        if any(ev.id == "lib2" for ev in batch):
            raise RuntimeError("a bug in recording")
        return record_batch(conn, batch, rules)

    monkeypatch.setattr(journal_module, "record_batch", failing)
    config = Config(database_url=database_url, raw={"ingest": {"journal": True}})
    async with Hub.open(config, autoload=True) as hub:
        accepted = await hub.accept([library_event(n, f"email:k{n}@example.com") for n in range(5)])
        assert await hub.processed_after(accepted.position, 10)
        assert hub.processor is not None and hub.processor.rejected == 1
        for n in (0, 1, 3, 4):  # the others of its batch are recorded
            assert (await hub.view(f"email:k{n}@example.com")).timeline[0].event_id == f"lib{n}"
        kept = sa.text("SELECT event_id, error FROM journal_rejected")
        if hub.journal.engine is None:
            rows = await hub.store.read(lambda conn: conn.execute(kept).all())
        else:
            with hub.journal.engine.connect() as conn:
                rows = conn.execute(kept).all()
        assert [tuple(r) for r in rows] == [("lib2", "RuntimeError")]


async def test_an_answer_to_an_offer_is_judged_while_the_sender_waits(database_url):
    """An answer to an offer is checked against the offer, which only recording can do: its
    batch is recorded at once, whole and in order (a refusal writes nothing of it), not journaled."""
    from prm_core.errors import InvalidInput
    from prm_core.store.tables import offers_made

    at = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    config = Config(database_url=database_url, raw={"ingest": {"journal": True, "read_wait_ms": 30_000}})
    async with Hub.open(config, autoload=True) as hub:
        assert hub.journal is not None
        (seen,) = await hub.record([library_event(1, "email:ann@example.com")])
        offer = {"id": "off1", "customer_id": seen.customer_id, "touchpoint": "web", "dialogue_id": "d1"}
        await hub.store.write(lambda conn: conn.execute(offers_made.insert(), {**offer, "code": "c", "made_at": at}))

        def answer(n: int, minutes: int) -> Event:
            # from the visitor's device alone: the identify before it says whose device it is
            return attrs.evolve(
                library_event(n, "anonymous_id:device-9"),
                type="offer.accepted",
                occurred_at=at + timedelta(minutes=minutes),
                data={"offer_id": "off1"},
            )

        login = attrs.evolve(
            library_event(2, "anonymous_id:device-9", "email:ann@example.com"),
            type="identify",
            occurred_at=at + timedelta(minutes=1),
        )
        head = hub.journal.head
        with pytest.raises(InvalidInput) as refused:
            await hub.accept([login, answer(3, -5)])
        assert refused.value.code == "before_offer"
        assert hub.journal.head == head  # nothing journaled
        assert await hub.store.read(lambda conn: conn.exec_driver_sql("SELECT count(*) FROM events").scalar()) == 1

        accepted = await hub.accept([login, answer(4, 2)])
        assert (accepted.accepted, accepted.duplicates, accepted.flags) == (2, 0, (False, False))
        assert accepted.position == hub.journal.head == head  # recorded, not journaled
        response = await hub.store.read(
            lambda conn: conn.execute(sa.select(offers_made.c.response).where(offers_made.c.id == "off1")).scalar()
        )
        assert response == "accepted"  # the login first: the device is Ann's when her answer comes
        again = await hub.accept([login, answer(4, 2)])
        assert (again.accepted, again.duplicates, again.flags) == (0, 2, (True, True))
        ids = await hub.store.read(lambda conn: conn.exec_driver_sql("SELECT event_id FROM events").scalars().all())
        assert sorted(ids) == ["lib1", "lib2", "lib4"]


async def test_the_journal_is_on_by_default(database_url):
    async with Hub.open(Config(database_url=database_url)) as hub:
        assert hub.journal is not None and hub.processor is not None
        assert hub.journal.settings == JournalSettings()


@pytest.mark.parametrize(("toml", "started"), [("", 1), ("[ingest]\njournal = false\n", 0)])
def test_serve_starts_one_processor_process_with_the_journal_on(tmp_path, monkeypatch, toml, started):
    """prm serve's default: the journal on, processed by one ``prm process`` beside the server."""
    from click.testing import CliRunner

    from prm_core import cli

    (tmp_path / "prm.toml").write_text(toml)
    seen: dict[str, object] = {}

    class Supervisor:
        def __init__(self, start: object, count: int) -> None:
            seen["count"] = count

        def stop(self) -> None:
            seen["stopped"] = True

    from prm_core.server import app as server_app

    create_app = server_app.create_app

    def creating(*args, **kwargs):
        seen["processor"] = kwargs["journal_processor"]
        return create_app(*args, **kwargs)

    monkeypatch.setattr(cli, "_Processors", Supervisor)
    monkeypatch.setattr(server_app, "create_app", creating)
    monkeypatch.setattr("aiohttp.web.run_app", lambda app, **kwargs: None)
    url = f"sqlite:///{tmp_path}/prm.db"
    result = CliRunner().invoke(
        cli.main, ["serve", "--config", str(tmp_path / "prm.toml"), "--database", url, "--port", "0"]
    )
    assert result.exit_code == 0, result.output
    assert seen["count"] == started and seen["stopped"]
    assert seen["processor"] == ("elsewhere" if started else "here")
