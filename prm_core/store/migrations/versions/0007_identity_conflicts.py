"""Identity conflicts: events that would have broken an identity limit, kept for review.

Revision ID: 0007_identity_conflicts
Revises: 0005_privacy
Create Date: 2026-12-05 15:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007_identity_conflicts"
down_revision = "0006_change_feed"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "identity_conflicts",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("touchpoint", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.String(length=200), nullable=False),
        sa.Column("customer_id", sa.String(length=40), nullable=False),
        sa.Column("apart", _JSON, nullable=False),
        sa.Column("namespaces", _JSON, nullable=False),
        sa.Column("left_out", _JSON, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("resolved_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("identity_conflicts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_identity_conflicts_customer_id"), ["customer_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_identity_conflicts_status"), ["status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("identity_conflicts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_identity_conflicts_status"))
        batch_op.drop_index(batch_op.f("ix_identity_conflicts_customer_id"))
    op.drop_table("identity_conflicts")
