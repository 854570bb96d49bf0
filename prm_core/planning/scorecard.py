"""The scorecard: touch-point value figures and balanced-scorecard figures, from aggregates.

Per touch point, over the last ``days`` days, from ``touchpoint_days`` (kept current on
ingest, one row per touch point and day) and ``touchpoint_customers`` (one row per customer
seen there that day): distinct customers, buyers and conversion (buyers / customers),
events, dialogues opened, requests answered,
the share answered within budget and the share degraded, offers made and accepted,
revenue recorded there (from ``touchpoint_day_revenue``, per currency), and what customers
answered to surveys about it (``surveys``: answers, CSAT, NPS; from ``survey_answers``, see
:mod:`prm_core.surveys.figures`; a rated name that is no touch point, such as a partner role,
gets a row of its own). Balanced-scorecard
figures: customers and revenue by tier (share of customers and of revenue), retention
(buyers whose latest sale is within ``retention_days``) and churn, repeat rate, and the
average predicted lifetime value as of the last fit.
Each figure is one grouped query; none reads the event log.

Revenue is in the reporting currency (:mod:`prm_core.planning.money`): each revenue figure
is its ``revenue`` (converted; null when part of it is in a currency without a rate), its
``revenue_by_currency`` and its ``mixed_currencies``; the scorecard's ``mixed_currencies``
lists every currency kept apart anywhere in it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..config import Config
from ..store.tables import (
    customer_value,
    customers,
    metrics,
    planning_models,
    touchpoint_customers,
    touchpoint_day_revenue,
    touchpoint_days,
)
from ..surveys.figures import no_answers, survey_figures
from .money import Money, add_amounts, mixed_of

__all__ = ["reporting_currency", "scorecard"]


def reporting_currency(config: Config) -> str:
    """The ISO 4217 code the figures are reported in: ``[money] reporting_currency`` (or its
    older name ``[planning] currency``), ``USD`` when unset; a bad one raises :class:`ConfigError`."""
    return Money.from_config(config).currency


def _revenue(money: Money, amounts: Mapping[str, Decimal]) -> dict[str, Any]:
    """A revenue figure: converted ``revenue`` (or null), ``revenue_by_currency``, ``mixed_currencies``."""
    figure = money.figure(amounts)
    return {
        "revenue": figure["amount"],
        "revenue_by_currency": figure["by_currency"],
        "mixed_currencies": figure["mixed_currencies"],
    }


def _tier_revenue(conn: Connection) -> dict[str | None, dict[str, Decimal]]:
    """Each tier's revenue per currency: the customers' ``revenue_by_currency`` expanded by the
    database (one grouped query, no customer read into Python)."""
    c, m = customers.c, metrics.c
    if conn.dialect.name == "postgresql":
        each = sa.func.jsonb_each_text(m.revenue_by_currency).table_valued("key", "value")
    else:
        each = sa.func.json_each(m.revenue_by_currency).table_valued("key", "value")
    q = (
        sa.select(c.tier, each.c.key, sa.func.sum(sa.cast(each.c.value, sa.Numeric(18, 4))).label("revenue"))
        .select_from(customers.join(metrics, m.customer_id == c.id).join(each, sa.true()))
        .where(c.merged_into.is_(None))
        .group_by(c.tier, each.c.key)
    )
    found: dict[str | None, dict[str, Decimal]] = {}
    for r in conn.execute(q):
        add_amounts(found.setdefault(r.tier, {}), {r.key: r.revenue or 0})
    return found


def _amounts_by(rows: Iterable[Any], *key: str) -> dict[Any, dict[str, Decimal]]:
    found: dict[Any, dict[str, Decimal]] = {}
    for r in rows:
        k = tuple(getattr(r, name) for name in key)
        add_amounts(found.setdefault(k if len(k) > 1 else k[0], {}), {r.currency: r.revenue or 0})
    return found


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def scorecard(
    conn: Connection,
    touchpoints: list[str],
    now: datetime,
    *,
    days: int = 30,
    retention_days: int = 365,
    money: Money | None = None,
) -> dict[str, Any]:
    """The scorecard as of ``now`` (``touchpoints``: the registered ones, shown even when idle),
    revenue in ``money``'s reporting currency (``USD`` by default)."""
    money = money or Money()
    since = (now - timedelta(days=days - 1)).date().isoformat()
    t = touchpoint_days.c
    columns = ("events", "dialogues", "requests", "in_budget", "degraded", "offers_made", "offers_accepted")
    q = (
        sa.select(t.touchpoint, *(sa.func.sum(getattr(t, col)).label(col) for col in columns))
        .where(t.day >= since)
        .group_by(t.touchpoint)
    )
    rows = {r.touchpoint: r for r in conn.execute(q)}
    d = touchpoint_day_revenue.c
    money_q = (
        sa.select(d.touchpoint, d.currency, sa.func.sum(d.revenue).label("revenue"))
        .where(d.day >= since)
        .group_by(d.touchpoint, d.currency)
    )
    revenue = _amounts_by(conn.execute(money_q), "touchpoint")
    v_ = touchpoint_customers.c
    cq = (
        sa.select(
            v_.touchpoint,
            sa.func.count(sa.distinct(v_.customer_id)).label("customers"),
            sa.func.count(sa.distinct(sa.case((v_.bought, v_.customer_id)))).label("buyers"),
        )
        .where(v_.day >= since)
        .group_by(v_.touchpoint)
    )
    visitors = {r.touchpoint: (int(r.customers), int(r.buyers)) for r in conn.execute(cq)}
    # what customers answered to surveys about each touch point (prm_core.surveys)
    surveys = survey_figures(conn, since)
    per_touchpoint = []
    for name in sorted(set(touchpoints) | set(rows) | set(revenue) | set(surveys)):
        r = rows.get(name)
        n = {c: int(getattr(r, c) or 0) if r else 0 for c in columns}
        per_touchpoint.append(
            {
                "touchpoint": name,
                **n,
                "customers": visitors.get(name, (0, 0))[0],
                "buyers": visitors.get(name, (0, 0))[1],
                "conversion_rate": _rate(visitors.get(name, (0, 0))[1], visitors.get(name, (0, 0))[0]),
                "in_budget_rate": _rate(n["in_budget"], n["requests"]),
                "degraded_rate": _rate(n["degraded"], n["requests"]),
                "acceptance_rate": _rate(n["offers_accepted"], n["offers_made"]),
                **_revenue(money, revenue.get(name, {})),
                "surveys": surveys.get(name) or no_answers(),
            }
        )

    # the daily series of the period, for charts: at most days x touch points rows
    sq = (
        sa.select(t.touchpoint, t.day, t.requests, t.in_budget, t.degraded)
        .where(t.day >= since)
        .order_by(t.day, t.touchpoint)
    )
    daily_q = sa.select(d.touchpoint, d.day, d.currency, d.revenue).where(d.day >= since)
    daily_revenue = _amounts_by(conn.execute(daily_q), "touchpoint", "day")
    daily = [
        {
            "touchpoint": r.touchpoint,
            "day": r.day,
            "requests": r.requests,
            "in_budget_rate": _rate(r.in_budget, r.requests),
            "degraded_rate": _rate(r.degraded, r.requests),
            **_revenue(money, daily_revenue.get((r.touchpoint, r.day), {})),
        }
        for r in conn.execute(sq)
    ]

    c = customers.c
    tq = sa.select(c.tier, sa.func.count().label("customers")).where(c.merged_into.is_(None)).group_by(c.tier)
    counts = {r.tier: int(r.customers) for r in conn.execute(tq)}
    tier_amounts = _tier_revenue(conn)
    tiers = [(tier, n, money.total(tier_amounts.get(tier, {}))) for tier, n in counts.items()]
    all_customers = sum(counts.values())
    # shares of revenue only when every tier's revenue is one amount in the reporting currency
    converted = [rev for _, _, rev in tiers if rev is not None]
    all_revenue = sum(converted, Decimal(0)) if len(converted) == len(tiers) else None
    by_tier = [
        {
            "tier": tier,
            "customers": n,
            "customer_share": _rate(n, all_customers),
            **_revenue(money, tier_amounts.get(tier, {})),
            "revenue_share": round(float(rev / all_revenue), 4) if all_revenue and rev is not None else None,
        }
        for tier, n, rev in sorted(tiers, key=lambda x: (-(x[2] or 0), -x[1], x[0] or ""))
    ]

    v = customer_value.c
    cutoff = now - timedelta(days=retention_days)
    rq = sa.select(
        sa.func.count().label("buyers"),
        sa.func.sum(sa.case((v.last_purchase_at >= cutoff, 1), else_=0)).label("retained"),
        sa.func.sum(sa.case((v.purchases >= 2, 1), else_=0)).label("repeat"),
    ).select_from(customer_value.join(customers, customers.c.id == v.customer_id))
    rq = rq.where(c.merged_into.is_(None))
    r = conn.execute(rq).one()
    buyers, retained, repeat = int(r.buyers or 0), int(r.retained or 0), int(r.repeat or 0)
    model = conn.execute(sa.select(planning_models).where(planning_models.c.name == "bgnbd")).one_or_none()
    if model is not None and model.params.get("currency") not in (None, money.currency):
        model = None  # fitted in another currency: its figures are not in this one (prm plan fit)
    history = conn.execute(sa.select(planning_models.c.params).where(planning_models.c.name == "clv_history")).first()
    fits = [
        f
        for f in (history.params.get("fits", []) if history else [])
        if f["fitted_at"] >= since and f.get("currency") in (None, money.currency)
    ]
    growth = None
    if len(fits) >= 2 and fits[0]["average_clv"]:
        growth = round(fits[-1]["average_clv"] / fits[0]["average_clv"] - 1, 4)
    return {
        "as_of": now.isoformat().replace("+00:00", "Z"),
        "period_days": days,
        "currency": money.currency,
        "rates": money.to_json()["rates"],
        # every currency kept apart in some figure for want of a rate (empty: all converted)
        "mixed_currencies": mixed_of([*per_touchpoint, *by_tier]),
        "touchpoints": per_touchpoint,
        "daily": daily,
        "balanced": {
            "customers": all_customers,
            "by_tier": by_tier,
            "buyers": buyers,
            "retention_days": retention_days,
            "retention_rate": _rate(retained, buyers),
            "churn_rate": _rate(buyers - retained, buyers),
            "repeat_rate": _rate(repeat, buyers),
            "average_clv": model.params.get("average_clv") if model else None,
            "clv_fitted_at": model.fitted_at.isoformat().replace("+00:00", "Z") if model else None,
            # the average predicted value at the last fit of the period over that at its first
            "clv_growth": growth,
        },
    }
