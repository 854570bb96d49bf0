"""Snowplow's own browser tracker, from npm, in a real browser, sending to the hub.

``tests/browser_sdk`` pins ``@snowplow/browser-tracker`` (``package.json`` and its
``package-lock.json``); ``entry.js`` exposes the tracker's functions as ``window.snowplow``.
The ``sdk_bundle`` fixture bundles it with ``tests/sdk_bundles.py`` (``npm ci`` and esbuild in
a temp dir, cached by the hash of those files). Without npm the tests skip, except in CI
(``CI`` set), where they fail.

The test page is served by an aiohttp app of its own on another loopback port, so the page is
cross-origin to the hub, whose address is the tracker's collector, as on a real site.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web
from browsing import customer, eventually
from sdk_bundles import build_bundles

from prm_core.config import Config

APP_ID = "shop"
SIGNUP = "iglu:com.acme/signup/jsonschema/1-0-0"
TITLE = "Washers | Example Appliances"


@pytest.fixture
def hub_config(database_url: str) -> Config:
    return Config(
        database_url=database_url,
        public_url="http://hub.test",
        raw={"touchpoints": {"web": {"snowplow_app_ids": [APP_ID]}}},
    )


# ---- the bundle ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sdk_bundle() -> str:
    return (build_bundles() / "snowplow.js").read_text()


# ---- the browser and the site --------------------------------------------------------------


class Site:
    """A web site of its own origin whose pages load the bundled tracker, collector: the hub."""

    def __init__(self, bundle: str) -> None:
        self.bundle = bundle
        self.hub = ""
        self.url = ""

    async def script(self, request: web.Request) -> web.Response:
        return web.Response(text=self.bundle, content_type="application/javascript")

    async def page(self, request: web.Request) -> web.Response:
        config = json.dumps({"appId": APP_ID, "platform": "web", "eventMethod": "post"})
        html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{TITLE}</title>
<script src="/snowplow.js"></script>
<script>window.tracker = snowplow.newTracker("sp", {json.dumps(self.hub)}, {config});</script>
</head><body style="font-family: sans-serif"><h1>Washers</h1><p>Path: {request.path}</p></body></html>"""
        return web.Response(text=html, content_type="text/html")


@pytest.fixture
async def site(aiohttp_server: Any, hub_client: Any, sdk_bundle: str) -> Site:
    site = Site(sdk_bundle)
    app = web.Application()
    app.router.add_get("/snowplow.js", site.script)
    app.router.add_get("/{tail:.*}", site.page)
    server = await aiohttp_server(app)
    site.url = str(server.make_url("")).rstrip("/")
    site.hub = str(hub_client.make_url("")).rstrip("/")
    assert site.url != site.hub  # another origin than the hub's
    return site


# ---- reading the hub -----------------------------------------------------------------------


async def arrived(hub_client: Any, read: str, ref: str, expected: list[str]) -> dict[str, Any] | None:
    """The customer once its timeline's types are exactly ``expected``, else ``None``."""
    view = await customer(hub_client, read, ref)
    if view and sorted(t["type"] for t in view["timeline"]) == sorted(expected):
        return view
    return None


async def visit(context: Any, site: Site, path: str) -> tuple[Any, str]:
    """Open ``path`` and track its page view; the page and the tracker's domain user id (duid)."""
    page = await context.new_page()
    await page.goto(site.url + path)
    await page.evaluate("snowplow.trackPageView()")
    duid = await page.evaluate("tracker.getDomainUserId()")
    assert duid
    return page, duid


async def sp_cookie(context: Any, site: Site) -> list[str]:
    """The fields of the tracker's first-party id cookie ``_sp_id.*``: the duid comes first."""
    cookies = [c["value"] for c in await context.cookies(site.url) if c["name"].startswith("_sp_id.")]
    assert len(cookies) == 1, cookies
    return cookies[0].split(".")


# ---- the tests -----------------------------------------------------------------------------


async def test_the_npm_tracker_sends_a_page_view_and_events(hub_client, make_key, browser, site):
    read = await make_key("read")
    context = await browser.new_context()
    page, duid = await visit(context, site, "/washers")
    assert (await sp_cookie(context, site))[0] == duid
    sid = await page.evaluate("tracker.getDomainSessionId()")
    ref = f"anonymous_id:{duid}"
    await eventually(lambda: arrived(hub_client, read, ref, ["page_view"]), "the page view")

    await page.evaluate(
        """snowplow.trackStructEvent({
            category: "shop", action: "add-to-basket", label: "wm-300", property: "washer", value: 2})"""
    )
    await page.evaluate(
        f"snowplow.trackSelfDescribingEvent({{event: {{schema: {json.dumps(SIGNUP)}, data: {{plan: 'gold'}}}}}})"
    )
    view = await eventually(
        lambda: arrived(hub_client, read, ref, ["add-to-basket", "page_view", "signup"]),
        "the structured and the self-describing event",
    )
    await context.close()

    assert {(i["namespace"], i["value"]) for i in view["identities"]} == {("anonymous_id", duid)}
    timeline = {t["type"]: t for t in view["timeline"]}
    for t in view["timeline"]:
        assert t["data"]["source"] == "snowplow"
        assert t["data"]["app_id"] == APP_ID
        assert t["data"]["platform"] == "web"
        assert t["data"]["url"] == site.url + "/washers"
        assert t["data"]["tracker"].startswith("js-")  # the JavaScript tracker's version
        assert "claimed_identities" not in t["data"]
    assert timeline["page_view"]["data"]["page"] == TITLE
    se = timeline["add-to-basket"]["data"]
    assert (se["category"], se["action"], se["label"], se["property"], se["value"]) == (
        "shop",
        "add-to-basket",
        "wm-300",
        "washer",
        2,
    )
    ue = timeline["signup"]["data"]
    assert (ue["schema"], ue["properties"]) == (SIGNUP, {"plan": "gold"})
    # the tracker's web_page context: one page view id shared by the events of the page
    page_ids = set()
    for t in view["timeline"]:
        (web_page,) = [c for c in t["data"]["contexts"] if "/web_page/" in c["schema"]]
        page_ids.add(web_page["data"]["id"])
    assert len(page_ids) == 1
    # one Snowplow session, one dialogue keyed by its session id
    assert [d["ref"] for d in view["dialogues"]] == [sid]
    assert {t["dialogue"] for t in view["timeline"]} == {view["dialogues"][0]["id"]}


async def test_an_anonymous_visit_and_a_later_event_are_one_customer(hub_client, make_key, browser, site):
    read = await make_key("read")
    context = await browser.new_context()
    page, duid = await visit(context, site, "/washers")
    ref = f"anonymous_id:{duid}"
    await eventually(lambda: arrived(hub_client, read, ref, ["page_view"]), "the first page view")
    await page.close()

    # the next page: a new page load, the same visitor by the first-party cookie
    page, again = await visit(context, site, "/washers/wm-300")
    assert again == duid
    await eventually(lambda: arrived(hub_client, read, ref, ["page_view", "page_view"]), "the second page view")

    # later the visitor logs in: the page's tracker names the user, a claim only (no key)
    await page.evaluate("snowplow.setUserId('u-1')")
    await page.evaluate("snowplow.trackStructEvent({category: 'checkout', action: 'checkout-started'})")
    expected = ["checkout-started", "page_view", "page_view"]
    view = await eventually(lambda: arrived(hub_client, read, ref, expected), "the event after setUserId")
    assert await page.evaluate("tracker.getUserId()") == "u-1"
    cookie = await sp_cookie(context, site)
    assert cookie[0] == duid
    sid = await page.evaluate("tracker.getDomainSessionId()")
    await context.close()

    # ONE customer holding the anonymous page views and the later event
    assert {(i["namespace"], i["value"]) for i in view["identities"]} == {("anonymous_id", duid)}
    pages = sorted(t["data"]["url"] for t in view["timeline"] if t["type"] == "page_view")
    assert pages == [site.url + "/washers", site.url + "/washers/wm-300"]
    claims = {t["type"]: t["data"].get("claimed_identities") for t in view["timeline"]}
    assert claims == {"page_view": None, "checkout-started": {"user_id": "u-1"}}
    assert await customer(hub_client, read, "user_id:u-1") is None  # a claim links nobody
    # one Snowplow session across the two page loads: one dialogue
    assert [d["ref"] for d in view["dialogues"]] == [sid]
    assert {t["dialogue"] for t in view["timeline"]} == {view["dialogues"][0]["id"]}

    # another browser is another visitor: another customer
    other = await browser.new_context()
    _, stranger = await visit(other, site, "/washers")
    assert stranger != duid
    theirs = await eventually(
        lambda: arrived(hub_client, read, f"anonymous_id:{stranger}", ["page_view"]), "the other visitor's page view"
    )
    assert theirs["id"] != view["id"]
    await other.close()
