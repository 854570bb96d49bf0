"""SQLModel tables. Rows stay inside the store: hooks see :mod:`prm_core.model` values.

Timestamps are stored as UTC and always read back timezone-aware. No foreign keys: the
ingest path keeps references consistent inside one transaction, and merges re-point
rows in bulk, which foreign keys would only slow down.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import processors
from sqlmodel import Field, SQLModel

from .. import clock

__all__ = [
    "ApiKeyRow",
    "CampaignRow",
    "ChangeRow",
    "ConsentRow",
    "CustomerRow",
    "DeadLetterRow",
    "DestinationCursorRow",
    "DialogueRow",
    "ErasureRow",
    "EventRow",
    "FeedStateRow",
    "IdentityConflictRow",
    "IdentityRow",
    "ImportCheckpointRow",
    "JournalCursorRow",
    "JournalRejectedRow",
    "JournalRow",
    "MembershipRow",
    "MergeRow",
    "MetricsRow",
    "ModelRow",
    "OfferRow",
    "OutboxRow",
    "PartnerCallbackRow",
    "PrivacyKeyRow",
    "SegmentRow",
    "SharedLinkRow",
    "SurveyAnswerRow",
    "TombstoneRow",
    "TouchpointCustomerRow",
    "TouchpointDayRevenueRow",
    "TouchpointDayRow",
    "TriggerCursorRow",
    "TriggerOfferRow",
    "TriggerRow",
    "TriggerRunRow",
    "UTCDateTime",
    "ValueRow",
    "WebhookReceiptRow",
    "metadata",
]

metadata = SQLModel.metadata
JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A datetime stored as naive UTC and read back as aware UTC, on every database."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use an aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None

    def result_processor(self, dialect: Any, coltype: Any) -> Any:
        # SQLite's text parsed by the impl (datetime.fromisoformat), then made aware: the same
        # two steps in one function, without TypeDecorator's layers around them (a recording
        # batch reads a time or more for every customer and dialogue it loads)
        impl = self.impl_instance.dialect_impl(dialect).result_processor(dialect, coltype)
        if impl is processors.str_to_datetime:
            return _sqlite_aware
        return super().result_processor(dialect, coltype)


_fromisoformat = datetime.fromisoformat


def _sqlite_aware(value: str | None) -> datetime | None:
    return _fromisoformat(value).replace(tzinfo=UTC) if value is not None else None


def _ts(**kw: Any) -> Any:
    return Field(sa_type=UTCDateTime, **kw)


def _json(**kw: Any) -> Any:
    return Field(sa_type=JSONType, **kw)


class CustomerRow(SQLModel, table=True):
    __tablename__ = "customers"

    id: str = Field(primary_key=True, max_length=40)
    kind: str = Field(default="person", max_length=16)
    tier: str | None = Field(default=None, max_length=64)
    tier_source: str | None = Field(default=None, max_length=16)
    traits: dict[str, Any] = _json(default_factory=dict)
    merged_into: str | None = Field(default=None, index=True, max_length=40)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class IdentityRow(SQLModel, table=True):
    """An identity owned by exactly one customer. ``shared`` values link without merging."""

    __tablename__ = "identities"

    namespace: str = Field(primary_key=True, max_length=64)
    value: str = Field(primary_key=True, max_length=256)
    customer_id: str | None = Field(default=None, index=True, max_length=40)
    shared: bool = False
    first_seen_at: datetime = _ts()


class SharedLinkRow(SQLModel, table=True):
    """A shared identity (household phone, kiosk device) seen with a customer."""

    __tablename__ = "shared_identity_links"

    namespace: str = Field(primary_key=True, max_length=64)
    value: str = Field(primary_key=True, max_length=256)
    customer_id: str = Field(primary_key=True, max_length=40, index=True)
    last_seen_at: datetime = _ts()


class EventRow(SQLModel, table=True):
    """The append-only event log, unique on (touch point, event id).

    ``ingest_customer_id`` never changes; ``customer_id`` follows merges and unmerges.
    """

    __tablename__ = "events"
    __table_args__ = (
        sa.UniqueConstraint("touchpoint", "event_id", name="uq_events_touchpoint_event_id"),
        sa.Index("ix_events_customer_timeline", "customer_id", "occurred_at", "seq"),
        sa.Index("ix_events_dialogue", "dialogue_id", "occurred_at"),
    )

    seq: int | None = Field(default=None, primary_key=True)
    touchpoint: str = Field(max_length=64)
    event_id: str = Field(max_length=200)
    type: str = Field(max_length=100)
    occurred_at: datetime = _ts()
    received_at: datetime = _ts()
    customer_id: str = Field(max_length=40)
    ingest_customer_id: str = Field(max_length=40, index=True)
    dialogue_id: str = Field(max_length=40)
    direction: str = Field(default="inbound", max_length=8)
    identities: list[str] = _json(default_factory=list)
    data: dict[str, Any] = _json(default_factory=dict)


class DialogueRow(SQLModel, table=True):
    __tablename__ = "dialogues"
    __table_args__ = (
        sa.UniqueConstraint("touchpoint", "ref", name="uq_dialogues_touchpoint_ref"),
        sa.Index("ix_dialogues_customer_recent", "customer_id", "last_event_at"),
        sa.Index("ix_dialogues_customer_open", "customer_id", "touchpoint", "status"),
    )

    id: str = Field(primary_key=True, max_length=40)
    touchpoint: str = Field(max_length=64)
    ref: str = Field(max_length=200)
    customer_id: str = Field(max_length=40)
    status: str = Field(default="open", max_length=8)
    intent: str | None = Field(default=None, max_length=16)
    outcome: str | None = Field(default=None, max_length=64)
    opened_at: datetime = _ts()
    last_event_at: datetime = _ts()
    closed_at: datetime | None = _ts(default=None)


class MembershipRow(SQLModel, table=True):
    __tablename__ = "memberships"

    group_id: str = Field(primary_key=True, max_length=40)
    member_id: str = Field(primary_key=True, max_length=40, index=True)
    role: str | None = Field(default=None, max_length=64)
    created_at: datetime = _ts()


class MetricsRow(SQLModel, table=True):
    """Per-customer aggregates kept current on ingest, never by rescanning history.

    Purchases (see :func:`prm_core.merging.event_purchase`): ``order_count`` counts sales
    less voids, ``return_count`` returns; ``lifetime_revenue`` is net of returns and voids,
    all currencies added (kept for compatibility), ``revenue_by_currency`` the same per ISO
    4217 code as decimal strings; ``categories`` how many sales bought each category (the
    most bought 50); ``last_purchase_at`` the latest sale.
    """

    __tablename__ = "customer_metrics"

    customer_id: str = Field(primary_key=True, max_length=40)
    event_count: int = 0
    order_count: int = 0
    lifetime_revenue: Decimal = Field(default=Decimal(0), sa_type=sa.Numeric(18, 4))
    first_seen_at: datetime | None = _ts(default=None)
    last_seen_at: datetime | None = _ts(default=None)
    touchpoints: list[str] = _json(default_factory=list)
    return_count: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    revenue_by_currency: dict[str, str] = _json(default_factory=dict, sa_column_kwargs={"server_default": "{}"})
    categories: dict[str, int] = _json(default_factory=dict, sa_column_kwargs={"server_default": "{}"})
    last_purchase_at: datetime | None = _ts(default=None)


class MergeRow(SQLModel, table=True):
    """The audit record of a merge; ``moved`` lists what moved so it can be undone."""

    __tablename__ = "merges"

    id: str = Field(primary_key=True, max_length=40)
    survivor_id: str = Field(max_length=40, index=True)
    merged_id: str = Field(max_length=40, index=True)
    reason: str = Field(max_length=500)
    cause_touchpoint: str | None = Field(default=None, max_length=64)
    cause_event_id: str | None = Field(default=None, max_length=200)
    merged_at: datetime = _ts()
    undone_at: datetime | None = _ts(default=None)
    moved: dict[str, Any] = _json(default_factory=dict)


class IdentityConflictRow(SQLModel, table=True):
    """An event that would have broken an identity limit (:mod:`prm_core.identity_rules`).

    The identity values stay in the event's row (erasure scrubs them there); this keeps only
    customers and namespace names. ``status`` is ``open`` until resolved by ``merge``,
    ``split`` or ``dismiss``.
    """

    __tablename__ = "identity_conflicts"

    id: str = Field(primary_key=True, max_length=40)
    touchpoint: str = Field(max_length=64)
    event_id: str = Field(max_length=200)
    customer_id: str = Field(max_length=40, index=True)
    apart: list[str] = _json(default_factory=list)
    namespaces: list[str] = _json(default_factory=list)
    left_out: list[str] = _json(default_factory=list)
    status: str = Field(default="open", max_length=16, index=True)
    created_at: datetime = _ts()
    resolved_at: datetime | None = _ts(default=None)


class ApiKeyRow(SQLModel, table=True):
    """An API key: only the SHA-256 of its secret part is kept."""

    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(default="", max_length=200)
    scope: str = Field(max_length=200)
    public: bool = False
    secret_hash: str = Field(max_length=64)
    created_at: datetime = _ts()
    revoked_at: datetime | None = _ts(default=None)


class ImportCheckpointRow(SQLModel, table=True):
    """How far ``prm import`` got through a file, so an interrupted import resumes."""

    __tablename__ = "import_checkpoints"

    source: str = Field(primary_key=True, max_length=128)
    byte_offset: int = 0
    lines: int = 0
    updated_at: datetime = _ts()


class WebhookReceiptRow(SQLModel, table=True):
    """A vendor webhook delivery already processed (Shopify's ``X-Shopify-Webhook-Id``,
    Square's ``event_id``), so a redelivery is answered without being processed again."""

    __tablename__ = "webhook_receipts"

    source: str = Field(primary_key=True, max_length=32)
    webhook_id: str = Field(primary_key=True, max_length=200)
    received_at: datetime = _ts()


class OutboxRow(SQLModel, table=True):
    """A fulfillment request to a partner, written in the transaction of the event that planned
    it and dispatched from here until the partner has answered (see :mod:`prm_core.outbox`).

    ``next_attempt_at`` is when a dispatcher may claim it (``None``: nothing left to send, it
    waits for a callback or is final); ``attempts`` doubles as the fencing token of a claim.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        sa.Index("ix_outbox_due", "next_attempt_at"),
        sa.Index("ix_outbox_request", "partner", "request_id"),
        sa.Index("ix_outbox_cause", "cause_event_id"),
        sa.Index("ix_outbox_dialogue", "dialogue_id"),
        sa.Index("ix_outbox_customer", "customer_id", "requested_at"),
        sa.Index("ix_outbox_partner_ref", "partner", "partner_ref"),
    )

    id: str = Field(primary_key=True, max_length=40)
    request_id: str = Field(max_length=200)
    idempotency_key: str = Field(max_length=200, index=True)
    partner: str = Field(max_length=64)
    role: str = Field(default="", max_length=64)
    action: str = Field(max_length=64)
    customer_id: str = Field(max_length=40)
    touchpoint: str = Field(max_length=64)
    dialogue_id: str = Field(max_length=40)
    cause_event_id: str = Field(max_length=200)
    payload: dict[str, Any] = _json(default_factory=dict)
    status: str = Field(default="pending", max_length=16)
    result: dict[str, Any] = _json(default_factory=dict)
    partner_ref: str | None = Field(default=None, max_length=200)
    attempts: int = 0
    last_error: str | None = Field(default=None, max_length=500)
    next_attempt_at: datetime | None = _ts(default=None)
    requested_at: datetime = _ts()
    updated_at: datetime = _ts()


class PartnerCallbackRow(SQLModel, table=True):
    """A partner's callback seen, by its ``webhook-id``: a redelivery is answered, not applied twice."""

    __tablename__ = "partner_callbacks"

    partner: str = Field(primary_key=True, max_length=64)
    webhook_id: str = Field(primary_key=True, max_length=200)
    received_at: datetime = _ts()


# ---- relationship planning (prm_core.planning) -------------------------------------------


class ValueRow(SQLModel, table=True):
    """A customer's purchase history in the few numbers the value model needs, kept
    current on ingest in the recording transaction (returns are in ``customer_metrics``)."""

    __tablename__ = "customer_value"

    customer_id: str = Field(primary_key=True, max_length=40)
    purchases: int = 0
    purchase_total: Decimal = Field(default=Decimal(0), sa_type=sa.Numeric(18, 4))
    # the same per ISO 4217 code as decimal strings: what planning converts or keeps apart
    purchase_total_by_currency: dict[str, str] = _json(default_factory=dict, sa_column_kwargs={"server_default": "{}"})
    first_purchase_at: datetime | None = _ts(default=None)
    last_purchase_at: datetime | None = _ts(default=None)


class ModelRow(SQLModel, table=True):
    """Fitted value-model parameters (``bgnbd``, ``gammagamma``, ``rfm``) from ``prm plan fit``."""

    __tablename__ = "planning_models"

    name: str = Field(primary_key=True, max_length=64)
    params: dict[str, Any] = _json(default_factory=dict)
    customers: int = 0
    fitted_at: datetime = _ts()


class SegmentRow(SQLModel, table=True):
    """A saved rule; its members are the customers it matches now."""

    __tablename__ = "segments"

    name: str = Field(primary_key=True, max_length=64)
    rule: str = Field(max_length=2000)
    description: str = Field(default="", max_length=500)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class CampaignRow(SQLModel, table=True):
    """A campaign: an offer to a segment at some touch points for a while, with a control group."""

    __tablename__ = "campaigns"

    name: str = Field(primary_key=True, max_length=64)
    segment: str = Field(max_length=64)
    offer: dict[str, Any] = _json(default_factory=dict)
    touchpoints: list[str] = _json(default_factory=list)
    starts_at: datetime = _ts()
    ends_at: datetime = _ts()
    control_percent: int = 10
    created_at: datetime = _ts()


class OfferRow(SQLModel, table=True):
    """An offer made to a customer at a touch point, and the customer's response to it."""

    __tablename__ = "offers_made"
    __table_args__ = (
        sa.Index("ix_offers_made_customer", "customer_id", "made_at"),
        sa.Index("ix_offers_made_campaign", "campaign", "made_at"),
    )

    id: str = Field(primary_key=True, max_length=64)
    customer_id: str = Field(max_length=40)
    touchpoint: str = Field(max_length=64)
    dialogue_id: str = Field(max_length=40)
    code: str = Field(max_length=200)
    source: str = Field(default="", max_length=200)
    campaign: str | None = Field(default=None, max_length=64)
    made_at: datetime = _ts()
    response: str | None = Field(default=None, max_length=16)
    responded_at: datetime | None = _ts(default=None)


class TouchpointDayRow(SQLModel, table=True):
    """Per touch point and UTC day: what the scorecard sums, kept current on ingest."""

    __tablename__ = "touchpoint_days"

    touchpoint: str = Field(primary_key=True, max_length=64)
    day: str = Field(primary_key=True, max_length=10)
    events: int = 0
    dialogues: int = 0
    requests: int = 0
    in_budget: int = 0
    degraded: int = 0
    offers_made: int = 0
    offers_accepted: int = 0
    revenue: Decimal = Field(default=Decimal(0), sa_type=sa.Numeric(18, 4))


class TouchpointDayRevenueRow(SQLModel, table=True):
    """Per touch point, UTC day and ISO 4217 currency: the revenue recorded there, kept
    current on ingest, so the scorecard converts or keeps currencies apart."""

    __tablename__ = "touchpoint_day_revenue"

    touchpoint: str = Field(primary_key=True, max_length=64)
    day: str = Field(primary_key=True, max_length=10)
    currency: str = Field(primary_key=True, max_length=3)
    revenue: Decimal = Field(default=Decimal(0), sa_type=sa.Numeric(18, 4))


class TouchpointCustomerRow(SQLModel, table=True):
    """A customer seen at a touch point on a UTC day, and whether they bought there that day:
    the scorecard's distinct customers and conversion, counted over a period's rows only."""

    __tablename__ = "touchpoint_customers"

    touchpoint: str = Field(primary_key=True, max_length=64)
    day: str = Field(primary_key=True, max_length=10)
    customer_id: str = Field(primary_key=True, max_length=40)
    bought: bool = False


# ---- privacy: consents, erasure tombstones ------------------------------------


class ConsentRow(SQLModel, table=True):
    """The latest consent decision per customer, purpose and channel (``*`` for every channel).

    Bounded by purposes x channels per customer, so the view reads it in one indexed query.
    Keyed on the customer the decision was recorded for (like ``events.ingest_customer_id``):
    merges leave it in place and the view reads the rows of every customer merged into the
    one shown, so an unmerge needs nothing.
    """

    __tablename__ = "consents"

    customer_id: str = Field(primary_key=True, max_length=40)
    purpose: str = Field(primary_key=True, max_length=32)
    channel: str = Field(primary_key=True, max_length=64)
    granted: bool = False
    source: str = Field(max_length=64)
    recorded_at: datetime = _ts()
    event_id: str | None = Field(default=None, max_length=200)


class TombstoneRow(SQLModel, table=True):
    """A keyed hash (HMAC-SHA256) of an erased identity: recording never links it again."""

    __tablename__ = "identity_tombstones"

    digest: str = Field(primary_key=True, max_length=64)
    erased_at: datetime = _ts()


class ErasureRow(SQLModel, table=True):
    """The audit of an erasure: which customer ids, when, by which key. No personal data."""

    __tablename__ = "erasures"

    customer_id: str = Field(primary_key=True, max_length=40)
    erased_at: datetime = _ts()
    erased_by: str | None = Field(default=None, max_length=40)
    merged_ids: list[str] = _json(default_factory=list)


class PrivacyKeyRow(SQLModel, table=True):
    """Secrets the hub makes for itself (the tombstone key), made once by the migration."""

    __tablename__ = "privacy_keys"

    name: str = Field(primary_key=True, max_length=64)
    value: str = Field(max_length=128)


# ---- the change feed (prm_core.feed) ------------------------------------------------------


class ChangeRow(SQLModel, table=True):
    """One change the hub made, written in the same transaction as the change.

    ``position`` only grows in commit order (assigned under the feed's lock on PostgreSQL,
    see prm_core.feed.writing) and is never reused after pruning (SQLite's AUTOINCREMENT,
    PostgreSQL's sequence).
    """

    __tablename__ = "changes"
    __table_args__ = (sa.Index("ix_changes_customer", "customer_id"), {"sqlite_autoincrement": True})

    position: int | None = Field(
        default=None,
        sa_column=sa.Column(sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    )
    type: str = Field(max_length=64)
    at: datetime = _ts()
    customer_id: str | None = Field(default=None, max_length=40)
    data: dict[str, Any] = _json(default_factory=dict)


class FeedStateRow(SQLModel, table=True):
    """The feed's own marks: ``pruned_through``, the last position retention removed."""

    __tablename__ = "feed_state"

    name: str = Field(primary_key=True, max_length=64)
    position: int = Field(default=0, sa_type=sa.BigInteger)


class DestinationCursorRow(SQLModel, table=True):
    """A destination's place in the feed: every change up to ``position`` is delivered
    (or dead-lettered). ``lease_owner`` and ``lease_until``: the hub process delivering it."""

    __tablename__ = "destination_cursors"

    name: str = Field(primary_key=True, max_length=64)
    kind: str = Field(max_length=64)
    position: int = Field(default=0, sa_type=sa.BigInteger)
    # the batch being delivered ends here: after a crash or a failure the same batch is sent again
    pending_through: int | None = Field(default=None, sa_type=sa.BigInteger)
    updated_at: datetime = _ts()
    delivered_at: datetime | None = _ts(default=None)
    last_error: str | None = Field(default=None, max_length=500)
    last_error_at: datetime | None = _ts(default=None)
    lease_owner: str | None = Field(default=None, max_length=40)
    lease_until: datetime | None = _ts(default=None)


class DeadLetterRow(SQLModel, table=True):
    """A change a destination refused for good: its position, never its data."""

    __tablename__ = "destination_dead_letters"

    destination: str = Field(primary_key=True, max_length=64)
    position: int = Field(primary_key=True, sa_type=sa.BigInteger)
    type: str = Field(max_length=64)
    reason: str = Field(max_length=500)
    at: datetime = _ts()


class TriggerRow(SQLModel, table=True):
    """A trigger (:mod:`prm_core.triggers`): its definition as written, where it came from
    (``config`` or ``api``), and whether it is paused (kept for configured ones too)."""

    __tablename__ = "triggers"

    name: str = Field(primary_key=True, max_length=64)
    source: str = Field(max_length=16)
    definition: dict[str, Any] = _json(default_factory=dict)
    paused: bool = False
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class TriggerRunRow(SQLModel, table=True):
    """One trigger run: a change that matched a trigger, for one customer, and where its
    journey stands (``step``, ``status``, ``due_at``). ``key`` is derived from the trigger and
    the change's position, so a change fires a trigger once, however often it is read."""

    __tablename__ = "trigger_runs"
    __table_args__ = (
        sa.Index("ix_trigger_runs_due", "status", "due_at"),
        sa.Index("ix_trigger_runs_customer", "customer_id", "status"),
        sa.Index("ix_trigger_runs_trigger", "trigger", "customer_id", "fired_at"),
        sa.Index("ix_trigger_runs_channel", "customer_id", "channel", "fired_at"),
    )

    key: str = Field(primary_key=True, max_length=64)
    trigger: str = Field(max_length=64)
    customer_id: str = Field(max_length=40)
    position: int = Field(sa_type=sa.BigInteger)
    change_type: str = Field(max_length=64)
    change: dict[str, Any] = _json(default_factory=dict)
    step: int = 0
    status: str = Field(max_length=16)
    due_at: datetime | None = _ts(default=None)
    since: datetime = _ts()
    control: bool = False
    channel: str | None = Field(default=None, max_length=64)
    fired_at: datetime | None = _ts(default=None)
    reason: str | None = Field(default=None, max_length=500)
    offer: dict[str, Any] | None = _json(default=None)
    expires_at: datetime | None = _ts(default=None)
    event_id: str | None = Field(default=None, max_length=200)
    attempts: int = 0
    lease_owner: str | None = Field(default=None, max_length=40)
    lease_until: datetime | None = _ts(default=None)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class TriggerOfferRow(SQLModel, table=True):
    """An offer a trigger queued for the customer's next contact, at any touch point, until
    it is made (``made_at``) or ``expires_at`` passes."""

    __tablename__ = "trigger_offers"
    __table_args__ = (sa.Index("ix_trigger_offers_customer", "customer_id", "made_at"),)

    key: str = Field(primary_key=True, max_length=64)
    trigger: str = Field(max_length=64)
    customer_id: str = Field(max_length=40)
    code: str = Field(max_length=200)
    title: str = Field(max_length=200)
    description: str = Field(default="", max_length=500)
    score: float = 0.7
    purpose: str = Field(max_length=32)
    queued_at: datetime = _ts()
    expires_at: datetime = _ts()
    made_at: datetime | None = _ts(default=None)


class TriggerCursorRow(SQLModel, table=True):
    """Where the trigger engine is in the feed, and the hub process reading it (its lease)."""

    __tablename__ = "trigger_cursor"

    name: str = Field(primary_key=True, max_length=64)
    position: int = Field(default=0, sa_type=sa.BigInteger)
    updated_at: datetime = _ts()
    lease_owner: str | None = Field(default=None, max_length=40)
    lease_until: datetime | None = _ts(default=None)


class SurveyAnswerRow(SQLModel, table=True):
    """One survey's answer (:mod:`prm_core.surveys`): the first score a customer gave to a
    survey message, by reply or by its link, kept for the scorecard and the 360 view. Written
    from the ``survey.answered`` events on the feed; ``customer_id`` is cleared by an erasure
    (the score stays, anonymous, in the figures)."""

    __tablename__ = "survey_answers"
    __table_args__ = (
        sa.Index("ix_survey_answers_day", "day", "about"),
        sa.Index("ix_survey_answers_customer", "customer_id", "answered_at"),
    )

    message_id: str = Field(primary_key=True, max_length=64)
    event_id: str = Field(max_length=200)
    touchpoint: str = Field(max_length=64)
    customer_id: str | None = Field(default=None, max_length=40)
    kind: str = Field(max_length=8)
    score: int
    about: str = Field(max_length=64)
    trigger: str = Field(max_length=64)
    via: str = Field(max_length=8)
    answered_at: datetime = _ts()
    day: str = Field(max_length=10)


class JournalRow(SQLModel, table=True):
    """An event accepted and not yet processed (:mod:`prm_core.journal`), on PostgreSQL; on
    SQLite the journal is a file of its own with the same columns and this table stays empty.
    ``position`` orders the journal; ``body`` is the validated event."""

    __tablename__ = "journal"
    __table_args__ = (sa.UniqueConstraint("touchpoint", "event_id", name="uq_journal_touchpoint_event_id"),)

    position: int | None = Field(
        default=None, primary_key=True, sa_type=sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    )
    touchpoint: str = Field(max_length=64)
    event_id: str = Field(max_length=200)
    body: dict[str, Any] = _json(default_factory=dict)
    appended_at: datetime = _ts()


class JournalRejectedRow(SQLModel, table=True):
    """A journaled event the processor could not record (the error's name): kept, not lost,
    for an operator to look at. On SQLite it lives in the journal's file, like the journal."""

    __tablename__ = "journal_rejected"

    position: int = Field(primary_key=True, sa_type=sa.BigInteger, sa_column_kwargs={"autoincrement": False})
    touchpoint: str = Field(max_length=64)
    event_id: str = Field(max_length=200)
    body: dict[str, Any] = _json(default_factory=dict)
    error: str = Field(max_length=200)
    rejected_at: datetime = _ts()


class JournalCursorRow(SQLModel, table=True):
    """How far the journal's processor is: every journaled event up to ``position`` is
    recorded. Written in the same transaction as the events it records."""

    __tablename__ = "journal_cursor"

    name: str = Field(primary_key=True, max_length=64)
    position: int = Field(default=0, sa_type=sa.BigInteger)
    updated_at: datetime = _ts()


def utcnow() -> datetime:
    """The hub's clock (see :mod:`prm_core.clock`)."""
    return clock.utcnow()


customers: sa.Table = CustomerRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
identities: sa.Table = IdentityRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
shared_links: sa.Table = SharedLinkRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
events: sa.Table = EventRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
dialogues: sa.Table = DialogueRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
memberships: sa.Table = MembershipRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
metrics: sa.Table = MetricsRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
merges: sa.Table = MergeRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
identity_conflicts: sa.Table = IdentityConflictRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
api_keys: sa.Table = ApiKeyRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
import_checkpoints: sa.Table = ImportCheckpointRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
webhook_receipts: sa.Table = WebhookReceiptRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
outbox: sa.Table = OutboxRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
partner_callbacks: sa.Table = PartnerCallbackRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
customer_value: sa.Table = ValueRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
planning_models: sa.Table = ModelRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
segments: sa.Table = SegmentRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
offers_made: sa.Table = OfferRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
campaigns: sa.Table = CampaignRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
touchpoint_customers: sa.Table = TouchpointCustomerRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
touchpoint_days: sa.Table = TouchpointDayRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
touchpoint_day_revenue: sa.Table = TouchpointDayRevenueRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
consents: sa.Table = ConsentRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
tombstones: sa.Table = TombstoneRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
erasures: sa.Table = ErasureRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
privacy_keys: sa.Table = PrivacyKeyRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
changes: sa.Table = ChangeRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
feed_state: sa.Table = FeedStateRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
destination_cursors: sa.Table = DestinationCursorRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
dead_letters: sa.Table = DeadLetterRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
triggers: sa.Table = TriggerRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
trigger_runs: sa.Table = TriggerRunRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
trigger_offers: sa.Table = TriggerOfferRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
trigger_cursor: sa.Table = TriggerCursorRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
survey_answers: sa.Table = SurveyAnswerRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation


journal: sa.Table = JournalRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
journal_rejected: sa.Table = JournalRejectedRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
journal_cursor: sa.Table = JournalCursorRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation

# retention (prm_core.privacy.retention) finds a touch point's old events without a scan
sa.Index("ix_events_touchpoint_time", events.c.touchpoint, events.c.occurred_at)
