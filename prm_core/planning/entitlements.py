"""Entitlements: the service level a customer's tier buys (the flagship scenario).

A platinum customer gets a technician within 1 business day, gold within 2, everyone else
within 5. ``[entitlements]`` in the config changes the days per tier (``platinum = 1``,
``gold = 2``, ``default = 5``). The partner playbook asks :func:`service_days` or
:func:`service_deadline` when it books a technician.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from ..errors import ConfigError

__all__ = ["DEFAULT_SERVICE_DAYS", "add_business_days", "parse_entitlements", "service_days", "service_deadline"]

DEFAULT_SERVICE_DAYS: Mapping[str, int] = {"platinum": 1, "gold": 2, "default": 5}


def parse_entitlements(section: Mapping[str, Any] | None) -> dict[str, int]:
    """``[entitlements]`` over the defaults; a bad value stops the hub naming it."""
    days = dict(DEFAULT_SERVICE_DAYS)
    for tier, value in (section or {}).items():
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 60:
            raise ConfigError(f"[entitlements].{tier} must be a whole number of business days (0-60), got {value!r}")
        days[tier] = value
    return days


def service_days(tier: str | None, entitlements: Mapping[str, int] | None = None) -> int:
    """Business days within which a technician is due for a customer of ``tier``."""
    table = entitlements or DEFAULT_SERVICE_DAYS
    return int(table.get(tier or "", table.get("default", DEFAULT_SERVICE_DAYS["default"])))


def add_business_days(start: datetime, days: int) -> datetime:
    """``start`` plus ``days`` business days (Monday to Friday; no holiday calendar).

    The clock stops at the weekend: a ``start`` on a Saturday or Sunday counts from the
    Monday's midnight, so a customer asking on a Sunday morning is given all of Monday, as one
    asking on a Monday morning is given all of Tuesday.
    """
    current = start
    if current.weekday() >= 5:
        current = (current + timedelta(days=7 - current.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
    left = days
    while left > 0:
        current += timedelta(days=1)
        if current.weekday() < 5:
            left -= 1
    return current


def service_deadline(tier: str | None, now: datetime, entitlements: Mapping[str, int] | None = None) -> datetime:
    """The latest time a technician may come for a customer of ``tier`` asking at ``now``."""
    return add_business_days(now, service_days(tier, entitlements))
