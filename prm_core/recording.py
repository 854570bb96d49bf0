"""Recording a batch of events in one transaction.

For every event: skip it if ``(touch point, id)`` is already in the log, resolve its
identities to one customer (creating or merging as needed), thread it into a dialogue,
append it to the log, and update the customer's metrics. Work is done per batch, not
per event: a handful of set-based queries whatever the batch size, which is what lets
one commit serve many concurrent requests (see :mod:`prm_core.ingest`).

On PostgreSQL, several hub processes may record at once: the batch first takes
transaction-scoped advisory locks on every identity, event and dialogue key it touches,
in a fixed order, so two batches that share a key run one after the other and the
second sees what the first wrote. It then locks every existing customer it will write to
(see ``_Batch._lock_customers``), since a merge moves identities its batch does not name
and two batches can reach one customer through different identities.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from attrs import define, evolve, field, frozen
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from .dialogue import DialogueState
from .feed.changes import NewChange
from .feed.writing import emit, emit_rows
from .identity_limits import Limits
from .identity_rules import IdentityRules
from .ids import new_id
from .merging import PurchaseTotals, event_purchase, merge_customers
from .model import Customer, Dialogue, Event, Identity, Merge, RecordedEvent, TouchPoint, _iso
from .outbox import Fulfillment, erased_answers, outbox_rows, settle_row
from .privacy import record_consents, scrub_tombstoned
from .store.bulk import execute_many
from .store.engine import advisory_locks, customer_lock_key, identity_lock_key
from .store.lists import one_of, pairs_in
from .store.tables import customers, dialogues, events, identities, metrics, outbox, shared_links, utcnow

__all__ = ["AfterWrite", "BatchOutcome", "IngestRules", "Written", "record_batch"]

_CHUNK = 400  # bound the parameters of one IN (...)

# built once: prm_core.store.bulk caches its plan per statement
_INSERT_CUSTOMERS = customers.insert()
_INSERT_IDENTITIES = identities.insert()
_INSERT_EVENTS = events.insert()
_INSERT_OUTBOX = outbox.insert()
_INSERT_DIALOGUES = dialogues.insert()
_INSERT_METRICS = metrics.insert()
_UPDATE_DIALOGUES = (
    dialogues.update()
    .where(dialogues.c.id == sa.bindparam("_id"))
    .values(
        customer_id=sa.bindparam("customer_id"),
        status=sa.bindparam("status"),
        intent=sa.bindparam("intent"),
        outcome=sa.bindparam("outcome"),
        opened_at=sa.bindparam("opened_at"),
        last_event_at=sa.bindparam("last_event_at"),
        closed_at=sa.bindparam("closed_at"),
    )
)
# most updates only move a dialogue's last event on: SQLite rewrites the entries of every
# index a SET names, so customer, status and the other times are left out when unchanged
_UPDATE_DIALOGUES_SEEN = (
    dialogues.update()
    .where(dialogues.c.id == sa.bindparam("_id"))
    .values(
        intent=sa.bindparam("intent"),
        outcome=sa.bindparam("outcome"),
        last_event_at=sa.bindparam("last_event_at"),
    )
)


def _update_metrics(*columns: str) -> Any:
    """An UPDATE of these ``customer_metrics`` columns, each from the bind parameter of its name."""
    where = metrics.c.customer_id == sa.bindparam("_cid")
    return metrics.update().where(where).values({c: sa.bindparam(c) for c in columns})


_SEEN_COLUMNS = ("event_count", "first_seen_at", "last_seen_at", "touchpoints")
_UPDATE_METRICS = _update_metrics(
    *_SEEN_COLUMNS,
    "order_count",
    "lifetime_revenue",
    "return_count",
    "revenue_by_currency",
    "categories",
    "last_purchase_at",
)
# most events carry no purchase: their customers' rows change only in these columns, and
# rewriting the purchase columns too would reparse and re-encode them for nothing
_UPDATE_METRICS_SEEN = _update_metrics(*_SEEN_COLUMNS)


@frozen
class Written:
    """One event as written to the log, handed to :attr:`IngestRules.after_write`."""

    event: Event
    customer_id: str
    dialogue_id: str
    opened_dialogue: bool


# (connection, events written since the last call, merges made since then, the batch's time)
AfterWrite = Callable[[Connection, Sequence[Written], Sequence[Merge], datetime], None]


@frozen
class IngestRules:
    """What recording needs to know about the registrations.

    ``after_write`` runs inside the recording transaction each time the batch's rows are
    written (after the metrics), so what it derives (planning's value model and tiers)
    commits or rolls back with the events themselves.
    """

    touchpoints: Mapping[str, TouchPoint]
    shared_namespaces: frozenset[str] = frozenset()
    after_write: AfterWrite | None = None
    # the key of erased identities' tombstones (prm_core.privacy.tombstones); None: not checked
    tombstone_key: bytes | None = None
    # [identity.rules] (prm_core.identity_rules); None: no value is blocked, no namespace limited
    identity: IdentityRules | None = None
    # plugins' own changes for the batch's new events (the prm_event_changes hook); None: no plugin
    event_changes: Callable[[Sequence[RecordedEvent]], Iterable[NewChange]] | None = None


@define
class BatchOutcome:
    """What a batch did, for the hooks called after commit. ``recorded`` is in input order."""

    recorded: list[RecordedEvent] = field(factory=list)
    customers_created: list[tuple[Customer, Event]] = field(factory=list)
    merges: list[Merge] = field(factory=list)
    dialogues_opened: list[tuple[Dialogue, RecordedEvent]] = field(factory=list)
    dialogues_closed: list[Dialogue] = field(factory=list)
    # partner outcomes this batch settled (prm_core.outbox.settle_row), for prm_fulfillment_updated
    fulfillments_updated: list[Fulfillment] = field(factory=list)


class _MetricsDelta:
    """What a batch adds to one customer's metrics. ``purchases`` is made by the first event
    carrying one: most customers of a batch buy nothing, and their rows change only in the
    columns every event changes."""

    __slots__ = ("count", "first", "last", "purchases", "touchpoints")

    def __init__(self) -> None:
        self.count = 0
        self.purchases: PurchaseTotals | None = None
        self.first: datetime | None = None
        self.last: datetime | None = None
        self.touchpoints: set[str] = set()

    def add(self, event: Event) -> None:
        self.count += 1
        at = event.occurred_at
        purchase = event_purchase(event.data)
        if purchase is not None:
            if self.purchases is None:
                self.purchases = PurchaseTotals()
            self.purchases.add_purchase(purchase, at)
        if self.first is None or at < self.first:
            self.first = at
        if self.last is None or at > self.last:
            self.last = at
        self.touchpoints.add(event.touchpoint)

    def merge(self, other: _MetricsDelta) -> None:
        self.count += other.count
        if other.purchases is not None:
            if self.purchases is None:
                self.purchases = PurchaseTotals()
            self.purchases.add(other.purchases)
        self.first = min(filter(None, (self.first, other.first)))
        self.last = max(filter(None, (self.last, other.last)))
        self.touchpoints |= other.touchpoints

    @property
    def bought(self) -> bool:
        """Whether these events change a purchase column."""
        return self.purchases is not None and not self.purchases.empty


_STATEMENTS: dict[tuple[str, bool], Any] = {}


def _statement(conn: Connection, name: str, build: Callable[[bool], Any]) -> Any:
    """The batch's SELECTs, built once per database kind: building a statement and its cache
    key costs more than running it when a commit holds a few dozen events."""
    pg = conn.dialect.name == "postgresql"
    stmt = _STATEMENTS.get((name, pg))
    if stmt is None:
        stmt = _STATEMENTS[(name, pg)] = build(pg)
    return stmt


def _in(pg: bool, column: Any, name: str) -> Any:
    """``column`` is one of the list bound as ``name``: one statement for any length of the
    list (:func:`prm_core.store.lists.one_of`)."""
    return one_of(column, name, pg)


def _identities_by_pairs(pg: bool) -> Any:
    """A SELECT of the identities rows for ``(namespace, value)`` pairs, bound as ``pairs``
    (PostgreSQL: two arrays ``ns`` and ``v``, joined through ``unnest``; see :func:`_in`)."""
    c = identities.c
    cols = (c.namespace, c.value, c.customer_id, c.shared)
    if not pg:
        return sa.select(*cols).where(pairs_in(c.namespace, c.value, "pairs"))
    text_array = postgresql.ARRAY(sa.String())
    wanted = (
        sa.func.unnest(sa.bindparam("ns", type_=text_array), sa.bindparam("v", type_=text_array))
        .table_valued("ns", "v")
        .render_derived()
    )
    return sa.select(*cols).join_from(identities, wanted, sa.and_(c.namespace == wanted.c.ns, c.value == wanted.c.v))


def _no_purchases() -> dict[str, Any]:
    """``PurchaseTotals().columns()``: the purchase columns of a customer who bought nothing."""
    return {
        "order_count": 0,
        "return_count": 0,
        "lifetime_revenue": Decimal(0),
        "revenue_by_currency": {},
        "categories": {},
        "last_purchase_at": None,
    }


def _metrics_seen(pg: bool) -> Any:
    """A SELECT of the metrics columns every event changes, for the customers bound as ``ids``."""
    c = metrics.c
    cols = (c.customer_id, c.event_count, c.first_seen_at, c.last_seen_at, c.touchpoints)
    return sa.select(*cols).where(_in(pg, c.customer_id, "ids"))


def _pairs_params(conn: Connection, pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    if conn.dialect.name == "postgresql":
        return {"ns": [p[0] for p in pairs], "v": [p[1] for p in pairs]}
    return {"pairs": list(pairs)}


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class _Batch:
    """The state of one batch inside its transaction."""

    def __init__(self, conn: Connection, rules: IngestRules) -> None:
        self.conn = conn
        self.rules = rules
        self.now = utcnow()
        self.owner: dict[Identity, str] = {}
        self.shared_values: set[Identity] = set()
        self.redirect: dict[str, str] = {}
        self.locked: set[str] = set()  # customers this batch holds an advisory lock on (PostgreSQL)
        self.created_at: dict[str, datetime] = {}
        self.created_seq: dict[str, int] = {}  # creation order of this batch's customers (same created_at)
        self.kind: dict[str, str] = {}
        self.by_ref: dict[tuple[str, str], DialogueState] = {}
        self.by_id: dict[str, DialogueState] = {}
        self.open_at: dict[tuple[str, str], DialogueState] = {}
        self.touched: dict[str, DialogueState] = {}
        self.opened: list[tuple[DialogueState, int]] = []
        self.closed: list[DialogueState] = []
        self.position = 0
        self.new_customers: list[dict[str, Any]] = []
        self.new_identities: list[dict[str, Any]] = []
        self.shared_seen: dict[tuple[str, str, str], datetime] = {}
        self.new_events: list[dict[str, Any]] = []
        self.new_outbox: list[dict[str, Any]] = []  # partner work planned by these events (prm_core.outbox)
        self.deltas: dict[str, _MetricsDelta] = defaultdict(_MetricsDelta)
        self.written: list[Written] = []
        self.opened_ids: set[str] = set()
        self.merges_told = 0
        self.out = BatchOutcome()
        self.limits = Limits(self) if rules.identity is not None and rules.identity.limited else None
        # the change feed (prm_core.feed): what introduced each new customer, which event
        # opened each new dialogue, how many closings were told so far
        self.introduced: dict[str, tuple[str, str]] = {}
        self.opened_by: dict[str, str] = {}
        self.closed_told = 0
        self.changes: list[dict[str, Any]] = []

    # ---- helpers ---------------------------------------------------------------------

    def find(self, cid: str) -> str:
        while cid in self.redirect:
            cid = self.redirect[cid]
        return cid

    def shared(self, ident: Identity) -> bool:
        return ident.namespace in self.rules.shared_namespaces or ident in self.shared_values

    # ---- the steps -------------------------------------------------------------------

    def run(self, batch: Sequence[Event]) -> BatchOutcome:
        if self.conn.dialect.name == "postgresql":
            self._lock(batch)
        first_of: dict[tuple[str, str], int] = {}
        fresh: list[int] = []
        for i, ev in enumerate(batch):
            key = (ev.touchpoint, ev.id)
            if key not in first_of:
                first_of[key] = i
                fresh.append(i)
        stored = self._load_stored(batch, fresh)
        todo = [i for i in fresh if (batch[i].touchpoint, batch[i].id) not in stored]
        if self.rules.tombstone_key is not None and todo:
            # an erased person's old events are acknowledged but never bring them back
            batch = scrub_tombstoned(self.conn, self.rules.tombstone_key, batch, todo)
        pending = [batch[i] for i in todo]
        self._load_identities(pending)
        self._load_dialogues(pending)
        if self.conn.dialect.name == "postgresql":
            self._lock_customers(pending)
        # a partner's answer about a customer erased since it was asked: not kept (prm_core.outbox)
        dropped = erased_answers(self.conn, batch, fresh)
        if dropped:
            todo = [i for i in todo if i not in dropped]

        results: dict[int, RecordedEvent] = {}
        for i in todo:
            self.position = i
            results[i] = self._record(batch[i])
        self._flush()
        for i in fresh:  # partner outcomes recorded with their events (prm_core.outbox), duplicates too
            if i in dropped:
                continue
            settled = settle_row(self.conn, batch[i])
            if settled is not None:
                self.out.fulfillments_updated.append(settled)

        for i, ev in enumerate(batch):
            key = (ev.touchpoint, ev.id)
            if key in stored:
                cid, did = stored[key]
                self.out.recorded.append(RecordedEvent(ev, self.find(cid), did, duplicate=True))
            elif first_of[key] in dropped:  # acknowledged, nothing written: as a duplicate is
                state = self.by_id.get(ev.dialogue_id or "")
                owner = self.find(state.customer_id) if state is not None else ""
                self.out.recorded.append(RecordedEvent(ev, owner, ev.dialogue_id or "", duplicate=True))
            elif first_of[key] != i:
                first = results[first_of[key]]
                self.out.recorded.append(RecordedEvent(ev, self.find(first.customer_id), first.dialogue_id, True))
            else:
                r = results[i]
                owner = self.find(r.customer_id)
                if owner != r.customer_id:  # merged away later in the batch
                    r = results[i] = RecordedEvent(ev, owner, r.dialogue_id)
                self.out.recorded.append(r)
        record_consents(self.conn, self.out.recorded)
        if self.rules.event_changes is not None:
            new = [r for r in self.out.recorded if not r.duplicate]
            if new:
                emit(self.conn, *self.rules.event_changes(new))
        self.out.dialogues_opened = [(s.value(), results[i]) for s, i in self.opened]
        self.out.dialogues_closed = [s.value() for s in self.closed]
        return self.out

    def _lock(self, batch: Sequence[Event]) -> None:
        keys: set[str] = set()
        for ev in batch:
            keys.add(f"e\x1f{ev.touchpoint}\x1f{ev.id}")
            if ev.dialogue:
                keys.add(f"d\x1f{ev.touchpoint}\x1f{ev.dialogue}")
            keys.update(identity_lock_key(i.namespace, i.value) for i in ev.identities)
        self._advisory_locks(keys)

    def _advisory_locks(self, keys: Iterable[str]) -> None:
        advisory_locks(self.conn, keys)

    def _lock_customers(self, pending: Sequence[Event]) -> None:
        """Also lock every existing customer the batch will write to, then re-read until stable.

        Identity locks alone are not enough: two batches naming different identities of one
        customer would both add to its metrics from the same stale row (a lost update) and
        both open a web visit; and a merge moves identities its batch does not name, so a
        batch using one of those would record for a customer that is merged away by the time
        it commits. While this waits for a customer, a merge may commit, so what was loaded
        is read again, and any customer that appeared is locked too. Later locks may run
        into another batch's in another order: PostgreSQL then aborts one with a deadlock,
        which the store retries.
        """
        while True:
            wanted = {*self.owner.values(), *(s.customer_id for s in [*self.by_ref.values(), *self.by_id.values()])}
            wanted -= self.locked
            if not wanted:
                return
            self._advisory_locks(customer_lock_key(cid) for cid in wanted)
            self.locked |= wanted
            self.owner, self.shared_values = {}, set()
            self.by_ref, self.by_id, self.open_at = {}, {}, {}
            self.created_at, self.kind = {}, {}
            self._load_identities(pending)
            self._load_dialogues(pending)

    def _load_stored(self, batch: Sequence[Event], fresh: list[int]) -> dict[tuple[str, str], tuple[str, str]]:
        by_tp: dict[str, list[str]] = defaultdict(list)
        for i in fresh:
            by_tp[batch[i].touchpoint].append(batch[i].id)
        stored: dict[tuple[str, str], tuple[str, str]] = {}
        e = events.c
        for tp, ids in by_tp.items():
            for chunk in _chunks(ids):
                q = _statement(
                    self.conn,
                    "stored",
                    lambda pg: sa.select(e.event_id, e.customer_id, e.dialogue_id).where(
                        e.touchpoint == sa.bindparam("tp"), _in(pg, e.event_id, "ids")
                    ),
                )
                for row in self.conn.execute(q, {"tp": tp, "ids": list(chunk)}):
                    stored[(tp, row.event_id)] = (row.customer_id, row.dialogue_id)
        return stored

    def _load_identities(self, batch: Sequence[Event]) -> None:
        named = {(i.namespace, i.value): i for ev in batch for i in ev.identities}
        wanted = sorted(named)
        for chunk in _chunks(wanted):
            q = _statement(self.conn, "identities", _identities_by_pairs)
            for namespace, value, customer_id, shared in self.conn.execute(q, _pairs_params(self.conn, chunk)):
                # the events' own object: equal, and none made per row
                ident = named.get((namespace, value)) or Identity(namespace, value)
                if shared:
                    self.shared_values.add(ident)
                elif customer_id is not None:
                    self.owner[ident] = customer_id
        self._load_customers(set(self.owner.values()))

    def _load_customers(self, ids: set[str]) -> None:
        missing = sorted(ids - self.created_at.keys())
        for chunk in _chunks(missing):
            q = _statement(
                self.conn,
                "customers",
                lambda pg: sa.select(customers.c.id, customers.c.kind, customers.c.created_at).where(
                    _in(pg, customers.c.id, "ids")
                ),
            )
            for row in self.conn.execute(q, {"ids": list(chunk)}):
                self.created_at[row.id] = row.created_at
                self.kind[row.id] = row.kind

    def _load_dialogues(self, batch: Sequence[Event]) -> None:
        refs: dict[str, set[str]] = defaultdict(set)
        for ev in batch:
            if ev.dialogue:
                refs[ev.touchpoint].add(ev.dialogue)
        d = dialogues.c
        for tp, wanted in refs.items():
            for chunk in _chunks(sorted(wanted)):
                q = _statement(
                    self.conn,
                    "dialogues by ref",
                    lambda pg: sa.select(dialogues).where(d.touchpoint == sa.bindparam("tp"), _in(pg, d.ref, "refs")),
                )
                for row in self.conn.execute(q, {"tp": tp, "refs": list(chunk)}):
                    self.by_ref[(tp, row.ref)] = DialogueState.from_row(row)
        own = sorted({ev.dialogue_id for ev in batch if ev.dialogue_id})
        for chunk in _chunks(own):
            q = _statement(self.conn, "dialogues by id", lambda pg: sa.select(dialogues).where(_in(pg, d.id, "ids")))
            for row in self.conn.execute(q, {"ids": list(chunk)}):
                state = self.by_ref.get((row.touchpoint, row.ref)) or DialogueState.from_row(row)
                self.by_ref[(row.touchpoint, row.ref)] = self.by_id[row.id] = state
        self._load_customers({s.customer_id for s in self.by_ref.values()})
        # open dialogues of known customers at touch points that thread by inactivity
        timed = sorted({ev.touchpoint for ev in batch if self.rules.touchpoints[ev.touchpoint].dialogue_timeout})
        if not timed:
            return
        known = sorted(set(self.owner.values()))
        for chunk in _chunks(known):
            q = _statement(
                self.conn,
                "open dialogues",
                lambda pg: sa.select(dialogues).where(
                    _in(pg, d.customer_id, "cids"),
                    _in(pg, d.touchpoint, "tps"),
                    d.status == "open",
                ),
            )
            for row in self.conn.execute(q, {"cids": list(chunk), "tps": timed}):
                self._remember_open(DialogueState.from_row(row))

    def _remember_open(self, state: DialogueState) -> None:
        key = (state.customer_id, state.touchpoint)
        current = self.open_at.get(key)
        if current is None or state.last_event_at > current.last_event_at:
            self.open_at[key] = state

    def _new_customer(self, ev: Event) -> str:
        cid = new_id("cus")
        self.created_at[cid] = self.now
        self.created_seq[cid] = len(self.created_seq)
        self.kind[cid] = "person"
        self.new_customers.append(
            {
                "id": cid,
                "kind": "person",
                "tier": None,
                "tier_source": None,
                "traits": {},
                "merged_into": None,
                "created_at": self.now,
                "updated_at": self.now,
            }
        )
        self.out.customers_created.append((Customer(id=cid, kind="person", created_at=self.now), ev))
        self.introduced[cid] = (ev.touchpoint, ev.id)
        return cid

    def _resolve(self, ev: Event, tp: TouchPoint) -> str:
        candidates: set[str] = set()
        for ident in ev.identities:
            if not self.shared(ident) and ident in self.owner:
                candidates.add(self.find(self.owner[ident]))
        known = self._known_dialogue(ev)
        # an unverified event (public key, tracker) with identities of its own never follows a
        # dialogue key to someone else: anyone can send someone's session id (privacy)
        trusted = ev.verified or not ev.identities
        if known is not None and trusted and (self._internal(ev) or _live(known, ev) or not ev.identities):
            candidates.add(self.find(known.customer_id))
        if not candidates:
            shared = [i for i in ev.identities if self.shared(i)]
            # only an event that names nobody but shared identities goes to whoever used them last;
            # one that brings an identity of its own (a first-time caller's email with the household
            # phone) is a new customer, else that identity would be glued to the last sharer for good
            own = len(shared) < len(ev.identities)
            cid = self._most_recent_sharer(shared) if shared and not own else None
            return cid if cid is not None else self._new_customer(ev)
        people = {c for c in candidates if self.kind.get(c, "person") == "person"}
        # an event never glues a person to an organization or group: those are memberships
        pool = people or candidates
        if self.limits is not None:  # may keep customers apart, or start a new one (identity_limits)
            pool = self.limits.within(ev, pool)
        if len(pool) == 1:
            return next(iter(pool))
        # customers created in this batch share created_at; ids made in the same millisecond are in
        # random order, so without created_seq the survivor among them would be a coin toss, not the older
        survivor, *others = sorted(pool, key=lambda c: (self.created_at[c], self.created_seq.get(c, -1), c))
        self._flush()  # the merge works on the database, so it must hold everything so far
        for other in others:
            merge = merge_customers(
                self.conn,
                survivor,
                other,
                reason=f"event {ev.id} at {ev.touchpoint} linked identities of both customers",
                cause=(ev.touchpoint, ev.id),
                now=self.now,
            )
            self.out.merges.append(merge)
            self.redirect[other] = survivor
            if self.limits is not None:
                self.limits.merged(survivor, other)
            for state in [*self.open_at.values(), *self.by_ref.values(), *self.by_id.values(), *self.touched.values()]:
                if state.customer_id == other:
                    state.customer_id = survivor
            for (owner_cid, tp_name), state in list(self.open_at.items()):
                if owner_cid == other:
                    del self.open_at[(owner_cid, tp_name)]
                    self._remember_open(state)
        return survivor

    def _most_recent_sharer(self, shared: list[Identity]) -> str | None:
        c = shared_links.c
        # merges do not move shared links: follow the (one hop) redirect, or the event would be
        # recorded for a merged-away customer
        q = (
            sa.select(sa.func.coalesce(customers.c.merged_into, c.customer_id).label("customer_id"))
            .select_from(shared_links.outerjoin(customers, customers.c.id == c.customer_id))
            .where(sa.tuple_(c.namespace, c.value).in_([(i.namespace, i.value) for i in shared]))
            .order_by(c.last_seen_at.desc())
            .limit(1)
        )
        row = self.conn.execute(q).first()
        while self.conn.dialect.name == "postgresql" and row is not None and row.customer_id not in self.locked:
            # the customer is written to like any other (see _lock_customers); it may be merged away
            # while we wait for it, so ask again once it is ours
            self._advisory_locks([customer_lock_key(row.customer_id)])
            self.locked.add(row.customer_id)
            row = self.conn.execute(q).first()
        in_batch = [(at, cid) for (ns, v, cid), at in self.shared_seen.items() if Identity(ns, v) in shared]
        found = self.find(max(in_batch)[1]) if in_batch else self.find(row.customer_id) if row else None
        if found is not None:
            # a customer found this way may meet others in a merge later in the batch: know its age and kind
            self._load_customers({found})
        return found

    def _record(self, ev: Event) -> RecordedEvent:
        tp = self.rules.touchpoints[ev.touchpoint]
        links = ev.identities if self.rules.identity is None else self.rules.identity.screen(ev.identities)
        left_out: frozenset[Identity] = frozenset()
        if links is not ev.identities:  # a placeholder value (user_id "undefined") links no one
            cid = self._resolve(evolve(ev, identities=links), tp)
        else:
            cid = self._resolve(ev, tp)
        if self.limits is not None:
            left_out = self.limits.taken_left_out()
        for ident in links:
            if ident in left_out:
                continue
            if self.shared(ident):
                key = (ident.namespace, ident.value, cid)
                self.shared_seen[key] = max(self.shared_seen.get(key, ev.occurred_at), ev.occurred_at)
            elif ident not in self.owner:
                self.owner[ident] = cid
                if self.limits is not None:
                    self.limits.attached(cid, ident)
                self.new_identities.append(
                    {
                        "namespace": ident.namespace,
                        "value": ident.value,
                        "customer_id": cid,
                        "shared": False,
                        "first_seen_at": ev.occurred_at,
                    }
                )
        state = self._thread(ev, tp, cid)
        self.new_events.append(
            {
                "touchpoint": ev.touchpoint,
                "event_id": ev.id,
                "type": ev.type,
                "occurred_at": ev.occurred_at,
                "received_at": ev.received_at or self.now,
                "customer_id": cid,
                "ingest_customer_id": cid,
                "dialogue_id": state.id,
                "direction": ev.direction,
                "identities": [str(i) for i in ev.identities],
                "data": dict(ev.data),
            }
        )
        self.new_outbox.extend(outbox_rows(ev, cid, state.id, self.now))
        self.deltas[cid].add(ev)
        if self.rules.after_write is not None:
            self.written.append(Written(ev, cid, state.id, state.id in self.opened_ids))
        return RecordedEvent(ev, cid, state.id)

    def _known_dialogue(self, ev: Event) -> DialogueState | None:
        if ev.dialogue_id is not None and ev.dialogue_id in self.by_id:
            return self.by_id[ev.dialogue_id]
        if ev.dialogue:
            return self.by_ref.get((ev.touchpoint, ev.dialogue))
        return None

    def _internal(self, ev: Event) -> bool:
        """The hub's own dialogue id (an answer it records), which is always to be trusted."""
        return ev.dialogue_id is not None and ev.dialogue_id in self.by_id

    def _thread(self, ev: Event, tp: TouchPoint, cid: str) -> DialogueState:
        state: DialogueState | None
        if ev.dialogue_id is not None and ev.dialogue_id in self.by_id:
            state = self.by_id[ev.dialogue_id]
        elif ev.dialogue:
            state = self.by_ref.get((ev.touchpoint, ev.dialogue))
            if state is None:
                state = self._open(ev, cid, ref=ev.dialogue)
                self.by_ref[(ev.touchpoint, ev.dialogue)] = state
            elif self.find(state.customer_id) != cid:
                # the key is taken by someone else's dialogue (a recycled transaction number):
                # this customer's thread is a dialogue of its own
                state = self._open(ev, cid, ref=None)
        elif tp.dialogue_timeout is not None:
            state = self.open_at.get((cid, ev.touchpoint))
            if state is None or not state.is_recent(ev.occurred_at, tp):
                if state is not None and state.status == "open":
                    state.close(state.last_event_at)
                    self.touched[state.id] = state
                    self.closed.append(state)
                state = self._open(ev, cid, ref=None)
                self.open_at[(cid, ev.touchpoint)] = state
        else:
            state = self._open(ev, cid, ref=ev.id)
        was_open = state.status == "open"
        state.customer_id = cid
        state.apply(ev, tp)
        self.touched[state.id] = state
        if was_open and state.status == "closed":
            self.closed.append(state)
        return state

    def _open(self, ev: Event, cid: str, ref: str | None) -> DialogueState:
        did = new_id("dlg")
        state = DialogueState(
            id=did,
            touchpoint=ev.touchpoint,
            ref=ref or did,
            customer_id=cid,
            status="open",
            intent=None,
            outcome=None,
            opened_at=ev.occurred_at,
            last_event_at=ev.occurred_at,
            closed_at=None,
            is_new=True,
        )
        self.opened.append((state, self.position))
        self.opened_ids.add(did)
        self.opened_by[did] = ev.id
        return state

    # ---- writing ---------------------------------------------------------------------

    def _flush(self) -> None:
        conn = self.conn
        changes = self.changes
        # customers created since the last flush: no statement has written their metrics yet
        # (a merge flushes first), so there is no row of theirs to read
        unwritten = {row["id"] for row in self.new_customers}
        if self.new_customers:
            execute_many(conn, _INSERT_CUSTOMERS, self.new_customers)
            for row in self.new_customers:
                tp, eid = self.introduced.get(row["id"], (None, None))
                data = {"kind": row["kind"], "traits": {}, "touchpoint": tp, "event_id": eid}
                changes.append({"type": "customer.created", "at": self.now, "customer_id": row["id"], "data": data})
            self.new_customers = []
        if self.new_identities:
            for row in self.new_identities:
                row["customer_id"] = self.find(row["customer_id"])
            execute_many(conn, _INSERT_IDENTITIES, self.new_identities)
            self.new_identities = []
        if self.shared_seen:
            self._write_shared_links()
        self._write_dialogues()
        if self.limits is not None:
            self.limits.flush()
        if self.new_events:
            for row in self.new_events:
                row["customer_id"] = row["ingest_customer_id"] = self.find(row["customer_id"])
            execute_many(conn, _INSERT_EVENTS, self.new_events)
            now = self.now
            changes.extend(
                {
                    "type": "event.recorded",
                    "at": now,
                    "customer_id": row["customer_id"],
                    "data": {
                        "event_id": row["event_id"],
                        "touchpoint": row["touchpoint"],
                        "type": row["type"],
                        "occurred_at": _iso(row["occurred_at"]),
                        "dialogue_id": row["dialogue_id"],
                    },
                }
                for row in self.new_events
            )
            self.new_events = []
        if len(self.closed) > self.closed_told:
            for state in self.closed[self.closed_told :]:
                data = {
                    "dialogue_id": state.id,
                    "touchpoint": state.touchpoint,
                    "intent": state.intent,
                    "outcome": state.outcome,
                    "closed_at": _iso(state.closed_at),
                }
                changes.append(
                    {
                        "type": "dialogue.closed",
                        "at": self.now,
                        "customer_id": self.find(state.customer_id),
                        "data": data,
                    }
                )
            self.closed_told = len(self.closed)
        if changes:
            emit_rows(conn, changes)
            self.changes = []
        if self.new_outbox:
            for row in self.new_outbox:
                row["customer_id"] = self.find(row["customer_id"])
            execute_many(conn, _INSERT_OUTBOX, self.new_outbox)
            self.new_outbox = []
        if self.deltas:
            self._write_metrics(unwritten)
        if self.rules.after_write is not None and (self.written or len(self.out.merges) > self.merges_told):
            find = self.find
            written = [
                w if find(w.customer_id) == w.customer_id else evolve(w, customer_id=find(w.customer_id))
                for w in self.written
            ]
            merges = self.out.merges[self.merges_told :]
            self.written, self.merges_told = [], len(self.out.merges)
            self.rules.after_write(self.conn, written, merges, self.now)

    def _write_shared_links(self) -> None:
        c = shared_links.c
        for (ns, value, cid), at in self.shared_seen.items():
            cid = self.find(cid)
            updated = self.conn.execute(
                shared_links.update()
                .where(c.namespace == ns, c.value == value, c.customer_id == cid, c.last_seen_at < at)
                .values(last_seen_at=at)
            )
            if updated.rowcount == 0:
                exists = self.conn.execute(
                    sa.select(sa.literal(1)).where(c.namespace == ns, c.value == value, c.customer_id == cid)
                ).first()
                if exists is None:
                    self.conn.execute(
                        shared_links.insert().values(namespace=ns, value=value, customer_id=cid, last_seen_at=at)
                    )
        self.shared_seen = {}

    def _write_dialogues(self) -> None:
        states = [s for s in self.touched.values() if s.dirty]
        self.touched = {}
        if not states:
            return
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        seen: list[dict[str, Any]] = []
        for s in states:
            s.customer_id = self.find(s.customer_id)
            kept = s.kept()
            if s.is_new:
                inserts.append(s.row())
                s.is_new = False
            elif kept == s.stored:
                seen.append({"_id": s.id, "intent": s.intent, "outcome": s.outcome, "last_event_at": s.last_event_at})
            else:
                updates.append(
                    {
                        "_id": s.id,
                        "customer_id": s.customer_id,
                        "status": s.status,
                        "intent": s.intent,
                        "outcome": s.outcome,
                        "opened_at": s.opened_at,
                        "last_event_at": s.last_event_at,
                        "closed_at": s.closed_at,
                    }
                )
            s.stored = kept
            s.dirty = False
        if inserts:
            execute_many(self.conn, _INSERT_DIALOGUES, inserts)
            self.changes.extend(
                {
                    "type": "dialogue.opened",
                    "at": self.now,
                    "customer_id": row["customer_id"],
                    "data": {
                        "dialogue_id": row["id"],
                        "touchpoint": row["touchpoint"],
                        "opened_at": _iso(row["opened_at"]),
                        "event_id": self.opened_by.get(row["id"]),
                    },
                }
                for row in inserts
            )
        if updates:
            execute_many(self.conn, _UPDATE_DIALOGUES, updates)
        if seen:
            execute_many(self.conn, _UPDATE_DIALOGUES_SEEN, seen)

    def _write_metrics(self, unwritten: set[str]) -> None:
        deltas: dict[str, _MetricsDelta] = {}
        for cid, delta in self.deltas.items():
            target = self.find(cid)
            if target in deltas:
                deltas[target].merge(delta)
            else:
                deltas[target] = delta
        self.deltas = defaultdict(_MetricsDelta)
        existing: dict[str, Any] = {}
        ids = sorted(deltas)
        # the columns every event changes, for every customer; the purchase columns (JSON and
        # decimals to parse) only for the customers who bought something in this batch
        for chunk in _chunks([cid for cid in ids if cid not in unwritten]):
            q = _statement(self.conn, "metrics seen", _metrics_seen)
            for row in self.conn.execute(q, {"ids": list(chunk)}):
                existing[row.customer_id] = row
        bought = [cid for cid in ids if cid in existing and deltas[cid].bought]
        purchased: dict[str, Any] = {}
        for chunk in _chunks(bought):
            q = _statement(
                self.conn, "metrics", lambda pg: sa.select(metrics).where(_in(pg, metrics.c.customer_id, "ids"))
            )
            for row in self.conn.execute(q, {"ids": list(chunk)}):
                purchased[row.customer_id] = row
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        seen_only: list[dict[str, Any]] = []
        for cid in ids:
            d = deltas[cid]
            current = existing.get(cid)
            if current is None:
                inserts.append(
                    {
                        "customer_id": cid,
                        "event_count": d.count,
                        **(d.purchases.columns() if d.purchases is not None else _no_purchases()),
                        "first_seen_at": d.first,
                        "last_seen_at": d.last,
                        "touchpoints": sorted(d.touchpoints),
                    }
                )
            else:
                seen = {
                    "_cid": cid,
                    "event_count": current.event_count + d.count,
                    "first_seen_at": min(filter(None, (current.first_seen_at, d.first))),
                    "last_seen_at": max(filter(None, (current.last_seen_at, d.last))),
                    "touchpoints": sorted(set(current.touchpoints) | d.touchpoints),
                }
                if not d.bought:
                    seen_only.append(seen)
                    continue
                assert d.purchases is not None
                purchases = PurchaseTotals.from_row(purchased[cid])
                purchases.add(d.purchases)
                updates.append({**seen, **purchases.columns()})
        if inserts:
            execute_many(self.conn, _INSERT_METRICS, inserts)
        if updates:
            execute_many(self.conn, _UPDATE_METRICS, updates)
        if seen_only:
            execute_many(self.conn, _UPDATE_METRICS_SEEN, seen_only)


LIVE_WINDOW = timedelta(days=1)


def _live(dialogue: DialogueState, ev: Event) -> bool:
    """Whether a touch point's dialogue key still says whose an event is, linking like an
    identity: while the dialogue is open or was active within a day. Keys get reused
    (transaction numbers, call ids), and a stale one must not glue a stranger to its old
    customer; an event with no identity of its own still follows it (a late agent note)."""
    return dialogue.status == "open" or abs(ev.occurred_at - dialogue.last_event_at) <= LIVE_WINDOW


def record_batch(conn: Connection, batch: Sequence[Event], rules: IngestRules) -> BatchOutcome:
    """Record ``batch`` inside the caller's transaction; see the module docstring."""
    return _Batch(conn, rules).run(batch)
