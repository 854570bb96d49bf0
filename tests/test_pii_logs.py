"""Personal data out of logs: known personal data is sent through every touch point and every
error path that exists, and no captured log line (structlog and the standard library, the
hub's access log included) nor any error response carries it."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import pytest
from aiohttp import web
from positions import settled

from prm_core import hookimpl
from prm_core.config import Config
from prm_core.model import TouchPoint, ValueProvider
from prm_core.server.state import HUB

EMAIL, PHONE = "zelda.quartermaine@example.com", "+1 415 555 0199"
NAME, LAST, STREET = "Zelda", "Quartermaine", "42 Wallaby Way"
# what must never show up, in any form the hub might write it
SECRETS = ("zelda.quartermaine", "quartermaine@", "4155550199", "555 0199", "555-0199", LAST, "Wallaby")
TP2 = "/com.snowplowanalytics.snowplow/tp2"
UNSTRUCT = "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0"
IDS = {"email": EMAIL, "phone": PHONE}
PERSON = {"name": f"{NAME} {LAST}", "first_name": NAME, "last_name": LAST, "address": STREET, "email": EMAIL}


class Clumsy:
    """A plugin that fails with personal data in its exception messages, as real code does."""

    __name__ = "clumsy"

    @hookimpl
    def prm_touchpoints(self, config):
        routes = web.RouteTableDef()

        @routes.get("/v1/clumsy/{ref}")
        async def crash(request):
            raise RuntimeError(f"no record of {request.match_info['ref']}")

        yield TouchPoint(name="clumsy", channel="other", budget_ms=100, routes=routes)

    @hookimpl
    def prm_event_recorded(self, recorded):
        if recorded.event.type == "boom":
            raise ValueError(f"cannot sync {EMAIL} ({NAME} {LAST}, {STREET}, {PHONE})")

    @hookimpl
    def prm_enrich_view(self, view):
        raise KeyError(f"no loyalty card for {LAST} at {STREET}")

    @hookimpl
    def prm_value_providers(self, config):
        async def fail(request):
            raise RuntimeError(f"CRM lookup failed for {EMAIL} / {PHONE} / {LAST}")

        yield ValueProvider(name="crm", about="business", provide=fail)


@pytest.fixture
def hub_plugins():
    return [Clumsy()]


@pytest.fixture
def hub_config(database_url: str) -> Config:
    return Config(
        database_url=database_url,
        public_url="http://hub.test",
        raw={"touchpoints": {"web": {"snowplow_app_ids": ["shop"]}}},
    )


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def event(event_id: str, event_type: str = "page", **extra: Any) -> dict[str, Any]:
    return {"id": event_id, "type": event_type, "occurred_at": "2026-11-23T08:00:00Z", "identities": IDS,
            "data": {**PERSON, "note": f"{NAME} {LAST} lives at {STREET}, call {PHONE}"}, **extra}  # fmt: skip


async def test_no_personal_data_in_logs_or_error_responses(hub_client, make_key, log_capture, caplog):
    caplog.set_level(logging.DEBUG)
    keys = {s: await make_key(s) for s in ("touchpoint:web", "touchpoint:callcenter", "touchpoint:ivr",
                                           "touchpoint:pos", "read", "admin")}  # fmt: skip
    public = await make_key("touchpoint:web", public=True)
    errors: list[str] = []

    async def send(method: str, path: str, expect: int | None = None, *, names_a_field: bool = False, **kw: Any) -> Any:
        resp = await hub_client.request(method, path, **kw)
        text = (await resp.read()).decode(errors="replace")
        if resp.status >= 400 and not names_a_field:
            errors.append(f"{resp.status}: {text}")
        if expect is not None:
            assert resp.status == expect, f"{method} {path}: {resp.status} {text}"
        return resp

    # every touch point on main, through the core API
    for tp in ("web", "callcenter", "ivr", "pos"):
        key = keys[f"touchpoint:{tp}"]
        await send("POST", f"/v1/touchpoints/{tp}/events", 200, json=event(f"{tp}-1"), headers=bearer(key))
        await send("POST", f"/v1/touchpoints/{tp}/requests", 200, json=event(f"{tp}-r"), headers=bearer(key))
    boom = event("boom-1", "boom")
    await send("POST", "/v1/touchpoints/web/events", 200, json=boom, headers=bearer(keys["touchpoint:web"]))
    await send("POST", "/v1/touchpoints/web/events", 200, json=event("pub-1"), headers=bearer(public))
    # Segment / RudderStack
    web = keys["touchpoint:web"]
    traits = {**PERSON, "phone": PHONE}
    identify = {"type": "identify", "userId": "u-zq", "anonymousId": "a-zq", "traits": traits, "messageId": "s1"}
    track = {"type": "track", "event": "Signed Up", "userId": "u-zq", "properties": traits, "messageId": "s2",
             "context": {"traits": traits, "ip": "203.0.113.9"}}  # fmt: skip
    await send("POST", "/v1/identify", 200, json=identify, headers=basic(web))
    await send("POST", "/v1/track", 200, json=track, headers=basic(web))
    await send("POST", "/v1/batch", 200, json={"batch": [{**identify, "messageId": "s3"}]}, headers=basic(web))
    # Snowplow, POST and GET
    sp = {"e": "ue", "eid": "sp-1", "aid": "shop", "duid": "d-zq", "uid": EMAIL, "url": f"https://shop.example/?e={EMAIL}",
          "ue_pr": json.dumps({"schema": UNSTRUCT, "data": {"schema": "iglu:com.acme/signup/jsonschema/1-0-0",
                                                             "data": traits}})}  # fmt: skip
    await send("POST", TP2, 200, json={"schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4",
                                       "data": [sp]})  # fmt: skip
    await send("GET", "/i", 200, params={**sp, "eid": "sp-2"})
    # the admin and read API
    admin, read = keys["admin"], keys["read"]
    await send("PATCH", f"/v1/customers/email:{EMAIL}", 200, json={"traits": traits}, headers=bearer(admin))
    await send("GET", f"/v1/customers/phone:{PHONE}", 200, headers=bearer(read))
    await send("PUT", f"/v1/identities/phone:{PHONE}", 200, json={"shared": False}, headers=bearer(admin))

    # errors from bad input that quotes personal data
    bad = [
        ("POST", "/v1/touchpoints/web/events", {"json": {**event("x1"), "identities": {"email": f"{LAST} <zq>"}}}),
        ("POST", "/v1/touchpoints/web/events", {"json": {**event("x2"), "identities": {"phone": f"+999 {LAST}"}}}),
        ("POST", "/v1/touchpoints/web/events", {"json": {**event("x3"), "occurred_at": f"{EMAIL}"}}),
        ("POST", "/v1/touchpoints/web/events", {"json": {**event("x4"), "data": f"{NAME} {LAST}, {STREET}"}}),
        ("POST", "/v1/touchpoints/web/events", {"json": {**event("x5"), "identities": {LAST: EMAIL}}, "key": 1}),
        ("POST", "/v1/touchpoints/web/events", {"json": {**event("x6"), "type": "consent.granted"}}),
        ("POST", "/v1/touchpoints/web/events", {"data": f'{{"name": "{NAME} {LAST}", "email": "{EMAIL}"'}),
        ("POST", "/v1/touchpoints/web/events", {"data": f'{{"id": "{EMAIL}\\u0000"}}'}),
        ("POST", f"/v1/touchpoints/{LAST.lower()}/events", {"json": event("x7"), "key": 1}),
        ("GET", f"/v1/customers/email:{LAST}@", {}),
        ("GET", f"/v1/customers/phone:{LAST}", {}),
        ("GET", f"/v1/customers/email:{EMAIL}?cursor={EMAIL}", {}),
        ("GET", f"/v1/customers/email:nobody.{LAST}@example.com", {}),
        ("PATCH", f"/v1/customers/email:{EMAIL}", {"json": {"tier": f"{LAST} " * 20, "traits": traits}}),
        ("PATCH", f"/v1/customers/email:{EMAIL}", {"json": {LAST: STREET}, "key": 1}),
        ("PUT", f"/v1/customers/email:{EMAIL}/consents", {"json": {"consents": [{"purpose": LAST}]}}),
        ("POST", "/v1/identify", {"json": {**identify, "userId": {"name": LAST}, "messageId": "s9"}}),
        ("POST", "/v1/batch", {"json": {"batch": [{**track, "timestamp": f"{EMAIL}", "messageId": "s8"}]}}),
        ("POST", TP2, {"json": {"schema": LAST, "data": [{**sp, "eid": "sp-9", "dtm": EMAIL}]}}),
        ("GET", "/i", {"params": {**sp, "eid": "sp-8", "aid": EMAIL}}),
    ]
    # an error names the field it is about; where the caller chose that name (an unknown key or
    # touch point), the answer quotes it back to them, but never a value, and no log line quotes either
    for method, path, kw in bad:
        names_a_field = bool(kw.pop("key", False))
        headers = basic(web) if path.startswith("/v1/") and "/v1/touchpoints" not in path else bearer(web)
        if path.startswith("/v1/customers") or path.startswith("/v1/identities"):
            headers = bearer(admin)
        resp = await send(method, path, headers=headers, names_a_field=names_a_field, **kw)
        # a vendor adapter may take what the core refuses (Segment coerces ids): never a 5xx
        assert resp.status < 500, f"{method} {path} {kw}: {resp.status}"
    # a plugin's route crashing on a path that names someone: a 500, logged without the path
    await send("GET", f"/v1/clumsy/{LAST}-{STREET.replace(' ', '-')}", 500)
    # credentials that are personal data themselves
    await send("GET", f"/v1/customers/email:{EMAIL}", 401, headers={"Authorization": f"Bearer {EMAIL}"})
    await send("GET", f"/v1/customers/email:{EMAIL}", 401, headers=basic(EMAIL))

    # what was journaled is recorded, so what recording logged (the boom hook's failure) is checked too
    await settled(hub_client.app[HUB])
    logged = log_capture.text + "\n" + "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    assert '"route"' in log_capture.text, "the access log did not run"
    assert "hook failed" in log_capture.text, "the clumsy plugin's failures were not logged"
    assert "unhandled error" in log_capture.text, "the crash was not logged"
    leaks = sorted({s for s in SECRETS if s.lower() in logged.lower()})
    lines = [line for line in logged.splitlines() if any(s.lower() in line.lower() for s in SECRETS)]
    assert not leaks, f"personal data in the logs: {leaks}\n" + "\n".join(lines)[:3000]
    answers = "\n".join(errors)
    assert len(errors) >= len(bad) - 3
    leaks = sorted({s for s in SECRETS if s.lower() in answers.lower()})
    assert not leaks, f"personal data in error responses: {leaks}\n{answers}"
