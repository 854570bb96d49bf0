"""Value delivery: answering a request within the touch point's budget.

Value providers, offer hooks and partner fulfillment all start at once as separate
tasks. At the deadline (less a small reserve for rendering and recording the answer)
whatever has not finished is cancelled and named in ``degraded``; so is whatever failed.
The answer is then as good as the time allowed, and never much later than the budget.
"""

from __future__ import annotations

import asyncio
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
from .privacy.consents import impersonal_view, personalization_allowed

if TYPE_CHECKING:
    from .hub import Hub

__all__ = ["Answer", "deliver_value"]

log = structlog.get_logger(__name__)
MAX_OFFERS = 5


@frozen
class Answer:
    """A delivered answer, with the time it took against the budget."""

    recorded: RecordedEvent
    delivery: Delivery
    rendered: Mapping[str, Any]
    elapsed_ms: float
    budget_ms: int

    def to_json(self) -> dict[str, Any]:
        return {
            "customer_id": self.recorded.customer_id,
            "dialogue_id": self.recorded.dialogue_id,
            "delivery": dict(self.rendered),
            "elapsed_ms": round(self.elapsed_ms, 1),
            "budget_ms": self.budget_ms,
            "degraded": list(self.delivery.degraded),
        }


def _reserve_s(touchpoint: TouchPoint) -> float:
    """Time kept back from the budget to render and record the answer."""
    return min(0.02, touchpoint.budget_ms / 1000 * 0.1)


async def deliver_value(hub: Hub, recorded: RecordedEvent, touchpoint: TouchPoint, started: float) -> Answer:
    """Answer ``recorded`` (already durable) before ``started + budget``."""
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
        try:
            providing = provider.provide(advised)
        except Exception as exc:  # a provider that fails before it even starts is late forever
            log.warning("value provider failed", part=f"value:{provider.name}", error=type(exc).__name__)
            degraded.append(f"value:{provider.name}")
            continue
        start(f"value:{provider.name}", providing)
    for plugin, proposing in hub.hooks.propose_offers(advised):
        start(f"offers:{plugin}", proposing)
    # a replayed request was answered before: its partner work was asked for then
    planned = [] if recorded.duplicate else hub.hooks.plan_fulfillment(request)
    for fulfillment in planned:
        fulfilling_by = hub.hooks.fulfill(fulfillment)
        if not fulfilling_by:
            log.warning("no plugin fulfills this partner", partner=fulfillment.partner, action=fulfillment.action)
            degraded.append(f"partner:{fulfillment.partner}")
        for _plugin, fulfilling in fulfilling_by:
            start(f"partner:{fulfillment.partner}", fulfilling)
    if tasks:
        timeout = max(0.0, deadline - _reserve_s(touchpoint) - time.monotonic())
        _done, late = await asyncio.wait(tasks.values(), timeout=timeout)
        for task in late:
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
            offers.extend(o for o in (result or ()) if isinstance(o, Offer))
        elif isinstance(result, FulfillmentResult):
            fulfillments.append(result)
    offers.sort(key=lambda o: -o.score)

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
        offers=tuple(offers[:MAX_OFFERS]),
        fulfillments=tuple(fulfillments),
        degraded=tuple(sorted(degraded)),
    )
    rendered = hub.hooks.render_delivery(delivery, touchpoint)
    return Answer(recorded, delivery, rendered, (time.monotonic() - started) * 1000, touchpoint.budget_ms)
