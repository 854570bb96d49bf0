"""Shopify order webhooks on the POS touch point: ``POST /v1/touchpoints/pos/shopify/orders``.

Authenticated by Shopify's own signature, not an API key: ``X-Shopify-Hmac-Sha256`` is the
base64 HMAC-SHA256 of the raw body under the app's secret, ``[touchpoints.pos]
shopify_secret``, compared in constant time. A missing or wrong signature (or no secret
configured) is a 401 and nothing is written.

Redeliveries and replays are de-duplicated on what the signature covers, the body: an order
is processed once per order id (``order:<id>``), a refund once per refund id
(``refund:<id>``). The headers are not signed (``X-Shopify-Webhook-Id``,
``X-Shopify-Shop-Domain``, ``X-Shopify-Topic``), so a captured body resent with new ones is
still the same order: acknowledged as a duplicate, counted once.

Topics (``X-Shopify-Topic``), mapped to canonical transactions (:mod:`prm_pos.transaction`):

- ``orders/create`` and ``orders/paid``: the order as a sale at store ``<shop domain>``,
  workstation ``shopify``, sequence number the order id, business day the order's date in
  the shop's offset. Both topics name the same order, so it is recorded once, by whichever
  arrives first. Lines: ``price x quantity`` less the line's ``discount_allocations``
  (``total_discount`` on older API versions); shipping lines as items ``shipping``; tax is
  ``total_tax`` unless ``taxes_included`` (then it is inside the lines, and revenue with it).
  One tender per order: the first ``payment_gateway_names`` for ``total_price``. The buyer:
  ``email`` and ``phone``, the billing address for the household.
- ``refunds/create``: a return (sequence number ``refund-<id>``) of the order it names:
  ``refund_line_items`` (``subtotal``, ``total_tax``), shipping refunds from
  ``order_adjustments``, tenders from the successful ``refund`` transactions. The order's
  customer is the return's; a refund for an order the hub never saw is recorded without one.

Other topics are acknowledged (200) and ignored. Totals that do not add up are a 422
naming the field, as for a till.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
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

__all__ = ["PATH", "order_transaction", "prm_adapters", "refund_transaction"]

PATH = "/v1/touchpoints/pos/shopify/orders"
WORKSTATION = "shopify"
SALE_TOPICS = ("orders/create", "orders/paid")
REFUND_TOPIC = "refunds/create"
log = structlog.get_logger(__name__)


def _shop(domain: str | None) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "", domain or "")[:64]
    return cleaned or "shopify"


def _day(raw: Any, field: str) -> tuple[str, str]:
    """The business day (the date where the shop is) and the timestamp of a Shopify time."""
    when = parse_rfc3339(raw, field)
    parse_time(raw, field)  # inside the hub's window of event times
    return when.date().isoformat(), when.isoformat()


def _dec(raw: Any, field: str) -> Decimal:
    return money.amount(raw if raw is not None else 0, field, negative=True)


def _item_id(item: Mapping[str, Any]) -> str:
    for key, prefix in (("sku", ""), ("variant_id", "variant-"), ("product_id", "product-"), ("id", "line-")):
        value = item.get(key)
        if value not in (None, ""):
            return f"{prefix}{value}"[:64]
    return "item"


def _discounts(item: Mapping[str, Any], where: str) -> Decimal:
    allocations = item.get("discount_allocations")
    if isinstance(allocations, list) and allocations:
        return sum(
            (_dec(a.get("amount"), f"{where}.discount_allocations[{i}].amount") for i, a in enumerate(allocations)),
            Decimal(0),
        )
    return _dec(item.get("total_discount"), f"{where}.total_discount")


def _customer(order: Mapping[str, Any]) -> dict[str, Any] | None:
    found = order.get("customer")
    buyer: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    ref: dict[str, Any] = {}
    for ns in ("email", "phone"):
        value = order.get(ns) or buyer.get(ns)
        if isinstance(value, str) and value.strip():
            ref[ns] = value
    billing = order.get("billing_address")
    if isinstance(billing, Mapping) and billing.get("address1"):
        ref["address"] = {
            "line1": str(billing.get("address1") or ""),
            "line2": str(billing.get("address2") or ""),
            "city": str(billing.get("city") or ""),
            "postal_code": str(billing.get("zip") or ""),
            "country": str(billing.get("country_code") or billing.get("country") or ""),
        }
    return ref or None


def _objects(payload: Mapping[str, Any], field: str) -> list[Mapping[str, Any]]:
    """``payload[field]``, a list of objects (missing or null: none); anything else is refused naming it."""
    found = payload.get(field)
    if found is None:
        return []
    if not isinstance(found, list):
        raise InvalidInput(f"{field} must be a list", field)
    for i, item in enumerate(found):
        if not isinstance(item, Mapping):
            raise InvalidInput(f"{field}[{i}] must be an object", f"{field}[{i}]")
    return found


def order_transaction(order: Any, shop: str | None) -> Transaction:
    """An ``orders/create`` / ``orders/paid`` payload as a canonical sale."""
    if not isinstance(order, Mapping) or order.get("id") is None:
        raise InvalidInput("an order object with an id is expected", "id")
    day, at = _day(order.get("processed_at") or order.get("created_at"), "created_at")
    lines = []
    for i, item in enumerate(_objects(order, "line_items")):
        where = f"line_items[{i}]"
        quantity = money.quantity(item.get("quantity", 1), f"{where}.quantity")
        price = money.amount(item.get("price"), f"{where}.price")
        discount = _discounts(item, where)
        lines.append(
            {
                "item_id": _item_id(item),
                "description": item.get("name") or item.get("title"),
                "category": item.get("product_type") or None,
                "quantity": str(quantity),
                "unit_price": str(price),
                "discount": str(discount),
                "extended_amount": str(quantity * price - discount),
            }
        )
    for i, shipping in enumerate(_objects(order, "shipping_lines")):
        where = f"shipping_lines[{i}]"
        price = money.amount(shipping.get("price"), f"{where}.price")
        discount = _discounts(shipping, where)
        lines.append(
            {
                "item_id": "shipping",
                "description": shipping.get("title"),
                "category": "shipping",
                "quantity": "1",
                "unit_price": str(price),
                "discount": str(discount),
                "extended_amount": str(price - discount),
            }
        )
    gateways = order.get("payment_gateway_names") or []
    body = {
        "transaction_type": "sale",
        "store_id": _shop(shop),
        "workstation_id": WORKSTATION,
        "sequence_number": str(order["id"]),
        "business_day": day,
        "occurred_at": at,
        "currency": order.get("currency"),
        "line_items": lines,
        "tax": "0" if order.get("taxes_included") else order.get("total_tax", "0"),
        "total": order.get("total_price"),
        "tenders": [{"type": str(gateways[0] if gateways else "shopify")[:32], "amount": order.get("total_price")}],
        "customer_ref": _customer(order),
    }
    return parse_transaction(body, source="shopify")


async def refund_transaction(refund: Any, shop: str | None, hub: Hub, currency: str | None) -> Transaction | None:
    """A ``refunds/create`` payload as a canonical return (``None`` when it returns nothing)."""
    if not isinstance(refund, Mapping) or refund.get("id") is None or refund.get("order_id") is None:
        raise InvalidInput("a refund object with an id and an order_id is expected", "id")
    day, at = _day(refund.get("processed_at") or refund.get("created_at"), "created_at")
    lines: list[dict[str, Any]] = []
    tax = Decimal(0)
    for i, refunded in enumerate(_objects(refund, "refund_line_items")):
        where = f"refund_line_items[{i}]"
        line_item = refunded.get("line_item")
        item: Mapping[str, Any] = line_item if isinstance(line_item, Mapping) else {}
        quantity = money.quantity(refunded.get("quantity", 1), f"{where}.quantity")
        subtotal = money.amount(refunded.get("subtotal"), f"{where}.subtotal")
        price = money.amount(item.get("price", subtotal / quantity), f"{where}.line_item.price")
        tax += money.amount(refunded.get("total_tax", 0), f"{where}.total_tax")
        lines.append(
            {
                "item_id": _item_id(item),
                "description": item.get("name") or item.get("title"),
                "category": item.get("product_type") or None,
                "quantity": str(quantity),
                "unit_price": str(price),
                "discount": str(max(Decimal(0), quantity * price - subtotal)),
                "extended_amount": str(subtotal),
            }
        )
    for i, adjustment in enumerate(_objects(refund, "order_adjustments")):
        # Shopify writes what a refund gives back as negative adjustments
        value = -_dec(adjustment.get("amount"), f"order_adjustments[{i}].amount")
        tax += -_dec(adjustment.get("tax_amount"), f"order_adjustments[{i}].tax_amount")
        if value > 0:
            kind = str(adjustment.get("kind") or "adjustment")[:32]
            lines.append(
                {"item_id": kind, "category": "shipping" if "shipping" in kind else None, "quantity": "1",
                 "unit_price": str(value), "extended_amount": str(value)}
            )  # fmt: skip
    if not lines:
        return None
    tenders = []
    for t in _objects(refund, "transactions"):
        if t.get("kind") == "refund" and t.get("status", "success") == "success":
            tenders.append({"type": str(t.get("gateway") or "shopify")[:32], "amount": t.get("amount")})
            currency = currency or t.get("currency")
    store = _shop(shop)
    original = await find_transaction(hub, store, WORKSTATION, str(refund["order_id"]))
    body: dict[str, Any] = {
        "transaction_type": "return",
        "store_id": store,
        "workstation_id": WORKSTATION,
        "sequence_number": f"refund-{refund['id']}",
        "business_day": day,
        "occurred_at": at,
        "currency": currency,
        "line_items": lines,
        "tax": str(tax),
        "total": str(sum((Decimal(str(li["extended_amount"])) for li in lines), Decimal(0)) + tax),
        "tenders": tenders,
    }
    if original is not None:
        body["original_transaction"] = original.to_json()
    return parse_transaction(body, source="shopify")


async def shopify_orders(request: web.Request) -> web.Response:
    """Shopify order webhooks: orders/create, orders/paid, refunds/create (signed with X-Shopify-Hmac-Sha256)."""
    hub = request.app[HUB]
    raw = await request.read()
    secret = str(hub.config.touchpoint("pos").get("shopify_secret") or "")
    if not signature_matches(request.headers.get("X-Shopify-Hmac-Sha256"), secret, raw):
        raise unauthorized("Shopify")
    topic = request.headers.get("X-Shopify-Topic", "")
    shop = request.headers.get("X-Shopify-Shop-Domain")
    if topic not in (*SALE_TOPICS, REFUND_TOPIC):
        log.info("shopify topic ignored", topic=topic[:64])
        return web.json_response({"accepted": 0, "duplicates": 0, "ignored": topic[:64]})
    payload = money.loads(raw)
    delivery = _delivery_key(payload, "order" if topic in SALE_TOPICS else "refund")
    if await already_processed(request, "shopify", delivery):
        return web.json_response({"accepted": 0, "duplicates": 1})
    if topic in SALE_TOPICS:
        transactions = [order_transaction(payload, shop)]
    else:
        currency = payload.get("currency") if isinstance(payload, Mapping) else None
        found = await refund_transaction(payload, shop, hub, currency)
        transactions = [found] if found is not None else []
    return await answer_delivery(request, "shopify", delivery, transactions)


def _delivery_key(payload: Any, resource: str) -> str | None:
    """What names a delivery, from the signed body: ``order:<id>`` or ``refund:<id>`` (``None``
    without an id: the body is then refused naming it). orders/create and orders/paid name the
    same order, so the second is a duplicate of the first."""
    found = payload.get("id") if isinstance(payload, Mapping) else None
    if found is None or isinstance(found, bool | dict | list):
        return None
    return f"{resource}:{found}"[:200]


@hookimpl
def prm_adapters(config: Config) -> list[Adapter]:
    return [
        Adapter(
            name="shopify",
            touchpoint="pos",
            routes=[web.post(PATH, shopify_orders)],
            description="Shopify order webhooks (orders/create, orders/paid, refunds/create)",
        )
    ]
