"""Privacy: consents per purpose and channel, identity tombstones, erasure audit, the tombstone key.

Revision ID: 0005_privacy
Revises: 0004_planning
Create Date: 2026-11-23 12:50:00
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005_privacy"
down_revision = "0004_planning"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consents",
        sa.Column("customer_id", sa.String(length=40), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("granted", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.Column("event_id", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("customer_id", "purpose", "channel"),
    )
    op.create_table(
        "identity_tombstones",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("erased_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("digest"),
    )
    op.create_table(
        "erasures",
        sa.Column("customer_id", sa.String(length=40), nullable=False),
        sa.Column("erased_at", sa.DateTime(), nullable=False),
        sa.Column("erased_by", sa.String(length=40), nullable=True),
        sa.Column(
            "merged_ids", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.PrimaryKeyConstraint("customer_id"),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_touchpoint_time", ["touchpoint", "occurred_at"], unique=False)
    keys = op.create_table(
        "privacy_keys",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    # made here, once per database, so every hub process on it hashes tombstones alike
    op.bulk_insert(keys, [{"name": "tombstone", "value": secrets.token_hex(32)}])


def downgrade() -> None:
    op.drop_table("privacy_keys")
    op.drop_table("erasures")
    op.drop_table("identity_tombstones")
    op.drop_table("consents")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_touchpoint_time")
