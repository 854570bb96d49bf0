"""Asterisk FastAGI on the IVR touch point: the same personalized menu, over AGI commands.

Runs when ``[touchpoints.ivr.fastagi] port`` is set (``0`` lets the OS choose; ``host``
defaults to ``127.0.0.1``): a TCP server, started in the web app's ``cleanup_ctx`` once the
hub is up. Point the dialplan at it::

    exten => 800,1,AGI(agi://hub-host:4573/prm)
     same => n,Queue(${PRM_QUEUE})

For each call it reads the ``agi_*`` headers, takes the caller from ``agi_callerid`` (any
spelling: the hub normalizes it to E.164 with ``[identity] default_region``) and the call id
(the dialogue key) from ``agi_uniqueid``, and plays the turns of :mod:`prm_ivr`: ``ANSWER``;
each line spoken with ``EXEC <tts_app> "text"`` (``tts_app``, default ``Festival``); input
with ``GET DATA beep <timeout> 1``; a transfer sets ``SET VARIABLE PRM_QUEUE "<queue>"``
(``queue_variable``) and returns to the dialplan; a self-served call gets ``HANGUP``. A
caller hanging up mid-menu (``result=-1``, a ``HANGUP`` line, or the connection closing) is
recorded ``abandoned``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import structlog
from aiohttp import web
from prm_ivr import Call, Engine, IvrCalls, Turn, menu_for

from prm_core.plugin import HUB, Adapter, Config, ConfigError, Hub, hookimpl

__all__ = ["FASTAGI", "FastAgiServer", "prm_adapters", "quote"]

log = structlog.get_logger(__name__)
MAX_HEADERS = 64
_RESULT = re.compile(r"^200 result=(-?[0-9*#]*)")


class Hangup(Exception):
    """The caller hung up (or Asterisk closed the AGI session)."""


def quote(text: str) -> str:
    """One AGI argument: quoted, with what Asterisk's argument parsers would split on removed
    (a comma separates application options, a quote or backslash the AGI arguments)."""
    cleaned = " ".join(re.sub(r'[",\\\r\n]', " ", text).split())
    return f'"{cleaned}"'


class AgiSession:
    """One AGI conversation on a TCP connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def headers(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for _ in range(MAX_HEADERS):
            line = (await self.reader.readline()).decode("utf-8", errors="replace").rstrip("\r\n")
            if not line:
                return found
            name, _, value = line.partition(":")
            if name.startswith("agi_"):
                found[name] = value.strip()
        raise ValueError("too many AGI headers")

    async def command(self, text: str) -> str:
        """Send one command and return its ``200 result=`` value; :class:`Hangup` otherwise."""
        self.writer.write(text.encode("utf-8") + b"\n")
        await self.writer.drain()
        while True:
            raw = await self.reader.readline()
            if not raw:
                raise Hangup()
            line = raw.decode("utf-8", errors="replace").strip()
            if line == "HANGUP":  # agi-sigHUP: the channel hung up; no answer follows
                raise Hangup()
            if line:
                break
        match = _RESULT.match(line)
        if match is None:  # 511 on a dead channel, 510/520 errors
            raise Hangup() if line.startswith("511") else RuntimeError(f"AGI command failed: {line[:80]}")
        return match.group(1)

    async def hang_up(self) -> None:
        """``HANGUP``: Asterisk may answer, or just end the session; both are fine."""
        try:
            await self.command("HANGUP")
        except Hangup:
            pass


class FastAgiServer:
    """The FastAGI TCP server; ``port`` is the bound port once started."""

    def __init__(self, config: Config, engine: Engine) -> None:
        settings = config.section("touchpoints", "ivr", "fastagi")
        port = settings.get("port")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ConfigError(f"[touchpoints.ivr.fastagi].port must be a TCP port number (0 to choose), got {port!r}")
        self.host = str(settings.get("host", "127.0.0.1"))
        self.port = port
        self.tts_app = str(settings.get("tts_app", "Festival"))
        self.queue_variable = str(settings.get("queue_variable", "PRM_QUEUE"))
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", self.tts_app + "_" + self.queue_variable):
            raise ConfigError("[touchpoints.ivr.fastagi] tts_app and queue_variable must be plain names")
        self.engine = engine
        self.sessions: set[asyncio.Task[Any]] = set()

    async def service(self, app: web.Application) -> AsyncIterator[None]:
        """``cleanup_ctx``: listen while the server runs; finish calls in progress on the way out."""
        hub = app[HUB]
        server = await asyncio.start_server(lambda r, w: self._accept(hub, r, w), self.host, self.port)
        self.port = server.sockets[0].getsockname()[1]
        app[FASTAGI] = self
        log.info("fastagi listening", host=self.host, port=self.port)
        try:
            yield
        finally:
            server.close()
            # calls in progress get a moment to record how they ended, then are cut
            if self.sessions:
                await asyncio.wait(list(self.sessions), timeout=2)
            for task in list(self.sessions):
                task.cancel()
            await asyncio.gather(*self.sessions, return_exceptions=True)
            await server.wait_closed()

    async def _accept(self, hub: Hub, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.sessions.add(task)
        try:
            await self.serve_call(hub, AgiSession(reader, writer))
        except asyncio.CancelledError:
            log.warning("fastagi session cut at shutdown")
        except Exception as exc:
            log.error("fastagi session failed", error=type(exc).__name__, exc_info=exc)
        finally:
            self.sessions.discard(task)
            writer.close()

    async def serve_call(self, hub: Hub, agi: AgiSession) -> None:
        """Play the menu for one call until a transfer, an end or a hang-up."""
        headers = await agi.headers()
        call = self._call(headers)
        calls = IvrCalls(hub, self.engine)
        turn: Turn | None = None
        try:
            await agi.command("ANSWER")
            turn = await calls.start(call, "start", {"channel_type": headers.get("agi_type", "")[:32]})
            n = 1
            while True:
                await self._speak(agi, turn)
                if turn.gather is None:
                    break
                result = await agi.command(f"GET DATA beep {turn.gather.timeout_s * 1000} 1")
                if result == "-1":
                    raise Hangup()
                n += 1
                turn = await calls.answer(
                    call, f"t{n}", turn.gather.node, digits=result or None, attempt=turn.gather.attempt
                )
            if turn.transfer is not None:
                # the dialplan goes on to Queue(${PRM_QUEUE}) once the AGI script returns
                await agi.command(f"SET VARIABLE {self.queue_variable} {quote(turn.transfer)}")
            else:
                await agi.hang_up()
        except Hangup:
            ended = await calls.end(call, "abandoned", {"node": turn.gather.node if turn and turn.gather else None})
            log.info("fastagi caller hung up", abandoned=ended)

    async def _speak(self, agi: AgiSession, turn: Turn) -> None:
        for line in (*turn.say, *turn.prompt):
            await agi.command(f"EXEC {self.tts_app} {quote(line)}")

    @staticmethod
    def _call(headers: Mapping[str, str]) -> Call:
        unique = headers.get("agi_uniqueid", "")
        if not unique:
            raise ValueError("agi_uniqueid is missing")
        number = headers.get("agi_callerid", "")
        withheld = not number or number.lower() in ("unknown", "anonymous", "restricted")
        return Call(id=unique[:64], source="asterisk", caller_number=None if withheld else number)


FASTAGI = web.AppKey("prm_fastagi", FastAgiServer)


@hookimpl
def prm_adapters(config: Config) -> list[Adapter]:
    if "port" not in config.section("touchpoints", "ivr", "fastagi"):
        return []
    server = FastAgiServer(config, Engine(menu_for(config)))
    return [Adapter(name="fastagi", touchpoint="ivr", services=(server.service,), description=__doc__.split("\n")[0])]
