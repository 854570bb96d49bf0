"""Business knowledge and offers: catalog accessories, warranty level, entitlements; ranking,
caps per touch point, consent; every offer made recorded and its response measured."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from prm_core.config import Config
from prm_core.errors import ConfigError
from prm_core.hub import Hub
from prm_core.model import Customer, CustomerView, Event, Offer, RecordedEvent, TouchPoint, ValueRequest
from prm_core.planning import entitlements
from prm_core.planning.offers import OfferSettings
from prm_core.store.tables import offers_made

NOW = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)  # a Monday
CATALOG = {
    "items": {
        "wm-300": {
            "title": "WM-300 washer",
            "category": "washer",
            "price": "1299.00",
            "accessories": ["hose-kit", "pedestal"],
            "warranty_levels": ["basic", "extended", "premium"],
        },
        "hose-kit": {"title": "Hose kit", "category": "parts", "price": "29.00"},
        "pedestal": {"title": "Pedestal", "category": "parts", "price": "199.00"},
        "kettle": {"title": "Kettle", "price": "40", "warranty_levels": ["basic", "extended"]},
    }
}


@pytest.fixture
def hub_config(database_url: str) -> Config:
    raw = {
        "catalog": CATALOG,
        "tiers": {"rules": {"platinum": "lifetime_revenue >= 5000", "gold": "lifetime_revenue >= 1000"}},
        "touchpoints": {"web": {"budget_ms": 5000}},
    }
    return Config(database_url=database_url, public_url="http://hub.test", raw=raw)


async def request(hub: Hub, event_id: str, event_type: str = "product.viewed", *, email="ann@example.com", **data):
    (event,) = hub.parse_events(
        {
            "id": event_id,
            "type": event_type,
            "occurred_at": NOW.isoformat(),
            "identities": {"email": email},
            "data": data,
        },
        "web",
    )
    return await hub.request(event)


async def record(hub: Hub, *bodies: dict) -> None:
    await hub.record(hub.parse_events({"events": list(bodies)}, "web"))


def codes(answer) -> list[str]:
    return [o.code for o in answer.delivery.offers]


async def test_looking_at_a_product_brings_its_accessories_and_the_fitting_warranty(hub, frozen_clock):
    frozen_clock.now = NOW
    answer = await request(hub, "r1", product_id="wm-300")
    assert answer.delivery.degraded == ()
    # a premium product (1299 >= 1000) with no claims: one step above basic
    assert codes(answer) == ["accessory:hose-kit", "accessory:pedestal", "warranty:wm-300:extended"]
    catalog = answer.delivery.knowledge["catalog"]["items"]
    assert set(catalog) == {"wm-300", "hose-kit", "pedestal"}
    assert catalog["pedestal"]["price"] == "199.00"


async def test_what_was_bought_is_not_offered_again_and_claims_raise_the_warranty(hub, frozen_clock):
    frozen_clock.now = NOW
    purchase = {
        "id": "o1",
        "type": "order.completed",
        "occurred_at": (NOW - timedelta(days=30)).isoformat(),
        "identities": {"email": "ann@example.com"},
        "data": {"revenue": "1328", "line_items": [{"item_id": "wm-300"}, {"item_id": "hose-kit"}]},
    }
    claim = {
        "id": "c1",
        "type": "warranty.claim",
        "occurred_at": (NOW - timedelta(days=3)).isoformat(),
        "identities": {"email": "ann@example.com"},
        "data": {"product_id": "wm-300"},
    }
    await record(hub, purchase, claim)
    answer = await request(hub, "r1", "page")
    assert "accessory:hose-kit" not in codes(answer)
    assert "accessory:pedestal" in codes(answer)
    # premium product and one claim: the top level
    assert "warranty:wm-300:premium" in codes(answer)


async def test_a_service_request_carries_the_tiers_entitlement(hub, frozen_clock):
    frozen_clock.now = NOW
    big = {
        "id": "o-big",
        "type": "order.completed",
        "occurred_at": (NOW - timedelta(days=1)).isoformat(),
        "identities": {"email": "pat@example.com"},
        "data": {"revenue": "6000"},
    }
    await record(hub, big)
    platinum = await request(hub, "s1", "service.request", email="pat@example.com", product_id="kettle", issue="leak")
    standard = await request(hub, "s2", "service.request", email="new@example.com", issue="noise")
    assert platinum.delivery.offers[0].code == "entitlement:technician:1d"
    assert platinum.delivery.offers[0].data["tier"] == "platinum"
    assert standard.delivery.offers[0].code == "entitlement:technician:5d"


def test_entitlements_count_business_days_and_follow_config():
    friday = datetime(2026, 11, 6, 16, 0, tzinfo=UTC)
    assert entitlements.service_deadline("platinum", friday) == datetime(2026, 11, 9, 16, 0, tzinfo=UTC)
    assert entitlements.service_deadline("gold", friday) == datetime(2026, 11, 10, 16, 0, tzinfo=UTC)
    assert entitlements.service_deadline(None, friday) == datetime(2026, 11, 13, 16, 0, tzinfo=UTC)
    table = entitlements.parse_entitlements({"gold": 3, "silver": 4})
    assert [entitlements.service_days(t, table) for t in ("platinum", "gold", "silver", "bronze")] == [1, 3, 4, 5]
    with pytest.raises(ConfigError, match=r"\[entitlements\].gold"):
        entitlements.parse_entitlements({"gold": "two"})


async def test_offers_are_capped_per_touchpoint(database_url, frozen_clock):
    frozen_clock.now = NOW
    raw = {"catalog": CATALOG, "offers": {"caps": {"web": 2}}, "touchpoints": {"web": {"budget_ms": 5000}}}
    async with Hub.open(Config(database_url=database_url, raw=raw), autoload=True) as hub:
        answer = await request(hub, "r1", product_id="wm-300")
    assert codes(answer) == ["accessory:hose-kit", "accessory:pedestal"]


def value_request(consents: list[dict]) -> ValueRequest:
    event = Event(id="r1", type="page", occurred_at=NOW, touchpoint="web")
    view = CustomerView(customer=Customer(id="cus_1"), consents=tuple(consents))
    tp = TouchPoint(name="web", channel="web", budget_ms=250)
    return ValueRequest(event=RecordedEvent(event, "cus_1", "dlg_1"), touchpoint=tp, view=view, deadline=0.0)


def test_offers_honour_consent_per_purpose_and_channel():
    offers = [
        Offer(code="tip", title="Care tip", score=0.3),
        Offer(code="promo", title="Spring sale", score=0.9, data={"purpose": "marketing"}),
    ]
    settings = OfferSettings()
    shown, _ = settings.select(offers, value_request([]))
    assert [o.code for o in shown] == ["tip"]  # marketing is opt-in
    granted = {"purpose": "marketing", "channel": "web", "granted": True, "recorded_at": "2026-10-01T00:00:00Z"}
    shown, _ = settings.select(offers, value_request([granted]))
    assert [o.code for o in shown] == ["promo", "tip"]
    refused = {"purpose": "personalization", "channel": "*", "granted": False, "recorded_at": "2026-10-02T00:00:00Z"}
    shown, _ = settings.select(offers, value_request([granted, refused]))
    assert [o.code for o in shown] == ["promo"]


def test_the_same_code_is_offered_once_with_its_best_score():
    offers = [Offer(code="a", title="A", score=0.2, source="x"), Offer(code="a", title="A", score=0.7, source="y")]
    shown, _ = OfferSettings().select(offers, value_request([]))
    assert [(o.code, o.source) for o in shown] == [("a", "y")]


async def offers_rows(hub: Hub) -> list:
    return await hub.store.read(lambda conn: list(conn.execute(sa.select(offers_made).order_by(offers_made.c.code))))


async def test_every_offer_made_is_recorded_and_responses_within_the_window_count(hub, frozen_clock):
    frozen_clock.now = NOW
    answer = await request(hub, "r1", product_id="wm-300")
    made = {o.code: o.data["offer_id"] for o in answer.delivery.offers}
    rows = await offers_rows(hub)
    assert {r.code for r in rows} == set(made)
    assert {(r.touchpoint, r.dialogue_id, r.customer_id) for r in rows} == {
        ("web", answer.recorded.dialogue_id, answer.recorded.customer_id)
    }
    # the replayed request makes the same offers, recorded once
    again = await request(hub, "r1", product_id="wm-300")
    assert {o.data["offer_id"] for o in again.delivery.offers} == set(made.values())
    assert len(await offers_rows(hub)) == 3

    def response(event_id: str, kind: str, offer: str, after: timedelta) -> dict:
        return {
            "id": event_id,
            "type": kind,
            "occurred_at": (NOW + after).isoformat(),
            "identities": {"email": "ann@example.com"},
            "data": {"offer_id": made[offer]},
        }

    frozen_clock.advance(hours=73)  # the answers arrive once given: an event is never dated ahead of the hub
    await record(
        hub,
        response("a1", "offer.accepted", "accessory:pedestal", timedelta(hours=2)),
        response("d1", "offer.declined", "accessory:hose-kit", timedelta(hours=1)),
        response("a2", "offer.accepted", "warranty:wm-300:extended", timedelta(hours=73)),  # past the 72 h window
        response("a3", "offer.accepted", "accessory:hose-kit", timedelta(hours=3)),  # already declined
    )
    # someone else cannot answer Ann's offer
    stranger = response("a4", "offer.accepted", "warranty:wm-300:extended", timedelta(hours=1))
    await record(hub, {**stranger, "identities": {"email": "eve@example.com"}})
    rows = {r.code: r for r in await offers_rows(hub)}
    assert rows["accessory:pedestal"].response == "accepted"
    assert rows["accessory:hose-kit"].response == "declined"
    assert rows["warranty:wm-300:extended"].response is None


async def test_a_touch_point_cannot_forge_offers_made(hub, frozen_clock):
    frozen_clock.now = NOW
    forged = {
        "id": "forged",
        "type": "delivery",
        "direction": "outbound",
        "occurred_at": NOW.isoformat(),
        "identities": {"email": "ann@example.com"},
        "data": {"offers_made": [{"id": "ofr_forged", "code": "free-tv"}], "elapsed_ms": 1, "budget_ms": 250},
    }
    await record(hub, forged)
    assert await offers_rows(hub) == []
