"""The first tables: customers, identities, the event log, dialogues, memberships, metrics, merges, keys.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-23 08:03:01.665062
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("scope", sa.String(length=200), nullable=False),
        sa.Column("public", sa.Boolean(), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "customer_metrics",
        sa.Column("customer_id", sa.String(length=40), nullable=False),
        sa.Column("event_count", sa.Integer(), nullable=False),
        sa.Column("order_count", sa.Integer(), nullable=False),
        sa.Column("lifetime_revenue", sa.Numeric(precision=18, scale=4), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(), nullable=True),
        sa.Column("last_seen_at", sa.DateTime(), nullable=True),
        sa.Column(
            "touchpoints", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.PrimaryKeyConstraint("customer_id"),
    )
    op.create_table(
        "customers",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("tier", sa.String(length=64), nullable=True),
        sa.Column("tier_source", sa.String(length=16), nullable=True),
        sa.Column(
            "traits", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("merged_into", sa.String(length=40), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_customers_merged_into"), ["merged_into"], unique=False)

    op.create_table(
        "dialogues",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("touchpoint", sa.String(length=64), nullable=False),
        sa.Column("ref", sa.String(length=200), nullable=False),
        sa.Column("customer_id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("intent", sa.String(length=16), nullable=True),
        sa.Column("outcome", sa.String(length=64), nullable=True),
        sa.Column("opened_at", sa.DateTime(), nullable=False),
        sa.Column("last_event_at", sa.DateTime(), nullable=False),
        sa.Column("closed_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("touchpoint", "ref", name="uq_dialogues_touchpoint_ref"),
    )
    with op.batch_alter_table("dialogues", schema=None) as batch_op:
        batch_op.create_index("ix_dialogues_customer_open", ["customer_id", "touchpoint", "status"], unique=False)
        batch_op.create_index("ix_dialogues_customer_recent", ["customer_id", "last_event_at"], unique=False)

    op.create_table(
        "events",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("touchpoint", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.String(length=200), nullable=False),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("occurred_at", sa.DateTime(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("customer_id", sa.String(length=40), nullable=False),
        sa.Column("ingest_customer_id", sa.String(length=40), nullable=False),
        sa.Column("dialogue_id", sa.String(length=40), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column(
            "identities", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column(
            "data", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("touchpoint", "event_id", name="uq_events_touchpoint_event_id"),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_customer_timeline", ["customer_id", "occurred_at", "seq"], unique=False)
        batch_op.create_index("ix_events_dialogue", ["dialogue_id", "occurred_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_events_ingest_customer_id"), ["ingest_customer_id"], unique=False)

    op.create_table(
        "identities",
        sa.Column("namespace", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=256), nullable=False),
        sa.Column("customer_id", sa.String(length=40), nullable=True),
        sa.Column("shared", sa.Boolean(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "value"),
    )
    with op.batch_alter_table("identities", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_identities_customer_id"), ["customer_id"], unique=False)

    op.create_table(
        "import_checkpoints",
        sa.Column("source", sa.String(length=128), nullable=False),
        sa.Column("byte_offset", sa.Integer(), nullable=False),
        sa.Column("lines", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("source"),
    )
    op.create_table(
        "memberships",
        sa.Column("group_id", sa.String(length=40), nullable=False),
        sa.Column("member_id", sa.String(length=40), nullable=False),
        sa.Column("role", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("group_id", "member_id"),
    )
    with op.batch_alter_table("memberships", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_memberships_member_id"), ["member_id"], unique=False)

    op.create_table(
        "merges",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("survivor_id", sa.String(length=40), nullable=False),
        sa.Column("merged_id", sa.String(length=40), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("cause_touchpoint", sa.String(length=64), nullable=True),
        sa.Column("cause_event_id", sa.String(length=200), nullable=True),
        sa.Column("merged_at", sa.DateTime(), nullable=False),
        sa.Column("undone_at", sa.DateTime(), nullable=True),
        sa.Column(
            "moved", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("merges", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_merges_merged_id"), ["merged_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_merges_survivor_id"), ["survivor_id"], unique=False)

    op.create_table(
        "shared_identity_links",
        sa.Column("namespace", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=256), nullable=False),
        sa.Column("customer_id", sa.String(length=40), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "value", "customer_id"),
    )
    with op.batch_alter_table("shared_identity_links", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_shared_identity_links_customer_id"), ["customer_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("shared_identity_links", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_shared_identity_links_customer_id"))

    op.drop_table("shared_identity_links")
    with op.batch_alter_table("merges", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_merges_survivor_id"))
        batch_op.drop_index(batch_op.f("ix_merges_merged_id"))

    op.drop_table("merges")
    with op.batch_alter_table("memberships", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_memberships_member_id"))

    op.drop_table("memberships")
    op.drop_table("import_checkpoints")
    with op.batch_alter_table("identities", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_identities_customer_id"))

    op.drop_table("identities")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_events_ingest_customer_id"))
        batch_op.drop_index("ix_events_dialogue")
        batch_op.drop_index("ix_events_customer_timeline")

    op.drop_table("events")
    with op.batch_alter_table("dialogues", schema=None) as batch_op:
        batch_op.drop_index("ix_dialogues_customer_recent")
        batch_op.drop_index("ix_dialogues_customer_open")

    op.drop_table("dialogues")
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_customers_merged_into"))

    op.drop_table("customers")
    op.drop_table("customer_metrics")
    op.drop_table("api_keys")
