"""What the SMS touch point records and reads back: every record is an event at ``sms``.

- ``sms:sent:<message id>`` (``message.status``, outbound, ``data.status`` Twilio's first
  status, ``queued`` or ``accepted``): Twilio accepted the message, under ``data.sid``. It is
  the durable record that a message handed over again is not sent again. The thread an
  answer joins (``in_reply_to`` and the dialogue) is the trigger engine's ``message.sent`` of
  the latest message sent to the number's customer from ``sms``.
- ``sms:refused:<message id>`` (``message.status``, ``failed``): Twilio refused it for good.
- ``sms:status:<MessageSid>:<status>`` (``message.status``): a delivery status callback.
- ``sms:bounced:<message id>`` (``message.bounced``, inbound): the message failed for good
  (one of ``permanent_error_codes``, when Twilio refused it or in a ``failed`` or
  ``undelivered`` status), with ``data`` ``{"channel": "sms", "status", "in_reply_to",
  "error_code"}`` as the email touch point records a bounce, in the message's dialogue; once
  per message (keyed by the ``MessageSid`` when a status names no message of the hub's).
- ``sms:in:<MessageSid>`` (``message.received``, inbound): a message from the customer, with
  ``data`` ``{"channel": "sms", "text", "in_reply_to"}``; a STOP or START adds
  ``consent.revoked`` / ``consent.granted`` (``sms:in:<MessageSid>:consent``).

Suppression is the customer's ``suppressed`` trait, as the trigger guards read it: a list
that names ``sms`` (or ``true``, left as it is).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import frozen

from prm_core.plugin import Event, Hub, Identity, utcnow

__all__ = [
    "CHANNEL",
    "TOUCHPOINT",
    "Thread",
    "bounce_event",
    "latest_sent",
    "phone_identities",
    "sent_event_id",
    "set_sms_suppression",
    "sms_event",
]

TOUCHPOINT = "sms"
CHANNEL = "sms"
SENT_PREFIX = "sms:sent:"


def phone_identities(hub: Hub, raw: str | None) -> tuple[Identity, ...]:
    """The ``phone`` identity of a number as Twilio gave it, or none (a short code, a
    withheld or malformed sender): the hub's own normalization, so the same spelling as the
    customer's number from any other touch point."""
    if not raw:
        return ()
    try:
        value = hub.registrations.namespaces["phone"].normalize(raw, hub.config.default_region)
    except (ValueError, KeyError):
        return ()
    return (Identity("phone", value),)


def sent_event_id(message_id: str) -> str:
    return (SENT_PREFIX + message_id)[:200]


def sms_event(
    event_id: str,
    type_: str,
    identities: tuple[Identity, ...],
    data: Mapping[str, Any],
    *,
    direction: str = "inbound",
    dialogue: str | None = None,
    dialogue_id: str | None = None,
) -> Event:
    return Event(
        id=event_id[:200],
        type=type_,
        occurred_at=utcnow(),
        touchpoint=TOUCHPOINT,
        identities=identities,
        direction=direction,  # type: ignore[arg-type]
        data=dict(data),
        dialogue=dialogue,
        dialogue_id=dialogue_id,
    )


def bounce_event(
    key: str,
    identities: tuple[Identity, ...],
    *,
    status: str,
    error_code: int,
    message_id: str | None,
    dialogue: str | None = None,
    dialogue_id: str | None = None,
) -> Event:
    """The ``message.bounced`` event of a message that failed for good: ``key`` is the
    message's id (or Twilio's SID of it), so it is recorded once per message."""
    data = {"channel": CHANNEL, "status": status, "in_reply_to": message_id, "error_code": error_code}
    return sms_event(
        f"sms:bounced:{key}", "message.bounced", identities, data, dialogue=dialogue, dialogue_id=dialogue_id
    )


@frozen
class Thread:
    """The latest message the hub sent to a number: its ``Message.id`` and its dialogue."""

    message_id: str
    dialogue_id: str | None


async def latest_sent(hub: Hub, identities: tuple[Identity, ...]) -> Thread | None:
    """The latest message the hub sent from the ``sms`` touch point to the customer of this
    number (its ``message.sent`` event, :meth:`Hub.latest_sent_message`), or ``None``."""
    if not identities:
        return None
    ref = f"{identities[0].namespace}:{identities[0].value}"
    sent = await hub.latest_sent_message(ref, touchpoint=TOUCHPOINT, channel=CHANNEL)
    message_id = sent.event.data.get("message_id") if sent is not None else None
    if sent is None or not isinstance(message_id, str):
        return None
    return Thread(message_id, sent.dialogue_id)


async def set_sms_suppression(hub: Hub, customer_id: str, suppress: bool, traits: Mapping[str, Any]) -> None:
    """Add ``sms`` to the customer's ``suppressed`` list (or take it out), with ``traits``
    beside it (``None`` removes one). ``suppressed = true`` (every channel) is left as it is, and
    so is a customer erased meanwhile (:meth:`Hub.suppress`)."""
    await hub.suppress(customer_id, CHANNEL, suppress=suppress, traits=traits)
