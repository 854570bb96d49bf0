"""Segments: saved rules over the API; members listed in pages and changing as customers change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from positions import read_after

from prm_core.planning import segments as segments_module
from prm_core.server.state import HUB

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def sale(email: str, n: int, revenue: str) -> dict:
    return {
        "id": f"{email}-{n}",
        "type": "order.completed",
        "occurred_at": (T0 + timedelta(hours=n)).isoformat(),
        "identities": {"email": email},
        "data": {"revenue": revenue},
    }


@pytest.fixture
async def keys(make_key):
    return {scope: await make_key(scope) for scope in ("admin", "read", "touchpoint:web")}


async def send(client, keys, *events) -> None:
    r = await client.post(
        "/v1/touchpoints/web/events", json={"events": list(events)}, headers=auth(keys["touchpoint:web"])
    )
    assert r.status == 200, await r.text()
    # segments are read from what is recorded: read after the answer's position
    namespace, value = next(iter(events[0]["identities"].items()))
    await read_after(client, await r.json(), f"{namespace}:{value}", auth(keys["read"]))


async def test_a_segment_is_saved_listed_and_its_members_change_as_customers_do(hub_client, keys):
    body = {"name": "big-spenders", "rule": "lifetime_revenue >= 500", "description": "spent 500 or more"}
    r = await hub_client.post("/v1/segments", json=body, headers=auth(keys["admin"]))
    assert r.status == 201
    assert (await r.json())["rule"] == "lifetime_revenue >= 500"

    await send(hub_client, keys, sale("ann@example.com", 1, "600"), sale("bo@example.com", 2, "100"))
    r = await hub_client.get("/v1/segments/big-spenders/members", headers=auth(keys["read"]))
    page = await r.json()
    ann = (await (await hub_client.get("/v1/customers/email:ann@example.com", headers=auth(keys["read"]))).json())["id"]
    assert [m["id"] for m in page["members"]] == [ann]
    assert page["next_cursor"] is None

    await send(hub_client, keys, sale("bo@example.com", 3, "450"))  # Bo crosses the line
    page = await (await hub_client.get("/v1/segments/big-spenders/members", headers=auth(keys["read"]))).json()
    assert len(page["members"]) == 2

    listed = await (await hub_client.get("/v1/segments", headers=auth(keys["read"]))).json()
    assert [s["name"] for s in listed["segments"]] == ["big-spenders"]

    # replaced by the same name: 200, and the members follow the new rule
    body["rule"] = "lifetime_revenue >= 560"
    r = await hub_client.post("/v1/segments", json=body, headers=auth(keys["admin"]))
    assert r.status == 200
    page = await (await hub_client.get("/v1/segments/big-spenders/members", headers=auth(keys["read"]))).json()
    assert [m["id"] for m in page["members"]] == [ann]

    r = await hub_client.delete("/v1/segments/big-spenders", headers=auth(keys["admin"]))
    assert r.status == 204
    r = await hub_client.get("/v1/segments/big-spenders/members", headers=auth(keys["read"]))
    assert r.status == 404


async def test_members_are_paged_with_a_cursor_and_a_bounded_scan(hub_client, keys, monkeypatch):
    monkeypatch.setattr(segments_module, "MAX_SCAN", 7)
    events = [sale(f"c{i:02}@example.com", i, "50" if i % 3 else "900") for i in range(20)]
    await send(hub_client, keys, *events)
    await hub_client.post("/v1/segments", json={"name": "all", "rule": "event_count >= 1"}, headers=auth(keys["admin"]))
    await hub_client.post(
        "/v1/segments", json={"name": "rare", "rule": "lifetime_revenue > 800"}, headers=auth(keys["admin"])
    )
    seen, cursor = [], ""
    while True:
        page = await (
            await hub_client.get(f"/v1/segments/all/members?limit=6&cursor={cursor}", headers=auth(keys["read"]))
        ).json()
        assert len(page["members"]) <= 6
        seen += [m["id"] for m in page["members"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 20
    assert seen == sorted(seen)

    # a rare segment: pages may come back short (7 customers scanned at most) but never lose anyone
    rare, cursor, pages = [], "", 0
    while True:
        page = await (
            await hub_client.get(f"/v1/segments/rare/members?limit=50&cursor={cursor}", headers=auth(keys["read"]))
        ).json()
        pages += 1
        rare += [m["id"] for m in page["members"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(rare) == 7 and pages == 3


async def test_segment_rules_see_tiers_traits_and_kind(hub_client, keys):
    await send(hub_client, keys, sale("ann@example.com", 1, "5"), sale("bo@example.com", 2, "5"))
    await hub_client.patch(
        "/v1/customers/email:ann@example.com",
        json={"tier": "gold", "traits": {"city": "Oslo"}},
        headers=auth(keys["admin"]),
    )
    rule = "tier == 'gold' and traits['city'] =~ 'Os.*' and kind == 'person'"
    r = await hub_client.post("/v1/segments", json={"name": "oslo-gold", "rule": rule}, headers=auth(keys["admin"]))
    assert r.status == 201
    page = await (await hub_client.get("/v1/segments/oslo-gold/members", headers=auth(keys["read"]))).json()
    assert [m["tier"] for m in page["members"]] == ["gold"]


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"name": "x", "rule": "lifetime_revenue >="}, "rule", "syntax error"),
        ({"name": "x", "rule": "revenue > 5"}, "rule", "unknown name 'revenue'"),
        ({"name": "Bad Name", "rule": "order_count > 1"}, "name", "lower-case"),
        ({"name": "x", "rule": "order_count > 1", "colour": "red"}, "colour", "unknown field"),
        ({"name": "x"}, "rule", "non-empty string"),
    ],
)
async def test_invalid_segments_are_refused_naming_the_field_and_nothing_is_saved(hub_client, keys, body, field, says):
    r = await hub_client.post("/v1/segments", json=body, headers=auth(keys["admin"]))
    assert r.status == 422
    error = (await r.json())["error"]
    assert error["field"] == field and says in error["message"]
    segments = await hub_client.app[HUB].store.read(segments_module.list_segments)
    assert segments == []


async def test_writing_needs_admin_and_reading_needs_read(hub_client, keys):
    body = {"name": "x", "rule": "order_count > 1"}
    assert (await hub_client.post("/v1/segments", json=body)).status == 401
    assert (await hub_client.post("/v1/segments", json=body, headers=auth(keys["read"]))).status == 403
    assert (await hub_client.post("/v1/segments", json=body, headers=auth(keys["admin"]))).status == 201
    assert (await hub_client.get("/v1/segments/x/members", headers=auth(keys["touchpoint:web"]))).status == 403
    assert (await hub_client.delete("/v1/segments/x", headers=auth(keys["read"]))).status == 403
    assert (await hub_client.get("/v1/segments/x", headers=auth(keys["read"]))).status == 200
