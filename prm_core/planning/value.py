"""The value model of one customer: the facts rules see and the 360 view shows.

Everything here is computed from two rows kept current on ingest (``customer_metrics``,
written by the core, and ``customer_value``, written by planning in the same transaction)
plus the fitted parameters: O(1) per customer, never a scan of their history.

Recency / frequency / monetary scores are quintiles 1-5 against four cut points each:
``recency_days`` (days since the latest sale; fewer is better), ``frequency`` (sales) and
``monetary`` (sum of sales). The cut points are ``[value.rfm]`` in the config when given
there (fixed), else the quintiles ``prm plan fit`` measured over all customers, else the
defaults below.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from attrs import frozen

from ..errors import ConfigError
from .clv import BgNbd, GammaGamma

__all__ = ["DEFAULT_RFM", "Rfm", "customer_facts", "rfm_from_config"]

CLV_HORIZON_DAYS = 365
_DAY = 86400.0


@frozen
class Rfm:
    """Four ascending cut points for each of recency (days), frequency and monetary."""

    recency_days: tuple[float, ...]
    frequency: tuple[float, ...]
    monetary: tuple[float, ...]
    source: str = "default"

    def scores(self, recency_days: float, frequency: float, monetary: float) -> tuple[int, int, int]:
        # fewer days since the last sale is better: 5 at or under the first cut point
        r = 5 - bisect.bisect_left(self.recency_days, recency_days)
        f = 1 + bisect.bisect_left(self.frequency, frequency)
        m = 1 + bisect.bisect_left(self.monetary, monetary)
        return r, f, m

    def to_json(self) -> dict[str, Any]:
        return {
            "recency_days": list(self.recency_days),
            "frequency": list(self.frequency),
            "monetary": list(self.monetary),
            "source": self.source,
        }


DEFAULT_RFM = Rfm((30, 90, 180, 365), (1, 2, 4, 8), (100, 500, 1000, 5000))


def _cuts(raw: Any, where: str) -> tuple[float, ...]:
    if (
        not isinstance(raw, list)
        or len(raw) != 4
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw)
        or sorted(raw) != raw
    ):
        raise ConfigError(f"{where} must be four ascending numbers (the quintile cut points)")
    return tuple(float(v) for v in raw)


def rfm_from_config(section: Mapping[str, Any]) -> Rfm | None:
    """Fixed cut points from ``[value.rfm]``, or ``None`` to use the fitted ones."""
    if not section:
        return None
    unknown = set(section) - {"recency_days", "frequency", "monetary"}
    if unknown:
        raise ConfigError(f"[value.rfm] has unknown key {sorted(unknown)[0]!r}")
    return Rfm(
        _cuts(section.get("recency_days", list(DEFAULT_RFM.recency_days)), "[value.rfm].recency_days"),
        _cuts(section.get("frequency", list(DEFAULT_RFM.frequency)), "[value.rfm].frequency"),
        _cuts(section.get("monetary", list(DEFAULT_RFM.monetary)), "[value.rfm].monetary"),
        source="config",
    )


def rfm_from_params(params: Mapping[str, Any]) -> Rfm:
    return Rfm(tuple(params["recency_days"]), tuple(params["frequency"]), tuple(params["monetary"]), source="fitted")


def _days(later: datetime, earlier: datetime | None) -> float | None:
    return None if earlier is None else max(0.0, (later - earlier).total_seconds() / _DAY)


def _num(value: Any) -> float:
    return float(value) if value is not None else 0.0


def customer_facts(
    *,
    kind: str,
    tier: str | None,
    traits: Mapping[str, Any],
    metrics: Mapping[str, Any],
    value: Mapping[str, Any] | None,
    rfm: Rfm,
    bgnbd: BgNbd | None,
    gamma_gamma: GammaGamma | None,
    now: datetime,
    historic: bool = False,
) -> dict[str, Any]:
    """Every name of :data:`prm_core.planning.rules.NAMES` for one customer.

    ``metrics`` has the columns of ``customer_metrics``; ``value`` those of
    ``customer_value`` (``None`` when the customer never bought). The lifetime value is
    BG/NBD's expected purchases over the horizon times the expected spend, at most the fit's
    cap (:attr:`BgNbd.cap`); with ``historic`` (the last fit refused BG/NBD: too little
    history, or no convergence) it is what the customer has spent, predicting nothing.
    """
    revenue = _num(metrics.get("lifetime_revenue"))
    orders = _num(metrics.get("order_count"))
    touchpoints: Sequence[str] = list(metrics.get("touchpoints") or [])
    purchases = int(value["purchases"]) if value else 0
    total = _num(value["purchase_total"]) if value else 0.0
    first_buy = value.get("first_purchase_at") if value else None
    last_buy = value.get("last_purchase_at") if value else None
    facts: dict[str, Any] = {
        "kind": kind,
        "tier": tier,
        "traits": dict(traits),
        "lifetime_revenue": round(revenue, 2),
        "order_count": orders,
        "event_count": _num(metrics.get("event_count")),
        "average_sale": round(revenue / orders, 2) if orders else None,
        "purchases": float(purchases),
        "touchpoints": sorted(touchpoints),
        "touchpoint_count": float(len(touchpoints)),
        "days_since_first_seen": _days(now, metrics.get("first_seen_at")),
        "days_since_last_seen": _days(now, metrics.get("last_seen_at")),
        "days_since_last_purchase": _days(now, last_buy),
        "r_score": None,
        "f_score": None,
        "m_score": None,
        "rfm": None,
        "clv": None,
        "p_alive": None,
        "churn_risk": None,
    }
    if purchases and last_buy is not None and first_buy is not None:
        r, f, m = rfm.scores(facts["days_since_last_purchase"], purchases, total)
        facts.update(r_score=float(r), f_score=float(f), m_score=float(m), rfm=f"{r}{f}{m}")
        if bgnbd is not None:
            x = purchases - 1
            t_x = (last_buy - first_buy).total_seconds() / _DAY
            age = max((now - first_buy).total_seconds() / _DAY, t_x)
            alive = bgnbd.p_alive(x, t_x, age)
            expected = bgnbd.expected_purchases(CLV_HORIZON_DAYS, x, t_x, age)
            spend = gamma_gamma.expected_spend(purchases, total / purchases) if gamma_gamma else total / purchases
            clv = expected * spend
            if bgnbd.cap is not None:
                clv = min(clv, bgnbd.cap)
            facts.update(
                p_alive=round(alive, 4),
                churn_risk=round(1 - alive, 4),
                clv=round(clv, 2),
            )
        elif historic:
            facts["clv"] = round(total, 2)
    return facts


def decimal_or_none(value: Any) -> Decimal | None:
    return Decimal(str(value)) if value is not None else None
