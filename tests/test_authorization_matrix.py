"""The authorization matrix: every route of ``/openapi.json`` (vendor routes and WebSockets
included) against no key, a forged key, and a key of every scope, secret, public and revoked.

:data:`ROUTES` says, for every route the hub mounts, who may call it. The test fails when a
route is mounted that the table does not list (or the other way round), when the table and
the API description disagree (``x-prm-scope``, ``security``, ``x-prm-public-keys``), and when
any call is answered otherwise than the table says: 401 without a valid key (none, forged,
revoked), 403 for a key whose scope does not grant the route or a public key where public
keys are not taken, and neither for a key that may call it (nor a 5xx, ever).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp import WSServerHandshakeError
from attrs import frozen
from positions import read_after

from prm_core.config import Config
from prm_core.keys import allows, create_key, revoke_key
from prm_core.server.state import HUB

BROWSER_TOUCHPOINTS = {"web"}  # the touch points that declare public keys (TouchPoint.public_keys)
PARTNER_SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo="


@frozen
class Access:
    """Who may call a route. ``kind``: ``key`` (one of ``scopes``, or admin), ``open`` (takes
    no key: it holds no data), ``signed`` (a vendor's or partner's signature, never our keys),
    ``session`` (an agent's session token, never a key),
    ``tracker`` (a Snowplow tracker: no key needed, app ids gate it; a key sent must grant
    ``touchpoint:web``). ``public``: a public key of a browser touch point will do."""

    kind: str
    scopes: tuple[str, ...] = ()
    public: bool = False
    websocket: bool = False


def key(*scopes: str, public: bool = False, websocket: bool = False) -> Access:
    return Access("key", scopes, public, websocket)


OPEN, SIGNED = Access("open"), Access("signed")
SESSION = Access("session")  # an agent's session token only: every key is refused (401)
TRACKER = Access("tracker", ("touchpoint:web",), public=True)
SEGMENT = key("touchpoint:web", public=True)

ROUTES: dict[tuple[str, str], Access] = {
    # pages and descriptions that hold no data
    ("GET", "/agent"): OPEN,
    ("GET", "/agent/agent.css"): OPEN,
    ("GET", "/agent/agent.js"): OPEN,
    ("GET", "/console"): OPEN,
    ("GET", "/healthz"): OPEN,
    ("GET", "/metrics"): OPEN,
    ("GET", "/openapi.json"): OPEN,
    ("GET", "/prm.js"): OPEN,
    ("OPTIONS", "/com.snowplowanalytics.snowplow/tp2"): OPEN,
    # CORS preflights: browsers send them without credentials
    ("OPTIONS", "/v1/batch"): OPEN,
    ("OPTIONS", "/v1/alias"): OPEN,
    ("OPTIONS", "/v1/group"): OPEN,
    ("OPTIONS", "/v1/identify"): OPEN,
    ("OPTIONS", "/v1/page"): OPEN,
    ("OPTIONS", "/v1/screen"): OPEN,
    ("OPTIONS", "/v1/track"): OPEN,
    ("OPTIONS", "/v1/a"): OPEN,
    ("OPTIONS", "/v1/b"): OPEN,
    ("OPTIONS", "/v1/g"): OPEN,
    ("OPTIONS", "/v1/i"): OPEN,
    ("OPTIONS", "/v1/p"): OPEN,
    ("OPTIONS", "/v1/s"): OPEN,
    ("OPTIONS", "/v1/t"): OPEN,
    ("OPTIONS", "/beacon/v1/batch"): OPEN,
    ("OPTIONS", "/v1/projects/{write_key}/settings"): OPEN,
    ("OPTIONS", "/sourceConfig"): OPEN,
    ("OPTIONS", "/sourceConfig/"): OPEN,
    # trackers and vendors
    ("POST", "/com.snowplowanalytics.snowplow/tp2"): TRACKER,
    ("GET", "/i"): TRACKER,
    ("POST", "/v1/batch"): SEGMENT,
    ("POST", "/v1/alias"): SEGMENT,
    ("POST", "/v1/group"): SEGMENT,
    ("POST", "/v1/identify"): SEGMENT,
    ("POST", "/v1/page"): SEGMENT,
    ("POST", "/v1/screen"): SEGMENT,
    ("POST", "/v1/track"): SEGMENT,
    # what Segment's analytics-next (first letters, /v1/b) and RudderStack's beacon send to
    ("POST", "/v1/a"): SEGMENT,
    ("POST", "/v1/b"): SEGMENT,
    ("POST", "/v1/g"): SEGMENT,
    ("POST", "/v1/i"): SEGMENT,
    ("POST", "/v1/p"): SEGMENT,
    ("POST", "/v1/s"): SEGMENT,
    ("POST", "/v1/t"): SEGMENT,
    ("POST", "/beacon/v1/batch"): SEGMENT,
    # the SDKs' configuration documents (the write key in the path, or as for a call)
    ("GET", "/v1/projects/{write_key}/settings"): SEGMENT,
    ("GET", "/sourceConfig"): SEGMENT,
    ("GET", "/sourceConfig/"): SEGMENT,
    ("POST", "/v1/partners/{partner}/callbacks"): SIGNED,
    ("POST", "/v1/partners/{partner}/listener/{event}"): SIGNED,
    ("POST", "/v1/touchpoints/ivr/twilio/gather"): SIGNED,
    ("POST", "/v1/touchpoints/ivr/twilio/status"): SIGNED,
    ("POST", "/v1/touchpoints/ivr/twilio/voice"): SIGNED,
    ("POST", "/v1/touchpoints/pos/shopify/orders"): SIGNED,
    ("POST", "/v1/touchpoints/pos/square/webhooks"): SIGNED,
    ("POST", "/v1/touchpoints/sms/twilio/inbound"): SIGNED,
    ("POST", "/v1/touchpoints/sms/twilio/status"): SIGNED,
    ("POST", "/v1/touchpoints/email/mailgun"): SIGNED,
    ("POST", "/v1/touchpoints/email/mailgun/events"): SIGNED,
    # an unsubscribe link's signed token, never a key
    ("GET", "/v1/touchpoints/email/unsubscribe/{token}"): SIGNED,
    ("POST", "/v1/touchpoints/email/unsubscribe/{token}"): SIGNED,
    ("POST", "/v1/touchpoints/callcenter/connect/events"): key("touchpoint:callcenter"),
    # a survey's answer page: the signed token in the path is the credential, never a key
    ("GET", "/v1/surveys/{token}"): SIGNED,
    ("POST", "/v1/surveys/{token}"): SIGNED,
    # touch points
    ("POST", "/v1/touchpoints/{tp}/events"): key("touchpoint:{tp}", public=True),
    ("POST", "/v1/touchpoints/{tp}/requests"): key("touchpoint:{tp}", public=True),
    ("GET", "/v1/touchpoints/{tp}/dialogues/{dialogue}/fulfillments"): key("touchpoint:{tp}"),
    ("POST", "/v1/touchpoints/callcenter/events"): key("touchpoint:callcenter"),
    ("POST", "/v1/touchpoints/pos/transactions"): key("touchpoint:pos"),
    ("POST", "/v1/touchpoints/email/inbound"): key("touchpoint:email"),
    ("POST", "/v1/agents/{agent_id}/screenpop/tickets"): key("touchpoint:callcenter", "read"),
    ("GET", "/v1/agents/{agent_id}/screenpop"): key("touchpoint:callcenter", "read", websocket=True),
    # an agent signs in with a one-time code a callcenter key asks for, never with a key
    ("POST", "/v1/agents/{agent_id}/signin"): key("touchpoint:callcenter"),
    ("POST", "/v1/agents/session"): OPEN,
    ("DELETE", "/v1/agents/session"): SESSION,
    ("POST", "/v1/agents/{agent_id}/events"): SESSION,
    # reading
    ("GET", "/v1/customers/{ref}"): key("read"),
    ("GET", "/v1/customers/{ref}/merges"): key("read"),
    ("GET", "/v1/changes"): key("read"),
    ("GET", "/v1/campaigns/{name}"): key("read"),
    ("GET", "/v1/knowledge"): key("read"),
    ("GET", "/v1/scorecard"): key("read"),
    ("GET", "/v1/screenpops/stats"): key("read"),
    ("GET", "/v1/segments"): key("read"),
    ("GET", "/v1/segments/{name}"): key("read"),
    ("GET", "/v1/segments/{name}/members"): key("read"),
    ("GET", "/v1/touchpoints"): key("read"),
    # administration
    ("POST", "/v1/campaigns"): key("admin"),
    ("POST", "/v1/customers"): key("admin"),
    ("PATCH", "/v1/customers/{ref}"): key("admin"),
    ("DELETE", "/v1/customers/{ref}"): key("admin"),
    ("PUT", "/v1/customers/{ref}/consents"): key("admin"),
    ("GET", "/v1/customers/{ref}/export"): key("admin"),
    ("PUT", "/v1/identities/{ref}"): key("admin"),
    ("POST", "/v1/merges/{merge_id}/undo"): key("admin"),
    ("GET", "/v1/identity/conflicts"): key("admin"),
    ("POST", "/v1/identity/conflicts/{conflict_id}"): key("admin"),
    ("POST", "/v1/identity/preview"): key("admin"),
    ("POST", "/v1/segments"): key("admin"),
    ("GET", "/v1/triggers"): key("admin"),
    ("GET", "/v1/triggers/{name}"): key("admin"),
    ("POST", "/v1/triggers"): key("admin"),
    ("POST", "/v1/triggers/{name}/pause"): key("admin"),
    ("POST", "/v1/triggers/{name}/resume"): key("admin"),
    ("DELETE", "/v1/segments/{name}"): key("admin"),
    ("DELETE", "/v1/tombstones/{ref}"): key("admin"),
}


@frozen
class Caller:
    label: str
    key: str | None
    scope: str | None = None
    public: bool = False
    valid: bool = True  # False: forged or revoked


@pytest.fixture
def hub_config(database_url: str) -> Config:
    raw = {
        "touchpoints": {
            "web": {"snowplow_app_ids": ["shop"]},
            "ivr": {"twilio_auth_token": "twilio-token"},
            "sms": {"account_sid": "AC" + "0" * 32, "auth_token": "twilio-token", "from": "+14155550100"},
            "email": {"from": "hello@shop.example", "secret": "e" * 32, "mailgun_signing_key": "key-mailgun"},
        },
        "partners": {
            "fieldservice": {
                "role": "field_service",
                "protocol": "tmf646",
                "url": "http://127.0.0.1:9/",
                "secret": PARTNER_SECRET,
            }
        },
        # thousands of calls with one public key: no per-client limit in the way
        "server": {"rate_limit_public": "off", "rate_limit_keyless": "off"},
    }
    return Config(database_url=database_url, public_url="https://hub.example.com", raw=raw)


# a tracker's call is judged on its app id and payload before its key (anonymous trackers
# are the rule): these reach the key check
TRACKER_CALLS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/com.snowplowanalytics.snowplow/tp2"): {
        "json": {"schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4", "data": []}
    },
    ("GET", "/i"): {"params": {"e": "pv", "eid": "0b3b4a1e-8a0c-4f59-9a3c-1f1b5e7d9c21", "aid": "shop", "duid": "d"}},
}


def concrete(path: str, key: str | None = None) -> str:
    values = {"tp": "web", "ref": "user_id:u-1", "merge_id": "mrg_unknown", "partner": "fieldservice"}
    values["write_key"] = key or "no-key"  # Segment's settings carry the caller's key in the path
    return re.sub(r"\{(\w+)[^}]*\}", lambda m: values.get(m.group(1), "x"), path)


def answer(access: Access, caller: Caller) -> str:
    """What the table says ``caller`` gets: ``ok`` (neither 401 nor 403), ``401``, ``403`` or
    ``4xx`` (refused by a missing signature, whatever key of ours comes with it)."""
    if access.kind == "open":
        return "ok"
    if access.kind == "signed":
        return "4xx"
    if access.kind == "session":
        return "401"
    if caller.key is None:
        return "ok" if access.kind == "tracker" else "401"  # a tracker's listed app id is enough
    if not caller.valid:
        return "401"
    scopes = tuple(s.replace("{tp}", "web") for s in access.scopes)
    if caller.public:
        browser = caller.scope is not None and caller.scope.removeprefix("touchpoint:") in BROWSER_TOUCHPOINTS
        if not (access.public and browser):
            return "403"
    assert caller.scope is not None
    return "ok" if any(allows(caller.scope, s) for s in scopes) else "403"


async def callers(app: Any) -> list[Caller]:
    hub = app[HUB]
    store = hub.store
    touchpoints = sorted(hub.registrations.touchpoints.names())
    scopes = ["admin", "read", "partner:fieldservice", *(f"touchpoint:{tp}" for tp in touchpoints)]
    found = [Caller("no key", None), Caller("forged", "prm_0000000000000000_forgedforgedforgedforged", valid=False)]
    for scope in scopes:
        secret, _ = await create_key(store, scope)
        found.append(Caller(f"secret {scope}", secret, scope))
        revoked, record = await create_key(store, scope)
        assert await revoke_key(store, record.id)
        found.append(Caller(f"revoked {scope}", revoked, scope, valid=False))
        if scope.startswith("touchpoint:"):
            # made as ``prm keys create --public`` made them before browser use was checked
            public, record = await create_key(store, scope, public=True)
            found.append(Caller(f"public {scope}", public, scope, public=True))
            if scope == "touchpoint:web":
                revoked, record = await create_key(store, scope, public=True)
                assert await revoke_key(store, record.id)
                found.append(Caller(f"revoked public {scope}", revoked, scope, public=True, valid=False))
    return found


async def status(client: Any, method: str, path: str, access: Access, caller: Caller) -> int:
    headers = {"Authorization": f"Bearer {caller.key}"} if caller.key else {}
    if access.websocket:
        try:
            ws = await client.ws_connect(path, headers=headers)
        except WSServerHandshakeError as refused:
            return refused.status
        await ws.close()
        return 101
    call = TRACKER_CALLS.get((method, path), {"json": {}})
    resp = await client.request(method, path, headers=headers, **call)
    await resp.read()
    return resp.status


def mounted(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m.upper(), p): op for p, ops in document["paths"].items() for m, op in ops.items()}


async def test_every_route_against_every_key(hub_client):
    document = await (await hub_client.get("/openapi.json")).json()
    operations = mounted(document)
    assert set(operations) - set(ROUTES) == set(), "routes mounted without an entry in ROUTES (who may call them?)"
    assert set(ROUTES) - set(operations) == set(), "ROUTES lists routes that are not mounted"

    for (method, path), access in ROUTES.items():
        op = operations[(method, path)]
        where = f"{method} {path}"
        if access.kind == "key":
            assert op.get("x-prm-scope") == " or ".join(access.scopes), f"{where}: documented scope"
            assert op.get("security"), f"{where}: takes a key but has no security entry"
        else:
            assert "x-prm-scope" not in op, f"{where}: documented as taking a key"
        assert bool(op.get("x-prm-public-keys")) == access.public, f"{where}: documented public keys"

    seed = {"id": "s1", "type": "page", "occurred_at": "2026-11-23T08:00:00Z", "identities": {"user_id": "u-1"}}
    everyone = await callers(hub_client.app)
    admin = next(c for c in everyone if c.label == "secret admin")
    headers = {"Authorization": f"Bearer {admin.key}"}
    seeded = await hub_client.post("/v1/touchpoints/web/events", json=seed, headers=headers)
    assert seeded.status == 200
    await read_after(hub_client, await seeded.json(), "user_id:u-1", headers)  # u-1 is recorded

    wrong: list[str] = []
    for (method, template), access in sorted(ROUTES.items(), key=lambda item: item[0][1]):
        for caller in everyone:
            path = concrete(template, caller.key)
            got = await status(hub_client, method, path, access, caller)
            want = answer(access, caller)
            fine = {
                "ok": got not in (401, 403) and got < 500,
                "401": got == 401,
                "403": got == 403,
                "4xx": 400 <= got < 500,
            }[want]
            if not fine:
                wrong.append(f"{method} {path} with {caller.label}: {got}, expected {want}")
    assert wrong == [], "\n".join(wrong)


async def test_no_operation_lists_a_parameter_twice(hub_client):
    document = await (await hub_client.get("/openapi.json")).json()
    for (method, path), op in mounted(document).items():
        names = [(p["name"], p["in"]) for p in op.get("parameters", [])]
        assert len(names) == len({name for name, _ in names}), f"{method} {path}: {names}"
        in_path = {seg[1:-1].split(":")[0] for seg in path.split("/") if seg.startswith("{")}
        assert {name for name, where in names if where == "path"} == in_path, f"{method} {path}"
