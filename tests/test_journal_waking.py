"""An idle journal processor waits on work, not on a clock: another process's append wakes it
at once (PostgreSQL's notice, SQLite's doorbell), an idle one takes no transactions, and a hub
whose processor runs elsewhere reads the processor's place only while it is behind."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from prm_core import journal as journal_module
from prm_core.config import Config
from prm_core.hub import Hub
from prm_core.journal import Doorbell, Processor, journal_path
from prm_core.model import Event, Identity
from prm_core.store import Store
from prm_core.store.doorbell import QUEUED_AT_MOST


def config(database_url: str) -> Config:
    return Config(database_url=database_url, public_url="http://hub.test", raw={"ingest": {"journal": True}})


def page_view(n: int) -> Event:
    return Event(
        id=f"wake{n}",
        type="page.viewed",
        occurred_at=datetime(2026, 11, 23, 8, 0, tzinfo=UTC),
        touchpoint="web",
        identities=(Identity.parse(f"anonymous_id:device-{n}"),),
    )


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    """How often processors looked at the journal (transactions) and hubs read anything."""
    calls: collections.Counter[str] = collections.Counter()
    process_once = Processor.process_once
    read = Store.read

    async def counted_process_once(self: Processor, limit: int) -> int:
        calls["process_once"] += 1
        return await process_once(self, limit)

    async def counted_read(self: Store, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        calls["read"] += 1
        return await read(self, fn, *args, **kwargs)

    monkeypatch.setattr(Processor, "process_once", counted_process_once)
    monkeypatch.setattr(Store, "read", counted_read)
    return calls


async def until(check: Callable[[], Any], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "not within the time allowed"
        await asyncio.sleep(0.02)


async def test_another_process_append_wakes_the_processor_at_once(database_url, monkeypatch):
    # an idle processor that would look only once a minute: only a notice (or the doorbell) wakes it
    monkeypatch.setattr(journal_module, "LISTENING_POLL_S", 60.0)
    cfg = config(database_url)
    async with (
        Hub.open(cfg, autoload=True, journal_processor="only") as processing,
        Hub.open(cfg, autoload=True, journal_processor="elsewhere") as serving,
    ):
        assert processing.processor is not None
        processing.processor.idle_s = 60.0
        await asyncio.sleep(0.3)  # the processor is idle, waiting
        started = time.monotonic()
        accepted = await serving.accept([page_view(1)])
        assert await serving.processed_after(accepted.position, timeout_s=30)
        # far below the minute the processor would otherwise sleep, however loaded the machine
        assert time.monotonic() - started < 20
        assert await serving.store.read(lambda conn: conn.exec_driver_sql("SELECT count(*) FROM events").scalar()) == 1


async def test_an_idle_processor_takes_no_transactions(database_url, counted, monkeypatch):
    monkeypatch.setattr(journal_module, "LISTENING_POLL_S", 60.0)
    async with Hub.open(config(database_url), autoload=True, journal_processor="only"):
        await asyncio.sleep(0.3)
        counted.clear()
        await asyncio.sleep(1.0)
        assert counted["process_once"] == 0, counted


async def test_without_a_doorbell_sqlite_looks_at_the_journal_files_not_the_database(tmp_path, counted, monkeypatch):
    """Where no socket can be bound, the processor looks every idle_s, by the journal files'
    times and sizes: a transaction only when they changed."""
    monkeypatch.setattr(Doorbell, "listen", lambda self, on_ring: False)
    monkeypatch.setattr(journal_module, "LISTENING_POLL_S", 60.0)
    url = f"sqlite:///{tmp_path / 'prm.db'}"
    cfg = config(url)
    async with Hub.open(cfg, autoload=True, journal_processor="only") as processing:
        assert processing.processor is not None
        processing.processor.idle_s = 0.01
        await asyncio.sleep(0.3)
        counted.clear()
        await asyncio.sleep(0.5)
        assert counted["process_once"] == 0, counted  # 50 looks, none of them a transaction
        async with Hub.open(cfg, autoload=True, journal_processor="elsewhere") as serving:
            # past the kernel's coarse clock tick of the hub's first write to the journal: an
            # append within it, into a log started again, may change neither the files' times
            # nor their sizes, and is then seen at the once-a-second look (here once a minute)
            await asyncio.sleep(0.05)
            accepted = await serving.accept([page_view(2)])
            assert await serving.processed_after(accepted.position, timeout_s=30)
        assert counted["process_once"] >= 1
        assert journal_path(url).exists()


async def test_a_hub_reads_the_processors_place_only_while_behind(database_url, counted):
    cfg = config(database_url)
    async with Hub.open(cfg, autoload=True, journal_processor="only"):
        async with Hub.open(cfg, autoload=True, journal_processor="elsewhere") as serving:
            assert serving.journal is not None
            accepted = await serving.accept([page_view(3)])
            # the follower catches up with the processor by itself, nobody waiting
            await until(lambda: _past(serving, accepted.position))
            await asyncio.sleep(0.2)
            counted.clear()
            await asyncio.sleep(0.5)
            follower_reads = counted["read"]
    # the serving hub's own background readers (outbox, triggers, surveys) wake on changes, not
    # every 50 ms; the follower, which would read ten times in that half second, read nothing
    assert follower_reads < 5, counted


async def _past(hub: Hub, position: int) -> bool:
    assert hub.journal is not None
    return hub.journal.processed >= position


def test_the_doorbell_is_one_listener_per_journal(tmp_path):
    async def run() -> tuple[bool, bool, int]:
        rung: list[int] = []
        first, second = Doorbell(tmp_path / "a.journal.db"), Doorbell(tmp_path / "a.journal.db")
        other = Doorbell(tmp_path / "b.journal.db")
        try:
            heard = first.listen(lambda _messages: rung.append(1))
            again = second.listen(lambda _messages: rung.append(2))  # the address is taken
            other.ring()  # another journal's bell: not heard here
            second.ring()
            second.ring()
            for _ in range(100):
                if rung:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            return heard, again, len(rung)
        finally:
            for bell in (first, second, other):
                bell.close()

    heard, again, rings = asyncio.run(run())
    assert heard and not again
    assert rings in (1, 2)  # two rings queued before the loop read them wake it once


def test_a_bell_with_slots_is_heard_by_as_many_processes_never_by_the_ringer(tmp_path):
    async def run() -> tuple[list[bool], list[list[bytes]]]:
        bells = [Doorbell(tmp_path / "prm.db", kind="feed", slots=2) for _ in range(3)]
        heard: list[list[bytes]] = [[], [], []]

        async def heard_by(k: int, n: int) -> None:
            for _ in range(500):
                if len(heard[k]) >= n:
                    return
                await asyncio.sleep(0.01)
            raise AssertionError(f"bell {k} heard {heard[k]}")

        try:
            listening = [bell.listen(heard[k].extend) for k, bell in enumerate(bells)]
            bells[0].ring(b"event:page")  # not to its own slot: only the second bell hears it
            await heard_by(1, 1)
            bells[1].ring(b"second")  # heard after anything the first bell had sent itself
            await heard_by(0, 1)
            bells[2].ring(b"x" * 5000)  # longer than a message may be: sent empty, "anything"
            await heard_by(0, 2)
            await heard_by(1, 2)
            return listening, heard
        finally:
            for bell in bells:
                bell.close()

    listening, heard = asyncio.run(run())
    assert listening == [True, True, False]  # two slots: the third process looks every so often
    assert heard == [[b"second", b""], [b"event:page", b""], []]


def test_a_listener_that_may_have_missed_rings_is_told_so(tmp_path):
    """Rings past the socket's queue are dropped with what they said: a listener that finds
    the queue full hears "anything" as well."""

    async def run() -> list[list[bytes]]:
        listener, ringer = (Doorbell(tmp_path / "prm.db", kind="feed", slots=2) for _ in range(2))
        heard: list[list[bytes]] = []
        try:
            assert listener.listen(heard.append)
            for k in range(QUEUED_AT_MOST + 2):  # while the loop does not run: queued, or dropped
                ringer.ring(f"topic-{k}".encode())
            for _ in range(500):
                if heard:
                    break
                await asyncio.sleep(0.01)
            return heard
        finally:
            listener.close()
            ringer.close()

    (messages,) = asyncio.run(run())
    assert messages[0] == b"topic-0" and messages[-1] == b""
    assert len(messages) >= QUEUED_AT_MOST + 1


async def test_a_processor_that_cannot_listen_still_processes(database_url, monkeypatch):
    """Whatever fails as the processor sets up its listening (no socket left, a driver error),
    it looks every idle_s instead: nothing journaled waits for a restart that never comes."""
    from asyncpg.connection import Connection

    def fails(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no more sockets")

    add_listener = Connection.add_listener

    async def journal_listener_fails(self: Connection, channel: str, callback: Any) -> None:
        if channel == journal_module.NOTIFY_CHANNEL:  # the feed's listener is left alone
            raise RuntimeError("the driver failed")
        await add_listener(self, channel, callback)

    monkeypatch.setattr(Doorbell, "listen", fails)
    monkeypatch.setattr(Connection, "add_listener", journal_listener_fails)
    cfg = config(database_url)
    async with (
        Hub.open(cfg, autoload=True, journal_processor="only") as processing,
        Hub.open(cfg, autoload=True, journal_processor="elsewhere") as serving,
    ):
        assert processing.processor is not None
        accepted = await serving.accept([page_view(4)])
        assert await serving.processed_after(accepted.position, timeout_s=30)
        assert processing.processor._listener is None  # the connection it opened is closed, not kept


async def test_an_idle_processor_still_looks_at_the_journal_now_and_then(database_url, counted, monkeypatch):
    """A notice can be lost (or a change slip past the files' times): an idle processor that
    hears other processes' appends still looks at the journal every LISTENING_POLL_S."""
    monkeypatch.setattr(journal_module, "LISTENING_POLL_S", 0.2)
    async with Hub.open(config(database_url), autoload=True, journal_processor="only") as processing:
        assert processing.processor is not None
        await asyncio.sleep(0.3)
        counted.clear()
        await until(lambda: _looked(counted, 3))


async def _looked(counted: collections.Counter[str], times: int) -> bool:
    return counted["process_once"] >= times


async def test_health_reports_every_hub_process_appends_and_the_processors_place(database_url):
    """A hub's report of the journal (``/healthz``, ``/metrics``) reads the database: another
    hub process's appends count in its head, and the processor's place is current."""
    cfg = config(database_url)
    async with (
        Hub.open(cfg, autoload=True, journal_processor="elsewhere") as reporting,
        Hub.open(cfg, autoload=True, journal_processor="elsewhere") as other,
    ):
        assert reporting.journal is not None
        accepted = await other.accept([page_view(5)])
        await reporting.journal.refresh()
        assert reporting.journal.head >= accepted.position and reporting.journal.depth >= 1
        async with Hub.open(cfg, autoload=True, journal_processor="only"):
            assert await other.processed_after(accepted.position, timeout_s=30)
        await reporting.journal.refresh()
        assert reporting.journal.processed >= accepted.position and reporting.journal.depth == 0
