"""The feed as the hub runs it: its ``[feed]`` settings, how long a long poll waits and what
ends it, the pruning task (its rounds, its failures, its stop), and stopping and starting."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from polling import until
from sqlalchemy import make_url

from prm_core.config import Config
from prm_core.errors import ConfigError
from prm_core.feed.feed import BELL_SLOTS, Feed
from prm_core.feed.reading import FeedSignal
from prm_core.feed.writing import NOTIFY_CHANNEL
from prm_core.hub import Hub
from prm_core.store.doorbell import Doorbell
from prm_core.store.engine import Store

MORNING = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)  # the events' morning: not ahead of the clock


def ev(event_id: str, minute: int, **identities: str) -> dict[str, Any]:
    return {"id": event_id, "type": "page", "occurred_at": f"2026-11-23T08:{minute:02d}:00Z", "identities": identities}


async def send(hub: Hub, *bodies: dict[str, Any]) -> list[Any]:
    return await hub.record(hub.parse_events({"events": list(bodies)}, "web"))


def feed_config(**feed: Any) -> Feed:
    return Feed.from_config(Config(raw={"feed": feed}), store=None)  # type: ignore[arg-type]


# ---- settings --------------------------------------------------------------------------------


def test_the_settings_default_to_what_docs_feed_md_says() -> None:
    feed = feed_config()
    assert (feed.enabled, feed.retention_days, feed.prune_interval_s, feed.lease_s) == (True, 30.0, 3600.0, 30.0)


KEYS = {"retention_days": "retention_days", "prune_interval_s": "prune_interval_s", "destination_lease_s": "lease_s"}


@pytest.mark.parametrize("key", sorted(KEYS))
@pytest.mark.parametrize("value", [0.001, 0.5, 1, 45.5])
def test_any_number_above_0_is_taken(key: str, value: float) -> None:
    taken = getattr(feed_config(**{key: value}), KEYS[key])
    assert taken == value and isinstance(taken, float)


@pytest.mark.parametrize("key", sorted(KEYS))
@pytest.mark.parametrize("value", [0, 0.0, -1, -0.5, True, False, "30", [30]])
def test_anything_else_stops_the_hub_naming_the_key(key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as refused:
        feed_config(**{key: value})
    assert str(refused.value).startswith(f"[feed].{key} must be a number of ")
    assert str(refused.value).endswith(f" above 0, not {value!r}")


# ---- long polls ----------------------------------------------------------------------------------


async def test_a_waiting_reader_is_woken_by_the_next_commit(hub):
    await send(hub, ev("e1", 0, email="ann@example.com"))
    head = (await hub.feed.read(None, 1000)).next
    woken = asyncio.create_task(hub.feed.signal.wait(10))
    reader = asyncio.create_task(hub.feed.read(head, 10, wait_s=10))
    await asyncio.sleep(0)  # both are waiting
    await send(hub, ev("e2", 1, email="ann@example.com"))
    assert await woken, "the commit did not wake the waiting reader"
    assert [c.data["event_id"] for c in (await reader).changes] == ["e2"]


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The seconds each wait for a commit of the task named ``reader`` was given."""
    given: list[float] = []
    original = FeedSignal.wait

    async def wait(self: FeedSignal, seconds: float, topics: Any = None, *, watched: Any = None) -> bool:
        task = asyncio.current_task()
        if task is not None and task.get_name() == "reader":
            given.append(seconds)
        return await original(self, seconds, topics, watched=watched)

    monkeypatch.setattr(FeedSignal, "wait", wait)
    return given


async def test_a_filtered_long_poll_waits_on_through_changes_of_other_types(hub, waits):
    (ann,) = await send(hub, ev("e1", 0, email="ann@example.com"))
    head = (await hub.feed.read(None, 1000)).next
    reader = asyncio.create_task(hub.feed.read(head, 10, {"customer.updated"}, wait_s=30), name="reader")

    async def waiting(n: int) -> bool:
        return len(waits) >= n or reader.done()

    await until(lambda: waiting(1))
    await send(hub, ev("e2", 1, email="ann@example.com"))  # an event.recorded: wakes it, not its type
    await until(lambda: waiting(2))
    assert not reader.done(), "a change of another type ended the long poll"
    await hub.update_customer(ann.customer_id, {"tier": "gold"})
    page = await reader
    assert [c.type for c in page.changes] == ["customer.updated"] and page.next == page.changes[0].seq


async def test_a_commit_between_the_read_and_the_wait_ends_the_wait(hub, monkeypatch):
    (ann,) = await send(hub, ev("e1", 0, email="ann@example.com"))
    head = (await hub.feed.read(None, 1000)).next
    original_read, original_wait = Store.read, FeedSignal.wait
    woke: list[bool] = []

    async def read_then_commit(self: Store, fn: Any) -> Any:
        page = await original_read(self, fn)
        if not woke and asyncio.current_task().get_name() == "reader":  # type: ignore[union-attr]
            woke.append(False)  # once: a commit lands after the reader's look, before its wait
            await hub.update_customer(ann.customer_id, {"tier": "gold"})
        return page

    async def wait(self: FeedSignal, seconds: float, topics: Any = None, *, watched: Any = None) -> bool:
        got = await original_wait(self, seconds, topics, watched=watched)
        if asyncio.current_task().get_name() == "reader":  # type: ignore[union-attr]
            woke.append(got)
        return got

    monkeypatch.setattr(Store, "read", read_then_commit)
    monkeypatch.setattr(FeedSignal, "wait", wait)
    page = await asyncio.create_task(hub.feed.read(head, 10, {"customer.updated"}, wait_s=5), name="reader")
    assert [c.type for c in page.changes] == ["customer.updated"]
    assert woke == [False, True]  # woken by that commit, not by the wait running out


@pytest.mark.parametrize(
    ("wait_s", "lowest", "highest"),
    [(-1, None, None), (0, None, None), (0.5, 0.0, 0.5), (30, 29.0, 30.0), (100, 29.0, 30.0)],
)
async def test_a_read_waits_as_long_as_asked_up_to_30_s_and_looks_once_more(hub, monkeypatch, wait_s, lowest, highest):
    given: list[float] = []
    original = FeedSignal.wait

    async def runs_out(self: FeedSignal, seconds: float, topics: Any = None, *, watched: Any = None) -> bool:
        task = asyncio.current_task()
        if task is None or task.get_name() != "reader":
            return await original(self, seconds, topics, watched=watched)
        given.append(seconds)
        return False  # the wait ran out without a commit

    monkeypatch.setattr(FeedSignal, "wait", runs_out)
    await send(hub, ev("e1", 0, email="ann@example.com"))
    head = (await hub.feed.read(None, 1000)).next
    page = await asyncio.create_task(hub.feed.read(head, 10, wait_s=wait_s), name="reader")
    assert page.changes == [] and page.next == head
    if lowest is None:
        assert given == []  # no wait asked: it answers at once
    else:
        (seconds,) = given  # one wait; when it runs out, one last look and the answer
        assert lowest < seconds <= highest


# ---- pruning ---------------------------------------------------------------------------------------


def retention_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "prm-feed-retention" and not t.done()]


async def test_the_hub_prunes_by_itself_every_prune_interval_and_logs_what_it_removed(
    database_url, frozen_clock, log_capture
):
    frozen_clock.now = MORNING
    config = Config(database_url=database_url, raw={"feed": {"prune_interval_s": 0.05}})
    async with Hub.open(config, autoload=True) as hub:
        await send(hub, ev("e1", 0, email="ann@example.com"))
        first = len((await hub.feed.read(None, 1000)).changes)
        frozen_clock.advance(days=31)

        def pruned() -> list[dict[str, Any]]:
            return [e for e in log_capture.entries if e["event"] == "feed pruned"]

        async def emptied() -> bool:
            return (await hub.feed.read(None, 1000)).changes == [] and len(pruned()) == 1

        await until(emptied)
        await send(hub, ev("e2", 1, email="bob@example.com"))
        second = len((await hub.feed.read(None, 1000)).changes)
        frozen_clock.advance(days=31)

        async def again() -> bool:
            return len(pruned()) == 2

        await until(again)  # a later round removes what has grown old since
        assert [(e["removed"], e["retention_days"]) for e in pruned()] == [(first, 30.0), (second, 30.0)]
    warned = {e["event"] for e in log_capture.entries} & {
        "feed notices not heard", "feed pruning failed", "feed listener not closed",
    }  # fmt: skip
    assert not warned  # a start, rounds and a stop that went well say nothing of the kind


async def test_a_failed_pruning_round_is_logged_and_the_next_one_runs(database_url, monkeypatch, log_capture):
    rounds: list[int] = []

    async def prune_once(self: Feed) -> int:
        rounds.append(len(rounds))
        if len(rounds) == 1:
            raise RuntimeError("the database is away: postgresql://prm:hunter2@db")
        return 0

    monkeypatch.setattr(Feed, "prune_once", prune_once)
    config = Config(database_url=database_url, raw={"feed": {"prune_interval_s": 0.01}})
    async with Hub.open(config, autoload=True):

        async def ran_again() -> bool:
            return len(rounds) >= 3

        await until(ran_again)
    (failed,) = [e for e in log_capture.entries if e["event"] == "feed pruning failed"]
    assert failed["error"] == "RuntimeError" and "hunter2" not in log_capture.text


async def test_a_round_only_every_prune_interval(hub, monkeypatch):
    rounds: list[int] = []

    async def prune_once(self: Feed) -> int:
        await asyncio.sleep(0)
        rounds.append(1)
        return 0

    await hub.feed.stop()
    monkeypatch.setattr(Feed, "prune_once", prune_once)
    await hub.feed.start()  # the default interval: one round now, the next in an hour

    async def ran() -> bool:
        return bool(rounds)

    await until(ran)
    for _ in range(50):
        await asyncio.sleep(0)
    assert rounds == [1]


async def test_stopping_during_a_pruning_write_stops_at_once(hub, monkeypatch, log_capture):
    # the write a stop cuts short fails of it (its connection is cancelled mid-statement): that
    # failure is the stop, not a pruning failure to log and retry in prune_interval_s
    writing = asyncio.Event()

    async def prune_once(self: Feed) -> int:
        writing.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("the connection was closed mid-statement") from None
        return 0

    await hub.feed.stop()
    monkeypatch.setattr(Feed, "prune_once", prune_once)
    await hub.feed.start()
    await asyncio.wait_for(writing.wait(), 10)
    await asyncio.wait_for(hub.feed.stop(), 10)
    assert retention_tasks() == []
    assert "feed pruning failed" not in log_capture.text


async def test_stop_ends_the_pruning_task_and_start_begins_it_again(hub):
    assert len(retention_tasks()) == 1
    await hub.feed.stop()
    assert retention_tasks() == []  # ended, not only asked to end
    await hub.feed.start()
    assert len(retention_tasks()) == 1


# ---- other hub processes' commits -----------------------------------------------------------------


async def test_another_processs_commit_wakes_the_readers_waiting_for_its_changes(database_url, log_capture, waits):
    """Two hubs on one database, as a server and its journal's processor are: what one
    records wakes the other's long polls, relay and triggers at once (PostgreSQL's notices,
    an SQLite file's doorbell), not when their wait runs out."""
    config = Config(database_url=database_url, raw={"ingest": {"journal": False}})
    async with Hub.open(config, autoload=True) as here, Hub.open(config, autoload=True, migrate=False) as there:
        await send(there, ev("e1", 0, email="ann@example.com"))
        head = (await here.feed.read(None, 1000)).next
        elsewhere = here.feed.signal.watch({"customer.merged"})
        reader = asyncio.create_task(here.feed.read(head, 10, {"event.recorded"}, wait_s=30), name="reader")
        await until(lambda: _async(len(waits) >= 1))  # it read nothing, and waits
        await send(there, ev("e2", 1, email="ann@example.com"))
        page = await asyncio.wait_for(reader, 10)  # well before its 30 s
        assert [c.data["event_id"] for c in page.changes] == ["e2"]
        if database_url.startswith("sqlite"):  # the bell also says what the changes were about
            assert not elsewhere.is_set()
        here.feed.signal.unwatch(elsewhere)
    assert "feed doorbell not heard" not in log_capture.text


async def test_a_commit_about_more_than_a_ring_can_tell_wakes_every_reader(database_url):
    """A commit whose changes are about more topics than fit in the doorbell's message (many
    event types in one batch) wakes readers waiting for anything, as an untold ring does."""
    config = Config(database_url=database_url, raw={"ingest": {"journal": False}})
    async with Hub.open(config, autoload=True) as here, Hub.open(config, autoload=True, migrate=False) as there:
        elsewhere = here.feed.signal.watch({"customer.merged"})
        many = [{**ev(f"m{k}", 0, email="ann@example.com"), "type": f"custom.kind{k:03d}"} for k in range(150)]
        await send(there, *many)
        await asyncio.wait_for(elsewhere.wait(), 10)


# ---- PostgreSQL: the listener for other hub processes' commits ----------------------------------


def postgres_only(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's listener (an SQLite hub hears a doorbell: below)")


@pytest.mark.parametrize("error", [OSError("connection refused"), asyncpg.PostgresError("too many connections")])
async def test_a_listener_that_cannot_connect_is_logged_and_the_hub_runs_on(
    database_url, monkeypatch, log_capture, error
):
    postgres_only(database_url)

    listen = Store.listen

    async def refused(self: Store, channel: str, callback: Any) -> Any:
        if channel == NOTIFY_CHANNEL:  # the feed's (the journal's, the screen pops' connect)
            raise error
        return await listen(self, channel, callback)

    monkeypatch.setattr(Store, "listen", refused)
    async with Hub.open(Config(database_url=database_url), autoload=True) as hub:
        woken = asyncio.create_task(hub.feed.signal.wait(10))
        await asyncio.sleep(0)
        await send(hub, ev("e1", 0, email="ann@example.com"))
        assert await woken  # this process's commits still wake its readers
    (warning,) = [e for e in log_capture.entries if e["event"] == "feed notices not heard"]
    assert warning["error"] == type(error).__name__


async def test_the_listener_connects_as_the_engine_does_with_the_urls_options(database_url, log_capture):
    """A URL's query options (here ``ssl``, which asyncpg would take for a server setting in a
    DSN) reach the listener's connection as they reach the engine's: it listens."""
    postgres_only(database_url)
    url = f"{database_url}{'&' if '?' in database_url else '?'}ssl=disable"
    config = Config(database_url=url, raw={"ingest": {"journal": False}})
    async with Hub.open(config, autoload=True) as here, Hub.open(config, autoload=True, migrate=False) as there:
        woken = here.feed.signal.watch()
        await send(there, ev("e1", 0, email="ann@example.com"))
        await asyncio.wait_for(woken.wait(), 10)  # another process's commit, heard
    assert "notices not heard" not in log_capture.text


# ---- SQLite: the doorbell of other hub processes' commits -------------------------------------


@pytest.mark.parametrize("error", [OSError("no socket left"), RuntimeError("not bound")])
async def test_a_doorbell_that_cannot_be_heard_is_logged_and_the_hub_runs_on(
    database_url, monkeypatch, log_capture, error
):
    if not database_url.startswith("sqlite"):
        pytest.skip("an SQLite file's doorbell (PostgreSQL's listener: above)")

    def refused(self: Doorbell, on_ring: Any) -> bool:
        raise error

    monkeypatch.setattr(Doorbell, "listen", refused)
    config = Config(database_url=database_url, raw={"ingest": {"journal": False}})
    async with Hub.open(config, autoload=True) as hub, Hub.open(config, autoload=True, migrate=False) as other:
        woken = asyncio.create_task(hub.feed.signal.wait(10))
        await asyncio.sleep(0)
        await send(hub, ev("e1", 0, email="ann@example.com"))
        assert await woken  # this process's commits still wake its readers
        # and still ring the others': only hearing them failed
        heard: list[list[bytes]] = []
        monkeypatch.undo()
        bell = Doorbell(Path(make_url(database_url).database or ""), kind="feed", slots=BELL_SLOTS)
        assert bell.listen(heard.append)
        try:
            await send(other, ev("e2", 1, email="ann@example.com"))
            await until(lambda: _async(bool(heard)))
        finally:
            bell.close()
    assert b"event.recorded" in heard[0][0].split(b"\n")
    warnings = [e for e in log_capture.entries if e["event"] == "feed doorbell not heard"]
    assert [w["error"] for w in warnings] == [type(error).__name__] * 2


async def test_eight_processes_on_one_file_hear_the_bell_and_a_ninth_says_it_does_not(database_url, log_capture):
    if not database_url.startswith("sqlite"):
        pytest.skip("an SQLite file's doorbell (PostgreSQL's listener: above)")
    config = Config(database_url=database_url, raw={"ingest": {"journal": False}})
    async with contextlib.AsyncExitStack() as stack:
        for n in range(8):
            await stack.enter_async_context(Hub.open(config, migrate=n == 0))
        assert "feed doorbell not heard" not in log_capture.text
        async with Hub.open(config, migrate=False):
            (warning,) = [e for e in log_capture.entries if e["event"] == "feed doorbell not heard"]
            assert warning["error"] == "every slot taken, or not on Linux"


async def test_a_journal_processor_takes_no_slot_and_its_commits_wake_the_server(tmp_path):
    url = f"sqlite:///{tmp_path / 'prm.db'}"
    config = Config(database_url=url, raw={"ingest": {"journal": True}})
    others = [Doorbell(tmp_path / "prm.db", kind="feed", slots=BELL_SLOTS) for _ in range(BELL_SLOTS)]
    try:
        async with (
            Hub.open(config, autoload=True, journal_processor="elsewhere") as serving,
            Hub.open(config, autoload=True, journal_processor="only", migrate=False),
        ):
            # the server holds a slot; the processor, whose feed nobody reads, none
            assert [bell.listen(lambda _messages: None) for bell in others] == [True] * (BELL_SLOTS - 1) + [False]
            head = (await serving.feed.read(None, 1000)).next
            reader = asyncio.create_task(serving.feed.read(head, 10, {"event.recorded"}, wait_s=30))
            await serving.accept(serving.parse_events({"events": [ev("j1", 0, email="ann@example.com")]}, "web"))
            page = await asyncio.wait_for(reader, 10)  # recorded by the processor, heard by the server
            assert [c.data["event_id"] for c in page.changes] == ["j1"]
    finally:
        for bell in others:
            bell.close()


async def test_a_stopped_feed_gives_its_doorbell_slot_back(tmp_path):
    config = Config(database_url=f"sqlite:///{tmp_path / 'prm.db'}", raw={"ingest": {"journal": False}})
    async with Hub.open(config) as hub:
        await hub.feed.stop()
        bells = [Doorbell(tmp_path / "prm.db", kind="feed", slots=BELL_SLOTS) for _ in range(BELL_SLOTS)]
        try:
            assert [bell.listen(lambda _messages: None) for bell in bells] == [True] * BELL_SLOTS
        finally:
            for bell in bells:
                bell.close()
        await hub.feed.start()


async def _async(value: bool) -> bool:
    return value
