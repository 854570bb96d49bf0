"""Square webhooks on the POS touch point: ``POST /v1/touchpoints/pos/square/webhooks``.

Authenticated by Square's signature: ``x-square-hmacsha256-signature`` is the base64
HMAC-SHA256, under the subscription's signature key (``[touchpoints.pos]
square_signature_key``), of the notification URL followed by the raw body, compared in
constant time: the same computation as the Square SDK's
``square.utils.webhooks_helper.verify_signature``, which the tests check against. The
notification URL is ``[server] public_url`` + the path (what is registered with Square; the
request's own URL only when no public URL is configured, as in development). A missing or
wrong signature is a 401 and nothing is written. ``event_id`` de-duplicates redeliveries.

Event types:

- ``payment.created`` / ``payment.updated``: a payment whose ``status`` is ``COMPLETED`` is
  a sale at store ``location_id``, workstation ``square``, sequence number the payment id
  (so its created and updated notifications are one transaction), on the business day of
  its ``created_at``. Square's payment carries no lines: it is one line ``order-<order_id>``
  for ``amount_money`` (tips, in ``tip_money``, are not revenue), tendered by its
  ``source_type``. Money comes in the currency's smallest unit and is converted with ISO
  4217's minor units (cents, yen, fils). The buyer is ``buyer_email_address``. Payments
  that are not completed (``APPROVED``, ``CANCELED``, ``FAILED``) record nothing.
- ``refund.created`` / ``refund.updated`` with ``status: COMPLETED``: a return (sequence
  number ``refund-<id>``) of the sale its ``payment_id`` names, for ``amount_money``; it is
  that sale's customer's. A refund of a payment the hub never saw is recorded without one.
- ``order.created`` / ``order.updated``: Square's notification names the order and its
  ``state`` but carries neither lines nor money (those are fetched from the Orders API,
  which needs an access token the hub does not hold), so they are acknowledged and
  de-duplicated, and record nothing: the order's money arrives with its payments.

Other types are acknowledged and ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import structlog
from aiohttp import web
from prm_pos.vendors import (
    Transaction,
    already_processed,
    answer_delivery,
    find_transaction,
    money,
    parse_transaction,
    signature_matches,
    unauthorized,
)

from prm_core.plugin import HUB, Adapter, Config, Hub, InvalidInput, hookimpl, parse_rfc3339, parse_time

__all__ = ["PATH", "payment_transaction", "prm_adapters", "refund_transaction"]

PATH = "/v1/touchpoints/pos/square/webhooks"
WORKSTATION = "square"
PAYMENT_TYPES = ("payment.created", "payment.updated")
REFUND_TYPES = ("refund.created", "refund.updated")
ORDER_TYPES = ("order.created", "order.updated")
log = structlog.get_logger(__name__)


def _money(obj: Any, field: str) -> tuple[str, Any]:
    if not isinstance(obj, Mapping):
        raise InvalidInput(f"{field} must be a Money object", field)
    code = money.currency(obj.get("currency"), f"{field}.currency")
    return code, money.from_minor_units(obj.get("amount"), code, f"{field}.amount")


def payment_transaction(payment: Any) -> Transaction | None:
    """A Square Payment object as a canonical sale; ``None`` unless it is completed."""
    where = "data.object.payment"
    if not isinstance(payment, Mapping) or not payment.get("id"):
        raise InvalidInput(f"{where} with an id is expected", where)
    if payment.get("status") != "COMPLETED":
        return None
    code, amount = _money(payment.get("amount_money"), f"{where}.amount_money")
    created = _time(payment.get("created_at"), f"{where}.created_at")
    email = payment.get("buyer_email_address")
    body = {
        "transaction_type": "sale",
        "store_id": payment.get("location_id") or "square",
        "workstation_id": WORKSTATION,
        "sequence_number": payment["id"],
        "business_day": created.date().isoformat(),
        "occurred_at": created.isoformat(),
        "currency": code,
        "line_items": [
            {
                "item_id": f"order-{payment['order_id']}"[:64] if payment.get("order_id") else "payment",
                "description": "Square payment",
                "quantity": 1,
                "unit_price": str(amount),
                "extended_amount": str(amount),
            }
        ],
        "total": str(amount),
        "tenders": [{"type": str(payment.get("source_type") or "square").lower()[:32], "amount": str(amount)}],
        "customer_ref": {"email": email} if isinstance(email, str) and email.strip() else None,
    }
    return parse_transaction(body, source="square")


async def refund_transaction(refund: Any, hub: Hub) -> Transaction | None:
    """A Square Refund object as a canonical return; ``None`` unless it is completed."""
    where = "data.object.refund"
    if not isinstance(refund, Mapping) or not refund.get("id"):
        raise InvalidInput(f"{where} with an id is expected", where)
    if refund.get("status") != "COMPLETED":
        return None
    code, amount = _money(refund.get("amount_money"), f"{where}.amount_money")
    created = _time(refund.get("created_at"), f"{where}.created_at")
    store = str(refund.get("location_id") or "square")
    original = await find_transaction(hub, store, WORKSTATION, str(refund.get("payment_id") or ""))
    body: dict[str, Any] = {
        "transaction_type": "return",
        "store_id": store,
        "workstation_id": WORKSTATION,
        "sequence_number": f"refund-{refund['id']}"[:64],
        "business_day": created.date().isoformat(),
        "occurred_at": created.isoformat(),
        "currency": code,
        "line_items": [
            {
                "item_id": f"order-{refund['order_id']}"[:64] if refund.get("order_id") else "refund",
                "description": "Square refund",
                "quantity": 1,
                "unit_price": str(amount),
                "extended_amount": str(amount),
            }
        ],
        "total": str(amount),
        "tenders": [{"type": "square", "amount": str(amount)}],
    }
    if original is not None:
        body["original_transaction"] = original.to_json()
    return parse_transaction(body, source="square")


def _time(raw: Any, field: str) -> datetime:
    """An RFC 3339 time inside the hub's window of event times, with Square's own offset."""
    value = parse_rfc3339(raw, field)
    parse_time(raw, field)
    return value


def _notification_url(request: web.Request, config: Config) -> str:
    return f"{config.public_url}{PATH}" if config.public_url else str(request.url)


async def square_webhooks(request: web.Request) -> web.Response:
    """Square webhooks: payment.created, payment.updated, order.created, order.updated
    (signed with x-square-hmacsha256-signature over the notification URL and the body)."""
    hub = request.app[HUB]
    raw = await request.read()
    key = str(hub.config.touchpoint("pos").get("square_signature_key") or "")
    message = _notification_url(request, hub.config).encode() + raw
    if not signature_matches(request.headers.get("x-square-hmacsha256-signature"), key, message):
        raise unauthorized("Square")
    notification = money.loads(raw)
    if not isinstance(notification, Mapping):
        raise InvalidInput("the body must be a Square event object", None)
    event_id = notification.get("event_id")
    event_id = event_id if isinstance(event_id, str) and event_id else None
    if await already_processed(request, "square", event_id):
        return web.json_response({"accepted": 0, "duplicates": 1})
    kind = str(notification.get("type") or "")
    transactions: list[Transaction] = []
    data = notification.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    obj = obj if isinstance(obj, Mapping) else {}
    if kind in PAYMENT_TYPES or kind in REFUND_TYPES:
        found = (
            payment_transaction(obj.get("payment"))
            if kind in PAYMENT_TYPES
            else await refund_transaction(obj.get("refund"), hub)
        )
        transactions = [found] if found is not None else []
    elif kind not in ORDER_TYPES:
        log.info("square event type ignored", type=kind[:64])
    return await answer_delivery(request, "square", event_id, transactions)


@hookimpl
def prm_adapters(config: Config) -> list[Adapter]:
    return [
        Adapter(
            name="square",
            touchpoint="pos",
            routes=[web.post(PATH, square_webhooks)],
            description="Square webhooks (payment.*, refund.*, order.created, order.updated)",
        )
    ]
