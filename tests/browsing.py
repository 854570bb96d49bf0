"""What the browser tests share: Debian's Chromium under Playwright, and polling the hub."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
TIMEOUT = 15.0  # seconds to wait for events to reach the hub


def missing(what: str) -> None:
    """Skip when a tool is absent on a developer's machine; fail in CI, where it must be there."""
    reason = f"{what}; the browser tests need it (and fail in CI)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


async def eventually(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``TIMEOUT``."""
    try:
        async with asyncio.timeout(TIMEOUT):
            while True:
                if result := await check():
                    return result
                await asyncio.sleep(0.1)
    except TimeoutError:
        pytest.fail(f"timed out after {TIMEOUT}s waiting for {what}")


async def customer(hub_client: Any, read: str, ref: str) -> dict[str, Any] | None:
    """The customer's view (a long timeline page), or ``None`` while there is none."""
    resp = await hub_client.get(f"/v1/customers/{ref}?limit=200", headers={"Authorization": f"Bearer {read}"})
    if resp.status == 404:
        return None
    assert resp.status == 200, await resp.text()
    return await resp.json()
