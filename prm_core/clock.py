"""The hub's clock: one place to read the time, so tests can freeze it.

Everything in the core that stamps a time (receipt of an event, a merge, a key's creation)
reads :func:`utcnow`; what measures an interval (the lifetime of a cached key) reads
:func:`monotonic`. ``prm_core.testing``'s ``frozen_clock`` fixture sets both.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

__all__ = ["FrozenClock", "monotonic", "utcnow"]

_frozen: FrozenClock | None = None


def utcnow() -> datetime:
    """The current time, aware UTC (or the frozen time in tests)."""
    return _frozen.now if _frozen is not None else datetime.now(UTC)


def monotonic() -> float:
    """Seconds on a clock that never goes back, for intervals (or the frozen time in tests)."""
    return _frozen.now.timestamp() if _frozen is not None else time.monotonic()


class FrozenClock:
    """A stopped clock for tests: ``with FrozenClock(at) as clock: clock.advance(minutes=31)``."""

    def __init__(self, at: datetime | None = None) -> None:
        at = at or datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
        if at.tzinfo is None:
            raise ValueError("FrozenClock needs an aware datetime")
        self.now = at.astimezone(UTC)

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        """Move the clock forward by ``delta`` or ``timedelta(**kwargs)``; returns the new time."""
        self.now += delta if delta is not None else timedelta(**kwargs)
        return self.now

    def __enter__(self) -> FrozenClock:
        global _frozen
        self._previous = _frozen
        _frozen = self
        return self

    def __exit__(self, *exc: object) -> None:
        global _frozen
        _frozen = self._previous
