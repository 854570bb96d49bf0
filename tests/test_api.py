"""The HTTP API: authentication and scopes, limits, the customer endpoints, OpenAPI."""

from __future__ import annotations

import base64
import json

import pytest
from positions import after

from prm_core.events import MAX_EVENTS_PER_CALL
from prm_core.hub import answer_id
from prm_core.server.app import MAX_BODY_BYTES


def event(n: int = 1, **identities: str) -> dict:
    return {
        "id": f"e{n}",
        "type": "page",
        "occurred_at": "2026-11-23T08:00:00Z",
        "identities": identities or {"email": "ann@example.com"},
    }


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def count_customers(client, read_key: str, ref: str = "email:ann@example.com") -> int:
    resp = await client.get(f"/v1/customers/{ref}", headers=bearer(read_key))
    return 0 if resp.status == 404 else 1


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Bearer prm_0123456789abcdef_notthesecretnotthesecret"}, 401, "unauthorized"),
        ({"Authorization": "Bearer garbage"}, 401, "unauthorized"),
        ({"Authorization": "Basic !!!"}, 401, "unauthorized"),
    ],
)
async def test_writes_without_a_valid_key_are_refused_and_write_nothing(hub_client, make_key, headers, status, code):
    resp = await hub_client.post("/v1/touchpoints/web/events", json=event(), headers=headers)
    assert resp.status == status
    assert (await resp.json())["error"]["code"] == code
    assert await count_customers(hub_client, await make_key("read")) == 0


async def test_scopes(hub_client, make_key):
    web, pos, read, admin = [await make_key(s) for s in ("touchpoint:web", "touchpoint:pos", "read", "admin")]
    wrong = await hub_client.post("/v1/touchpoints/web/events", json=event(), headers=bearer(pos))
    assert wrong.status == 403
    assert "touchpoint:web" in (await wrong.json())["error"]["message"]
    reader = await hub_client.post("/v1/touchpoints/web/events", json=event(), headers=bearer(read))
    assert reader.status == 403
    assert await count_customers(hub_client, read) == 0
    # admin may do anything; a touch point key may not read the view
    assert (await hub_client.post("/v1/touchpoints/web/events", json=event(), headers=bearer(admin))).status == 200
    assert (await hub_client.get("/v1/customers/email:ann@example.com", headers=bearer(web))).status == 403
    patch = await hub_client.patch("/v1/customers/email:ann@example.com", json={"tier": "gold"}, headers=bearer(read))
    assert patch.status == 403


async def test_basic_auth_with_the_key_as_user_name(hub_client, make_key):
    key = await make_key("touchpoint:web")
    token = base64.b64encode(f"{key}:".encode()).decode()
    resp = await hub_client.post(
        "/v1/touchpoints/web/events", json=event(), headers={"Authorization": f"Basic {token}"}
    )
    assert resp.status == 200


async def test_unknown_touchpoint_is_404(hub_client, make_key):
    resp = await hub_client.post("/v1/touchpoints/nope/events", json=event(), headers=bearer(await make_key("admin")))
    assert resp.status == 404
    body = await resp.json()
    assert body["error"]["code"] == "not_found"
    assert "web" in body["error"]["message"]  # says which touch points exist


async def test_limits_give_413_and_write_nothing(hub_client, make_key):
    key, read = await make_key("touchpoint:web"), await make_key("read")
    many = {"events": [event(n) for n in range(MAX_EVENTS_PER_CALL + 1)]}
    resp = await hub_client.post("/v1/touchpoints/web/events", json=many, headers=bearer(key))
    assert resp.status == 413
    assert (await resp.json())["error"]["field"] == "events"
    big = json.dumps({**event(), "data": {"blob": "x" * MAX_BODY_BYTES}})
    resp = await hub_client.post("/v1/touchpoints/web/events", data=big, headers=bearer(key))
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "too_large"
    assert await count_customers(hub_client, read) == 0


async def test_one_bad_event_rejects_the_whole_batch(hub_client, make_key):
    key, read = await make_key("touchpoint:web"), await make_key("read")
    batch = {"events": [event(1), {**event(2), "direction": "sideways"}]}
    resp = await hub_client.post("/v1/touchpoints/web/events", json=batch, headers=bearer(key))
    assert resp.status == 422
    assert (await resp.json())["error"]["field"] == "events[1].direction"
    assert await count_customers(hub_client, read) == 0


async def test_clock_skew_is_corrected_from_sent_at(hub_client, make_key):
    key, read = await make_key("touchpoint:web"), await make_key("read")
    # the client's clock runs one hour behind: it sent "now" as 07:00 on its clock
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    client_now = now - timedelta(hours=1)
    body = {
        "sent_at": client_now.isoformat(),
        "events": [{**event(), "occurred_at": (client_now - timedelta(minutes=5)).isoformat()}],
    }
    resp = await hub_client.post("/v1/touchpoints/web/events", json=body, headers=bearer(key))
    assert resp.status == 200
    ref = f"email:ann@example.com{after(await resp.json())}"
    view = await (await hub_client.get(f"/v1/customers/{ref}", headers=bearer(read))).json()
    stored = datetime.fromisoformat(view["timeline"][0]["occurred_at"])
    assert abs((stored - (now - timedelta(minutes=5))).total_seconds()) < 30


async def test_request_answers_within_budget_and_records_the_answer(hub_client, make_key):
    key, read = await make_key("touchpoint:web"), await make_key("read")
    req = {**event(), "id": "r1", "type": "service.request", "data": {"product_id": "wm-300"}}
    resp = await hub_client.post("/v1/touchpoints/web/requests", json=req, headers=bearer(key))
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == {"customer_id", "dialogue_id", "delivery", "elapsed_ms", "budget_ms", "degraded"}
    assert body["budget_ms"] == 250
    assert body["degraded"] == []
    view = await (await hub_client.get(f"/v1/customers/{body['customer_id']}", headers=bearer(read))).json()
    by_id = {t["event_id"]: t for t in view["timeline"]}
    assert by_id[answer_id("r1")]["direction"] == "outbound"
    assert by_id[answer_id("r1")]["dialogue"] == by_id["r1"]["dialogue"] == body["dialogue_id"]
    assert view["dialogues"][0]["intent"] == "service"
    batch = await hub_client.post("/v1/touchpoints/web/requests", json={"events": [req]}, headers=bearer(key))
    assert batch.status == 422


async def test_patch_customer_sets_traits_tier_and_memberships(hub_client, make_key):
    web, admin = await make_key("touchpoint:web"), await make_key("admin")
    posted = await (await hub_client.post("/v1/touchpoints/web/events", json=event(), headers=bearer(web))).json()
    # the customer the patch names is the one the event makes: read it first
    assert (await hub_client.get(f"/v1/customers/email:ann@example.com{after(posted)}", headers=bearer(admin))).ok
    household = await hub_client.post(
        "/v1/customers", json={"kind": "group", "traits": {"name": "The Smiths"}}, headers=bearer(admin)
    )
    assert household.status == 201
    group_id = (await household.json())["id"]
    resp = await hub_client.patch(
        "/v1/customers/email:ann@example.com",
        json={
            "traits": {"first_name": "Ann", "last_name": "Smith"},
            "tier": "platinum",
            "memberships": {"add": [{"group": group_id, "role": "head"}]},
        },
        headers=bearer(admin),
    )
    assert resp.status == 200, await resp.text()
    view = await resp.json()
    assert view["tier"] == "platinum"
    assert view["tier_source"] == "manual"
    assert view["traits"] == {"first_name": "Ann", "last_name": "Smith"}
    assert view["memberships"] == [{"group_id": group_id, "role": "head", "kind": "group", "name": "The Smiths"}]
    group = await (await hub_client.get(f"/v1/customers/{group_id}", headers=bearer(admin))).json()
    assert [m["id"] for m in group["members"]] == [view["id"]]
    assert group["metrics"]["event_count"] == 1  # the group aggregates its members

    removed = await hub_client.patch(
        "/v1/customers/email:ann@example.com",
        json={"traits": {"last_name": None}, "tier": None, "memberships": {"remove": [group_id]}},
        headers=bearer(admin),
    )
    view = await removed.json()
    assert view["traits"] == {"first_name": "Ann"}
    assert view["tier"] is None and view["tier_source"] is None
    assert view["memberships"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"tier": 5}, "tier"),
        ({"traits": []}, "traits"),
        ({"kind": "robot"}, "kind"),
        ({"colour": "red"}, "colour"),
        ({"memberships": {"add": [{"role": "x"}]}}, "memberships.add[0]"),
    ],
)
async def test_patch_refuses_bad_fields(hub_client, make_key, body, field):
    web, admin = await make_key("touchpoint:web"), await make_key("admin")
    posted = await (await hub_client.post("/v1/touchpoints/web/events", json=event(), headers=bearer(web))).json()
    assert (await hub_client.get(f"/v1/customers/email:ann@example.com{after(posted)}", headers=bearer(admin))).ok
    resp = await hub_client.patch("/v1/customers/email:ann@example.com", json=body, headers=bearer(admin))
    assert resp.status == 422
    assert (await resp.json())["error"]["field"] == field
    view = await (await hub_client.get("/v1/customers/email:ann@example.com", headers=bearer(admin))).json()
    assert view["tier"] is None and view["traits"] == {} and view["kind"] == "person"


async def test_timeline_is_paged_newest_first(hub_client, make_key):
    web, read = await make_key("touchpoint:web"), await make_key("read")
    events = [{**event(n), "occurred_at": f"2026-11-23T08:{n:02d}:00Z"} for n in range(25)]
    posted = await hub_client.post("/v1/touchpoints/web/events", json={"events": events}, headers=bearer(web))
    seen: list[str] = []
    cursor = None
    while True:
        query = f"?limit=10&cursor={cursor}" if cursor else f"?limit=10{after(await posted.json(), '&')}"
        page = await (await hub_client.get(f"/v1/customers/email:ann@example.com{query}", headers=bearer(read))).json()
        seen += [t["event_id"] for t in page["timeline"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"e{n}" for n in reversed(range(25))]
    bad = await hub_client.get("/v1/customers/email:ann@example.com?cursor=zzz", headers=bearer(read))
    assert bad.status == 422
    assert (await bad.json())["error"]["field"] == "cursor"


async def test_customer_refs(hub_client, make_key):
    read = await make_key("read")
    for ref, status in [("cus_nope", 404), ("email:nobody@example.com", 404), ("shoe:42", 422), ("phone:abc", 422)]:
        resp = await hub_client.get(f"/v1/customers/{ref}", headers=bearer(read))
        assert resp.status == status, ref
        assert "error" in await resp.json()


async def test_touchpoints_health_and_metrics(hub_client, make_key):
    read = await make_key("read")
    tps = (await (await hub_client.get("/v1/touchpoints", headers=bearer(read))).json())["touchpoints"]
    budgets = {t["name"]: t["budget_ms"] for t in tps}
    assert budgets == {"web": 250, "callcenter": 1000, "ivr": 1500, "pos": 300}
    assert (await (await hub_client.get("/healthz")).json())["status"] == "ok"
    web = await make_key("touchpoint:web")
    await hub_client.post("/v1/touchpoints/web/events", json=event(), headers=bearer(web))
    await hub_client.post("/v1/touchpoints/web/events", json=event(), headers=bearer(web))
    text = await (await hub_client.get("/metrics")).text()
    assert 'prm_events_total{touchpoint="web"} 1.0' in text
    assert 'prm_event_duplicates_total{touchpoint="web"} 1.0' in text


async def test_unknown_path_and_method_are_json_errors(hub_client):
    resp = await hub_client.get("/v1/nothing-here")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"
    resp = await hub_client.delete("/v1/touchpoints")
    assert resp.status == 405
    assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_openapi_describes_every_mounted_route(hub_client):
    spec = await (await hub_client.get("/openapi.json")).json()
    mounted = {
        (route.resource.canonical, route.method.lower())
        for route in hub_client.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    described = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert described == mounted
    events_op = spec["paths"]["/v1/touchpoints/{tp}/events"]["post"]
    assert events_op["x-prm-scope"] == "touchpoint:{tp}"
    assert {"401", "403", "404", "413", "422"} <= set(events_op["responses"])
    # the scorecard is mounted (planning) and says the scope it needs
    assert spec["paths"]["/v1/scorecard"]["get"]["x-prm-scope"] == "read"


async def test_a_shared_household_phone_links_without_merging(hub_client, make_key):
    web, admin = await make_key("touchpoint:web"), await make_key("admin")

    async def send(n: int, minute: int, **identities: str) -> str:
        body = {**event(n, **identities), "occurred_at": f"2026-11-23T08:{minute:02d}:00Z"}
        resp = await hub_client.post("/v1/touchpoints/web/events", json=body, headers=bearer(web))
        assert resp.status == 200
        return after(await resp.json())

    # Ann's phone is hers before it is marked shared
    read_after = await send(1, 0, email="ann@example.com", phone="+14155550100")
    assert (await hub_client.get(f"/v1/customers/email:ann@example.com{read_after}", headers=bearer(admin))).ok
    marked = await hub_client.put("/v1/identities/phone:(415) 555-0100", json={"shared": True}, headers=bearer(admin))
    assert marked.status == 200, await marked.text()
    assert (await marked.json())["value"] == "+14155550100"
    read_after = await send(2, 1, email="bob@example.com", phone="+14155550100")
    ann = await (await hub_client.get(f"/v1/customers/email:ann@example.com{read_after}", headers=bearer(admin))).json()
    bob = await (await hub_client.get(f"/v1/customers/email:bob@example.com{read_after}", headers=bearer(admin))).json()
    assert ann["id"] != bob["id"]
    assert {"namespace": "phone", "value": "+14155550100", "shared": True} in bob["identities"]
    # a call from the household phone alone goes to whoever was seen with it last
    read_after = await send(3, 2, phone="+14155550100")
    bob = await (await hub_client.get(f"/v1/customers/email:bob@example.com{read_after}", headers=bearer(admin))).json()
    assert bob["metrics"]["event_count"] == 2
    bad = await hub_client.put("/v1/identities/phone:+14155550100", json={"shared": "yes"}, headers=bearer(admin))
    assert bad.status == 422
    assert (await hub_client.put("/v1/identities/x", json={"shared": True}, headers=bearer(admin))).status == 422
