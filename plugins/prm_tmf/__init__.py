"""TM Forum Open API adapters for partner services, following the v4.0.0 specifications.

- **TMF646 Appointment Management v4.0.0** (:mod:`prm_tmf.appointment`, base path
  ``/tmf-api/appointment/v4``): ``POST {url}/appointment`` books a technician inside the
  requested period (``validFor``); ``POST {url}/searchTimeSlot`` lists free slots;
  ``Appointment*Event`` and ``SearchTimeSlot*Event`` notifications follow the booking.
- **TMF687 Stock Management v4.0.0** (:mod:`prm_tmf.stock`, base path ``/tmf-api/stock/v4``):
  ``POST {url}/checkProductStock`` and ``POST {url}/reserveProductStock``, task resources
  answered at once (``200``, ``done``) or later (``201``, ``accepted``/``inProgress``, then a
  ``*StateChangeEvent``).

Each action maps a hub :class:`~prm_core.model.FulfillmentRequest` to the TM Forum resource
(the specification's field names and required fields, ``@type`` set) and the partner's answer
back to a :class:`~prm_core.model.FulfillmentResult` whose ``data`` is small and protocol-free
(``window_start``/``window_end`` for a visit, ``parts`` with their availability). An answer or
notification that breaks its definition (a state outside the enum, no id to name the request)
raises :class:`InvalidMessage` naming the field. ``prm_partner`` uses these for partners whose
``protocol`` is ``tmf646`` or ``tmf687``, which is why this package ships beside it among the
first-party plugins; :mod:`prm_tmf.simulators` serves both APIs for tests and ``prm demo``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

from attrs import frozen

from prm_core.plugin import FulfillmentRequest, FulfillmentResult

from .appointment import APPOINTMENT_STATUS, SEARCH_STATUS, appointment_notification, read_appointment, read_search
from .appointment import appointment as _appointment
from .appointment import search_time_slot as _search_time_slot
from .messages import InvalidMessage, Notification
from .stock import STOCK_STATE, read_check, read_reservation, stock_notification
from .stock import check_product_stock as _check_product_stock
from .stock import reserve_product_stock as _reserve_product_stock

__all__ = [
    "APPOINTMENT_STATUS",
    "BASE_PATHS",
    "LISTENER_EVENTS",
    "SEARCH_STATUS",
    "STOCK_STATE",
    "InvalidMessage",
    "Notification",
    "TmfCall",
    "build_call",
    "parse_callback",
    "parse_result",
]

# the specifications' base paths (a partner's url ends with one of them)
BASE_PATHS = {"tmf646": "/tmf-api/appointment/v4", "tmf687": "/tmf-api/stock/v4"}
# the notifications the hub's listener takes, by protocol: {url}/listener/{name}
LISTENER_EVENTS = {
    "tmf646": tuple(
        f"{resource}{kind}"
        for resource in ("appointment", "searchTimeSlot")
        for kind in ("CreateEvent", "AttributeValueChangeEvent", "StateChangeEvent", "DeleteEvent")
    ),
    "tmf687": tuple(
        f"{resource}{kind}"
        for resource in ("checkProductStock", "reserveProductStock")
        for kind in ("CreateEvent", "AttributeValueChangeEvent", "StateChangeEvent", "BatchEvent")
    ),
}


@frozen
class TmfCall:
    """One HTTP call to a TM Forum API: ``POST {partner url}{path}`` with ``body``."""

    path: str
    body: Mapping[str, Any]


_CALLS: dict[tuple[str, str], tuple[str, Callable[[FulfillmentRequest], dict[str, Any]]]] = {
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


def parse_result(protocol: str, req: FulfillmentRequest, status_code: int, body: Any) -> FulfillmentResult:
    """The partner's 2xx answer to ``build_call(protocol, req)`` as a result.

    A resource without its (optional) status is finished when it was answered ``200`` or lists
    its slots, and pending (a notification will follow) otherwise. :class:`InvalidMessage`
    when the answer breaks its definition.
    """
    if not isinstance(body, Mapping):
        raise InvalidMessage("body", f"the answer to {req.action} must be a JSON object")
    if protocol == "tmf646" and req.action == "search_slots":
        _ref, status, data = read_search(body, "body")
    elif protocol == "tmf646":
        _ref, status, data = read_appointment(body, "body")
    elif req.action == "reserve":
        _ref, status, data = read_reservation(body, "body")
    else:
        _ref, status, data = read_check(body, "body")
    if status is None:
        status = "confirmed" if status_code == 200 else "pending"
    if status == "completed":  # a result has no "completed": work done is work confirmed
        status = "confirmed"
    return FulfillmentResult(req.id, req.partner, cast(Any, status), data)


def parse_callback(protocol: str, body: Any, listener: str | None = None) -> Notification:
    """A TM Forum notification (posted to the listener path ``listener``, if any) as the hub
    applies it; :class:`InvalidMessage` when it breaks the specification."""
    if not isinstance(body, Mapping):
        raise InvalidMessage("body", "a notification must be a JSON object")
    if protocol == "tmf646":
        return appointment_notification(body, listener)
    return stock_notification(body, listener)
