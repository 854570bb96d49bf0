"""Segment's and RudderStack's own browser SDKs, from npm, in a real browser, sending to the hub.

``tests/browser_sdk`` pins ``@segment/analytics-next`` and ``@rudderstack/analytics-js``;
``tests/sdk_bundles.py`` bundles each into one browser script exposing the package on
``window``. The page loads that script, then runs the SDK's snippet of docs/web.md as the page
shows it, with the test hub's address and key put in and its ``import`` taken from ``window``,
plus the options of the delivery mode under test.

The page is served by an aiohttp app of its own on another loopback port, listed in the hub's
``[touchpoints.web] allowed_origins``, so every request is cross-origin, as on a real site.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from browsing import TIMEOUT, customer, eventually
from sdk_bundles import build_bundles

from prm_core.config import Config

DOCS = Path(__file__).parent.parent / "docs" / "web.md"
DOC_HUB, DOC_KEY = "https://hub.example.com", "prm_0123456789abcdef_..."
TITLE = "Washers | Example Appliances"


def snippet(import_line: str) -> str:
    """The ```js block of docs/web.md that starts with ``import_line``."""
    blocks = re.findall(r"```js\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)
    (found,) = [b for b in blocks if b.startswith(import_line)]
    return found


def put(text: str, old: str, new: str) -> str:
    """``text`` with its one ``old`` replaced: the snippet must still say what the test expects."""
    assert text.count(old) == 1, f"docs/web.md's snippet no longer has exactly one {old!r}:\n{text}"
    return text.replace(old, new)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def site_port() -> int:
    return free_port()


@pytest.fixture
def hub_config(database_url: str, site_port: int) -> Config:
    web_settings = {"allowed_origins": [f"http://127.0.0.1:{site_port}"]}
    return Config(database_url=database_url, public_url="http://hub.test", raw={"touchpoints": {"web": web_settings}})


@pytest.fixture(scope="session")
def bundles() -> Path:
    return build_bundles()


class Site:
    """A shop of its own origin: a page loading one SDK bundle, then the page's own script."""

    def __init__(self, bundles: Path) -> None:
        self.bundles = bundles
        self.url = ""
        self.hub = ""
        self.script = ""  # the inline script of the next page served

    async def bundle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        assert name in ("segment.js", "rudderstack.js")
        return web.Response(text=(self.bundles / name).read_text(), content_type="application/javascript")

    async def page(self, request: web.Request) -> web.Response:
        sdk = request.query.get("sdk")
        if sdk is None:  # the browser's /favicon.ico
            raise web.HTTPNotFound()
        html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{TITLE}</title>
<script src="/sdk/{sdk}.js"></script>
<script>{self.script}</script>
</head><body><h1>Washers</h1></body></html>"""
        return web.Response(text=html, content_type="text/html")


async def serve_site(aiohttp_server: Any, hub_client: Any, bundles: Path, port: int) -> Site:
    site = Site(bundles)
    app = web.Application()
    app.router.add_get("/sdk/{name}", site.bundle)
    app.router.add_get("/{tail:.*}", site.page)
    server = await aiohttp_server(app, port=port)
    site.url = str(server.make_url("")).rstrip("/")
    site.hub = str(hub_client.make_url("")).rstrip("/")
    assert site.url != site.hub  # another origin than the hub's
    return site


@pytest.fixture
async def site(aiohttp_server: Any, hub_client: Any, bundles: Path, site_port: int) -> Site:
    return await serve_site(aiohttp_server, hub_client, bundles, site_port)


async def open_page(browser: Any, site: Site, sdk: str) -> tuple[Any, Any, list[tuple[str, str]]]:
    """A new visitor's page of the shop loading ``sdk``; the list filling with its requests
    (method, URL without the query)."""
    context = await browser.new_context()
    page = await context.new_page()
    requests: list[tuple[str, str]] = []
    context.on("request", lambda r: requests.append((r.method, r.url.split("?")[0])))
    await page.goto(f"{site.url}/washers?sdk={sdk}")
    return context, page, requests


def hub_posts(site: Site, requests: list[tuple[str, str]]) -> set[str]:
    """The paths the page posted to on the hub; nothing went to a third host (a vendor's CDN)."""
    assert {url.split("/")[2] for _, url in requests} <= {site.url.split("/")[2], site.hub.split("/")[2]}, requests
    return {url.removeprefix(site.hub) for method, url in requests if method == "POST" and url.startswith(site.hub)}


async def timeline(hub_client: Any, read: str, ref: str, expected: list[str]) -> dict[str, Any] | None:
    """The customer once its timeline's types are exactly ``expected``, else ``None``."""
    view = await customer(hub_client, read, ref)
    if view and sorted(t["type"] for t in view["timeline"]) == sorted(expected):
        return view
    return None


# ---- the snippets of docs/web.md, made to run on the test page ------------------------------


def segment_script(site: Site, key: str, mode: dict[str, Any]) -> str:
    js = snippet('import { AnalyticsBrowser } from "@segment/analytics-next";')
    js = put(
        js, 'import { AnalyticsBrowser } from "@segment/analytics-next";', "const { AnalyticsBrowser } = SegmentSDK;"
    )
    js = put(js, "export const analytics =", "window.analytics =")
    js = put(js, json.dumps(DOC_KEY), json.dumps(key))
    js = put(js, f"cdnURL: {json.dumps(DOC_HUB)}", f"cdnURL: {json.dumps(site.hub)}")
    host = site.hub.removeprefix("http://")
    js = put(js, 'apiHost: "hub.example.com/v1", protocol: "https"', f'apiHost: "{host}/v1", protocol: "http"')
    if mode:
        js = put(js, 'protocol: "http"', f'protocol: "http", deliveryStrategy: {json.dumps(mode)}')
    return js


def rudderstack_script(site: Site, key: str, mode: dict[str, Any]) -> str:
    js = snippet('import { RudderAnalytics } from "@rudderstack/analytics-js/bundled";')
    js = put(
        js,
        'import { RudderAnalytics } from "@rudderstack/analytics-js/bundled";',
        "const { RudderAnalytics } = RudderStackSDK;",
    )
    js = put(js, "export const rudderAnalytics =", "window.rudderAnalytics =")
    js = put(js, json.dumps(DOC_KEY), json.dumps(key))
    js = put(js, f"{json.dumps(DOC_HUB)}, {{", f"{json.dumps(site.hub)}, {{")
    js = put(js, f"configUrl: {json.dumps(DOC_HUB)},", f"configUrl: {json.dumps(site.hub)}, ...{json.dumps(mode)},")
    return js


# ---- Segment --------------------------------------------------------------------------------

SEGMENT_MODES = {
    "default": {},
    "batching": {"strategy": "batching", "config": {"size": 10, "timeout": 200}},
    "keepalive": {"config": {"keepalive": True}},
}


@pytest.mark.parametrize("mode", list(SEGMENT_MODES))
async def test_segment_sends_in_every_mode(hub_client, make_key, browser, site, mode):
    key, read = await make_key("touchpoint:web", public=True), await make_key("read")
    site.script = segment_script(site, key, SEGMENT_MODES[mode])
    context, page, requests = await open_page(browser, site, "segment")
    aid = await page.evaluate("analytics.user().then((u) => u.anonymousId())")
    assert aid
    await page.evaluate(
        """Promise.all([
            analytics.page("Washers", {category: "laundry"}),
            analytics.track("Product Viewed", {product_id: "wm-300", price: 499}),
            analytics.identify("u-1", {email: "ann@example.com", plan: "gold"}),
        ])"""
    )
    ref = f"anonymous_id:{aid}"
    expected = ["page", "Product Viewed", "identify"]
    view = await eventually(lambda: timeline(hub_client, read, ref, expected), f"Segment's calls ({mode})")
    await context.close()
    assert hub_posts(site, requests) == ({"/v1/b"} if mode == "batching" else {"/v1/p", "/v1/t", "/v1/i"})

    # one customer, found by the SDK's anonymous id only: the identify is a claim
    assert {(i["namespace"], i["value"]) for i in view["identities"]} == {("anonymous_id", aid)}
    events = {t["type"]: t["data"] for t in view["timeline"]}
    assert events["page"]["name"] == "Washers"
    assert events["page"]["properties"]["category"] == "laundry"
    assert events["page"]["properties"]["url"] == site.url + "/washers?sdk=segment"
    assert events["Product Viewed"]["properties"] == {"product_id": "wm-300", "price": 499}
    assert events["identify"]["traits"] == {"email": "ann@example.com", "plan": "gold"}
    assert events["identify"]["claimed_identities"] == {"user_id": "u-1", "email": "ann@example.com"}
    assert await customer(hub_client, read, "user_id:u-1") is None  # a claim links nobody
    assert await customer(hub_client, read, "email:ann@example.com") is None


async def test_segment_reads_a_413_and_drops_the_call(hub_client, make_key, browser, site):
    """The answer carries the CORS grant, so the SDK sees the 413 (not a network error, which
    it would retry) and reports the call as not delivered."""
    key, read = await make_key("touchpoint:web", public=True), await make_key("read")
    site.script = segment_script(site, key, {})
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(site.url + "/washers?sdk=segment")
    async with asyncio.timeout(TIMEOUT):  # a network error would be retried, and never reported
        failure = await page.evaluate(
            """new Promise((resolve) => {
                analytics.on("error", (e) => resolve([e.code, e.reason.message]));
                analytics.track("Huge", {pad: "x".repeat(600 * 1024)});
            })"""
        )
    assert failure == ["delivery_failure", "Non-retryable error: 413"]
    await page.evaluate('analytics.track("Small", {})')
    aid = await page.evaluate("analytics.user().then((u) => u.anonymousId())")
    await eventually(lambda: timeline(hub_client, read, f"anonymous_id:{aid}", ["Small"]), "the next call")
    await context.close()


# ---- RudderStack ----------------------------------------------------------------------------

RUDDERSTACK_MODES = {
    "default": {},
    "batching": {"queueOptions": {"batch": {"enabled": True, "maxItems": 10, "flushInterval": 200}}},
    "beacon": {"useBeacon": True, "beaconQueueOptions": {"flushQueueInterval": 200}},
}


@pytest.mark.parametrize("mode", list(RUDDERSTACK_MODES))
async def test_rudderstack_sends_in_every_mode(hub_client, make_key, browser, site, mode):
    key, read = await make_key("touchpoint:web", public=True), await make_key("read")
    site.script = rudderstack_script(site, key, RUDDERSTACK_MODES[mode])
    context, page, requests = await open_page(browser, site, "rudderstack")
    await page.evaluate("new Promise((resolve) => rudderAnalytics.ready(resolve))")
    aid = await page.evaluate("rudderAnalytics.getAnonymousId()")
    assert aid
    await page.evaluate(
        """rudderAnalytics.page("Laundry", "Washers", {shelf: 3});
        rudderAnalytics.track("Product Viewed", {product_id: "wm-300", price: 499});
        rudderAnalytics.identify("u-1", {email: "ann@example.com", plan: "gold"});"""
    )
    ref = f"anonymous_id:{aid}"
    expected = ["page", "Product Viewed", "identify"]
    view = await eventually(lambda: timeline(hub_client, read, ref, expected), f"RudderStack's calls ({mode})")
    await context.close()
    paths = {"default": {"/v1/page", "/v1/track", "/v1/identify"}, "batching": {"/v1/batch"}}
    assert hub_posts(site, requests) == paths.get(mode, {"/beacon/v1/batch"})

    assert {(i["namespace"], i["value"]) for i in view["identities"]} == {("anonymous_id", aid)}
    events = {t["type"]: t["data"] for t in view["timeline"]}
    assert events["page"]["name"] == "Washers"
    assert events["page"]["properties"]["shelf"] == 3
    assert events["page"]["properties"]["url"] == site.url + "/washers?sdk=rudderstack"
    assert events["Product Viewed"]["properties"] == {"product_id": "wm-300", "price": 499}
    assert events["identify"]["traits"]["plan"] == "gold"
    assert events["identify"]["claimed_identities"] == {"user_id": "u-1", "email": "ann@example.com"}
    assert await customer(hub_client, read, "user_id:u-1") is None  # a claim links nobody


async def test_rudderstack_beacons_what_is_queued_as_the_page_is_left(hub_client, make_key, browser, site):
    """With its default beacon options RudderStack sends every 10 minutes, at 10 calls, or as
    the page is left (sendBeacon outlives the page)."""
    key, read = await make_key("touchpoint:web", public=True), await make_key("read")
    site.script = rudderstack_script(site, key, {"useBeacon": True})
    context, page, requests = await open_page(browser, site, "rudderstack")
    await page.evaluate("new Promise((resolve) => rudderAnalytics.ready(resolve))")
    aid = await page.evaluate("rudderAnalytics.getAnonymousId()")
    await page.evaluate('rudderAnalytics.track("Basket Left", {items: 2})')
    assert hub_posts(site, requests) == set()  # queued
    await page.goto("about:blank")
    view = await eventually(lambda: timeline(hub_client, read, f"anonymous_id:{aid}", ["Basket Left"]), "the beacon")
    await context.close()
    assert view["timeline"][0]["data"]["properties"] == {"items": 2}


# ---- a page of another origin ---------------------------------------------------------------


async def test_a_page_of_an_origin_not_allowed_sends_nothing(hub_client, make_key, browser, aiohttp_server, bundles):
    key = await make_key("touchpoint:web", public=True)
    other = await serve_site(aiohttp_server, hub_client, bundles, free_port())  # not in allowed_origins
    other.script = "window.ready = true;"
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(other.url + "/washers?sdk=segment")
    message = {"type": "track", "event": "Product Viewed", "anonymousId": "a-1", "messageId": "m-1"}
    # Segment's request: the preflight grants nothing, so the browser never sends the POST
    refused = await page.evaluate(
        """([url, key, body]) => fetch(url, {method: "POST", body,
              headers: {"Content-Type": "text/plain", Authorization: "Basic " + btoa(key + ":")}})
            .then(() => "sent", (e) => e.name)""",
        [other.hub + "/v1/t", key, json.dumps(message)],
    )
    assert refused == "TypeError"
    # a request that needs no preflight (a beacon, a no-cors fetch) reaches the hub: refused, 403
    answered = await page.evaluate(
        """([url, body]) => fetch(url, {method: "POST", mode: "no-cors", body: new Blob([body], {type: "text/plain"})})
            .then((r) => r.type)""",
        [f"{other.hub}/beacon/v1/batch?writeKey={key}", json.dumps({"batch": [message]})],
    )
    assert answered == "opaque"  # answered, the answer hidden from the page
    await context.close()
    read = await make_key("read")
    assert await customer(hub_client, read, "anonymous_id:a-1") is None
