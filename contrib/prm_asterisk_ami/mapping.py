"""Asterisk AMI events as CTI events, one call per ``Linkedid``.

``Linkedid`` is the ``Uniqueid`` of the oldest channel of a call, so every leg (the caller's
trunk channel, each agent's channel) carries it: it is the call id and hence the dialogue.

- ``Newchannel`` of the call's first channel (``Uniqueid == Linkedid``): ``call.started``
  with ``ani`` (``CallerIDNum``) and ``dnis`` (``Exten``);
- ``AgentCalled``: ``call.offered`` with ``agent_id`` and ``queue``; a queue rings an agent,
  which pops the caller's view on that agent's desktop;
- ``AgentConnect``: ``call.answered`` with ``agent_id``, ``queue``, ``hold_s``;
- ``BlindTransfer`` / ``AttendedTransfer``: ``call.transferred`` with ``to_extension`` (these
  name the agent's channel with ``Transferer...`` / ``OrigTransferer...`` headers);
- ``Hangup`` of the call's first channel: ``call.ended`` with ``cause`` and ``cause_text``.

Event ids come from the channels' ``Uniqueid`` (unique per Asterisk system and stable when
AMI replays nothing twice or when this client reconnects mid-call), so recording a call's
events again changes nothing. The agent id is the queue member's ``MemberName`` (configurable:
``agent_field = "Interface"``). The event's time is AMI's ``Timestamp`` header when
``timestampevents = yes`` in manager.conf, else when the event was read.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from prm_callcenter.cti import TOUCHPOINT

from prm_core.plugin import Event

__all__ = ["HANDLED", "to_cti"]

HANDLED = frozenset({"Newchannel", "AgentCalled", "AgentConnect", "BlindTransfer", "AttendedTransfer", "Hangup"})


def _value(message: Mapping[str, Any], key: str) -> str | None:
    raw = message.get(key)
    if isinstance(raw, list | tuple):  # a header AMI repeated
        raw = raw[0] if raw else None
    value = raw.strip() if isinstance(raw, str) else ""
    # AMI writes an absent caller id as "<unknown>"
    return value if value and value.lower() != "<unknown>" else None


def _when(message: Mapping[str, Any], received_at: datetime) -> datetime:
    raw = _value(message, "Timestamp")
    if raw:
        try:
            return datetime.fromtimestamp(float(raw), UTC)
        except (ValueError, OverflowError):
            pass
    return received_at


def to_cti(message: Mapping[str, Any], *, received_at: datetime, agent_field: str = "MemberName") -> Event | None:
    """The CTI event an AMI event stands for, or ``None`` for one that says nothing about a call.

    ``message`` is an AMI message's headers (a panoramisk ``Message``, whose keys are
    case-insensitive as AMI's are).
    """
    kind = _value(message, "Event")
    # transfer events name their channels with a prefix: the agent's is the transferer
    prefix = {"BlindTransfer": "Transferer", "AttendedTransfer": "OrigTransferer"}.get(kind or "", "")
    linked = _value(message, f"{prefix}Linkedid")
    unique = _value(message, f"{prefix}Uniqueid")
    if kind not in HANDLED or not linked or not unique:
        return None
    root = unique == linked  # the caller's own channel, which lives as long as the call
    data: dict[str, object] = {"call_id": linked, "source": "asterisk"}
    if kind == "Newchannel":
        if not root:
            return None
        event_type, event_id = "call.started", f"ami-{unique}-new"
        data.update(ani=_value(message, "CallerIDNum"), dnis=_value(message, "Exten"))
    elif kind == "AgentCalled":
        agent = _value(message, agent_field) or _value(message, "Interface")
        dest = _value(message, "DestUniqueid") or agent or ""
        event_type, event_id = "call.offered", f"ami-{linked}-called-{dest}"
        data.update(agent_id=agent, queue=_value(message, "Queue"), ani=_value(message, "CallerIDNum"))
    elif kind == "AgentConnect":
        agent = _value(message, agent_field) or _value(message, "Interface")
        dest = _value(message, "DestUniqueid") or agent or ""
        event_type, event_id = "call.answered", f"ami-{linked}-connect-{dest}"
        data.update(agent_id=agent, queue=_value(message, "Queue"), hold_s=_value(message, "HoldTime"))
    elif kind in ("BlindTransfer", "AttendedTransfer"):
        event_type, event_id = "call.transferred", f"ami-{linked}-transfer-{unique}"
        data.update(to_extension=_value(message, "Extension"), kind=kind)
    else:  # Hangup
        if not root:
            return None
        event_type, event_id = "call.ended", f"ami-{unique}-hangup"
        data.update(cause=_value(message, "Cause"), cause_text=_value(message, "Cause-txt"))
    return Event(
        id=event_id,
        type=event_type,
        occurred_at=_when(message, received_at),
        touchpoint=TOUCHPOINT,
        data={k: v for k, v in data.items() if v is not None},
        received_at=received_at,
    )
