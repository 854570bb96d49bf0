"""Merging two customers into one, with an audit record, and undoing it.

Both run inside the caller's write transaction on a sync connection, so a merge is all or
nothing. The audit record (``merges.moved``) lists what moved, which is exactly what an
unmerge moves back.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from attrs import define, field, frozen
from sqlalchemy.engine import Connection

from .errors import InvalidInput, NotFound
from .feed.changes import NewChange
from .feed.writing import emit
from .ids import new_id
from .model import Merge
from .store.engine import advisory_locks, customer_lock_key
from .store.tables import customers, dialogues, events, identities, memberships, merges, metrics

MAX_REVENUE = Decimal(10) ** 12
# categories bought are kept per customer up to this many (the most often bought win), so a
# customer's metrics row stays small whatever the catalog
MAX_CATEGORIES = 50
# revenue without a currency (a Segment ``Order Completed`` without one) is kept under ISO
# 4217's code for "no currency"
NO_CURRENCY = "XXX"
_CURRENCY = re.compile(r"^[A-Z]{3}$")

__all__ = [
    "MAX_CATEGORIES",
    "Purchase",
    "PurchaseTotals",
    "event_purchase",
    "event_revenue",
    "merge_customers",
    "merge_value",
    "recompute_metrics",
    "unmerge",
]


def event_revenue(data: Any) -> Decimal | None:
    """The revenue an event carries (``data.revenue``, the Segment convention), if any."""
    raw = data.get("revenue") if isinstance(data, dict) else None
    if raw is None or isinstance(raw, bool):
        return None
    try:
        value = Decimal(str(raw))
    except InvalidOperation:
        return None
    # beyond what the metrics column holds (and any plausible sale): not revenue
    return value if value.is_finite() and abs(value) < MAX_REVENUE else None


@frozen
class Purchase:
    """What one event with revenue teaches the purchase metrics (the Purchases contract).

    ``orders`` is +1 for a sale, 0 for a return (the order happened; its revenue shrinks)
    and -1 for a void (the sale never happened). ``categories`` are counted once per sale
    that bought them, and uncounted by a void.
    """

    revenue: Decimal
    currency: str
    orders: int
    returned: bool
    categories: tuple[str, ...]


def event_purchase(data: Any) -> Purchase | None:
    """The purchase an event records, when it carries revenue (see :class:`Purchase`).

    ``data.transaction_type`` is ``sale`` (the default), ``return`` or ``void``;
    ``data.currency`` an ISO 4217 code; ``data.line_items[*].category`` what was bought.
    """
    revenue = event_revenue(data)
    if revenue is None:
        return None
    kind = data.get("transaction_type")
    currency = data.get("currency")
    currency = currency if isinstance(currency, str) and _CURRENCY.match(currency) else NO_CURRENCY
    categories: set[str] = set()
    items = data.get("line_items")
    if isinstance(items, list) and kind != "return":
        for item in items:
            category = item.get("category") if isinstance(item, Mapping) else None
            if isinstance(category, str) and category.strip():
                categories.add(category.strip()[:64])
    orders = {"return": 0, "void": -1}.get(kind, 1) if isinstance(kind, str) else 1
    return Purchase(revenue, currency, orders, kind == "return", tuple(sorted(categories)))


@define
class PurchaseTotals:
    """Purchase metrics being added up: from a batch's events, or from rows being merged."""

    orders: int = 0
    returns: int = 0
    revenue: Decimal = Decimal(0)
    by_currency: dict[str, Decimal] = field(factory=dict)
    categories: Counter[str] = field(factory=Counter)
    last_purchase: datetime | None = None

    @property
    def empty(self) -> bool:
        """Nothing bought, returned or voided: adding these totals changes no purchase column."""
        return (
            not (self.orders or self.returns or self.revenue or self.by_currency or self.categories)
            and self.last_purchase is None
        )

    def add_purchase(self, purchase: Purchase, at: datetime) -> None:
        self.revenue += purchase.revenue
        self.orders += purchase.orders
        self.returns += int(purchase.returned)
        self.by_currency[purchase.currency] = self.by_currency.get(purchase.currency, Decimal(0)) + purchase.revenue
        for category in purchase.categories:
            self.categories[category] += purchase.orders
        if purchase.orders > 0 and (self.last_purchase is None or at > self.last_purchase):
            self.last_purchase = at

    def add(self, other: PurchaseTotals) -> None:
        self.orders += other.orders
        self.returns += other.returns
        self.revenue += other.revenue
        for currency, value in other.by_currency.items():
            self.by_currency[currency] = self.by_currency.get(currency, Decimal(0)) + value
        self.categories.update(other.categories)
        self.last_purchase = max(filter(None, (self.last_purchase, other.last_purchase)), default=None)

    @classmethod
    def from_row(cls, row: Any) -> PurchaseTotals:
        """The totals a metrics row holds."""
        return cls(
            orders=row.order_count,
            returns=row.return_count,
            revenue=row.lifetime_revenue,
            by_currency={k: Decimal(v) for k, v in (row.revenue_by_currency or {}).items()},
            categories=Counter(row.categories or {}),
            last_purchase=row.last_purchase_at,
        )

    def columns(self) -> dict[str, Any]:
        """The metrics row's purchase columns. Categories keep the ``MAX_CATEGORIES`` most
        bought (ties by name, so the same history always keeps the same ones). A count that
        went below zero (a void recorded before its sale) is kept too, so that the sale
        arriving later brings it back to zero, as a recount would; views show positive ones."""
        kept = sorted(((c, n) for c, n in self.categories.items() if n != 0), key=lambda cn: (-cn[1], cn[0]))
        return {
            "order_count": self.orders,
            "return_count": self.returns,
            "lifetime_revenue": self.revenue,
            "revenue_by_currency": {k: str(v) for k, v in sorted(self.by_currency.items())},
            "categories": dict(kept[:MAX_CATEGORIES]),
            "last_purchase_at": self.last_purchase,
        }


def merge_value(row: Any) -> Merge:
    return Merge(
        id=row.id,
        survivor_id=row.survivor_id,
        merged_id=row.merged_id,
        reason=row.reason,
        cause_touchpoint=row.cause_touchpoint,
        cause_event_id=row.cause_event_id,
        merged_at=row.merged_at,
        undone_at=row.undone_at,
    )


def merge_customers(
    conn: Connection,
    survivor: str,
    merged: str,
    *,
    reason: str,
    cause: tuple[str, str] | None,
    now: datetime,
) -> Merge:
    """Move everything of ``merged`` to ``survivor`` and leave ``merged`` as a redirect."""
    moved_identities = [
        [r.namespace, r.value]
        for r in conn.execute(
            sa.select(identities.c.namespace, identities.c.value).where(identities.c.customer_id == merged)
        )
    ]
    moved_dialogues = [r.id for r in conn.execute(sa.select(dialogues.c.id).where(dialogues.c.customer_id == merged))]
    absorbed = [r.id for r in conn.execute(sa.select(customers.c.id).where(customers.c.merged_into == merged))]
    rows = {r.id: r for r in conn.execute(sa.select(customers).where(customers.c.id.in_([survivor, merged])))}
    s_row, m_row = rows[survivor], rows[merged]

    traits_added = [k for k in m_row.traits if k not in s_row.traits]
    tier_taken = s_row.tier is None and m_row.tier is not None
    conn.execute(
        customers.update()
        .where(customers.c.id == survivor)
        .values(
            traits={**m_row.traits, **s_row.traits},
            tier=m_row.tier if tier_taken else s_row.tier,
            tier_source=m_row.tier_source if tier_taken else s_row.tier_source,
            updated_at=now,
        )
    )
    conn.execute(customers.update().where(customers.c.id == merged).values(merged_into=survivor, updated_at=now))
    # keep redirects one hop long: whoever pointed at the merged customer now points at the survivor
    conn.execute(customers.update().where(customers.c.merged_into == merged).values(merged_into=survivor))
    conn.execute(identities.update().where(identities.c.customer_id == merged).values(customer_id=survivor))
    conn.execute(dialogues.update().where(dialogues.c.customer_id == merged).values(customer_id=survivor))
    conn.execute(events.update().where(events.c.customer_id == merged).values(customer_id=survivor))
    added_memberships = _move_memberships(conn, merged, survivor, now)
    _add_metrics(conn, survivor, merged)

    merge = Merge(
        id=new_id("mrg"),
        survivor_id=survivor,
        merged_id=merged,
        reason=reason,
        cause_touchpoint=cause[0] if cause else None,
        cause_event_id=cause[1] if cause else None,
        merged_at=now,
    )
    conn.execute(
        merges.insert().values(
            id=merge.id,
            survivor_id=survivor,
            merged_id=merged,
            reason=reason[:500],
            cause_touchpoint=merge.cause_touchpoint,
            cause_event_id=merge.cause_event_id,
            merged_at=now,
            moved={
                "identities": moved_identities,
                "dialogues": moved_dialogues,
                "absorbed": absorbed,
                "memberships": added_memberships,
                "traits_added": traits_added,
                "tier_taken": tier_taken,
            },
        )
    )
    emit(conn, NewChange("customers.merged", survivor, merge_change_data(merge), at=now))
    return merge


def merge_change_data(merge: Merge) -> dict[str, Any]:
    """The ``data`` of a ``customers.merged`` change (prm_core.feed)."""
    return {
        "merge_id": merge.id,
        "survivor_id": merge.survivor_id,
        "merged_id": merge.merged_id,
        "reason": merge.reason,
        "touchpoint": merge.cause_touchpoint,
        "event_id": merge.cause_event_id,
    }


def _move_memberships(conn: Connection, src: str, dst: str, now: datetime) -> dict[str, Any]:
    """Re-point ``src``'s memberships (as member and as group) to ``dst``; return what changed."""
    m = memberships.c
    as_member = list(conn.execute(sa.select(m.group_id, m.role, m.created_at).where(m.member_id == src)))
    as_group = list(conn.execute(sa.select(m.member_id, m.role, m.created_at).where(m.group_id == src)))
    have_groups = {r.group_id for r in conn.execute(sa.select(m.group_id).where(m.member_id == dst))}
    have_members = {r.member_id for r in conn.execute(sa.select(m.member_id).where(m.group_id == dst))}
    new_rows = [
        {"group_id": r.group_id, "member_id": dst, "role": r.role, "created_at": now}
        for r in as_member
        if r.group_id not in have_groups and r.group_id != dst
    ] + [
        {"group_id": dst, "member_id": r.member_id, "role": r.role, "created_at": now}
        for r in as_group
        if r.member_id not in have_members and r.member_id != dst
    ]
    conn.execute(memberships.delete().where(sa.or_(m.member_id == src, m.group_id == src)))
    if new_rows:
        conn.execute(memberships.insert(), new_rows)
    # created_at is kept so an unmerge restores the memberships as they were: views list groups
    # and members in membership order, which a fresh timestamp would shuffle
    return {
        "as_member": [[r.group_id, r.role, r.created_at.isoformat()] for r in as_member],
        "as_group": [[r.member_id, r.role, r.created_at.isoformat()] for r in as_group],
        "added": [[r["group_id"], r["member_id"]] for r in new_rows],
    }


def _add_metrics(conn: Connection, survivor: str, merged: str) -> None:
    """The survivor's metrics absorb the merged customer's: two rows, never the history
    (merges happen inside the ingest writer)."""
    rows = {
        r.customer_id: r for r in conn.execute(sa.select(metrics).where(metrics.c.customer_id.in_([survivor, merged])))
    }
    gone = rows.get(merged)
    if gone is None:
        return
    conn.execute(metrics.delete().where(metrics.c.customer_id == merged))
    kept = rows.get(survivor)
    if kept is None:
        conn.execute(metrics.insert().values(**{**gone._mapping, "customer_id": survivor}))
        return
    purchases = PurchaseTotals.from_row(kept)
    purchases.add(PurchaseTotals.from_row(gone))
    conn.execute(
        metrics.update()
        .where(metrics.c.customer_id == survivor)
        .values(
            event_count=kept.event_count + gone.event_count,
            **purchases.columns(),
            first_seen_at=min(filter(None, (kept.first_seen_at, gone.first_seen_at)), default=None),
            last_seen_at=max(filter(None, (kept.last_seen_at, gone.last_seen_at)), default=None),
            touchpoints=sorted(set(kept.touchpoints) | set(gone.touchpoints)),
        )
    )


def recompute_metrics(conn: Connection, customer_ids: Iterable[str]) -> None:
    """Rebuild the metrics rows of these customers from their events.

    Only an unmerge (rare, admin-paced) calls this: ingest and merges update metrics
    incrementally.
    """
    e = events.c
    for cid in customer_ids:
        count, first, last = conn.execute(
            sa.select(sa.func.count(), sa.func.min(e.occurred_at), sa.func.max(e.occurred_at)).where(
                e.customer_id == cid
            )
        ).one()
        conn.execute(metrics.delete().where(metrics.c.customer_id == cid))
        if not count:
            continue
        purchases = PurchaseTotals()
        for data, at in conn.execute(
            sa.select(e.data, e.occurred_at).where(e.customer_id == cid).order_by(e.occurred_at, e.seq)
        ):
            purchase = event_purchase(data)
            if purchase is not None:
                purchases.add_purchase(purchase, at)
        tps = sorted(r[0] for r in conn.execute(sa.select(e.touchpoint).where(e.customer_id == cid).distinct()))
        conn.execute(
            metrics.insert().values(
                customer_id=cid,
                event_count=count,
                **purchases.columns(),
                first_seen_at=first,
                last_seen_at=last,
                touchpoints=tps,
            )
        )


def unmerge(conn: Connection, merge_id: str, *, now: datetime) -> Merge:
    """Undo a merge: the merged customer gets back what it had, and its own events.

    Events the merged customer's identities brought in *after* the merge stay with the
    survivor: they were recorded as the survivor's.
    """
    locked: set[str] = set()
    while True:
        row = conn.execute(sa.select(merges).where(merges.c.id == merge_id)).one_or_none()
        if row is None:
            raise NotFound(f"no merge {merge_id}")
        if row.undone_at is not None:
            raise InvalidInput(f"merge {merge_id} was already undone", "merge_id", code="already_undone")
        merged = row.merged_id
        target = conn.execute(sa.select(customers.c.merged_into).where(customers.c.id == merged)).scalar_one()
        if target is None:
            raise InvalidInput(f"customer {merged} is not merged any more", "merge_id", code="not_merged")
        if conn.dialect.name != "postgresql" or {merged, target} <= locked:
            break
        # take the advisory locks ingest takes on the customers it writes to (recording.py,
        # _Batch._lock_customers): else a batch recording for either customer meanwhile loses
        # its metrics update to the recount below, or records for a customer this moves away
        # from. Read everything again once they are held: another unmerge may have run.
        wanted = {merged, target} - locked
        advisory_locks(conn, (customer_lock_key(cid) for cid in wanted))
        locked |= wanted
    moved = row.moved
    owned = {merged, *moved.get("absorbed", [])}

    pairs = [tuple(p) for p in moved.get("identities", [])]
    for chunk in _chunks(pairs, 400):
        conn.execute(
            identities.update()
            .where(sa.tuple_(identities.c.namespace, identities.c.value).in_(chunk))
            .where(identities.c.customer_id == target)
            .values(customer_id=merged)
        )
    for chunk in _chunks(moved.get("dialogues", []), 400):
        conn.execute(
            dialogues.update()
            .where(dialogues.c.id.in_(chunk), dialogues.c.customer_id == target)
            .values(customer_id=merged)
        )
    conn.execute(
        events.update()
        .where(events.c.customer_id == target, events.c.ingest_customer_id.in_(owned))
        .values(customer_id=merged)
    )
    m = memberships.c
    mem = moved.get("memberships", {})
    for group_id, member_id in mem.get("added", []):
        conn.execute(memberships.delete().where(m.group_id == group_id, m.member_id == member_id))
    # entries are [id, role, created_at]; records written before created_at was kept have no third item
    restore = [
        {"group_id": g, "member_id": merged, "role": r, "created_at": _when(rest, now)}
        for g, r, *rest in mem.get("as_member", [])
    ]
    restore += [
        {"group_id": merged, "member_id": x, "role": r, "created_at": _when(rest, now)}
        for x, r, *rest in mem.get("as_group", [])
    ]
    if restore:
        conn.execute(memberships.insert(), restore)

    conn.execute(customers.update().where(customers.c.id == merged).values(merged_into=None, updated_at=now))
    absorbed = moved.get("absorbed", [])
    if absorbed:
        # those still redirected to the target: one whose own merge was undone meanwhile stays itself
        conn.execute(
            customers.update()
            .where(customers.c.id.in_(absorbed), customers.c.merged_into == target)
            .values(merged_into=merged)
        )
    t_row = conn.execute(sa.select(customers).where(customers.c.id == target)).one()
    traits = {k: v for k, v in t_row.traits.items() if k not in set(moved.get("traits_added", []))}
    values: dict[str, Any] = {"traits": traits, "updated_at": now}
    if moved.get("tier_taken"):
        values.update(tier=None, tier_source=None)
    conn.execute(customers.update().where(customers.c.id == target).values(**values))
    recompute_metrics(conn, [target, merged])
    conn.execute(merges.update().where(merges.c.id == merge_id).values(undone_at=now))
    data = {"merge_id": merge_id, "survivor_id": target, "merged_id": merged}
    emit(conn, NewChange("customers.unmerged", target, data, at=now))
    return merge_value(conn.execute(sa.select(merges).where(merges.c.id == merge_id)).one())


def _when(rest: list[Any], default: datetime) -> datetime:
    return datetime.fromisoformat(rest[0]) if rest and rest[0] else default


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
