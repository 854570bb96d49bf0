"""The 360-degree view of a customer, from bounded queries only.

Each part is a query on an index with a ``LIMIT``: the customer, its identities, its
metrics row (kept current on ingest), one page of the timeline, its recent dialogues,
its groups and (for a group) its members, its partner work and its latest survey
answers. Nothing loads a customer's whole history, so the cost does not grow with the
size of the store or of the customer's past.

A group's view aggregates its members: the timeline and dialogues are those of the
group and its members, the metrics are summed.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .errors import InvalidInput, NotFound
from .identity import parse_ref
from .merging import PurchaseTotals
from .model import Customer, CustomerView, Dialogue, Identity, TimelineEntry
from .outbox import fulfillments_of
from .privacy.consents import load_consents
from .store.lists import one_of
from .store.tables import customers, dialogues, events, identities, memberships, metrics, shared_links
from .surveys.figures import answers_of

__all__ = ["build_view", "decode_cursor", "encode_cursor", "resolve_ref"]

MAX_IDENTITIES = 100
MAX_DIALOGUES = 10
MAX_GROUPS = 50
MAX_MEMBERS = 100
MAX_PAGE = 200

# The view's statements are built once, here, with bind parameters: building a statement
# (coercing every operand) and generating its cache key cost more than running it on an
# index. One constant per shape (one owner or a group's several, with or without a cursor).
_CID: sa.BindParameter[str] = sa.bindparam("customer_id")
_OWNERS: sa.BindParameter[list[str]] = sa.bindparam("owners", expanding=True)
_LIMIT: sa.BindParameter[int] = sa.bindparam("limit", type_=sa.Integer())

_IDENTITY_Q = sa.select(identities.c.customer_id).where(
    identities.c.namespace == sa.bindparam("namespace"), identities.c.value == sa.bindparam("value")
)
_CUSTOMER_REF_Q = sa.select(customers.c.id, customers.c.merged_into).where(customers.c.id == _CID)
_CUSTOMER_Q = sa.select(customers).where(customers.c.id == _CID)


def _memberships_q(listed: Any, of: Any, limit: int) -> sa.Select[Any]:
    """The ``listed`` side of the memberships ``of`` a customer (a group's members, or a
    member's groups), with each listed customer's kind and traits, in membership order."""
    m = memberships.c
    return (
        sa.select(listed, m.role, customers.c.kind, customers.c.traits)
        .join(customers, customers.c.id == listed)
        .where(of == _CID)
        .order_by(m.created_at, listed)
        .limit(limit)
    )


_MEMBERS_Q = _memberships_q(memberships.c.member_id, memberships.c.group_id, MAX_MEMBERS)
_IDENTITIES_Q = (
    sa.select(identities.c.namespace, identities.c.value)
    .where(identities.c.customer_id == _CID)
    .order_by(identities.c.namespace, identities.c.value)
    .limit(MAX_IDENTITIES)
)
_SHARED_Q = (
    sa.select(shared_links.c.namespace, shared_links.c.value)
    .where(shared_links.c.customer_id == _CID)
    .order_by(shared_links.c.namespace, shared_links.c.value)
    .limit(MAX_IDENTITIES)
)


def _timeline_q(*, group: bool, after_cursor: bool) -> sa.Select[Any]:
    e = events.c
    q = sa.select(e.seq, e.touchpoint, e.event_id, e.type, e.occurred_at, e.dialogue_id, e.direction, e.data)
    q = q.where(e.customer_id.in_(_OWNERS)) if group else q.where(e.customer_id == _CID)
    if after_cursor:
        at: sa.BindParameter[datetime] = sa.bindparam("at")
        seq: sa.BindParameter[int] = sa.bindparam("seq")
        q = q.where(sa.or_(e.occurred_at < at, sa.and_(e.occurred_at == at, e.seq < seq)))
    return q.order_by(e.occurred_at.desc(), e.seq.desc()).limit(_LIMIT)


# keyed by (group, after_cursor)
_TIMELINE_Q = {
    (group, after): _timeline_q(group=group, after_cursor=after) for group in (False, True) for after in (False, True)
}
_DIALOGUES_Q = {
    group: sa.select(dialogues)
    .where(dialogues.c.customer_id.in_(_OWNERS) if group else dialogues.c.customer_id == _CID)
    .order_by(dialogues.c.last_event_at.desc())
    .limit(MAX_DIALOGUES)
    for group in (False, True)
}
# read on every view, the owners one parameter: per database kind (prm_core.store.lists)
_METRICS_Q = {pg: sa.select(metrics).where(one_of(metrics.c.customer_id, "owners", pg)) for pg in (False, True)}
_GROUPS_Q = _memberships_q(memberships.c.group_id, memberships.c.member_id, MAX_GROUPS)
_MERGED_Q = {
    pg: sa.select(customers.c.id).where(one_of(customers.c.merged_into, "owners", pg)).limit(MAX_MEMBERS)
    for pg in (False, True)
}


def encode_cursor(occurred_at: datetime, seq: int) -> str:
    return base64.urlsafe_b64encode(f"{occurred_at.isoformat()}|{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, seq = raw.rsplit("|", 1)
        when = datetime.fromisoformat(at)
        if when.tzinfo is None:
            raise ValueError("naive")
        return when, int(seq)
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise InvalidInput("cursor is not one this hub gave out", "cursor") from None


def resolve_ref(conn: Connection, ref: str, namespaces: Mapping[str, Any], region: str) -> str:
    """A customer id, or ``namespace:value`` normalized as at ingest; follows merges."""
    if ":" in ref:
        ident = parse_ref(ref, namespaces, region)
        value = ident.value
        cid = conn.execute(_IDENTITY_Q, {"namespace": ident.namespace, "value": value}).scalar_one_or_none()
        if cid is None:
            raise NotFound(f"no customer with that {ident.namespace}")
        return str(cid)
    row = conn.execute(_CUSTOMER_REF_Q, {"customer_id": ref}).one_or_none()
    if row is None:
        raise NotFound(f"no customer {ref}")
    return str(row.merged_into or row.id)


def _customer(row: Any) -> Customer:
    return Customer(
        id=row.id,
        kind=row.kind,
        tier=row.tier,
        tier_source=row.tier_source,
        traits=row.traits,
        created_at=row.created_at,
    )


def _dialogue(row: Any) -> Dialogue:
    return Dialogue(
        id=row.id,
        touchpoint=row.touchpoint,
        customer_id=row.customer_id,
        ref=row.ref,
        status=row.status,
        intent=row.intent,
        outcome=row.outcome,
        opened_at=row.opened_at,
        last_event_at=row.last_event_at,
        closed_at=row.closed_at,
    )


def build_view(conn: Connection, customer_id: str, *, cursor: str | None = None, limit: int = 20) -> CustomerView:
    """Assemble the view of ``customer_id`` (already resolved, not merged away)."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}", "limit")
    one = {"customer_id": customer_id}
    row = conn.execute(_CUSTOMER_Q, one).one_or_none()
    if row is None:
        raise NotFound(f"no customer {customer_id}")
    customer = _customer(row)
    members = []
    if customer.kind != "person":
        members = [
            {"id": r.member_id, "role": r.role, "kind": r.kind, "name": _name(r.traits)}
            for r in conn.execute(_MEMBERS_Q, one)
        ]
    owners = [customer_id, *(x["id"] for x in members)]
    group = len(owners) > 1
    of_owners = {"customer_id": customer_id, "owners": owners}

    idents = tuple(Identity(r.namespace, r.value) for r in conn.execute(_IDENTITIES_Q, one))
    shared_idents = tuple(
        {"namespace": r.namespace, "value": r.value, "shared": True} for r in conn.execute(_SHARED_Q, one)
    )

    page: dict[str, Any] = {**of_owners, "limit": limit + 1}
    if cursor:
        page["at"], page["seq"] = decode_cursor(cursor)
    rows = conn.execute(_TIMELINE_Q[group, bool(cursor)], page).all()
    next_cursor = encode_cursor(rows[limit - 1].occurred_at, rows[limit - 1].seq) if len(rows) > limit else None
    timeline = tuple(
        TimelineEntry(
            event_id=r.event_id,
            touchpoint=r.touchpoint,
            type=r.type,
            occurred_at=r.occurred_at,
            dialogue=r.dialogue_id,
            direction=r.direction,
            data=r.data,
        )
        for r in rows[:limit]
    )

    dlgs = tuple(_dialogue(r) for r in conn.execute(_DIALOGUES_Q[group], of_owners))

    totals: dict[str, Any] = {"event_count": 0, "order_count": 0, "lifetime_revenue": Decimal(0)}
    seen: set[str] = set()
    firsts, lasts = [], []
    purchases = PurchaseTotals()
    for r in conn.execute(_METRICS_Q[conn.dialect.name == "postgresql"], of_owners):
        totals["event_count"] += r.event_count
        totals["order_count"] += r.order_count
        totals["lifetime_revenue"] += r.lifetime_revenue
        purchases.add(PurchaseTotals.from_row(r))
        seen.update(r.touchpoints)
        firsts.append(r.first_seen_at)
        lasts.append(r.last_seen_at)
    bought = purchases.columns()
    totals["return_count"] = bought["return_count"]
    cents = Decimal("0.01")
    by_currency = bought["revenue_by_currency"]
    totals["revenue_by_currency"] = {c: str(Decimal(v).quantize(cents)) for c, v in by_currency.items()}
    totals["categories"] = {c: n for c, n in bought["categories"].items() if n > 0}
    totals["last_purchase_at"] = bought["last_purchase_at"]
    totals["average_sale"] = (
        (totals["lifetime_revenue"] / totals["order_count"]).quantize(Decimal("0.01"))
        if totals["order_count"]
        else None
    )
    totals["lifetime_revenue"] = totals["lifetime_revenue"].quantize(Decimal("0.01"))
    totals["first_seen_at"] = min(filter(None, firsts), default=None)
    totals["last_seen_at"] = max(filter(None, lasts), default=None)
    totals["touchpoints"] = sorted(seen)

    groups = tuple(
        {"group_id": r.group_id, "role": r.role, "kind": r.kind, "name": _name(r.traits)}
        for r in conn.execute(_GROUPS_Q, one)
    )

    everyone = _with_merged(conn, owners)
    return CustomerView(
        customer=customer,
        identities=idents,
        shared_identities=shared_idents,
        timeline=timeline,
        next_cursor=next_cursor,
        dialogues=dlgs,
        metrics=totals,
        memberships=groups,
        members=tuple(members),
        sections={
            "fulfillments": [f.to_json() for f in fulfillments_of(conn, everyone)],
            # what the customer answered to surveys, newest first (prm_core.surveys)
            "surveys": answers_of(conn, everyone),
        },
        consents=load_consents(conn, customer_id),
    )


def _with_merged(conn: Connection, owners: list[str]) -> list[str]:
    """These customers and those merged into them: partner work is not moved by a merge."""
    merged = conn.execute(_MERGED_Q[conn.dialect.name == "postgresql"], {"owners": owners}).scalars()
    return [*owners, *merged]


def _name(traits: Mapping[str, Any]) -> str | None:
    name = traits.get("name")
    if isinstance(name, str):
        return name
    parts = [traits.get("first_name"), traits.get("last_name")]
    joined = " ".join(p for p in parts if isinstance(p, str))
    return joined or None
