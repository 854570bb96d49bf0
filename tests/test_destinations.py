"""Destinations: the relay delivers the feed in order, at least once, to webhook receivers
(verified with standardwebhooks), NATS JetStream (read back with nats-py) and plugins' kinds,
with retries, dead letters, replays, metrics and settings checked at start."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import web
from standardwebhooks import Webhook

from prm_core import hookimpl
from prm_core.config import Config
from prm_core.errors import ConfigError
from prm_core.feed import Change, DestinationKind, Refused
from prm_core.feed.jetstream import NatsSink
from prm_core.feed.relay import replay
from prm_core.feed.webhook import WebhookSink
from prm_core.hub import Hub
from prm_core.plugins import collect_registrations, make_plugin_manager
from prm_core.store.tables import customers, dead_letters, destination_cursors

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def ev(event_id: str, minute: int, **identities: str) -> dict[str, Any]:
    return {"id": event_id, "type": "page", "occurred_at": f"2026-11-23T08:{minute:02d}:00Z", "identities": identities}


async def send(hub: Hub, *bodies: dict[str, Any]) -> None:
    await hub.record(hub.parse_events({"events": list(bodies)}, "web"))


async def until(check: Callable[[], Any], what: str) -> None:
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"gave up waiting for {what}")


async def positions_of(hub: Hub, types: set[str] | None = None) -> list[str]:
    return [c.position for c in (await hub.feed.read(None, 1000, types)).changes]


class Receiver:
    """A webhook receiver: verifies every delivery with standardwebhooks, answers what it is told."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.changes: list[dict[str, Any]] = []
        self.answers: list[int] = []  # statuses to answer first; then 204

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        Webhook(SECRET).verify(body, dict(request.headers))  # raises on a bad signature
        status = self.answers.pop(0) if self.answers else 204
        self.ids.append(request.headers["webhook-id"])
        if status < 300:
            self.changes.extend(json.loads(body)["changes"])
        return web.Response(status=status)

    def positions(self) -> list[str]:
        return [c["position"] for c in self.changes]


@pytest.fixture
async def receiver(aiohttp_server):
    r = Receiver()
    app = web.Application()
    app.router.add_post("/changes", r.handle)
    server = await aiohttp_server(app)
    r.url = str(server.make_url("/changes"))  # type: ignore[attr-defined]
    return r


def config_with(database_url: str, destinations: dict[str, Any]) -> Config:
    return Config(database_url=database_url, raw={"destinations": destinations})


async def test_webhook_receives_every_change_in_order_signed(database_url, receiver):
    table = {"kind": "webhook", "url": receiver.url, "secret": SECRET, "batch_size": 3}
    async with Hub.open(config_with(database_url, {"crm": table}), autoload=True) as hub:
        await send(hub, ev("e1", 0, email="ann@example.com"), ev("e2", 1, email="bob@example.com"))
        await send(hub, ev("e3", 2, email="ann@example.com"))
        expected = await positions_of(hub)
        await until(lambda: receiver.positions() == expected, "every change")
        assert all(i.startswith("prm-changes-") for i in receiver.ids)
        assert receiver.changes[0]["type"] == "customer.created"


async def test_types_filter_and_start_latest(database_url, receiver):
    async with Hub.open(Config(database_url=database_url), autoload=True) as hub:
        await send(hub, ev("e1", 0, email="ann@example.com"))
    table = {
        "kind": "webhook",
        "url": receiver.url,
        "secret": SECRET,
        "types": ["event.recorded"],
        "start": "latest",
    }
    async with Hub.open(config_with(database_url, {"crm": table}), autoload=True) as hub:
        await send(hub, ev("e2", 1, email="ann@example.com"), ev("e3", 2, email="bob@example.com"))
        await until(lambda: len(receiver.changes) == 2, "the new events")
        assert [c["data"]["event_id"] for c in receiver.changes] == ["e2", "e3"]
        assert {c["type"] for c in receiver.changes} == {"event.recorded"}


async def test_webhook_retries_5xx_with_the_same_batch_and_dead_letters_4xx(database_url, receiver):
    # a rotated secret (401) or a receiver being redeployed (404) is its state: retried too
    receiver.answers = [503, 401, 404, 400]
    table = {"kind": "webhook", "url": receiver.url, "secret": SECRET, "batch_size": 2, "retry_base_s": 0.01}
    async with Hub.open(config_with(database_url, {"crm": table}), autoload=True) as hub:
        await send(hub, ev("e1", 0, email="ann@example.com"), ev("e2", 1, email="bob@example.com"))
        everything = await positions_of(hub)
        await until(lambda: receiver.positions() == everything[2:], "the rest after the refused batch")
        # three failures, then the same batch refused: four sends with one id
        assert receiver.ids[:4] == [f"prm-changes-{everything[0]}-{everything[1]}"] * 4

        def read(conn: Any) -> Any:
            return (
                conn.execute(sa.select(dead_letters.c.position, dead_letters.c.reason)).all(),
                conn.execute(sa.select(destination_cursors)).one(),
            )

        for _ in range(1000):  # the cursor moves once the receiver has answered
            letters, cursor = await hub.store.read(read)
            if str(cursor.position) == everything[-1]:
                break
            await asyncio.sleep(0.01)
        assert [(str(p), r) for p, r in letters] == [
            (everything[0], "the receiver answered 400"),
            (everything[1], "the receiver answered 400"),
        ]
        assert cursor.last_error is None and str(cursor.position) == everything[-1]

        # a replay sends them again (and forgets their dead letters)
        receiver.changes.clear()
        await replay(hub.store, "crm", everything[0])
        await until(lambda: receiver.positions() == everything, "the replay")
        assert (
            await hub.store.read(
                lambda conn: conn.execute(sa.select(sa.func.count()).select_from(dead_letters)).scalar()
            )
            == 0
        )


class Collected:
    """A destination kind of a plugin: keeps what it is handed; refuses or fails on demand."""

    def __init__(self) -> None:
        self.batches: list[list[Change]] = []
        self.fail_next = 0
        self.refuse: set[str] = set()
        self.closed = False

    def open(self, settings: Any) -> Any:
        self.label = settings.text("label", default="collected")
        self.settings = settings
        self.customers_seen = 0
        return self

    async def deliver(self, changes: Sequence[Change]) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("warehouse away")
        self.batches.append(list(changes))
        # a sink may complete changes with current rows, in the hub's own read transactions
        count = sa.select(sa.func.count()).select_from(customers)
        self.customers_seen = await self.settings.read(lambda conn: conn.execute(count).scalar())
        refused = [c.position for c in changes if c.type in self.refuse]
        if refused:
            raise Refused(refused, "type not wanted")

    async def close(self) -> None:
        self.closed = True

    @hookimpl
    def prm_destination_kinds(self, config):
        yield DestinationKind(name="collected", open=self.open, about="kept in memory")


@pytest.fixture
def collected() -> Collected:
    return Collected()


async def test_a_plugins_kind_gets_batches_in_order_and_refuses_some(database_url, collected):
    collected.fail_next = 2
    collected.refuse = {"dialogue.opened"}
    config = config_with(database_url, {"lake": {"kind": "collected", "batch_size": 4, "retry_base_s": 0.01}})
    async with Hub.open(config, plugins=[collected], autoload=True) as hub:
        await send(hub, *(ev(f"e{i}", i, email=f"p{i}@example.com") for i in range(5)))
        everything = await positions_of(hub)
        await until(lambda: [c.position for b in collected.batches for c in b] == everything, "every change")
        assert all(len(b) <= 4 for b in collected.batches)
        assert collected.customers_seen == 5
        opened = await positions_of(hub, {"dialogue.opened"})
        for _ in range(1000):  # the cursor moves once the sink has returned
            cursor = await hub.store.read(lambda conn: conn.execute(sa.select(destination_cursors)).one())
            if str(cursor.position) == everything[-1]:
                break
            await asyncio.sleep(0.01)
        assert str(cursor.position) == everything[-1]
        letters = await hub.store.read(lambda conn: list(conn.execute(sa.select(dead_letters.c.position)).scalars()))
        assert [str(p) for p in letters] == opened
    assert collected.closed


async def test_a_failing_destination_never_holds_up_ingest(database_url, collected):
    collected.fail_next = 10**6
    config = config_with(database_url, {"lake": {"kind": "collected", "retry_base_s": 0.01, "retry_cap_s": 0.05}})
    async with Hub.open(config, plugins=[collected], autoload=True) as hub:
        for i in range(20):
            await send(hub, ev(f"e{i}", i, email="ann@example.com"))
        await until(lambda: hub.relay.destinations[0].failures >= 3, "a few failures")
        cursor = await hub.store.read(lambda conn: conn.execute(sa.select(destination_cursors)).one())
        assert cursor.position == 0 and cursor.last_error == "ConnectionError: warehouse away"
        assert len(await positions_of(hub)) > 20


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            {"kind": "telegraph"},
            "[destinations.crm].kind must name a destination kind (registered: nats, parquet, postgresql, webhook)",
        ),
        ({"kind": "webhook", "secret": SECRET}, "[destinations.crm].url is required"),
        ({"kind": "webhook", "url": "ftp://x", "secret": SECRET}, "[destinations.crm].url must start with http"),
        ({"kind": "webhook", "url": "http://x", "secret": "hunter2"}, "[destinations.crm].secret must be a Standard"),
        ({"kind": "webhook", "url": "http://x", "secret": SECRET, "batch_size": 0}, "[destinations.crm].batch_size"),
        ({"kind": "webhook", "url": "http://x", "secret": SECRET, "types": 3}, "[destinations.crm].types must be"),
        ({"kind": "webhook", "url": "http://x", "secret": SECRET, "start": "now"}, "[destinations.crm].start must"),
        ({"kind": "nats", "servers": ["http://x"]}, "[destinations.crm].servers must list nats://"),
        ({"kind": "nats", "subject": "prm.>"}, "[destinations.crm].subject must be"),
    ],
)
async def test_a_bad_setting_stops_the_hub_naming_the_key(database_url, table, message):
    with pytest.raises(ConfigError) as raised:
        async with Hub.open(config_with(database_url, {"crm": table}), autoload=True):
            pass
    assert str(raised.value).startswith(message)
    assert "hunter2" not in str(raised.value) and "\n" not in str(raised.value)


def test_the_core_provides_the_webhook_nats_parquet_and_postgresql_kinds():
    registered = collect_registrations(make_plugin_manager(autoload=False), Config()).destination_kinds
    assert registered.names() == ["nats", "parquet", "postgresql", "webhook"]
    assert {registered.providers[name] for name in registered.names()} == {"prm_core"}
    assert all(kind.about for kind in registered)  # a line for `prm plugins` and the docs
    assert (registered["webhook"].open, registered["nats"].open) == (WebhookSink, NatsSink)


async def test_metrics_show_each_destinations_lag(hub_config, collected, aiohttp_client):
    from prm_core.server.app import create_app

    config = Config(database_url=hub_config.database_url, raw={"destinations": {"lake": {"kind": "collected"}}})
    client = await aiohttp_client(create_app(config, plugins=[collected]))
    body = await (await client.get("/metrics")).text()
    assert 'prm_destination_lag_changes{destination="lake"}' in body
    assert 'prm_destination_lag_seconds{destination="lake"}' in body
    assert 'prm_destination_dead_letters_total{destination="lake"}' in body


# ---- NATS JetStream (a real server at 127.0.0.1:4222) ------------------------------------------


async def test_nats_gets_each_change_on_its_subject_once(database_url):
    import nats

    stream = f"PRM_TEST_{uuid.uuid4().hex[:12].upper()}"
    subject = f"prmtest.{uuid.uuid4().hex[:12]}"
    table = {"kind": "nats", "servers": ["nats://127.0.0.1:4222"], "stream": stream, "subject": subject}
    nc = await nats.connect("nats://127.0.0.1:4222")
    js = nc.jetstream()
    try:
        async with Hub.open(config_with(database_url, {"bus": table}), autoload=True) as hub:
            await send(hub, ev("e1", 0, email="ann@example.com"), ev("e2", 1, email="bob@example.com"))
            everything = await positions_of(hub)

            async def stored() -> int:
                try:
                    return (await js.stream_info(stream)).state.messages
                except Exception:
                    return 0

            for _ in range(500):
                if await stored() == len(everything):
                    break
                await asyncio.sleep(0.02)
            # the same changes again (a retry, a restart): JetStream's duplicate window drops them
            sink = hub.relay.destinations[0].sink
            await sink.deliver((await hub.feed.read(None, 1000)).changes)
            assert await stored() == len(everything)

        sub = await js.pull_subscribe(f"{subject}.>", durable=None, stream=stream)
        msgs = await sub.fetch(len(everything), timeout=5)
        assert [m.headers["Nats-Msg-Id"] for m in msgs] == everything
        bodies = [json.loads(m.data) for m in msgs]
        assert [b["position"] for b in bodies] == everything
        assert [m.subject for m in msgs] == [f"{subject}.{b['type']}" for b in bodies]
    finally:
        try:
            await js.delete_stream(stream)
        finally:
            await nc.close()


# ---- prm destinations ---------------------------------------------------------------------------


def test_prm_destinations_shows_position_lag_and_dead_letters_and_replays(database_url, tmp_path, collected):
    from click.testing import CliRunner

    from prm_core.cli import main

    collected.refuse = {"dialogue.opened"}
    tables = {"lake": {"kind": "collected", "retry_base_s": 0.01}}

    async def run() -> list[str]:
        async with Hub.open(config_with(database_url, tables), plugins=[collected], autoload=True) as hub:
            await send(hub, ev("e1", 0, email="ann@example.com"), ev("e2", 1, email="bob@example.com"))
            everything = await positions_of(hub)
            for _ in range(1000):
                cursor = await hub.store.read(lambda conn: conn.execute(sa.select(destination_cursors)).one())
                if str(cursor.position) == everything[-1]:
                    break
                await asyncio.sleep(0.01)
            return everything

    everything = asyncio.run(run())
    config = tmp_path / "prm.toml"
    config.write_text('[destinations.lake]\nkind = "collected"\n[destinations.crm]\nkind = "webhook"\n')
    args = ["--config", str(config), "--database", database_url]
    runner = CliRunner()
    result = runner.invoke(main, ["destinations", "--json", *args])
    assert result.exit_code == 0, result.output
    found = {d["name"]: d for d in json.loads(result.output)["destinations"]}
    lake, crm = found["lake"], found["crm"]
    assert (lake["kind"], lake["position"], lake["lag"], lake["dead_letters"]) == (
        "collected",
        everything[-1],
        {"changes": 0, "seconds": 0.0},
        2,
    )
    assert lake["last_error"] is None
    assert crm["position"] is None and crm["kind"] == "webhook"  # configured, never run

    replayed = runner.invoke(main, ["destinations", "replay", "lake", "--from", everything[2], *args])
    assert replayed.exit_code == 0, replayed.output
    assert f"from position {everything[2]}" in replayed.output
    table = runner.invoke(main, ["destinations", *args])
    assert table.exit_code == 0, table.output
    (line,) = [line for line in table.output.splitlines() if line.startswith("lake")]
    assert line.split()[:4] == ["lake", "collected", str(int(everything[2]) - 1), str(len(everything) - 2)]

    bad = runner.invoke(main, ["destinations", "replay", "lake", "--from", "abc", *args])
    assert bad.exit_code != 0 and "from must be a position" in bad.output
    unknown = runner.invoke(main, ["destinations", "replay", "nowhere", "--from", "1", *args])
    assert unknown.exit_code != 0 and "no destination 'nowhere'" in unknown.output


async def test_a_destination_behind_retention_is_told_not_skipped(database_url, collected, frozen_clock):
    collected.fail_next = 10**6
    config = config_with(database_url, {"lake": {"kind": "collected", "retry_base_s": 0.01, "retry_cap_s": 0.05}})
    frozen_clock.now = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)  # the events' morning: not ahead of the clock
    async with Hub.open(config, plugins=[collected], autoload=True) as hub:
        # five failures before the pruning (a loaded machine) rest the destination for 0.1 s, not a minute
        hub.relay.destinations[0].breaker.timeout_duration = timedelta(seconds=0.1)
        await send(hub, ev("e1", 0, email="ann@example.com"))
        frozen_clock.advance(days=40)
        await send(hub, ev("e2", 1, email="bob@example.com"))
        assert await hub.feed.prune_once() > 0
        collected.fail_next = 0

        def cursor(conn: Any) -> Any:
            return conn.execute(sa.select(destination_cursors)).one()

        for _ in range(3000):  # the relay retries with backoff: a loaded machine may take a while
            row = await hub.store.read(cursor)
            if row.last_error and "fell behind" in row.last_error:
                break
            await asyncio.sleep(0.01)
        assert row.last_error.startswith("destination lake fell behind the feed's retention")
        assert row.position == 0 and collected.batches == []  # nothing skipped silently
        # its owner decides: replayed from the oldest change kept, it goes on
        oldest = (await positions_of(hub))[0]
        await replay(hub.store, "lake", oldest)
        everything = await positions_of(hub)
        await until(lambda: [c.position for b in collected.batches for c in b] == everything, "the kept changes")


class Slow(Collected):
    """A destination whose deliveries take longer than a lease."""

    delay_s = 1.0

    async def deliver(self, changes: Sequence[Change]) -> None:
        self.started = True
        await asyncio.sleep(self.delay_s)
        await super().deliver(changes)


async def test_a_delivery_longer_than_the_lease_keeps_the_lease(database_url):
    slow = Slow()
    slow.started = False
    raw = {
        "destinations": {"lake": {"kind": "collected", "deliver_timeout_s": 10}},
        "feed": {"destination_lease_s": 0.3},
    }
    async with Hub.open(Config(database_url=database_url, raw=raw), plugins=[slow], autoload=True) as hub:
        await send(hub, ev("e1", 0, email="ann@example.com"))
        await until(lambda: slow.started, "a delivery")
        c = destination_cursors.c
        for _ in range(3):  # three lease lengths into one delivery: still this process's, and ahead
            await asyncio.sleep(0.3)
            row = await hub.store.read(
                lambda conn: conn.execute(sa.select(c.lease_owner, c.lease_until).where(c.name == "lake")).one()
            )
            until_at = row.lease_until if row.lease_until.tzinfo else row.lease_until.replace(tzinfo=UTC)
            assert row.lease_owner is not None and until_at > datetime.now(UTC), "the lease ran out mid-delivery"
        await until(lambda: slow.batches, "the slow delivery")
