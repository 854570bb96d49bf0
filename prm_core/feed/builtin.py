"""The destination kinds the core provides: ``webhook`` and ``nats``, and the warehouse's
``parquet`` and ``postgresql`` (:mod:`prm_core.warehouse`)."""

from __future__ import annotations

from ..warehouse.kinds import warehouse_destination_kinds
from .destinations import DestinationKind
from .jetstream import NatsSink
from .webhook import WebhookSink

__all__ = ["builtin_destination_kinds"]


def builtin_destination_kinds() -> list[DestinationKind]:
    return [
        DestinationKind(name="webhook", open=WebhookSink, about="POST batches signed with Standard Webhooks"),
        DestinationKind(name="nats", open=NatsSink, about="NATS JetStream, one message per change"),
        *warehouse_destination_kinds(),
    ]
