"""Campaigns: a segment's customers get the offer at the campaign's touch points while it runs,
a stable control group is held out, offers and responses are measured and lift can be read."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from positions import after

from prm_core.config import Config
from prm_core.planning.campaigns import in_control
from prm_core.server.state import HUB
from prm_core.store.tables import events

NOW = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def hub_config(database_url: str) -> Config:
    raw = {"privacy": {"defaults": {"marketing": True}}, "touchpoints": {"web": {"budget_ms": 5000}}}
    return Config(database_url=database_url, public_url="http://hub.test", raw=raw)


@pytest.fixture
async def keys(make_key):
    return {scope: await make_key(scope) for scope in ("admin", "read", "touchpoint:web")}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def campaign(**changes) -> dict:
    return {
        "name": "spring",
        "segment": "buyers",
        "offer": {"code": "spring-10", "title": "10% off spring cleaning", "score": 0.8},
        "touchpoints": ["web"],
        "starts_at": (NOW - timedelta(days=1)).isoformat(),
        "ends_at": (NOW + timedelta(days=14)).isoformat(),
        "control_percent": 30,
    } | changes


def sale(i: int, n: int, at: datetime) -> dict:
    return {
        "id": f"sale-{i}-{n}",
        "type": "order.completed",
        "occurred_at": at.isoformat(),
        "identities": {"user_id": f"u{i:02}"},
        "data": {"revenue": "80", "currency": "USD"},
    }


async def test_a_campaign_offers_to_its_segment_holds_out_a_control_group_and_reads_lift(
    hub_client, keys, frozen_clock
):
    frozen_clock.now = NOW
    tp = auth(keys["touchpoint:web"])
    r = await hub_client.post(
        "/v1/segments", json={"name": "buyers", "rule": "purchases >= 1"}, headers=auth(keys["admin"])
    )
    assert r.status == 201
    r = await hub_client.post("/v1/campaigns", json=campaign(), headers=auth(keys["admin"]))
    assert r.status == 201, await r.text()

    customers = 40
    past = [sale(i, 0, NOW - timedelta(days=20)) for i in range(customers)]
    assert (await hub_client.post("/v1/touchpoints/web/events", json={"events": past}, headers=tp)).status == 200
    answers = {}
    for i in range(customers):
        body = {
            "id": f"visit-{i}",
            "type": "page",
            "occurred_at": NOW.isoformat(),
            "identities": {"user_id": f"u{i:02}"},
        }
        r = await hub_client.post("/v1/touchpoints/web/requests", json=body, headers=tp)
        answers[i] = await r.json()
    # a stranger outside the segment never gets it
    stranger = {"id": "visit-x", "type": "page", "occurred_at": NOW.isoformat(), "identities": {"user_id": "nobody"}}
    r = await hub_client.post("/v1/touchpoints/web/requests", json=stranger, headers=tp)
    assert (await r.json())["delivery"]["offers"] == []

    control = {i for i in answers if in_control("spring", answers[i]["customer_id"], 30)}
    assert 0 < len(control) < customers
    for i, answer in answers.items():
        offered = [o for o in answer["delivery"]["offers"] if o["code"] == "spring-10"]
        assert (not offered) == (i in control)

    # responses and purchases after the offer: treated ones buy more
    treated = sorted(set(answers) - control)
    later = NOW + timedelta(hours=5)
    responses = []
    for i in treated[:4]:
        offer_id = answers[i]["delivery"]["offers"][0]["data"]["offer_id"]
        responses.append(
            {
                "id": f"acc-{i}",
                "type": "offer.accepted",
                "occurred_at": later.isoformat(),
                "identities": {"user_id": f"u{i:02}"},
                "data": {"offer_id": offer_id},
            }
        )
    buys = [sale(i, 1, later) for i in treated[:6]] + [sale(i, 1, later) for i in sorted(control)[:1]]
    r = await hub_client.post("/v1/touchpoints/web/events", json={"events": responses + buys}, headers=tp)
    assert r.status == 200
    # the campaign's results read what is recorded: read after the events' position first
    seen = await hub_client.get(f"/v1/customers/user_id:u00{after(await r.json())}", headers=auth(keys["read"]))
    assert seen.status == 200

    body = await (await hub_client.get("/v1/campaigns/spring", headers=auth(keys["read"]))).json()
    results = body["results"]
    assert results["treated"] == {
        "customers": len(treated),
        "converted": 6,
        "conversion_rate": round(6 / len(treated), 4),
        "offers_made": len(treated),
        "accepted": 4,
        "declined": 0,
        # only the sales after the offer count: six of 80 over the treated customers
        "revenue_per_customer": {"USD": f"{Decimal(480) / len(treated):.2f}"},
    }
    assert results["control"] == {
        "customers": len(control),
        "converted": 1,
        "conversion_rate": round(1 / len(control), 4),
        "revenue_per_customer": {"USD": f"{Decimal(80) / len(control):.2f}"},
    }
    expected_lift = round(round(6 / len(treated), 4) / round(1 / len(control), 4) - 1, 4)
    assert results["lift"] == expected_lift
    # Katz's interval of the relative risk, worked out by hand
    nt, nc = len(treated), len(control)
    log_rr = math.log((6 / nt) / (1 / nc))
    se = math.sqrt(1 / 6 - 1 / nt + 1 / 1 - 1 / nc)
    low, high = (math.exp(log_rr + z * se) - 1 for z in (-1.959964, 1.959964))
    assert results["lift_ci95"] == [pytest.approx(low, abs=1e-4), pytest.approx(high, abs=1e-4)]
    assert "roi" not in results

    # with a cost: (extra revenue per treated customer x treated customers - cost) / cost
    r = await hub_client.get("/v1/campaigns/spring?cost=100&currency=USD", headers=auth(keys["read"]))
    results = (await r.json())["results"]
    gained = (Decimal(480) / nt - Decimal(80) / nc) * nt
    assert results["roi"] == pytest.approx(float((gained - 100) / 100), abs=1e-4)
    assert results["cost"] == {"amount": "100", "currency": "USD"}
    # a cost in another currency: none of the revenue is in it, none is converted
    r = await hub_client.get("/v1/campaigns/spring?cost=100&currency=EUR", headers=auth(keys["read"]))
    assert (await r.json())["results"]["roi"] == -1.0
    for query, field in [("cost=-5&currency=USD", "cost"), ("cost=abc&currency=USD", "cost"), ("cost=5", "currency")]:
        r = await hub_client.get(f"/v1/campaigns/spring?{query}", headers=auth(keys["read"]))
        assert r.status == 422 and (await r.json())["error"]["field"] == field

    # an answer dated before its offer was made is refused, naming the time, and nothing is written
    i = treated[5]
    early = {
        "id": f"early-{i}",
        "type": "offer.accepted",
        "occurred_at": (NOW - timedelta(hours=1)).isoformat(),
        "identities": {"user_id": f"u{i:02}"},
        "data": {"offer_id": answers[i]["delivery"]["offers"][0]["data"]["offer_id"]},
    }
    # a page view beside it: refused with it (an answer to an offer is checked while the sender
    # waits, even where events are journaled and recorded behind)
    beside = {
        "id": f"beside-{i}",
        "type": "page.viewed",
        "occurred_at": NOW.isoformat(),
        "identities": early["identities"],
    }
    hub = hub_client.server.app[HUB]
    head = hub.journal.head if hub.journal is not None else 0
    r = await hub_client.post("/v1/touchpoints/web/events", json={"events": [beside, early]}, headers=tp)
    assert r.status == 422
    error = (await r.json())["error"]
    assert (error["code"], error["field"]) == ("before_offer", "occurred_at")
    assert "before its offer was made" in error["message"]
    if hub.journal is not None:
        assert hub.journal.head == head  # nothing journaled
    stored = await hub.store.read(
        lambda conn: conn.execute(
            sa.select(events.c.event_id).where(events.c.event_id.in_([f"early-{i}", f"beside-{i}"]))
        ).all()
    )
    assert stored == []


async def test_a_campaign_outside_its_dates_or_touch_points_offers_nothing(hub_client, keys, frozen_clock):
    frozen_clock.now = NOW
    await hub_client.post(
        "/v1/segments", json={"name": "buyers", "rule": "event_count >= 0"}, headers=auth(keys["admin"])
    )
    future = campaign(starts_at=(NOW + timedelta(days=1)).isoformat(), control_percent=0)
    assert (await hub_client.post("/v1/campaigns", json=future, headers=auth(keys["admin"]))).status == 201
    body = {"id": "v1", "type": "page", "occurred_at": NOW.isoformat(), "identities": {"user_id": "u1"}}
    r = await hub_client.post("/v1/touchpoints/web/requests", json=body, headers=auth(keys["touchpoint:web"]))
    assert (await r.json())["delivery"]["offers"] == []
    hub_client.app[HUB].planner.forget_campaigns()
    frozen_clock.advance(days=2)
    body["id"] = "v2"
    body["occurred_at"] = frozen_clock.now.isoformat()
    r = await hub_client.post("/v1/touchpoints/web/requests", json=body, headers=auth(keys["touchpoint:web"]))
    assert [o["code"] for o in (await r.json())["delivery"]["offers"]] == ["spring-10"]


@pytest.mark.parametrize(
    ("changes", "status", "field"),
    [
        ({"segment": "nope"}, 404, None),
        ({"ends_at": (NOW - timedelta(days=3)).isoformat()}, 422, "ends_at"),
        ({"control_percent": 95}, 422, "control_percent"),
        ({"touchpoints": ["fax"]}, 422, "touchpoints"),
        ({"offer": {"title": "no code"}}, 422, "offer.code"),
        ({"starts_at": "yesterday"}, 422, "starts_at"),
    ],
)
async def test_invalid_campaigns_are_refused(hub_client, keys, changes, status, field):
    await hub_client.post(
        "/v1/segments", json={"name": "buyers", "rule": "purchases >= 1"}, headers=auth(keys["admin"])
    )
    r = await hub_client.post("/v1/campaigns", json=campaign(**changes), headers=auth(keys["admin"]))
    assert r.status == status
    assert (await r.json())["error"]["field"] == field
    assert (await hub_client.get("/v1/campaigns/spring", headers=auth(keys["read"]))).status == 404


def test_the_control_group_is_stable_and_about_the_size_asked():
    ids = [f"cus_{i}" for i in range(2000)]
    held = [c for c in ids if in_control("spring", c, 20)]
    assert held == [c for c in ids if in_control("spring", c, 20)]
    assert 0.17 < len(held) / len(ids) < 0.23
    assert held != [c for c in ids if in_control("autumn", c, 20)]
