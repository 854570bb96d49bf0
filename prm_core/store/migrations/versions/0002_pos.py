"""Point of sale: purchase metrics (returns, revenue per currency, categories, last purchase), webhook receipts.

Revision ID: 0002_pos
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002_pos"
down_revision = "0001"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "webhook_receipts",
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("webhook_id", sa.String(length=200), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("source", "webhook_id"),
    )
    with op.batch_alter_table("customer_metrics") as batch:
        batch.add_column(sa.Column("return_count", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("revenue_by_currency", JSON, server_default="{}", nullable=False))
        batch.add_column(sa.Column("categories", JSON, server_default="{}", nullable=False))
        batch.add_column(sa.Column("last_purchase_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("customer_metrics") as batch:
        batch.drop_column("last_purchase_at")
        batch.drop_column("categories")
        batch.drop_column("revenue_by_currency")
        batch.drop_column("return_count")
    op.drop_table("webhook_receipts")
