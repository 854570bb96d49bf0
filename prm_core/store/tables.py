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
from sqlmodel import Field, SQLModel

from .. import clock

__all__ = [
    "ApiKeyRow",
    "ConsentRow",
    "CustomerRow",
    "DialogueRow",
    "ErasureRow",
    "EventRow",
    "IdentityRow",
    "ImportCheckpointRow",
    "MembershipRow",
    "MergeRow",
    "MetricsRow",
    "PrivacyKeyRow",
    "SharedLinkRow",
    "TombstoneRow",
    "UTCDateTime",
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
    """Per-customer aggregates kept current on ingest, never by rescanning history."""

    __tablename__ = "customer_metrics"

    customer_id: str = Field(primary_key=True, max_length=40)
    event_count: int = 0
    order_count: int = 0
    lifetime_revenue: Decimal = Field(default=Decimal(0), sa_type=sa.Numeric(18, 4))
    first_seen_at: datetime | None = _ts(default=None)
    last_seen_at: datetime | None = _ts(default=None)
    touchpoints: list[str] = _json(default_factory=list)


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


# ---- privacy (issue 13): consents, erasure tombstones ------------------------------------


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
api_keys: sa.Table = ApiKeyRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
import_checkpoints: sa.Table = ImportCheckpointRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
consents: sa.Table = ConsentRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
tombstones: sa.Table = TombstoneRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
erasures: sa.Table = ErasureRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation
privacy_keys: sa.Table = PrivacyKeyRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it at class creation

# retention (prm_core.privacy.retention) finds a touch point's old events without a scan
sa.Index("ix_events_touchpoint_time", events.c.touchpoint, events.c.occurred_at)
