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
from ..merging import NO_CURRENCY
from .clv import BgNbd, GammaGamma
from .money import Money

__all__ = ["DEFAULT_RFM", "Rfm", "amounts_of", "customer_facts", "rfm_from_config"]

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
    money: Money | None = None,
) -> dict[str, Any]:
    """Every name of :data:`prm_core.planning.rules.NAMES` for one customer.

    ``metrics`` has the columns of ``customer_metrics``; ``value`` those of
    ``customer_value`` (``None`` when the customer never bought). The lifetime value is
    BG/NBD's expected purchases over the horizon times the expected spend, at most the fit's
    cap (:attr:`BgNbd.cap`); with ``historic`` (the last fit refused BG/NBD: too little
    history, or no convergence) it is what the customer has spent, predicting nothing.

    Money figures (``lifetime_revenue``, ``average_sale``, the monetary score and ``clv``) are
    in ``money``'s reporting currency; with an amount in a currency without a rate they are
    null (the amounts stay apart in ``revenue_by_currency``, the currencies in ``mixed_currencies``).
    """
    money = money or Money()
    by_currency = amounts_of(metrics.get("revenue_by_currency"), metrics.get("lifetime_revenue"))
    converted = money.total(by_currency)
    revenue = None if converted is None else float(converted)
    orders = _num(metrics.get("order_count"))
    touchpoints: Sequence[str] = list(metrics.get("touchpoints") or [])
    purchases = int(value["purchases"]) if value else 0
    spent_by_currency = (
        amounts_of(value.get("purchase_total_by_currency"), value.get("purchase_total")) if value else {}
    )
    spent = money.total(spent_by_currency)
    total = None if spent is None else float(spent)
    first_buy = value.get("first_purchase_at") if value else None
    last_buy = value.get("last_purchase_at") if value else None
    facts: dict[str, Any] = {
        "kind": kind,
        "tier": tier,
        "traits": dict(traits),
        "lifetime_revenue": None if revenue is None else round(revenue, 2),
        "revenue_by_currency": {c: float(a) for c, a in by_currency.items()},
        "mixed_currencies": sorted(set(money.mixed(by_currency)) | set(money.mixed(spent_by_currency))),
        "order_count": orders,
        "event_count": _num(metrics.get("event_count")),
        "average_sale": round(revenue / orders, 2) if orders and revenue is not None else None,
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
        r, f, m = rfm.scores(facts["days_since_last_purchase"], purchases, total if total is not None else 0.0)
        facts.update(r_score=float(r), f_score=float(f))
        if total is not None:
            # spent in a currency without a rate: no monetary score and no value, rather than wrong ones
            facts.update(m_score=float(m), rfm=f"{r}{f}{m}")
        if bgnbd is not None:
            x = purchases - 1
            t_x = (last_buy - first_buy).total_seconds() / _DAY
            age = max((now - first_buy).total_seconds() / _DAY, t_x)
            alive = bgnbd.p_alive(x, t_x, age)
            facts.update(p_alive=round(alive, 4), churn_risk=round(1 - alive, 4))
            if total is not None:
                expected = bgnbd.expected_purchases(CLV_HORIZON_DAYS, x, t_x, age)
                spend = gamma_gamma.expected_spend(purchases, total / purchases) if gamma_gamma else total / purchases
                clv = expected * spend
                if bgnbd.cap is not None:
                    clv = min(clv, bgnbd.cap)
                facts["clv"] = round(clv, 2)
        elif historic and total is not None:
            facts["clv"] = round(total, 2)
    return facts


def amounts_of(amounts: Any, total: Any) -> dict[str, Decimal]:
    """Amounts per currency (non-zero) from a stored row; a row from before currencies were kept (its
    total but no amounts) counts as revenue without a currency."""
    if amounts:
        return {c: Decimal(str(a)) for c, a in amounts.items() if Decimal(str(a)) != 0}
    if total is not None and Decimal(str(total)) != 0:
        return {NO_CURRENCY: Decimal(str(total))}
    return {}


def decimal_or_none(value: Any) -> Decimal | None:
    return Decimal(str(value)) if value is not None else None
