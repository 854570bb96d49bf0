"""Inbound SMS: Twilio's webhooks, signature checked, recorded, answered with TwiML.

Routes (on the ``sms`` touch point; set the number's "A message comes in" webhook to the
first, HTTP POST; the second is the ``StatusCallback`` the hub gives each message it sends):

- ``POST /v1/touchpoints/sms/twilio/inbound``: a message from a customer, recorded as
  ``message.received`` with ``data`` ``{"channel": "sms", "text": Body, "in_reply_to": the
  id of the latest message the hub sent to that number, or null}``, identity ``phone``, in
  the dialogue of that message. Keywords (the whole body, trimmed, any case): STOP, STOPALL,
  UNSUBSCRIBE, CANCEL, END, QUIT withdraw marketing consent for SMS (``consent.revoked``)
  and suppress SMS for the customer; START, YES, UNSTOP give consent back and lift the
  suppression; HELP, INFO are answered with ``help_text``.
- ``POST /v1/touchpoints/sms/twilio/status?message=<id>``: a delivery status (``queued``,
  ``sent``, ``delivered``, ``undelivered``, ``failed``, ...), recorded as ``message.status``
  in the message's dialogue. ``failed`` or ``undelivered`` with one of
  ``permanent_error_codes`` is also recorded as ``message.bounced`` (once per message) and
  suppresses SMS for the customer (``sms_undeliverable`` says why).

Every request is checked with the ``twilio`` library's ``RequestValidator`` against
``callback_url`` + the path and query Twilio called, before anything is read from it, with
the algorithm ``X-Twilio-Webhooks-Signature-Settings`` names (HMAC-SHA1 without it;
:mod:`prm_sms.signatures`). A missing or forged ``X-Twilio-Signature`` is a 401 JSON error and
writes nothing; a body that is not a form is a 415. A redelivery of a message or a status
(same ``MessageSid``) is answered as the first one was and records nothing new.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import structlog
from aiohttp import web
from twilio.twiml.messaging_response import MessagingResponse

from prm_core.plugin import HUB, ApiError, Hub, RecordedEvent, api, utcnow

from .records import (
    CHANNEL,
    Thread,
    bounce_event,
    latest_sent,
    phone_identities,
    sent_event_id,
    set_sms_suppression,
    sms_event,
)
from .settings import SmsSettings
from .signatures import TwilioSignature

__all__ = ["BASE", "HELP", "START", "STOP", "SmsWebhooks", "keyword"]

BASE = "/v1/touchpoints/sms/twilio"
SOURCE = "twilio-sms"  # the webhook deliveries the hub remembers as processed
STOP = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
START = frozenset({"START", "YES", "UNSTOP"})
HELP = frozenset({"HELP", "INFO"})
STATUSES = frozenset(
    {
        "accepted", "scheduled", "canceled", "queued", "sending", "sent", "failed", "delivered",
        "undelivered", "receiving", "received", "read", "partially_delivered",
    }
)  # fmt: skip
# Twilio's message SIDs are SM/MM and 32 hex digits; letters and digits keep ids and logs clean
_SID = re.compile(r"^[A-Za-z0-9]{1,64}$")
# the ids the hub gives messages (a trigger's act key): what the status callback's query carries
_MESSAGE_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
MAX_TEXT = 1600  # Twilio's longest message body
log = structlog.get_logger(__name__)


def keyword(body: str) -> str | None:
    """``stop``, ``start`` or ``help`` when the whole trimmed body is one of their keywords."""
    word = body.strip().upper()
    if word in STOP:
        return "stop"
    if word in START:
        return "start"
    if word in HELP:
        return "help"
    return None


def _twiml(reply: str | None = None) -> web.Response:
    response = MessagingResponse()
    if reply:
        response.message(reply)
    return web.Response(text=str(response), content_type="text/xml", charset="utf-8")


class SmsWebhooks:
    """The webhook handlers, bound to the settings."""

    def __init__(self, settings: SmsSettings) -> None:
        self.settings = settings
        self.signature = TwilioSignature(settings.auth_token, settings.callback_url)

    async def _verified(self, request: web.Request) -> dict[str, str]:
        """The form's parameters once its signature matches (:mod:`prm_sms.signatures`)."""
        return await self.signature.verified(request)

    @staticmethod
    def _sid(params: Mapping[str, str]) -> str:
        sid = params.get("MessageSid") or params.get("SmsSid")
        if not sid or not _SID.match(sid):
            raise ApiError(422, "invalid", "MessageSid is required: letters and digits, at most 64", "MessageSid")
        return sid

    async def inbound(self, request: web.Request) -> web.Response:
        params = await self._verified(request)
        sid = self._sid(params)
        body = params.get("Body", "")
        if len(body) > MAX_TEXT:
            raise ApiError(422, "invalid", f"Body is longer than {MAX_TEXT} characters", "Body")
        word = keyword(body)
        reply = {"stop": self.settings.stop_reply, "start": self.settings.start_reply}.get(
            word or "", self.settings.help_text if word == "help" else None
        )
        hub: Hub = request.app[HUB]
        if await hub.delivery_processed(SOURCE, f"in:{sid}"):
            return _twiml(reply)
        identities = phone_identities(hub, params.get("From"))
        thread = await latest_sent(hub, identities)
        data = {"channel": CHANNEL, "text": body, "in_reply_to": thread.message_id if thread else None}
        dialogue_id = thread.dialogue_id if thread else None
        events = [sms_event(f"sms:in:{sid}", "message.received", identities, data, dialogue_id=dialogue_id)]
        if word in ("stop", "start") and identities:
            consent = {"purpose": "marketing", "channel": CHANNEL, "source": "sms"}
            kind = "consent.revoked" if word == "stop" else "consent.granted"
            events.append(sms_event(f"sms:in:{sid}:consent", kind, identities, consent, dialogue_id=dialogue_id))
        recorded = await hub.record(events)
        if word in ("stop", "start") and identities:
            await self._opt(hub, recorded[0], word == "stop")
        await hub.mark_delivery_processed(SOURCE, f"in:{sid}")
        log.info("sms received", sid=sid, keyword=word, in_reply_to=data["in_reply_to"])
        return _twiml(reply)

    @staticmethod
    async def _opt(hub: Hub, recorded: RecordedEvent, out: bool) -> None:
        if out:
            at = utcnow().isoformat().replace("+00:00", "Z")
            await set_sms_suppression(hub, recorded.customer_id, True, {"sms_opted_out": at})
        else:
            await set_sms_suppression(
                hub, recorded.customer_id, False, {"sms_opted_out": None, "sms_undeliverable": None}
            )

    async def status(self, request: web.Request) -> web.Response:
        params = await self._verified(request)
        sid = self._sid(params)
        status = params.get("MessageStatus") or params.get("SmsStatus") or ""
        if status not in STATUSES:
            raise ApiError(422, "invalid", "MessageStatus is not a Twilio message status", "MessageStatus")
        raw_code = params.get("ErrorCode") or None
        if raw_code is not None and not (raw_code.isdigit() and len(raw_code) <= 6):
            raise ApiError(422, "invalid", "ErrorCode must be a number", "ErrorCode")
        code = int(raw_code) if raw_code is not None else None
        hub: Hub = request.app[HUB]
        delivery = f"status:{sid}:{status}"
        if await hub.delivery_processed(SOURCE, delivery):
            return _twiml()
        message_id = request.query.get("message")
        if message_id is not None and not _MESSAGE_ID.match(message_id):
            raise ApiError(422, "invalid", "message must be the id of a message the hub sent", "message")
        thread: Thread | None = None
        if message_id:
            record_id = sent_event_id(message_id)
            found = await hub.recorded("sms", [record_id])
            if record_id in found:
                thread = Thread(message_id, found[record_id].dialogue_id)
        data = {
            "channel": CHANNEL,
            "status": status,
            "message_id": message_id,
            "sid": sid,
            "error_code": code,
        }
        event = sms_event(
            f"sms:status:{sid}:{status}", "message.status", phone_identities(hub, params.get("To")), data,
            direction="outbound", dialogue_id=thread.dialogue_id if thread else None,
        )  # fmt: skip
        permanent = status in ("failed", "undelivered") and code in self.settings.permanent_error_codes
        batch = [event]
        if permanent and code is not None and (event.identities or thread is not None):
            bounce = bounce_event(
                message_id or sid, event.identities, status=status, error_code=code, message_id=message_id,
                dialogue_id=thread.dialogue_id if thread else None,
            )  # fmt: skip
            batch.append(bounce)
        recorded, *_ = await hub.record(batch)
        if permanent and event.identities:
            at = utcnow().isoformat().replace("+00:00", "Z")
            await set_sms_suppression(
                hub, recorded.customer_id, True, {"sms_undeliverable": {"error_code": code, "at": at}}
            )
        await hub.mark_delivery_processed(SOURCE, delivery)
        log.info("sms status", sid=sid, status=status, error_code=code)
        return _twiml()

    def routes(self) -> tuple[web.RouteDef, ...]:
        errors = {
            200: "TwiML",
            401: "Missing or forged X-Twilio-Signature",
            415: "A body Twilio does not send (not a form)",
            422: "A bad MessageSid, MessageStatus or ErrorCode, or a parameter holding a control character",
        }

        @api("Twilio messaging webhook: a message comes in; answers TwiML", scope=None, responses=errors)
        async def inbound(request: web.Request) -> web.StreamResponse:
            return await self.inbound(request)

        @api("Twilio message status callback: sent, delivered, failed", scope=None, responses=errors)
        async def status(request: web.Request) -> web.StreamResponse:
            return await self.status(request)

        return (web.post(f"{BASE}/inbound", inbound), web.post(f"{BASE}/status", status))
