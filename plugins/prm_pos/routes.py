"""``POST /v1/touchpoints/pos/transactions``: a till's transaction, answered with receipt offers."""

from __future__ import annotations

from aiohttp import web

from prm_core.plugin import HUB, WRITE_ERRORS, answer_request, api, as_claims, require, utcnow

from . import money
from .household import join_households
from .recording import TOUCHPOINT, offer_events, transaction_event
from .transaction import parse_transaction

__all__ = ["post_transaction"]


@api(
    "Record a POS transaction (ARTS POSLog names) and answer with receipt offers within the POS budget",
    scope="touchpoint:pos",
    body={
        "type": "object",
        "required": ["store_id", "workstation_id", "sequence_number", "business_day", "currency", "total"],
        "properties": {
            "transaction_type": {"enum": ["sale", "return", "void"]},
            "store_id": {"type": "string"},
            "workstation_id": {"type": "string"},
            "sequence_number": {"type": ["string", "integer"]},
            "business_day": {"type": "string", "format": "date"},
            "occurred_at": {"type": "string", "format": "date-time"},
            "currency": {"type": "string"},
            "line_items": {"type": "array", "items": {"type": "object"}},
            "tenders": {"type": "array", "items": {"type": "object"}},
            "tax": {"type": ["string", "number"]},
            "total": {"type": ["string", "number"]},
            "customer_ref": {"type": "object"},
            "original_transaction": {"type": "object"},
        },
    },
    responses={
        200: '{"transaction_id", "duplicate", "customer_id", "dialogue_id", "delivery": {"receipt_lines", "offers"}, '
        '"elapsed_ms", "budget_ms", "degraded"}',
        **WRITE_ERRORS,
        409: "The key was used by a different transaction, or the original was already voided",
    },
)
async def post_transaction(request: web.Request) -> web.Response:
    """Record a transaction and answer with receipt offers.

    The transaction is durable before the answer; the offers come from value delivery
    (``prm_propose_offers``) within ``[touchpoints.pos] budget_ms`` and are rendered as
    receipt lines. A replayed transaction answers ``"duplicate": true`` and changes nothing.
    """
    await require(request, f"touchpoint:{TOUCHPOINT}")
    hub = request.app[HUB]
    txn = parse_transaction(money.loads(await request.read()))
    (event,) = as_claims(request, [await transaction_event(hub, txn, received_at=utcnow())])
    answer = await answer_request(request, event)
    recorded = answer.recorded
    if not recorded.duplicate:
        await hub.record(offer_events(event, recorded.dialogue_id, answer.delivery.offers[:3]))
        address = txn.customer.address if txn.customer else None
        if txn.transaction_type == "sale" and (address or any(i.namespace == "phone" for i in event.identities)):
            await join_households(hub, recorded.customer_id, tuple(event.identities), address)
    return web.json_response({"transaction_id": event.id, "duplicate": recorded.duplicate, **answer.to_json()})
