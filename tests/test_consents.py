"""Consent per purpose and channel: recorded as events or by an admin, shown in the 360 view,
honoured by value delivery."""

from __future__ import annotations

from typing import Any

import pytest
from positions import after

from prm_core import hookimpl
from prm_core.model import Offer, ValueProvider

ANN = {"email": "ann@example.com"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def consent(event_id: str, kind: str, minute: int, **data: Any) -> dict[str, Any]:
    return {
        "id": event_id,
        "type": f"consent.{kind}",
        "occurred_at": f"2026-11-23T08:{minute:02d}:00Z",
        "identities": ANN,
        "data": data,
    }


async def post(client: Any, key: str, body: Any, tp: str = "web") -> Any:
    return await client.post(f"/v1/touchpoints/{tp}/events", json=body, headers=bearer(key))


async def view_of(client: Any, key: str, ref: str = "email:ann@example.com", posted: Any = None) -> dict[str, Any]:
    """The view, with the events of ``posted`` (an events response) in it."""
    query = after(await posted.json()) if posted is not None else ""
    resp = await client.get(f"/v1/customers/{ref}{query}", headers=bearer(key))
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_consent_events_fill_the_view_latest_decision_wins(hub_client, make_key):
    web, read = await make_key("touchpoint:web"), await make_key("read")
    events = [
        consent("c1", "granted", 1, purpose="marketing", channel="email", source="signup-form"),
        consent("c2", "revoked", 5, purpose="marketing", channel="email"),
        consent("c3", "granted", 2, purpose="partner_sharing"),
    ]
    resp = await post(hub_client, web, {"events": events})
    assert resp.status == 200
    # a late arrival of an older decision does not overturn the newer one
    late = consent("c0", "granted", 3, purpose="marketing", channel="email")
    resp = await post(hub_client, web, late)
    assert resp.status == 200
    view = await view_of(hub_client, read, posted=resp)
    assert view["consents"] == [
        {"purpose": "marketing", "channel": "email", "granted": False, "source": "web",
         "recorded_at": "2026-11-23T08:05:00Z"},
        {"purpose": "partner_sharing", "channel": "*", "granted": True, "source": "web",
         "recorded_at": "2026-11-23T08:02:00Z"},
    ]  # fmt: skip
    # the events themselves stay in the timeline as the evidence
    assert {t["type"] for t in view["timeline"]} == {"consent.granted", "consent.revoked"}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({}, "events[1].data.purpose"),
        ({"purpose": "profiling"}, "events[1].data.purpose"),
        ({"purpose": "marketing", "channel": "E Mail"}, "events[1].data.channel"),
        ({"purpose": "marketing", "source": 7}, "events[1].data.source"),
    ],
)
async def test_a_bad_consent_event_writes_nothing(hub_client, make_key, data, field):
    web, read = await make_key("touchpoint:web"), await make_key("read")
    good = consent("ok", "granted", 1, purpose="personalization")
    bad = {**consent("bad", "granted", 2), "data": data}
    resp = await post(hub_client, web, {"events": [good, bad]})
    assert resp.status == 422
    assert (await resp.json())["error"]["field"] == field
    assert (await hub_client.get("/v1/customers/email:ann@example.com", headers=bearer(read))).status == 404


async def test_admin_sets_consents_and_other_scopes_may_not(hub_client, make_key):
    web, read, admin = await make_key("touchpoint:web"), await make_key("read"), await make_key("admin")
    page = {"id": "p1", "type": "page", "occurred_at": "2026-11-23T08:00:00Z", "identities": ANN}
    await view_of(hub_client, read, posted=await post(hub_client, web, page))  # the customer the PUT names
    body = {"consents": [{"purpose": "marketing", "channel": "sms", "granted": True, "source": "call-center"}]}
    url = "/v1/customers/email:ann@example.com/consents"
    assert (await hub_client.put(url, json=body, headers=bearer(read))).status == 403
    assert (await hub_client.put(url, json=body)).status == 401
    resp = await hub_client.put(url, json=body, headers=bearer(admin))
    assert resp.status == 200
    (only,) = (await resp.json())["consents"]
    assert only["purpose"] == "marketing" and only["channel"] == "sms" and only["granted"] is True
    assert only["source"] == "call-center"
    assert (await view_of(hub_client, read))["consents"] == [only]
    bad = await hub_client.put(url, json={"consents": [{"purpose": "marketing"}]}, headers=bearer(admin))
    assert bad.status == 422
    assert (await bad.json())["error"]["field"] == "consents[0].granted"
    missing = await hub_client.put("/v1/customers/email:bob@example.com/consents", json=body, headers=bearer(admin))
    assert missing.status == 404


async def test_consents_follow_merges_and_unmerges(hub_client, make_key):
    web, read, admin = await make_key("touchpoint:web"), await make_key("read"), await make_key("admin")
    anon = {"anonymous_id": "dev-1"}
    given = {**consent("c1", "revoked", 1, purpose="personalization"), "identities": anon}
    await post(hub_client, web, given)
    await post(hub_client, web, {"id": "p1", "type": "page", "occurred_at": "2026-11-23T07:00:00Z", "identities": ANN})
    # one event names both: the two customers merge, and the survivor shows the decision
    link = {"id": "l1", "type": "identify", "occurred_at": "2026-11-23T08:10:00Z", "identities": {**ANN, **anon}}
    view = await view_of(hub_client, read, posted=await post(hub_client, web, link))
    assert [(c["purpose"], c["granted"]) for c in view["consents"]] == [("personalization", False)]
    merges = await (await hub_client.get("/v1/customers/email:ann@example.com/merges", headers=bearer(read))).json()
    (merge,) = merges["merges"]
    assert (await hub_client.post(f"/v1/merges/{merge['id']}/undo", headers=bearer(admin))).status == 200
    assert (await view_of(hub_client, read))["consents"] == []
    assert len((await view_of(hub_client, read, "anonymous_id:dev-1"))["consents"]) == 1


class Personal:
    """A value provider about the customer, one about the business, and an offer plugin
    that reads the customer's traits: what consent must keep out of the answer."""

    __name__ = "personal-test-plugin"

    @hookimpl
    def prm_value_providers(self, config):
        async def purchases(request):
            return {"name": request.view.customer.traits.get("first_name"), "events": len(request.view.timeline)}

        async def opening_hours(request):
            return {"hours": "9-17", "traits_seen": dict(request.view.customer.traits)}

        yield ValueProvider(name="purchases", about="customer", provide=purchases)
        yield ValueProvider(name="hours", about="business", provide=opening_hours)

    @hookimpl
    def prm_propose_offers(self, request):
        name = request.view.customer.traits.get("first_name")
        if name:
            yield Offer(code="for-you", title=f"Something for {name}", score=0.9)
        yield Offer(code="generic", title="Spring sale", score=0.1)


@pytest.fixture
def hub_plugins():
    return [Personal()]


async def ask(client: Any, key: str, event_id: str) -> dict[str, Any]:
    body = {"id": event_id, "type": "info.request", "occurred_at": "2026-11-23T09:00:00Z", "identities": ANN}
    resp = await client.post("/v1/touchpoints/web/requests", json=body, headers=bearer(key))
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_value_delivery_honours_personalization_consent(hub_client, make_key):
    web, admin = await make_key("touchpoint:web"), await make_key("admin")
    page = {"id": "p1", "type": "page", "occurred_at": "2026-11-23T08:00:00Z", "identities": ANN}
    await view_of(hub_client, admin, posted=await post(hub_client, web, page))  # the customer the patch names
    patch = {"traits": {"first_name": "Ann"}, "tier": "gold"}
    await hub_client.patch("/v1/customers/email:ann@example.com", json=patch, headers=bearer(admin))

    answer = (await ask(hub_client, web, "r1"))["delivery"]
    assert answer["customer"]["name"] == "Ann" and answer["customer"]["tier"] == "gold"
    assert answer["knowledge"]["purchases"]["name"] == "Ann"
    assert "for-you" in [o["code"] for o in answer["offers"]]

    # revoked for the web channel: nothing in the answer is about Ann any more
    await post(hub_client, web, consent("c1", "revoked", 30, purpose="personalization", channel="web"))
    answer = (await ask(hub_client, web, "r2"))["delivery"]
    assert answer["customer"]["name"] is None and answer["customer"]["tier"] is None
    assert "purchases" not in answer["knowledge"]
    assert answer["knowledge"]["hours"] == {"hours": "9-17", "traits_seen": {}}
    assert [o["code"] for o in answer["offers"]] == ["generic"]
    assert "Ann" not in str(answer)

    # granted again (later, everywhere): personalized again
    await post(hub_client, web, consent("c2", "granted", 40, purpose="personalization", channel="web"))
    answer = (await ask(hub_client, web, "r3"))["delivery"]
    assert answer["knowledge"]["purchases"]["name"] == "Ann"
