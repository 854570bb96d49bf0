"""The service-request playbook: what a ``service.request`` asks of partners.

A ``service.request`` (``data: {"product_id", "issue", "parts": [...]}``) at any touch point
plans, to run concurrently: a stock check of the parts with every ``inventory`` partner, and
a technician visit with a ``field_service`` firm chosen by region, skill, tier and price, with
the next firms to fall over to (:mod:`prm_partner.failover`), inside the customer's entitlement
(by tier: platinum one business day, gold two, others five; ``[entitlements]`` may change
them). Each partner gets what its role needs and no more: a stock check carries no
personal data; a technician gets the name, phone and address for the visit, and only if the
customer's consents allow ``partner_sharing`` with that partner.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import structlog

from prm_core.plugin import (
    Config,
    CustomerView,
    FulfillmentRequest,
    ValueRequest,
    add_business_days,
    allows,
    new_id,
    parse_entitlements,
    service_days,
    utcnow,
)

from .failover import FAILOVER, choose_firms
from .settings import PartnerSettings

__all__ = ["add_business_days", "entitlement_days", "plan_service_request", "visit_details"]

SERVICE_REQUEST = "service.request"

log = structlog.get_logger(__name__)


def entitlement_days(config: Config, tier: str | None) -> int:
    """Business days within which a technician must come, for a customer of ``tier``: the
    service level planning defines (:mod:`prm_core.planning.entitlements`, ``[entitlements]``)."""
    return service_days(tier, parse_entitlements(config.section("entitlements")))


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def _address(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        keys = ("street", "line1", "line2", "postal_code", "city", "state", "country")
        parts = [str(value[k]) for k in keys if value.get(k)]
        return ", ".join(parts) or None
    return None


def visit_details(view: CustomerView, partner: str) -> dict[str, str]:
    """Name, phone and address for a technician's visit, if ``partner_sharing`` with
    ``partner`` is allowed; otherwise nothing (the partner then calls through the hub)."""
    if not allows(view.consents, "partner_sharing", partner):
        return {}
    traits = view.customer.traits
    name = traits.get("name") or " ".join(str(traits[k]) for k in ("first_name", "last_name") if traits.get(k))
    phone = next((i.value for i in view.identities if i.namespace == "phone"), None) or traits.get("phone")
    details = {"name": name, "phone": phone, "address": _address(traits.get("address"))}
    return {k: str(v) for k, v in details.items() if v}


def _parts(raw: Any) -> list[Any]:
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        return []
    return [p for p in raw if isinstance(p, str) or (isinstance(p, Mapping) and p.get("id"))][:50]


def plan_service_request(
    request: ValueRequest, partners: Iterable[PartnerSettings], config: Config
) -> list[FulfillmentRequest]:
    """The fulfillment requests of one ``service.request`` turn (none for other events)."""
    recorded = request.event
    event = recorded.event
    if event.type != SERVICE_REQUEST:
        return []
    data = event.data
    product = str(data.get("product_id") or "")
    parts = _parts(data.get("parts"))
    planned = []
    by_role: dict[str, list[PartnerSettings]] = {}
    for p in partners:
        by_role.setdefault(p.role, []).append(p)

    def ask(partner: PartnerSettings, action: str, payload: Mapping[str, Any]) -> FulfillmentRequest:
        return FulfillmentRequest(
            id=new_id("ful"),
            partner=partner.name,
            action=action,
            customer_id=recorded.customer_id,
            dialogue_id=recorded.dialogue_id,
            payload=payload,
        )

    if parts:
        for supplier in by_role.get("inventory", []):
            planned.append(ask(supplier, "check_stock", {"product_id": product, "parts": parts}))
    traits = request.view.customer.traits
    region = data.get("region") or traits.get("region")
    field = choose_firms(
        by_role.get("field_service", []),
        region=str(region) if region else None,
        skill=str(data["skill"]) if data.get("skill") else None,
        tier=request.view.customer.tier,
    )
    if by_role.get("field_service") and not field:
        log.warning("no field-service firm takes this visit", region=region, skill=data.get("skill"))
    if field:
        technician = field[0]
        now = utcnow()
        days = entitlement_days(config, request.view.customer.tier)
        payload: dict[str, Any] = {
            "product_id": product,
            "issue": str(data.get("issue") or "")[:500],
            "window_start": _iso(now),
            "window_end": _iso(add_business_days(now, days)),
            "entitlement_days": days,
        }
        visit = visit_details(request.view, technician.name)
        if visit:
            payload["visit"] = visit
        if len(by_role["field_service"]) > 1:  # several firms: the result names the one that took it
            # the next firms, each with what its own consent allows, within this turn's budget
            others = [{"name": f.name, "visit": visit_details(request.view, f.name)} for f in field[1:]]
            deadline = now + timedelta(milliseconds=request.remaining_ms())
            payload[FAILOVER] = {"firms": others, "deadline": _iso(deadline)}
        planned.append(ask(technician, "schedule", payload))
    return planned
