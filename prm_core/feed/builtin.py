"""The destination kinds the core provides: ``webhook`` and ``nats``."""

from __future__ import annotations

from .destinations import DestinationKind
from .jetstream import NatsSink
from .webhook import WebhookSink

__all__ = ["builtin_destination_kinds"]


def builtin_destination_kinds() -> list[DestinationKind]:
    return [
        DestinationKind(name="webhook", open=WebhookSink, about="POST batches signed with Standard Webhooks"),
        DestinationKind(name="nats", open=NatsSink, about="NATS JetStream, one message per change"),
    ]
