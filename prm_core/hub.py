"""The hub as a library: what platform teams embed, and what the HTTP server wraps.

.. code-block:: python

    async with Hub.open(load_config(), plugins=[my_touchpoint]) as hub:
        recorded = await hub.record(hub.parse_events(body, "web"))
        view = await hub.view("email:ann@example.com")
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
import structlog
from attrs import define, evolve, field
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from . import merging
from .config import Config
from .delivery import Answer, deliver_value
from .errors import ConfigError, InvalidInput, NotFound
from .events import EARLIEST, FUTURE_SKEW, check_window, parse_events
from .feed.changes import NewChange
from .feed.feed import Feed
from .feed.relay import Relay, open_destinations
from .feed.writing import emit
from .hooks import Hooks
from .identity import parse_ref
from .identity_rules import IdentityRules
from .ids import new_id
from .ingest import Ingestor
from .journal import Accepted, Journal, JournalSettings, Processor
from .labels import merge_labels
from .logs import protect_logs
from .model import (
    CHANNELS,
    Customer,
    CustomerView,
    Event,
    Identity,
    Merge,
    Offer,
    RecordedEvent,
    TouchPoint,
    ValueProvider,
)
from .outbox import Fulfillment, Outbox, fulfillments_of_dialogue
from .planning import Planner
from .planning.knowledge import catalog_provider
from .planning.planner import RESPONSES
from .plugins import PrmPluginManager, Registrations, collect_registrations, make_plugin_manager
from .privacy.tombstones import load_tombstone_key
from .recording import IngestRules
from .store import Store
from .store.engine import advisory_locks, customer_lock_key, identity_lock_key
from .store.tables import (
    customers,
    dialogues,
    erasures,
    events,
    identities,
    memberships,
    merges,
    shared_links,
    utcnow,
    webhook_receipts,
)
from .surveys import Surveys, SurveySettings
from .surveys.links import check_survey_links
from .triggers.engine import TriggerEngine, message_changes, open_triggers
from .view import build_view, resolve_ref

__all__ = ["Hub", "answer_id"]

KINDS = ("person", "organization", "group")
log = structlog.get_logger(__name__)


@define
class Hub:
    """A running hub: plugins, registrations, the store and the ingest writer."""

    config: Config
    pm: PrmPluginManager
    registrations: Registrations
    store: Store
    hooks: Hooks
    ingestor: Ingestor
    planner: Planner
    feed: Feed
    relay: Relay = None  # type: ignore[assignment]  # set in open(), once the feed runs
    outbox: Outbox = None  # type: ignore[assignment]  # set in open(): it needs the hub
    triggers: TriggerEngine = None  # type: ignore[assignment]  # set in open(): it needs the hub
    surveys: Surveys = None  # type: ignore[assignment]  # set in open(): it needs the hub
    # event type -> words for people (prm_core.labels), collected once at start
    event_labels: Mapping[str, str] = field(factory=dict)
    # [ingest] journal = true: fire-and-forget events are journaled, then processed (prm_core.journal)
    journal: Journal | None = None
    processor: Processor | None = None
    # synchronous writes that went ahead after waiting [ingest].sync_wait_ms for the journal
    sync_wait_expired: int = 0

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        config: Config,
        *,
        plugins: Sequence[Any] = (),
        autoload: bool = False,
        migrate: bool = True,
        pm: PrmPluginManager | None = None,
        registrations: Registrations | None = None,
        journal_processor: Literal["here", "elsewhere", "only"] = "here",
    ) -> AsyncIterator[Hub]:
        """Start a hub (migrating the database unless told not to) and stop it on exit.

        The hub runs the ``plugins`` given and no other: a library loads what its caller
        names. ``autoload=True`` loads every installed plugin first (entry points of group
        ``prm``), as ``prm serve`` does, unless ``PRM_DISABLE_PLUGIN_AUTOLOAD`` is set. A
        caller that already built the plugin manager passes it as ``pm``. What the hub logs
        is redacted whatever logging the caller set up (:func:`prm_core.logs.protect_logs`).

        With ``[ingest] journal = true``, ``journal_processor`` says where the journal is
        processed: ``"here"`` (a task beside the hub), ``"elsewhere"`` (processes of their own;
        this hub only follows their progress), or ``"only"`` (this process is such a processor:
        it runs no relay, outbox, triggers or ``prm_hub_started`` hooks).
        """
        protect_logs()
        # autoloading stays subject to the environment's switches (PRM_DISABLE_PLUGIN_AUTOLOAD)
        pm = pm or make_plugin_manager(plugins, autoload=None if autoload else False)
        registrations = registrations or collect_registrations(pm, config)
        planner = Planner.from_config(config)  # an invalid rule stops the hub here, named
        identity_rules = IdentityRules.from_config(
            config.section("identity").get("rules", {}), registrations.namespaces.items, config.default_region
        )
        if planner.catalog.items and "catalog" not in registrations.value_providers:
            provider: ValueProvider = catalog_provider(planner.catalog)
            registrations.value_providers.add(provider.name, provider, "prm_core.planning")
        store = Store.open(  # connects lazily
            config.database_url, busy_timeout_ms=int(config.section("database").get("busy_timeout_ms", 5000))
        )
        # a bad [destinations.*] setting stops the hub here, named, before the database is touched
        destinations = open_destinations(config, registrations.destination_kinds, store.read)
        triggers = open_triggers(config, registrations)  # likewise a broken [triggers.NAME]
        survey_settings = SurveySettings.from_config(config)  # and [surveys]
        for trigger in triggers[1].values():
            check_survey_links(trigger, survey_settings, config=True)
        feed = Feed.from_config(config, store)
        journal_settings = JournalSettings.from_config(config.section("ingest"))
        journal = Journal.open(store, journal_settings, config.database_url) if journal_settings.enabled else None
        if journal is None and journal_processor == "only":
            raise ConfigError("processing the journal needs [ingest] journal = true")
        services = journal_processor != "only"
        try:
            if migrate:
                await store.migrate()
            hooks = Hooks(pm)
            privacy = config.section("privacy")
            tombstone_key = await store.read(lambda conn: load_tombstone_key(conn, privacy))
            rules = IngestRules(
                touchpoints=dict(registrations.touchpoints.items),
                shared_namespaces=frozenset(ns.name for ns in registrations.namespaces if ns.shared)
                | _configured_shared(config, registrations),
                after_write=planner.after_write if planner.on_ingest else None,
                tombstone_key=tombstone_key,
                identity=identity_rules,
                event_changes=_event_changes(hooks),
            )
            ingestor = Ingestor(
                store,
                rules,
                hooks.batch_committed,
                max_pending=int(config.section("server").get("max_pending_events", 50_000)),
            )
            hub = cls(config, pm, registrations, store, hooks, ingestor, planner, feed)
            told_started = False
            try:  # whatever started is stopped again, also when a later step of the start fails
                await feed.start(hear_others=services)  # a processor's feed has no readers
                ingestor.start()
                if journal is not None:
                    await journal.start(follow=journal_processor == "elsewhere")
                    hub.journal = journal
                    if journal_processor != "elsewhere":
                        batch = journal_settings.batch
                        hub.processor = Processor(
                            journal,
                            store,
                            rules,
                            hooks.batch_committed,
                            batch=batch,
                            batch_ms=journal_settings.batch_ms,
                        )
                        hub.processor.start()
                hub.event_labels = merge_labels(reversed(pm.hook.prm_event_labels(config=config)))
                if services:
                    # delivery to destinations runs in its own tasks: a destination that is down never slows ingest
                    hub.relay = Relay(store, destinations, feed.signal, lease_s=feed.lease_s)
                    await hub.relay.start()
                    # partner work left by a previous run (or another hub's crash) is dispatched from here
                    hub.outbox = Outbox.from_config(hub)
                    hub.outbox.start()
                    # before the triggers: a survey message's link is signed with its key
                    hub.surveys = Surveys(hub, survey_settings, lease_s=feed.lease_s)
                    await hub.surveys.start()
                    hub.triggers = TriggerEngine(hub, *triggers, lease_s=feed.lease_s)
                    told_started = True
                    await hooks.hub_started(hub)
                    # after the plugins started: a touch point's sender (SMS, email) is ready
                    # before the first message a trigger hands it
                    await hub.triggers.start()
                yield hub
            finally:
                for service in (hub.triggers, hub.surveys, hub.relay, hub.outbox):
                    if service is not None:
                        await service.stop()
                if told_started:
                    # before the ingest writer stops: what a plugin records while it closes (a call
                    # event the switch sent a moment ago) is still written
                    await hooks.hub_stopping(hub)
                await ingestor.stop()
                if journal is not None:
                    await journal.stop_writer()  # what callers handed it is journaled; the rest waits
                if hub.processor is not None:
                    await hub.processor.stop()
                await feed.stop()
        finally:
            if journal is not None:
                await journal.close()
            await store.dispose()

    # ---- ingest ----------------------------------------------------------------------

    def touchpoint(self, name: str) -> TouchPoint:
        tp = self.registrations.touchpoints.get(name)
        if tp is None:
            raise NotFound(f"no touch point {name!r}; registered: {', '.join(self.registrations.touchpoints.names())}")
        return tp

    def parse_events(self, body: Any, touchpoint: str) -> list[Event]:
        """Validate a request body (``{"events": [...]}`` or one Event) for ``touchpoint``."""
        self.touchpoint(touchpoint)
        return parse_events(body, touchpoint, self.registrations.namespaces.items, self.config.default_region)

    async def record(self, events: Sequence[Event]) -> list[RecordedEvent]:
        """Record events durably (group commit); duplicates come back flagged, unchanged.

        An event dated outside :func:`prm_core.events.in_window` is refused (422 naming
        ``occurred_at``), whichever plugin made it, and nothing of its batch is written.

        With the journal on, this synchronous path first waits until the processor has
        recorded every journaled event naming one of these events' identities or dialogue
        keys (:meth:`prm_core.journal.Journal.recent_position`), so it never works from a stale
        view of the customers it touches; events of other people do not hold it up."""
        now = utcnow()
        for ev in events:
            self.touchpoint(ev.touchpoint)
            check_window(ev.occurred_at, "occurred_at", now)
        journal = self.journal
        if journal is not None and journal.head > journal.processed:
            needed = journal.recent_position(events)
            if needed > journal.processed:
                if not await journal.wait_processed(needed, journal.settings.sync_wait_ms / 1000):
                    self.sync_wait_expired += 1
                    log.warning("synchronous write went ahead of the journal", depth=journal.depth)
        return await self.ingestor.record(events)

    async def accept(self, events: Sequence[Event]) -> Accepted:
        """Take fire-and-forget events: journaled (then processed behind) when ``[ingest]
        journal`` is on, else recorded as :meth:`record` does. Either way durable on return;
        ``position`` is what :meth:`processed_after` waits for (0 without the journal)."""
        if self.journal is None:
            recorded = await self.record(events)
            flags = tuple(r.duplicate for r in recorded)
            return Accepted(len(flags) - sum(flags), sum(flags), 0, flags)
        now = utcnow()
        latest = now + FUTURE_SKEW
        known: set[str] = set()
        for ev in events:  # as record() checks them, each touch point looked up once
            if ev.touchpoint not in known:
                self.touchpoint(ev.touchpoint)
                known.add(ev.touchpoint)
            if not EARLIEST <= ev.occurred_at <= latest:
                check_window(ev.occurred_at, "occurred_at", now)  # raises, naming which end
        if any(_judged_at_once(ev) for ev in events):
            # an answer to an offer is checked against the offer (one dated before it is refused,
            # 422 naming occurred_at), which only recording can do: its batch is recorded now,
            # whole and in order (an identify before it may decide whose offer it answers), as
            # without the journal. The position covers what this caller journaled before.
            recorded = await self.record(events)
            flags = tuple(r.duplicate for r in recorded)
            return Accepted(len(flags) - sum(flags), sum(flags), self.journal.head, flags)
        return await self.journal.append(events)

    async def processed_after(self, position: int, timeout_s: float | None = None) -> bool:
        """Whether everything accepted up to journal ``position`` is recorded, waiting at most
        ``timeout_s`` (default ``[ingest].read_wait_ms``). Always true without the journal."""
        if self.journal is None:
            return True
        if timeout_s is None:
            timeout_s = self.journal.settings.read_wait_ms / 1000
        return await self.journal.wait_processed(position, timeout_s)

    async def request(self, event: Event) -> Answer:
        """Record a request turn, deliver value within its touch point's budget, record the answer."""
        started = time.monotonic()
        tp = self.touchpoint(event.touchpoint)
        (recorded,) = await self.record([event])
        answered = asyncio.Event()  # partner outcomes are recorded behind the answer (prm_core.outbox)
        try:
            answer = await deliver_value(self, recorded, tp, started, answered)
        finally:
            # set just before the answer is queued for the writer: the outcomes of the partners
            # that answered in time are queued right behind it and share its transaction and
            # commit, rather than taking one more of their own
            answered.set()
        return await self._record_answer(event, tp, recorded, answer, started)

    async def _record_answer(
        self, event: Event, tp: TouchPoint, recorded: RecordedEvent, answer: Answer, started: float
    ) -> Answer:
        outbound = Event(
            id=answer_id(event.id),
            type="delivery",
            occurred_at=utcnow(),
            touchpoint=tp.name,
            dialogue_id=recorded.dialogue_id,
            direction="outbound",
            data={
                "in_reply_to": event.id,
                "offers": [o.code for o in answer.delivery.offers],
                "fulfillments": [f.request_id for f in answer.delivery.fulfillments],
                "degraded": list(answer.delivery.degraded),
                # what planning keeps the scorecard and offer responses with (prm_core.planning)
                "offers_made": [_offer_made(o) for o in answer.delivery.offers],
                "held_out": [_offer_made(o) for o in answer.held_out],
                "elapsed_ms": round(answer.elapsed_ms, 1),
                "budget_ms": answer.budget_ms,
            },
        )
        await self.record([outbound])
        return evolve(answer, elapsed_ms=(time.monotonic() - started) * 1000)

    # ---- customers -------------------------------------------------------------------

    async def resolve(self, ref: str) -> str:
        """The id of the customer ``ref`` names (an id or ``namespace:value``)."""
        namespaces = self.registrations.namespaces.items
        return await self.store.read(lambda conn: resolve_ref(conn, ref, namespaces, self.config.default_region))

    async def view(self, ref: str, *, cursor: str | None = None, limit: int = 20) -> CustomerView:
        """The 360-degree view, with sections from ``prm_enrich_view`` plugins."""
        view, _late = await self.view_until(ref, None, cursor=cursor, limit=limit)
        return view

    async def view_until(
        self, ref: str, deadline: float | None, *, cursor: str | None = None, limit: int = 20
    ) -> tuple[CustomerView, list[str]]:
        """The view, with enrichments that finish before ``deadline`` (``time.monotonic()``).

        Returns the view and the names (``view:<plugin>``) of enrichments that were late or
        failed and are left out.
        """
        namespaces = self.registrations.namespaces.items

        def read(conn: Connection) -> CustomerView:
            cid = resolve_ref(conn, ref, namespaces, self.config.default_region)
            return self.planner.annotate(conn, build_view(conn, cid, cursor=cursor, limit=limit), utcnow())

        view = await self.store.read(read)
        enrichers = {f"view:{plugin}": asyncio.ensure_future(work) for plugin, work in self.hooks.enrich_view(view)}
        if not enrichers:
            return view, []
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        await asyncio.wait(enrichers.values(), timeout=timeout)
        sections: dict[str, Any] = {}
        left_out: list[str] = []
        for name, task in enrichers.items():
            if not task.done():
                task.cancel()
                left_out.append(name)
            elif task.exception() is not None:
                log.error("hook failed", hook="prm_enrich_view", plugin=name[5:], error=type(task.exception()).__name__)
                left_out.append(name)
            elif isinstance(task.result(), Mapping):
                sections.update(task.result())
        # the core's own sections (fulfillments, value) first: a plugin's section of that name wins
        return (evolve(view, sections={**view.sections, **sections}) if sections else view), left_out

    async def create_customer(self, kind: str, traits: Mapping[str, Any] | None = None) -> Customer:
        """Create a customer by hand (an organization or household, typically)."""
        if kind not in KINDS:
            raise InvalidInput(f"kind must be one of {', '.join(KINDS)}", "kind")
        now = utcnow()
        customer = Customer(id=new_id("cus"), kind=kind, traits=dict(traits or {}), created_at=now)  # type: ignore[arg-type]

        def write(conn: Connection) -> None:
            conn.execute(
                customers.insert().values(
                    id=customer.id, kind=kind, traits=dict(customer.traits), created_at=now, updated_at=now
                )
            )
            emit(conn, _created(customer.id, kind, customer.traits, now))

        await self.store.write(write)
        self.hooks.customer_created(customer, None)
        return customer

    async def update_customer(self, ref: str, changes: Mapping[str, Any]) -> CustomerView:
        """Apply a PATCH: ``traits`` (merged; null removes a key), ``tier`` (by hand; null
        returns it to the rules), ``kind``, ``memberships`` (``{"add": [...], "remove": [...]}``)."""
        unknown = set(changes) - {"traits", "tier", "kind", "memberships"}
        if unknown:
            raise InvalidInput(f"unknown field {sorted(unknown)[0]!r}", sorted(unknown)[0])
        traits = changes.get("traits")
        if traits is not None and not isinstance(traits, Mapping):
            raise InvalidInput("traits must be an object", "traits")
        if (
            "tier" in changes
            and changes["tier"] is not None
            and not (isinstance(changes["tier"], str) and 0 < len(changes["tier"]) <= 64)
        ):
            raise InvalidInput("tier must be a name of at most 64 characters, or null", "tier")
        if "kind" in changes and changes["kind"] not in KINDS:
            raise InvalidInput(f"kind must be one of {', '.join(KINDS)}", "kind")
        adds, removes = _membership_changes(changes.get("memberships"))
        namespaces = self.registrations.namespaces.items
        now = utcnow()

        def write(conn: Connection) -> str:
            cid = _lock_customer(conn, resolve_ref(conn, ref, namespaces, self.config.default_region))
            row = conn.execute(sa.select(customers).where(customers.c.id == cid)).one()
            values: dict[str, Any] = {"updated_at": now}
            if traits is not None:
                merged = {**row.traits, **traits}
                values["traits"] = {k: v for k, v in merged.items() if v is not None}
            if "tier" in changes:
                values["tier"] = changes["tier"]
                values["tier_source"] = "manual" if changes["tier"] is not None else None
            if "kind" in changes:
                values["kind"] = changes["kind"]
            conn.execute(customers.update().where(customers.c.id == cid).values(**values))
            told = {k: v for k, v in values.items() if k != "updated_at"}
            if told:
                emit(conn, NewChange("customer.updated", cid, told, at=now))
            for item in adds:
                try:
                    group = resolve_ref(conn, item["group"], namespaces, self.config.default_region)
                except NotFound:
                    # the customer being changed exists; a group it names that does not is bad input
                    where = f"memberships.add[{item['position']}]"
                    raise InvalidInput(f"{where}: no group {item['group']}", where) from None
                kind = conn.execute(sa.select(customers.c.kind).where(customers.c.id == group)).scalar_one()
                if kind == "person":
                    raise InvalidInput("memberships.add: a person cannot have members", "memberships.add")
                if group == cid:
                    raise InvalidInput("memberships.add: a customer cannot be its own member", "memberships.add")
                exists = conn.execute(
                    sa.select(memberships.c.group_id).where(
                        memberships.c.group_id == group, memberships.c.member_id == cid
                    )
                ).first()
                if exists is None:
                    conn.execute(
                        memberships.insert().values(
                            group_id=group, member_id=cid, role=item.get("role"), created_at=now
                        )
                    )
            for group_ref in removes:
                group = resolve_ref(conn, group_ref, namespaces, self.config.default_region)
                conn.execute(
                    memberships.delete().where(memberships.c.group_id == group, memberships.c.member_id == cid)
                )
            if changes.get("tier", "") is None or traits is not None or "kind" in changes:
                # back to the rules, or facts the rules read changed: the rule tier is current at once
                self.planner.refresh_tiers(conn, [cid], now)
            return cid

        cid = await self.store.write(write)
        return await self.view(cid)

    async def add_traits(self, traits_by_customer: Mapping[str, Mapping[str, Any]]) -> None:
        """Merge traits learnt at a touch point (a Segment ``identify``) into customers' profiles.

        Later values win; ``None`` values are ignored (a tracker not knowing a trait is not
        the customer removing it). One transaction for all.
        """
        if not traits_by_customer:
            return
        now = utcnow()

        def write(conn: Connection) -> None:
            changed = []
            for ref, traits in sorted(traits_by_customer.items()):
                cid = _lock_customer(conn, ref)
                current = conn.execute(sa.select(customers.c.traits).where(customers.c.id == cid)).scalar_one()
                merged = {**current, **{k: v for k, v in traits.items() if v is not None}}
                if merged != current:
                    conn.execute(customers.update().where(customers.c.id == cid).values(traits=merged, updated_at=now))
                    emit(conn, NewChange("customer.updated", cid, {"traits": merged}, at=now))
                    changed.append(cid)
            self.planner.refresh_tiers(conn, changed, now)  # tier rules may read traits

        await self.store.write(write)

    async def suppress(
        self,
        customer_id: str,
        channel: str,
        *,
        suppress: bool = True,
        traits: Mapping[str, Any] | None = None,
    ) -> bool:
        """Add ``channel`` to the customer's ``suppressed`` trait (``suppress=False``: take it
        out), and set ``traits`` beside it, why (``{"email_undeliverable": ...}``; ``None``
        removes a trait). The trigger guards send nothing on a suppressed channel.

        ``suppressed`` is a list of channels; ``true`` (every channel, set by hand) is left as it
        is, and a list left empty is removed. ``customer_id`` is a customer id (followed through
        merges) or a ``namespace:value`` ref. The customer's traits are read and written in one
        transaction holding the customer's lock, so suppressions of two channels at once both
        stay; a change is a ``customer.updated`` on the change feed, as a trait update is.

        Returns ``False``, writing nothing, for a customer that is unknown or erased (a bounce
        arriving after the erasure), else ``True``.
        """
        if channel not in CHANNELS:
            raise InvalidInput(f"channel must be one of {', '.join(sorted(CHANNELS))}", "channel")
        if traits is not None and not isinstance(traits, Mapping):
            raise InvalidInput("traits must be an object", "traits")
        if traits is not None and "suppressed" in traits:
            raise InvalidInput("traits: suppressed is set by the channel, not as a trait", "traits.suppressed")
        namespaces = self.registrations.namespaces.items
        now = utcnow()

        def write(conn: Connection) -> bool:
            try:
                cid = _lock_customer(conn, resolve_ref(conn, customer_id, namespaces, self.config.default_region))
            except NotFound:
                return False
            if conn.execute(sa.select(erasures.c.customer_id).where(erasures.c.customer_id == cid)).first():
                return False
            current = conn.execute(sa.select(customers.c.traits).where(customers.c.id == cid)).scalar_one()
            merged: dict[str, Any] = {**current, **(traits or {})}
            listed = current.get("suppressed")
            if listed is not True:
                channels = [c for c in listed if isinstance(c, str)] if isinstance(listed, list) else []
                if suppress and channel not in channels:
                    merged["suppressed"] = [*channels, channel]
                elif not suppress and channel in channels:
                    merged["suppressed"] = [c for c in channels if c != channel] or None
            merged = {k: v for k, v in merged.items() if v is not None}
            if merged != current:
                conn.execute(customers.update().where(customers.c.id == cid).values(traits=merged, updated_at=now))
                emit(conn, NewChange("customer.updated", cid, {"traits": merged}, at=now))
                self.planner.refresh_tiers(conn, [cid], now)  # tier rules may read traits
            return True

        return await self.store.write(write)

    async def join_group(
        self,
        member_id: str,
        group: Identity,
        *,
        kind: str = "organization",
        traits: Mapping[str, Any] | None = None,
    ) -> str:
        """Make ``member_id`` a member of the group that owns identity ``group`` (Segment's
        ``groupId`` as ``account_id``), creating that group customer when it is new.

        Returns the group's id. An identity owned by a person is never turned into a group.
        """
        if kind not in KINDS or kind == "person":
            raise InvalidInput("kind must be organization or group", "kind")
        now = utcnow()

        def write(conn: Connection) -> str:
            advisory_locks(conn, [identity_lock_key(group.namespace, group.value)])
            member = _lock_customer(conn, member_id)
            c = identities.c
            owner = conn.execute(
                sa.select(c.customer_id).where(c.namespace == group.namespace, c.value == group.value)
            ).scalar_one_or_none()
            if owner is None:
                owner = new_id("cus")
                conn.execute(
                    customers.insert().values(
                        id=owner, kind=kind, traits=dict(traits or {}), created_at=now, updated_at=now
                    )
                )
                emit(conn, _created(owner, kind, traits or {}, now))
                conn.execute(
                    identities.insert().values(
                        namespace=group.namespace, value=group.value, customer_id=owner, shared=False, first_seen_at=now
                    )
                )
            else:
                owner = _follow(conn, owner)
                row = conn.execute(sa.select(customers.c.kind, customers.c.traits).where(customers.c.id == owner)).one()
                if row.kind == "person":
                    raise InvalidInput(f"{group.namespace} names a person, not a group", "group")
                if traits and {**row.traits, **traits} != row.traits:
                    conn.execute(
                        customers.update()
                        .where(customers.c.id == owner)
                        .values(traits={**row.traits, **traits}, updated_at=now)
                    )
                    emit(conn, NewChange("customer.updated", owner, {"traits": {**row.traits, **traits}}, at=now))
            if owner != member:
                exists = conn.execute(
                    sa.select(memberships.c.group_id).where(
                        memberships.c.group_id == owner, memberships.c.member_id == member
                    )
                ).first()
                if exists is None:
                    conn.execute(memberships.insert().values(group_id=owner, member_id=member, created_at=now))
            return str(owner)

        return await self.store.write(write)

    async def merges(self, ref: str) -> list[Merge]:
        """Merges into (or out of) a customer, newest first."""
        namespaces = self.registrations.namespaces.items

        def read(conn: Connection) -> list[Merge]:
            cid = resolve_ref(conn, ref, namespaces, self.config.default_region)
            q = (
                sa.select(merges)
                .where(sa.or_(merges.c.survivor_id == cid, merges.c.merged_id == cid))
                .order_by(merges.c.merged_at.desc())
                .limit(100)
            )
            return [merging.merge_value(r) for r in conn.execute(q)]

        return await self.store.read(read)

    async def unmerge(self, merge_id: str) -> Merge:
        """Undo a merge; see :func:`prm_core.merging.unmerge`."""
        now = utcnow()

        def write(conn: Connection) -> Merge:
            merge = merging.unmerge(conn, merge_id, now=now)
            self.planner.rebuild_value(conn, [merge.survivor_id, merge.merged_id])
            return merge

        merge = await self.store.write(write)
        self.hooks.customers_unmerged(merge)
        return merge

    async def set_shared(self, ref: str, shared: bool) -> dict[str, Any]:
        """Mark one identity value shared (a household phone) or not.

        A shared value links customers without merging them: it stays in its first owner's
        view, and each customer seen with it gets a link. Unsharing gives it back to its
        first owner; a value shared before anyone owned it is simply forgotten.
        """
        ident = parse_ref(ref, self.registrations.namespaces.items, self.config.default_region, field="identity")
        value = ident.value
        now = utcnow()

        def write(conn: Connection) -> dict[str, Any]:
            advisory_locks(conn, [identity_lock_key(ident.namespace, value)])
            c = identities.c
            where = (c.namespace == ident.namespace, c.value == value)
            row = conn.execute(sa.select(identities).where(*where)).one_or_none()
            owner = row.customer_id if row else None
            if row is None and shared:
                conn.execute(
                    identities.insert().values(
                        namespace=ident.namespace, value=value, customer_id=None, shared=True, first_seen_at=now
                    )
                )
            elif row is not None and not shared and owner is None:
                conn.execute(identities.delete().where(*where))
            elif row is not None:
                conn.execute(identities.update().where(*where).values(shared=shared))
            if shared and row is not None and owner is not None:
                link = shared_links.c
                exists = conn.execute(
                    sa.select(link.customer_id).where(
                        link.namespace == ident.namespace, link.value == value, link.customer_id == owner
                    )
                ).first()
                if exists is None:
                    # event time, like every other link, so "most recently seen" compares like with like
                    conn.execute(
                        shared_links.insert().values(
                            namespace=ident.namespace, value=value, customer_id=owner, last_seen_at=row.first_seen_at
                        )
                    )
            return {"namespace": ident.namespace, "value": value, "shared": shared, "customer_id": owner}

        return await self.store.write(write)

    # -- what plugins read back and remember (the core's tables stay the core's) --

    async def recorded(self, touchpoint: str, event_ids: Sequence[str]) -> dict[str, RecordedEvent]:
        """The events recorded at ``touchpoint`` under these ids, by id; an id never recorded
        is absent. A touch point reads back what it recorded before: the turn a retried call
        already got, the sale a void names. ``customer_id`` is the customer's current id
        (after merges); ``duplicate`` is false."""
        wanted = list(dict.fromkeys(event_ids))
        if not wanted:
            return {}

        def read(conn: Connection) -> dict[str, RecordedEvent]:
            e = events.c
            q = sa.select(events).where(e.touchpoint == touchpoint, e.event_id.in_(wanted))
            return {row.event_id: _recorded(row) for row in conn.execute(q)}

        return await self.store.read(read)

    async def find_event_id(self, touchpoint: str, *, type: str, prefix: str = "", suffix: str = "") -> str | None:
        """The id of one event of ``type`` recorded at ``touchpoint`` whose id starts with
        ``prefix`` and ends with ``suffix`` (matched literally: ``%`` and ``_`` are plain
        characters), or ``None``. For ids built from keys, when a caller knows only some of
        them (a vendor's refund names its order, not the order's business day)."""

        def escaped(text: str) -> str:
            return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")

        def read(conn: Connection) -> str | None:
            e = events.c
            q = (
                sa.select(e.event_id)
                .where(e.touchpoint == touchpoint, e.type == type)
                .where(e.event_id.like(f"{escaped(prefix)}%{escaped(suffix)}", escape="\\"))
                .limit(1)
            )
            found: str | None = conn.execute(q).scalar_one_or_none()
            return found

        return await self.store.read(read)

    async def latest_sent_message(
        self, ref: str, *, touchpoint: str, channel: str | None = None
    ) -> RecordedEvent | None:
        """The latest message the hub sent to the customer ``ref`` names (an id or
        ``namespace:value``, followed through merges) from ``touchpoint`` (on ``channel``,
        when given): its ``message.sent`` event, whose ``data["message_id"]`` is the
        ``Message.id`` and ``dialogue_id`` its dialogue; ``None`` when the hub sent them none
        there, or ``ref`` names no customer. A touch point threads a customer's answer into
        it. One query, on the customer's timeline index, newest first."""
        namespaces = self.registrations.namespaces.items

        def read(conn: Connection) -> RecordedEvent | None:
            try:
                cid = resolve_ref(conn, ref, namespaces, self.config.default_region)
            except NotFound:
                return None
            e = events.c
            q = sa.select(events).where(
                e.customer_id == cid, e.touchpoint == touchpoint, e.type == "message.sent", e.direction == "outbound"
            )
            if channel is not None:
                q = q.where(e.data["channel"].as_string() == channel)
            row = conn.execute(q.order_by(e.occurred_at.desc(), e.seq.desc()).limit(1)).first()
            return _recorded(row) if row is not None else None

        return await self.store.read(read)

    async def shared_identities(self, seen: Sequence[Identity]) -> list[Identity]:
        """Those of ``seen`` that are shared (a household phone): marked so with
        :meth:`set_shared`, or in a namespace that is shared (declared by its plugin or in
        ``[identity] shared_namespaces``). A shared value links customers without merging them."""
        shared_ns = self.ingestor.rules.shared_namespaces
        found = [i for i in seen if i.namespace in shared_ns]
        rest = [i for i in seen if i.namespace not in shared_ns]
        if not rest:
            return found

        def read(conn: Connection) -> set[tuple[str, str]]:
            c = identities.c
            q = sa.select(c.namespace, c.value).where(
                c.value.in_({i.value for i in rest}), c.namespace.in_({i.namespace for i in rest}), c.shared.is_(True)
            )
            return {(r.namespace, r.value) for r in conn.execute(q)}

        marked = await self.store.read(read)
        return found + [i for i in rest if (i.namespace, i.value) in marked]

    async def delivery_processed(self, source: str, delivery_id: str) -> bool:
        """Whether a vendor's webhook delivery (``source`` names the vendor) was marked
        processed with :meth:`mark_delivery_processed`: a redelivery is then acknowledged
        without being processed again."""
        c = webhook_receipts.c

        def read(conn: Connection) -> bool:
            q = sa.select(c.webhook_id).where(c.source == source, c.webhook_id == delivery_id[:200])
            return conn.execute(q).first() is not None

        return await self.store.read(read)

    async def mark_delivery_processed(self, source: str, delivery_id: str) -> bool:
        """Remember a webhook delivery as processed (idempotent). Mark it once its events are
        durable: a crash in between means one more processing, whose events are duplicates.

        Returns whether this call marked it (``False``: it was marked already). Marked before
        processing, it claims a one-time value atomically: of two concurrent calls with the
        same ``delivery_id``, one gets ``True`` (a vendor's signature nonce, spent once)."""
        now = utcnow()

        def write(conn: Connection) -> bool:
            insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
            stmt = insert(webhook_receipts).values(source=source, webhook_id=delivery_id[:200], received_at=now)
            return bool(conn.execute(stmt.on_conflict_do_nothing()).rowcount == 1)

        return await self.store.write(write)

    async def dialogue_fulfillments(self, touchpoint: str, dialogue_id: str) -> list[Fulfillment] | None:
        """The partner work a dialogue of ``touchpoint`` requested, newest first; ``None``
        when the hub has no such dialogue at that touch point."""

        def read(conn: Connection) -> list[Fulfillment] | None:
            d = dialogues.c
            found = conn.execute(sa.select(d.id).where(d.id == dialogue_id, d.touchpoint == touchpoint)).first()
            return fulfillments_of_dialogue(conn, dialogue_id) if found else None

        return await self.store.read(read)


def _recorded(row: Any) -> RecordedEvent:
    event = Event(
        id=row.event_id,
        type=row.type,
        occurred_at=row.occurred_at,
        touchpoint=row.touchpoint,
        identities=tuple(Identity.parse(ref) for ref in row.identities),
        direction=row.direction,
        data=row.data,
        received_at=row.received_at,
        dialogue_id=row.dialogue_id,
    )
    return RecordedEvent(event, row.customer_id, row.dialogue_id, seq=row.seq)


def _created(customer_id: str, kind: str, traits: Mapping[str, Any], now: datetime) -> NewChange:
    """A ``customer.created`` change for a customer made through the API (no event introduced it)."""
    data = {"kind": kind, "traits": dict(traits), "touchpoint": None, "event_id": None}
    return NewChange("customer.created", customer_id, data, at=now)


def _event_changes(hooks: Hooks) -> Callable[[Sequence[RecordedEvent]], list[NewChange]]:
    """The changes recording adds for a batch's new events, in its transaction: a trigger's
    ``message.sent`` (:func:`prm_core.triggers.engine.message_changes`), then the plugins'
    own (``prm_event_changes``)."""
    if not hooks.has("prm_event_changes"):
        return message_changes

    def changes(recorded: Sequence[RecordedEvent]) -> list[NewChange]:
        return message_changes(recorded) + hooks.event_changes(recorded)

    return changes


def _offer_made(o: Offer) -> dict[str, Any]:
    return {"id": o.data.get("offer_id"), "code": o.code, "source": o.source, "campaign": o.data.get("campaign")}


def answer_id(request_id: str) -> str:
    """The id of the outbound event answering request ``request_id``: derived, so a replayed
    request's answer is a duplicate; hashed, so it fits and cannot collide with an id a
    touch point chose."""
    return "answer:" + hashlib.sha256(request_id.encode()).hexdigest()[:40]


def _follow(conn: Connection, customer_id: str) -> str:
    """The customer ``customer_id`` is now (itself, or the survivor it was merged into)."""
    row = conn.execute(sa.select(customers.c.merged_into).where(customers.c.id == customer_id)).one_or_none()
    if row is None:
        raise NotFound(f"no customer {customer_id}")
    return str(row.merged_into or customer_id)


def _lock_customer(conn: Connection, customer_id: str) -> str:
    """Take the customer's lock, as ingest does (PostgreSQL), following merges: returns the
    customer that is current once its lock is held."""
    while True:
        advisory_locks(conn, [customer_lock_key(customer_id)])
        current = _follow(conn, customer_id)
        if current == customer_id:
            return current
        customer_id = current


def _configured_shared(config: Config, registrations: Registrations) -> frozenset[str]:
    """``[identity] shared_namespaces``: namespaces an operator declares shared."""
    names = config.section("identity").get("shared_namespaces", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError("[identity].shared_namespaces must be a list of namespace names")
    unknown = [n for n in names if n not in registrations.namespaces]
    if unknown:
        raise ConfigError(f"[identity].shared_namespaces names unknown namespace {unknown[0]!r}")
    return frozenset(names)


def _membership_changes(raw: Any) -> tuple[list[dict[str, Any]], list[str]]:
    if raw is None:
        return [], []
    if not isinstance(raw, Mapping) or set(raw) - {"add", "remove"}:
        raise InvalidInput('memberships must be {"add": [...], "remove": [...]}', "memberships")
    adds = []
    for i, item in enumerate(raw.get("add") or []):
        if isinstance(item, str):
            item = {"group": item}
        if not isinstance(item, Mapping) or not isinstance(item.get("group"), str):
            raise InvalidInput(
                f"memberships.add[{i}] must name a group (id or namespace:value)", f"memberships.add[{i}]"
            )
        role = item.get("role")
        if role is not None and not (isinstance(role, str) and 0 < len(role) <= 64):
            raise InvalidInput(
                f"memberships.add[{i}].role must be a name of at most 64 characters", f"memberships.add[{i}].role"
            )
        adds.append({**item, "position": i})
    removes = raw.get("remove") or []
    if not isinstance(removes, list) or not all(isinstance(r, str) for r in removes):
        raise InvalidInput("memberships.remove must be a list of group refs", "memberships.remove")
    return adds, removes


def _judged_at_once(ev: Event) -> bool:
    """An event whose acceptance depends on what is recorded (an answer to an offer): its
    batch is recorded now, not journaled (see :meth:`Hub.accept`)."""
    return ev.type in RESPONSES and isinstance(ev.data.get("offer_id"), str)
