"""TMF646 Appointment Management v4.0.0: the hub's requests, and the answers and events it reads.

Base path ``/tmf-api/appointment/v4``. ``POST /appointment`` (an ``Appointment_Create``, answered
``201`` with the ``Appointment``) books a technician inside ``validFor``; ``POST
/searchTimeSlot`` (a ``SearchTimeSlot_Create``, answered ``201``) lists free slots. Events:
``Appointment{Create,AttributeValueChange,StateChange,Delete}Event`` and the same four for
``SearchTimeSlot``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from prm_core.plugin import FulfillmentRequest

from .messages import InvalidMessage, Notification, event_name, mapping, text

__all__ = [
    "APPOINTMENT_STATUS",
    "SEARCH_STATUS",
    "appointment",
    "appointment_notification",
    "party_id",
    "read_appointment",
    "read_search",
    "search_time_slot",
]

# AppointmentStateType -> the hub's fulfillment status
APPOINTMENT_STATUS = {
    "initialized": "pending",
    "confirmed": "confirmed",
    "completed": "completed",
    "cancelled": "rejected",
    "failed": "failed",
}
# SearchTimeSlotStateType -> the hub's fulfillment status
SEARCH_STATUS = {
    "inProgress": "pending",
    "done": "confirmed",
    "rejected": "rejected",
    "terminatedWithError": "failed",
}
_RESOURCES = {"appointment": "Appointment", "searchTimeSlot": "SearchTimeSlot"}


def party_id(req: FulfillmentRequest) -> str:
    """The customer's id for this partner (``RelatedParty.id`` is required): a pseudonym, the
    same for every visit of this customer with this partner, that no other partner shares and
    that does not reveal the hub's own customer id."""
    return "cus-" + hashlib.sha256(f"{req.partner}\x00{req.customer_id}".encode()).hexdigest()[:24]


def _period(p: Mapping[str, Any]) -> dict[str, Any]:
    return {"startDateTime": p.get("window_start"), "endDateTime": p.get("window_end")}


def appointment(req: FulfillmentRequest) -> dict[str, Any]:
    """An ``Appointment_Create`` for a technician visit."""
    p = req.payload
    body: dict[str, Any] = {
        "@type": "Appointment",
        "externalId": req.idempotency_key,
        "category": "repair",
        "description": p.get("issue") or "",
        "validFor": _period(p),
    }
    if p.get("product_id"):
        body["relatedEntity"] = [{"id": str(p["product_id"]), "role": "product", "@referredType": "Product"}]
    visit = p.get("visit") or {}
    if visit.get("name"):
        party = {"id": party_id(req), "name": visit["name"], "role": "customer", "@referredType": "Individual"}
        body["relatedParty"] = [party]
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


def search_time_slot(req: FulfillmentRequest) -> dict[str, Any]:
    """A ``SearchTimeSlot_Create`` for the requested window."""
    return {"@type": "SearchTimeSlot", "requestedTimeSlot": [{"validFor": _period(req.payload)}]}


# ---- reading ------------------------------------------------------------------------------


def read_appointment(appt: Mapping[str, Any], where: str) -> tuple[str | None, str | None, dict[str, Any]]:
    """``(reference, status, data)`` of an ``Appointment``; ``status`` ``None`` when absent.

    The reference is ``externalId`` (the hub's idempotency key, known before the partner's own
    id) or ``id``. A ``status`` outside ``AppointmentStateType`` is invalid.
    """
    appt_id = text(appt.get("id"), f"{where}.id")
    ref = text(appt.get("externalId"), f"{where}.externalId") or appt_id
    raw = appt.get("status")
    status = None
    if raw is not None:
        status = APPOINTMENT_STATUS.get(raw) if isinstance(raw, str) else None
        if status is None:
            allowed = ", ".join(APPOINTMENT_STATUS)
            raise InvalidMessage(f"{where}.status", f"{where}.status must be one of {allowed}", ref)
    period = mapping(appt.get("validFor"), f"{where}.validFor", ref)
    data = {
        "partner_ref": appt_id,
        "appointment_id": appt_id,
        "appointment_status": raw,
        "window_start": period.get("startDateTime"),
        "window_end": period.get("endDateTime"),
    }
    return ref, status, {k: v for k, v in data.items() if v is not None}


def read_search(search: Mapping[str, Any], where: str) -> tuple[str | None, str | None, dict[str, Any]]:
    """``(reference, status, data)`` of a ``SearchTimeSlot``: the free slots as windows.

    ``status`` (``SearchTimeSlotStateType``) is optional: a search that lists slots without
    one is done.
    """
    ref = text(search.get("id"), f"{where}.id")
    raw = search.get("status")
    if raw is None:
        status = "confirmed" if "availableTimeSlot" in search else None
    else:
        status = SEARCH_STATUS.get(raw) if isinstance(raw, str) else None
        if status is None:
            raise InvalidMessage(f"{where}.status", f"{where}.status must be one of {', '.join(SEARCH_STATUS)}", ref)
    slots = []
    found = search.get("availableTimeSlot") or []
    if not isinstance(found, list):
        raise InvalidMessage(f"{where}.availableTimeSlot", f"{where}.availableTimeSlot must be a list", ref)
    for n, slot in enumerate(found):
        slot = mapping(slot, f"{where}.availableTimeSlot[{n}]", ref)
        if "validFor" not in slot:  # TimeSlot.validFor is required
            raise InvalidMessage(f"{where}.availableTimeSlot[{n}].validFor", "a TimeSlot's validFor is required", ref)
        period = mapping(slot["validFor"], f"{where}.availableTimeSlot[{n}].validFor", ref)
        slots.append(
            {"id": slot.get("id"), "window_start": period.get("startDateTime"), "window_end": period.get("endDateTime")}
        )
    data: dict[str, Any] = {"partner_ref": ref, "search_status": raw, "slots": slots}
    return ref, status, {k: v for k, v in data.items() if v is not None}


def appointment_notification(body: Mapping[str, Any], listener: str | None = None) -> Notification:
    """A TMF646 notification as the hub applies it (``InvalidMessage`` when it breaks the spec).

    Create, state change, attribute change and batch events carry the resource's new status
    (``status`` is optional in the spec: an event without one keeps the request's status); a delete event withdraws the
    appointment (``rejected``, ``appointment_status: "deleted"``), so it is never shown as
    booked; a search's delete event changes nothing. Other event types are ``ignored``.
    """
    name, key = event_name(body, listener, _RESOURCES)
    if not key:
        return Notification(name, None, None, {}, ignored=True)
    where = f"event.{key}"
    resource = mapping(mapping(body.get("event"), "event").get(key), where)
    if not resource:
        raise InvalidMessage(where, f"{name} must carry event.{key}")
    read = read_appointment if key == "appointment" else read_search
    ref, status, data = read(resource, where)
    if ref is None:
        raise InvalidMessage(f"{where}.id", f"{where}.id is required to name the request")
    if name.endswith("DeleteEvent"):
        if key != "appointment":
            return Notification(name, ref, None, {}, ignored=True)
        return Notification(name, ref, "rejected", {**data, "appointment_status": "deleted"})
    return Notification(name, ref, status, data)
