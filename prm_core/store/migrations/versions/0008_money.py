"""Money in its currency: the value model's purchase total and the touch points' revenue per currency.

Revision ID: 0008_money
Revises: 0007_identity_conflicts
Create Date: 2026-12-05 17:40:00

The new figures are filled from what is recorded: a customer whose metrics hold one currency
bought in it; the others' purchases, and the touch points' revenue per day, are read from
their events (inbound events with revenue only), the way ingest would have counted them.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008_money"
down_revision = "0007_identity_conflicts"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
_PAGE = 2000


def upgrade() -> None:
    with op.batch_alter_table("customer_value") as batch:
        batch.add_column(sa.Column("purchase_total_by_currency", _JSON, server_default="{}", nullable=False))
    op.create_table(
        "touchpoint_day_revenue",
        sa.Column("touchpoint", sa.String(length=64), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("revenue", sa.Numeric(precision=18, scale=4), nullable=False),
        sa.PrimaryKeyConstraint("touchpoint", "day", "currency"),
    )
    _fill(op.get_bind())


def _fill(conn: Any) -> None:
    from prm_core.merging import event_purchase
    from prm_core.store.tables import customer_value, events, metrics, touchpoint_day_revenue

    v, m, e = customer_value.c, metrics.c, events.c
    several: set[str] = set()
    rows = conn.execute(
        sa.select(v.customer_id, v.purchase_total, m.revenue_by_currency).select_from(
            customer_value.outerjoin(metrics, m.customer_id == v.customer_id)
        )
    ).all()
    for cid, total, by_currency in rows:
        codes = list(by_currency or {})
        if len(codes) == 1:
            conn.execute(
                customer_value.update()
                .where(v.customer_id == cid)
                .values(purchase_total_by_currency={codes[0]: str(total)})
            )
        else:
            several.add(cid)
    buys: dict[str, dict[str, Decimal]] = {}
    days: dict[tuple[str, str, str], Decimal] = {}
    after = 0
    while True:
        page = conn.execute(
            sa.select(e.seq, e.customer_id, e.touchpoint, e.occurred_at, e.data)
            .where(e.seq > after, e.direction == "inbound")
            .order_by(e.seq)
            .limit(_PAGE)
        ).all()
        if not page:
            break
        after = page[-1].seq
        for r in page:
            purchase = event_purchase(r.data)
            if purchase is None:
                continue
            key = (r.touchpoint, r.occurred_at.date().isoformat(), purchase.currency)
            days[key] = days.get(key, Decimal(0)) + purchase.revenue
            if purchase.revenue > 0 and r.customer_id in several:
                mine = buys.setdefault(r.customer_id, {})
                mine[purchase.currency] = mine.get(purchase.currency, Decimal(0)) + purchase.revenue
    for cid, amounts in buys.items():
        conn.execute(
            customer_value.update()
            .where(v.customer_id == cid)
            .values(purchase_total_by_currency={c: str(a) for c, a in sorted(amounts.items())})
        )
    if days:
        conn.execute(
            touchpoint_day_revenue.insert(),
            [{"touchpoint": tp, "day": day, "currency": c, "revenue": a} for (tp, day, c), a in sorted(days.items())],
        )


def downgrade() -> None:
    op.drop_table("touchpoint_day_revenue")
    with op.batch_alter_table("customer_value") as batch:
        batch.drop_column("purchase_total_by_currency")
