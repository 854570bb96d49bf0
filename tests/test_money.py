"""Money in its currency: ``[money]`` names the reporting currency and the rates into it;
tiers, the value model, CLV and the scorecard convert with them, and keep amounts in a currency
without a rate apart and flagged, never added. A bad currency or rate stops the hub naming it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from prm_core.cli import main
from prm_core.clock import FrozenClock
from prm_core.config import Config
from prm_core.errors import ConfigError
from prm_core.hub import Hub
from prm_core.planning.fit import fit_value_model
from prm_core.planning.money import Money
from prm_core.planning.scorecard import scorecard

NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
DOC = (Path(__file__).parents[1] / "docs" / "planning.md").read_text(encoding="utf-8")
RULES = {"gold": "lifetime_revenue >= 1000"}
EUR = {"reporting_currency": "EUR"}
EUR_WITH_RATES = {"reporting_currency": "EUR", "rates": {"USD": 0.92, "GBP": 1.17}}


def config(database_url: str, money: dict[str, Any] | None = None, **more: Any) -> Config:
    raw: dict[str, Any] = {"tiers": {"rules": RULES}, **more}
    if money is not None:
        raw["money"] = money
    return Config(database_url=database_url, public_url="http://hub.test", raw=raw)


def sale(key: str, who: str, revenue: str, currency: str | None, *, days: float = 1) -> dict:
    data: dict[str, Any] = {"revenue": revenue}
    if currency:
        data["currency"] = currency
    return {
        "id": f"sale-{key}",
        "type": "order.completed",
        "occurred_at": (NOW - timedelta(days=days)).isoformat(),
        "identities": {"email": who},
        "data": data,
    }


async def record(hub: Hub, *events: dict, touchpoint: str = "web") -> None:
    await hub.record(hub.parse_events({"events": list(events)}, touchpoint))


# ann: 600 EUR and 600 USD; bob: 1200 EUR; cy: 50 GBP and 20 with no currency
SALES = [
    sale("a1", "ann@example.com", "600", "EUR", days=3),
    sale("a2", "ann@example.com", "600", "USD", days=2),
    sale("b1", "bob@example.com", "1200", "EUR", days=2),
    sale("c1", "cy@example.com", "50", "GBP", days=1),
    sale("c2", "cy@example.com", "20", None, days=1),
]


# ---- the conversion ----------------------------------------------------------------------


def test_a_figure_is_one_amount_only_when_every_currency_has_a_rate():
    money = Money.from_config(Config(raw={"money": EUR_WITH_RATES}))
    assert money.total({"EUR": Decimal("10"), "USD": Decimal("100"), "XXX": Decimal("1")}) == Decimal("103.00")
    assert money.total({"EUR": Decimal("10"), "JPY": Decimal("100")}) is None
    # an amount of zero in a currency without a rate (a sale and its return) hides nothing
    assert money.total({"EUR": Decimal("10"), "JPY": Decimal("0")}) == Decimal("10")
    assert money.figure({"EUR": Decimal("10"), "JPY": Decimal("100")}) == {
        "amount": None,
        "currency": "EUR",
        "by_currency": {"EUR": "10.00", "JPY": "100.00"},
        "mixed_currencies": ["EUR", "JPY"],
    }
    assert Money().currency == "USD" and Money().total({"USD": Decimal(5), "EUR": Decimal(5)}) is None


def test_the_older_key_is_the_reporting_currency():
    assert Money.from_config(Config(raw={"planning": {"currency": "EUR"}})).currency == "EUR"
    both = {"planning": {"currency": "EUR"}, "money": {"reporting_currency": "EUR"}}
    assert Money.from_config(Config(raw=both)).currency == "EUR"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"money": {"reporting_currency": "EUX"}}, "[money].reporting_currency must be an ISO 4217 code"),
        ({"money": {"reporting_currency": "eur"}}, "[money].reporting_currency must be an ISO 4217 code"),
        ({"money": {"rates": {"XYZ": 1.5}}}, "[money.rates].XYZ: 'XYZ' is not an ISO 4217 currency code"),
        ({"money": {"rates": {"EUR": 0}}}, "[money.rates].EUR must be a positive number, not 0"),
        ({"money": {"rates": {"EUR": -1.1}}}, "[money.rates].EUR must be a positive number, not -1.1"),
        ({"money": {"rates": {"EUR": float("nan")}}}, "[money.rates].EUR must be a positive number, not nan"),
        ({"money": {"rates": {"EUR": "lots"}}}, "[money.rates].EUR must be a positive number, not 'lots'"),
        ({"money": {"rates": {"EUR": True}}}, "[money.rates].EUR must be a positive number"),
        ({"money": {"rates": {"USD": 2}}}, "[money.rates].USD is the reporting currency itself: its rate is 1"),
        ({"money": {"rates": 0.9}}, "[money].rates must be a table"),
        ({"money": {"currency": "EUR"}}, "[money].currency is not a money setting"),
        ({"money": "EUR"}, "[money] must be a table"),
        ({"money": {"reporting_currency": "XXX"}}, "[money].reporting_currency must be an ISO 4217 code"),
        ({"money": {"rates": {"XXX": 1}}}, "[money.rates].XXX: 'XXX' is not an ISO 4217 currency code"),
        ({"planning": {"currency": "EURO"}}, "[planning].currency must be an ISO 4217 code"),
        (
            {"planning": {"currency": "USD"}, "money": {"reporting_currency": "EUR"}},
            "[planning].currency (USD) differs from [money].reporting_currency (EUR); keep one",
        ),
    ],
)
async def test_a_bad_money_setting_stops_the_hub_naming_the_key(database_url, raw, message):
    with pytest.raises(ConfigError) as stopped:
        async with Hub.open(Config(database_url=database_url, raw=raw), autoload=True):
            pass
    assert str(stopped.value).startswith(message)
    assert "\n" not in str(stopped.value)


@pytest.mark.parametrize(
    ("toml", "line"),
    [
        (
            "[money.rates]\nUSD = 0\n[money]\nreporting_currency = 'EUR'\n",
            "[money.rates].USD must be a positive number, not 0",
        ),
        (
            "[money]\nreporting_currency = 'EUX'\n",
            "[money].reporting_currency must be an ISO 4217 code such as USD or EUR, not 'EUX'",
        ),
    ],
)
def test_a_bad_money_setting_is_one_line_naming_the_key(tmp_path, toml, line):
    (tmp_path / "prm.toml").write_text(toml)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRM_")}
    done = subprocess.run(
        [sys.executable, "-m", "prm_core.cli", "serve", "--port", "0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == f"Error: {line}"
    assert "Traceback" not in done.stderr
    assert f"\n{line}\n" in DOC  # docs/planning.md shows the line as it is


async def test_a_cost_in_an_unknown_currency_is_a_422_naming_the_field(hub_client, make_key):
    read = {"Authorization": f"Bearer {await make_key('read')}"}
    for bad in ("EUX", "usd", "EURO"):
        r = await hub_client.get(f"/v1/campaigns/spring?cost=100&currency={bad}", headers=read)
        assert r.status == 422
        assert (await r.json())["error"]["field"] == "currency"


# ---- tiers, the view and rules -----------------------------------------------------------------


async def test_without_a_rate_revenue_is_kept_apart_flagged_and_matches_no_revenue_rule(database_url, frozen_clock):
    frozen_clock.now = NOW
    async with Hub.open(config(database_url, EUR), autoload=True) as hub:
        await record(hub, *SALES)
        ann = await hub.view("email:ann@example.com")
        bob = await hub.view("email:bob@example.com")
        cy = await hub.view("email:cy@example.com")

    # 600 EUR + 600 USD is not 1200 of anything: no gold, no figure, the currencies named
    assert ann.customer.tier is None
    assert ann.metrics["lifetime_revenue"] is None and ann.metrics["average_sale"] is None
    assert ann.metrics["currency"] == "EUR" and ann.metrics["mixed_currencies"] == ["EUR", "USD"]
    assert ann.metrics["revenue_by_currency"] == {"EUR": "600.00", "USD": "600.00"}  # recorded, nothing lost
    value = ann.sections["value"]
    assert value["currency"] == "EUR"
    assert value["purchase_total"] is None
    assert value["purchase_total_by_currency"] == {"EUR": "600.00", "USD": "600.00"}
    assert value["lifetime_revenue"] == {
        "amount": None,
        "currency": "EUR",
        "by_currency": {"EUR": "600.00", "USD": "600.00"},
        "mixed_currencies": ["EUR", "USD"],
    }
    assert value["mixed_currencies"] == ["EUR", "USD"]
    assert value["m_score"] is None and value["rfm"] is None and value["r_score"] is not None

    # all in the reporting currency: one amount, and the rule matches
    assert bob.customer.tier == "gold"
    assert bob.metrics["lifetime_revenue"] == Decimal("1200.00")
    assert bob.sections["value"]["lifetime_revenue"]["mixed_currencies"] == []
    # revenue without a currency counts in the reporting currency; GBP has no rate
    assert cy.metrics["mixed_currencies"] == ["GBP", "XXX"]
    assert cy.metrics["lifetime_revenue"] is None


async def test_revenue_in_one_currency_is_shown_as_recorded_in_the_view(database_url, frozen_clock):
    frozen_clock.now = NOW
    async with Hub.open(config(database_url, EUR_WITH_RATES), autoload=True) as hub:
        await record(hub, sale("d1", "dan@example.com", "1000", "USD"), sale("d2", "dan@example.com", "200", "USD"))
        dan = await hub.view("email:dan@example.com")
    # dollars only: the view shows dollars; rules and figures across customers see euros
    assert (dan.metrics["lifetime_revenue"], dan.metrics["currency"]) == (Decimal("1200.00"), "USD")
    assert dan.metrics["average_sale"] == Decimal("600.00")
    assert dan.sections["value"]["lifetime_revenue"]["amount"] == "1104.00"
    assert dan.customer.tier == "gold"  # 1104 EUR >= 1000


async def test_with_rates_revenue_is_converted_into_the_reporting_currency(database_url, frozen_clock):
    frozen_clock.now = NOW
    async with Hub.open(config(database_url, EUR_WITH_RATES), autoload=True) as hub:
        await record(hub, *SALES)
        ann = await hub.view("email:ann@example.com")
        cy = await hub.view("email:cy@example.com")

    # 600 EUR + 600 USD x 0.92 = 1152 EUR: gold
    assert ann.customer.tier == "gold"
    assert ann.metrics["lifetime_revenue"] == Decimal("1152.00")
    assert ann.metrics["average_sale"] == Decimal("576.00")
    assert ann.metrics["mixed_currencies"] == []
    value = ann.sections["value"]
    assert value["purchase_total"] == "1152.00"
    assert value["lifetime_revenue"]["amount"] == "1152.00"
    assert value["lifetime_revenue"]["by_currency"] == {"EUR": "600.00", "USD": "600.00"}
    assert value["m_score"] is not None
    # 50 GBP x 1.17 + 20 without a currency
    assert cy.metrics["lifetime_revenue"] == Decimal("78.50")


async def test_a_rule_can_name_the_currency_it_means(database_url, frozen_clock):
    frozen_clock.now = NOW
    rules = {"usd-buyers": "revenue_by_currency['USD'] >= 500", "apart": "'USD' in mixed_currencies"}
    async with Hub.open(config(database_url, EUR), autoload=True) as hub:
        await record(hub, *SALES)
        for name, rule in rules.items():
            await hub.store.write(lambda conn, n=name, r=rule: _save_segment(conn, n, r))
        found = {name: await _members(hub, name) for name in rules}
    assert found == {"usd-buyers": ["ann@example.com"], "apart": ["ann@example.com"]}


def _save_segment(conn: Any, name: str, rule: str) -> None:
    from prm_core.planning.segments import parse_segment, save_segment

    name, compiled, description = parse_segment({"name": name, "rule": rule})
    save_segment(conn, name, compiled, description, NOW)


async def _members(hub: Hub, name: str) -> list[str]:
    from prm_core.planning.segments import get_segment, members

    def read(conn: Any) -> list[dict[str, Any]]:
        return members(conn, hub.planner, get_segment(conn, name), after="", limit=50, now=NOW)[0]

    found = await hub.store.read(read)
    # a member's revenue says its currency, and what it keeps apart
    assert all(m["currency"] == hub.planner.money.currency and "mixed_currencies" in m for m in found)
    assert all(m["lifetime_revenue"] is None for m in found if m["mixed_currencies"])
    emails = []
    for m in found:
        view = await hub.view(m["id"])
        emails += [i.value for i in view.identities if i.namespace == "email"]
    return sorted(emails)


async def test_a_merge_keeps_each_currency_of_both_customers(database_url, frozen_clock):
    frozen_clock.now = NOW
    async with Hub.open(config(database_url, EUR_WITH_RATES), autoload=True) as hub:
        await record(hub, sale("m1", "dee@example.com", "100", "EUR", days=3))
        phone = sale("m2", "unused", "100", "USD", days=2)
        phone["identities"] = {"phone": "+14155550100"}
        await record(hub, phone)
        both = {
            "id": "link",
            "type": "identify",
            "occurred_at": NOW.isoformat(),
            "identities": {"email": "dee@example.com", "phone": "+14155550100"},
        }
        await record(hub, both)
        view = await hub.view("email:dee@example.com")
    value = view.sections["value"]
    assert value["purchases"] == 2
    assert value["purchase_total_by_currency"] == {"EUR": "100.00", "USD": "100.00"}
    assert value["purchase_total"] == "192.00"


# ---- the scorecard ---------------------------------------------------------------------------


async def _card(hub: Hub) -> dict[str, Any]:
    names = hub.registrations.touchpoints.names()
    return await hub.store.read(lambda conn: scorecard(conn, names, NOW, days=7, money=hub.planner.money))


async def test_the_scorecard_keeps_currencies_without_a_rate_apart_and_flags_them(database_url, frozen_clock):
    frozen_clock.now = NOW
    async with Hub.open(config(database_url, EUR), autoload=True) as hub:
        await record(hub, *SALES)
        await record(hub, sale("p1", "bob@example.com", "30", "EUR"), touchpoint="pos")
        card = await _card(hub)
    assert card["currency"] == "EUR" and card["rates"] == {}
    assert card["mixed_currencies"] == ["EUR", "GBP", "USD", "XXX"]
    tps = {t["touchpoint"]: t for t in card["touchpoints"]}
    web = tps["web"]
    assert web["revenue"] is None
    assert web["revenue_by_currency"] == {"EUR": "1800.00", "GBP": "50.00", "USD": "600.00", "XXX": "20.00"}
    assert web["mixed_currencies"] == ["EUR", "GBP", "USD", "XXX"]
    assert tps["pos"]["revenue"] == "30.00" and tps["pos"]["mixed_currencies"] == []
    daily = [d for d in card["daily"] if d["touchpoint"] == "web" and d["revenue_by_currency"].get("USD")]
    assert daily and daily[0]["revenue"] is None
    by_tier = {t["tier"]: t for t in card["balanced"]["by_tier"]}
    assert by_tier["gold"]["revenue"] == "1230.00"  # bob: euros only
    assert by_tier["gold"]["mixed_currencies"] == []
    assert by_tier[None]["revenue"] is None
    assert by_tier[None]["revenue_by_currency"] == {"EUR": "600.00", "GBP": "50.00", "USD": "600.00", "XXX": "20.00"}
    # no share of a total that cannot be added
    assert all(t["revenue_share"] is None for t in card["balanced"]["by_tier"])


async def test_the_scorecard_converts_with_rates(database_url, frozen_clock):
    frozen_clock.now = NOW
    async with Hub.open(config(database_url, EUR_WITH_RATES), autoload=True) as hub:
        await record(hub, *SALES)
        card = await _card(hub)
    assert card["mixed_currencies"] == [] and card["rates"] == {"GBP": "1.17", "USD": "0.92"}
    (web,) = [t for t in card["touchpoints"] if t["touchpoint"] == "web"]
    # 1800 EUR + 600 USD x 0.92 + 50 GBP x 1.17 + 20 without a currency
    assert web["revenue"] == "2430.50"
    by_tier = {t["tier"]: t for t in card["balanced"]["by_tier"]}
    assert by_tier["gold"]["revenue"] == "2352.00"  # ann 1152 + bob 1200
    assert by_tier[None]["revenue"] == "78.50"
    assert by_tier["gold"]["revenue_share"] == pytest.approx(2352 / 2430.5, abs=1e-4)


async def test_the_scorecard_over_http_and_the_cli_say_the_currency(
    database_url, frozen_clock, aiohttp_client, tmp_path
):
    from prm_core.keys import create_key
    from prm_core.server.app import create_app
    from prm_core.server.state import HUB

    frozen_clock.now = NOW
    client = await aiohttp_client(create_app(config(database_url, EUR)))
    hub = client.app[HUB]
    await record(hub, *SALES)
    key, _ = await create_key(hub.store, "read")
    card = await (await client.get("/v1/scorecard?days=7", headers={"Authorization": f"Bearer {key}"})).json()
    assert card["currency"] == "EUR" and card["mixed_currencies"] == ["EUR", "GBP", "USD", "XXX"]
    (web,) = [t for t in card["touchpoints"] if t["touchpoint"] == "web"]
    assert web["revenue"] is None and web["revenue_by_currency"]["USD"] == "600.00"

    (tmp_path / "prm.toml").write_text('[money]\nreporting_currency = "EUR"\n')
    args = ["scorecard", "--config", str(tmp_path / "prm.toml"), "--database", database_url, "--days", "7"]
    result = await asyncio.to_thread(CliRunner().invoke, main, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["mixed_currencies"] == ["EUR", "GBP", "USD", "XXX"]
    result = await asyncio.to_thread(CliRunner().invoke, main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("web "))
    # the amounts side by side, each with its currency, never a sum
    assert line.endswith("1800.00 EUR and 50.00 GBP and 600.00 USD and 20.00 XXX")
    assert "revenue in EUR, GBP, USD, XXX is shown per currency, not added" in result.output
    assert "money in EUR" in result.output


# ---- the value model and CLV --------------------------------------------------------------


def history(n: int = 80, seed: int = 3) -> list[dict]:
    """Customers as BG/NBD tells it (see tests/test_planning_honesty.py), the even ones buying
    in euros, the odd ones in dollars."""
    rng = np.random.default_rng(seed)
    events = []
    for c in range(n):
        age, rate, stop = rng.uniform(200, 500), rng.gamma(2.0, 1 / 60), rng.beta(2, 8)
        t, k = 0.0, 0
        while t <= age:
            currency = "EUR" if c % 2 == 0 else "USD"
            events.append(sale(f"{c}-{k}", f"c{c}@example.com", f"{rng.uniform(20, 120):.2f}", currency, days=age - t))
            if rng.random() < stop:
                break
            t, k = t + rng.exponential(1 / rate), k + 1
    return events


async def test_the_fit_measures_spend_in_the_reporting_currency_and_leaves_out_what_has_no_rate(
    database_url, frozen_clock
):
    frozen_clock.now = NOW
    events = history()
    async with Hub.open(config(database_url, EUR), autoload=True) as hub:
        await record(hub, *events)
        result = await fit_value_model(hub.store, NOW, hub.planner.money)
        assert result["left_out"] == {"customers": 40, "currencies": ["USD"]}
        assert result["customers"] == 40
        assert "bgnbd" in result["stored"], result["skipped"]
        assert all(params["currency"] == "EUR" for params in result["stored"].values())
        hub.planner.forget_models()
        euros, dollars = await hub.view("email:c0@example.com"), await hub.view("email:c1@example.com")
        assert euros.sections["value"]["clv"] is not None
        assert euros.sections["value"]["model"]["clv"]["currency"] == "EUR"
        # spent in dollars with no rate: no value in euros, rather than dollars counted as euros
        assert dollars.sections["value"]["clv"] is None and dollars.sections["value"]["m_score"] is None
        assert dollars.sections["value"]["p_alive"] is not None  # when is not a matter of currency

    async with Hub.open(config(database_url, EUR_WITH_RATES), autoload=True) as hub:
        result = await fit_value_model(hub.store, NOW, hub.planner.money)
        assert result["left_out"] == {"customers": 0, "currencies": []}
        assert result["customers"] == 80
        hub.planner.forget_models()
        dollars = await hub.view("email:c1@example.com")
        assert dollars.sections["value"]["clv"] is not None


async def test_a_fit_in_another_currency_is_not_used(database_url, frozen_clock):
    frozen_clock.now = NOW
    async with Hub.open(config(database_url, EUR), autoload=True) as hub:
        await record(hub, *history())
        assert "bgnbd" in (await fit_value_model(hub.store, NOW, hub.planner.money))["stored"]
        assert (await _card(hub))["balanced"]["average_clv"] is not None
    async with Hub.open(config(database_url), autoload=True) as hub:  # reported in USD now
        view = await hub.view("email:c0@example.com")
        clv = view.sections["value"]["model"]["clv"]
        assert view.sections["value"]["clv"] is None
        assert clv["model"] is None and clv["reason"] == "fitted in EUR, reported in USD: run prm plan fit"
        assert (await _card(hub))["balanced"]["average_clv"] is None


async def test_the_historic_value_is_what_was_spent_converted_or_nothing(database_url, frozen_clock):
    frozen_clock.now = NOW
    # a day of sales: BG/NBD is refused and the value is what each customer spent
    day = [sale(f"d{c}", f"d{c}@example.com", "40", "EUR", days=0.5) for c in range(12)]
    day += [sale("x1", "d0@example.com", "10", "USD", days=0.4)]
    async with Hub.open(config(database_url, EUR), autoload=True) as hub:
        await record(hub, *day)
        result = await fit_value_model(hub.store, NOW, hub.planner.money)
        assert "clv_fallback" in result["stored"]
        hub.planner.forget_models()
        assert (await hub.view("email:d0@example.com")).sections["value"]["clv"] is None
        assert (await hub.view("email:d1@example.com")).sections["value"]["clv"] == 40.0
    async with Hub.open(config(database_url, EUR_WITH_RATES), autoload=True) as hub:
        await fit_value_model(hub.store, NOW, hub.planner.money)
        assert (await hub.view("email:d0@example.com")).sections["value"]["clv"] == 49.2


def test_prm_plan_fit_says_the_currency_and_who_was_left_out(tmp_path):
    db = f"sqlite:///{tmp_path}/prm.db"

    async def fill() -> None:
        async with Hub.open(config(db, EUR), autoload=True) as hub:
            await record(hub, *SALES)

    with FrozenClock() as clock:
        clock.now = NOW
        asyncio.run(fill())
    (tmp_path / "prm.toml").write_text('[money]\nreporting_currency = "EUR"\n')
    result = CliRunner().invoke(main, ["plan", "fit", "--config", str(tmp_path / "prm.toml"), "--database", db])
    assert result.exit_code == 0, result.output
    # bob bought in euros; ann's dollars and cy's pounds have no rate
    assert "1 customers with a purchase, spend in EUR" in result.output
    assert "left out: 2 customers who bought in GBP, USD (no rate into EUR in [money.rates])" in result.output


# ---- the migration -----------------------------------------------------------------------------


async def test_the_migration_fills_the_amounts_per_currency_as_ingest_keeps_them(database_url, frozen_clock):
    """Recorded before amounts were kept per currency: the migration reads them from what was
    recorded, and gets what ingest itself keeps now."""
    import sqlalchemy as sa
    from alembic import command
    from alembic.config import Config as AlembicConfig

    from prm_core.store.engine import MIGRATIONS
    from prm_core.store.tables import customer_value, touchpoint_day_revenue

    frozen_clock.now = NOW
    returned = sale("r1", "bob@example.com", "-200", "EUR")
    returned["data"]["transaction_type"] = "return"
    async with Hub.open(config(database_url, EUR), autoload=True) as hub:
        await record(hub, *SALES, returned)
        await record(hub, sale("p1", "bob@example.com", "30", "EUR"), touchpoint="pos")

        def kept(conn: Any) -> tuple[dict[str, dict[str, Decimal]], set[tuple[str, str, str, Decimal]]]:
            v, d = customer_value.c, touchpoint_day_revenue.c
            values = {
                r.customer_id: {c: Decimal(a) for c, a in r.purchase_total_by_currency.items()}
                for r in conn.execute(sa.select(v.customer_id, v.purchase_total_by_currency))
            }
            days = {(r.touchpoint, r.day, r.currency, Decimal(r.revenue)) for r in conn.execute(sa.select(d))}
            return values, days

        by_ingest = await hub.store.read(kept)

        def downgrade(conn: Any) -> None:
            cfg = AlembicConfig()
            cfg.set_main_option("script_location", str(MIGRATIONS))
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0007_identity_conflicts")

        async with hub.store.writer.begin() as conn:
            await conn.run_sync(downgrade)
        # the money migration first, then every one after it
        assert (await hub.store.migrate())[:2] == ["0008_money", "0009_triggers"]
        by_migration = await hub.store.read(kept)
    assert by_migration == by_ingest
    values, days = by_migration
    assert sorted(values.values(), key=sorted) == sorted(
        [{"EUR": 600, "USD": 600}, {"EUR": 1230}, {"GBP": 50, "XXX": 20}], key=sorted
    )

    def day(n: int) -> str:
        return (NOW - timedelta(days=n)).date().isoformat()

    assert days == {
        ("web", day(3), "EUR", Decimal(600)),
        ("web", day(2), "EUR", Decimal(1200)),
        ("web", day(2), "USD", Decimal(600)),
        ("web", day(1), "GBP", Decimal(50)),
        ("web", day(1), "XXX", Decimal(20)),
        ("web", day(1), "EUR", Decimal(-200)),  # the return: revenue recorded there, less
        ("pos", day(1), "EUR", Decimal(30)),
    }


# ---- campaigns -----------------------------------------------------------------------------------


def test_the_return_on_a_cost_converts_with_rates_and_says_what_it_left_out():
    from prm_core.planning.campaigns import CampaignCost, _roi

    sides = {"customers": 10}
    revenue = {False: {"EUR": Decimal(1000), "USD": Decimal(500)}, True: {"EUR": Decimal(100)}}
    in_euros = CampaignCost(Decimal(100), "EUR")
    rates = Money.from_config(Config(raw={"money": EUR_WITH_RATES}))
    # treated 1000 + 500 x 0.92 = 1460 EUR, 146 per customer, control 10: (136 x 10 - 100) / 100
    assert _roi(sides, sides, revenue, in_euros, rates) == (12.6, [])
    # without a rate the dollars are not counted as euros: left out, and named
    assert _roi(sides, sides, revenue, in_euros, Money.from_config(Config(raw={"money": EUR}))) == (8.0, ["USD"])
    # a cost in dollars: every amount through euros into dollars
    roi, left_out = _roi(sides, sides, revenue, CampaignCost(Decimal(100), "USD"), rates)
    assert roi == pytest.approx(((1460 - 100) / 0.92 - 100) / 100, abs=1e-4) and left_out == []


def test_a_misspelled_money_setting_is_named_with_the_nearest_name():
    from prm_core.config_check import config_warnings

    raw = {"mony": {"reporting_currency": "EUR"}, "money": {"reporting_curency": "EUR", "rates": {"USD": 0.92}}}
    assert config_warnings(Config(raw=raw), ["web"]) == [
        "[mony] is not a table the hub reads; did you mean money?",
        "[money].reporting_curency is not a setting the hub reads; did you mean reporting_currency?",
    ]


# ---- a rates table as a file -------------------------------------------------------------------


def _money_from(tmp_path: Path, toml: str, csv_text: str | None) -> Money:
    from prm_core.config import load_config

    (tmp_path / "prm.toml").write_text(toml)
    if csv_text is not None:
        (tmp_path / "rates.csv").write_text(csv_text)
    return Money.from_config(load_config(tmp_path / "prm.toml"))


def test_rates_can_come_from_a_csv_file_beside_the_config(tmp_path):
    shown = "currency,rate\nUSD,0.92\nGBP,1.17\n"
    assert shown in DOC and 'rates_file = "rates.csv"' in DOC  # as docs/planning.md shows it
    toml = '[money]\nreporting_currency = "EUR"\nrates_file = "rates.csv"\n[money.rates]\nJPY = 0.0061\n'
    money = _money_from(tmp_path, toml, "currency,rate\nUSD,0.92\n\nGBP, 1.17\n")
    assert money.rates == {"JPY": Decimal("0.0061"), "USD": Decimal("0.92"), "GBP": Decimal("1.17")}
    assert money.total({"USD": Decimal(100), "GBP": Decimal(10), "EUR": Decimal(1)}) == Decimal("104.70")


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        (None, "[money].rates_file: cannot read"),
        ("code,value\nUSD,0.92\n", "the first line must be the header currency,rate"),
        ("currency,rate\nUSD,0\n", "rates.csv line 2 must be a positive number, not '0'"),
        ("currency,rate\nUSD,0.92\nXYZ,1.2\n", "rates.csv line 3: 'XYZ' is not an ISO 4217 currency code"),
        ("currency,rate\nUSD,0.92,x\n", "rates.csv line 2: two columns, currency and rate, not 3"),
        ("currency,rate\nJPY,0.0061\n", "rates.csv line 2: JPY has a rate already; give each currency one"),
    ],
)
def test_a_bad_rates_file_is_one_line_naming_the_file_and_line(tmp_path, csv_text, message):
    toml = '[money]\nreporting_currency = "EUR"\nrates_file = "rates.csv"\n[money.rates]\nJPY = 0.0061\n'
    with pytest.raises(ConfigError) as stopped:
        _money_from(tmp_path, toml, csv_text)
    assert message in str(stopped.value) and "\n" not in str(stopped.value)
    assert str(stopped.value).startswith("[money].rates_file")
