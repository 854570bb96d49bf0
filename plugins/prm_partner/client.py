"""Calling a partner: one signed HTTP request per attempt, behind the partner's circuit breaker.

Every call carries Standard Webhooks headers (``webhook-id`` is the idempotency key, so a
retry is the same message; ``webhook-timestamp``; ``webhook-signature`` by the
``standardwebhooks`` library) and an ``Idempotency-Key`` header that stays the same on
every retry. The body is a TM Forum resource for ``tmf646``/``tmf687`` partners and a
structured CloudEvent (the ``cloudevents`` library) otherwise.

What the outbox should retry (a timeout, a refused connection, 408/425/429/5xx, an open
breaker) is raised as :class:`prm_core.outbox.RetryLater`, with the partner's
``Retry-After``; any other 4xx is the partner's final no (``rejected``).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Literal, cast

import aiohttp
import prm_tmf
import structlog
from aiobreaker import CircuitBreaker, CircuitBreakerError
from cloudevents.core.bindings.http import to_structured_event
from cloudevents.core.v1.event import CloudEvent
from standardwebhooks import Webhook

from prm_core.plugin import ApiError, FulfillmentRequest, FulfillmentResult, InvalidInput, RetryLater, parse_json_body

from .failover import partner_payload
from .settings import PartnerSettings

__all__ = ["PartnerClient", "attention", "retry_after_s", "signed_headers"]

log = structlog.get_logger(__name__)

RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})
ResultStatus = Literal["pending", "confirmed", "rejected", "failed"]
STATUSES = frozenset({"pending", "confirmed", "rejected", "failed"})


def retry_after_s(value: str | None) -> float | None:
    """``Retry-After`` as seconds: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(tz=UTC)).total_seconds())


def signed_headers(secret: str, msg_id: str, body: str) -> dict[str, str]:
    """Standard Webhooks headers; the timestamp is the wall clock, which the partner checks."""
    now = datetime.now(tz=UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body),
    }


def cloud_event(req: FulfillmentRequest) -> tuple[dict[str, str], str]:
    """The request as a structured-mode CloudEvent: ``(headers, body)``."""
    event = CloudEvent(
        {
            "type": f"com.prm.fulfillment.{req.action}",
            "source": "prm-hub",
            "id": req.idempotency_key,
            "subject": req.id,
            "datacontenttype": "application/json",
        },
        partner_payload(req.payload),
    )
    message = to_structured_event(event)
    return dict(message.headers), message.body.decode()


class PartnerClient:
    """Calls one partner; owns its circuit breaker (opened after ``fail_max`` failures in a
    row, half-open after ``reset_s``), so a partner that is down is not hammered and the
    outbox keeps its requests until it is back.

    Calls share one ``aiohttp`` session, so they reuse kept-alive connections: a new TCP (and
    TLS) handshake on every call would sit on the waiting customer's critical path and leave
    a socket in ``TIME_WAIT`` per call. The session belongs to the event loop that made it;
    :meth:`close` (the plugin's ``prm_hub_stopping``) closes it.
    """

    def __init__(self, settings: PartnerSettings, *, fail_max: int = 5, reset_s: float = 30.0) -> None:
        self.settings = settings
        self.breaker = CircuitBreaker(
            fail_max=fail_max, timeout_duration=timedelta(seconds=reset_s), name=settings.name
        )
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop of the open session, if one is open."""
        return self._loop

    def session(self) -> aiohttp.ClientSession:
        """The session for calls from the running event loop (made on first use)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            # a session is bound to its loop: a hub started again in this process (tests,
            # an embedding service) on a new loop gets a new one
            self._session = aiohttp.ClientSession()
            self._loop = loop
        return self._session

    async def close(self) -> None:
        """Close the session (and its kept-alive connections); the next call opens another."""
        session, self._session, self._loop = self._session, None, None
        if session is not None and not session.closed:
            await session.close()

    async def fulfill(self, req: FulfillmentRequest, *, timeout_s: float | None = None) -> FulfillmentResult:
        """One call for ``req``, within ``timeout_s`` if given (else the partner's ``timeout_ms``)."""
        try:
            result: FulfillmentResult = await self.breaker.call_async(self._call, req, timeout_s)
        except CircuitBreakerError:
            left = self.breaker.time_until_open
            raise RetryLater(
                f"circuit open for {self.settings.name}", left.total_seconds() if left is not None else None
            ) from None
        return result

    def request(self, req: FulfillmentRequest) -> tuple[str, dict[str, str], str]:
        """``(url, headers, body)`` of the call for ``req``."""
        s = self.settings
        if s.protocol in ("tmf646", "tmf687"):
            call = prm_tmf.build_call(s.protocol, req)
            url, headers, body = s.url + call.path, {"Content-Type": "application/json"}, json.dumps(dict(call.body))
        else:
            url = s.url
            headers, body = cloud_event(req)
        headers |= signed_headers(s.secret, req.idempotency_key, body)
        headers["Idempotency-Key"] = req.idempotency_key
        return url, headers, body

    async def _call(self, req: FulfillmentRequest, timeout_s: float | None = None) -> FulfillmentResult:
        s = self.settings
        try:
            url, headers, body = self.request(req)
        except ValueError as exc:  # an action this protocol has not: no retry will help
            return FulfillmentResult(req.id, req.partner, "rejected", {"error": str(exc)})
        timeout = aiohttp.ClientTimeout(total=s.timeout_s if timeout_s is None else timeout_s)
        try:
            async with self.session().post(url, data=body.encode(), headers=headers, timeout=timeout) as resp:
                status = resp.status
                text = await resp.text()
                after = resp.headers.get("Retry-After")
        except TimeoutError:
            raise RetryLater(f"{s.name} did not answer within {timeout.total:g} s") from None
        except aiohttp.ClientError as exc:
            raise RetryLater(f"{s.name} unreachable ({type(exc).__name__})") from None
        if status in RETRYABLE:
            raise RetryLater(f"{s.name} answered HTTP {status}", retry_after_s(after))
        if status >= 300:
            return FulfillmentResult(req.id, req.partner, "rejected", {"http_status": status})
        try:
            # the hub's own JSON loader: a number past a double, a lone surrogate or a NUL in an
            # answer would otherwise be stored with the result and fail it (PostgreSQL) or later
            # readers of it (SQLite); an answer that is not JSON the hub keeps counts as no body
            # (as UTF-8 bytes, read as a request body is: the string checks then run only when the
            # text has \u escapes, the only way a NUL or a lone surrogate gets into strictly decoded
            # text; a byte-order mark is left for the loader to refuse, as before)
            answer: Any = (parse_json_body(text.encode() if text[0] != "\ufeff" else text)) if text else {}
        except (ApiError, InvalidInput):
            answer = {}
        if s.protocol in ("tmf646", "tmf687"):
            try:
                return prm_tmf.parse_result(s.protocol, req, status, answer)
            except prm_tmf.InvalidMessage as exc:
                # the partner said something, but not in its specification's terms: it may have
                # booked or reserved, so a person looks rather than the hub retrying or waiting
                log.warning("partner answer invalid", partner=s.name, field=exc.field)
                return FulfillmentResult(req.id, req.partner, "failed", attention(exc))
        return _cloudevents_result(req, status, answer)


def attention(exc: prm_tmf.InvalidMessage) -> dict[str, Any]:
    """The result data of a request whose partner broke its specification: ``attention``
    names the field, so an operator knows what to look at (no value is copied: it may hold
    personal data)."""
    return {"attention": {"code": "invalid_partner_message", "field": exc.field, "message": exc.message}}


def _cloudevents_result(req: FulfillmentRequest, status: int, answer: Any) -> FulfillmentResult:
    """A CloudEvents partner answers ``{"status", "data"}`` (or a CloudEvent with that as its
    ``data``); a ``202`` without a status is accepted for later (``pending``)."""
    body = answer if isinstance(answer, dict) else {}
    if "specversion" in body and isinstance(body.get("data"), dict):
        body = body["data"]
    state = body.get("status")
    if state not in STATUSES:
        state = "pending" if status == 202 else "confirmed"
    data = body.get("data") if isinstance(body.get("data"), dict) else {}
    return FulfillmentResult(req.id, req.partner, cast(ResultStatus, state), dict(data or {}))
