"""Relationship planning: customer value, models, segments, campaigns, offers made, touch point days and customers

Revision ID: 0004_planning
Revises: 0003_partner
Create Date: 2026-11-23 12:34:04.390384
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0004_planning'
down_revision = '0003_partner'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('campaigns',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('segment', sa.String(length=64), nullable=False),
    sa.Column('offer', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('touchpoints', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('starts_at', sa.DateTime(), nullable=False),
    sa.Column('ends_at', sa.DateTime(), nullable=False),
    sa.Column('control_percent', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('customer_value',
    sa.Column('customer_id', sa.String(length=40), nullable=False),
    sa.Column('purchases', sa.Integer(), nullable=False),
    sa.Column('purchase_total', sa.Numeric(precision=18, scale=4), nullable=False),
    sa.Column('first_purchase_at', sa.DateTime(), nullable=True),
    sa.Column('last_purchase_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('customer_id')
    )
    op.create_table('offers_made',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('customer_id', sa.String(length=40), nullable=False),
    sa.Column('touchpoint', sa.String(length=64), nullable=False),
    sa.Column('dialogue_id', sa.String(length=40), nullable=False),
    sa.Column('code', sa.String(length=200), nullable=False),
    sa.Column('source', sa.String(length=200), nullable=False),
    sa.Column('campaign', sa.String(length=64), nullable=True),
    sa.Column('made_at', sa.DateTime(), nullable=False),
    sa.Column('response', sa.String(length=16), nullable=True),
    sa.Column('responded_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('offers_made', schema=None) as batch_op:
        batch_op.create_index('ix_offers_made_campaign', ['campaign', 'made_at'], unique=False)
        batch_op.create_index('ix_offers_made_customer', ['customer_id', 'made_at'], unique=False)

    op.create_table('planning_models',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('params', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('customers', sa.Integer(), nullable=False),
    sa.Column('fitted_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('segments',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('rule', sa.String(length=2000), nullable=False),
    sa.Column('description', sa.String(length=500), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('touchpoint_customers',
    sa.Column('touchpoint', sa.String(length=64), nullable=False),
    sa.Column('day', sa.String(length=10), nullable=False),
    sa.Column('customer_id', sa.String(length=40), nullable=False),
    sa.Column('bought', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('touchpoint', 'day', 'customer_id')
    )
    op.create_table('touchpoint_days',
    sa.Column('touchpoint', sa.String(length=64), nullable=False),
    sa.Column('day', sa.String(length=10), nullable=False),
    sa.Column('events', sa.Integer(), nullable=False),
    sa.Column('dialogues', sa.Integer(), nullable=False),
    sa.Column('requests', sa.Integer(), nullable=False),
    sa.Column('in_budget', sa.Integer(), nullable=False),
    sa.Column('degraded', sa.Integer(), nullable=False),
    sa.Column('offers_made', sa.Integer(), nullable=False),
    sa.Column('offers_accepted', sa.Integer(), nullable=False),
    sa.Column('revenue', sa.Numeric(precision=18, scale=4), nullable=False),
    sa.PrimaryKeyConstraint('touchpoint', 'day')
    )


def downgrade() -> None:
    op.drop_table('touchpoint_days')
    op.drop_table('touchpoint_customers')
    op.drop_table('segments')
    op.drop_table('planning_models')
    with op.batch_alter_table('offers_made', schema=None) as batch_op:
        batch_op.drop_index('ix_offers_made_customer')
        batch_op.drop_index('ix_offers_made_campaign')

    op.drop_table('offers_made')
    op.drop_table('customer_value')
    op.drop_table('campaigns')
