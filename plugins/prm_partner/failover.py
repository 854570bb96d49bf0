"""Choosing among field-service firms, and falling over to the next when one cannot take the job.

**The rule.** The firms that may take a visit are the ``field_service`` partners whose
``regions`` include the customer's region (the request's ``data.region``, else the customer's
``region`` trait), whose ``skills`` include the request's ``data.skill``, and whose ``tiers``
include the customer's tier; a firm that leaves one of these lists empty takes any. They are
tried cheapest ``price`` first (a firm without a price after those with one), then in the order
of the config. No firm qualifying, no visit is planned (and that is logged).

**Falling over.** The visit is planned with the first firm (the outbox row is that firm's);
the others, each with the visit details its own consent allows, ride in the request's
``_failover`` (never sent to a partner). When the chosen firm is down (its circuit open, a
refused connection, a ``5xx``/``429``), times out, rejects (a ``4xx``) or fails (no slot), the
next one is asked at once, under the same idempotency key. While the touch point's budget lasts
(``_failover.deadline``, wall clock), a firm's call waits at most what is left of it, so the
chain fits the budget; after it (the outbox's retries) each firm gets its ``timeout_ms``. The
result's ``data.firm`` names the firm that took the job (``data.tried`` the ones before it),
so the answer and the view show it. Only when no firm took it and one of them might later is
the whole chain retried by the outbox; when every firm said no, the request is ``rejected``.

A firm that took the job sends its notifications as itself; the listener finds its request
under the firm first planned (only a request whose ``data.firm`` it is). A firm passed over
that still calls back (it answered after its timeout) is told its notification is ignored:
the request is another firm's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog
from attrs import evolve

from prm_core.plugin import FulfillmentRequest, FulfillmentResult, RetryLater, utcnow

from .settings import PartnerSettings

if TYPE_CHECKING:
    from .client import PartnerClient

__all__ = ["FAILOVER", "choose_firms", "fulfill_with_failover", "partner_payload"]

log = structlog.get_logger(__name__)

FAILOVER = "_failover"
_UNPRICED = float("inf")


def choose_firms(
    firms: Iterable[PartnerSettings], *, region: str | None, skill: str | None, tier: str | None
) -> list[PartnerSettings]:
    """The firms that may take a visit, in the order they are asked (see the module's rule)."""

    def takes(values: tuple[str, ...], wanted: str | None) -> bool:
        return not values or (wanted is not None and wanted in values)

    found = [f for f in firms if takes(f.regions, region) and takes(f.skills, skill) and takes(f.tiers, tier)]
    # sorted() is stable: equal prices keep the config's order
    return sorted(found, key=lambda f: _UNPRICED if f.price is None else f.price)


def partner_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """What a partner is sent of a request's payload: never the hub's own ``_failover``."""
    return {k: v for k, v in payload.items() if k != FAILOVER}


def _remaining_s(deadline: Any) -> float | None:
    if not isinstance(deadline, str):
        return None
    try:
        when = datetime.fromisoformat(deadline.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when - utcnow()).total_seconds()


async def fulfill_with_failover(req: FulfillmentRequest, clients: Mapping[str, PartnerClient]) -> FulfillmentResult:
    """Ask the request's firm, then each firm in ``_failover`` until one takes the job."""
    plan = req.payload.get(FAILOVER) or {}
    base = partner_payload(req.payload)
    chain: list[tuple[str, dict[str, Any]]] = [(req.partner, base)]
    for alt in plan.get("firms") or []:
        payload = {k: v for k, v in base.items() if k != "visit"}
        if alt.get("visit"):  # what this firm's own consent allows
            payload["visit"] = alt["visit"]
        chain.append((str(alt.get("name")), payload))
    tried: list[str] = []
    retry: RetryLater | None = None
    last: FulfillmentResult | None = None
    for firm, payload in chain:
        client = clients.get(firm)
        if client is None:
            continue
        left = _remaining_s(plan.get("deadline"))
        timeout = min(client.settings.timeout_s, left) if left is not None and left > 0 else None
        attempt = evolve(req, partner=firm, payload=payload)
        try:
            result = await client.fulfill(attempt, timeout_s=timeout)
        except RetryLater as exc:
            log.info("field-service firm passed over", firm=firm, reason=exc.reason[:200])
            retry = retry or exc
            tried.append(firm)
            continue
        if result.status in ("confirmed", "pending"):
            data = {**result.data, "firm": firm, **({"tried": tried} if tried else {})}
            return FulfillmentResult(req.id, req.partner, result.status, data)
        log.info("field-service firm passed over", firm=firm, reason=result.status)
        tried.append(firm)
        last = result
    if retry is not None:  # a firm that was away may take it later: the outbox asks the chain again
        raise RetryLater(f"no field-service firm took the job ({', '.join(tried)})", retry.retry_after_s)
    if last is None:
        return FulfillmentResult(req.id, req.partner, "rejected", {"error": "no field-service firm is configured"})
    return FulfillmentResult(req.id, req.partner, last.status, {**last.data, "firm": tried[-1], "tried": tried})
