"""Purchase metrics from the point of sale: returns, revenue per currency, categories, last purchase.

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
