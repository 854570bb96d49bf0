"""Value delivery: answering a request within the touch point's budget.

Value providers, offer hooks and partner fulfillment all start at once as separate
tasks. At the deadline (less a small reserve for rendering and recording the answer)
whatever has not finished is cancelled and named in ``degraded``; so is whatever failed.
Partner calls are the exception: planned work is durable in the outbox before any
partner is asked, and a late call is named in ``degraded`` but goes on in the background.
The answer is then as good as the time allowed, and never much later than the budget.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any

import structlog
from attrs import evolve, frozen

from .model import (
    Delivery,
    FulfillmentResult,
    Offer,
    RecordedEvent,
    TouchPoint,
    ValueRequest,
)
from .outbox import Claim, PlannedEvent, PlannedFulfillment
from .planning.knowledge import used_at
from .privacy.consents import impersonal_view, personalization_allowed
from .store.tables import utcnow

if TYPE_CHECKING:
    from .hub import Hub

__all__ = ["Answer", "deliver_value"]

log = structlog.get_logger(__name__)


@frozen
class Answer:
    """A delivered answer, with the time it took against the budget."""

    recorded: RecordedEvent
    delivery: Delivery
    rendered: Mapping[str, Any]
    elapsed_ms: float
    budget_ms: int
    # campaign offers this customer's control group did not get: recorded, never shown
    held_out: tuple[Offer, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "customer_id": self.recorded.customer_id,
            "dialogue_id": self.recorded.dialogue_id,
            "delivery": dict(self.rendered),
            "elapsed_ms": round(self.elapsed_ms, 1),
            "budget_ms": self.budget_ms,
            "degraded": list(self.delivery.degraded),
        }


def partner_calls(tasks: Mapping[str, asyncio.Future[Any]]) -> set[asyncio.Future[Any]]:
    return {t for name, t in tasks.items() if name.startswith("partner:")}


async def _plan_fulfillments(
    hub: Hub, request: ValueRequest, answered: asyncio.Event | None = None
) -> list[tuple[str, Awaitable[Any]]]:
    """Plan this turn's partner work, make it durable, and start asking the partners.

    The plan is recorded as a ``fulfillment.planned`` event in the turn's dialogue, and the
    outbox rows in that same transaction (see :mod:`prm_core.outbox`). Its id is derived
    from the request's, so a replayed request records nothing new and asks no partner
    again, while a request whose plan was lost in a crash (recorded, but the hub died before
    planning) gets it now.
    """
    recorded = request.event
    planned = hub.hooks.plan_fulfillment(request)
    if not planned:
        return []
    turn = recorded.event
    items = tuple(
        PlannedFulfillment(f, role=getattr(hub.registrations.partners.get(f.partner), "role", "")) for f in planned
    )
    plan = PlannedEvent(
        id="plan:" + hashlib.sha256(f"{turn.touchpoint}\x1f{turn.id}".encode()).hexdigest()[:40],
        type="fulfillment.planned",
        occurred_at=utcnow(),
        touchpoint=turn.touchpoint,
        dialogue_id=recorded.dialogue_id,
        direction="outbound",
        data={
            "in_reply_to": turn.id,
            "fulfillments": [
                {"request_id": p.request.id, "partner": p.request.partner, "action": p.request.action} for p in items
            ],
        },
        planned=items,
        claimed_until=hub.outbox.lease_until(),
    )
    (stored,) = await hub.record([plan])
    if stored.duplicate:  # asked before: answer with what the partners said so far
        return [(f"partner:{r.partner}", _known(r)) for r in await hub.outbox.results_of(plan.id)]
    return [
        (
            f"partner:{p.request.partner}",
            hub.outbox.dispatch(
                Claim(p.outbox_id, 1, p.request, turn.touchpoint, recorded.dialogue_id, p.role), answered
            ),
        )
        for p in items
    ]


async def _known(result: FulfillmentResult) -> FulfillmentResult:
    return result


def _reserve_s(touchpoint: TouchPoint) -> float:
    """Time kept back from the budget to render and record the answer."""
    return min(0.02, touchpoint.budget_ms / 1000 * 0.1)


async def deliver_value(
    hub: Hub, recorded: RecordedEvent, touchpoint: TouchPoint, started: float, answered: asyncio.Event | None = None
) -> Answer:
    """Answer ``recorded`` (already durable) before ``started + budget``.

    ``answered``, set by the caller as it queues the answer, holds back the recording of
    partner outcomes until then (see :meth:`prm_core.outbox.Outbox.dispatch`).
    """
    deadline = started + touchpoint.budget_ms / 1000
    # the view's enrichments get half the budget: the rest is for value, offers and partners
    view, degraded = await hub.view_until(recorded.customer_id, started + touchpoint.budget_ms / 2000, limit=10)
    request = ValueRequest(event=recorded, touchpoint=touchpoint, view=view, deadline=deadline)
    # consent (privacy): without personalization consent, value providers and offers see an
    # impersonal view, so nothing in the answer is about this customer; partner work the
    # customer asked for still gets the full request
    personalized = personalization_allowed(view, touchpoint)
    advised = request if personalized else evolve(request, view=impersonal_view(view))

    tasks: dict[str, asyncio.Task[Any]] = {}

    def start(name: str, work: Awaitable[Any]) -> None:
        # the same plugin may answer twice (two fulfillments); keep both, named apart
        key, n = name, 2
        while key in tasks:
            key, n = f"{name}#{n}", n + 1
        tasks[key] = asyncio.ensure_future(work)

    for provider in hub.registrations.value_providers:
        if not personalized and provider.about == "customer":
            continue  # knowledge about the customer is personalization itself
        serves = used_at(provider, hub.config)
        if serves is not None and touchpoint.name not in serves:
            continue  # a provider for other touch points' scenarios (the IVR's appointment window)
        try:
            providing = provider.provide(advised)
        except Exception as exc:  # a provider that fails before it even starts is late forever
            log.warning("value provider failed", part=f"value:{provider.name}", error=type(exc).__name__)
            degraded.append(f"value:{provider.name}")
            continue
        start(f"value:{provider.name}", providing)
    for plugin, proposing in hub.hooks.propose_offers(advised):
        start(f"offers:{plugin}", proposing)
    for name, answering in await _plan_fulfillments(hub, request, answered):
        start(name, answering)
    if tasks:
        timeout = max(0.0, deadline - _reserve_s(touchpoint) - time.monotonic())
        _done, late = await asyncio.wait(tasks.values(), timeout=timeout)
        calls = partner_calls(tasks)
        for task in late:
            # a late partner call goes on in the background (see prm_core.outbox): its outcome
            # reaches the dialogue, the view and the touch point when it comes
            if task not in calls:
                task.cancel()
    knowledge: dict[str, Any] = {}
    offers: list[Offer] = []
    fulfillments: list[FulfillmentResult] = []
    for name, task in tasks.items():
        if task.cancelled() or not task.done():
            degraded.append(name)
            continue
        if task.exception() is not None:
            log.warning("value delivery part failed", part=name, error=type(task.exception()).__name__)
            degraded.append(name)
            continue
        kind, _, label = name.partition(":")
        result = task.result()
        if kind == "value":
            if not isinstance(result, Mapping):
                log.warning("value provider returned no mapping", part=name, got=type(result).__name__)
                degraded.append(name)
                continue
            knowledge[label] = dict(result)
        elif kind == "offers":
            made = [o for o in (result or ()) if isinstance(o, Offer)]
            if not personalized:
                # made from the impersonal view: nothing personal went into them, so they need
                # no personalization consent (a purpose they name, marketing, still applies)
                made = [evolve(o, data={**o.data, "impersonal": True}) for o in made]
            offers.extend(made)
        elif isinstance(result, FulfillmentResult):
            fulfillments.append(result)
    # offers (planning): the built-in rules and campaigns join the plugins' offers; then consent,
    # one per code, ranked by score, capped per touch point, each with a stable id to answer to
    try:
        offers.extend(hub.planner.propose(request))
    except Exception as exc:  # a broken rule costs the built-in offers, never the answer
        log.warning("built-in offers failed", error=type(exc).__name__)
        degraded.append("offers:planning")
    offers, held_out = hub.planner.offers.select(offers, request)

    shown = advised.view.customer
    summary = {
        "id": shown.id,
        "kind": shown.kind,
        "tier": shown.tier,
        "name": shown.traits.get("first_name") or shown.traits.get("name"),
    }
    delivery = Delivery(
        customer_id=recorded.customer_id,
        dialogue_id=recorded.dialogue_id,
        touchpoint=touchpoint.name,
        customer=summary,
        knowledge=knowledge,
        offers=tuple(offers),
        fulfillments=tuple(fulfillments),
        degraded=tuple(sorted(degraded)),
    )
    rendered = hub.hooks.render_delivery(delivery, touchpoint)
    elapsed = (time.monotonic() - started) * 1000
    return Answer(recorded, delivery, rendered, elapsed, touchpoint.budget_ms, tuple(held_out))
