"""What the vendor adapters (Shopify, Square) share: signatures, redelivery, recording.

- :func:`signature_matches`: a base64 HMAC-SHA256 compared in constant time.
- :func:`already_processed` / :func:`mark_processed`: a delivery's id (``X-Shopify-Webhook-Id``,
  Square's ``event_id``) is remembered once processed, so a redelivery is acknowledged
  without being processed again. It is marked after the events are durable: a crash in
  between means one more processing, whose events are duplicates of the first.
- :func:`record_transactions`: canonical transactions recorded as POS events (without
  waiting for offers: nobody prints a receipt for a webhook). A transaction whose key
  was already recorded with other content keeps the first recording and is only logged:
  a vendor retries any non-2xx for days, and a retry cannot change what was recorded.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

import sqlalchemy as sa
import structlog
from aiohttp import web
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from prm_core.clock import utcnow
from prm_core.model import RecordedEvent
from prm_core.server.errors import ApiError
from prm_core.server.routes import ingest
from prm_core.server.state import HUB
from prm_core.store.tables import webhook_receipts

from .household import join_households
from .recording import transaction_event
from .transaction import Transaction

__all__ = [
    "already_processed",
    "answer_delivery",
    "mark_processed",
    "record_transactions",
    "signature_matches",
    "unauthorized",
]

log = structlog.get_logger(__name__)


def signature_matches(given: str | None, key: str, message: bytes) -> bool:
    """Whether ``given`` is the base64 HMAC-SHA256 of ``message`` under ``key``."""
    if not given or not key:
        return False
    expected = base64.b64encode(hmac.new(key.encode(), message, hashlib.sha256).digest())
    return hmac.compare_digest(expected, given.strip().encode())


def unauthorized(vendor: str) -> ApiError:
    return ApiError(401, "unauthorized", f"the {vendor} signature does not match this body")


async def already_processed(request: web.Request, source: str, delivery_id: str | None) -> bool:
    if not delivery_id:
        return False
    c = webhook_receipts.c

    def read(conn: Connection) -> bool:
        q = sa.select(c.webhook_id).where(c.source == source, c.webhook_id == delivery_id[:200])
        return conn.execute(q).first() is not None

    return await request.app[HUB].store.read(read)


async def mark_processed(request: web.Request, source: str, delivery_id: str | None) -> None:
    if not delivery_id:
        return

    def write(conn: Connection) -> None:
        insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        stmt = insert(webhook_receipts).values(source=source, webhook_id=delivery_id[:200], received_at=utcnow())
        conn.execute(stmt.on_conflict_do_nothing())

    await request.app[HUB].store.write(write)


async def record_transactions(request: web.Request, transactions: Sequence[Transaction]) -> list[RecordedEvent]:
    """Record vendor transactions as POS events; see the module docstring."""
    hub = request.app[HUB]
    received_at = utcnow()
    found = []
    for txn in transactions:
        try:
            found.append((txn, await transaction_event(hub, txn, received_at=received_at)))
        except ApiError as exc:
            if exc.status != 409:
                raise
            log.warning("vendor transaction conflicts with the recorded one; the first is kept", source=txn.source)
    if not found:
        return []
    recorded = await ingest(request, [event for _, event in found], verified=True)
    for (txn, event), r in zip(found, recorded, strict=True):
        address = txn.customer.address if txn.customer else None
        if not r.duplicate and txn.transaction_type == "sale" and (address or event.identities):
            await join_households(hub, r.customer_id, tuple(event.identities), address)
    return recorded


async def answer_delivery(
    request: web.Request, source: str, delivery_id: str | None, transactions: Sequence[Transaction]
) -> web.Response:
    """Record a vendor delivery's transactions, remember the delivery id, answer the counts."""
    recorded = await record_transactions(request, transactions)
    await mark_processed(request, source, delivery_id)
    duplicates = sum(1 for r in recorded if r.duplicate)
    return web.json_response({"accepted": len(recorded) - duplicates, "duplicates": duplicates})
