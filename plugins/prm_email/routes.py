"""The email touch point's routes.

- ``POST /v1/touchpoints/email/inbound`` (scope ``touchpoint:email``): one email as raw
  RFC 822 (``Content-Type: message/rfc822``), a reply or a bounce (:mod:`prm_email.inbound`).
- ``POST /v1/touchpoints/email/mailgun`` (mounted when ``[touchpoints.email] mailgun_signing_key`` is
  set): a Mailgun route's ``forward()`` of a received email, parsed fields or ``body-mime``.
  Its signature (HMAC-SHA256 of ``timestamp`` + ``token`` with the webhook signing key) is
  checked in constant time, a timestamp more than five minutes away from the hub's clock is
  refused, and so is a token the hub has seen (Mailgun does not sign the body: a captured
  signature would carry any): a forged or replayed post is a 401 and writes nothing.
- ``POST /v1/touchpoints/email/mailgun/events`` (mounted with the Mailgun route): Mailgun's
  delivery webhooks, JSON with the same signature; a ``failed`` event of severity
  ``permanent`` is a bounce, a ``complained`` one withdraws marketing consent for email.
- ``GET`` and ``POST /v1/touchpoints/email/unsubscribe/{token}``: the unsubscribe link of
  marketing email (``List-Unsubscribe``). ``GET`` shows a page with one button and changes
  nothing (mail scanners open links); ``POST`` (the button, or a mail client's one-click
  unsubscribe, RFC 8058) withdraws the customer's marketing consent for email. A token that
  is not the hub's is a 404 and writes nothing. Both are counted by ``[server]
  rate_limit_keyless`` (429 past it) and send the hub's page headers (no script, no framing).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import time
from typing import Any

import structlog
from aiohttp import web

from prm_core.plugin import (
    AUTH_ERRORS,
    HUB,
    PAGE_HEADERS,
    ApiError,
    Event,
    Identity,
    InvalidInput,
    NotFound,
    RecordedEvent,
    api,
    ingest,
    limit_keyless,
    normalize_email,
    read_json,
    require,
    utcnow,
)

from .inbound import (
    TOUCHPOINT,
    Bounce,
    Reply,
    bounce_events,
    bounces,
    complaint_event,
    is_report,
    parse_mail,
    parse_mailgun_form,
    raw_digest,
    record_bounce,
    reply_event,
    reply_of,
)
from .settings import EmailSettings
from .signing import unsubscribed_customer

__all__ = ["BASE", "routes"]

BASE = "/v1/touchpoints/email"
MAILGUN_MAX_AGE_S = 300
MAILGUN_TOKENS = "mailgun-token"  # the webhook receipts source of the Mailgun tokens seen
log = structlog.get_logger(__name__)

_RECORDED = '{"recorded": [{"event_id", "type", "duplicate", "customer_id", "dialogue_id", "in_reply_to"}], "ignored"}'


async def _take(request: web.Request, settings: EmailSettings, mail: Any, digest: str) -> web.Response:
    """Record a reply or a bounce; the JSON answer lists what was recorded."""
    hub = request.app[HUB]
    if not isinstance(mail, Reply) and is_report(mail):
        found = bounces(mail)
        events = bounce_events(found, settings)
        if not events:
            why = "no recipient failed for good" if not found else "the report is not about a message the hub sent"
            return web.json_response({"recorded": [], "ignored": why})
        recorded = await ingest(request, events, verified=True)
        await record_bounce(hub, recorded)  # a duplicate too: the suppression may not have followed it
    else:
        reply = mail if isinstance(mail, Reply) else reply_of(mail)
        recorded = await ingest(request, [reply_event(reply, settings, digest)], verified=True)
    return _answer(recorded)


def _answer(recorded: list[RecordedEvent]) -> web.Response:
    return web.json_response(
        {
            "recorded": [
                {
                    "event_id": r.event.id,
                    "type": r.event.type,
                    "duplicate": r.duplicate,
                    "customer_id": r.customer_id,
                    "dialogue_id": r.dialogue_id,
                    "in_reply_to": r.event.data.get("in_reply_to"),
                }
                for r in recorded
            ],
            "ignored": None,
        }
    )


def inbound_route(settings: EmailSettings) -> web.RouteDef:
    @api(
        "Record an inbound email (a reply, or a bounce that suppresses the address) given as raw RFC 822",
        scope=f"touchpoint:{TOUCHPOINT}",
        responses={
            200: _RECORDED,
            **AUTH_ERRORS,
            413: "The email is larger than the body limit",
            415: "Content-Type is not message/rfc822",
            422: "Not an email the hub can record (no sender); `field` names the header",
        },
    )
    async def post_inbound(request: web.Request) -> web.Response:
        """Record one email: a reply (``message.received``) or a bounce (``message.bounced``)."""
        await require(request, f"touchpoint:{TOUCHPOINT}")
        if request.content_type != "message/rfc822":
            raise ApiError(415, "unsupported_media_type", "send the email as Content-Type: message/rfc822", "body")
        raw = await request.read()
        return await _take(request, settings, parse_mail(raw), raw_digest(raw))

    return web.post(f"{BASE}/inbound", post_inbound)


def mailgun_signed(key: str, timestamp: str, token: str, signature: str, now: float) -> bool:
    """Whether Mailgun signed ``timestamp`` + ``token`` with ``key``, recently."""
    try:
        at = int(timestamp)
    except ValueError:
        return False
    if abs(now - at) > MAILGUN_MAX_AGE_S or not token or len(token) > 200:
        return False
    expected = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature.strip().lower())


async def _verify_mailgun(request: web.Request, key: str, fields: dict[str, str], refused: str) -> None:
    """A 401 unless Mailgun signed the post recently with a token the hub has not seen.

    Mailgun signs the timestamp and token, not the body: a signature seen once could carry any
    body for as long as the timestamp is fresh. Each token is spent once, claimed before
    anything is recorded (of two concurrent posts with it, one goes on). Mailgun signs each
    attempt anew (its retries come minutes later, past the signature's five minutes), so a
    token seen again is never Mailgun's: it is refused and writes nothing."""
    token = fields.get("token", "")
    if not mailgun_signed(key, fields.get("timestamp", ""), token, fields.get("signature", ""), time.time()):
        log.warning(refused, reason="signature")
        raise ApiError(
            401,
            "unauthorized",
            "the Mailgun signature is missing, invalid or too old: Mailgun signs timestamp and token "
            "with the webhook signing key",
        )
    if not await request.app[HUB].mark_delivery_processed(MAILGUN_TOKENS, token):
        log.warning(refused, reason="replay")
        raise ApiError(401, "unauthorized", "this Mailgun signature was used already: each token is accepted once")


def mailgun_route(settings: EmailSettings) -> web.RouteDef:
    key = settings.mailgun_signing_key
    assert key is not None

    @api(
        "Record an email Mailgun received and forwarded (a route's forward() action), signed by Mailgun",
        scope=None,
        responses={
            200: _RECORDED,
            401: "The Mailgun signature is missing, invalid, too old or used already",
            406: "Not an email the hub can record (Mailgun does not retry it); `field` names the problem",
            413: "The post is larger than the body limit",
            415: "Not a form post",
        },
    )
    async def post_mailgun(request: web.Request) -> web.Response:
        """Verify Mailgun's signature, then record the email as the inbound route does."""
        if request.content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
            raise ApiError(415, "unsupported_media_type", "Mailgun posts a form", "body")
        form = await request.post()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        await _verify_mailgun(request, key, fields, "mailgun post refused")
        try:
            mail = parse_mailgun_form(fields)
            # Mailgun's retry of a post without a Message-ID is signed anew: the same fields, the same event
            content = sorted((k, v) for k, v in fields.items() if k not in ("timestamp", "token", "signature"))
            return await _take(request, settings, mail, raw_digest(json.dumps(content).encode()))
        except InvalidInput as exc:
            # Mailgun retries anything but 200 and 406 for hours: bad content is not worth it
            raise ApiError(406, "not_acceptable", exc.message, exc.field) from None

    return web.post(f"{BASE}/mailgun", post_mailgun)


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 1.125rem/1.5 system-ui, sans-serif; color: #1a1a1a; background: #fff; margin: 0; }}
main {{ max-width: 32rem; margin: 3rem auto; padding: 0 1rem; }}
button {{ font: inherit; padding: .6rem 1.2rem; color: #fff; background: #1d4ed8; border: 0; border-radius: .3rem; }}
button:focus {{ outline: 3px solid #f59e0b; outline-offset: 2px; }}
</style>
</head>
<body>
<main>
<h1>{title}</h1>
{body}
</main>
</body>
</html>
"""


def _page(status: int, title: str, body: str) -> web.Response:
    return web.Response(
        status=status,
        text=_PAGE.format(title=html.escape(title), body=body),
        content_type="text/html",
        headers=PAGE_HEADERS,
    )


def _wants_html(request: web.Request) -> bool:
    return "text/html" in request.headers.get("Accept", "")


def _invalid(request: web.Request) -> web.Response:
    if _wants_html(request):
        body = "<p>This unsubscribe link is not valid. Please use the link from the email you received.</p>"
        return _page(404, "Link not valid", body)
    raise ApiError(404, "not_found", "not a valid unsubscribe link", "token")


def unsubscribe_routes(settings: EmailSettings) -> list[web.RouteDef]:
    params = {"token": "the signed token of the unsubscribe link"}

    @api(
        "The unsubscribe page of a marketing email: one button to confirm; changes nothing",
        scope=None,
        params=params,
        responses={
            200: "An HTML page with a form that POSTs to the same URL",
            404: "Not a valid unsubscribe link",
            429: "Too many calls from this address",
        },
    )
    async def get_unsubscribe(request: web.Request) -> web.Response:
        """Show the confirmation page (a GET never unsubscribes: mail scanners open links)."""
        limit_keyless(request, "email-unsubscribe")
        if unsubscribed_customer(settings.secret, request.match_info["token"]) is None:
            return _invalid(request)
        body = (
            "<p>Do you want to stop receiving marketing email from us?</p>\n"
            '<form method="post">\n'
            '<input type="hidden" name="List-Unsubscribe" value="One-Click">\n'
            '<button type="submit">Unsubscribe</button>\n'
            "</form>\n"
            "<p>You will still receive messages about your orders and appointments.</p>"
        )
        return _page(200, "Unsubscribe", body)

    @api(
        "Unsubscribe (RFC 8058 one-click, or the page's button): withdraws marketing consent for email",
        scope=None,
        params=params,
        responses={
            200: '{"unsubscribed": true} (an HTML page for a browser)',
            404: "Not a valid unsubscribe link",
            429: "Too many calls from this address",
        },
    )
    async def post_unsubscribe(request: web.Request) -> web.Response:
        """Record ``consent.revoked`` (purpose ``marketing``, channel ``email``) for the customer."""
        limit_keyless(request, "email-unsubscribe")
        customer_id = unsubscribed_customer(settings.secret, request.match_info["token"])
        if customer_id is None:
            return _invalid(request)
        hub = request.app[HUB]
        try:
            view = await hub.view(customer_id, limit=1)
        except NotFound:  # erased since: nothing left to unsubscribe
            return _invalid(request)
        who = sorted(view.identities, key=lambda i: (i.namespace != "email", i.namespace, i.value))
        if not who:
            return _invalid(request)
        if not _withdrawn(view.consents):  # pressed again, or a link opened twice: one event
            await ingest(request, [_revocation(customer_id, who[0], view.consents)], verified=True)
        if _wants_html(request):
            return _page(200, "You are unsubscribed", "<p>You will receive no more marketing email from us.</p>")
        return web.json_response({"unsubscribed": True})

    path = f"{BASE}/unsubscribe/{{token}}"
    return [web.get(path, get_unsubscribe, allow_head=False), web.post(path, post_unsubscribe)]


def _withdrawn(consents: Any) -> bool:
    """Whether the customer's own decision for marketing by email is already a withdrawal."""
    return any(
        c.get("purpose") == "marketing" and c.get("channel") == "email" and c.get("granted") is False for c in consents
    )


def _revocation(customer_id: str, who: Identity, consents: Any) -> Event:
    """The withdrawal; its id derives from the customer, the purpose and channel, and the
    decision it replaces: two posts at once (a double click, a mail client and its user) record
    one, and a customer who subscribes again can unsubscribe again."""
    replaced = next(
        (c.get("recorded_at", "") for c in consents if c.get("purpose") == "marketing" and c.get("channel") == "email"),
        "",
    )
    digest = hashlib.sha256("\x1f".join((customer_id, "marketing", "email", replaced)).encode()).hexdigest()[:40]
    return Event(
        id=f"email-unsub:{digest}",
        type="consent.revoked",
        occurred_at=utcnow(),
        touchpoint=TOUCHPOINT,
        identities=(Identity(who.namespace, who.value),),
        direction="inbound",
        data={"purpose": "marketing", "channel": "email", "source": "email-unsubscribe"},
    )


def _about(data: Any) -> tuple[str, str] | None:
    """The recipient (normalized) and the Message-ID (``<...>``) a Mailgun event is about."""
    recipient, message = data.get("recipient"), data.get("message")
    headers = message.get("headers") if isinstance(message, dict) else None
    original = headers.get("message-id") if isinstance(headers, dict) else None
    if not isinstance(recipient, str) or not isinstance(original, str):
        return None
    try:
        address = normalize_email(recipient, "US")
    except ValueError:
        return None
    if not address.isascii() or not address.isprintable():
        return None
    return address, f"<{original.strip().strip('<>')}>"


def mailgun_failure(data: Any) -> Bounce | None:
    """The bounce a Mailgun ``failed`` event of severity ``permanent`` reports, else ``None``."""
    if not isinstance(data, dict) or data.get("event") != "failed" or data.get("severity") != "permanent":
        return None
    about = _about(data)
    if about is None:
        return None
    status = data.get("delivery-status")
    enhanced = status.get("enhanced-code") if isinstance(status, dict) else None
    code = enhanced if isinstance(enhanced, str) and enhanced.startswith("5.") else "5.0.0"
    return Bounce(about[0], code[:16], about[1])


def mailgun_events_route(settings: EmailSettings) -> web.RouteDef:
    key = settings.mailgun_signing_key
    assert key is not None

    @api(
        "Take Mailgun's delivery webhooks (signed by Mailgun): a permanent failure suppresses the address",
        scope=None,
        responses={
            200: _RECORDED,
            400: "Malformed JSON",
            401: "The Mailgun signature is missing, invalid, too old or used already",
            413: "The post is larger than the body limit",
            422: "JSON the hub cannot keep (a NUL, a number past a double); `field` names it",
        },
    )
    async def post_mailgun_events(request: web.Request) -> web.Response:
        """A ``failed`` event of severity ``permanent`` about a message the hub sent to that
        recipient is recorded as ``message.bounced``, as a bounce email is; a ``complained`` one
        (reported as spam) withdraws the recipient's marketing consent for email
        (``consent.revoked``, source ``email-complaint``); others are acknowledged."""
        body = await read_json(request)
        signed = body.get("signature") if isinstance(body, dict) else None
        fields = {k: str(v) for k, v in signed.items()} if isinstance(signed, dict) else {}
        await _verify_mailgun(request, key, fields, "mailgun event refused")
        data = body.get("event-data")
        about = _about(data) if isinstance(data, dict) and data.get("event") == "complained" else None
        if about is not None:  # reported as spam: no more marketing email
            complaint = complaint_event(*about, settings)
            if complaint is None:
                return web.json_response({"recorded": [], "ignored": "the event is not about a message the hub sent"})
            return _answer(await ingest(request, [complaint], verified=True))
        found = mailgun_failure(data)
        events = bounce_events([found], settings) if found is not None else []
        if not events:
            why = (
                "neither a permanent failure nor a complaint"
                if found is None
                else "the event is not about a message the hub sent"
            )
            return web.json_response({"recorded": [], "ignored": why})
        recorded = await ingest(request, events, verified=True)
        await record_bounce(request.app[HUB], recorded)
        return _answer(recorded)

    return web.post(f"{BASE}/mailgun/events", post_mailgun_events)


def routes(settings: EmailSettings) -> list[web.RouteDef]:
    found = [inbound_route(settings), *unsubscribe_routes(settings)]
    if settings.mailgun_signing_key:
        found += [mailgun_route(settings), mailgun_events_route(settings)]
    return found
