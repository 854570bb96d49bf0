"""The POS touch point's API for vendor adapters (``prm_shopify``, ``prm_square``): what
they import from ``prm_pos``, here and nowhere else.

- :class:`Transaction`, :func:`parse_transaction`: a vendor's sale, return or void as the
  canonical transaction; :mod:`money <prm_pos.money>` reads amounts, quantities and currencies.
- :func:`find_transaction`: a recorded sale known by store, workstation and sequence number.
- :func:`signature_matches` / :func:`unauthorized`: a base64 HMAC-SHA256 compared in
  constant time, and the 401 when it does not match.
- :func:`already_processed` / :func:`mark_processed`: a delivery's id (``X-Shopify-Webhook-Id``,
  Square's ``event_id``) is remembered once processed (:meth:`prm_core.plugin.Hub.mark_delivery_processed`),
  so a redelivery is acknowledged without being processed again. It is marked after the
  events are durable: a crash in between means one more processing, whose events are
  duplicates of the first.
- :func:`record_transactions` / :func:`answer_delivery`: canonical transactions recorded as
  POS events (without waiting for offers: nobody prints a receipt for a webhook). A
  transaction whose key was already recorded with other content keeps the first recording
  and is only logged: a vendor retries any non-2xx for days, and a retry cannot change what
  was recorded.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

import structlog
from aiohttp import web

from prm_core.plugin import HUB, ApiError, RecordedEvent, ingest, utcnow

from . import money
from .household import join_households
from .recording import find_transaction, transaction_event
from .transaction import Transaction, parse_transaction

__all__ = [
    "Transaction",
    "already_processed",
    "answer_delivery",
    "find_transaction",
    "mark_processed",
    "money",
    "parse_transaction",
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
    """The 401 for a body whose ``vendor`` signature does not match."""
    return ApiError(401, "unauthorized", f"the {vendor} signature does not match this body")


async def already_processed(request: web.Request, source: str, delivery_id: str | None) -> bool:
    """Whether the delivery ``delivery_id`` from ``source`` was processed before."""
    if not delivery_id:
        return False
    return await request.app[HUB].delivery_processed(source, delivery_id)


async def mark_processed(request: web.Request, source: str, delivery_id: str | None) -> None:
    """Remember the delivery as processed, once its events are durable."""
    if delivery_id:
        await request.app[HUB].mark_delivery_processed(source, delivery_id)


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
