"""The typed facade through which the core calls plugins.

Notification hooks (``prm_event_recorded`` and friends) run after the data is durable;
a failing implementation is logged with its plugin's name and never undoes or blocks the
write. Awaitable hooks are called one implementation at a time so that each becomes its
own task, which the core can cancel at the deadline and name in ``degraded``.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import Any

import pluggy
import structlog
from attrs import define, evolve

from .config import Config
from .feed.changes import NewChange, check_plugin_type
from .model import (
    Customer,
    CustomerView,
    Delivery,
    Dialogue,
    Event,
    FulfillmentRequest,
    FulfillmentResult,
    Merge,
    Offer,
    RecordedEvent,
    TouchPoint,
    ValueRequest,
)
from .outbox import Fulfillment
from .recording import BatchOutcome

__all__ = ["Hooks"]

log = structlog.get_logger(__name__)


@define
class Hooks:
    """Calls into plugins, one method per hook."""

    pm: pluggy.PluginManager

    def has(self, name: str) -> bool:
        """Whether any plugin implements hook ``name``."""
        return bool(self._impls(name))

    def event_changes(self, recorded: Sequence[RecordedEvent]) -> list[NewChange]:
        """``prm_event_changes``: plugins' own changes for events just recorded (inside the
        recording transaction). A failing implementation, or a change of a type that is not
        a plugin's to emit, is logged with the plugin's name and left out: a plugin's bug
        never stops ingest."""
        found: list[NewChange] = []
        for impl in self._impls("prm_event_changes"):
            try:
                result: Any = impl.function(recorded)
                produced: list[Any] = list(result or ())
                for change in produced:
                    if not isinstance(change, NewChange):
                        raise TypeError(f"yielded {type(change).__name__}, expected NewChange")
                    check_plugin_type(change.type)
            except Exception as exc:
                log.error(
                    "hook failed",
                    hook="prm_event_changes",
                    plugin=impl.plugin_name,
                    error=type(exc).__name__,
                    exc_info=exc,
                )
                continue
            found.extend(produced)
        return found

    def _impls(self, name: str) -> list[pluggy.HookImpl]:
        """Implementations in pluggy's call order; wrappers are for pluggy calls only."""
        impls = getattr(self.pm.hook, name).get_hookimpls()
        return [i for i in reversed(impls) if not (i.wrapper or i.hookwrapper)]

    def _notify(self, name: str, **kwargs: Any) -> None:
        """Tell every plugin; one plugin failing neither stops the others nor goes unnamed."""
        for impl in self._impls(name):
            try:
                impl.function(*(kwargs[arg] for arg in impl.argnames))
            except Exception as exc:
                log.error("hook failed", hook=name, plugin=impl.plugin_name, error=type(exc).__name__, exc_info=exc)

    def _each(self, name: str, *, awaitable: bool = False, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call every implementation separately: ``[(plugin name, result), ...]``, None left out.

        A generator is run to the end here, inside the guard. For an ``awaitable`` hook an
        implementation that raises at once still yields an entry, an awaitable that raises,
        so the failure is named in ``degraded`` like a late one.
        """
        results: list[tuple[str, Any]] = []
        for impl in self._impls(name):
            plugin = impl.plugin_name
            try:
                value = impl.function(*(kwargs[arg] for arg in impl.argnames))
                if inspect.isgenerator(value):
                    value = list(value)
            except Exception as exc:
                log.error("hook failed", hook=name, plugin=plugin, error=type(exc).__name__, exc_info=exc)
                if awaitable:
                    results.append((plugin, _raise(exc)))
                continue
            if value is not None:
                results.append((plugin, value))
        return results

    # customers and dialogues -----------------------------------------------------------

    def customer_created(self, customer: Customer, event: Event | None) -> None:
        self._notify("prm_customer_created", customer=customer, event=event)

    def customers_merged(self, merge: Merge) -> None:
        self._notify("prm_customers_merged", merge=merge)

    def customers_unmerged(self, merge: Merge) -> None:
        self._notify("prm_customers_unmerged", merge=merge)

    def dialogue_opened(self, dialogue: Dialogue, event: RecordedEvent) -> None:
        self._notify("prm_dialogue_opened", dialogue=dialogue, event=event)

    def event_recorded(self, recorded: RecordedEvent) -> None:
        self._notify("prm_event_recorded", recorded=recorded)

    def dialogue_closed(self, dialogue: Dialogue) -> None:
        self._notify("prm_dialogue_closed", dialogue=dialogue)

    def batch_committed(self, outcome: BatchOutcome) -> None:
        """Every notification a committed batch calls for, in a stable order."""
        for customer, event in outcome.customers_created:
            self.customer_created(customer, event)
        for merge in outcome.merges:
            self.customers_merged(merge)
        for dialogue, recorded in outcome.dialogues_opened:
            self.dialogue_opened(dialogue, recorded)
        if self.pm.hook.prm_event_recorded.get_hookimpls():
            for recorded in outcome.recorded:
                if not recorded.duplicate:
                    self.event_recorded(recorded)
        for dialogue in outcome.dialogues_closed:
            self.dialogue_closed(dialogue)
        for fulfillment in outcome.fulfillments_updated:
            self.fulfillment_updated(fulfillment)

    def customer_erased(self, customer_id: str, merged_ids: Sequence[str]) -> list[tuple[str, Awaitable[Any]]]:
        """``[(plugin, awaitable)]``: each plugin purging its own rows about an erased customer."""
        return [
            (p, _awaitable(v))
            for p, v in self._each(
                "prm_customer_erased", awaitable=True, customer_id=customer_id, merged_ids=tuple(merged_ids)
            )
        ]

    def hub_stopping(self, config: Config) -> list[tuple[str, Awaitable[Any]]]:
        """``[(plugin, awaitable)]``: each plugin closing what it opened for a stopping hub."""
        return [(p, _awaitable(v)) for p, v in self._each("prm_hub_stopping", awaitable=True, config=config)]

    # value delivery ---------------------------------------------------------------------

    def enrich_view(self, view: CustomerView) -> list[tuple[str, Awaitable[Any]]]:
        """``[(plugin, awaitable of a mapping)]``."""
        return [(p, _awaitable(v)) for p, v in self._each("prm_enrich_view", awaitable=True, view=view)]

    def propose_offers(self, request: ValueRequest) -> list[tuple[str, Awaitable[Iterable[Offer]]]]:
        return [(p, _awaitable(v)) for p, v in self._each("prm_propose_offers", awaitable=True, request=request)]

    def plan_fulfillment(self, request: ValueRequest) -> list[FulfillmentRequest]:
        planned: list[FulfillmentRequest] = []
        for plugin, value in self._each("prm_plan_fulfillment", request=request):
            if isinstance(value, FulfillmentRequest) or not isinstance(value, Iterable):
                value = [value]
            for item in value:
                if not isinstance(item, FulfillmentRequest):
                    log.error("prm_plan_fulfillment yielded a non-FulfillmentRequest", plugin=plugin)
                    continue
                if not item.idempotency_key:
                    # the same on every retry of this turn's request to this partner
                    turn = request.event.event
                    seed = f"{turn.touchpoint}\x1f{turn.id}\x1f{item.partner}\x1f{item.action}"
                    item = evolve(item, idempotency_key=hashlib.sha256(seed.encode()).hexdigest()[:32])
                planned.append(item)
        return planned

    def fulfill(self, request: FulfillmentRequest) -> list[tuple[str, Awaitable[FulfillmentResult]]]:
        return [(p, _awaitable(v)) for p, v in self._each("prm_fulfill", awaitable=True, request=request)]

    def fulfillment_updated(self, fulfillment: Fulfillment) -> None:
        self._notify("prm_fulfillment_updated", fulfillment=fulfillment)

    def render_delivery(self, delivery: Delivery, touchpoint: TouchPoint) -> Mapping[str, Any]:
        """The touch point's rendering; plain JSON when no plugin renders it or the renderer fails."""
        try:
            rendered = self.pm.hook.prm_render_delivery(delivery=delivery, touchpoint=touchpoint)
        except Exception as exc:
            log.error("hook failed", hook="prm_render_delivery", error=type(exc).__name__, exc_info=exc)
            rendered = None
        return rendered if rendered is not None else delivery.to_json()


async def _as_coroutine(value: Any) -> Any:
    if inspect.isawaitable(value):
        value = await value
    if inspect.isgenerator(value):
        value = list(value)
    return value


def _awaitable(value: Any) -> Awaitable[Any]:
    return _as_coroutine(value)


async def _raise(exc: Exception) -> Any:
    raise exc
