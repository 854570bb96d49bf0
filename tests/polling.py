"""Waiting, in a test, for what a hub does in the background (a trigger's run, a survey's
answer, a message in an inbox)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def until(check: Callable[[], Awaitable[Any]], within_s: float = 15.0) -> Any:
    """Poll ``check`` (a coroutine function) until it returns something true, and return it;
    an AssertionError naming the last answer after ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    while True:
        got = await check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {within_s} s: {got!r}")
        await asyncio.sleep(0.02)
