"""TMF687 Stock Management v4.0.0: the hub's requests, and the answers and events it reads.

Base path ``/tmf-api/stock/v4``. ``POST /checkProductStock`` and ``POST /reserveProductStock``
are task resources: ``200`` with the finished task, or ``201`` with one still ``accepted`` or
``inProgress`` whose end (``done``, ``terminatedWithError``) comes in a
``CheckProductStockStateChangeEvent`` / ``ReserveProductStockStateChangeEvent``. A check's
state is ``state``; a reservation's is ``reserveProductStockState`` (both ``TaskStateType``).

Older spellings the hub accepted before it followed the specification are still read, as
aliases: the state ``acknowledged`` (for ``accepted``), and on a reservation ``state`` (for
``reserveProductStockState``) and items' ``productStock``/``quantity`` (for
``requestedProduct``/``quantityRequested``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prm_core.plugin import FulfillmentRequest

from .messages import InvalidMessage, Notification, event_name, mapping, text

__all__ = [
    "STOCK_STATE",
    "check_product_stock",
    "parts",
    "read_check",
    "read_reservation",
    "reserve_product_stock",
    "stock_notification",
]

# TaskStateType -> the hub's fulfillment status
STOCK_STATE = {
    "accepted": "pending",
    "inProgress": "pending",
    "done": "confirmed",
    "terminatedWithError": "failed",
}
_ALIASES = {"acknowledged": "accepted"}  # the hub's own simulator said so before v4.0.0 was followed
_RESOURCES = {"checkProductStock": "CheckProductStock", "reserveProductStock": "ReserveProductStock"}


def parts(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``parts`` as ``[{"id", "quantity"}]`` (a part may be given as its id alone)."""
    found = []
    for part in payload.get("parts") or []:
        if isinstance(part, str):
            found.append({"id": part, "quantity": 1})
        elif isinstance(part, Mapping) and part.get("id"):
            found.append({"id": str(part["id"]), "quantity": int(part.get("quantity") or 1)})
    return found


def _product(part_id: str) -> dict[str, Any]:
    return {"id": part_id, "@referredType": "Product"}


def check_product_stock(req: FulfillmentRequest) -> dict[str, Any]:
    """A ``CheckProductStock_Create``: one item per part.

    ``checkedProductStock`` is a ``ProductStock``, whose ``productStockLevel`` is required; the
    hub does not know the level (it asks for it), so it sends the unit alone.
    """
    return {
        "@type": "CheckProductStock",
        "instantSyncCheck": True,
        "provideAlternative": False,
        "checkProductStockItem": [
            {
                "id": str(i + 1),
                "checkedProductStock": {"stockedProduct": _product(part["id"]), "productStockLevel": {"units": "unit"}},
                "requestedQuantity": {"amount": part["quantity"], "units": "unit"},
            }
            for i, part in enumerate(parts(req.payload))
        ],
    }


def reserve_product_stock(req: FulfillmentRequest) -> dict[str, Any]:
    """A ``ReserveProductStock_Create``: one ``requestedProduct`` and ``quantityRequested`` per part."""
    return {
        "@type": "ReserveProductStock",
        "reserveProductStockItem": [
            {
                "id": str(i + 1),
                "requestedProduct": _product(part["id"]),
                "quantityRequested": {"amount": part["quantity"], "units": "unit"},
            }
            for i, part in enumerate(parts(req.payload))
        ],
    }


# ---- reading ------------------------------------------------------------------------------


def _state(raw: Any, field: str, ref: str | None) -> tuple[str | None, str | None]:
    """``(TaskStateType value, hub status)``; ``(None, None)`` when absent."""
    if raw is None:
        return None, None
    state = _ALIASES.get(raw, raw) if isinstance(raw, str) else None
    if state not in STOCK_STATE:
        raise InvalidMessage(field, f"{field} must be one of {', '.join(STOCK_STATE)}", ref)
    return state, STOCK_STATE[state]


def _items(task: Mapping[str, Any], key: str, where: str, ref: str | None) -> list[Mapping[str, Any]]:
    items = task.get(key) or []
    if not isinstance(items, list):
        raise InvalidMessage(f"{where}.{key}", f"{where}.{key} must be a list", ref)
    return [mapping(item, f"{where}.{key}[{n}]", ref) for n, item in enumerate(items)]


def read_check(task: Mapping[str, Any], where: str) -> tuple[str | None, str | None, dict[str, Any]]:
    """``(reference, status, data)`` of a ``CheckProductStock``: each part's availability and,
    when the partner gives it, the units in stock."""
    ref = text(task.get("id"), f"{where}.id")
    state, status = _state(task.get("state"), f"{where}.state", ref)
    found = []
    for n, item in enumerate(_items(task, "checkProductStockItem", where, ref)):
        at = f"{where}.checkProductStockItem[{n}]"
        stock = mapping(item.get("checkedProductStock"), f"{at}.checkedProductStock", ref)
        quantity = mapping(item.get("requestedQuantity"), f"{at}.requestedQuantity", ref)
        level = mapping(stock.get("productStockLevel"), f"{at}.checkedProductStock.productStockLevel", ref)
        _state(item.get("state"), f"{at}.state", ref)
        part = {
            "id": mapping(stock.get("stockedProduct"), f"{at}.checkedProductStock.stockedProduct", ref).get("id"),
            "quantity": quantity.get("amount"),
            "availability": item.get("availabilityResult") or item.get("state"),
        }
        if "amount" in level:
            part["in_stock"] = level["amount"]
        found.append(part)
    return ref, status, {"partner_ref": ref, "state": state, "parts": found}


def read_reservation(task: Mapping[str, Any], where: str) -> tuple[str | None, str | None, dict[str, Any]]:
    """``(reference, status, data)`` of a ``ReserveProductStock``: each part's quantity asked,
    quantity reserved, and its item state as ``availability``."""
    ref = text(task.get("id"), f"{where}.id")
    key = "reserveProductStockState" if "reserveProductStockState" in task else "state"
    state, status = _state(task.get(key), f"{where}.{key}", ref)
    found = []
    for n, item in enumerate(_items(task, "reserveProductStockItem", where, ref)):
        at = f"{where}.reserveProductStockItem[{n}]"
        product = item.get("requestedProduct")
        if product is None:  # the alias: productStock.stockedProduct
            product = mapping(item.get("productStock"), f"{at}.productStock", ref).get("stockedProduct")
        asked = item.get("quantityRequested") if "quantityRequested" in item else item.get("quantity")
        reserved = mapping(item.get("quantityReserved"), f"{at}.quantityReserved", ref)
        item_key = "reserveProductStockState" if "reserveProductStockState" in item else "state"
        item_state, _ = _state(item.get(item_key), f"{at}.{item_key}", ref)
        part = {
            "id": mapping(product, f"{at}.requestedProduct", ref).get("id"),
            "quantity": mapping(asked, f"{at}.quantityRequested", ref).get("amount"),
            "availability": item_state,
        }
        if "amount" in reserved:
            part["reserved"] = reserved["amount"]
        found.append(part)
    return ref, status, {"partner_ref": ref, "state": state, "parts": found}


def stock_notification(body: Mapping[str, Any], listener: str | None = None) -> Notification:
    """A TMF687 ``CheckProductStock*Event`` or ``ReserveProductStock*Event`` as the hub applies it
    (``InvalidMessage`` when it breaks the spec; other event types are ``ignored``)."""
    name, key = event_name(body, listener, _RESOURCES)
    if not key or name.endswith("DeleteEvent"):  # a task has no delete event in TMF687
        return Notification(name, None, None, {}, ignored=True)
    where = f"event.{key}"
    task = mapping(mapping(body.get("event"), "event").get(key), where)
    if not task:
        raise InvalidMessage(where, f"{name} must carry event.{key}")
    read = read_check if key == "checkProductStock" else read_reservation
    ref, status, data = read(task, where)
    if ref is None:
        raise InvalidMessage(f"{where}.id", f"{where}.id is required to name the request")
    return Notification(name, ref, status, data)
