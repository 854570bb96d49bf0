"""The change feed: every change the hub makes, durable, ordered and resumable, and the
destinations it flows to. See ``docs/feed.md`` and ``docs/destinations.md``."""

from __future__ import annotations

from .changes import CORE_TYPES, Change, NewChange, check_plugin_type, parse_position
from .destinations import DestinationKind, DestinationSettings, Refused, Sink

__all__ = [
    "CORE_TYPES",
    "Change",
    "DestinationKind",
    "DestinationSettings",
    "NewChange",
    "Refused",
    "Sink",
    "check_plugin_type",
    "parse_position",
]
