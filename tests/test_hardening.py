"""Bad input gets a 4xx, never a 500; public keys only claim identities; replays redo nothing."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from prm_core import hookimpl
from prm_core.model import FulfillmentRequest, FulfillmentResult
from prm_core.view import encode_cursor


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


EVENT = {"id": "e1", "type": "page", "occurred_at": "2026-11-23T08:00:00Z", "identities": {"email": "ann@example.com"}}


@pytest.mark.parametrize(
    ("path", "status"),
    [("/v1/customers/email:", 422), ("/v1/customers/:abc", 422), ("/v1/customers/shoe:42", 422)],
)
async def test_bad_refs_and_cursors_are_4xx(hub_client, make_key, path, status):
    read = await make_key("read")
    resp = await hub_client.get(path, headers=bearer(read))
    assert resp.status == status
    assert (await resp.json())["error"]["field"] == "ref"


async def test_a_cursor_without_an_offset_is_refused(hub_client, make_key):
    web, read = await make_key("touchpoint:web"), await make_key("read")
    await hub_client.post("/v1/touchpoints/web/events", json=EVENT, headers=bearer(web))
    naive = base64.urlsafe_b64encode(b"2026-11-23T08:00:00|5").decode().rstrip("=")
    resp = await hub_client.get(f"/v1/customers/email:ann@example.com?cursor={naive}", headers=bearer(read))
    assert resp.status == 422
    from datetime import UTC, datetime

    good = encode_cursor(datetime(2026, 11, 23, 9, tzinfo=UTC), 99)
    assert (
        await hub_client.get(f"/v1/customers/email:ann@example.com?cursor={good}", headers=bearer(read))
    ).status == 200


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"\xff\xfe{}", 400),
        (b'{"id": "x", "type": "p", "occurred_at": "2026-11-23T08:00:00Z", "data": {"n": NaN}}', 400),
        (b'{"id": "x\\u0000", "type": "p", "occurred_at": "2026-11-23T08:00:00Z"}', 422),
        (b'{"id": "x", "type": "p", "occurred_at": "9999-12-30T00:00:00Z", "sent_at": "0001-01-02T00:00:00Z"}', 422),
    ],
)
async def test_unstorable_input_is_refused(hub_client, make_key, body, status):
    web = await make_key("touchpoint:web")
    resp = await hub_client.post("/v1/touchpoints/web/events", data=body, headers=bearer(web))
    assert resp.status == status
    assert "error" in await resp.json()


async def test_a_huge_revenue_is_not_revenue_and_the_view_still_works(hub_client, make_key):
    web, read = await make_key("touchpoint:web"), await make_key("read")
    body = {**EVENT, "data": {"revenue": 1e30}}
    assert (await hub_client.post("/v1/touchpoints/web/events", json=body, headers=bearer(web))).status == 200
    view = await hub_client.get("/v1/customers/email:ann@example.com", headers=bearer(read))
    assert view.status == 200
    assert (await view.json())["metrics"]["lifetime_revenue"] == "0.00"


async def test_patch_role_is_validated(hub_client, make_key):
    web, admin = await make_key("touchpoint:web"), await make_key("admin")
    await hub_client.post("/v1/touchpoints/web/events", json=EVENT, headers=bearer(web))
    group = await (await hub_client.post("/v1/customers", json={"kind": "group"}, headers=bearer(admin))).json()
    resp = await hub_client.patch(
        "/v1/customers/email:ann@example.com",
        json={"memberships": {"add": [{"group": group["id"], "role": 7}]}},
        headers=bearer(admin),
    )
    assert resp.status == 422
    assert (await resp.json())["error"]["field"] == "memberships.add[0].role"


async def test_a_public_key_only_claims_identities(hub_client, make_key):
    web, public, read = (
        await make_key("touchpoint:web"),
        await make_key("touchpoint:web", public=True),
        await make_key("read"),
    )
    # the victim, known through a verified source
    await hub_client.post("/v1/touchpoints/web/events", json=EVENT, headers=bearer(web))
    claim = {
        "id": "attack",
        "type": "service.request",
        "occurred_at": "2026-11-23T08:05:00Z",
        "identities": {"anonymous_id": "attacker", "email": "ann@example.com"},
    }
    answer = await (await hub_client.post("/v1/touchpoints/web/requests", json=claim, headers=bearer(public))).json()
    victim = await (await hub_client.get("/v1/customers/email:ann@example.com", headers=bearer(read))).json()
    assert answer["customer_id"] != victim["id"]
    assert [t["event_id"] for t in victim["timeline"]] == ["e1"]
    visitor = await (await hub_client.get("/v1/customers/anonymous_id:attacker", headers=bearer(read))).json()
    assert visitor["identities"] == [{"namespace": "anonymous_id", "value": "attacker"}]
    request_event = next(t for t in visitor["timeline"] if t["event_id"] == "attack")
    assert request_event["data"]["claimed_identities"] == {"email": "ann@example.com"}


class Booking:
    """Plans one booking per service request and counts the partner calls."""

    __name__ = "booking"

    def __init__(self) -> None:
        self.calls: list[FulfillmentRequest] = []

    @hookimpl
    def prm_plan_fulfillment(self, request):
        yield FulfillmentRequest(id="f-1", partner="acme", action="schedule", customer_id=request.event.customer_id)

    @hookimpl
    def prm_fulfill(self, request):
        self.calls.append(request)

        async def done():
            return FulfillmentResult(request_id=request.id, partner="acme", status="confirmed")

        return done()


@pytest.fixture
def booking():
    return Booking()


@pytest.fixture
def hub_plugins(booking):
    return [booking]


async def test_a_replayed_request_does_not_ask_partners_again(hub_client, make_key, booking):
    web = await make_key("touchpoint:web")
    req = {**EVENT, "id": "r1", "type": "service.request"}
    first = await (await hub_client.post("/v1/touchpoints/web/requests", json=req, headers=bearer(web))).json()
    again = await (await hub_client.post("/v1/touchpoints/web/requests", json=req, headers=bearer(web))).json()
    assert len(booking.calls) == 1
    assert booking.calls[0].idempotency_key  # set by the core, stable per request turn
    assert first["delivery"]["fulfillments"][0]["status"] == "confirmed"
    assert again["customer_id"] == first["customer_id"]


async def test_one_bad_request_does_not_fail_others_sharing_its_commit(hub_client, make_key):
    web = await make_key("touchpoint:web")
    # too long for its column on PostgreSQL, fine on SQLite: either way the good ones pass
    bad = {**EVENT, "id": "b1", "type": "t" * 100, "dialogue": "d" * 200, "data": {"x": 1}}
    goods = [{**EVENT, "id": f"g{i}", "identities": {"email": f"p{i}@example.com"}} for i in range(20)]
    results = await asyncio.gather(
        *(hub_client.post("/v1/touchpoints/web/events", json=g, headers=bearer(web)) for g in goods),
        hub_client.post("/v1/touchpoints/web/events", data=json.dumps(bad), headers=bearer(web)),
    )
    assert [r.status for r in results[:-1]] == [200] * 20
