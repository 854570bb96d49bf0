"""How events thread into dialogues, and what a dialogue's intent and outcome are.

An event joins a dialogue by, in order:

1. its explicit ``dialogue`` key (a call id, a transaction number), unique per touch point;
2. the touch point's inactivity rule (``TouchPoint.dialogue_timeout``): the customer's open
   dialogue there, if it saw an event that recently; a stale one is closed first;
3. otherwise, a dialogue of its own.

A dialogue closes when an event carries ``data.outcome``, or has type ``dialogue.closed``
or one of the touch point's ``closes_on`` types. Events arriving for a closed dialogue by
its key still join it (a late agent note), without reopening it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from attrs import define, field

from .model import Dialogue, Event, Intent, TouchPoint

__all__ = ["DialogueState", "closes", "infer_intent"]

INTENTS: frozenset[str] = frozenset({"information", "service", "sale"})
_PREFIXES: tuple[tuple[str, Intent], ...] = (
    ("info.", "information"),
    ("information.", "information"),
    ("service.", "service"),
    ("quote.", "sale"),
    ("order.", "sale"),
    ("sale.", "sale"),
    ("transaction", "sale"),
    ("purchase", "sale"),
)


def infer_intent(event_type: str, data: Mapping[str, Any]) -> Intent | None:
    """``data.intent`` when valid, else from the event type (``service.request`` -> service)."""
    explicit = data.get("intent")
    if isinstance(explicit, str) and explicit in INTENTS:
        return explicit  # type: ignore[return-value]
    return _type_intent(event_type)


@functools.lru_cache(maxsize=1024)  # a touch point sends a few types, each many times
def _type_intent(event_type: str) -> Intent | None:
    lowered = event_type.lower()
    for prefix, intent in _PREFIXES:
        if lowered.startswith(prefix):
            return intent
    return None


def closes(event: Event, touchpoint: TouchPoint) -> bool:
    return (
        isinstance(event.data.get("outcome"), str)
        or event.type == "dialogue.closed"
        or event.type in touchpoint.closes_on
    )


@define
class DialogueState:
    """A dialogue being changed inside one ingest transaction."""

    id: str
    touchpoint: str
    ref: str
    customer_id: str
    status: str
    intent: str | None
    outcome: str | None
    opened_at: datetime
    last_event_at: datetime
    closed_at: datetime | None
    is_new: bool = False
    dirty: bool = False
    # the indexed columns besides last_event_at, and the times, as the database holds them:
    # an update leaves out the ones not changed since (see prm_core.recording)
    stored: tuple[str, str, datetime, datetime | None] | None = field(default=None, eq=False, repr=False)

    @classmethod
    def from_row(cls, row: Any) -> DialogueState:
        return cls(
            row.id, row.touchpoint, row.ref, row.customer_id, row.status, row.intent, row.outcome,
            row.opened_at, row.last_event_at, row.closed_at,
            stored=(row.customer_id, row.status, row.opened_at, row.closed_at),
        )  # fmt: skip

    def kept(self) -> tuple[str, str, datetime, datetime | None]:
        """What :attr:`stored` holds, from the state as it is now."""
        return (self.customer_id, self.status, self.opened_at, self.closed_at)

    def is_recent(self, at: datetime, touchpoint: TouchPoint) -> bool:
        """Whether ``at`` lies within the touch point's timeout of this open dialogue."""
        timeout = touchpoint.dialogue_timeout
        # differences, not sums: a difference of two datetimes always fits a timedelta, while
        # opened_at - timeout overflows for a dialogue opened in year 1 (stored before times
        # were bounded) and would fail every later event of its customer there
        return (
            timeout is not None
            and self.status == "open"
            and self.opened_at - at <= timeout
            and at - self.last_event_at <= timeout
        )

    def apply(self, event: Event, touchpoint: TouchPoint) -> None:
        """Take one event into this dialogue."""
        self.dirty = True
        if event.occurred_at > self.last_event_at:
            self.last_event_at = event.occurred_at
        if event.occurred_at < self.opened_at:
            self.opened_at = event.occurred_at
        if self.intent is None:
            self.intent = infer_intent(event.type, event.data)
        outcome = event.data.get("outcome")
        if self.status == "open" and closes(event, touchpoint):
            self.outcome = outcome[:64] if isinstance(outcome, str) else self.outcome
            self.close(event.occurred_at)
        elif self.status == "closed" and self.outcome is None and isinstance(outcome, str):
            # the wrap-up after the hang-up (the agent sets the outcome once the call ended): a
            # closed dialogue takes its first outcome, and stays closed as it was
            self.outcome = outcome[:64]

    def close(self, at: datetime) -> None:
        self.status = "closed"
        self.closed_at = at
        self.dirty = True

    def row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "touchpoint": self.touchpoint,
            "ref": self.ref,
            "customer_id": self.customer_id,
            "status": self.status,
            "intent": self.intent,
            "outcome": self.outcome,
            "opened_at": self.opened_at,
            "last_event_at": self.last_event_at,
            "closed_at": self.closed_at,
        }

    def value(self) -> Dialogue:
        return Dialogue(
            id=self.id,
            touchpoint=self.touchpoint,
            customer_id=self.customer_id,
            ref=self.ref,
            status=self.status,  # type: ignore[arg-type]
            intent=self.intent,  # type: ignore[arg-type]
            outcome=self.outcome,
            opened_at=self.opened_at,
            last_event_at=self.last_event_at,
            closed_at=self.closed_at,
        )
