"""An Asterisk Manager Interface client that records calls in the hub.

It connects over TCP, reads the ``Asterisk Call Manager/x.y`` banner, logs in with
``Events: call,agent`` (panoramisk formats the action and parses every message), then reads
events, maps them (:mod:`prm_asterisk_ami.mapping`) and records them through the hub in
process, one at a time and in order, so a call's events keep their order. Reading waits while
the hub records: TCP holds the rest meanwhile, nothing is dropped.

When the connection drops, is refused, or the login fails, it reconnects with exponential
backoff and full jitter (tenacity's ``wait_random_exponential``), starting over at
``min_backoff_s`` once a session got going.
When nothing arrives for ``ping_s`` seconds it sends a ``Ping``; if the next ``ping_s`` pass in
silence too, the connection is taken for dead. Events that cannot be recorded for a moment
(the database briefly unavailable, the writer overloaded) are retried; an event the hub
refuses as invalid is logged (its AMI event name, never a number) and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import structlog
from attrs import define, field
from panoramisk.actions import Action
from panoramisk.message import Message
from prm_callcenter.cti import cti_event
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_random_exponential

from prm_core.plugin import Hub, InvalidInput, Overloaded, StoreUnavailable, utcnow

from .mapping import HANDLED, to_cti

__all__ = ["AmiClient", "AmiSettings", "LoginFailed"]

log = structlog.get_logger(__name__)
EOM = b"\r\n\r\n"
MAX_MESSAGE = 64 * 1024


class LoginFailed(Exception):
    """AMI refused the user name or secret."""


class ConnectionLost(Exception):
    """The AMI connection closed or went silent."""


@define(frozen=True)
class AmiSettings:
    """``[touchpoints.callcenter.ami]``."""

    host: str
    username: str
    secret: str = field(repr=False)
    port: int = 5038
    agent_field: str = "MemberName"
    min_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    ping_s: float = 20.0
    connect_timeout_s: float = 10.0

    @classmethod
    def from_config(cls, table: Any) -> AmiSettings:
        known = {"host", "port", "username", "secret", "agent_field", "min_backoff_s", "max_backoff_s", "ping_s",
                 "connect_timeout_s"}  # fmt: skip
        unknown = set(table) - known
        if unknown:
            raise ValueError(f"[touchpoints.callcenter.ami] has unknown keys: {', '.join(sorted(unknown))}")
        missing = {"host", "username", "secret"} - set(table)
        if missing:
            raise ValueError(f"[touchpoints.callcenter.ami] needs {', '.join(sorted(missing))}")
        return cls(**dict(table))


@define
class AmiClient:
    """One AMI connection at a time, for as long as :meth:`run` runs (see the module)."""

    hub: Hub
    settings: AmiSettings
    connections: int = 0
    logins: int = 0
    recorded: int = 0
    skipped: int = 0
    # called with each recorded event (tests, metrics)
    on_recorded: Callable[[Any], None] | None = None

    async def run(self) -> None:
        """Connect, log in and record events; reconnect forever until cancelled."""
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug or a long store outage must not end the client
                log.error("ami client failed", error=type(exc).__name__, exc_info=exc)
                await asyncio.sleep(self.settings.max_backoff_s)

    async def _session(self) -> None:
        """One connection: (re)connect with backoff, log in, read until the line drops."""
        s = self.settings
        started = time.monotonic()
        retrying = AsyncRetrying(
            wait=wait_random_exponential(multiplier=s.min_backoff_s, max=s.max_backoff_s),
            retry=retry_if_exception_type((OSError, LoginFailed, ConnectionLost, asyncio.IncompleteReadError)),
            before_sleep=lambda state: log.warning(
                "ami reconnecting",
                attempt=state.attempt_number,
                error=type(state.outcome.exception()).__name__ if state.outcome else None,
            ),
        )
        async for attempt in retrying:
            with attempt:
                reader, writer = await self._login()
        try:
            await self._pump(reader, writer)
        except (OSError, ConnectionLost, asyncio.IncompleteReadError) as exc:
            log.warning("ami connection lost", error=type(exc).__name__)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        if time.monotonic() - started < s.min_backoff_s:
            await asyncio.sleep(s.min_backoff_s)  # a line that drops at once must not spin

    async def _login(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        s = self.settings
        async with asyncio.timeout(s.connect_timeout_s):
            reader, writer = await asyncio.open_connection(s.host, s.port, limit=MAX_MESSAGE)
            self.connections += 1
            try:
                banner = await reader.readline()
                if not banner.startswith(b"Asterisk Call Manager/"):
                    raise ConnectionLost("not an AMI server")
                login = Action({"Action": "Login", "Username": s.username, "Secret": s.secret, "Events": "call,agent"})
                writer.write(str(login).encode())
                await writer.drain()
                while True:  # events may already flow before the login's response
                    message = await self._read(reader)
                    if message.get("ActionID") == login.action_id or "Response" in message:
                        break
                if message.get("Response") != "Success":
                    raise LoginFailed(message.get("Message") or "login refused")
            except BaseException:
                writer.close()
                raise
        self.logins += 1
        log.info("ami logged in", host=s.host, port=s.port)
        return reader, writer

    async def _read(self, reader: asyncio.StreamReader) -> Message:
        try:
            raw = await reader.readuntil(EOM)
        except asyncio.LimitOverrunError as exc:
            raise ConnectionLost("an AMI message over 64 KB") from exc
        message = Message.from_line(raw.decode("utf-8", "replace").strip())
        return message if message is not None else Message({})

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent = 0
        while True:
            try:
                async with asyncio.timeout(self.settings.ping_s):
                    message = await self._read(reader)
            except TimeoutError:
                silent += 1
                if silent >= 2:
                    raise ConnectionLost("AMI went silent") from None
                writer.write(str(Action({"Action": "Ping"})).encode())
                await writer.drain()
                continue
            silent = 0
            if message.get("Event") in HANDLED:
                await self._record(message)

    async def _record(self, message: Message) -> None:
        event = to_cti(message, received_at=utcnow(), agent_field=self.settings.agent_field)
        if event is None:
            return
        try:
            event = cti_event(event, self.hub.config.default_region)
        except InvalidInput as exc:
            self.skipped += 1
            log.warning("ami event skipped", ami_event=message.get("Event"), field=exc.field)
            return
        # the database may be away for a moment: wait for it rather than lose the call
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type((StoreUnavailable, Overloaded)),
            wait=wait_random_exponential(multiplier=0.2, max=5),
            stop=stop_after_delay(300),
            reraise=True,
        ):
            with attempt:
                (recorded,) = await self.hub.record([event])
        self.recorded += 1
        if self.on_recorded is not None:
            self.on_recorded(recorded)
