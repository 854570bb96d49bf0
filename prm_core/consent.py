"""Consent per purpose and channel: what value delivery and partners may do with a customer.

A consent is a JSON-able mapping, as it appears in the 360 view's ``consents`` list::

    {"purpose": "marketing", "channel": "email", "granted": false,
     "source": "web", "recorded_at": "2026-11-23T10:00:00Z"}

``channel`` is a touch point or channel name, or ``"*"`` for every channel. The most specific
entry wins (a channel's own over ``"*"``), and among equally specific ones the latest.
Without any entry the purpose's default applies: personalization and partner sharing for the
service the customer asked for are allowed (the customer asked for the service), marketing is
not (opt-in). ``[privacy.defaults]`` in the config may change the defaults.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

__all__ = ["DEFAULTS", "PURPOSES", "allows"]

PERSONALIZATION: Final = "personalization"
MARKETING: Final = "marketing"
PARTNER_SHARING: Final = "partner_sharing"

PURPOSES: Final = (PERSONALIZATION, MARKETING, PARTNER_SHARING)

DEFAULTS: Final[Mapping[str, bool]] = {PERSONALIZATION: True, MARKETING: False, PARTNER_SHARING: True}


def allows(
    consents: Iterable[Mapping[str, Any]],
    purpose: str,
    channel: str | None = None,
    *,
    defaults: Mapping[str, bool] = DEFAULTS,
) -> bool:
    """Whether ``consents`` allow ``purpose`` on ``channel`` (``None``: any channel at all).

    >>> allows([], "marketing")
    False
    >>> allows([{"purpose": "marketing", "channel": "*", "granted": True, "recorded_at": "2026-01-01T00:00:00Z"}],
    ...        "marketing", "email")
    True
    >>> allows([{"purpose": "marketing", "channel": "*", "granted": True, "recorded_at": "2026-01-01T00:00:00Z"},
    ...         {"purpose": "marketing", "channel": "email", "granted": False, "recorded_at": "2025-01-01T00:00:00Z"}],
    ...        "marketing", "email")
    False
    """
    if purpose not in defaults:
        raise ValueError(f"unknown consent purpose {purpose!r}; one of {sorted(defaults)}")
    best: tuple[int, str] | None = None
    granted = defaults[purpose]
    for c in consents:
        if c.get("purpose") != purpose:
            continue
        where = c.get("channel") or "*"
        if where == "*":
            rank = 0
        elif channel is not None and where == channel:
            rank = 1
        else:
            continue
        key = (rank, str(c.get("recorded_at") or ""))
        if best is None or key >= best:
            best, granted = key, bool(c.get("granted"))
    return granted
