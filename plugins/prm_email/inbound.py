"""Email coming in: replies and bounces.

A reply is recorded as an inbound ``message.received`` event at the ``email`` touch point,
identity ``email`` = its ``From`` address, data ``{"channel": "email", "text", "in_reply_to",
"subject"}``. ``text`` is the plain text body without the quoted message below it;
``in_reply_to`` is the hub's id of the message it answers when ``In-Reply-To`` or
``References`` names a Message-ID the hub sent to that same address (else ``null``), and the
reply then joins that message's dialogue. The event's id derives from the email's own
Message-ID and its sender, so the same email posted twice is recorded once.

A bounce (a delivery status notification, ``multipart/report; report-type=delivery-status``,
with a ``5.x.x`` status for a recipient) of a message the hub sent to that recipient is
recorded as ``message.bounced`` (data ``{"channel": "email", "status", "in_reply_to"}``) and
suppresses email for the customer: ``"email"`` joins their ``suppressed`` trait, which the
trigger guards read. A delay (``4.x.x``) or a report about a message the hub did not send
there is acknowledged and records nothing.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import html
import json
import re
from collections.abc import Mapping, Sequence
from email.message import EmailMessage, Message
from email.parser import HeaderParser
from email.utils import getaddresses
from typing import Any

from attrs import frozen

from prm_core.plugin import Event, Hub, Identity, InvalidInput, RecordedEvent, normalize_email, utcnow

from .settings import EmailSettings
from .signing import parse_message_id

__all__ = ["Bounce", "Reply", "parse_mail", "parse_mailgun_form", "record_bounce", "reply_event", "strip_quoted"]

TOUCHPOINT = "email"
MAX_TEXT = 10_000
_ANGLE = re.compile(r"<[^<>\s]{1,300}>")
_TAGS = re.compile(r"<[^>]*>")
_BLOCKS = re.compile(r"(?is)<(script|style|head)\b.*?</\1\s*>")
_BREAKS = re.compile(r"(?i)<\s*(br|/p|/div|/li|/tr|/h[1-6])\s*/?>")
_STATUS = re.compile(r"^([245])\.\d{1,3}\.\d{1,3}$")
# the line a mail client writes above the message it quotes ("On Mon, ... Ann wrote:")
_ATTRIBUTION = re.compile(
    r"^\s*(On\s.+\swrote:|Le\s.+\sa\s+écrit\s*:|Am\s.+\sschrieb\s.*:|El\s.+\sescribió:|"
    r"-{2,}\s*Original Message\s*-{2,}|_{10,})\s*$",
    re.IGNORECASE,
)


@frozen
class Reply:
    """What an inbound email says, whatever way it came in."""

    sender: str
    message_id: str | None
    references: tuple[str, ...]
    subject: str
    text: str


@frozen
class Bounce:
    """One failed recipient of a delivery status notification."""

    recipient: str
    status: str
    original_id: str | None


def strip_quoted(text: str) -> str:
    """The new part of a reply: what comes before the quoted message and the signature."""
    lines = clean(text, 10 * MAX_TEXT).split("\n")
    kept: list[str] = []
    for i, line in enumerate(lines):
        joined = line + " " + lines[i + 1] if i + 1 < len(lines) else line
        if line.rstrip() == "--" and line.startswith("--"):
            break  # "-- " starts the signature
        if _ATTRIBUTION.match(line) or (line.lstrip().startswith("On ") and _ATTRIBUTION.match(joined)):
            break
        if line.lstrip().startswith(">"):
            continue
        kept.append(line)
    return "\n".join(kept).strip()[:MAX_TEXT]


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean(text: str, limit: int) -> str:
    """Text as the hub keeps it: no control characters but tab and newline (a NUL is
    unstorable), no lone surrogates (an undecodable byte), at most ``limit`` characters."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))[:limit]


def _html_text(markup: str) -> str:
    text = _BREAKS.sub("\n", _BLOCKS.sub("", markup))
    return html.unescape(_TAGS.sub("", text))


def parse_mail(raw: bytes) -> EmailMessage:
    if not raw.strip():
        raise InvalidInput("the body must be an email (RFC 822), and is empty", "body")
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _header(msg: Message, name: str) -> str:
    try:
        value = msg.get(name)
    except Exception:  # a header the policy cannot parse
        return ""
    return "" if value is None else str(value)


def _sender(raw_from: str) -> str:
    addresses = [addr for _name, addr in getaddresses([raw_from]) if addr]
    if not addresses:
        raise InvalidInput("From must name the sender's email address", "From")
    try:
        address = normalize_email(addresses[0], "US")
    except ValueError:
        raise InvalidInput("From is not an email address", "From") from None
    if not address.isascii() or not address.isprintable() or len(address) > 254:
        raise InvalidInput("From is not an email address the hub can keep", "From")
    return address


def reply_of(msg: EmailMessage) -> Reply:
    sender = _sender(_header(msg, "From"))
    ids = _ANGLE.findall(_header(msg, "In-Reply-To")) + list(reversed(_ANGLE.findall(_header(msg, "References"))))
    text = ""
    try:
        body = msg.get_body(preferencelist=("plain", "html"))
        if body is not None:
            content = body.get_content()
            if isinstance(content, str):
                text = _html_text(content) if body.get_content_type() == "text/html" else content
    except (LookupError, ValueError, KeyError):  # an unknown charset, a broken part
        text = ""
    return Reply(
        sender=sender,
        message_id=(_ANGLE.findall(_header(msg, "Message-ID")) or [None])[0],
        references=tuple(dict.fromkeys(ids)),
        subject=clean(_header(msg, "Subject").replace("\r", " ").replace("\n", " "), 500).strip(),
        text=strip_quoted(text),
    )


def parse_mailgun_form(form: Mapping[str, Any]) -> Reply | EmailMessage:
    """A Mailgun route's POST: its raw MIME (``body-mime``) when it sent that, else its fields."""
    raw = form.get("body-mime")
    if isinstance(raw, str) and raw.strip():
        return parse_mail(raw.encode("utf-8", "surrogateescape"))
    headers: dict[str, str] = {}
    listed = form.get("message-headers")
    if isinstance(listed, str) and listed:
        try:
            pairs = json.loads(listed)
        except ValueError:
            raise InvalidInput("message-headers must be Mailgun's JSON list of headers", "message-headers") from None
        if isinstance(pairs, list):
            for pair in pairs:
                if isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair):
                    headers.setdefault(pair[0].lower(), pair[1])
    sender_field = form.get("from") or headers.get("from") or ""
    sender = _sender(str(sender_field))
    ids = _ANGLE.findall(headers.get("in-reply-to", "")) + list(reversed(_ANGLE.findall(headers.get("references", ""))))
    stripped = form.get("stripped-text")
    plain = str(form.get("body-plain") or "")
    text = stripped if isinstance(stripped, str) and stripped.strip() else strip_quoted(plain)
    return Reply(
        sender=sender,
        message_id=(_ANGLE.findall(headers.get("message-id", "")) or [None])[0],
        references=tuple(dict.fromkeys(ids)),
        subject=clean(str(form.get("subject") or headers.get("subject") or "").replace("\n", " "), 500).strip(),
        text=clean(text, MAX_TEXT).strip(),
    )


def _event_id(kind: str, *parts: str) -> str:
    return f"email-{kind}:" + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]


def reply_event(reply: Reply, settings: EmailSettings, raw_digest: str) -> Event:
    """The ``message.received`` event of a reply (threaded when it answers a message of ours)."""
    answered = next(
        (m for ref in reply.references if (m := parse_message_id(settings.secret, settings.domain, ref, reply.sender))),
        None,
    )
    return Event(
        # the sender's own Message-ID, with the sender: another's email naming the same id is not a duplicate
        id=_event_id("in", reply.sender, reply.message_id or raw_digest),
        type="message.received",
        occurred_at=utcnow(),
        touchpoint=TOUCHPOINT,
        identities=(Identity("email", reply.sender),),
        dialogue=answered,
        direction="inbound",
        data={"channel": "email", "text": reply.text, "in_reply_to": answered, "subject": reply.subject},
    )


def is_report(msg: EmailMessage) -> bool:
    return msg.get_content_type() == "multipart/report" and (msg.get_param("report-type") or "") == "delivery-status"


def bounces(msg: EmailMessage) -> list[Bounce]:
    """The failed recipients of a delivery status notification (RFC 3464)."""
    blocks: list[Message] = []
    original: str | None = None
    for part in msg.iter_parts():
        kind = part.get_content_type()
        if kind == "message/delivery-status":
            payload = part.get_payload()
            blocks = [b for b in payload if isinstance(b, Message)] if isinstance(payload, list) else []
        elif kind in ("text/rfc822-headers", "message/rfc822"):
            if kind == "message/rfc822":
                inner = part.get_payload()
                headers = inner[0] if isinstance(inner, list) and inner else None
            else:
                content = part.get_payload(decode=True)
                text = content.decode("utf-8", "replace") if isinstance(content, bytes) else ""
                headers = HeaderParser().parsestr(text)
            if isinstance(headers, Message):
                found = _ANGLE.findall(_header(headers, "Message-ID"))
                original = found[0] if found else None
    failed = []
    for block in blocks[1:]:  # the first block is about the message, the others each a recipient
        action = _header(block, "Action").strip().lower()
        status = _header(block, "Status").strip().split(" ")[0]
        kind, _, address = _header(block, "Final-Recipient").partition(";")
        match = _STATUS.match(status)
        if action != "failed" or match is None or match.group(1) != "5" or kind.strip().lower() != "rfc822":
            continue
        try:
            recipient = normalize_email(address.strip().strip("<>"), "US")
        except ValueError:
            continue
        if not recipient.isascii() or not recipient.isprintable():
            continue
        failed.append(Bounce(recipient, status, original))
    return failed


def bounce_events(found: Sequence[Bounce], settings: EmailSettings) -> list[Event]:
    """``message.bounced`` events of the bounces of messages the hub sent to that recipient."""
    out = []
    for b in found:
        ours = parse_message_id(settings.secret, settings.domain, b.original_id, b.recipient) if b.original_id else None
        if ours is None:
            continue
        out.append(
            Event(
                id=_event_id("bounce", ours, b.recipient),
                type="message.bounced",
                occurred_at=utcnow(),
                touchpoint=TOUCHPOINT,
                identities=(Identity("email", b.recipient),),
                dialogue=ours,
                direction="inbound",
                data={"channel": "email", "status": b.status, "in_reply_to": ours},
            )
        )
    return out


def complaint_event(recipient: str, original: str, settings: EmailSettings) -> Event | None:
    """The ``consent.revoked`` (marketing by email) of a recipient who reported a message the
    hub sent them as spam, or ``None`` when the message is not one the hub sent them."""
    ours = parse_message_id(settings.secret, settings.domain, original, recipient)
    if ours is None:
        return None
    return Event(
        id=_event_id("complaint", ours, recipient),
        type="consent.revoked",
        occurred_at=utcnow(),
        touchpoint=TOUCHPOINT,
        identities=(Identity("email", recipient),),
        dialogue=ours,
        direction="inbound",
        data={"purpose": "marketing", "channel": "email", "source": "email-complaint"},
    )


async def record_bounce(hub: Hub, recorded: Sequence[RecordedEvent]) -> None:
    """Suppress email for the customers whose address bounced: ``"email"`` joins their
    ``suppressed`` trait (left as it is when it is already ``true`` or names email). A customer
    erased since the bounce was recorded is left alone (:meth:`Hub.suppress`)."""
    for customer_id in dict.fromkeys(r.customer_id for r in recorded):
        await hub.suppress(customer_id, "email")


def raw_digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()
