"""Screen pops across hub processes: PostgreSQL's LISTEN/NOTIFY as the bus.

Several ``prm serve`` processes share one PostgreSQL, and an agent's WebSocket is connected to
one of them while the call's ``call.offered`` may arrive at another. So on PostgreSQL the
process that recorded the event does not build the pop itself: it sends a small notice (who,
which call, which customer, never the caller's number) with ``NOTIFY`` once the event is
durable, and every process (itself included) that has that agent's channel builds the pop from
the shared database and pushes it. Nothing home-made: the database the hubs already share
carries it. A notice is at most a few hundred bytes, far below PostgreSQL's 8,000-byte limit.

Sending never blocks ingest: notices wait in a bounded queue for a sender task (the oldest is
dropped, and counted, when it is full). The listening connection is opened again, with backoff,
if it drops; notices sent meanwhile are missed by that process (an agent's client resumes with
``?since=`` from the pops kept where it reconnects).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg
import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

__all__ = ["CHANNEL", "PostgresBus"]

CHANNEL = "prm_screenpop"
log = structlog.get_logger(__name__)


class PostgresBus:
    """Publish notices to every hub process on the database, and hear theirs."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        on_notice: Callable[[Mapping[str, Any]], None],
        *,
        pending: int = 1000,
    ) -> None:
        self.connect = connect  # the hub's store's (prm_core.store.Store.connect): its URL's options apply
        self.on_notice = on_notice
        self.pending = pending
        self.dropped = 0
        self._outgoing: deque[str] = deque()
        self._wake = asyncio.Event()
        self._listener: asyncpg.Connection | None = None
        self._sender: asyncpg.Connection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    async def start(self) -> None:
        await self._listen()
        self._sender = await self.connect()
        self._tasks = [asyncio.create_task(self._send_loop(), name="screenpop-bus-send")]

    async def stop(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in (self._listener, self._sender):
            if conn is not None and not conn.is_closed():
                with contextlib.suppress(Exception):
                    await conn.close(timeout=5)

    def publish(self, notice: Mapping[str, Any]) -> None:
        """Queue a notice for every process (this one included); never waits."""
        if len(self._outgoing) >= self.pending:
            self._outgoing.popleft()
            self.dropped += 1
        self._outgoing.append(json.dumps(notice, separators=(",", ":")))
        self._wake.set()

    async def _listen(self) -> None:
        conn = await self.connect()
        await conn.add_listener(CHANNEL, self._received)
        conn.add_termination_listener(self._lost)
        self._listener = conn

    def _received(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        try:
            notice = json.loads(payload)
        except ValueError:
            log.warning("screen-pop notice is not JSON; ignored")
            return
        if isinstance(notice, dict):
            self.on_notice(notice)

    def _lost(self, conn: Any) -> None:
        if not self._closing:
            log.warning("screen-pop bus connection lost; listening again")
            self._tasks.append(asyncio.get_running_loop().create_task(self._relisten()))

    async def _relisten(self) -> None:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type((OSError, asyncpg.PostgresError)), wait=wait_random_exponential(0.1, 5)
        ):
            with attempt:
                await self._listen()

    async def _send_loop(self) -> None:
        while True:
            if not self._outgoing:
                self._wake.clear()
                await self._wake.wait()
                continue
            payload = self._outgoing.popleft()
            try:
                if self._sender is None or self._sender.is_closed():
                    self._sender = await self.connect()
                await self._sender.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
            except (OSError, asyncpg.PostgresError) as exc:
                # the database is away: this notice is lost (agents resume from what is kept)
                self.dropped += 1
                log.warning("screen-pop notice not sent", error=type(exc).__name__)
                await asyncio.sleep(0.5)
