"""Journaled ingest: the journal of accepted events and its rejected ones (used on PostgreSQL), the processor's place.

Revision ID: 0011_journal
Revises: 0010_surveys
Create Date: 2026-12-05 20:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011_journal"
down_revision = "0010_surveys"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "journal",
        sa.Column("position", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("touchpoint", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.String(length=200), nullable=False),
        sa.Column("body", _JSON, nullable=False),
        sa.Column("appended_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("position"),
        sa.UniqueConstraint("touchpoint", "event_id", name="uq_journal_touchpoint_event_id"),
    )
    op.create_table(
        "journal_rejected",
        sa.Column("position", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("touchpoint", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.String(length=200), nullable=False),
        sa.Column("body", _JSON, nullable=False),
        sa.Column("error", sa.String(length=200), nullable=False),
        sa.Column("rejected_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("position"),
    )
    op.create_table(
        "journal_cursor",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("journal_cursor")
    op.drop_table("journal_rejected")
    op.drop_table("journal")
