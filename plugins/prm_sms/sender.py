"""Outbound SMS: a trigger's message sent with Twilio's Messages API, never twice.

The ``twilio`` library's REST client sends, on its asynchronous HTTP client
(``AsyncTwilioHttpClient``, aiohttp underneath): the hub's event loop waits for Twilio
without a thread per message, the connections are kept alive between messages, and the
client is closed with the hub. ``api_base`` replaces ``https://api.twilio.com`` (a test
double, a proxy).

Never twice: a message Twilio accepted is recorded (``sms:sent:<message id>``, with Twilio's
SID) before the hub is told it is sent, and a message handed over again finds that record and
is answered with the same SID, not sent. If the record cannot be written (the database is
away), the SID is kept in memory and the hand-over fails for now: the retry records it without
sending, even if the customer's number changed meanwhile. Only a crash of the hub between
Twilio's answer and the record sends it again, and so does a retry after the memory let it go:
it keeps ``MAX_UNRECORDED`` messages at most, each for ``UNRECORDED_TTL_S`` (an hour, long
after the trigger engine stops handing a message over).

Twilio's answers: 201 is sent; 429, 5xx, no answer within ``timeout_s`` (10 s) or a refused
connection is a failure for now (an exception: the trigger engine retries with backoff), and
so is 401 or 404 (the account SID or auth token is wrong: fixing the configuration fixes it).
Any other 4xx is a refusal retrying cannot fix (``MessageResult("failed")``, naming Twilio's
error code); one of ``permanent_error_codes`` (not a valid number, the recipient replied
STOP) is also recorded as ``message.bounced`` and suppresses SMS for the customer.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlencode

import structlog
from attrs import frozen
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from prm_core.plugin import Hub, Identity, Message, MessageResult, hookimpl, normalize_phone, utcnow

from .records import CHANNEL, TOUCHPOINT, bounce_event, sent_event_id, set_sms_suppression, sms_event
from .settings import SmsSettings

__all__ = ["ERRORS", "SmsSender", "TwilioUnavailable"]

STATUS_PATH = "/v1/touchpoints/sms/twilio/status"
# what Twilio's common refusals mean, for the run's reason (Twilio's own message names the number)
ERRORS = {
    21211: "the 'To' number is not a valid phone number",
    21408: "sending to this region is not enabled on the account",
    21610: "the recipient has unsubscribed (replied STOP)",
    21612: "Twilio cannot route to this number",
    21614: "the 'To' number is not a mobile number",
    21617: "the message body is too long",
    30003: "unreachable destination handset",
    30005: "unknown destination handset",
    30006: "landline or unreachable carrier",
}
# what Twilio accepted is kept unrecorded (the database away) for at most this many messages,
# and this long: the trigger engine hands a message over ten times at most, minutes apart
MAX_UNRECORDED = 1000
UNRECORDED_TTL_S = 3600.0
log = structlog.get_logger(__name__)


@frozen
class Accepted:
    """A message Twilio accepted: its SID, first status and number, and when (monotonic)."""

    sid: str
    status: str
    to: str
    at: float


class TwilioUnavailable(Exception):
    """Twilio could not take the message now (429, 5xx, credentials): the act is retried."""


def reason_of(code: int | None) -> str:
    if code is None:
        return "no error code"
    return f"error {code}: {ERRORS.get(code, f'see https://www.twilio.com/docs/errors/{code}')}"


class SmsSender:
    """Sends one hub's SMS messages; registered on the hub's plugin manager while it runs."""

    def __init__(self, hub: Hub, settings: SmsSettings) -> None:
        self.hub = hub
        self.settings = settings
        self.http = AsyncTwilioHttpClient(timeout=settings.timeout_s)
        self.client = Client(settings.account_sid, settings.auth_token, http_client=self.http)
        self.client.api.base_url = settings.api_base
        # message id -> what Twilio accepted of a message whose record is not written yet (oldest first)
        self.unrecorded: dict[str, Accepted] = {}

    async def close(self) -> None:
        await self.http.close()

    @hookimpl
    def prm_send_message(self, message: Message) -> Any:
        if message.channel != CHANNEL:
            return None
        return self.send(message)

    def status_callback(self, message_id: str) -> str:
        """The URL Twilio posts this message's status to (it signs it, query included)."""
        return f"{self.settings.callback_url}{STATUS_PATH}?{urlencode({'message': message_id})}"

    async def send(self, message: Message) -> MessageResult:
        self._forget_stale()
        record_id = sent_event_id(message.id)
        accepted = self.unrecorded.get(message.id)
        if accepted is None:
            # a message Twilio accepted is sent, whatever the customer's number has become since
            if not message.to:
                return MessageResult("failed", "the customer has no phone number")
            try:
                to = normalize_phone(message.to, self.hub.config.default_region)
            except ValueError:
                return MessageResult("failed", "the customer's phone number is not a phone number")
            found = await self.hub.recorded(TOUCHPOINT, [record_id])
            if record_id in found:
                return MessageResult("sent", ref=str(found[record_id].event.data.get("sid")))
            created = await self._create(message, to)
            if isinstance(created, MessageResult):
                return created
            accepted = self._remember(message.id, created)
        sid, status, to = accepted.sid, accepted.status, accepted.to
        data = {"channel": CHANNEL, "status": status, "message_id": message.id, "sid": sid, "trigger": message.trigger}
        # keyed by the message id, as the trigger engine keys the message.sent event: one dialogue
        record = sms_event(record_id, "message.status", _phone(to), data, direction="outbound", dialogue=message.id)
        await self.hub.record([record])
        self.unrecorded.pop(message.id, None)
        log.info("sms accepted by twilio", message_id=message.id, sid=sid, status=status)
        return MessageResult("sent", ref=sid)

    def _remember(self, message_id: str, created: tuple[str, str, str]) -> Accepted:
        """Keep what Twilio accepted until its record is written; the oldest goes beyond
        ``MAX_UNRECORDED`` (its act has long been retried, or the database is away for good)."""
        while len(self.unrecorded) >= MAX_UNRECORDED:
            oldest = next(iter(self.unrecorded))
            del self.unrecorded[oldest]
            log.warning("sms accepted by twilio is forgotten unrecorded", message_id=oldest)
        sid, status, to = created
        accepted = self.unrecorded[message_id] = Accepted(sid, status, to, time.monotonic())
        return accepted

    def _forget_stale(self) -> None:
        """Drop what was accepted more than ``UNRECORDED_TTL_S`` ago: the trigger engine has
        given up handing those messages over (ten attempts, minutes apart at most)."""
        horizon = time.monotonic() - UNRECORDED_TTL_S
        while self.unrecorded:
            oldest, accepted = next(iter(self.unrecorded.items()))
            if accepted.at > horizon:
                break
            del self.unrecorded[oldest]
            log.warning("sms accepted by twilio is forgotten unrecorded", message_id=oldest)

    async def _create(self, message: Message, to: str) -> tuple[str, str, str] | MessageResult:
        s = self.settings
        kwargs: dict[str, Any] = {"to": to, "body": message.text, "status_callback": self.status_callback(message.id)}
        if s.messaging_service_sid:
            kwargs["messaging_service_sid"] = s.messaging_service_sid
        if s.sender:
            kwargs["from_"] = s.sender
        try:
            # the async HTTP client takes no timeout of its own: Twilio gets timeout_s, then it is a retry
            created = await asyncio.wait_for(self.client.messages.create_async(**kwargs), self.settings.timeout_s)
        except (TwilioRestException, TwilioServiceException) as exc:
            return await self._refused(message, to, int(exc.status), _code(exc.code))
        return str(created.sid), str(created.status or "queued"), to

    async def _refused(self, message: Message, to: str, status: int, code: int | None) -> MessageResult:
        if status == 429 or status >= 500:
            raise TwilioUnavailable(f"Twilio answered {status} ({reason_of(code)})")
        if status in (401, 404):
            log.warning("twilio refused the account; check [touchpoints.sms] account_sid and auth_token",
                        status=status, code=code)  # fmt: skip
            raise TwilioUnavailable(f"Twilio refused the account: {status} ({reason_of(code)})")
        reason = f"Twilio refused it: {reason_of(code)}"
        data = {"channel": CHANNEL, "status": "failed", "message_id": message.id, "error_code": code}
        event = sms_event(f"sms:refused:{message.id}", "message.status", _phone(to), data, direction="outbound")
        permanent = code is not None and code in self.settings.permanent_error_codes
        batch = [event]
        if code is not None and permanent:
            bounce = bounce_event(
                message.id, _phone(to), status="failed", error_code=code, message_id=message.id, dialogue=message.id
            )
            batch.append(bounce)
        recorded, *_ = await self.hub.record(batch)
        if permanent:
            await set_sms_suppression(
                self.hub, recorded.customer_id, True, {"sms_undeliverable": {"error_code": code, "at": _now()}}
            )
        log.info("sms refused by twilio", message_id=message.id, status=status, code=code)
        return MessageResult("failed", reason)


def _code(raw: Any) -> int | None:
    try:
        return int(raw)
    except (TypeError, ValueError):
        return None


def _phone(number: str) -> tuple[Identity, ...]:
    return (Identity("phone", number),)


def _now() -> str:
    return utcnow().isoformat().replace("+00:00", "Z")
