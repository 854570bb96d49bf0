"""Surveys: the answers customers gave to survey messages, and the key that signs survey links.

Revision ID: 0010_surveys
Revises: 0009_triggers
Create Date: 2026-12-05 20:40:00
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0010_surveys"
down_revision = "0009_triggers"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "survey_answers",
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.String(length=200), nullable=False),
        sa.Column("touchpoint", sa.String(length=64), nullable=False),
        sa.Column("customer_id", sa.String(length=40), nullable=True),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("about", sa.String(length=64), nullable=False),
        sa.Column("trigger", sa.String(length=64), nullable=False),
        sa.Column("via", sa.String(length=8), nullable=False),
        sa.Column("answered_at", sa.DateTime(), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.PrimaryKeyConstraint("message_id"),
    )
    op.create_index("ix_survey_answers_day", "survey_answers", ["day", "about"], unique=False)
    op.create_index("ix_survey_answers_customer", "survey_answers", ["customer_id", "answered_at"], unique=False)
    # the key survey links are signed with, unless [surveys] secret sets one
    keys = sa.table("privacy_keys", sa.column("name", sa.String), sa.column("value", sa.String))
    op.bulk_insert(keys, [{"name": "survey_links", "value": secrets.token_hex(32)}])


def downgrade() -> None:
    op.execute("DELETE FROM privacy_keys WHERE name = 'survey_links'")
    op.drop_index("ix_survey_answers_customer", table_name="survey_answers")
    op.drop_index("ix_survey_answers_day", table_name="survey_answers")
    op.drop_table("survey_answers")
