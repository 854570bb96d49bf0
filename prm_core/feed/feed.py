"""The feed as the hub runs it: its settings, long-polling readers, and retention.

``[feed]`` settings:

- ``enabled`` (true): write change records; false leaves the feed empty (a hub that
  needs none, and ``bench/ingest.py --no-feed``);
- ``retention_days`` (30): how long changes are kept; a pruning task, started with the
  hub, removes older ones every ``prune_interval_s`` (3600);
- ``destination_lease_s`` (30): how long a hub process holds a destination's delivery;
  when it dies, another process (or this one, restarted) takes over once it runs out.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Collection
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog
from attrs import define, field

from ..config import Config
from ..errors import ConfigError
from ..store.doorbell import Doorbell
from ..store.engine import close_listener
from ..store.tables import utcnow
from .reading import FeedSignal, Page, prune, read_changes
from .writing import NOTIFY_CHANNEL

if TYPE_CHECKING:
    from ..store import Store

__all__ = ["MAX_WAIT_S", "Feed"]

log = structlog.get_logger(__name__)
MAX_WAIT_S = 30.0
BELL_SLOTS = 8  # SQLite: hub processes on one database file whose readers a commit wakes at once


@define
class Feed:
    """Reading the feed with long polls, and pruning it past retention."""

    store: Store
    enabled: bool
    retention_days: float
    prune_interval_s: float
    lease_s: float  # how long a hub process holds a destination before another may take it
    signal: FeedSignal = field(factory=FeedSignal)
    _task: asyncio.Task[None] | None = field(init=False, default=None)
    _listener: Any = field(init=False, default=None)  # asyncpg's connection, on PostgreSQL
    _bell: Doorbell | None = field(init=False, default=None)  # on an SQLite file

    @classmethod
    def from_config(cls, config: Config, store: Store) -> Feed:
        cfg = config.section("feed")
        retention = cfg.get("retention_days", 30)
        if isinstance(retention, bool) or not isinstance(retention, int | float) or retention <= 0:
            raise ConfigError(f"[feed].retention_days must be a number of days above 0, not {retention!r}")
        interval = cfg.get("prune_interval_s", 3600)
        if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
            raise ConfigError(f"[feed].prune_interval_s must be a number of seconds above 0, not {interval!r}")
        lease = cfg.get("destination_lease_s", 30)
        if isinstance(lease, bool) or not isinstance(lease, int | float) or lease <= 0:
            raise ConfigError(f"[feed].destination_lease_s must be a number of seconds above 0, not {lease!r}")
        return cls(store, config.flag("feed", "enabled", True), float(retention), float(interval), float(lease))

    async def start(self, *, hear_others: bool = True) -> None:
        """Wire the store's commits to waiting readers, and start pruning. Also hear the
        commits of other hub processes on the database (a journal's processor, another
        server): on PostgreSQL by ``LISTEN``, on an SQLite file by its doorbell, unless
        ``hear_others`` is false (a process that only processes the journal, whose feed
        nobody reads: its commits still ring the others')."""
        self.store.feed = self.enabled
        self.signal.bind(asyncio.get_running_loop())
        self.store.on_changes = self.signal.notify
        if self.store.dialect == "sqlite":
            self._ring_and_hear(hear_others)
        elif self.store.dialect == "postgresql" and hear_others:
            try:
                self._listener = await self.store.listen(NOTIFY_CHANNEL, self._heard)
            except (OSError, asyncpg.PostgresError) as exc:
                # readers still wake on this process's commits, and look again when a wait runs out
                log.warning("feed notices not heard", error=type(exc).__name__)
        if self._task is None:
            self._task = asyncio.create_task(self._prune_forever(), name="prm-feed-retention")

    def _heard(self, *notice: Any) -> None:
        self.signal.notify()

    def _ring_and_hear(self, hear: bool) -> None:
        # an SQLite store is always a file: the store refuses an in-memory database
        self._bell = Doorbell(Path(str(self.store.url.database)).expanduser(), kind="feed", slots=BELL_SLOTS)
        self.store.on_changes = self._committed
        if not hear:
            return
        try:
            if self._bell.listen(self._rung):
                return
            error = "every slot taken, or not on Linux"
        except Exception as exc:  # no socket left, say: this process's commits still ring the others
            error = type(exc).__name__
        # readers still wake on this process's commits, and look again when a wait runs out
        log.warning("feed doorbell not heard", error=error)

    def _committed(self, topics: frozenset[str]) -> None:
        """SQLite: this process's commit added changes: wake its readers, and ring the others'."""
        self.signal.notify(topics)
        if self._bell is not None:
            self._bell.ring("\n".join(sorted(topics)).encode())

    def _rung(self, messages: list[bytes]) -> None:
        """SQLite: another process's commits added changes about the topics each message
        names (an empty one: about anything)."""
        if not all(messages):
            self.signal.notify()
            return
        self.signal.notify({topic for m in messages for topic in m.decode(errors="replace").split("\n")})

    async def stop(self) -> None:
        self.store.on_changes = None
        bell, self._bell = self._bell, None
        if bell is not None:
            bell.close()
        listener, self._listener = self._listener, None
        await close_listener(listener, "feed")
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except BaseException:
                pass
            self._task = None

    async def read(
        self, after: int | None, limit: int, types: Collection[str] | None = None, wait_s: float = 0.0
    ) -> Page:
        """Up to ``limit`` changes after ``after`` (``None``: from the oldest kept); with
        ``wait_s``, wait up to that long for the first one (woken by commits, not by
        polling the database)."""
        deadline = time.monotonic() + min(max(wait_s, 0.0), MAX_WAIT_S)
        # watched from before each read: a commit between a read and the wait then ends the wait
        watched = self.signal.watch() if wait_s > 0 else None
        try:
            page = await self.store.read(functools.partial(read_changes, after=after, limit=limit, types=types))
            while not page.changes and watched is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return page
                # what a filtered read skipped need not be read again; ``after`` was valid once
                read = functools.partial(read_changes, after=page.next, limit=limit, types=types, check=False)
                woke = await self.signal.wait(left, watched=watched)
                watched = self.signal.watch()
                page = await self.store.read(read)
                if not woke:
                    # the wait ran out; that last look catches another process's commit (several hubs)
                    return page
            return page
        finally:
            if watched is not None:
                self.signal.unwatch(watched)

    async def prune_once(self) -> int:
        """Remove changes older than the retention; returns how many."""
        before = utcnow() - timedelta(days=self.retention_days)
        total = 0
        while True:
            removed = await self.store.write(lambda conn: prune(conn, before))
            total += removed
            if removed == 0:
                return total

    async def _prune_forever(self) -> None:
        while True:
            try:
                removed = await self.prune_once()
                if removed:
                    log.info("feed pruned", removed=removed, retention_days=self.retention_days)
            except Exception as exc:  # the database may be away for a while: try again later
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # stopped in the middle of a write, which failed of it: the stop wins (else
                    # the cancellation is spent and stop() waits for the next sleep to end)
                    raise asyncio.CancelledError from exc
                log.warning("feed pruning failed", error=type(exc).__name__)
            await asyncio.sleep(self.prune_interval_s)
