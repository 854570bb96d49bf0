"""Campaigns: an offer to a segment at some touch points for a while, with a control group.

While a campaign runs, a request at one of its touch points from a customer in its segment
gets its offer, unless the customer falls in the control group: a deterministic hash of
(campaign, customer) under ``control_percent``, so a customer stays on one side for the
whole campaign. The control group's turns are recorded as ``held_out`` offers (never shown).
Both sides are then measured the same way: the share of customers who bought after the
offer was made (or held out), and, for those shown it, who accepted or declined. Lift is
the treated conversion rate over the control's, less one, with its 95% confidence interval
(the relative risk's, from scipy). Revenue per customer on each side counts the sales after
the customer's first offer of the campaign, kept per currency; with a cost, the return on it
is the treated side's extra revenue per customer over the control's, times the treated
customers, less the cost, over the cost: with the rates of ``[money.rates]``
(:mod:`prm_core.planning.money`), every currency converted into the cost's; without a rate
for some currency, only the revenue in the cost's currency, and ``roi_currencies_left_out``
names the others.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from attrs import frozen
from sqlalchemy.engine import Connection

from ..errors import InvalidInput, NotFound
from ..merging import event_purchase
from ..model import Offer
from ..store.tables import campaigns, customer_value, events, offers_made
from .money import Money, check_currency
from .segments import check_name

__all__ = [
    "Campaign",
    "CampaignCost",
    "campaign_results",
    "get_campaign",
    "in_control",
    "parse_campaign",
    "parse_cost",
    "running_campaigns",
    "save_campaign",
]


@frozen
class Campaign:
    name: str
    segment: str
    offer: Mapping[str, Any]
    touchpoints: tuple[str, ...]
    starts_at: datetime
    ends_at: datetime
    control_percent: int

    def running(self, now: datetime, touchpoint: str) -> bool:
        return self.starts_at <= now < self.ends_at and (not self.touchpoints or touchpoint in self.touchpoints)

    def make_offer(self, control: bool) -> Offer:
        o = self.offer
        return Offer(
            code=str(o["code"]),
            title=str(o.get("title", o["code"])),
            score=float(o.get("score", 0.6)),
            source=f"campaign:{self.name}",
            description=str(o.get("description", "")),
            data={"campaign": self.name, "purpose": "marketing", "control": control},
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "segment": self.segment,
            "offer": dict(self.offer),
            "touchpoints": list(self.touchpoints),
            "starts_at": _iso(self.starts_at),
            "ends_at": _iso(self.ends_at),
            "control_percent": self.control_percent,
        }


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def in_control(campaign: str, customer_id: str, percent: int) -> bool:
    """Whether the customer is in the campaign's control group (stable for the campaign)."""
    digest = hashlib.sha256(f"{campaign}\x1f{customer_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < percent


def _time(body: Mapping[str, Any], key: str) -> datetime:
    raw = body.get(key)
    try:
        at = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"{key} must be an RFC 3339 time", key) from None
    if at.tzinfo is None:
        raise InvalidInput(f"{key} must carry a time zone", key)
    return at


def parse_campaign(body: Mapping[str, Any]) -> Campaign:
    """Validate a ``POST /v1/campaigns`` body."""
    allowed = {"name", "segment", "offer", "touchpoints", "starts_at", "ends_at", "control_percent"}
    unknown = set(body) - allowed
    if unknown:
        raise InvalidInput(f"unknown field {sorted(unknown)[0]!r}", sorted(unknown)[0])
    name = check_name(body.get("name"))
    segment = check_name(body.get("segment"), "segment")
    offer = body.get("offer")
    if not isinstance(offer, Mapping) or not isinstance(offer.get("code"), str) or not offer["code"]:
        raise InvalidInput("offer must be an object with a code", "offer.code")
    if set(offer) - {"code", "title", "description", "score"}:
        raise InvalidInput("offer takes code, title, description, score", "offer")
    score = offer.get("score", 0.6)
    if not isinstance(score, int | float) or isinstance(score, bool) or not 0 <= score <= 1:
        raise InvalidInput("offer.score must be a number from 0 to 1", "offer.score")
    touchpoints = body.get("touchpoints", [])
    if not isinstance(touchpoints, list) or not all(isinstance(t, str) for t in touchpoints):
        raise InvalidInput("touchpoints must be a list of touch point names", "touchpoints")
    starts, ends = _time(body, "starts_at"), _time(body, "ends_at")
    if ends <= starts:
        raise InvalidInput("ends_at must be after starts_at", "ends_at")
    control = body.get("control_percent", 10)
    if not isinstance(control, int) or isinstance(control, bool) or not 0 <= control <= 90:
        raise InvalidInput("control_percent must be a whole number from 0 to 90", "control_percent")
    return Campaign(name, segment, dict(offer), tuple(touchpoints), starts, ends, control)


def _campaign(row: Any) -> Campaign:
    return Campaign(
        row.name, row.segment, row.offer, tuple(row.touchpoints), row.starts_at, row.ends_at, row.control_percent
    )


def save_campaign(conn: Connection, campaign: Campaign, now: datetime) -> bool:
    """Create or replace; returns whether it is new."""
    from .segments import get_segment

    get_segment(conn, campaign.segment)  # 404 for a segment that does not exist
    values = campaign.to_json() | {"starts_at": campaign.starts_at, "ends_at": campaign.ends_at}
    exists = conn.execute(sa.select(campaigns.c.name).where(campaigns.c.name == campaign.name)).first()
    if exists is None:
        conn.execute(campaigns.insert().values(**values, created_at=now))
        return True
    conn.execute(campaigns.update().where(campaigns.c.name == campaign.name).values(**values))
    return False


def get_campaign(conn: Connection, name: str) -> Campaign:
    row = conn.execute(sa.select(campaigns).where(campaigns.c.name == name)).one_or_none()
    if row is None:
        raise NotFound(f"no campaign {name!r}")
    return _campaign(row)


def running_campaigns(conn: Connection, now: datetime) -> list[Campaign]:
    c = campaigns.c
    q = sa.select(campaigns).where(c.starts_at <= now, c.ends_at > now).order_by(c.name).limit(100)
    return [_campaign(r) for r in conn.execute(q)]


@frozen
class CampaignCost:
    """What a campaign cost, in one currency."""

    amount: Decimal
    currency: str


def parse_cost(amount: str | None, currency: str | None) -> CampaignCost | None:
    """``?cost=&currency=`` of ``GET /v1/campaigns/{name}``; :class:`InvalidInput` naming the field."""
    if amount is None:
        if currency is not None:
            raise InvalidInput("currency is given without a cost", "cost")
        return None
    try:
        value = Decimal(amount)
    except InvalidOperation:
        raise InvalidInput("cost must be a positive amount", "cost") from None
    if not value.is_finite() or value <= 0:
        raise InvalidInput("cost must be a positive amount", "cost")
    if currency is None:
        raise InvalidInput("currency must be the cost's ISO 4217 code (USD, EUR, ...)", "currency")
    return CampaignCost(value, check_currency(currency, "currency"))


def _lift_interval(treated: dict[str, Any], control: dict[str, Any]) -> list[float] | None:
    """The 95% confidence interval of the lift (relative risk less one), when both sides converted."""
    from scipy.stats.contingency import relative_risk

    if not (treated["converted"] and control["converted"]):
        return None
    result = relative_risk(treated["converted"], treated["customers"], control["converted"], control["customers"])
    ci = result.confidence_interval(0.95)
    if not (math.isfinite(ci.low) and math.isfinite(ci.high)):
        return None
    return [round(ci.low - 1, 4), round(ci.high - 1, 4)]


def _revenue_after_offer(conn: Connection, name: str) -> dict[bool, dict[str, Decimal]]:
    """Per side, the revenue of sales after each customer's first offer of the campaign, per currency."""
    o, e = offers_made.c, events.c
    held = sa.func.coalesce(o.response, "") == "held_out"
    first = (
        sa.select(o.customer_id, held.label("control"), sa.func.min(o.made_at).label("since"))
        .where(o.campaign == name)
        .group_by(o.customer_id, held)
        .subquery()
    )
    q = (
        sa.select(first.c.control, e.data)
        .select_from(events.join(first, e.customer_id == first.c.customer_id))
        .where(e.occurred_at >= first.c.since, e.direction == "inbound")
    )
    revenue: dict[bool, dict[str, Decimal]] = {False: {}, True: {}}
    for control, data in conn.execute(q):
        purchase = event_purchase(data)
        if purchase is not None:
            side = revenue[bool(control)]
            side[purchase.currency] = side.get(purchase.currency, Decimal(0)) + purchase.revenue
    return revenue


def campaign_results(
    conn: Connection, name: str, cost: CampaignCost | None = None, money: Money | None = None
) -> dict[str, Any]:
    """Offers made and held out, responses, conversions and lift with its confidence interval,
    revenue per customer on each side, and the return on ``cost`` when given (converted with
    ``money``'s rates)."""
    money = money or Money()
    o, v = offers_made.c, customer_value.c
    held = sa.func.coalesce(o.response, "") == "held_out"  # NULL (no response yet) is not held out
    q = (
        sa.select(
            held.label("control"),
            sa.func.count().label("offers"),
            sa.func.count(sa.distinct(o.customer_id)).label("customers"),
            sa.func.sum(sa.case((o.response == "accepted", 1), else_=0)).label("accepted"),
            sa.func.sum(sa.case((o.response == "declined", 1), else_=0)).label("declined"),
        )
        .where(o.campaign == name)
        .group_by(held)
    )
    groups = {bool(r.control): r for r in conn.execute(q)}
    # a customer converted when their latest sale came after an offer of the campaign was made (or held out)
    cq = (
        sa.select(held.label("control"), sa.func.count(sa.distinct(o.customer_id)).label("converted"))
        .select_from(offers_made.join(customer_value, v.customer_id == o.customer_id))
        .where(o.campaign == name, v.last_purchase_at >= o.made_at)
        .group_by(held)
    )
    converted = {bool(r.control): int(r.converted) for r in conn.execute(cq)}
    revenue = _revenue_after_offer(conn, name)

    def per_customer(control: bool, customers: int) -> dict[str, str]:
        cents = Decimal("0.01")
        return {c: str((v / customers).quantize(cents)) for c, v in sorted(revenue[control].items()) if customers}

    def side(control: bool) -> dict[str, Any]:
        r = groups.get(control)
        customers = int(r.customers) if r else 0
        out: dict[str, Any] = {
            "customers": customers,
            "converted": converted.get(control, 0),
            "conversion_rate": round(converted.get(control, 0) / customers, 4) if customers else None,
            # per currency, never added across them
            "revenue_per_customer": per_customer(control, customers),
        }
        if not control:
            out |= {
                "offers_made": int(r.offers) if r else 0,
                "accepted": int(r.accepted or 0) if r else 0,
                "declined": int(r.declined or 0) if r else 0,
            }
        return out

    treated, control = side(False), side(True)
    lift = None
    if treated["conversion_rate"] is not None and control["conversion_rate"]:
        lift = round(treated["conversion_rate"] / control["conversion_rate"] - 1, 4)
    out: dict[str, Any] = {
        "treated": treated,
        "control": control,
        "lift": lift,
        "lift_ci95": _lift_interval(treated, control),
    }
    if cost is not None:
        out["cost"] = {"amount": str(cost.amount), "currency": cost.currency}
        out["roi"], left_out = _roi(treated, control, revenue, cost, money)
        out["roi_currencies_left_out"] = left_out
    return out


def _in_cost_currency(amounts: Mapping[str, Decimal], cost: CampaignCost, money: Money) -> tuple[Decimal, list[str]]:
    """``amounts`` in the cost's currency: through the reporting currency when every one has a
    rate (the cost's too), else only the amount already in it, with the currencies left out."""
    to_cost = money.rate(cost.currency)
    total = money.total(amounts)
    if to_cost is not None and total is not None:
        return total / to_cost, []
    return amounts.get(cost.currency, Decimal(0)), sorted(c for c, a in amounts.items() if c != cost.currency and a)


def _roi(
    treated: dict[str, Any],
    control: dict[str, Any],
    revenue: dict[bool, dict[str, Decimal]],
    cost: CampaignCost,
    money: Money,
) -> tuple[float | None, list[str]]:
    """(extra revenue per treated customer over the control's, times the treated customers, less the cost) / cost,
    in the cost's currency; None without customers on both sides. Also the currencies left out."""
    t_total, t_out = _in_cost_currency(revenue[False], cost, money)
    c_total, c_out = _in_cost_currency(revenue[True], cost, money)
    left_out = sorted(set(t_out) | set(c_out))
    if not treated["customers"] or not control["customers"]:
        return None, left_out
    t = t_total / treated["customers"]
    c = c_total / control["customers"]
    gained = (t - c) * treated["customers"]
    return round(float((gained - cost.amount) / cost.amount), 4), left_out
