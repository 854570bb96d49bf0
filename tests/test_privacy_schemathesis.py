"""schemathesis against /openapi.json: every operation the hub describes, with generated
parameters and bodies, answered without a 5xx and with a body that matches the schema the hub
describes for that status (every JSON error, the events, requests and customer answers). A
real server on real SQLite and PostgreSQL databases, with an admin key, so requests get past
authentication into the handlers.

Vendor routes (Segment, Snowplow's pixel, Shopify, Square, Twilio, partner callbacks) are
described by their handler's docstring only; the test gives them the shape of what the vendor
sends, and signs each generated body as the vendor does, so it reaches the parser."""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import hmac
import json
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core import NOT_SET
from schemathesis.specs.openapi.checks import response_schema_conformance
from standardwebhooks import Webhook
from twilio.request_validator import RequestValidator

from prm_core.config import Config
from prm_core.keys import create_key
from prm_core.server.app import create_app
from prm_core.server.state import HUB

EXAMPLES = int(os.environ.get("PRM_FUZZ_EXAMPLES", "15"))
PUBLIC = "http://hub.test"
TWILIO_TOKEN = "schema-token-0123456789"
SHOPIFY_SECRET = "shopify-schema-secret"
SQUARE_KEY = "square-schema-key"
PARTNER_SECRET = "whsec_" + base64.b64encode(b"schema-partner-secret-0123456789").decode()
CONFIG = {
    # examples come faster than a tracker's calls: no keyless limit, so they reach the parser
    "server": {"rate_limit_keyless": "off"},
    "touchpoints": {
        "web": {"snowplow_app_ids": ["shop"]},
        "ivr": {"twilio_auth_token": TWILIO_TOKEN},
        "pos": {"shopify_secret": SHOPIFY_SECRET, "square_signature_key": SQUARE_KEY},
        "email": {
            "from": "hello@shop.example",
            "secret": "schema-email-secret-0123456789abcdef",
            "mailgun_signing_key": "k",
        },
    },
    "partners": {
        "fieldservice": {
            "role": "field_service",
            "protocol": "tmf646",
            "url": "http://127.0.0.1:9/tmf-api/appointment/v4",  # never called here
            "secret": PARTNER_SECRET,
            "timeout_ms": 500,
        }
    },
}

TIME = {"type": "string", "format": "date-time"}
TEXT = {"type": "string", "maxLength": 40}
SEGMENT = {
    "type": "object",
    "properties": {
        "userId": TEXT, "anonymousId": TEXT, "messageId": TEXT, "event": TEXT, "timestamp": TIME, "sentAt": TIME,
        "properties": {"type": "object"}, "traits": {"type": "object"}, "context": {"type": "object"},
        "groupId": TEXT, "previousId": TEXT, "name": TEXT,
        "batch": {"type": "array", "maxItems": 3, "items": {"type": "object", "properties": {
            "type": {"enum": ["track", "identify", "page", "screen", "group", "alias"]}, "userId": TEXT,
            "anonymousId": TEXT, "event": TEXT, "timestamp": TIME, "properties": {"type": "object"}}}},
    },
}  # fmt: skip
MONEY = {"type": "object", "properties": {"amount": {"type": "integer"}, "currency": {"enum": ["USD", "EUR", "JPY"]}}}
# what each vendor sends, in outline: enough for generated bodies to reach the parsers
VENDOR_BODIES: dict[str, dict[str, Any]] = {
    **{f"/v1/{kind}": SEGMENT for kind in ("batch", "track", "identify", "page", "screen", "group", "alias")},
    "/v1/touchpoints/pos/shopify/orders": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"}, "created_at": TIME, "processed_at": TIME, "currency": {"enum": ["USD", "EUR"]},
            "email": TEXT, "total_price": TEXT, "subtotal_price": TEXT, "total_tax": TEXT,
            "order_id": {"type": "integer"},
            "customer": {"type": "object", "properties": {"email": TEXT, "phone": TEXT}},
            "line_items": {"type": "array", "maxItems": 3, "items": {"type": "object", "properties": {
                "id": {"type": "integer"}, "sku": TEXT, "title": TEXT, "quantity": {"type": "integer"},
                "price": TEXT}}},
        },
    },
    "/v1/touchpoints/pos/square/webhooks": {
        "type": "object",
        "properties": {
            "type": {"enum": ["payment.created", "payment.updated", "refund.created", "order.updated"]},
            "event_id": TEXT, "created_at": TIME, "merchant_id": TEXT,
            "data": {"type": "object", "properties": {"type": TEXT, "id": TEXT, "object": {"type": "object",
                "properties": {"payment": {"type": "object", "properties": {
                    "id": TEXT, "created_at": TIME, "status": {"enum": ["COMPLETED", "APPROVED", "FAILED"]},
                    "amount_money": MONEY, "total_money": MONEY, "buyer_email_address": TEXT, "order_id": TEXT}}}}}},
        },
    },
}  # fmt: skip
TWILIO_FORM = {
    "type": "object",
    "properties": {
        "CallSid": TEXT, "From": TEXT, "To": TEXT, "Digits": {"type": "string", "maxLength": 4}, "SpeechResult": TEXT,
        "CallStatus": {"enum": ["ringing", "in-progress", "completed", "busy"]},
    },
}  # fmt: skip


def describe_vendor_routes(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with the request bodies vendor routes take (their docstrings do not say)."""
    spec = copy.deepcopy(spec)
    for path, ops in spec["paths"].items():
        post = ops.get("post")
        if post is None or "requestBody" in post:
            continue
        if path in VENDOR_BODIES:
            post["requestBody"] = {"required": True, "content": {"application/json": {"schema": VENDOR_BODIES[path]}}}
        elif path.startswith("/v1/touchpoints/ivr/twilio/"):
            form = {"application/x-www-form-urlencoded": {"schema": TWILIO_FORM}}
            post["requestBody"] = {"required": True, "content": form}
    pixel = spec["paths"].get("/i", {}).get("get")
    if pixel is not None:  # Snowplow's pixel: one event in the query string
        pixel["parameters"] = [
            {"name": name, "in": "query", "required": name in ("e", "aid"), "schema": schema}
            for name, schema in (("e", {"enum": ["pv", "se", "ue", "pp"]}), ("aid", {"enum": ["shop"]}),
                                 ("eid", TEXT), ("duid", TEXT), ("uid", TEXT), ("dtm", TEXT), ("se_ca", TEXT),
                                 ("se_ac", TEXT), ("ue_pr", TEXT), ("url", TEXT))
        ]  # fmt: skip
    return spec


def vendor_signature(path: str, raw: bytes, form: dict[str, str] | None) -> dict[str, str] | None:
    """The headers a vendor signs ``raw`` with, for a signed route; ``None`` for the others."""
    if path == "/v1/touchpoints/pos/shopify/orders":
        digest = base64.b64encode(hmac.new(SHOPIFY_SECRET.encode(), raw, hashlib.sha256).digest()).decode()
        return {"X-Shopify-Hmac-Sha256": digest, "X-Shopify-Topic": "orders/create",
                "X-Shopify-Webhook-Id": hashlib.sha256(raw).hexdigest()[:16]}  # fmt: skip
    if path == "/v1/touchpoints/pos/square/webhooks":
        digest = base64.b64encode(
            hmac.new(SQUARE_KEY.encode(), (PUBLIC + path).encode() + raw, hashlib.sha256).digest()
        )
        return {"x-square-hmacsha256-signature": digest.decode()}
    if path.startswith("/v1/partners/"):
        now, msg = datetime.now(UTC), "msg_" + hashlib.sha256(raw).hexdigest()[:16]
        signature = Webhook(PARTNER_SECRET).sign(msg, now, raw.decode("utf-8", "replace"))
        return {"webhook-id": msg, "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": signature}
    if path.startswith("/v1/touchpoints/ivr/twilio/") and form is not None:
        return {"X-Twilio-Signature": RequestValidator(TWILIO_TOKEN).compute_signature(PUBLIC + path, form)}
    return None


class LiveHub:
    """The hub's app on a port of its own, in a thread with its own event loop."""

    def __init__(self, database_url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(database_url,), daemon=True)
        self.thread.start()
        if not self.ready.wait(30):
            raise RuntimeError("the hub did not start")

    def _run(self, database_url: str) -> None:
        asyncio.set_event_loop(self.loop)
        config = Config(database_url=database_url, public_url=PUBLIC, raw=CONFIG)
        self.runner = web.AppRunner(create_app(config))
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # the port the OS chose
        self.url = f"http://127.0.0.1:{port}"
        hub = self.runner.app[HUB]
        self.admin = self.loop.run_until_complete(create_key(hub.store, "admin"))[0]
        self.ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


@pytest.fixture
def live(database_url: str) -> Iterator[LiveHub]:
    hub = LiveHub(database_url)
    seed = {"id": "s1", "type": "page", "occurred_at": "2026-11-23T08:00:00Z", "identities": {"user_id": "u-1"}}
    requests.post(f"{hub.url}/v1/touchpoints/web/events", json=seed, headers={"Authorization": f"Bearer {hub.admin}"})
    yield hub
    hub.close()


def call(live: LiveHub, case: Any, headers: dict[str, str]) -> requests.Response:
    """The generated request, signed as its vendor signs it where the route checks a signature."""
    body = None if case.body is NOT_SET else case.body
    urlencoded = (case.media_type or "").endswith("urlencoded")
    form = {str(k): str(v) for k, v in body.items()} if urlencoded and isinstance(body, dict) else None
    raw = urlencode(form or {}).encode() if form is not None else json.dumps(body).encode() if body is not None else b""
    signed = vendor_signature(case.formatted_path, raw, form)
    if signed is None:
        return case.call(base_url=live.url, headers=headers)
    content_type = "application/x-www-form-urlencoded" if form is not None else "application/json"
    return requests.request(
        case.method, live.url + case.formatted_path, params=case.query or None, data=raw,
        headers={**headers, **signed, "Content-Type": content_type}, timeout=30,
    )  # fmt: skip


def test_no_operation_answers_a_server_error(live: LiveHub) -> None:
    spec = describe_vendor_routes(requests.get(f"{live.url}/openapi.json", timeout=30).json())
    schema = schemathesis.openapi.from_dict(spec)
    headers = {"Authorization": f"Bearer {live.admin}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    vendor = {"/v1/track", "/v1/touchpoints/pos/shopify/orders", "/v1/touchpoints/pos/square/webhooks", "/i",
              "/v1/touchpoints/ivr/twilio/voice", "/v1/partners/{partner}/callbacks"}  # fmt: skip
    assert vendor <= {op.path for op in operations}
    statuses: dict[str, set[int]] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: Any) -> None:
            response = call(live, case, headers)
            statuses.setdefault(case.operation.label, set()).add(response.status_code)
            # no 5xx, and every answer (errors included) matches the schema the hub describes
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

        check()
    # every operation was called, and generated input got into the handlers' own checks
    assert set(statuses) == {op.label for op in operations}
    assert any(code in (400, 404, 422) for codes in statuses.values() for code in codes)
    # signed vendor bodies got past the signature into the parsers
    for path in ("/v1/touchpoints/pos/shopify/orders", "/v1/touchpoints/pos/square/webhooks"):
        assert statuses[f"POST {path}"] - {401}, f"{path}: every call refused at the signature"
