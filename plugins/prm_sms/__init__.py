"""The SMS touch point: Twilio Programmable Messaging, both ways.

Registers the ``sms`` touch point (channel ``sms``) when ``[touchpoints.sms]`` is configured
(:mod:`prm_sms.settings`): it sends the messages triggers write on the ``sms`` channel
(``prm_send_message``, :mod:`prm_sms.sender`) and takes Twilio's webhooks, incoming messages
and delivery statuses (:mod:`prm_sms.webhooks`). Its events thread into one dialogue per
customer while it is active (``dialogue_timeout_hours``, a day by default): a message sent,
its statuses and the customer's answer. See docs/messaging.md.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prm_core.plugin import Config, Hub, Message, TouchPoint, hookimpl

from .records import CHANNEL, TOUCHPOINT
from .sender import SmsSender, TwilioUnavailable
from .settings import SmsSettings
from .webhooks import SmsWebhooks, keyword

__all__ = [
    "SmsSender",
    "SmsSettings",
    "SmsWebhooks",
    "TwilioUnavailable",
    "keyword",
    "prm_event_labels",
    "prm_hub_started",
    "prm_hub_stopping",
    "prm_send_message",
    "prm_touchpoints",
    "sender_of",
]

PLUGIN_NAME = "prm_sms.sender"
# hubs of this process whose [touchpoints.sms] is configured (set as their touch points are collected)
_configured: set[int] = set()


def sender_of(hub: Hub) -> SmsSender | None:
    """The hub's SMS sender (registered on its plugin manager while the hub runs)."""
    found = hub.pm.get_plugin(PLUGIN_NAME)
    return found if isinstance(found, SmsSender) else None


@hookimpl
def prm_touchpoints(config: Config) -> list[TouchPoint]:
    settings = SmsSettings.from_config(config)  # a wrong key stops the hub here, naming it
    if settings is None:
        return []  # not configured: no touch point, no unauthenticated-by-default routes
    _configured.add(id(config))
    return [
        TouchPoint(
            name=TOUCHPOINT,
            channel=CHANNEL,
            budget_ms=settings.budget_ms,
            dialogue_timeout=timedelta(hours=settings.dialogue_timeout_hours),
            routes=SmsWebhooks(settings).routes(),
            description=__doc__.split("\n", 1)[0],
        )
    ]


@hookimpl
async def prm_hub_started(hub: Hub) -> None:
    """Open the hub's Twilio client and register its sender on the hub's plugin manager."""
    settings = SmsSettings.from_config(hub.config)
    if settings is not None:
        hub.pm.register(SmsSender(hub, settings), name=PLUGIN_NAME)


@hookimpl
async def prm_hub_stopping(hub: Hub) -> None:
    """Close the hub's Twilio client (no message is in flight: the triggers have stopped)."""
    sender = sender_of(hub)
    if sender is not None:
        hub.pm.unregister(sender)
        await sender.close()
    _configured.discard(id(hub.config))


@hookimpl
def prm_send_message(message: Message) -> Any:
    """Called only before a hub's own sender is registered (the trigger engine starts first):
    an SMS then fails for now, and is retried once the sender runs."""
    if message.channel != CHANNEL or not _configured:
        return None
    raise TwilioUnavailable("the SMS sender is starting")


@hookimpl
def prm_event_labels(config: Config) -> dict[str, str]:
    """The SMS touch point's own event in words, for the agent desktop and the console (an
    answer, ``message.received``, keeps the core's "replied")."""
    return {"message.status": "message status"}
