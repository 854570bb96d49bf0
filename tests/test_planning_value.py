"""The value model: BG/NBD and Gamma-Gamma recover known parameters; `prm plan fit` over the
value rows; predictions, churn risk and RFM scores in the 360 view; `prm plan tiers`."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from click.testing import CliRunner

from prm_core.cli import main
from prm_core.config import Config
from prm_core.hub import Hub
from prm_core.planning.clv import BgNbd, fit_bgnbd, fit_gamma_gamma
from prm_core.planning.scorecard import scorecard
from prm_core.planning.value import DEFAULT_RFM, Rfm

NOW = datetime(2026, 11, 1, tzinfo=UTC)


def simulate_bgnbd(n: int, r: float, alpha: float, a: float, b: float, seed: int = 1):
    """Customers drawn from the BG/NBD story itself: Poisson buying, dropping out after a purchase."""
    rng = np.random.default_rng(seed)
    xs, txs, ages = [], [], []
    for _ in range(n):
        lam, p, age = rng.gamma(r, 1 / alpha), rng.beta(a, b), rng.uniform(200, 700)
        t, x, t_x = 0.0, 0, 0.0
        while True:
            t += rng.exponential(1 / lam)
            if t > age:
                break
            x, t_x = x + 1, t
            if rng.random() < p:
                break
        xs.append(x)
        txs.append(t_x)
        ages.append(age)
    return xs, txs, ages


def test_bgnbd_recovers_the_parameters_it_was_simulated_with():
    fitted = fit_bgnbd(*simulate_bgnbd(3000, r=0.5, alpha=20.0, a=0.8, b=2.5))
    assert fitted.r == pytest.approx(0.5, rel=0.25)
    assert fitted.alpha == pytest.approx(20.0, rel=0.25)
    # the dropout mean a / (a + b) is what the data pins down best
    assert fitted.a / (fitted.a + fitted.b) == pytest.approx(0.8 / 3.3, rel=0.25)


def test_gamma_gamma_recovers_the_parameters_it_was_simulated_with():
    rng = np.random.default_rng(2)
    p, q, v = 6.0, 4.0, 15.0
    counts = rng.integers(1, 10, 2000)
    nu = rng.gamma(q, 1 / v, 2000)
    means = np.array([rng.gamma(p, 1 / n, k).mean() for n, k in zip(nu, counts, strict=True)])
    fitted = fit_gamma_gamma(counts, means)
    assert fitted.p == pytest.approx(p, rel=0.25)
    # the mean spend per purchase, p v / (q - 1), is recovered closely
    assert fitted.p * fitted.v / (fitted.q - 1) == pytest.approx(p * v / (q - 1), rel=0.1)


def test_p_alive_and_expected_purchases_behave():
    model = BgNbd(r=0.5, alpha=20.0, a=0.8, b=2.5)
    assert model.p_alive(0, 0, 300) == 1.0  # never came back: nothing says they left
    steady = model.p_alive(10, 295, 300)
    gone = model.p_alive(10, 30, 300)  # ten purchases in a month, then nine months of silence
    assert gone < 0.2 < 0.8 < steady
    assert model.expected_purchases(365, 10, 295, 300) > model.expected_purchases(365, 10, 30, 300)


def test_rfm_scores_are_quintiles_of_the_cut_points():
    rfm = Rfm((30, 90, 180, 365), (1, 2, 4, 8), (100, 500, 1000, 5000))
    assert rfm.scores(3, 20, 9000) == (5, 5, 5)
    assert rfm.scores(400, 1, 50) == (1, 1, 1)
    assert rfm.scores(30, 2, 500) == (5, 2, 2)
    assert rfm.scores(31, 3, 501) == (4, 3, 3)


def histories(n: int = 40):
    """Purchase events: even customers buy every 20 days up to now; odd ones bought as often
    but stopped 300 days ago."""
    events = []
    for c in range(n):
        stopped = c % 2 == 1
        start = NOW - timedelta(days=400 + c)
        end = NOW - timedelta(days=300) if stopped else NOW - timedelta(days=c % 7)
        t, k = start, 0
        while t <= end:
            events.append(
                {
                    "id": f"o-{c}-{k}",
                    "type": "order.completed",
                    "occurred_at": t.isoformat(),
                    "identities": {"user_id": f"u{c}"},
                    "data": {"revenue": str(40 + (c * 7 + k * 13) % 90)},
                }
            )
            t, k = t + timedelta(days=20 + (c + k) % 5), k + 1
    return events


async def record_all(hub: Hub, events: list[dict]) -> None:
    for i in range(0, len(events), 500):
        await hub.record(hub.parse_events({"events": events[i : i + 500]}, "web"))


def cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


async def test_plan_fit_then_the_view_shows_prediction_churn_risk_and_rfm(hub, database_url, frozen_clock):
    frozen_clock.now = NOW
    await record_all(hub, histories())
    before = (await hub.view("user_id:u0")).sections["value"]
    assert before["clv"] is None and before["p_alive"] is None  # nothing fitted yet
    assert before["model"]["rfm"]["source"] == "default"

    result = await asyncio.to_thread(cli, "plan", "fit", "--database", database_url)
    assert result.exit_code == 0, result.output
    assert "40 customers with a purchase" in result.output
    assert "bgnbd: r=" in result.output and "gammagamma: p=" in result.output
    hub.planner.forget_models()

    active = (await hub.view("user_id:u0")).sections["value"]
    lapsed = (await hub.view("user_id:u1")).sections["value"]
    assert active["model"]["rfm"]["source"] == "fitted"
    assert active["model"]["fitted_at"] is not None
    assert active["p_alive"] > 0.5 > lapsed["p_alive"]
    assert lapsed["churn_risk"] == pytest.approx(1 - lapsed["p_alive"])
    assert active["clv"] > lapsed["clv"] >= 0
    assert active["r_score"] > lapsed["r_score"]
    assert active["rfm"] == f"{active['r_score']:.0f}{active['f_score']:.0f}{active['m_score']:.0f}"

    # a second fit a day later, after a round of big sales: the scorecard reads the growth
    frozen_clock.now = NOW + timedelta(days=1)
    big = [
        {
            "id": f"big-{c}",
            "type": "order.completed",
            "occurred_at": frozen_clock.now.isoformat(),
            "identities": {"user_id": f"u{c}"},
            "data": {"revenue": "900"},
        }
        for c in range(0, 40, 2)
    ]
    await record_all(hub, big)
    assert (await asyncio.to_thread(cli, "plan", "fit", "--database", database_url)).exit_code == 0
    card = await hub.store.read(lambda conn: scorecard(conn, ["web"], frozen_clock.now, days=30))
    assert card["balanced"]["average_clv"] > 0
    assert card["balanced"]["clv_growth"] > 0


async def test_fit_with_too_few_customers_says_what_it_skipped(database_url):
    result = await asyncio.to_thread(cli, "plan", "fit", "--database", database_url)
    assert result.exit_code == 0
    assert "bgnbd: not fitted: BG/NBD needs at least 10 customers" in result.output


async def test_fixed_rfm_cut_points_from_config_win(database_url, frozen_clock):
    frozen_clock.now = NOW
    config = Config(database_url=database_url, raw={"value": {"rfm": {"monetary": [10, 20, 30, 40]}}})
    async with Hub.open(config, autoload=True) as hub:
        await record_all(hub, histories(2))
        value = (await hub.view("user_id:u0")).sections["value"]
    assert value["model"]["rfm"] == {
        "recency_days": list(DEFAULT_RFM.recency_days),
        "frequency": list(DEFAULT_RFM.frequency),
        "monetary": [10.0, 20.0, 30.0, 40.0],
        "source": "config",
    }
    assert value["m_score"] == 5


async def test_plan_tiers_applies_changed_rules_to_everyone_but_hand_set_tiers(database_url, tmp_path, frozen_clock):
    frozen_clock.now = NOW
    async with Hub.open(Config(database_url=database_url), autoload=True) as hub:
        await record_all(hub, histories(4))
        await hub.update_customer("user_id:u2", {"tier": "staff"})
    config = tmp_path / "prm.toml"
    config.write_text('[tiers.rules]\nloyal = "purchases >= 10"\nlapsed = "days_since_last_purchase > 200"\n')
    # u0 buys on (about 19 purchases): loyal; u1 and u3 stopped: lapsed; u2's tier was set by hand
    result = await asyncio.to_thread(cli, "plan", "tiers", "--config", str(config), "--database", database_url)
    assert result.exit_code == 0, result.output
    assert "4 customers evaluated, 3 tiers changed" in result.output
    async with Hub.open(Config(database_url=database_url), autoload=True) as hub:
        tiers = {c: (await hub.view(f"user_id:u{c}")).customer for c in range(4)}
    assert (tiers[0].tier, tiers[0].tier_source) == ("loyal", "rule")
    assert tiers[1].tier == "lapsed"  # about five purchases, the last 300 days ago
    assert (tiers[2].tier, tiers[2].tier_source) == ("staff", "manual")


async def test_plan_tiers_refuses_an_invalid_rule_naming_it(tmp_path, database_url):
    config = tmp_path / "prm.toml"
    config.write_text('[tiers.rules]\ngold = "revenue >>> 5"\n')
    result = await asyncio.to_thread(cli, "plan", "tiers", "--config", str(config), "--database", database_url)
    assert result.exit_code != 0
    assert "[tiers.rules].gold" in result.output
