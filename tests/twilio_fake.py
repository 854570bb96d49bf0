"""A local double of Twilio's Messages API, as strict as Twilio about what it takes.

``POST /2010-04-01/Accounts/{AccountSid}/Messages.json``: HTTP Basic auth with the account SID
and auth token (else 401, error 20003), the account in the path the one authenticated (else
404, 20404), a form body with ``To`` in E.164 (21604 missing, 21211 not a number), ``From`` or
``MessagingServiceSid`` (21603), ``Body`` (21602) and an absolute ``StatusCallback`` URL when
given (21609). It answers 201 with the Message resource's JSON (``sid`` SM and 32 hex digits,
``status`` ``queued``, or ``accepted`` through a Messaging Service), and errors as Twilio's
JSON: ``{"code", "message", "more_info", "status"}``. ``fail_next`` queues answers to give
instead (a 500, a 429, a 400 with 21610).
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from prm_core.clock import utcnow

E164 = re.compile(r"^\+[1-9]\d{1,14}$")
MESSAGES = "/2010-04-01/Accounts/{account}/Messages.json"


def twilio_error(status: int, code: int, message: str) -> web.Response:
    return web.json_response(
        {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status},
        status=status,
    )


class FakeTwilio:
    def __init__(self, account_sid: str, auth_token: str) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.messages: list[dict[str, str]] = []  # every message accepted, its form fields
        self.requests = 0  # every request that reached the Messages resource
        self.fail_next: list[tuple[int, int, str]] = []  # (status, code, message) to answer next
        self.delay_s = 0.0  # how long it takes to answer

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(MESSAGES, self.create)
        return app

    def _authenticated(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme != "Basic":
            return None
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except ValueError:
            return None
        if user != self.account_sid or not secrets.compare_digest(password, self.auth_token):
            return None
        return user

    async def create(self, request: web.Request) -> web.Response:
        self.requests += 1
        await asyncio.sleep(self.delay_s)
        user = self._authenticated(request)
        if user is None:
            return twilio_error(401, 20003, "Authenticate")
        account = request.match_info["account"]
        if account != user:
            return twilio_error(404, 20404, f"The requested resource {request.path} was not found")
        if self.fail_next:
            status, code, message = self.fail_next.pop(0)
            return twilio_error(status, code, message)
        if request.content_type != "application/x-www-form-urlencoded":
            return twilio_error(400, 20001, "the request body must be a form")
        form = {k: str(v) for k, v in (await request.post()).items()}
        to = form.get("To")
        if not to:
            return twilio_error(400, 21604, "A 'To' phone number is required.")
        if not E164.match(to):
            return twilio_error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        sender, service = form.get("From"), form.get("MessagingServiceSid")
        if not sender and not service:
            return twilio_error(400, 21603, "A 'From' phone number is required.")
        if not form.get("Body"):
            return twilio_error(400, 21602, "Message body is required.")
        callback = form.get("StatusCallback")
        if callback is not None:
            parts = urlsplit(callback)
            if parts.scheme not in ("http", "https") or not parts.netloc or "_" in parts.netloc:
                return twilio_error(400, 21609, "Invalid StatusCallback")
        self.messages.append(form)
        sid = "SM" + secrets.token_hex(16)
        now = format_datetime(utcnow(), usegmt=True)
        uri = f"/2010-04-01/Accounts/{account}/Messages/{sid}"
        body: dict[str, Any] = {
            "account_sid": account,
            "api_version": "2010-04-01",
            "body": form["Body"],
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": sender,
            "messaging_service_sid": service,
            "num_media": "0",
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "accepted" if service and not sender else "queued",
            "subresource_uris": {"media": f"{uri}/Media.json"},
            "to": to,
            "uri": f"{uri}.json",
        }
        return web.json_response(body, status=201)
