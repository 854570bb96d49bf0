"""Change records: what the hub tells the world, one per change it makes.

A change is written in the same transaction as the change itself (a transactional
outbox), so it is exactly as durable: a crash loses both or neither. Its ``position``
only grows, in the order readers see commits (see ``docs/architecture.md``), so a reader
that remembers the last position it handled misses nothing by asking for what follows.

Positions are opaque strings on the wire (``"1234"``); inside the hub they are integers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from attrs import field, frozen

from ..errors import InvalidInput
from ..model import _iso

__all__ = [
    "CORE_TYPES",
    "Change",
    "NewChange",
    "check_plugin_type",
    "parse_position",
]

# The change types the core emits, with the fields of their ``data`` (docs/feed.md lists
# what each means). ``message.sent`` is a trigger's message, sent by a touch point (prm_core.triggers).
CORE_TYPES: Mapping[str, tuple[str, ...]] = {
    "event.recorded": ("event_id", "touchpoint", "type", "occurred_at", "dialogue_id"),
    "customer.created": ("kind", "traits", "touchpoint", "event_id"),
    # only the sections that changed are present: any of kind, traits (the whole map after
    # the change), tier, tier_source, value (the value model's figures), consents
    "customer.updated": ("kind", "traits", "tier", "tier_source", "value", "consents"),
    "customers.merged": ("merge_id", "survivor_id", "merged_id", "reason", "touchpoint", "event_id"),
    "customers.unmerged": ("merge_id", "survivor_id", "merged_id"),
    "customer.erased": ("merged_ids",),
    "dialogue.opened": ("dialogue_id", "touchpoint", "opened_at", "event_id"),
    "dialogue.closed": ("dialogue_id", "touchpoint", "intent", "outcome", "closed_at"),
    # offer.made also has ``response: "held_out"`` when a campaign's control group was held out
    "offer.made": ("offer_id", "code", "source", "campaign", "touchpoint", "dialogue_id"),
    "offer.responded": ("offer_id", "code", "source", "campaign", "touchpoint", "dialogue_id", "response"),
    "fulfillment.updated": ("fulfillment_id", "partner", "role", "action", "status", "dialogue_id", "data"),
    "message.sent": ("message_id", "channel", "touchpoint", "dialogue_id"),
}

_PLUGIN_TYPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_MAX_POSITION = 2**63 - 1


@frozen
class Change:
    """One change as the feed serves it.

    ``position``: opaque to clients, increasing in commit order; ``seq`` is the same
    number as an integer, for destinations that order or key by it (a warehouse table).
    ``customer_id`` is ``None`` for a change about no one customer. ``data`` holds the
    type's fields (:data:`CORE_TYPES`); after an erasure, that customer's earlier changes
    come back with ``data == {}``.
    """

    seq: int
    type: str
    at: datetime
    customer_id: str | None
    data: Mapping[str, Any] = field(factory=dict)

    @property
    def position(self) -> str:
        return str(self.seq)

    def to_json(self) -> dict[str, Any]:
        """The wire shape of ``GET /v1/changes`` and of every destination."""
        return {
            "position": self.position,
            "type": self.type,
            "at": _iso(self.at),
            "customer_id": self.customer_id,
            "data": dict(self.data),
        }


@frozen
class NewChange:
    """A change to add to the feed in the current transaction (it has no position yet).

    ``at`` defaults to the time the transaction writes it.
    """

    type: str
    customer_id: str | None
    data: Mapping[str, Any] = field(factory=dict)
    at: datetime | None = None


def check_plugin_type(name: str) -> str:
    """A plugin's change type: dotted lower-case words (``loyalty.points_earned``), never one
    of the core's. Raises ``ValueError`` naming it otherwise."""
    if name in CORE_TYPES:
        raise ValueError(f"change type {name!r} is the core's own")
    if not _PLUGIN_TYPE.match(name) or len(name) > 64:
        raise ValueError(f"change type {name!r} must be dotted lower-case words (like 'loyalty.points_earned')")
    return name


def parse_position(raw: str, field_name: str = "after") -> int:
    """A position from a client (a string of digits) as the integer it stands for."""
    if not isinstance(raw, str) or not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        raise InvalidInput(f"{field_name} must be a position from this feed", field_name)
    value = int(raw)
    if value > _MAX_POSITION:
        raise InvalidInput(f"{field_name} must be a position from this feed", field_name)
    return value
