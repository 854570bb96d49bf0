"""Every hook of the PRM hub, grouped by theme.

Plugins implement these with ``@prm_core.hookimpl``. Hooks marked *awaitable* let an
implementation return a coroutine; the core gathers them under the touch point's
deadline, so they are never ``firstresult``.

These docstrings are the hook reference: written in Markdown (as the documentation site
reads it, with Sphinx's ``.. versionadded::`` notes), they are the part of docs/hooks.md
under its groups, which ``python docs/_ext/hook_reference.py`` writes from this module, in
this module's order, one ``##`` heading per group below. tests/test_hook_docs.py fails
when the page and this module disagree.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .config import Config
    from .feed import DestinationKind, NewChange
    from .formats import Importer
    from .hub import Hub
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

__all__ = ["DEPRECATED_PARAMETERS", "hookimpl", "hookspec"]

hookspec = pluggy.HookspecMarker("prm")
hookimpl = pluggy.HookimplMarker("prm")

# parameters a hook still passes for implementations written before it changed: taking one
# draws a DeprecationWarning naming the plugin when it is registered
DEPRECATED_PARAMETERS: dict[str, dict[str, str]] = {
    "prm_hub_stopping": {"config": "deprecated since 0.2.0: take hub (hub.config is the configuration)"},
}


# -------------------------------------------------------------------------------------
# Registration
# -------------------------------------------------------------------------------------


@hookspec
def prm_touchpoints(config: Config) -> Iterable[TouchPoint]:
    """Registers touch points: the channels that send events and requests (a web site, a call
    center, a kiosk).

    - **Called:** once, when the hub starts.
    - **Receives:** `config`, the hub's configuration; your settings are `config.touchpoint(name)`.
    - **Returns:** an iterable of `TouchPoint` (yield them). A touch point has a `name` (its
      URL segment and key scope, `touchpoint:<name>`), a `channel`, the `budget_ms` a request
      there may wait for its answer, how events thread into dialogues (`dialogue_timeout` for
      sessions that end after inactivity, `closes_on` for event types that end a dialogue),
      optional aiohttp `routes` the hub mounts for the touch point's own wire formats, and
      `public_keys=True` when code anyone can read (a page's script) sends to it, which lets it
      have public keys (`prm keys create --public`; see [security](security.md)).
    - **Awaitable:** no.
    - **First result wins:** no; every implementation is called and all touch points are
      registered. Two with the same name stop the hub with `ConflictingRegistration`
      naming both plugins.

    ```python
    from collections.abc import Iterator
    from datetime import timedelta

    from prm_core.plugin import Config, TouchPoint, hookimpl


    @hookimpl
    def prm_touchpoints(config: Config) -> Iterator[TouchPoint]:
        settings = config.touchpoint("kiosk")  # the [touchpoints.kiosk] table, or {}
        yield TouchPoint(
            name="kiosk",
            channel="kiosk",
            budget_ms=int(settings.get("budget_ms", 400)),
            dialogue_timeout=timedelta(minutes=5),
            closes_on={"session.end"},
            description="In-store self-service kiosks",
        )
    ```
    """


@hookspec
def prm_adapters(config: Config) -> Iterable[Adapter]:
    """Registers vendor adapters: a vendor's wire format (Segment's tracking API, Twilio's voice
    webhooks, Shopify's order webhooks) mounted on a touch point that another plugin registers.

    - **Called:** once, when the hub starts, after the touch points are collected.
    - **Receives:** `config`.
    - **Returns:** an iterable of `Adapter` (`name`, `touchpoint`, `routes`, `description`). The
      hub mounts the routes (they appear in `/openapi.json` tagged with the touch point and the
      adapter); an adapter whose touch point no plugin registers stops the hub with
      `PluginLoadError` naming both. Each route authenticates its caller itself: a scoped key
      through `prm_core.server.auth.require`, or the vendor's own signature.
    - **Awaitable:** no.
    - **First result wins:** no; a name registered twice stops the hub with
      `ConflictingRegistration`.

    ```python
    from collections.abc import Iterator

    from aiohttp import web

    from prm_core.plugin import Adapter, Config, hookimpl, require


    async def ping(request: web.Request) -> web.Response:
        # a vendor's health check
        await require(request, "touchpoint:kiosk")
        return web.json_response({"ok": True})


    @hookimpl
    def prm_adapters(config: Config) -> Iterator[Adapter]:
        # "kiosk" is registered by the prm_touchpoints example above
        yield Adapter(name="acme-tracker", touchpoint="kiosk", routes=[web.get("/acme/ping", ping)])
    ```
    """


@hookspec
def prm_partners(config: Config) -> Iterable[Partner]:
    """Registers partner services outside the company that fulfill work on a customer's behalf
    (a field service, a supplier, a notification service).

    - **Called:** once, when the hub starts.
    - **Receives:** `config`; your settings are `config.partner(name)`.
    - **Returns:** an iterable of `Partner` (`name`, `role`, `description`). Registered
      partners are listed by `prm plugins` and in `hub.registrations.partners`; the work itself
      is planned by `prm_plan_fulfillment` and carried out by `prm_fulfill` (the core does not
      check that a planned request names a registered partner).
    - **Awaitable:** no.
    - **First result wins:** no; a name registered twice stops the hub with
      `ConflictingRegistration`.

    ```python
    from collections.abc import Iterator

    from prm_core.plugin import Config, Partner, hookimpl


    @hookimpl
    def prm_partners(config: Config) -> Iterator[Partner]:
        settings = config.partner("acme-field")  # the [partners.acme-field] table, or {}
        yield Partner(
            name="acme-field",
            role="field_service",
            description=settings.get("description", "Acme technicians"),
        )
    ```
    """


@hookspec
def prm_value_providers(config: Config) -> Iterable[ValueProvider]:
    """Registers knowledge sources that every request turn draws on: what the business knows
    (catalog, warranties, campaigns) or what it knows about the customer (purchases, claims).

    - **Called:** once, when the hub starts. The providers it registers are then called on
      every request turn.
    - **Receives:** `config`.
    - **Returns:** an iterable of `ValueProvider`. Its `provide(request)` is an async function
      that receives the turn's `ValueRequest` and returns a JSON-able mapping, which appears in
      the delivery under `knowledge.<provider name>`. Every provider starts at the same time
      as the offers and fulfillments; one still running at the deadline is cancelled and named
      `value:<name>` in `degraded`, and so is one that raised.
    - **Awaitable:** no (the hook itself); `provide` is awaited under the deadline.
    - **First result wins:** no; provider names must be unique across plugins.

    ```python
    from collections.abc import Iterator, Mapping
    from typing import Any

    from prm_core.plugin import Config, ValueProvider, ValueRequest, hookimpl

    PLANS = {"wm-300": ["basic", "extended"]}


    async def warranty(request: ValueRequest) -> Mapping[str, Any]:
        product = request.event.event.data.get("product_id")
        return {"product_id": product, "plans": PLANS.get(product, [])}


    @hookimpl
    def prm_value_providers(config: Config) -> Iterator[ValueProvider]:
        yield ValueProvider(name="warranty", about="business", provide=warranty)
    ```
    """


@hookspec
def prm_identity_namespaces(config: Config) -> Iterable[IdentityNamespace]:
    """Registers kinds of identifier beyond the built-in `email`, `phone`, `user_id`,
    `anonymous_id`, `loyalty_card` and `account_id`, each with its normalization.

    - **Called:** once, when the hub starts.
    - **Receives:** `config`.
    - **Returns:** an iterable of `IdentityNamespace`. `normalize(raw, region)` returns the
      canonical spelling (it is applied to incoming events and to `namespace:value` refs
      alike) or raises `ValueError` with a message that completes "identities.<name> ...";
      the event is then refused with a 422 naming that field. A `shared` namespace (a kiosk
      or a household device) links identities without merging customers: an event carrying
      only a shared identity goes to the customer most recently seen with it. Events that use
      an unregistered namespace are refused.
    - **Awaitable:** no.
    - **First result wins:** no; a name registered twice (including a built-in one) stops the
      hub with `ConflictingRegistration`.

    ```python
    from collections.abc import Iterator

    from prm_core.plugin import Config, IdentityNamespace, hookimpl


    def normalize_device(raw: str, region: str) -> str:
        value = raw.strip().upper()
        if not value.startswith("K-"):
            raise ValueError("is not a kiosk device id (K-...)")
        return value


    @hookimpl
    def prm_identity_namespaces(config: Config) -> Iterator[IdentityNamespace]:
        yield IdentityNamespace(
            name="kiosk_device",
            normalize=normalize_device,
            shared=True,
            description="a kiosk, used by many customers",
        )
    ```
    """


@hookspec
def prm_importers(config: Config) -> Iterable[Importer]:
    r"""Registers file formats `prm import --touchpoint <name> FILE` reads besides JSON Lines of
    Events: the POS registers ARTS POSLog XML this way (`prm import --touchpoint pos day.xml`).

    - **Called:** once, when the hub starts (with the other registration hooks).
    - **Receives:** `config`.
    - **Returns:** an iterable of `prm_core.formats.Importer`: a `name`, the `touchpoint` it
      imports into, the file name `suffixes` it claims (`[".xml"]`, compared without case) and
      `read(path, context)`, an async generator streaming the file that yields one `Event` per
      record, or an `InvalidInput` for a record that cannot be imported (its message names the
      record; the import stops there unless `--skip-invalid`). Events are recorded in batches
      behind the reader; a reader whose record depends on earlier ones (a void of an earlier
      sale) awaits `context.flush()` first, and reads the hub through `context.hub`. A file
      whose suffix no importer claims for that touch point is read as JSON Lines. Imports stay
      idempotent (event ids) and resumable: the number of records read is saved after every
      batch, and a rerun reads past that many without recording them again.
    - **Awaitable:** no (the reader it registers is async).
    - **First result wins:** no; two importers with one name stop the hub with
      `ConflictingRegistration`, and two claiming one suffix for one touch point stop the import
      naming both.

    ```python
    from collections.abc import AsyncIterator, Iterator
    from datetime import datetime
    from pathlib import Path

    from prm_core.plugin import Config, Event, Identity, ImportContext, Importer, InvalidInput, hookimpl


    async def read_visits(path: Path, context: ImportContext) -> AsyncIterator[Event | InvalidInput]:
        # a kiosk's visit log: one visit_id<TAB>email<TAB>time per line
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                visit_id, email, at = line.rstrip("\n").split("\t")
                if "@" not in email:
                    yield InvalidInput(f"line {number}: no email", "email")
                    continue
                yield Event(
                    id=visit_id,
                    type="kiosk.visit",
                    occurred_at=datetime.fromisoformat(at),
                    touchpoint="kiosk",
                    identities=[Identity("email", email.lower())],
                )


    @hookimpl
    def prm_importers(config: Config) -> Iterator[Importer]:
        yield Importer(name="kiosk-visits", touchpoint="kiosk", suffixes=[".tsv"], read=read_visits)
    ```
    """


@hookspec
def prm_destination_kinds(config: Config) -> Iterable[DestinationKind]:
    r"""Registers kinds of destination the change feed flows to (see [destinations](destinations.md)).
    The core registers `webhook` and `nats`; a warehouse plugin registers its own. An operator
    configures a destination as a `[destinations.NAME]` table whose `kind` names yours.

    - **Called:** once, when the hub starts (with the other registration hooks). The kind's
      `open(settings)` is then called, still at start, once per destination of that kind.
    - **Receives:** `config`.
    - **Returns:** an iterable of `prm_core.feed.DestinationKind`: a `name`, `open`, a callable
      taking the destination's `prm_core.feed.DestinationSettings` and returning a sink, and
      `about`, one line. `open` checks its settings with the settings' getters (`text`,
      `texts`, `number`, `integer`, `flag`) or raises `settings.invalid(key, problem)`: the hub
      stops with that one line, which names the key. It does no I/O. The sink has
      `async deliver(changes)` (changes in feed order, at most `batch_size`, one call at a time;
      returning delivers them, raising `prm_core.feed.Refused(positions, reason)` puts those in
      the dead-letter list, any other exception retries the whole batch later) and
      `async close()`. `settings.read` runs a function in one of the hub's read transactions
      (`await settings.read(lambda conn: ...)`), for a sink that completes changes with rows.
    - **Awaitable:** no (the sink it opens is async).
    - **First result wins:** no; two kinds with one name stop the hub with
      `ConflictingRegistration`.

    ```python
    from collections.abc import Iterator, Sequence

    from prm_core.plugin import Change, Config, DestinationKind, DestinationSettings, hookimpl


    class LogFile:
        # appends each change's position and type to a file

        def __init__(self, settings: DestinationSettings) -> None:
            self.path = settings.text("path", default="changes.log")

        async def deliver(self, changes: Sequence[Change]) -> None:
            with open(self.path, "a", encoding="utf-8") as out:
                out.writelines(f"{c.position} {c.type}\n" for c in changes)

        async def close(self) -> None:
            pass


    @hookimpl
    def prm_destination_kinds(config: Config) -> Iterator[DestinationKind]:
        yield DestinationKind(name="logfile", open=LogFile, about="positions and types, one a line")
    ```
    """


@hookspec
def prm_event_labels(config: Config) -> Mapping[str, str] | None:
    """Words for the event types a plugin records. The pages people work in (the agent desktop's
    "Before this call", the timeline) show these instead of the wire name: `chose from the
    phone menu: repairs`, not `ivr.menu (menu: repairs)`. The core labels its own types
    (`delivery` reads "was answered", `fulfillment.planned` "service work planned",
    `service.request` "reported a problem"); an unlabelled `kiosk.check_in` reads "kiosk check in".

    - **Called:** once when the hub starts, after registration.
    - **Receives:** `config`, the hub's configuration (a plugin may label in the configured language).
    - **Returns:** a mapping of event type to a short phrase in the past tense, or `None`. A
      later-registered plugin's label replaces an earlier one's and the core's.
    - **Awaitable:** no.
    - **First result wins:** no; every implementation's labels are merged.

    ```python
    from collections.abc import Mapping

    from prm_core.plugin import Config, hookimpl


    @hookimpl
    def prm_event_labels(config: Config) -> Mapping[str, str]:
        return {"kiosk.checkin": "checked in at a kiosk", "kiosk.receipt": "printed a receipt"}
    ```
    """


# -------------------------------------------------------------------------------------
# The hub's lifetime
# -------------------------------------------------------------------------------------


@hookspec
def prm_hub_started(hub: Hub) -> Awaitable[None] | None:
    """Lets a plugin start what it runs for a hub, with the hub in hand: a broker, a background
    task, a plugin object of its own registered on `hub.pm` to hear the hub's notifications.
    `prm_callcenter` starts its screen-pop broker here; `prm_hub_stopping` is its counterpart.

    - **Called:** once for every hub, when it has started (`Hub.open` entering; so also when
      `prm serve` starts and when a test's hub fixture starts): after the database is migrated
      and the ingest writer, the change feed and the outbox run, before the hub is handed to
      its caller (and before the server answers a request). One implementation at a time, each
      one's coroutine awaited before the next is called.
    - **Receives:** `hub`, the started `Hub`: `hub.config` (your settings), `hub.registrations`,
      `hub.pm` (register an object of yours on it, and unregister it in `prm_hub_stopping`),
      `hub.record(...)`, `hub.view(...)`.
    - **Returns:** nothing, or a coroutine, which the hub awaits. An exception stops the hub
      from starting: what had started stops (`prm_hub_stopping` is called) and `Hub.open`
      raises the exception, with a note naming the plugin.
    - **Awaitable:** yes.
    - **First result wins:** no; every implementation is called.

    .. versionadded:: 0.2.0

    ```python
    from prm_core.plugin import Hub, hookimpl

    # what this plugin keeps for each running hub
    greetings: dict[int, str] = {}


    @hookimpl
    def prm_hub_started(hub: Hub) -> None:
        greetings[id(hub)] = hub.config.touchpoint("kiosk").get("greeting", "Welcome")
    ```
    """


@hookspec
def prm_hub_stopping(hub: Hub, config: Config) -> Awaitable[None] | None:
    """Lets a plugin close what it opened for a hub: an HTTP client session with its kept-alive
    connections, a connection pool, a file, what it started in `prm_hub_started`.
    `prm_partner` closes its partners' sessions here.

    - **Called:** once for every hub that started, when it stops (`Hub.open` leaving; so also
      when `prm serve` stops or a test's hub fixture ends): after the outbox, the trigger engine
      and the destinations' relay have stopped, so no partner call or message is in flight;
      before the ingest writer stops, so events a plugin records while it closes are still
      written; then the database closes. Also when a `prm_hub_started`
      implementation failed, so close only what you find open. One implementation at a time,
      each one's coroutine awaited before the next is called.
    - **Receives:** `hub`, the stopping `Hub`; `config`, its configuration (deprecated: read
      `hub.config`; an implementation taking `config` draws a `DeprecationWarning` naming its
      plugin when it is registered).
    - **Returns:** nothing, or a coroutine, which the hub awaits before it goes on stopping. An
      exception is logged with the plugin's name; the other plugins are still called.
    - **Awaitable:** yes.
    - **First result wins:** no; every implementation is called.

    .. versionchanged:: 0.2.0
       Receives the hub. Implementations written for `prm_hub_stopping(config)` still work.

    ```python
    import aiohttp

    from prm_core.plugin import Hub, hookimpl

    # each hub's session, opened on first use on the hub's event loop
    sessions: dict[int, aiohttp.ClientSession] = {}


    @hookimpl
    async def prm_hub_stopping(hub: Hub) -> None:
        session = sessions.pop(id(hub), None)
        if session is not None:
            await session.close()
    ```
    """


# -------------------------------------------------------------------------------------
# Customers
# -------------------------------------------------------------------------------------


@hookspec
def prm_customer_created(customer: Customer, event: Event | None) -> None:
    """A new customer exists.

    - **Called:** once per customer, after the customer is durable: when an event carries
      identities no known customer has, or when a customer is created through the API
      (`POST /v1/customers`, `hub.create_customer`). Notification: must not block.
    - **Receives:** `customer`, the new `Customer` (a person for one created by an event, with
      no traits yet); `event`, the `Event` that introduced them, or `None` when created
      through the API.
    - **Returns:** nothing.
    - **Awaitable:** no.
    - **First result wins:** no; every implementation is called.

    ```python
    import asyncio

    from prm_core.plugin import Customer, Event, hookimpl

    # a worker task elsewhere drains the queue and sends the welcome message
    welcome: asyncio.Queue[str] = asyncio.Queue()


    @hookimpl
    def prm_customer_created(customer: Customer, event: Event | None) -> None:
        if event is not None and customer.kind == "person":
            welcome.put_nowait(customer.id)
    ```
    """


@hookspec
def prm_customers_merged(merge: Merge) -> None:
    """Two customers turned out to be one: an event linked identities of both.

    - **Called:** after the merge is durable (it commits with the event that caused it).
      Notification: must not block.
    - **Receives:** `merge`, the audit record: `merged_id` now redirects to `survivor_id`
      (the older customer), `reason`, and the event that caused it as `cause_touchpoint` and
      `cause_event_id`. Events only ever merge people: an event linking a person to an
      organization or group does not merge them.
    - **Returns:** nothing.
    - **Awaitable:** no.
    - **First result wins:** no.

    ```python
    import asyncio

    from prm_core.plugin import Merge, hookimpl

    # drained by a task that keeps the external CRM in step
    crm_updates: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()


    @hookimpl
    def prm_customers_merged(merge: Merge) -> None:
        crm_updates.put_nowait(("link", merge.merged_id, merge.survivor_id))
    ```
    """


@hookspec
def prm_customers_unmerged(merge: Merge) -> None:
    """A merge was undone: the merged customer is a customer of its own again, with its
    identities, dialogues and events back.

    - **Called:** after the undo is durable, from `POST /v1/merges/{merge_id}/undo` or
      `hub.unmerge(merge_id)`. Notification: must not block.
    - **Receives:** `merge`, the same audit record as `prm_customers_merged` received, now
      with `undone_at` set.
    - **Returns:** nothing.
    - **Awaitable:** no.
    - **First result wins:** no.

    ```python
    import asyncio

    from prm_core.plugin import Merge, hookimpl

    crm_updates: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()


    @hookimpl
    def prm_customers_unmerged(merge: Merge) -> None:
        crm_updates.put_nowait(("unlink", merge.merged_id, merge.survivor_id))
    ```
    """


@hookspec
def prm_enrich_view(view: CustomerView) -> Mapping[str, Any] | Awaitable[Mapping[str, Any]] | None:
    """Adds sections of your own to a customer's 360-degree view.

    - **Called:** every time a view is built: `GET /v1/customers/{ref}`, the answers of
      `PATCH` and `POST /v1/customers`, `hub.view()`, and every request turn, whose
      `ValueRequest.view` carries the sections.
    - **Receives:** `view`, the `CustomerView` as the core built it (customer, identities, a
      page of the timeline, recent dialogues, metrics, memberships).
    - **Returns:** a mapping of section name to a JSON-able value, a coroutine giving one, or
      `None` to add nothing. Each section appears as a top-level field of the view's JSON and
      in `view.sections`; a section named like a core field (`id`, `traits`, ...) never
      replaces it. On a request turn the view's enrichments get half the budget; one still
      running then is cancelled, and one that raised is dropped; either is named
      `view:<plugin>` in `degraded`. Keep it bounded and quick: read what you already hold.
    - **Awaitable:** yes.
    - **First result wins:** no; the sections of all implementations are combined.

    ```python
    from collections.abc import Mapping
    from decimal import Decimal
    from typing import Any

    from prm_core.plugin import CustomerView, hookimpl


    @hookimpl
    def prm_enrich_view(view: CustomerView) -> Mapping[str, Any]:
        revenue = Decimal(view.metrics.get("lifetime_revenue") or 0)
        return {"loyalty": {"level": "gold" if revenue >= 1000 else "standard"}}
    ```
    """


@hookspec
def prm_customer_erased(customer_id: str, merged_ids: Sequence[str]) -> Awaitable[None] | None:
    """A customer was erased (`DELETE /v1/customers/{ref}`): purge the rows your plugin keeps about
    them (an outbox of partner messages, a cache, a copy in another system), and every copy it
    holds in memory: a buffer of messages kept for clients that reconnect, queued work, a cache
    of views or identities. A plugin that keeps personal data anywhere implements this hook.
    What the built-in plugins hold, and purge here:

    - `prm_callcenter` (screen pops) holds each agent's last pops (replayed with `?since=`),
      pops queued for each open socket, calls waiting for a pop and which agents were shown
      the customer: all dropped, in every hub process (PostgreSQL: through the screen-pop
      bus); a pop whose view was read before the erasure is not sent.
    - `prm_partner` (fulfillment streams) holds partner updates queued for open streams: the
      customer's updates are dropped.

    (Key caches hold no personal data; the IVR and the trackers hold nothing between requests.)

    - **Called:** after the core's part of the erasure is durable: profile traits, identities,
      event payloads, memberships and consents are gone, and the identities are tombstoned (see
      [privacy](privacy.md)). Erasure may be run again for the same customer and calls this
      again, so a purge must be harmless to repeat. It is called in the hub process that ran
      the erasure only: with several processes, tell the others (as the screen pops do, over
      PostgreSQL's `NOTIFY`).
    - **Receives:** `customer_id`, the erased customer; `merged_ids`, the ids of customers that
      were merged into it earlier (rows of yours may still name any of them).
    - **Returns:** `None`, or a coroutine that finishes when your rows are purged. One that
      raises is logged and named in the erasure's answer as `incomplete`; running the erasure
      again retries it.
    - **Awaitable:** yes.
    - **First result wins:** no; every implementation is called.

    ```python
    from collections.abc import Sequence

    from prm_core.plugin import hookimpl

    # what this plugin keeps per customer: messages waiting for a partner
    pending_messages: dict[str, list[dict[str, str]]] = {}


    @hookimpl
    async def prm_customer_erased(customer_id: str, merged_ids: Sequence[str]) -> None:
        for cid in (customer_id, *merged_ids):
            pending_messages.pop(cid, None)
    ```
    """


# -------------------------------------------------------------------------------------
# Dialogues
# -------------------------------------------------------------------------------------


@hookspec
def prm_dialogue_opened(dialogue: Dialogue, event: RecordedEvent) -> None:
    """A dialogue (a web visit, a call, a POS transaction) has begun.

    - **Called:** once per dialogue, after the event that opened it is durable: the first
      event with a new `dialogue` key; at a touch point with a `dialogue_timeout`, a
      customer's first event there or the first after a longer pause; otherwise every event
      without a `dialogue` key opens one. Notification: must not block.
    - **Receives:** `dialogue`, the `Dialogue` as it stands when its batch committed (if the
      same batch also closed it, its status is already `closed`); `event`, the
      `RecordedEvent` that opened it.
    - **Returns:** nothing.
    - **Awaitable:** no.
    - **First result wins:** no.

    ```python
    from prm_core.plugin import Dialogue, RecordedEvent, hookimpl

    kiosk_sessions: set[str] = set()


    @hookimpl
    def prm_dialogue_opened(dialogue: Dialogue, event: RecordedEvent) -> None:
        if dialogue.touchpoint == "kiosk":
            kiosk_sessions.add(dialogue.id)
    ```
    """


@hookspec
def prm_event_recorded(recorded: RecordedEvent) -> None:
    """An event is durable: the hook for screen pops, live dashboards and streaming out.

    - **Called:** once per event, after its batch committed; never for a duplicate (an event
      id the touch point sent before, or twice in one call). The answer a request turn records
      (type `delivery`, direction `outbound`) is an event too. Notification: runs on the ingest
      path, so hand the work to a queue.
    - **Receives:** `recorded`, the `RecordedEvent`: the `event` as parsed (identities
      normalized), the `customer_id` it belongs to (after any merge it caused) and its
      `dialogue_id`.
    - **Returns:** nothing.
    - **Awaitable:** no.
    - **First result wins:** no.

    ```python
    import asyncio
    import contextlib

    from prm_core.plugin import RecordedEvent, hookimpl

    screen_pops: asyncio.Queue[tuple[str, str]] = asyncio.Queue(maxsize=10_000)


    @hookimpl
    def prm_event_recorded(recorded: RecordedEvent) -> None:
        if recorded.event.type == "call.offered":
            with contextlib.suppress(asyncio.QueueFull):  # never block ingest: drop instead
                screen_pops.put_nowait((recorded.customer_id, recorded.event.id))
    ```
    """


@hookspec
def prm_event_changes(recorded: Sequence[RecordedEvent]) -> Iterable[NewChange] | None:
    """Adds changes of a plugin's own to the [change feed](feed.md) for events just recorded: a
    loyalty plugin announcing points earned, say. They are written in the recording
    transaction, so they are exactly as durable as the events.

    - **Called:** inside the recording transaction, once per batch of events, with the batch's
      new events (never duplicates), before it commits. Runs on the ingest writer: derive from
      the events only, no I/O.
    - **Receives:** `recorded`, the batch's new `RecordedEvent`s.
    - **Returns:** an iterable of `prm_core.feed.NewChange` (`type`, `customer_id`, `data`,
      optional `at`), or nothing. The type is dotted lower-case words and never one of the
      core's (`loyalty.earned`). An implementation that raises, or yields a change of another
      type, is logged with the plugin's name and left out; the events are recorded anyway.
    - **Awaitable:** no.
    - **First result wins:** no; every implementation is called.

    ```python
    from collections.abc import Iterator, Sequence

    from prm_core.plugin import NewChange, RecordedEvent, hookimpl


    @hookimpl
    def prm_event_changes(recorded: Sequence[RecordedEvent]) -> Iterator[NewChange]:
        for r in recorded:
            if r.event.type == "purchase":
                yield NewChange("loyalty.earned", r.customer_id, {"points": 10, "event_id": r.event.id})
    ```
    """


@hookspec
def prm_dialogue_closed(dialogue: Dialogue) -> None:
    """A dialogue has ended.

    - **Called:** once per dialogue, after the event that closed it is durable. An event closes
      its dialogue when it carries `data.outcome` (a string, kept as the dialogue's
      `outcome`), has type `dialogue.closed`, or has one of the touch point's `closes_on`
      types. A dialogue kept open by `dialogue_timeout` is closed by the customer's next event
      at that touch point after the timeout (there is no timer). Notification: must not block.
    - **Receives:** `dialogue`, the closed `Dialogue` (`status` `"closed"`, `outcome`,
      `intent`, `closed_at`).
    - **Returns:** nothing.
    - **Awaitable:** no.
    - **First result wins:** no.

    ```python
    import asyncio

    from prm_core.plugin import Dialogue, hookimpl

    surveys: asyncio.Queue[str] = asyncio.Queue()


    @hookimpl
    def prm_dialogue_closed(dialogue: Dialogue) -> None:
        if dialogue.outcome == "resolved":
            surveys.put_nowait(dialogue.customer_id)
    ```
    """


# -------------------------------------------------------------------------------------
# Value delivery
# -------------------------------------------------------------------------------------


@hookspec
def prm_propose_offers(request: ValueRequest) -> Iterable[Offer] | Awaitable[Iterable[Offer]] | None:
    """Proposes offers for this dialogue turn: a next best action, a cross-sell, a service.

    - **Called:** on every request turn, once per implementation; each implementation's
      result runs as its own task under the touch point's deadline.
    - **Receives:** `request`, the `ValueRequest`: `event` (the recorded request, with its
      customer and dialogue), `touchpoint`, `view` (the customer's view, with plugin sections)
      and `deadline`; `request.remaining_ms()` is what is left of the budget.
    - **Returns:** an iterable of `Offer` (a generator is fine), a coroutine giving one, or
      `None`. Offers from every implementation are ranked together by `score`, highest
      first, and the best five are delivered. An implementation still running at the deadline
      is cancelled, and one that raised is dropped; either is named `offers:<plugin>` in
      `degraded`.
    - **Awaitable:** yes.
    - **First result wins:** no; offers of all implementations are combined.

    ```python
    from collections.abc import Iterator

    from prm_core.plugin import Offer, ValueRequest, hookimpl


    @hookimpl
    def prm_propose_offers(request: ValueRequest) -> Iterator[Offer]:
        if not request.view.metrics.get("order_count"):
            yield Offer(code="welcome10", title="10% off your first order", score=0.6, source="welcome")
    ```

    The same hook written `async def`, for offers that need an await:

    ```python
    import asyncio

    from prm_core.plugin import Offer, ValueRequest, hookimpl


    async def recommend(customer_id: str, limit_ms: float) -> list[str]:
        await asyncio.sleep(0)  # a call to the recommender, bounded by limit_ms
        return ["dryer-200"]


    @hookimpl
    async def prm_propose_offers(request: ValueRequest) -> list[Offer]:
        codes = await recommend(request.event.customer_id, request.remaining_ms())
        return [Offer(code=code, title=f"Goes with your washer: {code}", score=0.4) for code in codes]
    ```
    """


@hookspec
def prm_plan_fulfillment(request: ValueRequest) -> Iterable[FulfillmentRequest] | None:
    """Decides what partner work this turn needs (book a technician, check stock, send a
    confirmation).

    - **Called:** on every request turn, before the deadline's tasks start; it runs inline,
      so decide from what `request` holds and return at once.
    - **Receives:** `request`, the turn's `ValueRequest`.
    - **Returns:** an iterable of `FulfillmentRequest` (a generator is fine) or `None`. Each
      one is handed to `prm_fulfill`, all of them concurrently, under the deadline. Give each
      an `idempotency_key` that stays the same when the touch point retries the turn.
    - **Awaitable:** no.
    - **First result wins:** no; the requests of all implementations are carried out.

    ```python
    from collections.abc import Iterator

    from prm_core.plugin import FulfillmentRequest, ValueRequest, hookimpl


    @hookimpl
    def prm_plan_fulfillment(request: ValueRequest) -> Iterator[FulfillmentRequest]:
        recorded = request.event
        if recorded.event.type == "service.request":
            yield FulfillmentRequest(
                id=f"ful-{recorded.event.id}",
                partner="acme-field",
                action="schedule",
                customer_id=recorded.customer_id,
                dialogue_id=recorded.dialogue_id,
                payload={"product_id": recorded.event.data.get("product_id")},
                idempotency_key=f"{recorded.event.touchpoint}:{recorded.event.id}",
            )
    ```
    """


@hookspec
def prm_fulfill(request: FulfillmentRequest) -> Awaitable[FulfillmentResult] | None:
    """Carries out partner work that `prm_plan_fulfillment` planned.

    - **Called:** once per planned `FulfillmentRequest`, on every implementation; return
      `None` at once (not from a coroutine) for a partner that is not yours.
    - **Receives:** `request`, the `FulfillmentRequest` (`partner`, `action`,
      `customer_id`, `dialogue_id`, `payload`, `idempotency_key`).
    - **Returns:** a coroutine giving a `FulfillmentResult` (`request_id`, `partner`,
      `status`: `confirmed`, `pending`, `rejected` or `failed`, and `data`), which appears in
      the delivery's `fulfillments`. One still running at the deadline is cancelled, and one
      that raised is dropped; either is named `partner:<partner>` in `degraded`. A partner
      that cannot answer in time should answer `pending` and finish the work in the
      background. A planned request that no implementation answers is named
      `partner:<partner>` in `degraded`.
    - **Awaitable:** yes.
    - **First result wins:** no; every implementation that answers is awaited.

    ```python
    from collections.abc import Awaitable

    from prm_core.plugin import FulfillmentRequest, FulfillmentResult, hookimpl


    async def schedule(request: FulfillmentRequest) -> FulfillmentResult:
        # call Acme's API here, passing request.idempotency_key
        return FulfillmentResult(
            request_id=request.id,
            partner=request.partner,
            status="pending",
            data={"slot": "next available"},
        )


    @hookimpl
    def prm_fulfill(request: FulfillmentRequest) -> Awaitable[FulfillmentResult] | None:
        if request.partner != "acme-field":
            return None
        return schedule(request)
    ```
    """


@hookspec(firstresult=True)
def prm_render_delivery(delivery: Delivery, touchpoint: TouchPoint) -> Mapping[str, Any] | None:
    """Renders a delivery in a touch point's own format: screen tiles for a kiosk, receipt lines
    for a till, a prompt for an IVR.

    - **Called:** once per request turn, after the deadline, when the `Delivery` is complete.
      Implementations are called one at a time (the most recently registered first, unless
      `@hookimpl(tryfirst=True)` or `trylast=True` say otherwise) until one answers.
    - **Receives:** `delivery`, the `Delivery` (`customer` summary, `knowledge`, ranked
      `offers`, `fulfillments`, `degraded`); `touchpoint`, the `TouchPoint` the request came
      from.
    - **Returns:** a JSON-able mapping, which becomes the answer's `delivery` field, or `None`
      to leave it to the next implementation. When none answers, the delivery is rendered as
      `delivery.to_json()`. The rest of the answer (`customer_id`, `dialogue_id`,
      `elapsed_ms`, `budget_ms`, `degraded`) is the core's. It runs after the deadline; an
      exception is logged and the delivery falls back to `delivery.to_json()`, so keep it a
      pure, quick function.
    - **Awaitable:** no.
    - **First result wins:** yes (`firstresult`): the first non-`None` result is used and the
      remaining implementations are not called.

    ```python
    from collections.abc import Mapping
    from typing import Any

    from prm_core.plugin import Delivery, TouchPoint, hookimpl


    @hookimpl
    def prm_render_delivery(delivery: Delivery, touchpoint: TouchPoint) -> Mapping[str, Any] | None:
        if touchpoint.name != "kiosk":
            return None
        return {
            "greeting": f"Hello {delivery.customer.get('name') or 'there'}",
            "tiles": [{"code": o.code, "title": o.title} for o in delivery.offers[:3]],
        }
    ```
    """


@hookspec
def prm_fulfillment_updated(fulfillment: Fulfillment) -> None:
    """Tells touch points that partner work changed status, so a result that came too late for
    the answer still reaches a customer who is waiting for it.

    - **Called:** after a fulfillment request's status changed and is durable: the partner
      answered (in time or late, possibly after retries), a partner's callback confirmed or
      completed it, or the outbox gave up (`failed`). The change is also recorded as a
      `fulfillment.updated` event in the dialogue that asked. A redelivered callback does not
      call it again. Never called for a request of a customer erased since it was made: a
      partner's late answer or callback about them is dropped (see [privacy](privacy.md#erasure)).
    - **Receives:** `fulfillment`, a `prm_core.outbox.Fulfillment` (`id`, `partner`, `role`,
      `action`, `status`: `pending`, `confirmed`, `rejected`, `failed` or `completed`,
      `customer_id`, `dialogue_id`, `touchpoint`, `data`); `fulfillment.to_json()` is its entry
      in the view's `fulfillments`.
    - **Returns:** nothing. It runs on the event loop: push to an open session or queue the
      work; an exception is logged with the plugin's name.
    - **Awaitable:** no.
    - **First result wins:** no; every implementation is called.

    ```python
    from prm_core.plugin import Fulfillment, hookimpl

    open_sessions: dict[str, list[dict]] = {}


    @hookimpl
    def prm_fulfillment_updated(fulfillment: Fulfillment) -> None:
        if fulfillment.dialogue_id in open_sessions:
            open_sessions[fulfillment.dialogue_id].append(fulfillment.to_json())
    ```
    """


# -------------------------------------------------------------------------------------
# Messages the hub sends on its own initiative
# -------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def prm_send_message(message: Message) -> MessageResult | Awaitable[MessageResult] | None:
    """Sends a message a trigger wrote on the channel of a touch point (email, SMS): the hub
    decides when and to whom, the touch point's plugin delivers.

    - **Called:** by the trigger engine in the background, when a `message` action of a
      trigger passed its guards (consent, quiet hours, frequency cap). Never on a request's
      path.
    - **Receives:** `message`, a `Message`: `id` (the same on every hand-over of this message,
      after a retry or a restart: use it as the idempotency key or Message-ID, so a message is
      never sent twice), `channel`, `customer_id`, `to` (the customer's address on the
      channel, or `None`), `subject`, `text`, `purpose` (`marketing` or `transactional`),
      `trigger`, the customer's `locale` and `first_name` traits (`None` unless texts), and
      `data`: for a survey (docs/surveys.md), `data["survey"]` (`kind`, `scale`,
      `about`, `question`, `expires_at`) and `data["survey_url"]`, the signed link of its
      answer page (`None` without `[surveys] base_url` or `[server] public_url`); `score_links(message.data)` gives one
      link per score, for an email that shows the scale itself. A customer's reply is recorded
      as an inbound `message.received` event (`data`: `channel`, `text`, `in_reply_to` the
      message's `id` when known): a reply to a survey that gives a score is its answer.
    - **Returns:** `None` when the channel is not yours; else a `MessageResult`, or a coroutine
      giving one: `sent` (with the provider's `ref`) or `failed` with a `reason` that retrying
      cannot fix (a bad address: the run is recorded `failed` with the reason). Raise for a
      failure a retry can fix (the server is down): the act is tried again with backoff. With
      no implementation answering, the run is recorded `failed`, undeliverable on that
      channel. The hub records the outbound `message.sent` event (`data.ref`: your `ref`) and
      change once you answer `sent`; the event's dialogue key is the message's `id`, so a
      reply you record at the same touch point with `dialogue` = that id joins its dialogue.
    - **Awaitable:** yes.
    - **First result wins:** yes; the first implementation answering for the channel sends.

    .. versionadded:: 0.2.0

    ```python
    from prm_core.plugin import Message, MessageResult, hookimpl

    sent_ids: dict[str, str] = {}  # message id -> provider's id: a message handed over again is not sent twice


    @hookimpl
    def prm_send_message(message: Message) -> MessageResult | None:
        if message.channel != "sms":
            return None
        if message.to is None:
            return MessageResult("failed", "no phone number")
        sent_ids.setdefault(message.id, f"sms-{len(sent_ids) + 1}")  # the provider's API call goes here
        return MessageResult("sent", ref=sent_ids[message.id])
    ```
    """
