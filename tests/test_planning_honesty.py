"""The value model shows nothing the data does not support: a fit that did not converge or saw
too little history is refused (the value falls back to what was spent, and says so), predictions
stop at the fit's own 99th percentile, and the view names the model and the fit of its figure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa

from prm_core.planning.clv import fit_bgnbd
from prm_core.planning.fit import MIN_HISTORY_DAYS, fit_value_model
from prm_core.store.tables import planning_models

NOW = datetime(2026, 11, 1, tzinfo=UTC)


def order(customer: int, n: int, at: datetime, revenue: str) -> dict:
    return {
        "id": f"o-{customer}-{n}",
        "type": "order.completed",
        "occurred_at": at.isoformat(),
        "identities": {"user_id": f"u{customer}"},
        "data": {"revenue": revenue, "currency": "USD"},
    }


def one_day_of_sales() -> list[dict]:
    """Thirty customers on one day: most buy once, a few twice within hours."""
    day = NOW - timedelta(hours=20)
    sales = [order(c, 0, day + timedelta(minutes=c * 20), str(20 + c * 3)) for c in range(30)]
    sales += [order(c, 1, day + timedelta(minutes=c * 20 + 90), "35") for c in range(0, 30, 3)]
    return sales


def long_history(n: int = 60, seed: int = 3) -> list[dict]:
    """Customers as BG/NBD tells it: each buys at a rate of their own, and stops after some purchase."""
    rng = np.random.default_rng(seed)
    events = []
    for c in range(n):
        age, rate, stop = rng.uniform(200, 500), rng.gamma(2.0, 1 / 60), rng.beta(2, 8)
        t, k = 0.0, 0
        while t <= age:
            events.append(order(c, k, NOW - timedelta(days=age - t), f"{rng.uniform(20, 120):.2f}"))
            if rng.random() < stop:
                break
            t, k = t + rng.exponential(1 / rate), k + 1
    return events


async def record(hub, events: list[dict]) -> None:
    await hub.record(hub.parse_events({"events": events}, "web"))


async def models(hub) -> dict:
    return {r.name: r.params for r in await hub.store.read(lambda conn: list(conn.execute(sa.select(planning_models))))}


def test_a_fit_that_does_not_converge_is_refused():
    # twenty customers who all bought four times within a quarter of an hour: no optimum
    with pytest.raises(ValueError, match="BG/NBD did not converge after 4000 iterations"):
        fit_bgnbd(np.full(20, 3.0), np.full(20, 0.01), np.full(20, 0.02))


async def test_one_day_of_sales_gives_no_prediction_but_what_was_spent(hub, frozen_clock):
    frozen_clock.now = NOW
    await record(hub, one_day_of_sales())
    result = await fit_value_model(hub.store, NOW)
    assert result["skipped"]["bgnbd"].startswith(f"BG/NBD needs {MIN_HISTORY_DAYS} days of purchase history, has 0.")
    assert result["stored"]["clv_fallback"]["model"] == "historic"
    hub.planner.forget_models()

    value = (await hub.view("user_id:u1")).sections["value"]  # bought once, for $23
    assert value["clv"] == 23.0
    assert value["p_alive"] is None
    clv = value["model"]["clv"]
    assert clv["model"] == "historic"
    assert clv["reason"].startswith("BG/NBD needs 90 days")
    assert clv["rule"] == "what the customer has spent: no prediction"
    assert clv["customers"] == 30 and clv["fitted_at"] is not None


async def test_a_refused_fit_removes_the_earlier_one(hub, frozen_clock):
    frozen_clock.now = NOW
    await record(hub, long_history())
    assert "bgnbd" in (await fit_value_model(hub.store, NOW))["stored"]
    assert "bgnbd" in await models(hub) and "clv_fallback" not in await models(hub)
    # the same database a year on, with its history purged down to one day of new customers
    await hub.store.write(lambda conn: conn.execute(sa.text("DELETE FROM customer_value")))
    await record(hub, [{**e, "id": "late-" + e["id"]} for e in one_day_of_sales()])
    second = await fit_value_model(hub.store, NOW)
    assert "bgnbd" in second["skipped"]
    stored = await models(hub)
    assert "bgnbd" not in stored and stored["clv_fallback"]["model"] == "historic"


async def test_predictions_stop_at_the_fits_99th_percentile_and_say_so(hub, frozen_clock):
    frozen_clock.now = NOW
    # a long history, then a newcomer who bought every day for two months, at ten times anyone's spend
    burst = [order(99, k, NOW - timedelta(days=60 - k), "1000") for k in range(60)]
    await record(hub, [*long_history(), *burst])
    result = await fit_value_model(hub.store, NOW)
    bg = result["stored"]["bgnbd"]
    assert bg["converged"] is True and bg["history_days"] >= MIN_HISTORY_DAYS
    cap = bg["clv_p99"]
    hub.planner.forget_models()

    newcomer = (await hub.view("user_id:u99")).sections["value"]
    assert newcomer["clv"] == pytest.approx(cap)
    assert newcomer["model"]["clv"]["capped"] is True
    assert newcomer["model"]["clv"]["cap"] == cap
    assert newcomer["model"]["clv"]["model"] == "bgnbd+gammagamma"
    assert newcomer["model"]["clv"]["converged"] is True
    regular = (await hub.view("user_id:u0")).sections["value"]
    assert 0 < regular["clv"] < cap and regular["model"]["clv"]["capped"] is False
    # no one's figure is above what the fit supports
    for c in range(60):
        assert (await hub.view(f"user_id:u{c}")).sections["value"]["clv"] <= cap
