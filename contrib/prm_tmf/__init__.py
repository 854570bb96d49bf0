"""TM Forum Open API adapters for partner services.

- **TMF646 Appointment Management v4**: ``POST {url}/appointment`` books a technician
  inside the requested period (``validFor``); ``POST {url}/searchTimeSlot`` lists free
  slots; ``AppointmentStateChangeEvent`` notifications confirm or complete a booking.
- **TMF687 Stock Management v4**: ``POST {url}/checkProductStock`` (a task resource: ``200``
  with ``state: done`` when checked at once, ``201`` ``acknowledged`` when the answer comes
  later in a ``CheckProductStockStateChangeEvent``), ``POST {url}/reserveProductStock``.

Each action maps a hub :class:`~prm_core.model.FulfillmentRequest` to the TM Forum resource
(published field names, ``@type`` set) and the partner's answer back to a
:class:`~prm_core.model.FulfillmentResult` whose ``data`` is small and protocol-free
(``window_start``/``window_end`` for a visit, ``parts`` with their availability).
``prm_partner`` uses these for partners whose ``protocol`` is ``tmf646`` or ``tmf687``;
:mod:`prm_tmf.simulators` serves both APIs for tests and ``prm demo``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import frozen

from prm_core.model import FulfillmentRequest, FulfillmentResult

__all__ = [
    "APPOINTMENT_STATUS",
    "STOCK_STATE",
    "TmfCall",
    "appointment_callback",
    "build_call",
    "parse_callback",
    "parse_result",
    "stock_callback",
]

# TMF646 Appointment.status -> the hub's fulfillment status
APPOINTMENT_STATUS = {
    "initialized": "pending",
    "confirmed": "confirmed",
    "partial": "pending",
    "completed": "completed",
    "cancelled": "rejected",
    "failed": "failed",
}
# TMF687 task state (TaskStateType) -> the hub's fulfillment status
STOCK_STATE = {
    "acknowledged": "pending",
    "inProgress": "pending",
    "done": "confirmed",
    "terminatedWithError": "failed",
}


@frozen
class TmfCall:
    """One HTTP call to a TM Forum API: ``POST {partner url}{path}`` with ``body``."""

    path: str
    body: Mapping[str, Any]


# ---- requests -----------------------------------------------------------------------------


def _parts(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``parts`` as ``[{"id", "quantity"}]`` (a part may be given as its id alone)."""
    parts = []
    for part in payload.get("parts") or []:
        if isinstance(part, str):
            parts.append({"id": part, "quantity": 1})
        elif isinstance(part, Mapping) and part.get("id"):
            parts.append({"id": str(part["id"]), "quantity": int(part.get("quantity") or 1)})
    return parts


def _appointment(req: FulfillmentRequest) -> dict[str, Any]:
    p = req.payload
    body: dict[str, Any] = {
        "@type": "Appointment",
        "externalId": req.idempotency_key,
        "category": "repair",
        "description": p.get("issue") or "",
        "validFor": {"startDateTime": p.get("window_start"), "endDateTime": p.get("window_end")},
        "relatedEntity": [{"id": str(p.get("product_id") or ""), "role": "product", "@referredType": "Product"}],
    }
    visit = p.get("visit") or {}
    if visit.get("name"):
        body["relatedParty"] = [{"role": "customer", "name": visit["name"], "@referredType": "Individual"}]
    if visit.get("phone"):
        body["contactMedium"] = [{"mediumType": "phone", "characteristic": {"phoneNumber": visit["phone"]}}]
    if visit.get("address"):
        body["relatedPlace"] = {
            "role": "interventionAddress",
            "name": visit["address"],
            "@type": "RelatedPlaceRefOrValue",
            "@referredType": "GeographicAddress",
        }
    return body


def _search_time_slot(req: FulfillmentRequest) -> dict[str, Any]:
    p = req.payload
    return {
        "@type": "SearchTimeSlot",
        "requestedTimeSlot": [
            {"validFor": {"startDateTime": p.get("window_start"), "endDateTime": p.get("window_end")}}
        ],
    }


def _check_product_stock(req: FulfillmentRequest) -> dict[str, Any]:
    return {
        "@type": "CheckProductStock",
        "instantSyncCheck": True,
        "provideAlternative": False,
        "checkProductStockItem": [
            {
                "id": str(i + 1),
                "checkedProductStock": {"stockedProduct": {"id": part["id"], "@referredType": "Product"}},
                "requestedQuantity": {"amount": part["quantity"], "units": "unit"},
            }
            for i, part in enumerate(_parts(req.payload))
        ],
    }


def _reserve_product_stock(req: FulfillmentRequest) -> dict[str, Any]:
    return {
        "@type": "ReserveProductStock",
        "reserveProductStockItem": [
            {
                "id": str(i + 1),
                "productStock": {"stockedProduct": {"id": part["id"], "@referredType": "Product"}},
                "quantity": {"amount": part["quantity"], "units": "unit"},
            }
            for i, part in enumerate(_parts(req.payload))
        ],
    }


_CALLS = {
    ("tmf646", "schedule"): ("/appointment", _appointment),
    ("tmf646", "search_slots"): ("/searchTimeSlot", _search_time_slot),
    ("tmf687", "check_stock"): ("/checkProductStock", _check_product_stock),
    ("tmf687", "reserve"): ("/reserveProductStock", _reserve_product_stock),
}


def build_call(protocol: str, req: FulfillmentRequest) -> TmfCall:
    """The TM Forum call for ``req.action``; ``ValueError`` for an action the API has not."""
    try:
        path, build = _CALLS[(protocol, req.action)]
    except KeyError:
        actions = sorted(a for p, a in _CALLS if p == protocol)
        raise ValueError(f"{protocol} has no action {req.action!r}; it has {', '.join(actions)}") from None
    return TmfCall(path, build(req))


# ---- answers ------------------------------------------------------------------------------


def _appointment_data(appt: Mapping[str, Any]) -> dict[str, Any]:
    period = appt.get("validFor") or {}
    return {
        "partner_ref": appt.get("id"),
        "appointment_id": appt.get("id"),
        "appointment_status": appt.get("status"),
        "window_start": period.get("startDateTime"),
        "window_end": period.get("endDateTime"),
    }


def _stock_data(task: Mapping[str, Any]) -> dict[str, Any]:
    parts = []
    for item in task.get("checkProductStockItem") or task.get("reserveProductStockItem") or []:
        stock = item.get("checkedProductStock") or item.get("productStock") or {}
        quantity = item.get("requestedQuantity") or item.get("quantity") or {}
        level = stock.get("productStockLevel") or {}
        parts.append(
            {
                "id": (stock.get("stockedProduct") or {}).get("id"),
                "quantity": quantity.get("amount"),
                "availability": item.get("availabilityResult") or item.get("state"),
                **({"in_stock": level.get("amount")} if "amount" in level else {}),
            }
        )
    return {"partner_ref": task.get("id"), "state": task.get("state"), "parts": parts}


def parse_result(protocol: str, req: FulfillmentRequest, status_code: int, body: Any) -> FulfillmentResult:
    """The partner's 2xx answer to ``build_call(protocol, req)`` as a result."""
    body = body if isinstance(body, Mapping) else {}
    if protocol == "tmf646" and req.action == "search_slots":
        slots = [
            {"id": s.get("id"), **{k: (s.get("validFor") or {}).get(v) for k, v in _WINDOW.items()}}
            for s in body.get("availableTimeSlot") or []
        ]
        return FulfillmentResult(req.id, req.partner, "confirmed", {"partner_ref": body.get("id"), "slots": slots})
    if protocol == "tmf646":
        status = APPOINTMENT_STATUS.get(str(body.get("status")), "pending")
        return FulfillmentResult(req.id, req.partner, status, _appointment_data(body))  # type: ignore[arg-type]
    status = STOCK_STATE.get(str(body.get("state")), "pending")
    return FulfillmentResult(req.id, req.partner, status, _stock_data(body))  # type: ignore[arg-type]


_WINDOW = {"window_start": "startDateTime", "window_end": "endDateTime"}


def appointment_callback(body: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]] | None:
    """A TMF646 ``Appointment*Event`` notification as ``(partner_ref, status, data)``."""
    event = body.get("event")
    appt = event.get("appointment") if isinstance(event, Mapping) else None
    if not str(body.get("eventType", "")).startswith("Appointment") or not isinstance(appt, Mapping):
        return None
    if not appt.get("id"):
        return None
    status = APPOINTMENT_STATUS.get(str(appt.get("status")))
    if status is None:
        return None
    # externalId is the hub's idempotency key, known before the partner's own id is
    ref = appt.get("externalId") or appt["id"]
    return str(ref), status, {k: v for k, v in _appointment_data(appt).items() if v is not None}


def stock_callback(body: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]] | None:
    """A TMF687 ``CheckProductStockStateChangeEvent`` (or reserve) as ``(partner_ref, status, data)``."""
    event = body.get("event")
    if not isinstance(event, Mapping):
        return None
    task = event.get("checkProductStock") or event.get("reserveProductStock")
    if not isinstance(task, Mapping) or not task.get("id"):
        return None
    status = STOCK_STATE.get(str(task.get("state")))
    if status is None:
        return None
    return str(task["id"]), status, _stock_data(task)


def parse_callback(protocol: str, body: Any) -> tuple[str, str, dict[str, Any]] | None:
    """A TM Forum notification as ``(partner_ref, status, data)``, ``None`` if it is not one."""
    if not isinstance(body, Mapping):
        return None
    return appointment_callback(body) if protocol == "tmf646" else stock_callback(body)
