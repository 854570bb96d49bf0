"""The email touch point: triggers' messages out by SMTP, replies and bounces in.

Registered when ``[touchpoints.email]`` is configured (:mod:`prm_email.settings`): the ``email`` touch
point (channel ``email``) and its routes (:mod:`prm_email.routes`), and ``prm_send_message``
for the ``email`` channel (:mod:`prm_email.sending`, :mod:`prm_email.compose`). See
docs/messaging.md.

The settings of the last hub started in a process are the ones sending uses (one hub per
process is the deployment; tests start them in turn), as for the partner plugin.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterator, Mapping

from prm_core.plugin import Config, Hub, Message, MessageResult, TouchPoint, hookimpl

from .compose import Templates
from .routes import routes
from .sending import send_email
from .settings import EmailSettings, email_settings

__all__ = ["Mailer", "mailer"]


class Mailer:
    """What sending reads: the settings, the templates and the running hub."""

    def __init__(self) -> None:
        self.settings: EmailSettings | None = None
        self.templates: Templates | None = None
        self.hub: Hub | None = None

    def configure(self, config: Config) -> EmailSettings | None:
        self.settings = email_settings(config)
        self.templates = Templates(self.settings) if self.settings is not None else None
        return self.settings


mailer = Mailer()


@hookimpl
def prm_touchpoints(config: Config) -> Iterator[TouchPoint]:
    settings = mailer.configure(config)
    if settings is None:
        return
    yield TouchPoint(
        name="email",
        channel="email",
        budget_ms=settings.budget_ms,
        routes=routes(settings),
        description="email: triggers' messages out, replies and bounces in",
    )


@hookimpl
def prm_hub_started(hub: Hub) -> None:
    if "email" in hub.registrations.touchpoints:
        mailer.hub = hub


@hookimpl
def prm_hub_stopping(hub: Hub) -> None:
    if mailer.hub is hub:
        mailer.hub = None


@hookimpl
def prm_send_message(message: Message) -> Awaitable[MessageResult] | None:
    if message.channel != "email" or mailer.settings is None or mailer.templates is None:
        return None
    return send_email(message, mailer.settings, mailer.templates, mailer.hub)


@hookimpl
def prm_event_labels(config: Config) -> Mapping[str, str] | None:
    if not config.touchpoint("email"):
        return None
    return {"message.received": "sent a message", "message.bounced": "an email to them bounced"}
