"""The tracking routes as browsers reach them: CORS, the write key's places, what pages may send.

Requests are made as Chromium makes them for Segment's and RudderStack's SDKs (the headers,
content types and paths of tests/test_browser_segment.py), over a real aiohttp server.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from browsing import customer
from positions import settled
from prm_web.cors import BrowserOrigins, origin_of

from prm_core.config import Config
from prm_core.server.state import HUB

SHOP = "https://shop.example.com"
ELSEWHERE = "https://evil.example.net"


@pytest.fixture
def hub_config(database_url: str) -> Config:
    raw = {"touchpoints": {"web": {"allowed_origins": [SHOP, "http://localhost:8080"]}}}
    return Config(database_url=database_url, public_url="https://hub.example.com/prm", raw=raw)


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def track(aid: str, mid: str, **extra: Any) -> dict[str, Any]:
    return {"type": "track", "event": "Product Viewed", "anonymousId": aid, "messageId": mid, **extra}


async def stored(hub_client: Any, make_key: Any, aid: str) -> list[str]:
    """The types of visitor ``aid``'s events, once what the hub took is recorded (Segment's
    answers carry no position)."""
    await settled(hub_client.app[HUB])
    view = await customer(hub_client, await make_key("read"), f"anonymous_id:{aid}")
    return [] if view is None else [t["type"] for t in view["timeline"]]


def preflight(origin: str, headers: str = "authorization,content-type") -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": headers}


# ---- preflights ----------------------------------------------------------------------------


SDK_PATHS = ["/v1/t", "/v1/p", "/v1/i", "/v1/b", "/v1/track", "/v1/batch", "/beacon/v1/batch"]


async def test_a_preflight_from_an_allowed_origin_grants_what_the_sdks_send(hub_client):
    sent = "authorization,content-type,x-retry-count,anonymousid,sentat,rsa-retry-attempt"
    for path in SDK_PATHS:
        resp = await hub_client.options(path, headers=preflight(SHOP, sent))
        assert resp.status == 204, path
        assert resp.headers["Access-Control-Allow-Origin"] == SHOP
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
        granted = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
        assert set(sent.split(",")) <= granted
        assert "Access-Control-Allow-Credentials" not in resp.headers
        assert "Origin" in resp.headers["Vary"]


async def test_a_preflight_from_another_origin_gets_no_grant(hub_client):
    for origin in (ELSEWHERE, "null", "https://shop.example.com.evil.example.net", "http://shop.example.com"):
        resp = await hub_client.options("/v1/t", headers=preflight(origin))
        assert resp.status == 204
        assert "Access-Control-Allow-Origin" not in resp.headers, origin
        assert "Access-Control-Allow-Headers" not in resp.headers, origin


async def test_the_configuration_documents_have_preflights(hub_client):
    for path in ("/sourceConfig/", "/v1/projects/k/settings"):
        headers = {**preflight(SHOP, "authorization"), "Access-Control-Request-Method": "GET"}
        resp = await hub_client.options(path, headers=headers)
        assert resp.headers["Access-Control-Allow-Origin"] == SHOP
        assert "GET" in resp.headers["Access-Control-Allow-Methods"]


# ---- answers ------------------------------------------------------------------------------


async def test_answers_carry_the_grant_errors_included(hub_client, make_key):
    key = await make_key("touchpoint:web", public=True)
    ok = await hub_client.post("/v1/t", data=json.dumps(track("a-1", "m-1", writeKey=key)), headers={"Origin": SHOP})
    assert ok.status == 200, await ok.text()
    assert (await ok.json()) == {"success": True}
    bad = await hub_client.post("/v1/t", data="{not json", headers={"Origin": SHOP, **basic(key)})
    unauthorized = await hub_client.post("/v1/t", data=json.dumps(track("a-1", "m-2")), headers={"Origin": SHOP})
    for resp, status in ((ok, 200), (bad, 400), (unauthorized, 401)):
        assert resp.status == status
        assert resp.headers["Access-Control-Allow-Origin"] == SHOP
        assert "Retry-After" in resp.headers["Access-Control-Expose-Headers"]
        assert "Access-Control-Allow-Credentials" not in resp.headers
    assert (await unauthorized.json())["error"]["code"] == "unauthorized"
    assert await stored(hub_client, make_key, "a-1") == ["Product Viewed"]


async def test_a_page_of_another_origin_is_refused_and_nothing_stored(hub_client, make_key):
    key = await make_key("touchpoint:web", public=True)
    body = json.dumps({"batch": [track("a-2", "m-1")]})
    resp = await hub_client.post(f"/beacon/v1/batch?writeKey={key}", data=body, headers={"Origin": ELSEWHERE})
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "origin_not_allowed"
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert await stored(hub_client, make_key, "a-2") == []
    # the hub's own origin (its public URL's) may always send
    own = await hub_client.post("/v1/batch", data=body, headers={"Origin": "https://hub.example.com", **basic(key)})
    assert own.status == 200, await own.text()


# ---- the beacon ----------------------------------------------------------------------------


async def test_a_beacon_carries_its_key_in_the_query_string(hub_client, make_key):
    key = await make_key("touchpoint:web", public=True)
    body = json.dumps({"batch": [track("a-3", "m-1"), track("a-3", "m-2", event="Basket Viewed")], "sentAt": None})
    headers = {"Origin": SHOP, "Content-Type": "text/plain;charset=UTF-8"}
    resp = await hub_client.post(f"/beacon/v1/batch?writeKey={key}", data=body, headers=headers)
    assert resp.status == 200, await resp.text()
    assert sorted(await stored(hub_client, make_key, "a-3")) == ["Basket Viewed", "Product Viewed"]


async def test_a_beacon_without_a_valid_key_is_a_401_and_stores_nothing(hub_client, make_key):
    body = json.dumps({"batch": [track("a-4", "m-1")]})
    for query in ("", "?writeKey=", "?writeKey=prm_0000000000000000_forged", "?writeKey=nonsense"):
        resp = await hub_client.post(f"/beacon/v1/batch{query}", data=body, headers={"Origin": SHOP})
        assert resp.status == 401, query
        assert (await resp.json())["error"]["code"] == "unauthorized"
        assert resp.headers["Access-Control-Allow-Origin"] == SHOP
    assert await stored(hub_client, make_key, "a-4") == []


# ---- keys in pages -------------------------------------------------------------------------


async def test_a_secret_key_from_a_page_is_refused(hub_client, make_key):
    secret = await make_key("touchpoint:web")
    body = json.dumps(track("a-5", "m-1"))
    for where in ({"Origin": SHOP, **basic(secret)}, {"Origin": SHOP}):
        data = body if "Authorization" in where else json.dumps({**track("a-5", "m-1"), "writeKey": secret})
        resp = await hub_client.post("/v1/t", data=data, headers=where)
        assert resp.status == 403
        error = (await resp.json())["error"]
        assert error["code"] == "secret_key_in_browser"
        assert "--public" in error["message"]
        assert secret not in error["message"]
    assert await stored(hub_client, make_key, "a-5") == []
    # the site's server (no Origin) uses its secret key as before
    resp = await hub_client.post("/v1/track", data=body, headers=basic(secret))
    assert resp.status == 200
    assert await stored(hub_client, make_key, "a-5") == ["Product Viewed"]


# ---- sizes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [600 * 1024, 2 * 1024 * 1024])
async def test_a_body_over_the_limit_is_a_413_the_page_can_read(hub_client, make_key, size):
    key = await make_key("touchpoint:web", public=True)
    one = track("a-6", "m-0", properties={"pad": "x" * 16_000})
    batch = [{**one, "messageId": f"m-{i}"} for i in range(size // 16_000)]
    resp = await hub_client.post("/v1/b", data=json.dumps({"batch": batch, "writeKey": key}), headers={"Origin": SHOP})
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "too_large"
    assert resp.headers["Access-Control-Allow-Origin"] == SHOP  # else the SDK sees a network error, and retries
    assert await stored(hub_client, make_key, "a-6") == []


async def test_a_batch_as_large_as_rudderstack_makes_is_taken(hub_client, make_key):
    key = await make_key("touchpoint:web", public=True)
    pad = "x" * 16_000
    batch = [track("a-7", f"m-{i}", properties={"pad": pad}) for i in range(32)]  # over 500 KB, under 512 KiB
    body = json.dumps({"batch": batch})
    assert 500 * 1024 < len(body) < 512 * 1024
    resp = await hub_client.post("/v1/batch", data=body, headers={"Origin": SHOP, **basic(key)})
    assert resp.status == 200, await resp.text()


# ---- the configuration documents -----------------------------------------------------------


async def test_segment_settings_name_the_hub(hub_client, make_key):
    key = await make_key("touchpoint:web", public=True)
    resp = await hub_client.get(f"/v1/projects/{key}/settings", headers={"Origin": SHOP})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == SHOP
    settings = await resp.json()
    assert settings["integrations"] == {
        "Segment.io": {"apiKey": key, "apiHost": "hub.example.com/prm/v1", "protocol": "https"}
    }
    assert settings["metrics"] == {"sampleRate": 0}
    assert settings["remotePlugins"] == []
    unknown = await hub_client.get("/v1/projects/prm_0000000000000000_forged/settings", headers={"Origin": SHOP})
    assert unknown.status == 401
    assert unknown.headers["Access-Control-Allow-Origin"] == SHOP


async def test_rudderstack_source_config(hub_client, make_key):
    key = await make_key("touchpoint:web", public=True)
    for path, headers in ((f"/sourceConfig/?p=npm&writeKey={key}", {}), ("/sourceConfig/?p=npm", basic(key))):
        resp = await hub_client.get(path, headers={"Origin": SHOP, **headers})
        assert resp.status == 200, await resp.text()
        source = (await resp.json())["source"]
        assert source["enabled"] is True and source["destinations"] == [] and source["config"] == {}
        assert resp.headers["Access-Control-Allow-Origin"] == SHOP
    missing = await hub_client.get("/sourceConfig/", headers={"Origin": SHOP})
    assert missing.status == 401


# ---- the setting ---------------------------------------------------------------------------


def test_allowed_origins_are_checked_and_normalized():
    origins = BrowserOrigins.from_setting(["HTTPS://Shop.Example.com:443/", "http://[::1]:8080"])
    assert origins.listed == {"https://shop.example.com", "http://[::1]:8080"}
    assert not origins.any_origin
    assert BrowserOrigins.from_setting(None).any_origin  # the default: any site
    assert origin_of("http://shop.example.com:80") == "http://shop.example.com"
    for bad in ("shop.example.com", "https://shop.example.com/path", "ftp://x", "https://u:p@x", ""):
        with pytest.raises(ValueError, match="allowed_origins"):
            BrowserOrigins.from_setting([bad])
    for bad_value in ("https://shop.example.com", [1], {"a": 1}):
        with pytest.raises(ValueError, match="allowed_origins"):
            BrowserOrigins.from_setting(bad_value)
