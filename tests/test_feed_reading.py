"""Reading the feed at its edges: an empty feed, one pruned to nothing, pages that are full
and pages that are not, filtered pages, retention in batches and more than once, and the
signal that wakes a waiting reader (from the loop and from other threads)."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from prm_core.errors import InvalidInput
from prm_core.feed import NewChange, reading
from prm_core.feed.reading import FeedSignal, FellBehind, Page, bounds, prune, read_changes
from prm_core.feed.writing import emit
from prm_core.hub import Hub

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


async def add(hub: Hub, *types: str, at: datetime = T0) -> list[int]:
    """One change per type, each a minute after the last from ``at``; their positions."""

    def write(conn: Any) -> None:
        for n, kind in enumerate(types):
            emit(conn, NewChange(kind, None, {"n": n}, at=at + timedelta(minutes=n)))

    await hub.store.write(write)
    return [c.seq for c in (await hub.feed.read(None, 1000)).changes][-len(types) :]


async def read(hub: Hub, after: int | None, limit: int = 100, types: set[str] | None = None) -> Page:
    return await hub.store.read(lambda conn: read_changes(conn, after, limit, types))


async def test_an_empty_feed_reads_empty_from_0_and_nothing_past_it(hub):
    assert await hub.store.read(bounds) == (0, 0)
    for after in (None, 0):
        page = await read(hub, after)
        assert page.changes == [] and page.next == 0  # a client asking after 0 sees the first change
    with pytest.raises(InvalidInput) as refused:
        await read(hub, 1)
    assert refused.value.field == "after" and "past the newest position of this feed (0)" in str(refused.value)


async def test_a_full_page_ends_at_its_last_change_and_a_short_one_at_the_head(hub):
    positions = await add(hub, "test.a", "test.b", "test.a", "test.b", "test.a")
    first = positions[0] - 1
    full = await read(hub, first, limit=2)
    assert [c.seq for c in full.changes] == positions[:2] and full.next == positions[1]
    rest = await read(hub, full.next, limit=10)
    assert [c.seq for c in rest.changes] == positions[2:] and rest.next == positions[-1]
    assert (await read(hub, positions[-1])).next == positions[-1]  # at the head: stays there
    assert (await read(hub, positions[-1])).changes == []


async def test_a_filtered_page_holds_only_its_types_after_the_position_and_skips_to_the_head(hub):
    positions = await add(hub, "test.a", "test.b", "test.a", "test.b", "test.c")
    page = await read(hub, positions[0], types={"test.a", "test.c"})
    assert [(c.seq, c.type) for c in page.changes] == [(positions[2], "test.a"), (positions[4], "test.c")]
    assert page.next == positions[-1]
    full = await read(hub, positions[0] - 1, limit=1, types={"test.b"})
    assert [c.seq for c in full.changes] == [positions[1]] and full.next == positions[1]
    none = await read(hub, positions[0] - 1, types={"test.d"})
    assert none.changes == [] and none.next == positions[-1]  # what it skipped is not read again
    assert [c.data for c in (await read(hub, positions[3])).changes] == [{"n": 4}]


async def test_retention_prunes_in_batches_oldest_first_and_marks_the_last_removed(hub):
    positions = await add(hub, *(["test.a"] * 5))
    before = T0 + timedelta(minutes=4)  # the first four are older
    assert await hub.store.write(lambda conn: prune(conn, before, batch=3)) == 3
    assert await hub.store.read(bounds) == (positions[2], positions[-1])
    assert await hub.store.write(lambda conn: prune(conn, before, batch=3)) == 1  # marked again, further on
    assert await hub.store.read(bounds) == (positions[3], positions[-1])
    assert await hub.store.write(lambda conn: prune(conn, before, batch=3)) == 0
    assert [c.seq for c in (await read(hub, None)).changes] == positions[4:]


async def test_a_pruning_that_commits_during_a_read_is_never_a_silent_gap(hub, monkeypatch):
    positions = await add(hub, *(["test.a"] * 4))
    first_bounds = reading.bounds
    pruned: list[int] = []

    def bounds_then_prune(conn: Any) -> tuple[int, int]:
        seen = first_bounds(conn)
        if not pruned:  # once (the hub's own readers read too): another connection prunes the two oldest
            pruned.append(-1)  # taken before pruning, so no other reader prunes meanwhile
            pruned[0] = prune_elsewhere(hub, conn)
        return seen

    monkeypatch.setattr(reading, "bounds", bounds_then_prune)
    try:
        page = await read(hub, positions[0] - 1)
    except FellBehind as behind:  # PostgreSQL: the page's statement saw the pruning
        assert pruned == [2] and behind.pruned_through == positions[1]
    else:  # SQLite: the read's snapshot predates the pruning, and holds every change
        assert pruned == [2] and [c.seq for c in page.changes] == positions


async def test_a_read_from_the_oldest_kept_reads_on_from_there_when_a_pruning_commits_during_it(hub, monkeypatch):
    positions = await add(hub, *(["test.a"] * 4))
    first_bounds = reading.bounds
    pruned: list[int] = []

    def bounds_then_prune(conn: Any) -> tuple[int, int]:
        seen = first_bounds(conn)
        if not pruned:
            pruned.append(-1)
            pruned[0] = prune_elsewhere(hub, conn)
        return seen

    monkeypatch.setattr(reading, "bounds", bounds_then_prune)
    page = await read(hub, None)  # never FellBehind: the caller asked for the oldest kept, whatever it is
    assert pruned == [2]
    # PostgreSQL: from the oldest left after the pruning; SQLite: the read's snapshot predates it
    assert [c.seq for c in page.changes] in (positions[2:], positions)
    assert page.next == positions[-1]


def prune_elsewhere(hub: Hub, reading_conn: Any) -> int:
    """Prune the changes before T0 + 2 minutes on a connection other than ``reading_conn``."""
    before = T0 + timedelta(minutes=2)
    if hub.store.sync_writer is None:  # PostgreSQL: the read runs in SQLAlchemy's greenlet
        with hub.store.writer.sync_engine.begin() as conn:
            return prune(conn, before)
    engine = sa.create_engine(reading_conn.engine.url)
    try:
        with engine.begin() as conn:
            return prune(conn, before)
    finally:
        engine.dispose()


async def test_a_feed_pruned_to_nothing_keeps_its_position(hub):
    positions = await add(hub, "test.a", "test.b")
    assert await hub.store.write(lambda conn: prune(conn, T0 + timedelta(days=1))) == 2
    last = positions[-1]
    assert await hub.store.read(bounds) == (last, last)
    for after in (None, last):
        page = await read(hub, after)
        assert page.changes == [] and page.next == last  # not back to 0, where it would fall behind
    with pytest.raises(FellBehind) as behind:
        await read(hub, last - 1)
    assert behind.value.pruned_through == last
    assert str(behind.value) == (
        f"position {last - 1} is older than the oldest change kept: changes up to {last} were pruned by"
        " retention; start again from the oldest kept change"
    )
    with pytest.raises(InvalidInput):
        await read(hub, last + 1)
    (new,) = await add(hub, "test.c")
    assert [c.seq for c in (await read(hub, last)).changes] == [new]


# ---- the signal --------------------------------------------------------------------------------


async def test_a_notify_wakes_the_waiters_once_and_later_waits_wait_again():
    signal = FeedSignal()
    assert not await signal.wait(0.05)  # unbound: nothing wakes it
    signal.notify()  # before bind: nothing to wake, no error
    signal.bind(asyncio.get_running_loop())
    waiters = [asyncio.create_task(signal.wait(10)) for _ in range(2)]
    await asyncio.sleep(0)
    signal.notify()
    assert await asyncio.gather(*waiters) == [True, True]
    assert not await signal.wait(0.05)  # that commit is spent: the next wait waits for the next


async def test_a_watch_for_some_topics_sleeps_through_other_commits_and_wakes_on_its_own():
    signal = FeedSignal()
    signal.bind(asyncio.get_running_loop())
    mine, anything = signal.watch({"customer.merged"}), signal.watch()
    signal.notify({"event.recorded", "event:page"})  # about other things
    assert anything.is_set() and not mine.is_set()
    signal.notify({"event.recorded", "customer.merged"})  # still watched, woken now
    assert mine.is_set()
    untold = signal.watch({"customer.merged"})
    signal.notify()  # a commit whose topics nobody told (another hub process's): wakes every watch
    assert untold.is_set()


async def test_a_wait_that_runs_out_and_a_watch_given_up_leave_nothing_watching():
    """Long polls that end without a commit (most of them, on a quiet hub) leave no watch
    behind to pile up until the next commit."""
    signal = FeedSignal()
    signal.bind(asyncio.get_running_loop())
    assert not await signal.wait(0.01, {"customer.merged"})
    signal.unwatch(signal.watch())
    assert signal._watches == []


async def test_a_notify_from_another_thread_wakes_the_waiter_at_once():
    signal = FeedSignal()
    signal.bind(asyncio.get_running_loop())
    waiter = asyncio.create_task(signal.wait(30))
    await asyncio.sleep(0)
    started = time.monotonic()
    # the notify comes while the loop sleeps in its wait for I/O (as a commit of another thread
    # would), not before the loop gets there
    thread = threading.Timer(0.1, signal.notify)
    thread.start()
    assert await waiter
    thread.join()
    # woken by the notify, not when its 30 s ran out: an event set from outside the loop's
    # thread would not wake the loop, which sleeps until its next timer
    assert time.monotonic() - started < 10
