"""Partner fulfillment: the transactional outbox and the callbacks seen (webhook-id).

Revision ID: 0003_partner
Revises: 0002_pos
Create Date: 2026-11-23 12:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003_partner"
down_revision = "0002_pos"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("request_id", sa.String(length=200), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("partner", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("customer_id", sa.String(length=40), nullable=False),
        sa.Column("touchpoint", sa.String(length=64), nullable=False),
        sa.Column("dialogue_id", sa.String(length=40), nullable=False),
        sa.Column("cause_event_id", sa.String(length=200), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("result", JSON, nullable=False),
        sa.Column("partner_ref", sa.String(length=200), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=True),
        sa.Column("requested_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_due", ["next_attempt_at"], unique=False)
        batch_op.create_index("ix_outbox_request", ["partner", "request_id"], unique=False)
        batch_op.create_index("ix_outbox_cause", ["cause_event_id"], unique=False)
        batch_op.create_index("ix_outbox_dialogue", ["dialogue_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_outbox_idempotency_key"), ["idempotency_key"], unique=False)
        batch_op.create_index("ix_outbox_customer", ["customer_id", "requested_at"], unique=False)
        batch_op.create_index("ix_outbox_partner_ref", ["partner", "partner_ref"], unique=False)
    op.create_table(
        "partner_callbacks",
        sa.Column("partner", sa.String(length=64), nullable=False),
        sa.Column("webhook_id", sa.String(length=200), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("partner", "webhook_id"),
    )


def downgrade() -> None:
    op.drop_table("partner_callbacks")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_partner_ref")
        batch_op.drop_index("ix_outbox_customer")
        batch_op.drop_index("ix_outbox_due")
        batch_op.drop_index("ix_outbox_request")
        batch_op.drop_index("ix_outbox_cause")
        batch_op.drop_index("ix_outbox_dialogue")
        batch_op.drop_index(batch_op.f("ix_outbox_idempotency_key"))
    op.drop_table("outbox")
