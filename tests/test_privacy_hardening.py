"""Hardening: unscoped write routes refusing anonymous calls, public keys kept to sending
events, and JSON nested absurdly deep answered with a 4xx instead of a crash. Every route
against every key is tests/test_authorization_matrix.py."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
from positions import settled

from prm_core.config import Config
from prm_core.errors import InvalidInput
from prm_core.keys import create_key
from prm_core.server.state import HUB

# adapters authenticate with a key of their touch point although their API description says
# no scope (a vendor's SDK sends it as HTTP Basic)
ADAPTER_SCOPES = {
    f"/v1/{r}": "touchpoint:web" for r in ("batch", "track", "identify", "page", "screen", "group", "alias")
}
TP2 = "/com.snowplowanalytics.snowplow/tp2"


@pytest.fixture
def hub_config(database_url: str) -> Config:
    raw = {"touchpoints": {"web": {"snowplow_app_ids": ["shop"]}}}
    return Config(database_url=database_url, public_url="http://hub.test", raw=raw)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def concrete(path: str, scope: str) -> str:
    first = scope.split(" or ")[0]
    tp = first.split(":", 1)[1] if first.startswith("touchpoint:") else "web"
    values = {"tp": tp, "ref": "user_id:u-1", "merge_id": "mrg_unknown"}
    return re.sub(r"\{(\w+)[^}]*\}", lambda m: values.get(m.group(1), "x"), path)


def routes_of(app: Any) -> list[tuple[str, str, str | None]]:
    """(method, path, scope) of every route; scope None for those that take no key of ours."""
    found = []
    for route in app.router.routes():
        if route.method in ("HEAD", "OPTIONS") or route.resource is None:
            continue
        meta = getattr(route.handler, "__prm_api__", None) or {}
        path = route.resource.canonical
        found.append((route.method, path, meta.get("scope") or ADAPTER_SCOPES.get(path)))
    return found


async def test_unscoped_write_routes_refuse_an_anonymous_call(hub_client):
    """A route that writes without a key of ours (a vendor webhook with its own signature, a
    tracker gated by its app id) must still refuse a call that proves nothing."""
    unscoped = [
        (m, p) for m, p, s in routes_of(hub_client.app) if s is None and m in ("POST", "PUT", "PATCH", "DELETE")
    ]
    assert ("POST", TP2) in unscoped
    for method, template in unscoped:
        path = concrete(template, "")
        resp = await hub_client.request(method, path, json={})
        assert 400 <= resp.status < 500, f"{method} {path} answered {resp.status} to an anonymous call"


async def test_public_keys_only_send_events(hub_client, make_key):
    store = hub_client.app[HUB].store
    for scope in ("admin", "read", "partner:fieldservice"):
        with pytest.raises(InvalidInput, match="only a touchpoint"):
            await create_key(store, scope, public=True)
    public = await make_key("touchpoint:web", public=True)
    ev = {"id": "p1", "type": "page", "occurred_at": "2026-11-23T08:00:00Z", "identities": {"anonymous_id": "d"}}
    assert (await hub_client.post("/v1/touchpoints/web/events", json=ev, headers=bearer(public))).status == 200
    assert (await hub_client.get("/v1/customers/anonymous_id:d", headers=bearer(public))).status == 403


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize("depth", [40, 5_000, 100_000])
async def test_absurdly_deep_json_is_a_4xx_and_writes_nothing(hub_client, make_key, depth):
    web, read = await make_key("touchpoint:web"), await make_key("read")
    deep = b'{"a":' * depth + b"1" + b"}" * depth
    event = b'{"id": "d1", "type": "page", "occurred_at": "2026-11-23T08:00:00Z", "identities": {"user_id": "u-d"}, '
    calls = [
        ("/v1/touchpoints/web/events", event + b'"data": ' + deep + b"}", bearer(web)),
        ("/v1/touchpoints/web/requests", event + b'"data": ' + deep + b"}", bearer(web)),
        ("/v1/track", b'{"type": "track", "userId": "u-d", "event": "x", "properties": ' + deep + b"}",
         {"Authorization": "Basic " + base64.b64encode(f"{web}:".encode()).decode()}),
        (TP2, b'{"schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4", "data": [' + deep
         + b"]}", {}),
    ]  # fmt: skip
    for path, body, headers in calls:
        resp = await hub_client.post(path, data=body, headers={**headers, "Content-Type": "application/json"})
        assert 400 <= resp.status < 500, f"{path}: {resp.status}"
    # and inside a Snowplow field that carries JSON as a string
    ue = json.dumps({"schema": "x", "data": {}})[:-1] + ', "deep": ' + '{"a":' * depth + "1" + "}" * depth + "}"
    sp = {"e": "ue", "eid": "sp-d", "aid": "shop", "duid": "dev-d", "ue_pr": ue}
    tp2 = {"schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4", "data": [sp]}
    assert 400 <= (await hub_client.post(TP2, json=tp2)).status < 500
    await settled(hub_client.app[HUB])  # nothing journaled either, to be recorded later
    assert (await hub_client.get("/v1/customers/user_id:u-d", headers=bearer(read))).status == 404
    assert (await hub_client.get("/v1/customers/anonymous_id:dev-d", headers=bearer(read))).status == 404


async def test_ordinary_nesting_is_fine(hub_client, make_key):
    web = await make_key("touchpoint:web")
    ev = {"id": "n1", "type": "page", "occurred_at": "2026-11-23T08:00:00Z", "identities": {"user_id": "u-n"},
          "data": nested(20)}  # fmt: skip
    assert (
        await hub_client.post("/v1/touchpoints/web/events", json={"events": [ev]}, headers=bearer(web))
    ).status == 200


class TestRateLimits:
    """Per-key limits: 429 with Retry-After; one key's flood does not stop another key."""

    @pytest.fixture
    def hub_config(self, database_url: str) -> Config:
        raw = {"server": {"rate_limit": "5/minute", "rate_limit_public": "3/minute"}}
        return Config(database_url=database_url, raw=raw)

    async def test_a_key_over_its_limit_gets_429_with_retry_after(self, hub_client, make_key):
        flood, other = await make_key("read"), await make_key("read")
        statuses = []
        for _ in range(7):
            resp = await hub_client.get("/v1/touchpoints", headers=bearer(flood))
            statuses.append(resp.status)
        assert statuses == [200] * 5 + [429] * 2
        body = await resp.json()
        assert body["error"]["code"] == "rate_limited"
        assert 1 <= int(resp.headers["Retry-After"]) <= 60
        assert (await hub_client.get("/v1/touchpoints", headers=bearer(other))).status == 200
        # what needs no key is not counted against anyone
        assert (await hub_client.get("/healthz")).status == 200

    async def test_a_public_key_is_limited_per_client(self, hub_client, make_key):
        public = await make_key("touchpoint:web", public=True)
        ev = {"id": "p", "type": "page", "occurred_at": "2026-11-23T08:00:00Z", "identities": {"anonymous_id": "d"}}
        statuses = []
        for n in range(4):
            body = {**ev, "id": f"p{n}"}
            resp = await hub_client.post("/v1/touchpoints/web/events", json=body, headers=bearer(public))
            statuses.append(resp.status)
        assert statuses == [200, 200, 200, 429]
        assert "Retry-After" in resp.headers

    @pytest.mark.parametrize(("name", "limit"), [("rate_limit", "fast"), ("rate_limit_public", "10/fortnight")])
    def test_a_bad_limit_is_a_config_error(self, name, limit):
        from prm_core.errors import ConfigError
        from prm_core.server.app import create_app

        with pytest.raises(ConfigError, match=rf"\[server\].{name}"):
            create_app(Config(raw={"server": {name: limit}}))

    def test_defaults_limit_public_keys_only_and_off_turns_it_off(self):
        from prm_core.server.app import create_app
        from prm_core.server.ratelimit import RATE_LIMITS

        off = {"server": {"rate_limit": "off", "rate_limit_public": "off", "rate_limit_keyless": "off"}}
        assert RATE_LIMITS not in create_app(Config(raw=off))
        limits = create_app(Config())[RATE_LIMITS]
        assert limits.secret == [] and limits.public
