"""The typed facade through which the core calls plugins.

Every call goes through pluggy, one plugin at a time (:meth:`PrmPluginManager.callers
<prm_core.plugins.PrmPluginManager.callers>`): pluggy's hook call monitoring (and so
``PRM_TRACE_PLUGINS`` and :class:`~prm_core.testing.HookRecorder`) sees each call, and one
plugin's failure is caught and named without keeping the others from being called.

Notification hooks (``prm_event_recorded`` and friends) run after the data is durable;
a failing implementation is logged with its plugin's name and never undoes or blocks the
write. Awaitable hooks are called one implementation at a time so that each becomes its
own task, which the core can cancel at the deadline and name in ``degraded``.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog
from attrs import define, evolve

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
from .plugins import PrmPluginManager
from .recording import BatchOutcome

if TYPE_CHECKING:
    from .hub import Hub

__all__ = ["Hooks"]

log = structlog.get_logger(__name__)


@define
class Hooks:
    """Calls into plugins, one method per hook."""

    pm: PrmPluginManager

    def has(self, name: str) -> bool:
        """Whether any plugin implements hook ``name``."""
        return bool(self.pm.callers(name))

    def event_changes(self, recorded: Sequence[RecordedEvent]) -> list[NewChange]:
        """``prm_event_changes``: plugins' own changes for events just recorded (inside the
        recording transaction). A failing implementation, or a change of a type that is not
        a plugin's to emit, is logged with the plugin's name and left out: a plugin's bug
        never stops ingest."""
        found: list[NewChange] = []
        for plugin, caller in self.pm.callers("prm_event_changes"):
            try:
                produced: list[Any] = [change for result in caller(recorded=recorded) for change in (result or ())]
                for change in produced:
                    if not isinstance(change, NewChange):
                        raise TypeError(f"yielded {type(change).__name__}, expected NewChange")
                    check_plugin_type(change.type)
            except Exception as exc:
                log.error(
                    "hook failed", hook="prm_event_changes", plugin=plugin, error=type(exc).__name__, exc_info=exc
                )
                continue
            found.extend(produced)
        return found

    def _notify(self, name: str, **kwargs: Any) -> None:
        """Tell every plugin; one plugin failing neither stops the others nor goes unnamed."""
        for plugin, caller in self.pm.callers(name):
            try:
                caller(**kwargs)
            except Exception as exc:
                log.error("hook failed", hook=name, plugin=plugin, error=type(exc).__name__, exc_info=exc)

    def _each(self, name: str, *, awaitable: bool = False, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call every implementation separately: ``[(plugin name, result), ...]``, None left out.

        A generator is run to the end here, inside the guard. For an ``awaitable`` hook an
        implementation that raises at once still yields an entry, an awaitable that raises,
        so the failure is named in ``degraded`` like a late one.
        """
        results: list[tuple[str, Any]] = []
        for plugin, caller in self.pm.callers(name):
            try:
                values = [list(v) if inspect.isgenerator(v) else v for v in caller(**kwargs)]
            except Exception as exc:
                log.error("hook failed", hook=name, plugin=plugin, error=type(exc).__name__, exc_info=exc)
                if awaitable:
                    results.append((plugin, _raise(exc)))
                continue
            results.extend((plugin, value) for value in values)
        return results

    # the hub's lifetime -------------------------------------------------------------------

    async def hub_started(self, hub: Hub) -> None:
        """``prm_hub_started``: each plugin in turn, its coroutine awaited before the next.
        A failure stops the hub's start: it is raised, with a note naming the plugin."""
        for plugin, caller in self.pm.callers("prm_hub_started"):
            try:
                for value in caller(hub=hub):
                    await _as_coroutine(value)
            except Exception as exc:
                exc.add_note(f"raised by plugin {plugin!r} in prm_hub_started")
                raise

    async def hub_stopping(self, hub: Hub) -> None:
        """``prm_hub_stopping``: each plugin in turn, its coroutine awaited before the next; a
        failure is logged naming the plugin, and the others are still called. ``config`` is
        passed too, for implementations written when the hook received only that."""
        for plugin, caller in self.pm.callers("prm_hub_stopping"):
            try:
                for value in caller(hub=hub, config=hub.config):
                    await _as_coroutine(value)
            except Exception as exc:  # one plugin's failure must not keep the others open
                log.error("hook failed", hook="prm_hub_stopping", plugin=plugin, error=type(exc).__name__, exc_info=exc)

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
        if self.pm.callers("prm_event_recorded"):
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
        """Each plugin's call; a coroutine as the plugin made it, so the call of a second plugin
        serving the same partner can be closed unstarted (:meth:`prm_core.outbox.Outbox._call`)."""
        return [
            (p, v if inspect.iscoroutine(v) else _awaitable(v))
            for p, v in self._each("prm_fulfill", awaitable=True, request=request)
        ]

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
