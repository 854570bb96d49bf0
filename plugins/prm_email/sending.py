"""Sending a trigger's message by email (``prm_send_message`` for the ``email`` channel).

- **Once**: the Message-ID derives from the message's id, and a message sent is remembered
  (``Hub.mark_delivery_processed``, source ``email``): handed over again after a retry or a
  restart, it is answered ``sent`` with the same Message-ID and not sent again. Should the
  hub stop between the server's acceptance and that note, the message goes out once more
  with the same Message-ID, which receiving systems use to recognize a duplicate.
- **Failures**: the server unreachable, a timeout, a ``4xx`` answer or a refused login raise,
  and the trigger engine tries again with backoff. A ``5xx`` refusal of the recipient or the
  message, or an address that is not one, is final: ``MessageResult("failed", reason)``.
- **Transports**: ``smtp`` (aiosmtplib) by default; ``maildir`` writes each message as an
  ``.eml`` file into ``[touchpoints.email] maildir`` (``new/``) instead, for development.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import aiosmtplib
import structlog

from prm_core.plugin import Hub, Message, MessageResult, normalize_email

from .compose import TemplateFailed, Templates, compose
from .settings import EmailSettings

__all__ = ["SENT", "send_email"]

SENT = "email"  # the source under which sent messages are remembered (Hub.delivery_processed)
log = structlog.get_logger(__name__)


class TransportUnavailable(Exception):
    """The mail server could not take the message now: the trigger engine tries again."""


async def send_email(message: Message, settings: EmailSettings, templates: Templates, hub: Hub) -> MessageResult:
    if message.to is None:
        return MessageResult("failed", "the customer has no email address")
    try:
        to = normalize_email(message.to, "US")
    except ValueError:
        return MessageResult("failed", "the customer's email address is not one")
    if any(c in to for c in '<>,;"\\\r\n') or not to.isascii():
        return MessageResult("failed", "the customer's email address cannot be sent to")
    try:
        email = compose(message, to, settings, templates)
    except TemplateFailed as exc:
        return MessageResult("failed", str(exc))
    ref = str(email["Message-ID"])
    if await hub.delivery_processed(SENT, message.id):
        return MessageResult("sent", ref=ref)  # handed over again: sent before
    if settings.transport == "maildir":
        assert settings.maildir is not None
        await asyncio.to_thread(_write_maildir, settings.maildir, email, message.id)
    else:
        refused = await _smtp(email, to, settings)
        if refused is not None:
            log.info("email refused by the server", trigger=message.trigger, reason=refused[:120])
            return MessageResult("failed", refused)
    await hub.mark_delivery_processed(SENT, message.id)
    return MessageResult("sent", ref=ref)


async def _smtp(email: EmailMessage, to: str, settings: EmailSettings) -> str | None:
    """Send; ``None`` once accepted, the reason of a final refusal, or raise to retry."""
    try:
        await aiosmtplib.send(
            email,
            sender=settings.sender_address,
            recipients=[to],
            hostname=settings.host,
            port=settings.port,
            username=settings.username,
            password=settings.password,
            use_tls=settings.security == "tls",
            start_tls=True if settings.security == "starttls" else False,
            timeout=settings.timeout_s,
        )
    except aiosmtplib.SMTPRecipientsRefused as exc:
        codes = [r.code for r in exc.recipients]
        if codes and all(500 <= c < 600 for c in codes):
            first = exc.recipients[0]
            return f"the mail server refused the recipient: {first.code} {_clean(first.message)}"
        raise TransportUnavailable(f"recipient deferred ({', '.join(map(str, codes))})") from None
    except aiosmtplib.SMTPDataError as exc:
        if 500 <= exc.code < 600:
            return f"the mail server refused the message: {exc.code} {_clean(exc.message)}"
        raise TransportUnavailable(f"message deferred ({exc.code})") from None
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        # down, unreachable, timed out, a 4xx, a refused login or sender: worth another try
        raise TransportUnavailable(f"the mail server is unavailable: {type(exc).__name__}") from None
    return None


def _clean(text: str) -> str:
    """A server's answer for the run's reason: one line, no addresses (personal data)."""
    words = [w for w in text.replace("\r", " ").replace("\n", " ").split() if "@" not in w]
    return " ".join(words)[:200]


def _write_maildir(root: Path, email: EmailMessage, message_id: str) -> None:
    """Write ``email`` into the maildir ``root`` (``tmp/`` then ``new/``), named by its id."""
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(message_id.encode()).hexdigest()[:32] + ".eml"
    tmp = root / "tmp" / name
    tmp.write_bytes(email.as_bytes(policy=SMTP))
    os.replace(tmp, root / "new" / name)
