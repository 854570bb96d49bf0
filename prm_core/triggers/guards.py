"""Guards every trigger action passes, whatever the trigger says.

- **Erased or suppressed**: nothing for an erased customer, nor for one whose ``suppressed``
  trait is true (or lists the action's channel: an address that bounced).
- **Consent**: a ``marketing`` action needs the customer's marketing consent for its channel
  (:func:`prm_core.consent.allows`; marketing is opt-in). A ``transactional`` one (a receipt,
  a visit's follow-up the customer expects) needs none, as the law allows for messages that
  serve a relationship the customer entered; it still passes every other guard.
- **Quiet hours**: a message or partner notification due in the customer's quiet hours
  (``[triggers] quiet_hours``, in the customer's ``time_zone`` trait or
  ``[triggers] time_zone``) waits for them to end. Queued offers are said at the customer's
  own next contact, so they have none.
- **Frequency cap**: at most ``frequency_cap`` marketing messages and notifications per
  customer and channel in ``frequency_window``.
- **Cooldown**: a trigger with ``cooldown`` acts at most once per customer in that time.
- **Holdout**: ``holdout_percent`` of customers, by a stable hash of (trigger, customer) as a
  campaign's control group, go through the same steps and guards but get no action: the run
  is recorded ``held_out``, so the trigger's results compare both sides.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from attrs import field, frozen

from ..config import Config
from ..errors import ConfigError
from .definitions import parse_duration

__all__ = ["GuardSettings", "QuietHours", "suppressed", "zone_of"]

_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
SETTINGS = ("quiet_hours", "time_zone", "frequency_cap", "frequency_window", "touchpoint", "max_event_age", "poll_s")


@frozen
class QuietHours:
    """A local time span when no one is messaged (``21:00-08:00`` spans midnight)."""

    start: time
    end: time

    def contains(self, local: datetime) -> bool:
        now = local.time()
        if self.start <= self.end:
            return self.start <= now < self.end
        return now >= self.start or now < self.end

    def ends_after(self, local: datetime) -> datetime:
        """When the quiet hours ``local`` falls in end (in the same zone)."""
        end = local.replace(hour=self.end.hour, minute=self.end.minute, second=0, microsecond=0)
        return end if end > local else end + timedelta(days=1)

    @classmethod
    def parse(cls, raw: Any) -> QuietHours | None:
        if raw in ("", "none", None):
            return None
        parts = raw.split("-") if isinstance(raw, str) else []
        if len(parts) != 2 or not all(_CLOCK.match(p.strip()) for p in parts):
            raise ConfigError('[triggers].quiet_hours must be "HH:MM-HH:MM" (like "21:00-08:00"), or "none"')
        (sh, sm), (eh, em) = (map(int, p.strip().split(":")) for p in parts)
        return cls(time(sh, sm), time(eh, em))


def _zone(name: Any) -> ZoneInfo | None:
    if not isinstance(name, str) or not name or len(name) > 64:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


@frozen
class GuardSettings:
    """``[triggers]``'s own keys (the tables beside them are triggers)."""

    quiet_hours: QuietHours | None = QuietHours(time(21, 0), time(8, 0))
    time_zone: ZoneInfo = field(factory=lambda: ZoneInfo("UTC"))
    frequency_cap: int = 3
    frequency_window_s: float = 7 * 86400
    touchpoint: str | None = None  # where offers and notifications are recorded, unless a trigger says
    # an event recorded longer than this after it happened (an import of history) starts no run
    max_event_age: timedelta = timedelta(days=1)
    poll_s: float = 1.0

    @classmethod
    def from_config(cls, config: Config) -> GuardSettings:
        section = config.section("triggers")
        zone = _zone(section.get("time_zone", "UTC"))
        if zone is None:
            raise ConfigError("[triggers].time_zone must be an IANA time zone (Europe/Paris)")
        cap = section.get("frequency_cap", 3)
        if isinstance(cap, bool) or not isinstance(cap, int) or not 0 < cap <= 1000:
            raise ConfigError("[triggers].frequency_cap must be a whole number from 1 to 1000")
        try:
            window = parse_duration(section.get("frequency_window", "7d"), "frequency_window")
        except Exception:
            raise ConfigError("[triggers].frequency_window must be a duration like '7d'") from None
        try:
            age = parse_duration(section.get("max_event_age", "1d"), "max_event_age")
        except Exception:
            raise ConfigError("[triggers].max_event_age must be a duration like '1d'") from None
        touchpoint = section.get("touchpoint")
        if touchpoint is not None and not isinstance(touchpoint, str):
            raise ConfigError("[triggers].touchpoint must name a touch point")
        poll = section.get("poll_s", 1.0)
        if isinstance(poll, bool) or not isinstance(poll, int | float) or not 0 < poll <= 60:
            raise ConfigError("[triggers].poll_s must be a number of seconds from 0 to 60")
        return cls(
            quiet_hours=QuietHours.parse(section.get("quiet_hours", "21:00-08:00")),
            time_zone=zone,
            frequency_cap=cap,
            frequency_window_s=window,
            touchpoint=touchpoint,
            max_event_age=timedelta(seconds=age),
            poll_s=float(poll),
        )

    def quiet_until(self, traits: Mapping[str, Any], now: datetime) -> datetime | None:
        """When the customer's quiet hours end, if ``now`` is in them (else ``None``)."""
        if self.quiet_hours is None:
            return None
        local = now.astimezone(zone_of(traits, self.time_zone))
        if not self.quiet_hours.contains(local):
            return None
        return self.quiet_hours.ends_after(local).astimezone(now.tzinfo)


def zone_of(traits: Mapping[str, Any], default: ZoneInfo) -> ZoneInfo:
    """The customer's ``time_zone`` trait when it names a zone, else ``default``."""
    return _zone(traits.get("time_zone")) or default


def suppressed(traits: Mapping[str, Any], channel: str | None) -> bool:
    """Whether the customer is suppressed: ``suppressed`` true, or a list naming ``channel``."""
    value = traits.get("suppressed")
    if value is True:
        return True
    return isinstance(value, list) and channel is not None and channel in value
