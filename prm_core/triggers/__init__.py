"""Triggers and journeys: the hub acting on what it learns, as changes reach its feed.

See ``docs/triggers.md``. A trigger (``[triggers.NAME]``, or ``POST /v1/triggers``) listens
for a change type, checks a condition over the change and the customer's facts, and after
an optional wait queues an offer, asks a notification partner, or sends a message through a
touch point (``prm_send_message``), always behind the guards of
:mod:`prm_core.triggers.guards`.
"""

from __future__ import annotations

from .definitions import Act, Check, Trigger, Wait, parse_trigger
from .messages import Message, MessageResult

__all__ = ["Act", "Check", "Message", "MessageResult", "Trigger", "Wait", "parse_trigger"]
