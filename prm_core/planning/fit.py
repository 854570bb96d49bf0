"""``prm plan fit``: fit the value model over the ``customer_value`` table and store it.

Reads one row per customer who bought (no event is rescanned), fits BG/NBD and
Gamma-Gamma (:mod:`prm_core.planning.clv`) and measures the RFM quintile cut points, then
replaces the rows of ``planning_models`` in one transaction. Running hubs pick the new
parameters up within 30 seconds; every customer's prediction is then computed on read.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..store import Store
from ..store.tables import customer_value, customers, planning_models
from .clv import fit_bgnbd, fit_gamma_gamma, models_from_params
from .money import Money
from .value import CLV_HORIZON_DAYS, amounts_of

__all__ = ["MIN_HISTORY_DAYS", "MIN_REPEAT_CUSTOMERS", "fit_value_model"]

_DAY = 86400.0
# BG/NBD learns how often customers come back and when they stop: below this much history
# (oldest first purchase to now), or with fewer customers who came back, it has seen neither,
# and its predictions are extrapolations of noise (one day of sales gave a one-time buyer
# a lifetime value of thousands). The value model then falls back to what was spent.
MIN_HISTORY_DAYS = 90
MIN_REPEAT_CUSTOMERS = 5


def _quintile_cuts(values: np.ndarray) -> list[float]:
    return [round(float(v), 2) for v in np.quantile(values, [0.2, 0.4, 0.6, 0.8])]


async def fit_value_model(store: Store, now: datetime, money: Money | None = None) -> dict[str, Any]:
    """Fit and store the models; returns what was stored (and skipped, with why).

    Spend is measured in ``money``'s reporting currency (``USD`` by default); a customer who
    bought in a currency without a rate is left out (``left_out`` counts them, with the
    currencies), never added at face value. Every stored model says its ``currency``: the
    planner does not use a fit made in another one."""
    money = money or Money()

    def read(conn: Connection) -> list[Any]:
        v = customer_value.c
        q = (
            sa.select(
                v.purchases, v.purchase_total, v.purchase_total_by_currency, v.first_purchase_at, v.last_purchase_at
            )
            .select_from(customer_value.join(customers, customers.c.id == v.customer_id))
            .where(customers.c.merged_into.is_(None), v.purchases > 0)
        )
        return list(conn.execute(q))

    read_rows = await store.read(read)
    rows: list[Any] = []
    spent: list[float] = []
    apart: set[str] = set()
    for r in read_rows:
        amounts = amounts_of(r.purchase_total_by_currency, r.purchase_total)
        total = money.total(amounts)
        if total is None:
            apart.update(money.unconverted(amounts))
            continue
        rows.append(r)
        spent.append(float(total))
    purchases = np.array([r.purchases for r in rows], dtype=float)
    totals = np.array(spent, dtype=float)
    first = np.array([(now - r.first_purchase_at).total_seconds() / _DAY for r in rows], dtype=float)
    last = np.array([(now - r.last_purchase_at).total_seconds() / _DAY for r in rows], dtype=float)
    stored: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    if len(rows) >= 5:
        stored["rfm"] = {
            "recency_days": _quintile_cuts(np.maximum(last, 0)),
            "frequency": _quintile_cuts(purchases),
            "monetary": _quintile_cuts(totals),
        }
    else:
        skipped["rfm"] = f"needs at least 5 customers with a purchase, has {len(rows)}"
    ages = np.maximum(first, 0)
    history = float(ages.max()) if len(rows) else 0.0
    repeaters = int((purchases >= 2).sum())
    try:
        if len(rows) >= 10 and history < MIN_HISTORY_DAYS:
            raise ValueError(f"BG/NBD needs {MIN_HISTORY_DAYS} days of purchase history, has {history:.1f}")
        if len(rows) >= 10 and repeaters < MIN_REPEAT_CUSTOMERS:
            raise ValueError(f"BG/NBD needs {MIN_REPEAT_CUSTOMERS} customers who bought twice, has {repeaters}")
        stored["bgnbd"] = fit_bgnbd(purchases - 1, np.maximum(ages - np.maximum(last, 0), 0), ages).to_json()
        stored["bgnbd"].update(converged=True, history_days=round(history, 1))
    except ValueError as exc:
        skipped["bgnbd"] = str(exc)
    repeat = purchases >= 2
    try:
        stored["gammagamma"] = fit_gamma_gamma(purchases[repeat], totals[repeat] / purchases[repeat]).to_json()
    except ValueError as exc:
        skipped["gammagamma"] = str(exc)

    if "bgnbd" in stored:
        # the average predicted value over every buyer, kept for the scorecard
        bg, gg = models_from_params(stored)
        assert bg is not None
        values = []
        for n, total, age, since in zip(purchases, totals, ages, np.maximum(last, 0), strict=True):
            expected = bg.expected_purchases(CLV_HORIZON_DAYS, n - 1, age - since, age)
            spend = gg.expected_spend(n, total / n) if gg is not None else total / n
            values.append(expected * spend)
        broken = int((~np.isfinite(values)).sum())
        if broken:
            # parameters at the edge of their range (too regular a history): the model predicts
            # nothing for these customers, so it predicts for no one
            skipped["bgnbd"] = f"BG/NBD's prediction is not a number for {broken} of {len(values)} customers"
            del stored["bgnbd"]
        else:
            # predictions stop at what the fit itself supports for nearly everyone (see BgNbd.cap)
            # (method "lower": one of the predictions, so a single outlier never sets its own bound)
            cap = float(np.percentile(values, 99, method="lower"))
            stored["bgnbd"]["clv_p99"] = round(cap, 2)
            stored["bgnbd"]["average_clv"] = round(float(np.mean(np.minimum(values, cap))), 2)
    if "bgnbd" not in stored:
        # no prediction the data supports: a customer's value is what they spent (the view says so)
        stored["clv_fallback"] = {"model": "historic", "reason": skipped["bgnbd"]}

    def write(conn: Connection) -> None:
        if "bgnbd" in stored:
            # the average predicted value at each fit, for the scorecard's growth over a period
            row = conn.execute(
                sa.select(planning_models.c.params).where(planning_models.c.name == "clv_history")
            ).first()
            history = list(row.params.get("fits", [])) if row else []
            history.append(
                {
                    "fitted_at": now.isoformat(),
                    "average_clv": stored["bgnbd"]["average_clv"],
                    "currency": money.currency,
                }
            )
            conn.execute(planning_models.delete().where(planning_models.c.name == "clv_history"))
            conn.execute(
                planning_models.insert().values(
                    name="clv_history", params={"fits": history[-400:]}, customers=len(rows), fitted_at=now
                )
            )
        # a fit replaces the other: an earlier BG/NBD the data no longer supports goes
        gone = "clv_fallback" if "bgnbd" in stored else "bgnbd"
        conn.execute(planning_models.delete().where(planning_models.c.name == gone))
        for name, params in stored.items():
            conn.execute(planning_models.delete().where(planning_models.c.name == name))
            conn.execute(planning_models.insert().values(name=name, params=params, customers=len(rows), fitted_at=now))

    for params in stored.values():
        params["currency"] = money.currency
    if stored:
        await store.write(write)
    left_out = {"customers": len(read_rows) - len(rows), "currencies": sorted(apart)}
    return {"customers": len(rows), "stored": stored, "skipped": skipped, "left_out": left_out}
