"""prm.js in a real browser: headless Chromium (Debian's) driven by Playwright.

The test page is served by an aiohttp app of its own on another loopback port, so the page is
cross-origin to the hub as on a real site; its script tag loads ``/prm.js`` from the hub.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from browsing import TIMEOUT, customer, eventually

# the documented queue stub: calls made before prm.js has loaded are kept
STUB = (
    "window.prm = window.prm || [];"
    '["track", "identify", "page"].forEach((m) => { prm[m] = prm[m] || ((...a) => prm.push([m, ...a])); });'
)


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def hub_url(hub_client: Any) -> str:
    return str(hub_client.make_url("")).rstrip("/")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Site:
    """A web site of its own origin whose pages carry the prm.js script tag.

    ``POST /login`` is the site's own back end confirming who logged in: with a secret
    ``touchpoint:web`` key it tells the hub that the browser's anonymous id (the first-party
    ``prm_aid`` cookie) is this user, which a browser's public key can only claim.
    """

    def __init__(self) -> None:
        self.src = ""  # the script's URL (the hub's /prm.js)
        self.key = ""  # the public key in the page
        self.secret = ""  # the back end's key
        self.hub = ""
        self.host: str | None = None  # data-host, when set
        self.head = ""  # inline code run before prm.js loads
        self.url = ""

    async def page(self, request: web.Request) -> web.Response:
        host = f' data-host="{self.host}"' if self.host else ""
        html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Washers | Example Appliances</title>
<script>{STUB}{self.head}</script>
<script src="{self.src}" data-key="{self.key}"{host} async></script>
</head><body style="font-family: sans-serif"><h1>Washers</h1><p>Path: {request.path}</p></body></html>"""
        return web.Response(text=html, content_type="text/html")

    async def login(self, request: web.Request) -> web.Response:
        form = await request.json()
        message = {
            "messageId": f"login-{form['user_id']}",
            "anonymousId": request.cookies["prm_aid"],
            "userId": form["user_id"],
            "traits": {"email": form["email"]},
        }
        async with ClientSession() as session:
            resp = await session.post(f"{self.hub}/v1/identify", json=message, headers=basic(self.secret))
            assert resp.status == 200, await resp.text()
        return web.Response(status=204)


@pytest.fixture
async def site(aiohttp_server: Any, hub_client: Any) -> Site:
    site = Site()
    app = web.Application()
    app.router.add_post("/login", site.login)
    app.router.add_get("/{tail:.*}", site.page)
    server = await aiohttp_server(app)
    site.url = str(server.make_url("")).rstrip("/")
    site.hub = hub_url(hub_client)
    site.src = site.hub + "/prm.js"
    assert site.url != site.hub  # another origin than the hub's
    return site


async def types_of(hub_client: Any, read: str, ref: str) -> list[str]:
    view = await customer(hub_client, read, ref)
    return sorted(t["type"] for t in view["timeline"]) if view else []


async def queued(page: Any) -> list[dict[str, Any]]:
    return json.loads(await page.evaluate("localStorage.getItem('prm_queue') || '[]'"))


async def loaded(page: Any) -> None:
    await page.wait_for_function("window.prm && window.prm.loaded === true", timeout=TIMEOUT * 1000)


async def test_prm_js_is_public_javascript_with_revalidation(hub_client):
    resp = await hub_client.get("/prm.js")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/javascript; charset=utf-8"
    assert resp.headers["Cache-Control"] == "public, max-age=300"
    etag = resp.headers["ETag"]
    body = await resp.text()
    assert "/v1/batch" in body and "sendBeacon" in body
    again = await hub_client.get("/prm.js", headers={"If-None-Match": etag})
    assert again.status == 304
    assert again.headers["ETag"] == etag
    assert await again.read() == b""
    weak = await hub_client.get("/prm.js", headers={"If-None-Match": f'"other", W/{etag}'})
    assert weak.status == 304
    stale = await hub_client.get("/prm.js", headers={"If-None-Match": '"other"'})
    assert stale.status == 200
    assert await stale.text() == body
    head = await hub_client.head("/prm.js")
    assert head.status == 200


async def test_a_visit_lands_on_one_customer(hub_client, make_key, browser, site, tmp_path: Path):
    key, read = await make_key("touchpoint:web", public=True), await make_key("read")
    site.key, site.secret = key, await make_key("touchpoint:web")
    site.head = 'prm.track("Stub Called", {early: true});'  # before prm.js has loaded
    context = await browser.new_context()
    page = await context.new_page()

    await page.goto(site.url + "/washers")
    await loaded(page)
    aid = await page.evaluate("localStorage.getItem('prm_aid')")
    assert aid and aid == await page.evaluate("prm.anonymousId()")
    ref = f"anonymous_id:{aid}"
    # the automatic page view and the stub's call, sent by fetch (no-cors) to the other origin
    await eventually(
        lambda: _has(hub_client, read, ref, ["Stub Called", "page"]), "the first page view and the stubbed call"
    )

    await page.evaluate("prm.track('Product Viewed', {product_id: 'wm-300'})")
    await page.evaluate("history.pushState({}, '', '/washers/wm-300')")
    await page.evaluate("history.replaceState({scroll: 10}, '', '/washers/wm-300')")  # same URL: no page view
    # a log in: the browser's identify is only a claim (its key is public); the site's back end
    # links the visitor with its secret key, by the prm_aid cookie its request carried
    await page.evaluate("prm.identify('u-1', {email: 'Ann@Example.com', first_name: 'Ann'})")
    await page.evaluate(
        """() => fetch('/login', {method: 'POST', body: JSON.stringify({user_id: 'u-1', email: 'ann@example.com'})})"""
    )
    expected = ["Product Viewed", "Stub Called", "identify", "identify", "page", "page"]
    await eventually(lambda: _has(hub_client, read, ref, expected), "the track, the navigation and the identify")
    await eventually(lambda: _empty(page), "the stored queue to empty")

    site.head = ""
    await page.reload()
    await loaded(page)
    assert await page.evaluate("localStorage.getItem('prm_aid')") == aid  # the same visitor after a reload
    assert await page.evaluate("localStorage.getItem('prm_uid')") == "u-1"
    cookies = {c["name"]: c["value"] for c in await context.cookies(site.url)}
    assert cookies["prm_aid"] == aid  # first-party: the site's own back end can read it
    expected = sorted([*expected, "page"])
    await eventually(lambda: _has(hub_client, read, ref, expected), "the page view after the reload")

    # fetch hangs from now on: only sendBeacon, when the page goes away, can deliver
    await page.evaluate("() => { window.fetch = () => new Promise(() => {}); }")
    await page.evaluate("prm.track('Checkout Started', {step: 1})")
    await asyncio.sleep(0.5)  # past the flush delay: the hung fetch holds it
    assert [m["event"] for m in await queued(page) if m["type"] == "track"] == ["Checkout Started"]
    await page.screenshot(path=str(tmp_path / "visit.png"), full_page=True)
    await page.close(run_before_unload=True)
    expected = sorted([*expected, "Checkout Started"])
    await eventually(lambda: _has(hub_client, read, ref, expected), "the beaconed event after the page closed")
    await context.close()

    view = await customer(hub_client, read, ref)
    assert sorted(t["type"] for t in view["timeline"]) == expected
    assert {(i["namespace"], i["value"]) for i in view["identities"]} == {
        ("anonymous_id", aid),
        ("user_id", "u-1"),
        ("email", "ann@example.com"),
    }
    for other in ("user_id:u-1", "email:ann@example.com"):
        assert (await customer(hub_client, read, other))["id"] == view["id"]
    assert view["traits"]["first_name"] == "Ann"
    claims = [t["data"].get("claimed_identities") for t in view["timeline"] if t["type"] == "identify"]
    assert sorted(claims, key=bool) == [None, {"user_id": "u-1", "email": "ann@example.com"}]
    pages = [t["data"] for t in view["timeline"] if t["type"] == "page"]
    assert sorted(p["properties"]["path"] for p in pages) == ["/washers", "/washers/wm-300", "/washers/wm-300"]
    assert {p["properties"]["title"] for p in pages} == {"Washers | Example Appliances"}
    checkout = next(t for t in view["timeline"] if t["type"] == "Checkout Started")
    assert checkout["data"]["properties"] == {"step": 1}


async def test_messages_queued_while_the_hub_is_unreachable_arrive_after_a_reload(
    hub_client, make_key, browser, site, tmp_path: Path
):
    key, read = await make_key("touchpoint:web", public=True), await make_key("read")
    site.key = key
    site.host = f"http://127.0.0.1:{closed_port()}"  # nothing listens there
    context = await browser.new_context()
    page = await context.new_page()

    async with page.expect_event(
        "requestfailed", lambda r: r.url.endswith("/v1/batch"), timeout=TIMEOUT * 1000
    ) as failed:
        await page.goto(site.url + "/offline")
        await loaded(page)
    await failed.value
    await page.evaluate("prm.track('Offline Event', {n: 1})")
    stored = await eventually(
        lambda: _queued_types(page, ["Offline Event", "page"]), "both messages in the stored queue"
    )
    aid = await page.evaluate("localStorage.getItem('prm_aid')")
    await asyncio.sleep(0.5)  # past the flush delay and a retry: still nothing at the hub
    assert await customer(hub_client, read, f"anonymous_id:{aid}") is None
    await page.screenshot(path=str(tmp_path / "offline.png"), full_page=True)

    site.host = None  # the hub is where prm.js comes from
    await page.reload()
    await loaded(page)
    ref = f"anonymous_id:{aid}"
    await eventually(lambda: _has(hub_client, read, ref, ["Offline Event", "page", "page"]), "the queued messages")
    await eventually(lambda: _empty(page), "the stored queue to empty")
    view = await customer(hub_client, read, ref)
    ids = {t["event_id"] for t in view["timeline"]}
    assert {m["messageId"] for m in stored} <= ids  # delivered as queued, once each
    assert len(view["timeline"]) == 3
    await context.close()


async def _has(hub_client: Any, read: str, ref: str, expected: list[str]) -> bool:
    return await types_of(hub_client, read, ref) == sorted(expected)


async def _empty(page: Any) -> bool:
    return await queued(page) == []


async def _queued_types(page: Any, expected: list[str]) -> list[dict[str, Any]] | None:
    messages = await queued(page)
    types = sorted(m.get("event") or m["type"] for m in messages)
    return messages if types == sorted(expected) else None
