"""Slow clients: a request's body must arrive within ``[server] body_timeout_s`` (default 10 s).

aiohttp itself waits for a body as long as the client keeps the connection open, so a client
that sends its headers and part of a body, then stalls, would hold a connection (and whatever
the handler holds while reading) for as long as it likes. The deadline runs from the moment
the request's headers are in: once it passes with the body incomplete, reading it fails, the
request is answered ``408`` JSON (``{"error": {"code": "timeout", ...}}``) with
``Connection: close``, and the connection is closed. A handler that answers without reading
the body (a missing key, a 404) is bounded by the same deadline: the rest of the body is
awaited no longer than that before the connection closes.

aiohttp stops reading the socket once a buffer's worth of an unread body is in, until the
handler reads it; a handler that waited longer than the deadline before reading a large body
would answer 408 too. Handlers read their body first thing (after the key check), so the
deadline is the client's time to send it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from ..config import Config
from ..errors import ConfigError
from .errors import BodyTimeout

__all__ = ["DEFAULT_BODY_TIMEOUT_S", "BodyTimeout", "body_deadline", "body_timeout_s"]

DEFAULT_BODY_TIMEOUT_S = 10.0


def body_timeout_s(config: Config) -> float:
    """``[server] body_timeout_s``: seconds, more than 0; a :class:`ConfigError` names it otherwise."""
    raw = config.section("server").get("body_timeout_s", DEFAULT_BODY_TIMEOUT_S)
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 < raw <= 3600:
        raise ConfigError(f"[server].body_timeout_s must be seconds, more than 0 and at most 3600, not {raw!r}")
    return float(raw)


def body_deadline(timeout_s: float) -> Any:
    """The middleware that bounds the time to receive a request's body to ``timeout_s``."""

    @web.middleware
    async def body_in_time(request: web.Request, handler: Any) -> web.StreamResponse:
        payload = request.content
        if not request.body_exists or payload.is_eof():
            return await handler(request)

        def expire() -> None:
            if not payload.is_eof():
                payload.set_exception(BodyTimeout(timeout_s))

        timer = asyncio.get_running_loop().call_later(timeout_s, expire)
        try:
            # a read past the deadline raises BodyTimeout, which error_middleware (outside this
            # one) answers 408, closing the connection
            return await handler(request)
        finally:
            # an answer sent before the whole body arrived leaves the timer running: aiohttp
            # then waits for the rest of the body (to keep the connection) only until it fires
            if payload.is_eof():
                timer.cancel()

    return body_in_time
