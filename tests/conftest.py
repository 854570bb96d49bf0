from __future__ import annotations

import logging

import pytest
import structlog

pytest_plugins = ["prm_core.testing"]


@pytest.fixture(autouse=True)
def _restore_logging():
    """Commands under test configure logging globally; give every test the defaults back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


# skips summarised as one line per reason (pyproject's addopts list failures and errors only)
pytest_plugins = [*pytest_plugins, "pytester", "prm_core.testing.skips"]


@pytest.fixture
def chromium() -> str:
    """Debian's Chromium (the browser cannot be downloaded here): skip locally, fail in CI, if absent."""
    import os

    from browsing import CHROMIUM, missing

    if not os.path.exists(CHROMIUM):
        missing(f"{CHROMIUM} is absent (apt-get install chromium)")
    return CHROMIUM


@pytest.fixture
async def browser(chromium):
    """Headless Chromium through Playwright."""
    from browsing import CHROMIUM_ARGS
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()
