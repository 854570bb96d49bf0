"""The Event wire format: parsing and validating what touch points send.

Everything is checked before anything is written, so a bad event in a batch rejects the
whole batch with a 422 naming the field (``events[3].occurred_at``) and writes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from .clock import utcnow
from .errors import InvalidInput, TooLarge
from .identity import normalize_identities
from .model import Event, IdentityNamespace
from .privacy.consents import CONSENT_TYPES, check_consent_data

__all__ = [
    "EARLIEST",
    "FUTURE_SKEW",
    "MAX_EVENTS_PER_CALL",
    "check_window",
    "in_window",
    "parse_event",
    "parse_events",
    "parse_rfc3339",
    "parse_time",
]

MAX_EVENTS_PER_CALL = 1000
_MAX_ID = 200
_MAX_TYPE = 100


# RFC 3339's date-time: what fromisoformat also reads but RFC 3339 is not (a week or
# ordinal date, the basic format without separators, no seconds, no offset) is refused
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})", re.ASCII)
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
"""The earliest time an event may carry: older is a broken clock or a placeholder (0001-01-01)."""
FUTURE_SKEW = timedelta(days=1)
"""How far past the hub's clock an event may be dated (a device clock running ahead)."""


def parse_rfc3339(raw: Any, field: str) -> datetime:
    """An RFC 3339 timestamp with its own UTC offset, as an aware datetime (no window)."""
    if not isinstance(raw, str):
        raise InvalidInput(f"{field} must be an RFC 3339 timestamp string", field)
    text = raw.strip()
    if _RFC3339.fullmatch(text) is None:
        raise InvalidInput(f"{field} is not an RFC 3339 timestamp such as 2026-11-23T08:00:00Z", field)
    try:
        # fromisoformat takes any separator the pattern let through, but only an upper-case Z
        return datetime.fromisoformat(text if text[-1] != "z" else text[:-1] + "Z")
    except ValueError:
        raise InvalidInput(f"{field} is not a valid date and time", field) from None


def in_window(value: datetime, now: datetime | None = None) -> bool:
    """Whether ``value`` lies between :data:`EARLIEST` and the hub's clock (``now``, else
    :func:`~prm_core.clock.utcnow`) plus :data:`FUTURE_SKEW`."""
    return EARLIEST <= value <= (now or utcnow()) + FUTURE_SKEW


def check_window(value: datetime, field: str, now: datetime | None = None) -> datetime:
    """``value`` when it lies between :data:`EARLIEST` and the hub's clock (``now``, else
    :func:`~prm_core.clock.utcnow`) plus :data:`FUTURE_SKEW`; else a 422 naming ``field``.
    Keeps every time the hub stores far enough from year 1 and year 9999 that arithmetic on
    it cannot overflow."""
    if value < EARLIEST:
        raise InvalidInput(f"{field} is before {EARLIEST.year}", field)
    if value > (now or utcnow()) + FUTURE_SKEW:
        raise InvalidInput(f"{field} is more than a day ahead of the hub's clock", field)
    return value


def parse_time(raw: Any, field: str, now: datetime | None = None) -> datetime:
    """An RFC 3339 timestamp with a UTC offset, inside the window :func:`check_window`
    allows (``now``: the hub's clock, read once per batch by its callers), as an aware UTC
    datetime."""
    value = parse_rfc3339(raw, field)
    try:
        value = value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is in year 0 in UTC, 9999-12-31T23:00:00-01:00 in 10000
        message = f"{field} is outside the times the hub takes ({EARLIEST.year} to a day ahead of its clock)"
        raise InvalidInput(message, field) from None
    if EARLIEST <= value <= (now or utcnow()) + FUTURE_SKEW:
        return value
    return check_window(value, field, now)  # raises, naming which end


def _string(obj: Mapping[str, Any], key: str, where: str, limit: int, *, required: bool) -> str | None:
    value = obj.get(key)
    if type(value) is str and len(value) <= limit and "\x00" not in value and value.strip():
        return value  # the usual case, checked as below
    if value is None:
        if required:
            raise InvalidInput(f"{where}{key} is required", f"{where}{key}", code="missing")
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{where}{key} must be a non-empty string", f"{where}{key}")
    if len(value) > limit:
        raise InvalidInput(f"{where}{key} is longer than {limit} characters", f"{where}{key}")
    if "\x00" in value:
        # PostgreSQL refuses NUL in text, and SQLite's JSON functions cut a string short at one
        # (prm_core.store.lists): an id or key must be the same string in every lookup
        raise InvalidInput(f"{where}{key} must not contain NUL characters", f"{where}{key}")
    return value


def parse_event(
    obj: Any,
    touchpoint: str,
    namespaces: Mapping[str, IdentityNamespace],
    region: str,
    *,
    received_at: datetime,
    sent_at: datetime | None = None,
    where: str = "",
) -> Event:
    """Validate one Event object. ``sent_at`` (the client's clock when it sent the call)
    corrects ``occurred_at`` for clock skew, as Segment does:
    ``occurred_at + (received_at - sent_at)``.
    """
    if type(obj) is not dict and not isinstance(obj, Mapping):  # a dict skips the ABC's slower check
        raise InvalidInput(f"{where.rstrip('.') or 'the body'} must be an Event object", where.rstrip(".") or None)
    event_id = _string(obj, "id", where, _MAX_ID, required=True)
    event_type = _string(obj, "type", where, _MAX_TYPE, required=True)
    if "occurred_at" not in obj:
        raise InvalidInput(f"{where}occurred_at is required", f"{where}occurred_at", code="missing")
    occurred_at = parse_time(obj["occurred_at"], f"{where}occurred_at", received_at)
    if obj.get("sent_at") is not None:
        sent_at = parse_time(obj["sent_at"], f"{where}sent_at", received_at)
    if sent_at is not None:
        # both inside the window, so this cannot overflow; the result must be inside it too
        occurred_at += received_at - sent_at
        if not in_window(occurred_at, received_at):
            field = f"{where}sent_at" if obj.get("sent_at") is not None else "sent_at"
            raise InvalidInput(f"{field} moves occurred_at (corrected for clock skew) out of the accepted times", field)
    dialogue = _string(obj, "dialogue", where, _MAX_ID, required=False)
    direction = obj.get("direction", "inbound")
    if direction not in ("inbound", "outbound"):
        raise InvalidInput(f"{where}direction must be inbound or outbound", f"{where}direction")
    data = obj.get("data") or {}
    if type(data) is not dict and not isinstance(data, Mapping):
        raise InvalidInput(f"{where}data must be an object", f"{where}data")
    if event_type in CONSENT_TYPES:
        check_consent_data(data, f"{where}data.")
    identities = normalize_identities(obj.get("identities"), namespaces, region, field=f"{where}identities")
    return Event(
        id=event_id,  # type: ignore[arg-type]
        type=event_type,  # type: ignore[arg-type]
        occurred_at=occurred_at,
        touchpoint=touchpoint,
        identities=identities,
        dialogue=dialogue,
        direction=direction,
        data=dict(data),
        received_at=received_at,
    )


def parse_events(
    body: Any,
    touchpoint: str,
    namespaces: Mapping[str, IdentityNamespace],
    region: str,
    *,
    received_at: datetime | None = None,
    max_events: int = MAX_EVENTS_PER_CALL,
) -> list[Event]:
    """``{"events": [Event, ...], "sent_at"?: ...}`` or a single Event object."""
    received_at = received_at or utcnow()
    if not isinstance(body, Mapping):
        raise InvalidInput('the body must be a JSON object: {"events": [...]} or one Event', None)
    if "events" not in body:
        return [parse_event(body, touchpoint, namespaces, region, received_at=received_at)]
    items = body["events"]
    if not isinstance(items, list):
        raise InvalidInput("events must be an array of Event objects", "events")
    if not items:
        raise InvalidInput("events is empty", "events")
    if len(items) > max_events:
        raise TooLarge(f"at most {max_events} events per call, got {len(items)}", "events")
    sent_at = parse_time(body["sent_at"], "sent_at", received_at) if body.get("sent_at") is not None else None
    return [
        parse_event(item, touchpoint, namespaces, region, received_at=received_at, sent_at=sent_at,
                    where=f"events[{i}].")
        for i, item in enumerate(items)
    ]  # fmt: skip
