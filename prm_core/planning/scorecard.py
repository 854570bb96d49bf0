"""The scorecard: touch-point value figures and balanced-scorecard figures, from aggregates.

Per touch point, over the last ``days`` days, from ``touchpoint_days`` (kept current on
ingest, one row per touch point and day) and ``touchpoint_customers`` (one row per customer
seen there that day): distinct customers, buyers and conversion (buyers / customers),
events, dialogues opened, requests answered,
the share answered within budget and the share degraded, offers made and accepted, and
revenue recorded there. Balanced-scorecard figures: customers and revenue by tier (share of
customers and of revenue), retention (buyers whose latest sale is within ``retention_days``)
and churn, repeat rate, and the average predicted lifetime value as of the last fit.
Each figure is one grouped query; none reads the event log.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..config import Config
from ..errors import ConfigError
from ..store.tables import (
    customer_value,
    customers,
    metrics,
    planning_models,
    touchpoint_customers,
    touchpoint_days,
)

__all__ = ["reporting_currency", "scorecard"]

_CURRENCY = re.compile(r"^[A-Z]{3}$")


def reporting_currency(config: Config) -> str:
    """``[planning] currency``: the ISO 4217 code the scorecard's revenue is reported in
    (``USD`` when unset); pages format money with it."""
    value = config.section("planning").get("currency", "USD")
    if not isinstance(value, str) or not _CURRENCY.match(value):
        raise ConfigError(f"[planning].currency must be an ISO 4217 code such as USD or EUR, not {value!r}")
    return value


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def scorecard(
    conn: Connection, touchpoints: list[str], now: datetime, *, days: int = 30, retention_days: int = 365
) -> dict[str, Any]:
    """The scorecard as of ``now`` (``touchpoints``: the registered ones, shown even when idle)."""
    since = (now - timedelta(days=days - 1)).date().isoformat()
    t = touchpoint_days.c
    columns = ("events", "dialogues", "requests", "in_budget", "degraded", "offers_made", "offers_accepted")
    q = (
        sa.select(
            t.touchpoint,
            *(sa.func.sum(getattr(t, col)).label(col) for col in columns),
            sa.func.sum(t.revenue).label("revenue"),
        )
        .where(t.day >= since)
        .group_by(t.touchpoint)
    )
    rows = {r.touchpoint: r for r in conn.execute(q)}
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
    per_touchpoint = []
    for name in sorted(set(touchpoints) | set(rows)):
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
                "revenue": str(Decimal(r.revenue or 0).quantize(Decimal("0.01"))) if r else "0.00",
            }
        )

    # the daily series of the period, for charts: at most days x touch points rows
    sq = (
        sa.select(t.touchpoint, t.day, t.requests, t.in_budget, t.degraded, t.revenue)
        .where(t.day >= since)
        .order_by(t.day, t.touchpoint)
    )
    daily = [
        {
            "touchpoint": r.touchpoint,
            "day": r.day,
            "requests": r.requests,
            "in_budget_rate": _rate(r.in_budget, r.requests),
            "degraded_rate": _rate(r.degraded, r.requests),
            "revenue": str(Decimal(r.revenue).quantize(Decimal("0.01"))),
        }
        for r in conn.execute(sq)
    ]

    c, m = customers.c, metrics.c
    tq = (
        sa.select(c.tier, sa.func.count().label("customers"), sa.func.sum(m.lifetime_revenue).label("revenue"))
        .select_from(customers.outerjoin(metrics, m.customer_id == c.id))
        .where(c.merged_into.is_(None))
        .group_by(c.tier)
    )
    tiers = [(r.tier, int(r.customers), Decimal(r.revenue or 0)) for r in conn.execute(tq)]
    all_customers = sum(n for _, n, _ in tiers)
    all_revenue = sum((rev for _, _, rev in tiers), Decimal(0))
    by_tier = [
        {
            "tier": tier,
            "customers": n,
            "customer_share": _rate(n, all_customers),
            "revenue": str(rev.quantize(Decimal("0.01"))),
            "revenue_share": round(float(rev / all_revenue), 4) if all_revenue else None,
        }
        for tier, n, rev in sorted(tiers, key=lambda x: -x[2])
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
    history = conn.execute(sa.select(planning_models.c.params).where(planning_models.c.name == "clv_history")).first()
    fits = [f for f in (history.params.get("fits", []) if history else []) if f["fitted_at"] >= since]
    growth = None
    if len(fits) >= 2 and fits[0]["average_clv"]:
        growth = round(fits[-1]["average_clv"] / fits[0]["average_clv"] - 1, 4)
    return {
        "as_of": now.isoformat().replace("+00:00", "Z"),
        "period_days": days,
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
