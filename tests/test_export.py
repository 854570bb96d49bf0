"""Export: GET /v1/customers/{ref}/export gives everything held about a customer as JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest
from positions import read_after

import prm_core.privacy.export as export_module

EMAIL = "ann@example.com"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def small_pages(monkeypatch):
    # pages of 3, so a dozen events and several dialogues cross page boundaries
    monkeypatch.setattr(export_module, "PAGE", 3)


async def test_export_holds_everything_and_pages_through_the_history(hub_client, make_key, small_pages):
    web, admin = await make_key("touchpoint:web"), await make_key("admin")
    evs = [
        {"id": f"e{i}", "type": "page", "occurred_at": f"2026-11-{10 + i:02d}T08:00:00Z",
         "identities": {"anonymous_id": "dev-1"} if i < 4 else {"email": EMAIL}, "data": {"n": i}}
        for i in range(11)
    ]  # fmt: skip
    evs.append({**evs[0], "id": "link", "identities": {"anonymous_id": "dev-1", "email": EMAIL}})
    evs.append({**evs[0], "id": "c1", "type": "consent.revoked", "data": {"purpose": "marketing"}})
    resp = await hub_client.post("/v1/touchpoints/web/events", json={"events": evs}, headers=bearer(web))
    assert resp.status == 200
    await read_after(hub_client, await resp.json(), f"email:{EMAIL}", bearer(admin))  # the patch names her
    group = await (await hub_client.post("/v1/customers", json={"kind": "group"}, headers=bearer(admin))).json()
    patch = {"traits": {"first_name": "Ann"}, "memberships": {"add": [{"group": group["id"], "role": "owner"}]}}
    await hub_client.patch(f"/v1/customers/email:{EMAIL}", json=patch, headers=bearer(admin))

    resp = await hub_client.get(f"/v1/customers/email:{EMAIL}/export", headers=bearer(admin))
    assert resp.status == 200
    assert resp.content_type == "application/json"
    doc = json.loads(await resp.read())
    assert doc["customer"]["traits"] == {"first_name": "Ann"}
    assert {(i["namespace"], i["value"]) for i in doc["identities"]} == {("email", EMAIL), ("anonymous_id", "dev-1")}
    assert sorted(e["id"] for e in doc["events"]) == sorted(e["id"] for e in evs)
    assert [e["occurred_at"] for e in doc["events"]] == sorted(e["occurred_at"] for e in doc["events"])
    assert {e["id"]: e["data"] for e in doc["events"]}["e7"] == {"n": 7}
    assert len(doc["merged_ids"]) == 1 and len(doc["merges"]) == 1
    assert doc["merges"][0]["merged_id"] == doc["merged_ids"][0]
    assert [(c["purpose"], c["granted"]) for c in doc["consents"]] == [("marketing", False)]
    assert doc["memberships"] == [
        {"group_id": group["id"], "member_id": doc["customer"]["id"], "role": "owner",
         "created_at": doc["memberships"][0]["created_at"]}
    ]  # fmt: skip
    assert doc["metrics"][0]["event_count"] == len(evs)
    dialogue_ids = {e["dialogue_id"] for e in doc["events"]}
    assert {d["id"] for d in doc["dialogues"]} == dialogue_ids
    assert doc["erasure"] is None


async def test_export_of_an_erased_customer_holds_no_personal_data(hub_client, make_key):
    web, admin = await make_key("touchpoint:web"), await make_key("admin")
    ev = {"id": "e1", "type": "page", "occurred_at": "2026-11-23T08:00:00Z", "identities": {"email": EMAIL},
          "data": {"street": "1 Main St"}}  # fmt: skip
    resp = await hub_client.post("/v1/touchpoints/web/events", json=ev, headers=bearer(web))
    await read_after(hub_client, await resp.json(), f"email:{EMAIL}", bearer(admin))  # the erasure finds her
    erased = await (await hub_client.delete(f"/v1/customers/email:{EMAIL}", headers=bearer(admin))).json()
    resp = await hub_client.get(f"/v1/customers/{erased['customer_id']}/export", headers=bearer(admin))
    text = (await resp.read()).decode()
    assert EMAIL not in text and "1 Main St" not in text
    doc: dict[str, Any] = json.loads(text)
    assert doc["erasure"]["customer_id"] == erased["customer_id"]
    assert doc["events"][0]["data"] == {"erased": True}


async def test_export_needs_the_admin_scope_and_a_customer(hub_client, make_key):
    read, admin = await make_key("read"), await make_key("admin")
    assert (await hub_client.get(f"/v1/customers/email:{EMAIL}/export")).status == 401
    assert (await hub_client.get(f"/v1/customers/email:{EMAIL}/export", headers=bearer(read))).status == 403
    resp = await hub_client.get(f"/v1/customers/email:{EMAIL}/export", headers=bearer(admin))
    assert resp.status == 404
    assert (await resp.json())["error"]["code"]
