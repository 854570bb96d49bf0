"""Driving the Segment adapter with the vendors' own Python SDKs (Segment's, RudderStack's),
as an existing instrumentation does once its host is the hub."""

from __future__ import annotations

import base64
from typing import Any


def basic(key: str) -> dict[str, str]:
    """HTTP Basic with ``key`` as the user name: how the SDKs present their write key."""
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def sdk_send(client_cls: Any, key: str, host: str, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """Send ``calls`` (``(method, keyword arguments)``) with an SDK client class in sync mode
    (each call posts at once, gzipped, never retried) and collect the errors it reports."""
    errors: list[Any] = []
    client = client_cls(
        write_key=key, host=host, sync_mode=True, gzip=True, max_retries=0, on_error=lambda e, b: errors.append(e)
    )
    for method, kwargs in calls:
        getattr(client, method)(**kwargs)
    client.flush()
    return errors
