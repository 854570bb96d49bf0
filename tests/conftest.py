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


pytest_plugins = [*pytest_plugins, "pytester"]


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


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Skips as one line per reason with a count (``-rfE`` lists failures and errors only):
    a machine without PostgreSQL skips hundreds of tests for one reason, said once."""
    reasons: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        reason = str(reason).removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    if reasons:
        terminalreporter.section("skipped, by reason", sep="-")
        for reason, count in sorted(reasons.items(), key=lambda item: (-item[1], item[0])):
            terminalreporter.write_line(f"SKIPPED {count} x {reason}")
