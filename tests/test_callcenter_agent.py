"""The agent desktop (GET /agent) in headless Chromium driven by Playwright, against a real hub:
sign-in with a one-time code, the pop in words and local time, notes, errors as errors,
two viewport sizes, axe-core, and the page under a path prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from axe_core import serious_violations
from browsing import customer, eventually, screenshot_path
from playwright.async_api import expect
from positions import read_after

from prm_core import hookimpl

CALLER = "+14155550100"


class Profile:
    """The view sections other areas will fill: the caller's name and a booked technician;
    and a label of its own for an event type (``prm_event_labels``)."""

    @hookimpl
    def prm_event_labels(self, config: Any) -> dict[str, str]:
        # a plugin's words replace the core's ("reported a problem")
        return {"service.request": "asked for service", "kiosk.visit": "came by a kiosk"}

    @hookimpl
    def prm_enrich_view(self, view: Any) -> dict[str, Any]:
        return {
            "fulfillments": [
                {
                    "id": "ful-1",
                    "partner": "fieldservice",
                    "role": "field_service",
                    "action": "schedule",
                    "status": "confirmed",
                    "dialogue_id": None,
                    "requested_at": "2026-11-23T08:00:00Z",
                    "updated_at": "2026-11-23T08:00:01Z",
                    "data": {"window_start": "2026-11-24T08:00:00Z", "window_end": "2026-11-24T12:00:00Z"},
                }
            ]
        }


@pytest.fixture
def hub_plugins() -> list[Any]:
    return [Profile()]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


SIZES = {"desktop": {"width": 1280, "height": 900}, "narrow": {"width": 420, "height": 860}}


async def signin_link(hub_client: Any, key: str, agent: str = "a-7") -> str:
    resp = await hub_client.post(f"/v1/agents/{agent}/signin", headers=bearer(key))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["link"] == f"agent#code={body['code']}"
    return str(hub_client.make_url("/" + body["link"]))


async def seed_caller(hub_client: Any, make_key: Any) -> None:
    ivr = await make_key("touchpoint:ivr")
    ivr_events = [
        {
            "id": f"ivr-{i}",
            "type": t,
            "occurred_at": f"2026-11-23T09:0{i}:00Z",
            "identities": {"phone": CALLER},
            "dialogue": "ivr-1",
            "data": data,
        }
        for i, (t, data) in enumerate(
            [("ivr.call.started", {}), ("ivr.menu", {"menu": "repairs"}), ("ivr.input", {"digits": "2"})]
        )
    ]
    resp = await hub_client.post("/v1/touchpoints/ivr/events", json={"events": ivr_events}, headers=bearer(ivr))
    assert resp.status == 200, await resp.text()
    web = await make_key("touchpoint:web")
    request = {
        "id": "web-req-1",
        "type": "service.request",
        "occurred_at": "2026-11-22T18:30:00Z",
        "identities": {"phone": CALLER},
        "data": {"product_id": "wm-300", "issue": "washer leaks"},
    }
    resp = await hub_client.post("/v1/touchpoints/web/events", json=request, headers=bearer(web))
    assert resp.status == 200, await resp.text()
    offer = {
        "id": "offer-1",
        "type": "offer.made",
        "occurred_at": "2026-11-22T18:31:00Z",
        "identities": {"phone": CALLER},
        "direction": "outbound",
        "data": {"offer": "care-plus", "title": "CarePlus 3-year protection"},
    }
    resp = await hub_client.post("/v1/touchpoints/web/events", json=offer, headers=bearer(web))
    assert resp.status == 200, await resp.text()
    admin = await make_key("admin")
    await read_after(hub_client, await resp.json(), f"phone:{CALLER}", bearer(admin))  # the patch names them
    patch = {"tier": "platinum", "traits": {"name": "Ann Example", "language": "de"}}
    resp = await hub_client.patch(f"/v1/customers/phone:{CALLER}", json=patch, headers=bearer(admin))
    assert resp.status == 200, await resp.text()


async def offer_call(hub_client: Any, cti: str, call_id: str = "c-77") -> None:
    call = {"call_id": call_id, "ani": CALLER, "dnis": "+18005550199", "queue": "priority", "agent_id": "a-7"}
    offered = {"id": f"{call_id}-offered", "type": "call.offered", "occurred_at": "2026-11-23T09:05:00Z", "data": call}
    resp = await hub_client.post("/v1/touchpoints/callcenter/events", json=offered, headers=bearer(cti))
    assert resp.status == 200, await resp.text()


async def test_the_page_is_public_but_holds_nothing_and_locks_down_scripts(hub_client):
    resp = await hub_client.get("/agent")
    assert resp.status == 200
    assert "Sign in" in await resp.text()
    policy = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    script = await hub_client.get("/agent/agent.js")
    assert script.headers["Content-Type"].startswith("application/javascript")


async def test_a_read_key_signs_no_agent_in(hub_client, make_key):
    for scope in ("read", "touchpoint:web"):
        resp = await hub_client.post("/v1/agents/a-7/signin", headers=bearer(await make_key(scope)))
        assert resp.status == 403, scope
    resp = await hub_client.post("/v1/agents/a-7/signin", headers=bearer(await make_key("touchpoint:callcenter")))
    assert resp.status == 200
    code = (await resp.json())["code"]
    first = await hub_client.post("/v1/agents/session", json={"code": code})
    assert first.status == 200
    token = (await first.json())["token"]
    again = await hub_client.post("/v1/agents/session", json={"code": code})
    assert again.status == 401  # a code works once
    # the session is the agent's own: not a key, not another agent's pops or notes
    assert (await hub_client.get(f"/v1/customers/phone:{CALLER}", headers=bearer(token))).status == 401
    note = {"id": "n-1", "type": "agent.note", "call_id": "c-1", "text": "hello"}
    other = await hub_client.post("/v1/agents/a-8/events", json=note, headers=bearer(token))
    assert other.status == 403
    # nor a call that was never offered to this agent (another customer's call)
    own = await hub_client.post("/v1/agents/a-7/events", json=note, headers=bearer(token))
    assert own.status == 403 and (await own.json())["error"]["field"] == "call_id"
    assert (await hub_client.post("/v1/agents/a-8/screenpop/tickets", headers=bearer(token))).status == 403
    assert (await hub_client.post("/v1/agents/a-7/screenpop/tickets", headers=bearer(token))).status == 200
    assert (await hub_client.delete("/v1/agents/session", headers=bearer(token))).status == 204
    assert (await hub_client.post("/v1/agents/a-7/screenpop/tickets", headers=bearer(token))).status == 401


@pytest.mark.parametrize("size", sorted(SIZES))
async def test_an_agent_signs_in_by_link_reads_the_pop_in_words_and_saves_a_note(
    hub_client, make_key, browser, tmp_path: Path, size
):
    await seed_caller(hub_client, make_key)
    cti, read = await make_key("touchpoint:callcenter"), await make_key("read")

    context = await browser.new_context(viewport=SIZES[size], locale="en-GB", timezone_id="Europe/Berlin")
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(await signin_link(hub_client, cti))
    await page.wait_for_selector("#status.live")
    assert "code=" not in page.url  # the one-time code left the address bar
    await expect(page.locator("#login")).to_be_hidden()
    await expect(page.locator("#agent-name")).to_have_text("a-7")
    assert await serious_violations(page) == []

    await offer_call(hub_client, cti)
    await page.wait_for_selector("#pop:not([hidden])")
    await expect(page.locator("#caller-name")).to_have_text("Ann Example")
    assert await page.text_content("#caller-tier") == "platinum"
    assert await page.text_content("#caller-language") == "German"
    requests = await page.text_content("#requests")
    assert "washer leaks (wm-300)" in requests
    # local time (Berlin) in words, and the technician's window from the partner
    assert "opened Sun 22 Nov 19:30 at web" in requests
    assert "technician booked Tue 24 Nov 09:00\u201313:00" in requests
    assert await page.text_content("#offers") == "CarePlus 3-year protection"
    recent = await page.text_content("#recent")
    assert "ivr: heard the menu: repairs" in recent
    assert "web: asked for service: washer leaks (wm-300)" in recent
    assert "10:00" in recent  # 09:00 UTC in Berlin
    for wire in ("ivr.menu", "service.request", "offer.made", "T09:0"):
        assert wire not in recent + requests
    assert await serious_violations(page) == []

    # keyboard only: type the note, tab to its button, press Enter
    await page.focus("#note")
    await page.keyboard.type("Washer leaks again; technician booked for tomorrow")
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent") == "Save note"
    await page.keyboard.press("Enter")
    await expect(page.locator("#saved")).to_have_text("Note saved")
    await page.select_option("#outcome", "resolved")
    await page.click("#outcome-form button")
    await expect(page.locator("#saved")).to_have_text("Outcome saved")
    if size == "desktop":
        shot = screenshot_path("agent-desktop.png", tmp_path)
        await page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 0

    async def recorded() -> dict[str, Any] | None:
        view = await customer(hub_client, read, f"phone:{CALLER}")
        calls = [d for d in (view or {}).get("dialogues", []) if d["touchpoint"] == "callcenter"]
        return view if calls and calls[0]["outcome"] == "resolved" else None

    view = await eventually(recorded, "the outcome on the call's dialogue")
    (call_dialogue,) = [d for d in view["dialogues"] if d["touchpoint"] == "callcenter"]
    assert (call_dialogue["ref"], call_dialogue["status"]) == ("c-77", "closed")
    notes = [e for e in view["timeline"] if e["type"] == "agent.note"]
    assert [n["data"]["text"] for n in notes] == ["Washer leaks again; technician booked for tomorrow"]
    assert notes[0]["dialogue"] == call_dialogue["id"] and notes[0]["data"]["agent_id"] == "a-7"

    # a reload resumes: the current call comes back on screen from the agent's kept pops
    await page.reload()
    await page.wait_for_selector("#pop:not([hidden])")
    await expect(page.locator("#caller-name")).to_have_text("Ann Example")

    # the session lives in this tab's sessionStorage, never in localStorage or a cookie; no key at all
    assert await page.evaluate("window.localStorage.length") == 0
    assert (await page.evaluate("sessionStorage.getItem('prm.agent.token')")).startswith("agent_")
    assert await page.evaluate("sessionStorage.getItem('prm.agent.key')") is None
    assert not await context.cookies()
    assert errors == []
    await context.close()


async def test_a_failed_save_is_shown_as_an_error(hub_client, make_key, browser):
    await seed_caller(hub_client, make_key)
    cti = await make_key("touchpoint:callcenter")
    page = await browser.new_page()
    await page.goto(await signin_link(hub_client, cti))
    await page.wait_for_selector("#status.live")
    await offer_call(hub_client, cti, "c-78")
    await page.wait_for_selector("#pop:not([hidden])")
    # the session ends on the hub (as a supervisor's sign-out would): the next save fails
    token = await page.evaluate("sessionStorage.getItem('prm.agent.token')")
    assert (await hub_client.delete("/v1/agents/session", headers=bearer(token))).status == 204
    await page.fill("#note", "this one is not saved")
    await page.click("#note-form button")
    error = page.locator("#save-error")
    await expect(error).to_contain_text("Not saved: the sign-in has ended")
    assert await page.text_content("#saved") == ""
    assert await error.get_attribute("role") == "alert"
    # red on a tinted background, never the success green
    assert await error.evaluate("e => getComputedStyle(e).color") == "rgb(185, 28, 28)"
    assert await page.locator("#saved").evaluate("e => getComputedStyle(e).color") == "rgb(22, 101, 52)"
    assert await serious_violations(page) == []
    await page.close()


async def test_a_wrong_or_used_code_is_refused_at_sign_in(hub_client, make_key, browser):
    page = await browser.new_page()
    await page.goto(str(hub_client.make_url("/agent")))
    assert await serious_violations(page) == []
    await page.fill("#login-code", "not-a-code")
    await page.keyboard.press("Enter")
    await expect(page.locator("#login-error")).to_contain_text("Not signed in: this sign-in code is unknown")
    assert await page.locator("#login-error").evaluate("e => getComputedStyle(e).color") == "rgb(185, 28, 28)"
    assert await page.is_visible("#login")
    assert await page.evaluate("sessionStorage.getItem('prm.agent.token')") is None
    await page.close()


async def test_the_desktop_works_under_a_path_prefix(hub_client, make_key, browser):
    """Behind a proxy that mounts the hub at /hub/, every URL the page uses is relative."""
    from aiohttp import ClientSession, web

    async def forward(request: web.Request) -> web.StreamResponse:
        path = request.match_info["tail"]
        if request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse(protocols=("prm.screenpop.v1",))
            await ws.prepare(request)
            async with (
                ClientSession() as session,
                session.ws_connect(
                    hub_client.make_url("/" + path).with_query(request.query),
                    protocols=("prm.screenpop.v1",),
                ) as up,
            ):
                async for msg in up:
                    await ws.send_str(msg.data)
            return ws
        async with ClientSession() as session:
            headers = {k: v for k, v in request.headers.items() if k in ("Authorization", "Content-Type")}
            async with session.request(
                request.method, hub_client.make_url("/" + path).with_query(request.query),
                headers=headers, data=await request.read(),
            ) as resp:  # fmt: skip
                body = await resp.read()
                keep = {k: v for k, v in resp.headers.items() if k in ("Content-Type", "Content-Security-Policy")}
                return web.Response(status=resp.status, body=body, headers=keep)

    proxy = web.Application()
    proxy.router.add_route("*", "/hub/{tail:.*}", forward)
    runner = web.AppRunner(proxy)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        cti = await make_key("touchpoint:callcenter")
        resp = await hub_client.post("/v1/agents/a-7/signin", headers=bearer(cti))
        link = (await resp.json())["link"]
        page = await browser.new_page()
        seen: list[str] = []
        page.on("request", lambda r: seen.append(r.url))
        await page.goto(f"http://127.0.0.1:{port}/hub/{link}")
        await page.wait_for_selector("#status.live")
        assert await page.locator("link[rel=stylesheet]").evaluate("l => l.sheet !== null")
        assert all(u.startswith(f"http://127.0.0.1:{port}/hub/") for u in seen if u.startswith("http")), seen
        await page.close()
    finally:
        await runner.cleanup()
