"""CTI events: the call center's wire format on top of the hub's Event.

A CTI event is an Event (``id``, ``type``, ``occurred_at``) whose ``data`` carries the call's
flat CTI fields: ``call_id``, ``ani`` (the caller's number), ``dnis`` (the number dialled),
``queue``, ``agent_id``. From them the touch point derives what the core threads on:

- the dialogue key is ``data.call_id``: each call is one dialogue, closed by ``call.ended``
  (or by ``call.outcome`` while it is still open);
- the caller is the ``phone`` identity of ``data.ani`` in E.164 (a national number takes the
  hub's ``[identity] default_region``); a withheld caller id (``anonymous``, ``restricted``,
  ...) gives no identity, and events without one join the call's customer by its key.

Events of other types are the core's plain Events; when they carry ``data.call_id`` or
``data.ani`` these are derived the same way. Every problem is a 422 naming the field
(``events[2].data.ani``); nothing of the batch is written then.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import evolve

from prm_core.plugin import Event, Identity, InvalidInput, normalize_phone

__all__ = ["CALL_TYPES", "OFFERED", "TOUCHPOINT", "WITHHELD", "cti_event"]

TOUCHPOINT = "callcenter"
OFFERED = "call.offered"
CALL_TYPES = frozenset(
    {"call.started", "call.offered", "call.answered", "call.transferred", "call.ended", "agent.note", "call.outcome"}
)
# what switches put in the caller id when the caller withheld it
WITHHELD = frozenset({"anonymous", "restricted", "private", "unknown", "unavailable", "withheld", "blocked"})
_TEXT_FIELDS = {"call_id": 200, "dnis": 64, "queue": 100, "agent_id": 100, "to_agent_id": 100, "to_queue": 100}
MAX_NOTE = 4000
MAX_OUTCOME = 64


def _text(data: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
    value = data.get(key)
    field = f"{where}data.{key}"
    if value is None or value == "":
        if required:
            raise InvalidInput(f"{field} is required", field, code="missing")
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # switches often send numeric ids
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{field} must be a non-empty string", field)
    limit = _TEXT_FIELDS.get(key, MAX_NOTE)
    if len(value) > limit:
        raise InvalidInput(f"{field} is longer than {limit} characters", field)
    return value.strip()


def caller_identity(ani: str | None, region: str, field: str) -> Identity | None:
    """The caller's ``phone`` identity, ``None`` when the caller id is withheld."""
    if ani is None or ani.strip().lower() in WITHHELD:
        return None
    try:
        return Identity("phone", normalize_phone(ani, region))
    except ValueError as exc:
        raise InvalidInput(f"{field} {exc}", field) from None


def cti_event(event: Event, region: str, *, where: str = "") -> Event:
    """Check a parsed Event as a CTI event and derive its dialogue key and caller identity.

    ``where`` prefixes field names in errors (``events[3].``).
    """
    cti = event.type in CALL_TYPES
    data = dict(event.data)
    if not cti and "call_id" not in data and "ani" not in data:
        return event  # a plain Event of the core's API: recorded as it is
    fields = {key: _text(data, key, where, required=cti and key == "call_id") for key in _TEXT_FIELDS}
    call_id = fields["call_id"]
    if call_id is not None and event.dialogue is not None and event.dialogue != call_id:
        raise InvalidInput(f"{where}dialogue must be data.call_id ({call_id!r}) or left out", f"{where}dialogue")
    if event.type == "agent.note":
        _text(data, "text", where, required=True)
    if event.type == "call.outcome":
        outcome = _text(data, "outcome", where, required=True)
        if outcome is not None and len(outcome) > MAX_OUTCOME:
            raise InvalidInput(f"{where}data.outcome is longer than {MAX_OUTCOME} characters", f"{where}data.outcome")
    elif cti and "outcome" in data:
        # data.outcome closes a dialogue: only the agent desktop's outcome event may set it
        raise InvalidInput(f"{where}data.outcome belongs on a call.outcome event", f"{where}data.outcome")
    ani = data.get("ani")
    if ani is not None and not isinstance(ani, str):
        raise InvalidInput(f"{where}data.ani must be a string", f"{where}data.ani")
    identities = list(event.identities)
    caller = caller_identity(ani, region, f"{where}data.ani")
    if caller is not None and caller not in identities:
        identities.append(caller)
    data.update({k: v for k, v in fields.items() if v is not None})
    return evolve(event, dialogue=call_id or event.dialogue, identities=tuple(identities), data=data)
