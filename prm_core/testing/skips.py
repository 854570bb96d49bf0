"""A pytest plugin: skipped tests summarised as one line per reason, with a count.

With ``-rfE`` in ``addopts`` (failures and errors listed one by one), a machine without
PostgreSQL says ``SKIPPED 350 x PRM_TEST_POSTGRES_URL is not set: ...`` once instead of 350
lines. Enable it with ``-p prm_core.testing.skips`` or in ``pytest_plugins``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["pytest_terminal_summary", "skip_reasons"]


def skip_reasons(skipped: list[Any]) -> dict[str, int]:
    """Reason -> how many of ``skipped`` (test reports) were skipped for it."""
    reasons: dict[str, int] = {}
    for report in skipped:
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        reason = str(reason).removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    return reasons


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    reasons = skip_reasons(terminalreporter.stats.get("skipped", []))
    if reasons:
        terminalreporter.section("skipped, by reason", sep="-")
        for reason, count in sorted(reasons.items(), key=lambda item: (-item[1], item[0])):
            terminalreporter.write_line(f"SKIPPED {count} x {reason}")
