"""Tier rules from config, kept current on ingest; a tier set by hand wins and says so."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from positions import after, read_after

from prm_core.config import Config
from prm_core.errors import ConfigError
from prm_core.hub import Hub
from prm_core.planning import Planner
from prm_core.store.tables import customers

RULES = {
    "platinum": "lifetime_revenue >= 5000",
    "gold": "lifetime_revenue >= 1000 or traits['vip'] == true",
    "silver": "purchases >= 2",
}
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def hub_config(database_url: str) -> Config:
    return Config(database_url=database_url, public_url="http://hub.test", raw={"tiers": {"rules": RULES}})


def sale(n: int, email: str, revenue: str, *, days: int = 0) -> dict:
    return {
        "id": f"sale-{email}-{n}",
        "type": "order.completed",
        "occurred_at": (T0 + timedelta(days=days)).isoformat(),
        "identities": {"email": email},
        "data": {"revenue": revenue, "currency": "USD"},
    }


async def record(hub: Hub, *events: dict) -> list:
    return await hub.record(hub.parse_events({"events": list(events)}, "web"))


async def test_the_tier_follows_revenue_as_events_arrive_first_rule_in_order_wins(hub):
    await record(hub, sale(1, "ann@example.com", "400"))
    view = await hub.view("email:ann@example.com")
    assert (view.customer.tier, view.customer.tier_source) == (None, None)

    await record(hub, sale(2, "ann@example.com", "700", days=1))
    view = await hub.view("email:ann@example.com")
    # 1100 matches gold (and silver, written later): the first rule written wins
    assert (view.customer.tier, view.customer.tier_source) == ("gold", "rule")
    assert view.sections["value"]["tier"]["rule"] == RULES["gold"]

    await record(hub, sale(3, "ann@example.com", "4000.50", days=2))
    view = await hub.view("email:ann@example.com")
    assert view.customer.tier == "platinum"
    assert view.sections["value"]["purchases"] == 3
    assert view.metrics["average_sale"] == Decimal("1700.17")


async def test_a_return_lowers_the_tier(hub):
    await record(hub, sale(1, "bo@example.com", "1200"))
    assert (await hub.view("email:bo@example.com")).customer.tier == "gold"
    await record(hub, sale(2, "bo@example.com", "-300", days=1))
    view = await hub.view("email:bo@example.com")
    assert view.customer.tier is None  # 900 left, one sale: no rule matches
    assert view.sections["value"]["purchases"] == 1  # a return is not a purchase


async def test_a_tier_set_by_hand_wins_says_so_and_null_hands_it_back_to_the_rules(hub_client, make_key):
    admin, tp, read = await make_key("admin"), await make_key("touchpoint:web"), await make_key("read")
    r = await hub_client.post(
        "/v1/touchpoints/web/events",
        json={"events": [sale(1, "cy@example.com", "6000")]},
        headers={"Authorization": f"Bearer {tp}"},
    )
    assert r.status == 200
    await read_after(hub_client, await r.json(), "email:cy@example.com", {"Authorization": f"Bearer {read}"})
    r = await hub_client.patch(
        "/v1/customers/email:cy@example.com", json={"tier": "silver"}, headers={"Authorization": f"Bearer {admin}"}
    )
    assert r.status == 200
    body = await r.json()
    assert (body["tier"], body["tier_source"]) == ("silver", "manual")
    assert body["value"]["tier"] == {
        "name": "silver",
        "source": "manual",
        "rule": None,
        "by_rules": "platinum",
        "manual_wins": True,
    }
    # more revenue does not overrule the hand
    r = await hub_client.post(
        "/v1/touchpoints/web/events",
        json={"events": [sale(2, "cy@example.com", "100", days=1)]},
        headers={"Authorization": f"Bearer {tp}"},
    )
    cy = f"/v1/customers/email:cy@example.com{after(await r.json())}"
    view = await (await hub_client.get(cy, headers={"Authorization": f"Bearer {read}"})).json()
    assert (view["tier"], view["tier_source"]) == ("silver", "manual")

    r = await hub_client.patch(
        "/v1/customers/email:cy@example.com", json={"tier": None}, headers={"Authorization": f"Bearer {admin}"}
    )
    body = await r.json()
    assert (body["tier"], body["tier_source"]) == ("platinum", "rule")


async def test_traits_take_part_in_rules(hub):
    (rec,) = await record(hub, sale(1, "di@example.com", "10"))
    await hub.add_traits({rec.customer_id: {"vip": True}})
    assert (await hub.view(rec.customer_id)).customer.tier == "gold"


async def test_a_merge_adds_both_customers_purchases_to_the_survivor(hub):
    await record(hub, sale(1, "ed@example.com", "3000"))
    phone = {
        "id": "sale-phone-1",
        "type": "order.completed",
        "occurred_at": (T0 + timedelta(days=1)).isoformat(),
        "identities": {"phone": "+14155550100"},
        "data": {"revenue": "2500"},
    }
    await record(hub, phone)
    link = {
        "id": "link-1",
        "type": "identify",
        "occurred_at": (T0 + timedelta(days=2)).isoformat(),
        "identities": {"email": "ed@example.com", "phone": "+14155550100"},
    }
    await record(hub, link)
    view = await hub.view("email:ed@example.com")
    assert view.customer.tier == "platinum"
    assert view.sections["value"]["purchases"] == 2
    assert view.sections["value"]["purchase_total"] == "5500.00"


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"gold": "lifetime_revenue >= "}, "[tiers.rules].gold: syntax error"),
        ({"gold": "lifetime_value >= 5"}, "[tiers.rules].gold: unknown name 'lifetime_value'"),
        ({"ok": "order_count > 1", "gold": "kind > 5"}, "[tiers.rules].gold"),
        ({"gold": 5000}, "[tiers.rules].gold: the rule must be a non-empty string"),
    ],
)
async def test_an_invalid_rule_stops_the_hub_at_start_naming_it(database_url, rules, message):
    config = Config(database_url=database_url, raw={"tiers": {"rules": rules}})
    with pytest.raises(ConfigError) as caught:
        async with Hub.open(config, autoload=False):
            pass
    assert message in str(caught.value)


async def test_no_eval_a_rule_cannot_reach_python(database_url):
    config = Config(database_url=database_url, raw={"tiers": {"rules": {"x": "__import__('os').system('true')"}}})
    with pytest.raises(ConfigError, match=r"\[tiers.rules\].x"):
        async with Hub.open(config, autoload=False):
            pass


async def test_tiers_are_written_in_the_recording_transaction(hub):
    """The tier is in the database as soon as record() returns: no follow-up write to lose."""
    await record(hub, sale(1, "fa@example.com", "5000"))
    cid = await hub.resolve("email:fa@example.com")
    row = await hub.store.read(
        lambda conn: conn.execute(
            sa.select(customers.c.tier, customers.c.tier_source).where(customers.c.id == cid)
        ).one()
    )
    assert tuple(row) == ("platinum", "rule")


async def test_rules_reading_per_event_figures_are_evaluated_on_every_event(database_url):
    config = Config(database_url=database_url, raw={"tiers": {"rules": {"engaged": "event_count >= 3"}}})
    async with Hub.open(config, autoload=True) as hub:
        views = [
            {
                "id": f"page-{i}",
                "type": "page",
                "occurred_at": (T0 + timedelta(minutes=i)).isoformat(),
                "identities": {"email": "gu@example.com"},
            }
            for i in range(3)
        ]
        await record(hub, *views[:2])
        assert (await hub.view("email:gu@example.com")).customer.tier is None
        await record(hub, views[2])
        assert (await hub.view("email:gu@example.com")).customer.tier == "engaged"
        assert hub.planner.revenue_only is False


async def test_a_planning_failure_never_loses_the_events(hub, log_capture, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug in planning")

    monkeypatch.setattr(Planner, "_add_purchases", broken)
    (recorded,) = await record(hub, sale(1, "ho@example.com", "9000"))
    view = await hub.view(recorded.customer_id)
    assert [t["event_id"] for t in view.timeline] == [recorded.event.id]
    assert view.metrics["lifetime_revenue"] == Decimal("9000.00")  # the core's metrics committed
    assert view.customer.tier is None  # planning's part was rolled back to its savepoint
    failed = [e for e in log_capture.entries if e.get("event") == "planning on ingest failed; the events are recorded"]
    assert failed and failed[0]["error"] == "RuntimeError"
