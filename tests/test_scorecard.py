"""GET /v1/scorecard and `prm scorecard`: touch-point figures kept on ingest, balanced-scorecard
figures by tier; GET /v1/knowledge: the registry of knowledge artifacts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from positions import read_after

from prm_core import hookimpl
from prm_core.cli import main
from prm_core.config import Config
from prm_core.model import ValueProvider

NOW = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


class Warranties:
    """A value provider of a plugin, to show beside the built-in catalog."""

    __name__ = "warranties"

    @hookimpl
    def prm_value_providers(self, config):
        async def provide(request):
            return {"plans": ["basic"]}

        yield ValueProvider(name="warranty-costs", about="business", provide=provide, description="warranty costs")


@pytest.fixture
def hub_plugins():
    return [Warranties()]


@pytest.fixture
def hub_config(database_url: str) -> Config:
    raw = {
        "tiers": {"rules": {"gold": "lifetime_revenue >= 1000"}},
        "catalog": {"items": {"wm-300": {"title": "WM-300", "accessories": ["hose"]}, "hose": {"title": "Hose"}}},
        "knowledge": {"catalog": {"touchpoints": ["web", "pos"]}},
        "touchpoints": {"web": {"budget_ms": 5000}},
    }
    return Config(database_url=database_url, public_url="http://hub.test", raw=raw)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def sale(i: int, revenue: str, at: datetime) -> dict:
    return {
        "id": f"sale-{i}",
        "type": "order.completed",
        "occurred_at": at.isoformat(),
        "identities": {"user_id": f"u{i}"},
        "data": {"revenue": revenue},
    }


async def test_the_scorecard_sums_what_ingest_kept(hub_client, make_key, frozen_clock, database_url):
    frozen_clock.now = NOW
    tp, read = auth(await make_key("touchpoint:web")), auth(await make_key("read"))
    sales = [sale(1, "1500", NOW - timedelta(days=2)), sale(2, "300", NOW - timedelta(days=1))]
    sales.append(sale(3, "200", NOW - timedelta(days=400)))  # a buyer not seen for over a year
    assert (await hub_client.post("/v1/touchpoints/web/events", json={"events": sales}, headers=tp)).status == 200
    answers = []
    for i in (1, 2):
        body = {
            "id": f"visit-{i}",
            "type": "product.viewed",
            "occurred_at": NOW.isoformat(),
            "identities": {"user_id": f"u{i}"},
            "data": {"product_id": "wm-300"},
        }
        answers.append(await (await hub_client.post("/v1/touchpoints/web/requests", json=body, headers=tp)).json())
    offer_id = answers[0]["delivery"]["offers"][0]["data"]["offer_id"]
    accepted = {
        "id": "acc-1",
        "type": "offer.accepted",
        "occurred_at": (NOW + timedelta(minutes=5)).isoformat(),
        "identities": {"user_id": "u1"},
        "data": {"offer_id": offer_id},
    }
    assert (await hub_client.post("/v1/touchpoints/web/events", json=accepted, headers=tp)).status == 200
    browsing = {"id": "look-9", "type": "page", "occurred_at": NOW.isoformat(), "identities": {"user_id": "u9"}}
    r = await hub_client.post("/v1/touchpoints/web/events", json=browsing, headers=tp)
    assert r.status == 200
    await read_after(hub_client, await r.json(), "user_id:u9", read)  # the scorecard reads what is recorded

    card = await (await hub_client.get("/v1/scorecard?days=7", headers=read)).json()
    (web,) = [t for t in card["touchpoints"] if t["touchpoint"] == "web"]
    assert web["requests"] == 2
    assert web["in_budget"] == 2 and web["in_budget_rate"] == 1.0
    assert web["degraded"] == 0 and web["degraded_rate"] == 0.0
    assert web["offers_made"] == 2 and web["offers_accepted"] == 1 and web["acceptance_rate"] == 0.5
    assert web["revenue"] == "1800.00"  # the sale of 400 days ago is outside the 7 days
    assert web["dialogues"] >= 2
    # u1, u2 (who bought in the period) and u9 (who only looked); u3 bought 400 days ago
    assert (web["customers"], web["buyers"], web["conversion_rate"]) == (3, 2, 0.6667)
    idle = [t for t in card["touchpoints"] if t["touchpoint"] != "web"]
    assert all(t["requests"] == 0 and t["in_budget_rate"] is None for t in idle)

    balanced = card["balanced"]
    by_tier = {t["tier"]: t for t in balanced["by_tier"]}
    assert by_tier["gold"]["customers"] == 1 and by_tier["gold"]["revenue"] == "1500.00"
    assert by_tier["gold"]["revenue_share"] == 0.75
    assert by_tier[None]["customers"] == 3
    assert balanced["buyers"] == 3
    assert balanced["customers"] == 4
    assert balanced["retention_rate"] == pytest.approx(0.6667, abs=1e-4)
    assert balanced["churn_rate"] == pytest.approx(0.3333, abs=1e-4)
    assert balanced["average_clv"] is None  # no fit yet

    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["scorecard", "--database", database_url, "--days", "7"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("web "))
    # every amount with its currency (revenue without one counts in the reporting currency, USD unset)
    assert line.split() == ["web", "3", "66.7%", "2", "100.0%", "0.0%", "2", "1", "1800.00", "USD"]
    assert "gold" in result.output and "75.0%" in result.output


async def test_the_scorecard_needs_a_read_key(hub_client, make_key):
    assert (await hub_client.get("/v1/scorecard")).status == 401
    r = await hub_client.get("/v1/scorecard", headers=auth(await make_key("touchpoint:web")))
    assert r.status == 403
    r = await hub_client.get("/v1/scorecard?days=0", headers=auth(await make_key("read")))
    assert r.status == 422 and (await r.json())["error"]["field"] == "days"


async def test_knowledge_lists_every_value_provider_and_who_uses_it(hub_client, make_key):
    r = await hub_client.get("/v1/knowledge", headers=auth(await make_key("read")))
    knowledge = {k["name"]: k for k in (await r.json())["knowledge"]}
    assert knowledge["catalog"]["about"] == "business"
    assert knowledge["catalog"]["plugin"] == "prm_core.planning"
    assert knowledge["catalog"]["touchpoints"] == ["pos", "web"]
    assert knowledge["warranty-costs"]["plugin"] == "warranties"
    assert "web" in knowledge["warranty-costs"]["touchpoints"]  # every touch point when not configured


def test_prm_plugins_shows_the_knowledge_artifacts(tmp_path):
    config = tmp_path / "prm.toml"
    config.write_text('[catalog.items.a]\ntitle = "A"\n[knowledge.catalog]\ntouchpoints = ["web", "ivr"]\n')
    result = CliRunner().invoke(main, ["plugins", "--config", str(config)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "  catalog  about the business, from prm_core.planning: ivr, web" in result.output
