"""Campaigns: an offer to a segment at some touch points for a while, with a control group.

While a campaign runs, a request at one of its touch points from a customer in its segment
gets its offer, unless the customer falls in the control group: a deterministic hash of
(campaign, customer) under ``control_percent``, so a customer stays on one side for the
whole campaign. The control group's turns are recorded as ``held_out`` offers (never shown).
Both sides are then measured the same way: the share of customers who bought after the
offer was made (or held out), and, for those shown it, who accepted or declined. Lift is
the treated conversion rate over the control's, less one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from attrs import frozen
from sqlalchemy.engine import Connection

from ..errors import InvalidInput, NotFound
from ..model import Offer
from ..store.tables import campaigns, customer_value, offers_made
from .segments import check_name

__all__ = [
    "Campaign",
    "campaign_results",
    "get_campaign",
    "in_control",
    "parse_campaign",
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


def campaign_results(conn: Connection, name: str) -> dict[str, Any]:
    """Offers made and held out, responses, conversions and lift: two aggregate queries."""
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

    def side(control: bool) -> dict[str, Any]:
        r = groups.get(control)
        customers = int(r.customers) if r else 0
        out: dict[str, Any] = {
            "customers": customers,
            "converted": converted.get(control, 0),
            "conversion_rate": round(converted.get(control, 0) / customers, 4) if customers else None,
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
    return {"treated": treated, "control": control, "lift": lift}
