"""Triggers: their definitions and pause state, their runs (journeys), the offers they queue, and the engine's place in the feed.

Revision ID: 0009_triggers
Revises: 0008_money
Create Date: 2026-12-05 17:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009_triggers"
down_revision = "0008_money"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "triggers",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("definition", _JSON, nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "trigger_runs",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("trigger", sa.String(length=64), nullable=False),
        sa.Column("customer_id", sa.String(length=40), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("change_type", sa.String(length=64), nullable=False),
        sa.Column("change", _JSON, nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("due_at", sa.DateTime(), nullable=True),
        sa.Column("since", sa.DateTime(), nullable=False),
        sa.Column("control", sa.Boolean(), nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=True),
        sa.Column("fired_at", sa.DateTime(), nullable=True),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("offer", _JSON, nullable=True),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("event_id", sa.String(length=200), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(length=40), nullable=True),
        sa.Column("lease_until", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_trigger_runs_due", "trigger_runs", ["status", "due_at"], unique=False)
    op.create_index("ix_trigger_runs_customer", "trigger_runs", ["customer_id", "status"], unique=False)
    op.create_index("ix_trigger_runs_trigger", "trigger_runs", ["trigger", "customer_id", "fired_at"], unique=False)
    op.create_index("ix_trigger_runs_channel", "trigger_runs", ["customer_id", "channel", "fired_at"], unique=False)
    op.create_table(
        "trigger_offers",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("trigger", sa.String(length=64), nullable=False),
        sa.Column("customer_id", sa.String(length=40), nullable=False),
        sa.Column("code", sa.String(length=200), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("queued_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("made_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_trigger_offers_customer", "trigger_offers", ["customer_id", "made_at"], unique=False)
    op.create_table(
        "trigger_cursor",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("lease_owner", sa.String(length=40), nullable=True),
        sa.Column("lease_until", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("trigger_cursor")
    op.drop_index("ix_trigger_offers_customer", table_name="trigger_offers")
    op.drop_table("trigger_offers")
    op.drop_index("ix_trigger_runs_channel", table_name="trigger_runs")
    op.drop_index("ix_trigger_runs_trigger", table_name="trigger_runs")
    op.drop_index("ix_trigger_runs_customer", table_name="trigger_runs")
    op.drop_index("ix_trigger_runs_due", table_name="trigger_runs")
    op.drop_table("trigger_runs")
    op.drop_table("triggers")
