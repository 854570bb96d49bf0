"""The relay that delivers the change feed to destinations, driven directly: settings checked
at start, cursors registered and handed over between hub processes by their leases, retries
with backoff behind the circuit breaker, dead letters, the metrics, stopping, and
``prm destinations replay``. A test sink does what each test tells it (keep, fail, refuse,
wait); a store wrapper can make the relay's own database steps fail or wait."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
import structlog
from aiobreaker import CircuitBreaker, CircuitBreakerError, CircuitBreakerState
from polling import until

from prm_core import hookimpl
from prm_core.clock import FrozenClock
from prm_core.config import Config
from prm_core.errors import ConfigError, InvalidInput, StoreUnavailable
from prm_core.feed import Change, DestinationKind, Refused
from prm_core.feed.reading import FeedSignal
from prm_core.feed.relay import Destination, Relay, open_destinations, replay
from prm_core.hub import Hub
from prm_core.plugins import Registry
from prm_core.store.tables import dead_letters, destination_cursors

START = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)  # the events' morning: not ahead of the clock


class Kept:
    """A sink: keeps what it is handed; fails, refuses or waits as a test tells it."""

    def __init__(self) -> None:
        self.batches: list[list[Change]] = []
        self.calls = 0
        self.fail_next = 0
        self.error: Exception = ConnectionError("warehouse away")
        self.refuse: set[str] = set()
        self.reason = "type not wanted"
        self.gate: asyncio.Event | None = None  # set: deliveries wait for it
        self.happened: list[str] = []
        self.closed = 0

    async def deliver(self, changes: Sequence[Change]) -> None:
        self.calls += 1
        self.happened.append("deliver")
        if self.gate is not None:
            try:
                await self.gate.wait()
            except asyncio.CancelledError:
                self.happened.append("cancelled")
                await asyncio.sleep(0.1)  # a sink winding down its connection
                raise
        if self.fail_next:
            self.fail_next -= 1
            raise self.error
        self.batches.append(list(changes))
        refused = [c.position for c in changes if c.type in self.refuse]
        if refused:
            raise Refused(refused, self.reason)

    async def close(self) -> None:
        self.happened.append("closed")
        self.closed += 1

    def positions(self) -> list[str]:
        return [c.position for b in self.batches for c in b]


def kinds_of(**sinks: Any) -> Registry[DestinationKind]:
    """Destination kinds named after the keyword, each opening the sink given."""
    kinds: Registry[DestinationKind] = Registry("destination kind")
    for name, sink in sinks.items():
        kinds.add(name, DestinationKind(name=name, open=lambda settings, sink=sink: sink), "tests")
    return kinds


def opened(tables: Any, **sinks: Any) -> list[Destination]:
    return open_destinations(Config(raw={"destinations": tables}), kinds_of(**sinks))


def destination(name: str, sink: Kept, **settings: Any) -> Destination:
    """A destination of the test's sink, opened as the hub opens its configured ones."""
    (dest,) = opened({name: {"kind": "kept", "retry_base_s": 0.01, "retry_cap_s": 0.05, **settings}}, kept=sink)
    return dest


class Watched:
    """The hub's store as the relay sees it; the relay's database steps (``_claim``, ``_pin``,
    ``_advance``, ``_note_error``, ``_release``, reading a page) can be made to fail or wait."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.failing: dict[str, int] = {}  # step -> how many more times it fails
        self.failed: list[str] = []
        self.held: set[str] = set()  # steps that wait for `let_go`
        self.let_go = asyncio.Event()
        # steps that never end, and fail when cut short (a driver turning the cancellation into an error)
        self.hanging: set[str] = set()
        self.steps: list[str] = []
        self.reads = 0
        self.writes = 0

    @staticmethod
    def step(fn: Callable[..., Any]) -> str:
        name = getattr(fn, "func", fn).__qualname__  # Relay._pin.<locals>.write, read_changes
        return name.split(".")[1] if name.startswith("Relay.") else name

    def _fails(self, fn: Callable[..., Any]) -> bool:
        step = self.step(fn)
        if self.failing.get(step, 0) > 0:
            self.failing[step] -= 1
            self.failed.append(step)
            return True
        return False

    async def write(self, fn: Callable[..., Any]) -> Any:
        self.writes += 1
        self.steps.append(self.step(fn))
        if self.step(fn) in self.held:
            await self.let_go.wait()
        if self.step(fn) in self.hanging:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                raise StoreUnavailable("the database cannot take writes now (InterfaceError)") from None
        if self._fails(fn):
            raise StoreUnavailable("the database cannot take writes now (OperationalError)")
        return await self.store.write(fn)

    async def read(self, fn: Callable[..., Any]) -> Any:
        self.reads += 1
        self.steps.append(self.step(fn))
        if self._fails(fn):
            raise StoreUnavailable("the database cannot be read now (OperationalError)")
        return await self.store.read(fn)


def ev(event_id: str, minute: int, email: str) -> dict[str, Any]:
    return {
        "id": event_id,
        "type": "page",
        "occurred_at": f"2026-11-23T08:{minute:02d}:00Z",
        "identities": {"email": email},
    }


async def send(hub: Hub, *bodies: dict[str, Any]) -> None:
    await hub.record(hub.parse_events({"events": list(bodies)}, "web"))


async def positions_of(hub: Hub, types: set[str] | None = None) -> list[str]:
    return [c.position for c in (await hub.feed.read(None, 1000, types)).changes]


async def cursor_of(hub: Hub, name: str) -> Any:
    c = destination_cursors.c
    return await hub.store.read(lambda conn: conn.execute(sa.select(destination_cursors).where(c.name == name)).first())


async def letters_of(hub: Hub) -> list[tuple[str, int, str]]:
    d = dead_letters.c
    q = sa.select(d.destination, d.position, d.reason).order_by(d.destination, d.position)
    return [tuple(r) for r in await hub.store.read(lambda conn: conn.execute(q).all())]  # type: ignore[misc]


async def round_trips(hub: Hub, n: int = 5) -> None:
    """A few reads and writes of the test's own: time for a relay in a busy loop to show it."""
    for _ in range(n):
        await hub.store.write(lambda conn: conn.execute(sa.select(1)).scalar())
        await hub.store.read(lambda conn: conn.execute(sa.select(1)).scalar())


def aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@pytest.fixture
def clock() -> Iterator[FrozenClock]:
    """The hub's clock stopped on the events' morning (ask for it before ``hub``)."""
    with FrozenClock(START) as frozen:
        yield frozen


@pytest.fixture
async def hub(database_url: str) -> AsyncIterator[Hub]:
    async with Hub.open(Config(database_url=database_url), autoload=True) as hub:
        yield hub


@asynccontextmanager
async def running(hub: Hub, *dests: Destination, store: Any = None, **settings: Any) -> AsyncIterator[Relay]:
    """A relay of the test's destinations on the hub's database (slow idle polls: it wakes
    on commits); stopped at the end."""
    settings = {"lease_s": 30.0, "poll_s": 30.0, **settings}
    relay = Relay(store or hub.store, list(dests), hub.feed.signal, **settings)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


def metrics(relay: Relay) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels["destination"]): s.value for family in relay.collect() for s in family.samples}


def sleeps_of(monkeypatch: pytest.MonkeyPatch, task_name: str) -> list[float]:
    """The delays ``asyncio.sleep`` is asked for by the task of that name, from now on."""
    slept: list[float] = []
    original_sleep = asyncio.sleep

    async def sleep(delay: float, *args: Any, **kwargs: Any) -> Any:
        task = asyncio.current_task()
        if task is not None and task.get_name() == task_name:
            slept.append(delay)
        return await original_sleep(delay, *args, **kwargs)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    return slept


# ---- settings, checked as the hub starts ---------------------------------------------------


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ("lake", "[destinations] must be a table of [destinations.NAME] tables"),
        ({"lake": "kept"}, "[destinations.lake] must be a table"),
        ({"": {"kind": "kept"}}, "[destinations.]: a destination's name is letters, digits, - and _ (64 at most)"),
        ({"a" * 65: {"kind": "kept"}}, f"[destinations.{'a' * 65}]: a destination's name is"),
        ({"lake.eu": {"kind": "kept"}}, "[destinations.lake.eu]: a destination's name is"),
        ({"lake eu": {"kind": "kept"}}, "[destinations.lake eu]: a destination's name is"),
        ({"lake": {}}, "[destinations.lake].kind must name a destination kind (registered: kept, odd)"),
        ({"lake": {"kind": 3}}, "[destinations.lake].kind must name a destination kind (registered: kept, odd)"),
        ({"lake": {"kind": "kept", "types": ["a." + "b" * 63]}}, "[destinations.lake].types must list change types"),
        ({"lake": {"kind": "kept", "batch_size": 0}}, "[destinations.lake].batch_size must be at least 1 and at most"),
        ({"lake": {"kind": "kept", "batch_size": 1001}}, "[destinations.lake].batch_size must be at least 1 and at"),
        ({"lake": {"kind": "kept", "start": "now"}}, '[destinations.lake].start must be "earliest" or "latest"'),
        ({"lake": {"kind": "kept", "retry_base_s": 0}}, "[destinations.lake].retry_base_s must be at least 0.001"),
        ({"lake": {"kind": "kept", "retry_cap_s": 0}}, "[destinations.lake].retry_cap_s must be at least 0.001"),
        (
            {"lake": {"kind": "kept", "deliver_timeout_s": 0}},
            "[destinations.lake].deliver_timeout_s must be at least 0.001",
        ),
        ({"lake": {"kind": "odd"}}, "destination kind 'odd' opened object, which is not a Sink"),
    ],
)
def test_a_bad_destination_table_is_refused_naming_it(tables: Any, message: str) -> None:
    kinds = kinds_of(kept=Kept())
    kinds.add("odd", DestinationKind(name="odd", open=lambda settings: object()), "tests")  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigError) as refused:
        open_destinations(Config(raw={"destinations": tables}), kinds)
    assert str(refused.value).startswith(message)


def test_without_kinds_the_refusal_says_none_are_registered() -> None:
    with pytest.raises(ConfigError, match=r"\(registered: none\)"):
        open_destinations(Config(raw={"destinations": {"lake": {"kind": "kept"}}}), Registry("destination kind"))


def test_the_edges_of_each_setting_are_accepted() -> None:
    sink = Kept()
    tables = {
        "a" * 64: {"kind": "kept", "batch_size": 1, "start": "latest", "types": ["a." + "b" * 62]},
        "a": {"kind": "kept"},
        "Lake-2_eu": {"kind": "kept", "batch_size": 1000, "retry_base_s": 0.001, "retry_cap_s": 0.001},
        "crm": {"kind": "kept", "deliver_timeout_s": 0.001, "retry_base_s": 2.5, "retry_cap_s": 30},
    }
    found = {d.name: d for d in opened(tables, kept=sink)}
    assert list(found) == sorted(tables)  # opened in the order of their names
    edge, lake, crm = found["a" * 64], found["Lake-2_eu"], found["crm"]
    assert (edge.settings.batch_size, edge.start, edge.settings.types) == (1, "latest", frozenset({"a." + "b" * 62}))
    assert (lake.settings.batch_size, lake.retry_base_s, lake.retry_cap_s) == (1000, 0.001, 0.001)
    assert (crm.deliver_timeout_s, crm.retry_base_s, crm.retry_cap_s) == (0.001, 2.5, 30.0)
    assert all(d.sink is sink and d.settings.kind == "kept" for d in found.values())


def test_the_defaults_are_the_documented_ones() -> None:
    """docs/destinations.md: every type, 1000 a batch, from the oldest change kept, retries
    from 1 s up to 300 s, a delivery taking over 60 s failed; five failures in a row stop
    calling it for a minute."""
    (dest,) = opened({"lake": {"kind": "kept"}}, kept=Kept())
    assert (dest.settings.types, dest.settings.batch_size, dest.start) == (None, 1000, "earliest")
    assert (dest.retry_base_s, dest.retry_cap_s, dest.deliver_timeout_s) == (1.0, 300.0, 60.0)
    assert (dest.breaker.fail_max, dest.breaker.timeout_duration) == (5, timedelta(minutes=1))
    assert opened({}, kept=Kept()) == []


# ---- prm destinations replay ---------------------------------------------------------------


async def _cursors(hub: Hub, **positions: int) -> None:
    rows = [
        {"name": n, "kind": "kept", "position": p, "pending_through": p, "updated_at": START}
        for n, p in positions.items()
    ]
    await hub.store.write(lambda conn: conn.execute(destination_cursors.insert(), rows))


async def test_a_replay_moves_one_cursor_back_and_forgets_its_later_dead_letters(hub: Hub) -> None:
    await send(hub, *(ev(f"e{i}", i, f"p{i}@example.com") for i in range(3)))
    head = int((await positions_of(hub))[-1])
    await _cursors(hub, lake=head, crm=head)
    letters = [{"destination": d, "position": p, "type": "customer.created", "reason": "no", "at": START}
               for d in ("lake", "crm") for p in (3, 4, 5)]  # fmt: skip
    await hub.store.write(lambda conn: conn.execute(dead_letters.insert(), letters))

    assert await replay(hub.store, "lake", "4") == 3
    lake, crm = await cursor_of(hub, "lake"), await cursor_of(hub, "crm")
    assert (lake.position, lake.pending_through) == (3, None)  # delivers from 4 on, no batch pinned
    assert (crm.position, crm.pending_through) == (head, head)
    assert [(d, p) for d, p, _ in await letters_of(hub)] == [("crm", 3), ("crm", 4), ("crm", 5), ("lake", 3)]


async def test_a_replay_is_from_a_position_the_feed_has(clock: FrozenClock, hub: Hub) -> None:
    await send(hub, ev("e1", 0, "ann@example.com"))
    clock.advance(days=40)
    await send(hub, ev("e2", 1, "bob@example.com"))
    assert await hub.feed.prune_once() > 0
    kept = await positions_of(hub)
    oldest, head = int(kept[0]), int(kept[-1])
    await _cursors(hub, lake=head)

    async def refused(start: str) -> str:
        with pytest.raises(ConfigError) as raised:
            await replay(hub.store, "lake", start)
        return str(raised.value)

    assert await refused("0") == "--from must be a position of the feed (1 or more)"
    assert await refused(str(oldest - 1)) == f"position {oldest - 1} is older than the oldest change kept ({oldest})"
    assert await refused(str(head + 2)) == f"position {head + 2} is past the newest change ({head})"
    assert await refused("1") == f"position 1 is older than the oldest change kept ({oldest})"
    assert await replay(hub.store, "lake", str(oldest)) == oldest - 1
    assert await replay(hub.store, "lake", str(head + 1)) == head  # from the next change recorded
    assert (await cursor_of(hub, "lake")).position == head
    with pytest.raises(InvalidInput, match="from must be a position"):
        await replay(hub.store, "lake", "x")
    with pytest.raises(ConfigError, match="no destination 'nowhere' has delivered yet"):
        await replay(hub.store, "nowhere", "1")


async def test_a_replay_from_the_first_position_of_a_feed_never_pruned(hub: Hub) -> None:
    await send(hub, ev("e1", 0, "ann@example.com"))
    await _cursors(hub, lake=2)
    assert await replay(hub.store, "lake", "1") == 0
    assert (await cursor_of(hub, "lake")).position == 0


# ---- registering, delivering --------------------------------------------------------------


async def test_a_new_destination_gets_its_cursor_as_the_hub_starts(hub: Hub) -> None:
    """``earliest``: the oldest change kept; ``latest``: the newest there is as the hub
    starts, so what is recorded once it runs is delivered. The cursors are there before
    anything is delivered (``prm destinations`` lists them at once)."""
    await send(hub, ev("e1", 0, "ann@example.com"), ev("e2", 1, "bob@example.com"))
    everything = await positions_of(hub)
    lake, crm = Kept(), Kept()
    lake.gate = crm.gate = asyncio.Event()  # nothing is delivered until the test says
    store = Watched(hub.store)
    store.held = {"_claim"}  # the delivery tasks wait to take their leases
    async with running(hub, destination("lake", lake), destination("crm", crm, start="latest"), store=store):
        assert ((await cursor_of(hub, "lake")).position, (await cursor_of(hub, "crm")).position) == (
            0,
            int(everything[-1]),
        )
        await send(hub, ev("e3", 2, "cy@example.com"))
        later = [p for p in await positions_of(hub) if p not in everything]
        store.let_go.set()
        lake.gate.set()
        await until(lambda: _async(lake.positions() == everything + later and crm.positions() == later))
        await until(lambda: _cursor_at(hub, "lake", later[-1]))
        await until(lambda: _cursor_at(hub, "crm", later[-1]))
    # a second start keeps both cursors where they are
    async with running(hub, destination("lake", lake), destination("crm", crm, start="latest")) as relay:
        await until(lambda: _async(all(d.cursor == int(later[-1]) for d in relay.destinations)))
        assert lake.positions() == everything + later and crm.positions() == later


async def _async(value: Any) -> Any:
    return value


async def test_a_destination_of_some_types_moves_past_the_others(clock: FrozenClock, hub: Hub) -> None:
    sink = Kept()
    store = Watched(hub.store)
    async with running(hub, destination("lake", sink, types=["customer.created"]), store=store, poll_s=0.05) as relay:
        await send(hub, ev("e1", 0, "ann@example.com"), ev("e2", 1, "bob@example.com"))
        created = await positions_of(hub, {"customer.created"})
        everything = await positions_of(hub)
        assert everything[-1] not in created  # the newest change is of another type
        await until(lambda: _async(sink.positions() == created))
        row = await until(lambda: _cursor_at(hub, "lake", everything[-1]))
        assert row.pending_through is None and aware(row.delivered_at) == START
        assert metrics(relay)[("prm_destination_lag_changes", "lake")] == 0
        # idle polls, the clock moved on: no delivery noted
        clock.advance(minutes=5)
        reads = store.reads
        await until(lambda: _async(store.reads >= reads + 6))
        row = await cursor_of(hub, "lake")
        assert aware(row.delivered_at) == START
        # its lease, half gone by this process's reckoning, taken again: held for another 30 s
        assert row.lease_owner == relay.owner and aware(row.lease_until) > clock.now


async def test_changes_only_of_other_types_move_the_cursor_past_them(hub: Hub) -> None:
    """A destination of some types, idle, while only changes of other types are recorded: its
    cursor moves past them (no lag shown, and its next read starts after them)."""
    sink = Kept()
    async with running(hub, destination("lake", sink, types=["customer.created"]), poll_s=0.05) as relay:
        await send(hub, ev("e1", 0, "ann@example.com"))
        created = await positions_of(hub, {"customer.created"})
        await until(lambda: _async(sink.positions() == created))
        await send(hub, ev("e2", 1, "ann@example.com"))  # the same customer: nothing created
        assert await positions_of(hub, {"customer.created"}) == created
        everything = await positions_of(hub)
        await until(lambda: _cursor_at(hub, "lake", everything[-1]))
        await until(lambda: _async(relay.destinations[0].cursor == int(everything[-1])))
        assert metrics(relay)[("prm_destination_lag_changes", "lake")] == 0
        assert sink.positions() == created


async def _cursor_at(hub: Hub, name: str, position: str) -> Any:
    row = await cursor_of(hub, name)
    return row if row is not None and str(row.position) == position else None


async def test_each_destination_moves_on_its_own_cursor(hub: Hub) -> None:
    """One destination failing holds up neither the others nor their cursors; two that
    refuse the same change each keep it in their own dead letters."""
    lake, crm, bus = Kept(), Kept(), Kept()
    lake.fail_next = 10**6
    crm.refuse = bus.refuse = {"customer.created"}
    dests = [destination("lake", lake), destination("crm", crm), destination("bus", bus)]
    async with running(hub, *dests):
        await send(hub, ev("e1", 0, "ann@example.com"))
        everything = await positions_of(hub)
        created = await positions_of(hub, {"customer.created"})
        await until(lambda: _cursor_at(hub, "crm", everything[-1]))
        await until(lambda: _cursor_at(hub, "bus", everything[-1]))
        await until(lambda: _async(lake.calls >= 2))
        row = await cursor_of(hub, "lake")
        assert row.position == 0 and row.last_error == "ConnectionError: warehouse away"
        assert (await cursor_of(hub, "crm")).last_error is None
        assert crm.positions() == bus.positions() == everything
        letters = await letters_of(hub)
        assert [(d, str(p)) for d, p, _ in letters] == [("bus", p) for p in created] + [("crm", p) for p in created]


async def test_two_destinations_at_one_position_each_keep_their_own_batch(clock: FrozenClock, hub: Hub) -> None:
    """Two destinations of this process at the same position, of different batch sizes: one
    noting its batch, or moving past it, leaves the other's cursor and noted batch as they
    were, so the other sends again exactly the batch it had sent, and nothing is skipped."""
    until_at = clock.now + timedelta(seconds=30)
    crm_row = {"name": "crm", "kind": "kept", "position": 0, "lease_owner": "rly_other", "lease_until": until_at}
    await hub.store.write(
        lambda conn: conn.execute(destination_cursors.insert().values(**crm_row, updated_at=clock.now))
    )
    await send(hub, ev("e1", 0, "ann@example.com"), ev("e2", 1, "bob@example.com"))
    everything = await positions_of(hub)
    lake, crm = Kept(), Kept()
    lake.gate = asyncio.Event()
    lake.fail_next = 1  # its first batch, once let through, fails: sent again
    async with running(hub, destination("lake", lake, batch_size=1), destination("crm", crm), lease_s=0.2):
        await until(lambda: _async(lake.calls))  # lake's first batch is noted and out
        clock.now = until_at  # the other process's lease of crm ends: this one takes crm over
        await until(lambda: _cursor_at(hub, "crm", everything[-1]))
        row = await cursor_of(hub, "lake")
        assert (row.position, row.pending_through) == (0, int(everything[0]))
        lake.gate.set()
        await until(lambda: _async(lake.positions() == everything))
    assert [[c.position for c in batch] for batch in lake.batches] == [[p] for p in everything]
    assert crm.positions() == everything and len(crm.batches) == 1


async def test_refused_changes_are_dead_lettered_with_the_reason_cut_and_logged(hub: Hub) -> None:
    sink = Kept()
    sink.refuse = {"customer.created"}
    sink.reason = "r" * 600
    with structlog.testing.capture_logs() as logs:
        async with running(hub, destination("lake", sink)) as relay:
            await send(hub, ev("e1", 0, "ann@example.com"), ev("e2", 1, "bob@example.com"))
            everything = await positions_of(hub)
            created = await positions_of(hub, {"customer.created"})
            # the relay's own cursor: set once its write returned, with its counts and its log line
            await until(lambda: _async(relay.destinations[0].cursor == int(everything[-1])))
            got = metrics(relay)
    letters = await letters_of(hub)
    assert [(d, str(p), r) for d, p, r in letters] == [("lake", p, "r" * 500) for p in created]
    refusals = [e for e in logs if e["event"] == "destination refused changes"]
    assert len(refusals) == len(sink.batches) == 1
    assert refusals[0]["count"] == len(created) and refusals[0]["reason"] == "r" * 200
    assert refusals[0]["log_level"] == "warning" and refusals[0]["destination"] == "lake"
    assert got[("prm_destination_delivered_total", "lake")] == len(everything) - len(created)
    assert got[("prm_destination_dead_letters_total", "lake")] == len(created)


async def test_a_batch_delivered_without_refusals_logs_none(hub: Hub) -> None:
    sink = Kept()
    with structlog.testing.capture_logs() as logs:
        async with running(hub, destination("lake", sink)):
            await send(hub, ev("e1", 0, "ann@example.com"))
            everything = await positions_of(hub)
            await until(lambda: _cursor_at(hub, "lake", everything[-1]))
    assert [e for e in logs if e["log_level"] in ("warning", "error")] == []


# ---- metrics ---------------------------------------------------------------------------


async def test_the_metrics_of_a_destination_not_started_are_zeros(hub: Hub) -> None:
    relay = Relay(hub.store, [destination("lake", Kept())], hub.feed.signal, lease_s=30.0)
    assert metrics(relay) == {
        ("prm_destination_lag_changes", "lake"): 0,
        ("prm_destination_lag_seconds", "lake"): 0.0,
        ("prm_destination_delivered_total", "lake"): 0,
        ("prm_destination_failures_total", "lake"): 0,
        ("prm_destination_dead_letters_total", "lake"): 0,
    }
    assert [m.name for m in relay.collector().collect()] == [
        "prm_destination_lag_changes",
        "prm_destination_lag_seconds",
        "prm_destination_delivered",
        "prm_destination_failures",
        "prm_destination_dead_letters",
    ]


async def test_the_metrics_show_how_far_a_failing_destination_is_behind(clock: FrozenClock, hub: Hub) -> None:
    sink = Kept()
    sink.fail_next = 10**6
    # a first retry at least 30 minutes away: one failure, then a wait
    async with running(hub, destination("lake", sink, retry_base_s=3600, retry_cap_s=3600)) as relay:
        await send(hub, ev("e1", 0, "ann@example.com"), ev("e2", 1, "bob@example.com"))
        everything = await positions_of(hub)
        await until(lambda: _async(relay.destinations[0].failures))
        got = metrics(relay)
        assert got[("prm_destination_lag_changes", "lake")] == len(everything)
        assert got[("prm_destination_lag_seconds", "lake")] == 0.0  # recorded this very instant
        assert got[("prm_destination_failures_total", "lake")] == 1
        assert got[("prm_destination_delivered_total", "lake")] == 0
        clock.advance(seconds=90)
        assert metrics(relay)[("prm_destination_lag_seconds", "lake")] == 90.0


async def test_the_lag_in_seconds_is_the_age_of_the_oldest_change_to_take(clock: FrozenClock, hub: Hub) -> None:
    await send(hub, ev("e1", 0, "ann@example.com"))
    clock.advance(seconds=30)
    await send(hub, ev("e2", 1, "bob@example.com"))
    sink = Kept()
    sink.fail_next = 10**6
    dest = destination("lake", sink, types=["customer.created"], retry_base_s=3600, retry_cap_s=3600)
    async with running(hub, dest) as relay:
        await until(lambda: _async(relay.destinations[0].failures))
        clock.advance(seconds=60)
        assert metrics(relay)[("prm_destination_lag_seconds", "lake")] == 90.0


async def test_the_metrics_count_deliveries_failures_and_dead_letters(hub: Hub) -> None:
    sink = Kept()
    sink.fail_next = 2
    sink.refuse = {"customer.created"}
    async with running(hub, destination("lake", sink)) as relay:
        await send(hub, ev("e1", 0, "ann@example.com"), ev("e2", 1, "bob@example.com"))
        everything = await positions_of(hub)
        created = await positions_of(hub, {"customer.created"})
        expected = {
            ("prm_destination_lag_changes", "lake"): 0,
            ("prm_destination_lag_seconds", "lake"): 0.0,  # of changes still to take: none
            ("prm_destination_delivered_total", "lake"): len(everything) - len(created),
            ("prm_destination_failures_total", "lake"): 2,
            ("prm_destination_dead_letters_total", "lake"): len(created),
        }
        await until(lambda: _async(relay.destinations[0].cursor == int(everything[-1])))
        await until(lambda: _async(metrics(relay) == expected))  # once it has looked for more


# ---- stopping ------------------------------------------------------------------------------


async def test_stopping_gives_the_lease_back_and_only_its_own(hub: Hub) -> None:
    held = {"name": "crm", "kind": "webhook", "position": 0, "lease_owner": "rly_other"}
    until_at = datetime.now(UTC) + timedelta(hours=1)
    await hub.store.write(
        lambda conn: conn.execute(
            destination_cursors.insert().values(**held, lease_until=until_at, updated_at=until_at)
        )
    )
    sink = Kept()
    async with running(hub, destination("lake", sink)) as relay:
        await send(hub, ev("e1", 0, "ann@example.com"))
        everything = await positions_of(hub)
        await until(lambda: _async(sink.positions() == everything))
        assert (await cursor_of(hub, "lake")).lease_owner == relay.owner
    lake, crm = await cursor_of(hub, "lake"), await cursor_of(hub, "crm")
    assert (lake.lease_owner, lake.lease_until) == (None, None)
    assert crm.lease_owner == "rly_other" and crm.lease_until is not None
    assert sink.closed == 1


async def test_a_delivery_in_flight_is_cut_short_then_the_sink_closed_then_it_is_sent_again(hub: Hub) -> None:
    sink = Kept()
    sink.gate = asyncio.Event()  # never set: the receiver never answers
    store = Watched(hub.store)
    relay = Relay(store, [destination("lake", sink)], hub.feed.signal, lease_s=30.0, poll_s=30.0)  # type: ignore[arg-type]
    await relay.start()
    await send(hub, ev("e1", 0, "ann@example.com"))
    everything = await positions_of(hub)
    await until(lambda: _async(sink.calls))
    writes = store.writes
    await round_trips(hub, 3)
    assert store.writes == writes  # the lease is renewed every 10 s of its 30, not more often
    stopping = asyncio.ensure_future(relay.stop())
    await asyncio.wait([stopping], timeout=20)
    assert stopping.done(), "stop() waits for a delivery that never ends"
    assert sink.happened == ["deliver", "cancelled", "closed"]  # closed once the delivery wound down
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith(("prm-destination-", "lease-"))]
    assert (await cursor_of(hub, "lake")).position == 0
    again = Kept()
    async with running(hub, destination("lake", again)):
        await until(lambda: _async(again.positions() == everything))


class StopsAsItDelivers(Kept):
    """A sink whose delivery ends as the hub stops: the stop's cancellation arrives with the
    delivery's result (Python 3.11's wait_for then returns the result, the cancellation lost)."""

    relay: Relay
    stopping: asyncio.Future[None]

    async def deliver(self, changes: Sequence[Change]) -> None:
        await super().deliver(changes)
        self.stopping = asyncio.ensure_future(self.relay.stop())


async def test_a_stop_as_a_delivery_ends_still_stops_the_relay(hub: Hub) -> None:
    sink = StopsAsItDelivers()
    sink.relay = Relay(hub.store, [destination("lake", sink)], hub.feed.signal, lease_s=30.0, poll_s=30.0)
    await sink.relay.start()
    await send(hub, ev("e1", 0, "ann@example.com"))
    everything = await positions_of(hub)
    await until(lambda: _async(sink.calls))
    await asyncio.wait([sink.stopping], timeout=20)
    assert sink.stopping.done(), "stop() waits for a task whose cancellation was lost"
    assert sink.positions() == everything and sink.happened == ["deliver", "closed"]


class Unclosable(Kept):
    async def close(self) -> None:
        raise RuntimeError("already closed")


async def test_a_failure_to_close_or_to_give_the_leases_back_is_logged_and_the_rest_goes_on(hub: Hub) -> None:
    broken, sink = Unclosable(), Kept()
    store = Watched(hub.store)
    with structlog.testing.capture_logs() as logs:
        async with running(hub, destination("crm", broken), destination("lake", sink), store=store):
            await send(hub, ev("e1", 0, "ann@example.com"))
            everything = await positions_of(hub)
            await until(lambda: _async(sink.positions() == everything and broken.positions() == everything))
            store.failing["_release"] = 1
    assert sink.closed == 1
    assert [(e["event"], e.get("destination"), e["error"]) for e in logs if e["log_level"] == "warning"] == [
        ("destination leases not released", None, "StoreUnavailable"),
        ("destination close failed", "crm", "RuntimeError"),
    ]
    # the leases run out by themselves
    assert (await cursor_of(hub, "lake")).lease_owner is not None


# ---- hub processes sharing a destination ----------------------------------------------------


async def test_a_destination_another_process_holds_is_left_to_it_until_its_lease_runs_out(
    clock: FrozenClock, hub: Hub
) -> None:
    until_at = clock.now + timedelta(seconds=30)
    other = {"kind": "kept", "position": 0, "lease_owner": "rly_other", "lease_until": until_at}
    await hub.store.write(
        lambda conn: conn.execute(
            destination_cursors.insert(),
            [{"name": n, **other, "updated_at": clock.now} for n in ("lake", "crm")],
        )
    )
    await send(hub, ev("e1", 0, "ann@example.com"))
    everything = await positions_of(hub)
    sink = Kept()
    store = Watched(hub.store)
    # a lease of 0.2 s: a process that does not hold it looks again every 0.1 s
    async with running(hub, destination("lake", sink), store=store, lease_s=0.2) as relay:
        await until(lambda: _async(store.writes >= 4))  # its start, then three tries
        assert sink.calls == 0
        clock.now = until_at  # the other's lease ends now: it is the relay's
        await until(lambda: _cursor_at(hub, "lake", everything[-1]))
        assert sink.positions() == everything
        lake, crm = await cursor_of(hub, "lake"), await cursor_of(hub, "crm")
        assert lake.lease_owner == relay.owner and str(lake.position) == everything[-1]
        assert (crm.lease_owner, aware(crm.lease_until), crm.position) == ("rly_other", until_at, 0)


async def test_a_cursor_taken_over_during_a_delivery_is_left_to_its_new_owner(hub: Hub) -> None:
    sink = Kept()
    sink.gate = asyncio.Event()
    c = destination_cursors.c
    with structlog.testing.capture_logs() as logs:
        async with running(hub, destination("lake", sink)):
            await send(hub, ev("e1", 0, "ann@example.com"))
            await until(lambda: _async(sink.calls))
            # another process took the destination over meanwhile (this one was too slow)
            await hub.store.write(
                lambda conn: conn.execute(
                    destination_cursors.update().where(c.name == "lake").values(lease_owner="rly_other")
                )
            )
            sink.gate.set()
            await until(lambda: _async(sink.batches))
            await until(lambda: _async([e for e in logs if e["event"] == "destination cursor moved elsewhere"]))
            row = await cursor_of(hub, "lake")
            assert (row.lease_owner, row.position) == ("rly_other", 0)


class RefusesOnce(Kept):
    async def deliver(self, changes: Sequence[Change]) -> None:
        try:
            await super().deliver(changes)
        except Refused:
            self.refuse = set()
            raise


async def test_a_replay_during_a_delivery_wins_over_it(hub: Hub) -> None:
    """``prm destinations replay`` while a batch is out: the cursor stays where the replay
    put it, and the changes are delivered again from there; what that batch refused is not
    kept as dead letters (the replay asked for those changes again)."""
    sink = RefusesOnce()
    async with running(hub, destination("lake", sink)):
        await send(hub, ev("e1", 0, "ann@example.com"))
        first = await positions_of(hub)
        await until(lambda: _async(sink.positions() == first))
        sink.gate = asyncio.Event()
        await send(hub, ev("e2", 1, "bob@example.com"))
        everything = await positions_of(hub)
        await until(lambda: _async(sink.calls == 2))
        await replay(hub.store, "lake", first[0])
        sink.refuse = {"customer.created"}
        sink.gate.set()
        await until(lambda: _async(sink.positions() == first + everything[len(first) :] + everything))
        await until(lambda: _cursor_at(hub, "lake", everything[-1]))
    assert await letters_of(hub) == []


async def test_a_destination_another_process_took_over_is_not_delivered_from_its_batch(hub: Hub) -> None:
    """Taken over while this process idled on a lease it still believes its own, with a batch
    the new owner noted: this process looks again, and leaves it."""
    sink = Kept()
    store = Watched(hub.store)
    c = destination_cursors.c
    async with running(hub, destination("lake", sink), store=store):
        await send(hub, ev("e1", 0, "ann@example.com"))
        first = await positions_of(hub)
        await until(lambda: _cursor_at(hub, "lake", first[-1]))
        # the new owner was replayed from the start, and noted its first batch
        await hub.store.write(
            lambda conn: conn.execute(
                destination_cursors.update()
                .where(c.name == "lake")
                .values(lease_owner="rly_other", position=0, pending_through=int(first[-1]))
            )
        )
        claims = store.steps.count("_claim")
        await send(hub, ev("e2", 1, "bob@example.com"))  # wakes it
        await until(lambda: _async(sink.calls > 1 or store.steps.count("_claim") > claims))
        assert sink.positions() == first


# ---- failures ------------------------------------------------------------------------------


async def test_retries_back_off_by_the_failures_in_a_row(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[int, float, float]] = []

    def backoff_s(attempt: int, retry_after_s: float | None, *, base_s: float, cap_s: float) -> float:
        asked.append((attempt, base_s, cap_s))
        return 0.0123456

    monkeypatch.setattr("prm_core.feed.relay.backoff_s", backoff_s)
    sink = Kept()
    sink.fail_next = 3
    with structlog.testing.capture_logs() as logs:
        async with running(hub, destination("lake", sink, retry_base_s=0.5, retry_cap_s=7)) as relay:
            await send(hub, ev("e1", 0, "ann@example.com"))
            first = await positions_of(hub)
            await until(lambda: _async(sink.positions() == first))
            sink.fail_next = 2
            await send(hub, ev("e2", 1, "bob@example.com"))
            everything = await positions_of(hub)
            await until(lambda: _async(relay.destinations[0].cursor == int(everything[-1])))
    assert asked == [(1, 0.5, 7.0), (2, 0.5, 7.0), (3, 0.5, 7.0), (1, 0.5, 7.0), (2, 0.5, 7.0)]
    failed = [e for e in logs if e["event"] == "destination delivery failed"]
    assert len(failed) == 5
    assert failed[0] == {
        "event": "destination delivery failed",
        "destination": "lake",
        "error": "ConnectionError: warehouse away",
        "retry_in_s": 0.012,
        "log_level": "warning",
    }


async def test_a_retry_waits_its_delay(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("prm_core.feed.relay.backoff_s", lambda attempt, *_, **__: 0.0 if attempt < 2 else 3600.0)
    sink = Kept()
    sink.fail_next = 10**6
    async with running(hub, destination("lake", sink)):
        await send(hub, ev("e1", 0, "ann@example.com"))
        await until(lambda: _async(sink.calls == 2))
        await round_trips(hub, 10)
        assert sink.calls == 2


async def test_five_failures_in_a_row_rest_the_destination_then_it_tries_again(hub: Hub) -> None:
    sink = Kept()
    sink.fail_next = 5
    dest = destination("lake", sink, retry_base_s=0.001, retry_cap_s=0.001)
    dest.breaker.timeout_duration = timedelta(seconds=3)  # a rest of 3 s, not the minute
    store = Watched(hub.store)
    async with running(hub, dest, store=store):
        await send(hub, ev("e1", 0, "ann@example.com"))
        everything = await positions_of(hub)
        await until(lambda: _async(dest.breaker.current_state is CircuitBreakerState.OPEN))
        assert sink.calls == 5
        reads = store.reads
        await round_trips(hub, 3)
        assert (sink.calls, store.reads) == (5, reads)  # resting: neither called nor read from
        await until(lambda: _async(sink.positions()[: len(everything)] == everything))
        assert dest.breaker.current_state is CircuitBreakerState.CLOSED


class SlowFirst(Kept):
    async def deliver(self, changes: Sequence[Change]) -> None:
        if not self.calls:
            self.calls += 1
            await asyncio.sleep(3600)  # cut short by the delivery's timeout
        await super().deliver(changes)


async def test_a_delivery_past_its_timeout_is_a_failure_retried(hub: Hub) -> None:
    sink = SlowFirst()
    async with running(hub, destination("lake", sink, deliver_timeout_s=0.1, retry_base_s=3600)):
        await send(hub, ev("e1", 0, "ann@example.com"))
        row = await until(lambda: _errored(hub))
        assert row.last_error == "TimeoutError" and row.position == 0 and sink.batches == []


async def _errored(hub: Hub) -> Any:
    row = await cursor_of(hub, "lake")
    return row if row is not None and row.last_error else None


async def test_a_long_error_is_kept_cut_to_300_characters(hub: Hub) -> None:
    sink = Kept()
    sink.fail_next = 10**6
    sink.error = ConnectionError("  " + "x" * 400 + "  ")
    async with running(hub, destination("lake", sink, retry_base_s=3600, retry_cap_s=3600)):
        await send(hub, ev("e1", 0, "ann@example.com"))
        row = await until(lambda: _errored(hub))
        assert row.last_error == "ConnectionError: " + "x" * 300


async def test_an_error_is_kept_cut_to_the_500_characters_of_its_column(hub: Hub) -> None:
    """A sink's error with a long type name: its type and message, cut to what the column holds."""
    sink = Kept()
    sink.fail_next = 10**6
    sink.error = type("E" * 300, (Exception,), {})("x" * 400)
    async with running(hub, destination("lake", sink, retry_base_s=3600, retry_cap_s=3600)):
        await send(hub, ev("e1", 0, "ann@example.com"))
        row = await until(lambda: _errored(hub))
        assert row.last_error == "E" * 300 + ": " + "x" * 198


async def test_the_relay_goes_on_when_the_database_comes_back(hub: Hub) -> None:
    """Reading the feed, noting the batch, moving the cursor, noting an error: each may fail
    while the database is away; nothing is lost, nothing is sent before its batch is noted."""
    sink = Kept()
    sink.fail_next = 1
    store = Watched(hub.store)
    store.failing = {"read_changes": 2, "_pin": 10**6, "_advance": 1, "_note_error": 1}
    with structlog.testing.capture_logs() as logs:
        async with running(hub, destination("lake", sink), store=store, poll_s=0.01) as relay:
            await send(hub, ev("e1", 0, "ann@example.com"))
            everything = await positions_of(hub)
            await until(lambda: _async(store.failed.count("_pin") >= 2))
            assert sink.calls == 0  # never sent before its batch is noted
            store.failing["_pin"] = 0  # the database is back
            await until(lambda: _async(relay.destinations[0].cursor == int(everything[-1])))
    # the batch delivered, its cursor not saved: delivered again, the same batch
    assert sink.batches == [sink.batches[0]] * 2 and sink.positions()[: len(everything)] == everything
    pins = store.failed.count("_pin")
    assert sorted(store.failed) == ["_advance", "_note_error", *["_pin"] * pins, "read_changes", "read_changes"]
    warned = [(e["event"], e["error"]) for e in logs if e["log_level"] == "warning"]
    assert [w for w in warned if w[1] == "StoreUnavailable"] == [
        ("destination read failed", "StoreUnavailable"),
        ("destination read failed", "StoreUnavailable"),
        *[("destination batch not pinned", "StoreUnavailable")] * pins,
        ("destination error not saved", "StoreUnavailable"),
        ("destination cursor not saved", "StoreUnavailable"),
    ]


# ---- waiting -----------------------------------------------------------------------------


async def test_an_idle_destination_waits_for_the_next_commit(hub: Hub) -> None:
    sink = Kept()
    store = Watched(hub.store)
    async with running(hub, destination("lake", sink), store=store):
        await send(hub, ev("e1", 0, "ann@example.com"))
        first = await positions_of(hub)
        await until(lambda: _cursor_at(hub, "lake", first[-1]))
        await until(lambda: _async(store.steps[-1] == "read_changes"))  # looked for more: none
        reads = store.reads
        await round_trips(hub, 5)
        assert store.reads == reads  # not polling: its next look is 30 s away, or at a commit
        await send(hub, ev("e2", 1, "bob@example.com"))
        everything = await positions_of(hub)
        await until(lambda: _async(sink.positions() == everything))  # woken by the commit


async def test_an_idle_destination_holding_its_lease_reads_its_cursor_and_writes_nothing(hub: Hub) -> None:
    """While its lease has more than half its time left, each look reads the cursor: the
    writer is shared with ingest, and a look that finds nothing new takes no write transaction."""
    store = Watched(hub.store)
    async with running(hub, destination("lake", Kept()), store=store, poll_s=0.02):
        await send(hub, ev("e1", 0, "ann@example.com"))
        first = await positions_of(hub)
        await until(lambda: _cursor_at(hub, "lake", first[-1]))
        await until(lambda: _async(store.steps[-1] == "read_changes"))
        writes, looks = store.writes, store.steps.count("_cursor")
        await until(lambda: _async(store.steps.count("_cursor") >= looks + 5))
        assert store.writes == writes


async def test_a_batch_takes_one_read_of_the_feed_one_write_to_note_it_and_one_to_move_past_it(hub: Hub) -> None:
    store = Watched(hub.store)
    sink = Kept()
    async with running(hub, destination("lake", sink), store=store):
        await send(hub, ev("e1", 0, "ann@example.com"))
        first = await positions_of(hub)
        await until(lambda: _cursor_at(hub, "lake", first[-1]))
        await until(lambda: _async(store.steps[-1] == "read_changes"))  # looked for more: none
        idle = len(store.steps)
        await send(hub, ev("e2", 1, "bob@example.com"))
        everything = await positions_of(hub)
        await until(lambda: _cursor_at(hub, "lake", everything[-1]))
        await until(lambda: _async(store.steps[-1] == "read_changes"))
        assert store.steps[idle:] == ["_cursor", "read_changes", "_pin", "_advance", "_cursor", "read_changes"]
        assert sink.positions() == everything


class KeptKind:
    """A plugin registering the destination kind ``kept``, which opens the test's sink."""

    def __init__(self, sink: Kept) -> None:
        self.sink = sink

    @hookimpl
    def prm_destination_kinds(self, config: Config) -> Iterator[DestinationKind]:
        yield DestinationKind(name="kept", open=lambda settings: self.sink)


async def test_the_hubs_destinations_look_for_changes_every_second_when_idle(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Woken by this process's commits; another process's (on SQLite nothing tells the hub of
    them) are looked for every second."""
    waits: list[float] = []
    original_wait = FeedSignal.wait

    async def wait(self: FeedSignal, seconds: float, topics: Any = None, *, watched: Any = None) -> bool:
        if asyncio.current_task().get_name() == "prm-destination-lake":  # type: ignore[union-attr]
            waits.append(seconds)
        return await original_wait(self, seconds, topics, watched=watched)

    monkeypatch.setattr(FeedSignal, "wait", wait)
    sink = Kept()
    config = Config(database_url=database_url, raw={"destinations": {"lake": {"kind": "kept"}}})
    async with Hub.open(config, plugins=[KeptKind(sink)], autoload=True) as hub:
        await send(hub, ev("e1", 0, "ann@example.com"))
        everything = await positions_of(hub)
        await until(lambda: _async(sink.positions() == everything and len(waits) >= 2))
    assert set(waits) == {1.0}


async def test_a_process_without_the_lease_tries_again_every_half_lease(
    clock: FrozenClock, hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    until_at = clock.now + timedelta(hours=1)
    held = {"name": "lake", "kind": "kept", "position": 0, "lease_owner": "rly_other", "lease_until": until_at}
    await hub.store.write(lambda conn: conn.execute(destination_cursors.insert().values(**held, updated_at=clock.now)))
    store = Watched(hub.store)
    slept = sleeps_of(monkeypatch, "prm-destination-lake")
    async with running(hub, destination("lake", Kept()), store=store):
        await until(lambda: _async(store.steps.count("_claim") == 1))
        await round_trips(hub, 5)
        assert store.steps.count("_claim") == 1  # the next try is 15 s away
        assert slept == [15.0]


async def test_a_relay_keeps_one_watch_on_the_feeds_commits_and_none_once_stopped(clock: FrozenClock, hub: Hub) -> None:
    """Each round watches for commits from before its read: the last round's watch is given up
    first, so a destination looking again and again (here: every half lease, another process
    holding it) keeps one, and a stopped relay none."""
    held = {"name": "lake", "kind": "kept", "position": 0, "lease_owner": "rly_other"}
    await hub.store.write(
        lambda conn: conn.execute(
            destination_cursors.insert().values(
                **held, lease_until=clock.now + timedelta(hours=1), updated_at=clock.now
            )
        )
    )
    signal = FeedSignal()  # the relay's own: the hub's readers watch the hub's as well
    store = Watched(hub.store)
    relay = Relay(store, [destination("lake", Kept())], signal, lease_s=0.2, poll_s=30.0)  # type: ignore[arg-type]
    await relay.start()
    try:
        await until(lambda: _async(store.steps.count("_claim") >= 5))
        assert len(signal._watches) == 1
    finally:
        await relay.stop()
    assert signal._watches == []


@pytest.mark.parametrize(("poll_s", "pause_s"), [(30.0, 30.0), (0.05, 5.0)])
async def test_a_destination_behind_retention_is_reported_once_and_looked_at_again_later(
    clock: FrozenClock, hub: Hub, monkeypatch: pytest.MonkeyPatch, poll_s: float, pause_s: float
) -> None:
    """Its next look is a poll away, and at least 5 s."""
    await send(hub, ev("e1", 0, "ann@example.com"))
    clock.advance(days=40)
    await send(hub, ev("e2", 1, "bob@example.com"))
    assert await hub.feed.prune_once() > 0
    pruned = int((await positions_of(hub))[0]) - 1
    await _cursors(hub, lake=0)
    store = Watched(hub.store)
    slept = sleeps_of(monkeypatch, "prm-destination-lake")
    with structlog.testing.capture_logs() as logs:
        async with running(hub, destination("lake", Kept()), store=store, poll_s=poll_s):
            row = await until(lambda: _errored(hub))
            reads = store.reads
            await round_trips(hub, 5)
            assert store.reads == reads
            await until(lambda: _async(slept))
    assert slept == [pause_s]
    assert row.last_error.startswith("destination lake fell behind the feed's retention: position 0 is older")
    behind = [e for e in logs if e["event"] == "destination fell behind"]
    assert behind == [
        {"event": "destination fell behind", "destination": "lake", "pruned_through": pruned, "log_level": "error"}
    ]


# ---- a cursor's row ------------------------------------------------------------------------


@pytest.mark.parametrize("start", ["earliest", "latest"])
async def test_a_destination_whose_cursor_was_deleted_starts_again_as_a_new_one(
    clock: FrozenClock, hub: Hub, start: str
) -> None:
    sink = Kept()
    async with running(hub, destination("lake", sink, start=start)) as relay:
        await send(hub, ev("e1", 0, "ann@example.com"))
        first = await positions_of(hub)
        await until(lambda: _cursor_at(hub, "lake", first[-1]))
        await hub.store.write(lambda conn: conn.execute(destination_cursors.delete()))  # by hand
        await send(hub, ev("e2", 1, "bob@example.com"))
        everything = await positions_of(hub)
        row = await until(lambda: _cursor_at(hub, "lake", everything[-1]))
        lease = (row.kind, row.lease_owner, aware(row.lease_until))
        assert lease == ("kept", relay.owner, clock.now + timedelta(seconds=30))
        if start == "earliest":  # from the oldest change kept: everything again
            assert sink.positions() == first + everything
        else:  # from the newest there is as it looks again
            assert sink.positions() == first


# ---- a batch noted, then ... ------------------------------------------------------------------


async def test_a_batch_is_not_sent_once_another_process_took_the_destination_over(hub: Hub) -> None:
    sink = Kept()
    store = Watched(hub.store)
    store.held = {"_pin"}
    c = destination_cursors.c
    async with running(hub, destination("lake", sink), store=store, lease_s=2.0, poll_s=0.05):
        await send(hub, ev("e1", 0, "ann@example.com"))
        await until(lambda: _async("_pin" in store.steps))
        await hub.store.write(
            lambda conn: conn.execute(
                destination_cursors.update().where(c.name == "lake").values(lease_owner="rly_other")
            )
        )
        store.let_go.set()
        await until(lambda: _async(store.steps.count("_claim") >= 2))  # it looked again: not its own
        assert sink.calls == 0
        row = await cursor_of(hub, "lake")
        assert (row.lease_owner, row.pending_through) == ("rly_other", None)


async def test_a_batch_is_not_sent_from_a_cursor_a_replay_moved(hub: Hub) -> None:
    sink = Kept()
    store = Watched(hub.store)
    async with running(hub, destination("lake", sink), store=store, poll_s=0.05):
        await send(hub, ev("e1", 0, "ann@example.com"))
        first = await positions_of(hub)
        await until(lambda: _cursor_at(hub, "lake", first[-1]))
        store.held = {"_pin"}
        await send(hub, ev("e2", 1, "bob@example.com"))
        everything = await positions_of(hub)
        await until(lambda: _async(store.steps.count("_pin") == 2))
        await replay(hub.store, "lake", first[0])
        store.let_go.set()
        await until(lambda: _async(sink.positions() == first + everything))  # from the replay's position


# ---- the lease during a delivery --------------------------------------------------------------


async def test_a_long_delivery_renews_the_lease_every_third_of_it(
    clock: FrozenClock, hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivery outlasting its lease many times over: renewed every third of the lease,
    each renewal holding it for a whole lease from then, so no other process takes it."""
    slept = sleeps_of(monkeypatch, "lease-lake")
    sink = Kept()
    sink.gate = asyncio.Event()
    async with running(hub, destination("lake", sink), lease_s=0.3) as relay:
        await send(hub, ev("e1", 0, "ann@example.com"))
        await until(lambda: _async(sink.calls))
        for _ in range(2):
            held_until = clock.advance(minutes=10) + timedelta(seconds=0.3)
            row = await until(functools.partial(_leased_until, hub, "lake", held_until))
            assert row.lease_owner == relay.owner
        sink.gate.set()
        await until(lambda: _async(sink.batches))
    assert len(slept) >= 2 and all(s == pytest.approx(0.1) for s in slept)


async def _leased_until(hub: Hub, name: str, at: datetime) -> Any:
    row = await cursor_of(hub, name)
    return row if row is not None and row.lease_until is not None and aware(row.lease_until) == at else None


async def test_a_lease_renewal_that_fails_is_logged_and_tried_again(hub: Hub) -> None:
    sink = Kept()
    sink.gate = asyncio.Event()
    store = Watched(hub.store)
    store.failing = {"_renew": 1}
    with structlog.testing.capture_logs() as logs:
        async with running(hub, destination("lake", sink), store=store, lease_s=0.3):
            await send(hub, ev("e1", 0, "ann@example.com"))
            await until(lambda: _async(store.steps.count("_renew") >= 3))
            sink.gate.set()
            await until(lambda: _async(sink.batches))
    assert store.failed == ["_renew"]
    assert [e for e in logs if e["event"] == "destination lease not renewed"] == [
        {
            "event": "destination lease not renewed",
            "destination": "lake",
            "error": "StoreUnavailable",
            "log_level": "warning",
        }
    ]


async def test_a_renewal_cut_short_as_the_delivery_ends_ends_with_it(hub: Hub) -> None:
    sink = Kept()
    sink.gate = asyncio.Event()
    store = Watched(hub.store)
    store.hanging = {"_renew"}
    async with running(hub, destination("lake", sink), store=store, lease_s=0.3):
        await send(hub, ev("e1", 0, "ann@example.com"))
        await until(lambda: _async("_renew" in store.steps))
        sink.gate.set()
        await until(lambda: _async(sink.batches))
        await until(lambda: _async(not [t for t in asyncio.all_tasks() if t.get_name().startswith("lease-")]))


async def test_a_renewal_leaves_a_lease_another_process_took_alone(hub: Hub) -> None:
    sink = Kept()
    sink.gate = asyncio.Event()
    store = Watched(hub.store)
    c = destination_cursors.c
    taken_until = datetime.now(UTC) + timedelta(hours=1)
    async with running(hub, destination("lake", sink), store=store, lease_s=0.3):
        await send(hub, ev("e1", 0, "ann@example.com"))
        await until(lambda: _async(sink.calls))
        await hub.store.write(
            lambda conn: conn.execute(
                destination_cursors.update()
                .where(c.name == "lake")
                .values(lease_owner="rly_other", lease_until=taken_until)
            )
        )
        renewals = store.steps.count("_renew")
        await until(lambda: _async(store.steps.count("_renew") >= renewals + 2))
        row = await cursor_of(hub, "lake")
        assert (row.lease_owner, aware(row.lease_until)) == ("rly_other", taken_until)
        sink.gate.set()


class RefusesOnceAsItsRestEnds(CircuitBreaker):
    """aiobreaker's breaker refusing a call the moment its rest ends: asked how long is left,
    it raises TypeError (as a breaker never opened does)."""

    refused = False

    async def call_async(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.refused:
            self.refused = True
            raise CircuitBreakerError("Timeout not elapsed yet, circuit breaker still open", datetime.now())
        return await super().call_async(func, *args, **kwargs)


async def test_a_breaker_refusing_as_its_rest_ends_does_not_stop_the_destination(hub: Hub) -> None:
    sink = Kept()
    dest = destination("lake", sink)
    dest.breaker = RefusesOnceAsItsRestEnds()
    async with running(hub, dest):
        await send(hub, ev("e1", 0, "ann@example.com"))
        everything = await positions_of(hub)
        await until(lambda: _async(sink.positions() == everything))
    assert dest.breaker.refused and dest.failures == 0  # refused by the breaker, not failed


@pytest.mark.parametrize("step", ["read_changes", "_pin", "_advance"])
async def test_a_database_away_is_asked_again_after_a_poll_not_in_a_loop(hub: Hub, step: str) -> None:
    store = Watched(hub.store)
    store.failing = {step: 10**6}
    async with running(hub, destination("lake", Kept()), store=store):
        await send(hub, ev("e1", 0, "ann@example.com"))
        await until(lambda: _async(store.failed))
        await round_trips(hub, 5)
        assert store.failed == [step]  # the next try is a poll (30 s) away


async def test_a_commit_between_a_read_and_the_wait_is_delivered_at_once(hub: Hub, monkeypatch) -> None:
    sink = Kept()
    woke: list[bool] = []
    original_wait = FeedSignal.wait

    async def wait(self: FeedSignal, seconds: float, topics: Any = None, *, watched: Any = None) -> bool:
        got = await original_wait(self, seconds, topics, watched=watched)
        if asyncio.current_task().get_name() == "prm-destination-lake":  # type: ignore[union-attr]
            woke.append(got)
        return got

    class CommitsAfterTheFirstRead(Watched):
        async def read(self, fn: Callable[..., Any]) -> Any:
            page = await super().read(fn)
            if self.step(fn) == "read_changes" and "committed" not in self.steps:
                self.steps.append("committed")  # once: a commit lands after the relay's look, before its wait
                await send(hub, ev("e1", 0, "ann@example.com"))
            return page

    monkeypatch.setattr(FeedSignal, "wait", wait)
    async with running(hub, destination("lake", sink), store=CommitsAfterTheFirstRead(hub.store)):  # a 30 s poll
        await until(lambda: _async(bool(sink.batches)))
        assert sink.positions() == await positions_of(hub)
    assert woke[:1] == [True]  # woken by that commit, not by the poll running out


class RestsFor(RefusesOnceAsItsRestEnds):
    """A breaker refusing the first call, then saying how long its rest has left (``None``:
    over, as aiobreaker can answer a moment after the call it refused)."""

    def __init__(self, left: timedelta | None) -> None:
        super().__init__()
        self.left = left

    @property
    def time_until_open(self) -> timedelta | None:
        return self.left


@pytest.mark.parametrize(
    ("breaker", "rest_s"),
    [
        (RefusesOnceAsItsRestEnds, 0.05),  # its rest just over, asking raises TypeError
        (lambda: RestsFor(None), 0.05),
        (lambda: RestsFor(timedelta(0)), 0.05),
        (lambda: RestsFor(timedelta(seconds=0.3)), 0.3),
    ],
)
async def test_a_call_the_breaker_refuses_waits_out_its_rest_at_least_50_ms(
    hub: Hub, monkeypatch: pytest.MonkeyPatch, breaker: Callable[[], CircuitBreaker], rest_s: float
) -> None:
    slept = sleeps_of(monkeypatch, "prm-destination-lake")
    await send(hub, ev("e1", 0, "ann@example.com"))
    everything = await positions_of(hub)
    sink = Kept()
    dest = destination("lake", sink)
    dest.breaker = breaker()
    async with running(hub, dest):
        await until(lambda: _async(sink.positions() == everything))
    assert slept[:1] == [pytest.approx(rest_s)] and sink.calls == 1
