"""The email touch point: triggers' messages out by SMTP, replies and bounces in.

Registered when ``[touchpoints.email]`` is configured (:mod:`prm_email.settings`): the ``email``
touch point (channel ``email``) and its routes (:mod:`prm_email.routes`). Each hub that has it
gets its own :class:`EmailSender` (its settings and templates), registered on the hub's plugin
manager when the hub has started and unregistered when it stops: it answers
``prm_send_message`` for the ``email`` channel (:mod:`prm_email.sending`,
:mod:`prm_email.compose`). The trigger engine starts after the plugins, so the sender is there
before the first message. See docs/messaging.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterator

from prm_core.plugin import Config, Hub, Message, MessageResult, TouchPoint, hookimpl

from .compose import Templates
from .inbound import TOUCHPOINT
from .routes import routes
from .sending import send_email
from .settings import EmailSettings, email_settings

__all__ = [
    "EmailSender",
    "prm_event_labels",
    "prm_hub_started",
    "prm_hub_stopping",
    "prm_touchpoints",
    "sender_of",
]

PLUGIN_NAME = "prm_email.sender"


class EmailSender:
    """Sends one hub's email with its settings and templates; registered on the hub's plugin
    manager while the hub runs."""

    def __init__(self, hub: Hub, settings: EmailSettings) -> None:
        self.hub = hub
        self.settings = settings
        self.templates = Templates(settings)

    @hookimpl
    def prm_send_message(self, message: Message) -> Awaitable[MessageResult] | None:
        if message.channel != TOUCHPOINT:
            return None
        return send_email(message, self.settings, self.templates, self.hub)


def sender_of(hub: Hub) -> EmailSender | None:
    """The hub's email sender (registered on its plugin manager while the hub runs)."""
    found = hub.pm.get_plugin(PLUGIN_NAME)
    return found if isinstance(found, EmailSender) else None


@hookimpl
def prm_touchpoints(config: Config) -> Iterator[TouchPoint]:
    settings = email_settings(config)  # a wrong key stops the hub here, naming it
    if settings is None:
        return  # not configured: no touch point, no routes
    yield TouchPoint(
        name=TOUCHPOINT,
        channel="email",
        budget_ms=settings.budget_ms,
        routes=routes(settings),
        description="email: triggers' messages out, replies and bounces in",
    )


@hookimpl
def prm_hub_started(hub: Hub) -> None:
    """Register the hub's sender, built from the hub's own settings."""
    settings = email_settings(hub.config)
    if settings is not None and sender_of(hub) is None:
        hub.pm.register(EmailSender(hub, settings), name=PLUGIN_NAME)


@hookimpl
def prm_hub_stopping(hub: Hub) -> None:
    """Unregister the hub's sender (no message is in flight: the triggers have stopped)."""
    sender = sender_of(hub)
    if sender is not None:
        hub.pm.unregister(sender)
