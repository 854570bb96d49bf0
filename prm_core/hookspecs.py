"""Every hook of the PRM hub.

Plugins implement these with ``@prm_core.hookimpl``. Hooks marked *awaitable* let an
implementation return a coroutine; the core gathers them under the touch point's
deadline, so they are never ``firstresult``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .config import Config
    from .feed import DestinationKind, NewChange
    from .formats import Importer
    from .model import (
        Adapter,
        Customer,
        CustomerView,
        Delivery,
        Dialogue,
        Event,
        FulfillmentRequest,
        FulfillmentResult,
        IdentityNamespace,
        Merge,
        Offer,
        Partner,
        RecordedEvent,
        TouchPoint,
        ValueProvider,
        ValueRequest,
    )
    from .outbox import Fulfillment
    from .triggers.messages import Message, MessageResult

__all__ = ["hookimpl", "hookspec"]

hookspec = pluggy.HookspecMarker("prm")
hookimpl = pluggy.HookimplMarker("prm")


# -------------------------------------------------------------------------------------
# Registration: collected once when the hub starts
# -------------------------------------------------------------------------------------


@hookspec
def prm_touchpoints(config: Config) -> Iterable[TouchPoint]:
    """Register touch points: yield one :class:`~prm_core.model.TouchPoint` each.

    ``config`` is the hub's configuration; a plugin reads its own
    ``[touchpoints.<name>]`` table from ``config.touchpoint(name)``. Two plugins
    registering the same name stop the hub with an error naming both.

    .. code-block:: python

        @hookimpl
        def prm_touchpoints(config):
            yield TouchPoint(name="kiosk", channel="kiosk", budget_ms=400)
    """


@hookspec
def prm_adapters(config: Config) -> Iterable[Adapter]:
    """Register vendor adapters: yield one :class:`~prm_core.model.Adapter` each.

    An adapter speaks a vendor's wire format on a touch point another plugin registers;
    the hub mounts its routes, and stops at start when that touch point is missing.

    .. code-block:: python

        @hookimpl
        def prm_adapters(config):
            yield Adapter(name="segment", touchpoint="web", routes=[web.post("/v1/batch", batch)])
    """


@hookspec
def prm_partners(config: Config) -> Iterable[Partner]:
    """Register partner services: yield one :class:`~prm_core.model.Partner` each.

    .. code-block:: python

        @hookimpl
        def prm_partners(config):
            yield Partner(name="acme-field", role="field_service")
    """


@hookspec
def prm_value_providers(config: Config) -> Iterable[ValueProvider]:
    """Register knowledge sources: yield one :class:`~prm_core.model.ValueProvider` each.

    Every provider is awaited concurrently for each request and cancelled at the
    touch point's deadline.

    .. code-block:: python

        async def warranty(request):
            return {"plans": ["basic", "extended"]}

        @hookimpl
        def prm_value_providers(config):
            yield ValueProvider(name="warranty", about="business", provide=warranty)
    """


@hookspec
def prm_identity_namespaces(config: Config) -> Iterable[IdentityNamespace]:
    """Register identity namespaces beyond the built-in ones, with their normalization.

    .. code-block:: python

        @hookimpl
        def prm_identity_namespaces(config):
            yield IdentityNamespace(name="kiosk_device", normalize=lambda v, region: v.strip(), shared=True)
    """


@hookspec
def prm_event_labels(config: Config) -> Mapping[str, str] | None:
    """Words for the event types this plugin records, shown to people instead of the wire name.

    Return ``{"ivr.menu": "chose from the phone menu", ...}``. Collected once when the hub
    starts; the core labels its own types, and a plugin's label replaces one of those.

    .. code-block:: python

        @hookimpl
        def prm_event_labels(config):
            return {"kiosk.checkin": "checked in at a kiosk"}
    """


@hookspec
def prm_hub_stopping(config: Config) -> Awaitable[None] | None:
    """The hub is stopping: close what your plugin opened for it (client sessions, pools).
    *Awaitable.*

    Called once for every hub that started (``Hub.open`` leaving, so also when ``prm serve``
    stops), after its outbox has stopped, so no partner call is in flight, and before its
    database closes. ``config`` is the stopping hub's configuration. A failing
    implementation is logged with the plugin's name and the hub goes on stopping.

    .. code-block:: python

        @hookimpl
        def prm_hub_stopping(config):
            return client.close()
    """


# -------------------------------------------------------------------------------------
# Customers
# -------------------------------------------------------------------------------------


@hookspec
def prm_customer_created(customer: Customer, event: Event | None) -> None:
    """Called after a new customer is durable; ``event`` is the one that introduced them
    (``None`` when created through the API).

    .. code-block:: python

        @hookimpl
        def prm_customer_created(customer, event):
            welcome_queue.put_nowait(customer.id)
    """


@hookspec
def prm_customers_merged(merge: Merge) -> None:
    """Called after two customers were merged; ``merge.merged_id`` now redirects to
    ``merge.survivor_id``. The merge record names the event that caused it.

    .. code-block:: python

        @hookimpl
        def prm_customers_merged(merge):
            crm.link(merge.merged_id, merge.survivor_id)
    """


@hookspec
def prm_customers_unmerged(merge: Merge) -> None:
    """Called after a merge was undone: ``merge.merged_id`` is a customer of its own again.

    .. code-block:: python

        @hookimpl
        def prm_customers_unmerged(merge):
            crm.unlink(merge.merged_id)
    """


@hookspec
def prm_enrich_view(view: CustomerView) -> Mapping[str, Any] | Awaitable[Mapping[str, Any]] | None:
    """Add sections to a customer's 360 view. *Awaitable.*

    Return a mapping of section name to a JSON-able value (or a coroutine giving one).
    Sections never replace the core fields. Keep it bounded: the view is built on every
    request turn.

    .. code-block:: python

        @hookimpl
        def prm_enrich_view(view):
            return {"loyalty": {"points": points_for(view.customer.id)}}
    """


# -------------------------------------------------------------------------------------
# Dialogues
# -------------------------------------------------------------------------------------


@hookspec
def prm_dialogue_opened(dialogue: Dialogue, event: RecordedEvent) -> None:
    """Called after ``event`` opened a new dialogue.

    .. code-block:: python

        @hookimpl
        def prm_dialogue_opened(dialogue, event):
            log.info("dialogue opened", touchpoint=dialogue.touchpoint)
    """


@hookspec
def prm_event_recorded(recorded: RecordedEvent) -> None:
    """Called once per event after it is durable (never for a duplicate).

    Runs on the ingest path: do no blocking work here; hand it to a queue.

    .. code-block:: python

        @hookimpl
        def prm_event_recorded(recorded):
            if recorded.event.type == "call.offered":
                screen_pops.push(recorded.customer_id, recorded.event)
    """


@hookspec
def prm_dialogue_closed(dialogue: Dialogue) -> None:
    """Called after a dialogue closed, by an outcome or by the touch point's inactivity rule.

    .. code-block:: python

        @hookimpl
        def prm_dialogue_closed(dialogue):
            survey.maybe_send(dialogue.customer_id, dialogue.outcome)
    """


# -------------------------------------------------------------------------------------
# Value delivery
# -------------------------------------------------------------------------------------


@hookspec
def prm_propose_offers(request: ValueRequest) -> Iterable[Offer] | Awaitable[Iterable[Offer]] | None:
    """Offers for this dialogue turn. *Awaitable.*

    Every implementation is gathered under the deadline; offers from all are ranked by
    score. A late implementation is left out and named in ``degraded``.

    .. code-block:: python

        @hookimpl
        def prm_propose_offers(request):
            if request.view.customer.tier == "platinum":
                yield Offer(code="priority", title="Priority line", score=0.9)
    """


@hookspec
def prm_plan_fulfillment(request: ValueRequest) -> Iterable[FulfillmentRequest] | None:
    """Partner work this dialogue turn needs (book a technician, check stock).

    Each request returned is handed to ``prm_fulfill`` concurrently under the deadline.

    .. code-block:: python

        @hookimpl
        def prm_plan_fulfillment(request):
            if request.event.event.type == "service.request":
                yield FulfillmentRequest(id=new_id(), partner="fieldservice", action="schedule",
                                         customer_id=request.event.customer_id)
    """


@hookspec
def prm_fulfill(request: FulfillmentRequest) -> Awaitable[FulfillmentResult] | None:
    """Carry out partner work. *Awaitable.*

    Return a coroutine giving a :class:`~prm_core.model.FulfillmentResult` when this
    plugin serves ``request.partner``, else ``None``.

    .. code-block:: python

        @hookimpl
        def prm_fulfill(request):
            if request.partner == "fieldservice":
                return book_technician(request)
    """


@hookspec(firstresult=True)
def prm_render_delivery(delivery: Delivery, touchpoint: TouchPoint) -> Mapping[str, Any] | None:
    """Render a delivery in the touch point's format; the first non-``None`` result wins.

    The default (no implementation answering) is ``delivery.to_json()``.

    .. code-block:: python

        @hookimpl
        def prm_render_delivery(delivery, touchpoint):
            if touchpoint.name == "pos":
                return {"receipt_lines": [o.title for o in delivery.offers[:3]]}
    """


# -------------------------------------------------------------------------------------
# Registration (continued): file formats for ``prm import``
# -------------------------------------------------------------------------------------


@hookspec
def prm_importers(config: Config) -> Iterable[Importer]:
    """Register file formats ``prm import`` reads: yield one :class:`~prm_core.formats.Importer` each.

    An importer claims file name suffixes (``.xml``) for one touch point; any other file is
    read as JSON Lines of Events. Two importers claiming the same suffix for the same touch
    point stop the import with an error naming both.

    .. code-block:: python

        @hookimpl
        def prm_importers(config):
            yield Importer(name="poslog", touchpoint="pos", suffixes=[".xml"], read=read_poslog)
    """


# -------------------------------------------------------------------------------------
# Partners
# -------------------------------------------------------------------------------------


@hookspec
def prm_fulfillment_updated(fulfillment: Fulfillment) -> None:
    """Called after partner work changed status (answered, confirmed by a callback, given up),
    once it is durable and recorded as a ``fulfillment.updated`` event in its dialogue.

    A late answer arrives here after the customer's request was answered: a touch point whose
    dialogue ``fulfillment.dialogue_id`` is still open pushes it to the customer (the portal
    session, the agent's screen). Runs on the event loop: hand work to a queue.

    .. code-block:: python

        @hookimpl
        def prm_fulfillment_updated(fulfillment):
            sessions.push(fulfillment.dialogue_id, fulfillment.to_json())
    """


# -------------------------------------------------------------------------------------
# Customers: privacy
# -------------------------------------------------------------------------------------


@hookspec
def prm_customer_erased(customer_id: str, merged_ids: Sequence[str]) -> Awaitable[None] | None:
    """A customer was erased (``DELETE /v1/customers/{ref}``): purge your own rows about them,
    and every copy you hold in memory (buffers for reconnecting clients, queued work, caches).
    *Awaitable.*

    Called in the hub process that ran the erasure only: a plugin holding data in several
    processes tells the others itself.

    Called after the core's part of the erasure is durable, with the erased customer's id and
    the ids merged into it (rows of yours may name any of them). Erasure may be run again for
    the same customer, so a purge must be harmless to repeat; a failing implementation is
    named in the erasure's ``incomplete`` list, and running the erasure again retries it.

    .. code-block:: python

        @hookimpl
        def prm_customer_erased(customer_id, merged_ids):
            return outbox.purge([customer_id, *merged_ids])
    """


# -------------------------------------------------------------------------------------
# The change feed
# -------------------------------------------------------------------------------------


@hookspec
def prm_destination_kinds(config: Config) -> Iterable[DestinationKind]:
    """Register kinds of destination the change feed can flow to: yield one
    :class:`~prm_core.feed.DestinationKind` each.

    An operator configures a destination as ``[destinations.NAME]`` with ``kind`` naming
    yours; the hub opens its sink with the table's settings as it starts (a bad setting
    stops the hub there, naming the key) and delivers the feed to it in order. Two plugins
    registering the same kind stop the hub with an error naming both.

    .. code-block:: python

        @hookimpl
        def prm_destination_kinds(config):
            yield DestinationKind(name="printer", open=Printer)
    """


@hookspec
def prm_event_changes(recorded: Sequence[RecordedEvent]) -> Iterable[NewChange] | None:
    """Changes of your own to add to the feed for events just recorded: yield
    :class:`~prm_core.feed.NewChange` values.

    Called inside the recording transaction, once per batch with the batch's new events
    (never duplicates), so what you yield commits with the events or not at all. The type
    is yours: dotted lower-case words that are not one of the core's (``loyalty.earned``).
    Runs on the ingest writer: derive from the events only, no I/O.

    .. code-block:: python

        @hookimpl
        def prm_event_changes(recorded):
            for r in recorded:
                if r.event.type == "purchase":
                    yield NewChange("loyalty.earned", r.customer_id, {"points": 10})
    """


# -------------------------------------------------------------------------------------
# Triggers: messages the hub sends on its own initiative
# -------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def prm_send_message(message: Message) -> MessageResult | Awaitable[MessageResult] | None:
    """Send a trigger's message on your channel: return a
    :class:`~prm_core.triggers.MessageResult` (or a coroutine giving one) when
    ``message.channel`` is yours, else ``None``. The first answer wins.

    ``message.id`` is the same on every hand-over of the same message (a retry, a restart
    after a crash): use it as the idempotency key or Message-ID, so a message is never sent
    twice. Return ``MessageResult("failed", reason)`` for a refusal that retrying cannot
    fix (a bad address: the run is recorded ``failed`` with the reason); raise for one that
    it can (the server is down: the act is tried again with backoff). With no implementation
    answering, the run is recorded ``failed`` as undeliverable on that channel. The hub
    records the outbound ``message.sent`` event and change itself once you answer ``sent``.

    .. versionadded:: 0.2.0

    .. code-block:: python

        @hookimpl
        def prm_send_message(message):
            if message.channel == "email":
                return smtp.send(message.to, message.subject, message.text, message_id=message.id)
    """
