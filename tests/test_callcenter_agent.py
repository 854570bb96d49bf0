"""The agent desktop (GET /agent) in headless Chromium driven by Playwright, against a real hub."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from browsing import customer, eventually
from playwright.async_api import expect

from prm_core import hookimpl

CALLER = "+14155550100"


class Profile:
    """The view sections other areas will fill: the caller's name and a booked technician."""

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


async def test_the_page_is_public_but_holds_nothing_and_locks_down_scripts(hub_client):
    resp = await hub_client.get("/agent")
    assert resp.status == 200
    assert "Sign in" in await resp.text()
    policy = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    script = await hub_client.get("/agent/agent.js")
    assert script.headers["Content-Type"].startswith("application/javascript")


async def test_an_agent_sees_the_pop_writes_a_note_and_sets_the_outcome(hub_client, make_key, browser, tmp_path: Path):
    cti, ivr, read, admin = [await make_key(s) for s in ("touchpoint:callcenter", "touchpoint:ivr", "read", "admin")]
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
        "data": {"product_id": "wm-300", "issue": "drum noise"},
    }
    resp = await hub_client.post("/v1/touchpoints/web/events", json=request, headers=bearer(web))
    assert resp.status == 200, await resp.text()
    patch = {"tier": "platinum", "traits": {"name": "Ann Example"}}
    resp = await hub_client.patch(f"/v1/customers/phone:{CALLER}", json=patch, headers=bearer(admin))
    assert resp.status == 200, await resp.text()

    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(str(hub_client.make_url("/agent")))
    await page.fill("#login-agent", "a-7")
    await page.fill("#login-key", cti)
    await page.click("#login button[type=submit]")
    await page.wait_for_selector("#status.live")
    await expect(page.locator("#login")).to_be_hidden()
    await expect(page.locator("#waiting")).to_be_visible()

    call = {"call_id": "c-77", "ani": CALLER, "dnis": "+18005550199", "queue": "priority", "agent_id": "a-7"}
    offered = {"id": "c-77-offered", "type": "call.offered", "occurred_at": "2026-11-23T09:05:00Z", "data": call}
    resp = await hub_client.post("/v1/touchpoints/callcenter/events", json=offered, headers=bearer(cti))
    assert resp.status == 200, await resp.text()

    await page.wait_for_selector("#pop:not([hidden])")
    assert await page.text_content("#call-id") == "c-77"
    assert await page.text_content("#caller-name") == "Ann Example"
    assert await page.text_content("#caller-tier") == "platinum"
    assert "2026-11-24T08:00:00Z" in await page.text_content("#fulfillments")
    assert "service.request (issue: drum noise, product_id: wm-300)" in await page.text_content("#requests")
    recent = await page.text_content("#recent")
    assert "ivr" in recent and "ivr.menu (menu: repairs)" in recent and "ivr.input (digits: 2)" in recent

    await page.fill("#note", "Drum noise again; technician booked for tomorrow")
    await page.click("#note-form button")
    await expect(page.locator("#saved")).to_have_text("Note saved")
    await page.select_option("#outcome", "resolved")
    await page.click("#outcome-form button")
    await expect(page.locator("#saved")).to_have_text("Outcome saved")
    await page.screenshot(path=str(tmp_path / "agent-desktop.png"), full_page=True)
    assert (tmp_path / "agent-desktop.png").stat().st_size > 0

    async def recorded() -> dict[str, Any] | None:
        view = await customer(hub_client, read, f"phone:{CALLER}")
        calls = [d for d in (view or {}).get("dialogues", []) if d["touchpoint"] == "callcenter"]
        return view if calls and calls[0]["outcome"] == "resolved" else None

    view = await eventually(recorded, "the outcome on the call's dialogue")
    (call_dialogue,) = [d for d in view["dialogues"] if d["touchpoint"] == "callcenter"]
    assert (call_dialogue["ref"], call_dialogue["status"]) == ("c-77", "closed")
    notes = [e for e in view["timeline"] if e["type"] == "agent.note"]
    assert [n["data"]["text"] for n in notes] == ["Drum noise again; technician booked for tomorrow"]
    assert notes[0]["dialogue"] == call_dialogue["id"] and notes[0]["data"]["agent_id"] == "a-7"

    # a reload resumes: the current call comes back on screen from the agent's kept pops
    await page.reload()
    await page.wait_for_selector("#pop:not([hidden])")
    assert await page.text_content("#call-id") == "c-77"
    assert await page.text_content("#caller-name") == "Ann Example"

    # the key lives in this tab's sessionStorage, never in localStorage or a cookie
    assert await page.evaluate("window.localStorage.length") == 0
    assert await page.evaluate("sessionStorage.getItem('prm.agent.key')") == cti
    assert not await page.context.cookies()
    assert errors == []
    await page.close()


async def test_a_refused_key_sends_the_agent_back_to_sign_in(hub_client, make_key, browser):
    web = await make_key("touchpoint:web")
    page = await browser.new_page()
    await page.goto(str(hub_client.make_url("/agent")))
    await page.fill("#login-agent", "a-7")
    await page.fill("#login-key", web)
    await page.click("#login button[type=submit]")
    await expect(page.locator("#login-error")).to_contain_text("grants neither")
    assert await page.is_visible("#login")
    assert await page.evaluate("sessionStorage.getItem('prm.agent.key')") is None
    await page.close()
