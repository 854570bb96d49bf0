"""The trigger engine: a reader of the change feed that starts runs, and a worker that runs them.

**Following the feed.** One hub process at a time (the holder of the lease on the
``trigger_cursor`` row) reads the feed after its stored position, for the change types some
trigger listens to. For each change it evaluates the conditions of the triggers on that type,
over the change and the customer's facts, and inserts a run for each match **in the same
transaction** that moves its position past the change: a crash loses both or neither, and
a run's key (trigger, position) makes reading a change again harmless. So a change fires a
trigger exactly once, and nothing is missed over a restart: the feed's durability is the
engine's. The same reader marks queued offers made (``offer.made``) and forgets an erased
customer's runs (``customer.erased``).

**Running.** A worker claims runs whose next step is due (a lease per run; on PostgreSQL
``FOR UPDATE SKIP LOCKED``, so several hub processes share the work; the runs due at once are claimed
by the feed reader as it writes them, and handed to this process's worker), and takes each
through its steps, in a task of its own: a ``wait`` saves when the next step is due and lets
go, a ``check`` ends the journey when it does not match, an ``act`` passes the guards
(:mod:`prm_core.triggers.guards`) and acts. Every act is recorded as an outbound event on the
customer (in the 360 view, on the feed); ids of what an act does are derived from its key, so
an act retried after a crash is recognized: the event is a duplicate, the outbox row is not
added twice, and a message sender gets the same message id. A message whose ``message.sent``
event is recorded is never handed over again, and its ``message.sent`` change is written with
the event, in its transaction (:func:`message_changes`): once, whatever the retries. A process
renews the leases of the runs it is acting on, so only a dead process's runs are claimed again.
An act that raises is retried with backoff, and after ``MAX_ATTEMPTS`` the run is ``failed``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import structlog
from attrs import define, evolve, field
from sqlalchemy.engine import Connection

from ..consent import allows
from ..errors import ConfigError, Overloaded, StoreUnavailable
from ..feed.changes import Change, NewChange
from ..feed.reading import FellBehind, bounds, read_changes
from ..feed.writing import offer_topic
from ..ids import new_id
from ..model import Event, FulfillmentRequest, Identity, RecordedEvent
from ..outbox import PlannedEvent, PlannedFulfillment, backoff_s
from ..planning.campaigns import in_control
from ..privacy.consents import load_consents
from ..store.tables import customers, erasures, events, identities, trigger_cursor, trigger_offers, trigger_runs, utcnow
from . import runs
from .conditions import granted
from .definitions import Act, Check, Trigger, Wait
from .guards import GuardSettings, suppressed
from .messages import Message, MessageResult
from .offers import QueuedOffers
from .registry import check_touchpoints, configured_triggers, load_triggers, sync_configured

if TYPE_CHECKING:
    from ..config import Config
    from ..hub import Hub
    from ..plugins import Registrations

__all__ = ["MAX_ATTEMPTS", "OUTBOUND_PREFIX", "TriggerEngine", "message_changes", "open_triggers", "outbound_event_id"]

log = structlog.get_logger(__name__)

CURSOR = "triggers"
MAX_ATTEMPTS = 10
OUTBOUND_PREFIX = "trigger:"  # the ids of the events triggers record: never a trigger's own cause


def outbound_event_id(key: str) -> str:
    """The id of the outbound event an act records (``message.sent`` for a message), from the
    act's key (``act_...``, also the message's id): the same on every retry of the act."""
    return OUTBOUND_PREFIX + key.removeprefix("act_")


CLAIM_BATCH = 32  # runs claimed from the database at once
MAX_IN_FLIGHT = 64  # runs one process acts on at once
GATHER_S = 0.1  # the least time between two reads of the feed while it is caught up
RELOAD_S = 10.0  # how stale another process's pause or new trigger may be here
NOTE_S = 5.0  # how often a position past changes that start nothing is written
_ALWAYS = frozenset({"offer.made", "customer.erased"})
# the commits the reader wakes for besides those of its triggers' types: erasures, and offers
# made that a trigger queued (offers of other sources are read along, never waited for)
_WAKE = frozenset({"customer.erased", offer_topic("trigger")})
_NO_CONTACT: Mapping[str, Any] = {"consents": [], "days_since_last_contact": None}
_CARRIED = ("fired_at", "channel", "event_id", "offer", "expires_at", "customer_id")
# the identity a message goes to, by channel
ADDRESS = {"email": "email", "sms": "phone", "voice": "phone"}


def open_triggers(config: Config, registrations: Registrations) -> tuple[GuardSettings, dict[str, Trigger]]:
    """``[triggers]``'s settings and every ``[triggers.NAME]``, checked before the hub touches
    its database: the first thing wrong raises :class:`~prm_core.errors.ConfigError` naming
    its key."""
    settings = GuardSettings.from_config(config)
    configured = configured_triggers(config)
    names = registrations.touchpoints.names()
    if settings.touchpoint is not None and settings.touchpoint not in names:
        raise ConfigError(f"[triggers].touchpoint names {settings.touchpoint!r}, which is not a registered touch point")
    for trigger in configured.values():
        check_touchpoints(trigger, settings, names, config=True)
    return settings, configured


class _Retry(Exception):
    """The act could not be done now (a sender or the database failing): try again later."""


@define
class TriggerEngine:
    """Follows the feed and runs triggers (see the module docstring)."""

    hub: Hub
    settings: GuardSettings
    configured: dict[str, Trigger]
    lease_s: float = 30.0
    batch: int = 500
    owner: str = field(factory=lambda: new_id("trg"))
    triggers: dict[str, Trigger] = field(init=False, factory=dict)
    paused: set[str] = field(init=False, factory=set)
    sources: dict[str, str] = field(init=False, factory=dict)
    _loaded: float = field(init=False, default=float("-inf"))
    _cursor: int | None = field(init=False, default=None)
    _lease_until: float = field(init=False, default=0.0)
    _cursor_written: float = field(init=False, default=0.0)
    _stored: int = field(init=False, default=0)  # the position last written (the cursor may be ahead)
    _tasks: list[asyncio.Task[None]] = field(init=False, factory=list)
    _wake: asyncio.Event = field(init=False, factory=asyncio.Event)
    # runs the feed reader claimed as it wrote them, for the worker to start
    _ready: list[dict[str, Any]] = field(init=False, factory=list)
    # the runs this process is acting on, by key
    _in_flight: dict[str, asyncio.Task[None]] = field(init=False, factory=dict)
    _looked: float = field(init=False, default=float("-inf"))
    # runs' saves waiting for the next shared write transaction (_save)
    _saves: list[tuple[Callable[[Connection], None], asyncio.Future[None]]] = field(init=False, factory=list)
    _saving: asyncio.Task[None] | None = field(init=False, default=None)
    _stopping: bool = field(init=False, default=False)
    # seconds from a change to its run's act, for bench/triggers.py (bounded)
    latencies: list[float] = field(init=False, factory=list)
    _offers: QueuedOffers = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._offers = QueuedOffers(self)

    # ---- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Write the configured triggers, load every trigger, and start following the feed
        (from the newest change, the first time: triggers act on what happens from now on)."""
        now = utcnow()

        def write(conn: Connection) -> None:
            sync_configured(conn, self.configured, now)
            if conn.execute(sa.select(trigger_cursor.c.name).where(trigger_cursor.c.name == CURSOR)).first() is None:
                _pruned, head = bounds(conn)
                conn.execute(trigger_cursor.insert().values(name=CURSOR, position=head, updated_at=now))

        await self.hub.store.write(write)
        await self.reload()
        self.hub.pm.register(self._offers, name="prm_core.triggers")
        self._tasks = [
            asyncio.create_task(self._follow(), name="prm-triggers-feed"),
            asyncio.create_task(self._work(), name="prm-triggers-runs"),
        ]

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except BaseException:
                pass
        self._tasks.clear()
        if self._saving is not None:  # the saves of the runs acted on: written before the hub closes
            try:
                await asyncio.wait_for(self._saving, timeout=10)
            except BaseException:
                pass
        if self.hub.pm.is_registered(self._offers):
            self.hub.pm.unregister(self._offers)
        try:
            await self.hub.store.write(self._release)
        except Exception as exc:  # the lease runs out by itself
            log.warning("trigger leases not released", error=type(exc).__name__)

    def _release(self, conn: Connection) -> None:
        c = trigger_cursor.c
        conn.execute(
            trigger_cursor.update().where(c.lease_owner == self.owner).values(lease_owner=None, lease_until=None)
        )
        r = trigger_runs.c
        conn.execute(
            trigger_runs.update().where(r.lease_owner == self.owner).values(lease_owner=None, lease_until=None)
        )

    async def reload(self) -> None:
        """Read the triggers again (after a change through the API, and every ``RELOAD_S``)."""
        self.triggers, self.paused, self.sources = await self.hub.store.read(load_triggers)
        self._loaded = time.monotonic()
        self._wake.set()

    def active(self) -> list[Trigger]:
        return [t for name, t in self.triggers.items() if name not in self.paused]

    @property
    def queues_offers(self) -> bool:
        return any(a.kind == "offer" for t in self.triggers.values() for a in t.acts)

    # ---- following the feed ------------------------------------------------------------

    async def _follow(self) -> None:
        signal = self.hub.feed.signal
        poll = self.settings.poll_s
        while not self._stopping:
            try:
                if time.monotonic() - self._loaded > RELOAD_S:
                    await self.reload()
                cursor = await self._hold()
                if cursor is None:  # another hub process follows the feed
                    await asyncio.sleep(self.lease_s / 2)
                    continue
                on = {t.on for t in self.active()}
                types = on | _ALWAYS
                # watched from before the read, so a commit the reader wants while it runs is not missed
                watched = signal.watch(on | _WAKE)
                try:
                    if await self._read_once(cursor, types):
                        continue
                    # at once if such a commit came meanwhile; other commits are slept through
                    await signal.wait(poll, watched=watched)
                finally:
                    signal.unwatch(watched)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may be away for a while
                log.warning("trigger feed reading failed", error=type(exc).__name__)
                self._cursor = None
                await asyncio.sleep(poll)

    async def _read_once(self, cursor: int, types: set[str]) -> bool:
        """Read a page of the changes of ``types`` after ``cursor``, start the runs they
        start, and move the position past them; whether to read again at once (a full page,
        or a position to take again)."""
        read = functools.partial(read_changes, after=cursor, limit=self.batch, types=types, check=False)
        try:
            page = await self.hub.store.read(read)
        except FellBehind as exc:
            # the changes up to pruned_through are gone: go on from there, and say so loudly
            log.error("triggers fell behind the feed's retention", pruned_through=exc.pruned_through)
            await self._advance(exc.pruned_through, [], [], [])
            return True
        if page.changes:
            matches, made, erased = self._sort(page.changes)
            # the database is read only for the changes some trigger may start a run on
            started = await self.hub.store.read(functools.partial(self._runs, matches)) if matches else []
            # past a change some trigger may start a run on, the position is written even when
            # none did: read again later, it would be judged against the customer's facts as
            # they are then, not as they were when it happened
            if matches or made or erased or time.monotonic() - self._cursor_written > NOTE_S:
                await self._advance(page.next, started, made, erased)
            else:
                # changes no trigger can start a run on: the position is noted now and then
                # (reading them again after a restart starts nothing)
                self._cursor = page.next
            if len(page.changes) == self.batch or self._cursor is None:
                return True
            # caught up: let a few more recording transactions commit before reading again, so
            # one read (and one write of the position) follows several of them rather than each
            # (SQLite has one writer, shared with ingest)
            await asyncio.sleep(GATHER_S)
            return False
        if page.next > cursor:
            # only other types went by: noted now and then (reading them again is harmless)
            if time.monotonic() - self._cursor_written > NOTE_S:
                await self._advance(page.next, [], [], [])
            else:
                self._cursor = page.next
        return False

    async def _hold(self) -> int | None:
        """The position to read after, while this process holds the reading lease."""
        if self._cursor is not None and self._lease_until - time.monotonic() > self.lease_s / 2:
            return self._cursor
        now = utcnow()
        claimed = await self.hub.store.write(
            functools.partial(claim_cursor, name=CURSOR, owner=self.owner, now=now, lease_s=self.lease_s)
        )
        if claimed is None:
            self._cursor = None
            return None
        # Renewing a lease this process held: the position read to (in memory, not written when
        # the changes started nothing) stays. Going back to the stored one would judge those
        # changes again against the customers' facts as they are now, and start runs they did
        # not start when they happened. A stored position that moved was moved by another process.
        if self._cursor is None or claimed != self._stored or self._cursor < claimed:
            self._cursor = claimed
        self._stored = claimed
        self._lease_until = time.monotonic() + self.lease_s
        return self._cursor

    async def _advance(
        self,
        to: int,
        started: Sequence[dict[str, Any]],
        made: Sequence[tuple[str, str, str, datetime]],
        erased: Sequence[str],
    ) -> None:
        now = utcnow()
        room = MAX_IN_FLIGHT - len(self._in_flight) - len(self._ready)
        gone = set(erased)

        def write(conn: Connection) -> list[dict[str, Any]] | None:
            c = trigger_cursor.c
            moved = conn.execute(
                trigger_cursor.update()
                .where(c.name == CURSOR, c.lease_owner == self.owner, c.position == self._stored)
                .values(position=to, updated_at=now, lease_until=now + timedelta(seconds=self.lease_s))
            ).rowcount
            if not moved:
                return None
            # the runs due now are claimed as they are written (as many as this process has room
            # for): they go to this process's worker at once, with no look for due runs and no
            # claim of their own
            rows, mine = [dict(r) for r in started], 0
            for row in rows:
                if mine < room and row["due_at"] <= now and row["customer_id"] not in gone:
                    row |= {"lease_owner": self.owner, "lease_until": now + timedelta(seconds=self.lease_s)}
                    row["attempts"] = 1
                    mine += 1
            fresh = runs.schedule(conn, rows)
            runs.mark_offers_made(conn, made)
            runs.forget_customers(conn, erased, now)
            return fresh

        fresh = await self.hub.store.write(write)
        if fresh is not None:
            self._cursor = self._stored = to
            self._lease_until = time.monotonic() + self.lease_s
            self._cursor_written = time.monotonic()
            self._ready += [r for r in fresh if r["lease_owner"] == self.owner]
            # the worker wakes for the runs due now; a delayed run is found by its poll
            if any(r["due_at"] <= now for r in fresh):
                self._wake.set()
        else:  # the lease was taken over: read the cursor again
            self._cursor = None

    def _sort(
        self, changes: Sequence[Change]
    ) -> tuple[list[tuple[Change, Trigger]], list[tuple[str, str, str, datetime]], list[str]]:
        """The (change, trigger) pairs that may start a run (their conditions not yet
        evaluated), the queued offers these changes say were made, and the customers they
        say were erased: what can be told without the database."""
        by_type: dict[str, list[Trigger]] = {}
        for trigger in self.active():
            by_type.setdefault(trigger.on, []).append(trigger)
        made: list[tuple[str, str, str, datetime]] = []
        erased: list[str] = []
        matches: list[tuple[Change, Trigger]] = []
        for change in changes:
            if change.type == "offer.made" and change.customer_id:
                source = str(change.data.get("source") or "")
                if source.startswith("trigger:") and change.data.get("response") != "held_out":
                    made.append(
                        (change.customer_id, source[len("trigger:") :], str(change.data.get("code")), change.at)
                    )
            if change.type == "customer.erased" and change.customer_id:
                erased += [change.customer_id, *[str(i) for i in change.data.get("merged_ids") or ()]]
            if not change.customer_id or not change.data:
                continue  # about no one, or scrubbed by an erasure
            if change.type == "event.recorded":
                if str(change.data.get("event_id", "")).startswith(OUTBOUND_PREFIX):
                    continue  # a trigger's own act is never the cause of another
                occurred = _occurred(change)
                if occurred is not None and change.at - occurred > self.settings.max_event_age:
                    continue  # history loaded late (an import): triggers act on what happens now
            matches += [(change, t) for t in by_type.get(change.type, ()) if t.may_match(change.data)]
        return matches, made, erased

    def _runs(self, matches: Sequence[tuple[Change, Trigger]], conn: Connection) -> list[dict[str, Any]]:
        """The runs these (change, trigger) pairs start: their conditions evaluated over the
        change and the customer's facts."""
        now = utcnow()
        current = _current(conn, {c.customer_id for c, _ in matches if c.customer_id})
        wanted = sorted({current[c.customer_id] for c, t in matches if t.needs_facts and c.customer_id in current})
        facts = self.hub.planner.facts_of(conn, wanted, now) if wanted else {}
        extra: dict[tuple[str, bool, bool], dict[str, Any]] = {}
        started: list[dict[str, Any]] = []
        for change, trigger in matches:
            cid = current.get(change.customer_id or "")
            if cid is None:
                continue
            if trigger.when is not None:
                if trigger.needs_facts and cid not in facts:
                    continue  # merged away or gone since
                seen = {**facts.get(cid, {}), "change": change.data, "change_type": change.type}
                if any(trigger.contact):
                    needs = (cid, *trigger.contact)
                    if needs not in extra:
                        extra[needs] = _contact_facts(conn, cid, now, trigger.when.text)
                    seen |= extra[needs]
                else:
                    seen |= _NO_CONTACT
                if not trigger.matches(seen):
                    continue
            started.append(self._new_run(trigger, change, cid, now))
        return started

    def _new_run(self, trigger: Trigger, change: Change, customer_id: str, now: datetime) -> dict[str, Any]:
        first = trigger.steps[0]
        # a wait counts from when the event happened (the cart), else from the change
        since = min(_occurred(change) or change.at, change.at, now)
        due = since + timedelta(seconds=first.seconds) if isinstance(first, Wait) else now
        return {
            "key": runs.run_key(trigger.name, change.seq),
            "trigger": trigger.name,
            "customer_id": customer_id,
            "position": change.seq,
            "change_type": change.type,
            "change": dict(change.data) | {"at": change.at.isoformat()},
            "step": 0,
            "status": "scheduled",
            "due_at": due,
            "since": since,
            "control": in_control(f"trigger:{trigger.name}", customer_id, trigger.holdout_percent),
            "channel": None,
            "fired_at": None,
            "reason": None,
            "offer": None,
            "expires_at": None,
            "event_id": None,
            "attempts": 0,
            "lease_owner": None,
            "lease_until": None,
            "created_at": now,
            "updated_at": now,
        }

    # ---- running -----------------------------------------------------------------------

    async def _work(self) -> None:
        """Start each claimed run as a task of its own (up to ``MAX_IN_FLIGHT`` at once): each
        mostly waits on the database, one slow act holds up no other, and a run claimed while
        others are acted on starts at once, not after them."""
        poll = self.settings.poll_s
        keeper = asyncio.create_task(self._keep_leases(), name="prm-triggers-leases")
        try:
            while not self._stopping:
                # cleared before looking, not after: a run started while these are acted on wakes the next look
                self._wake.clear()
                ready, self._ready = self._ready, []
                for run in ready:  # claimed by the feed reader as it wrote them
                    self._start(run)
                room = min(CLAIM_BATCH, MAX_IN_FLIGHT - len(self._in_flight))
                claimed: list[dict[str, Any]] = []
                # the database is looked at when nothing came from the feed reader, and at least every poll
                if room > 0 and (not ready or time.monotonic() - self._looked >= poll):
                    self._looked = time.monotonic()
                    try:
                        now = utcnow()
                        if await self.hub.store.read(functools.partial(_due, now=now, paused=self.paused)):
                            claimed = await self.hub.store.write(
                                functools.partial(
                                    self._claim,
                                    now=now,
                                    paused=sorted(self.paused),
                                    acting=sorted(self._in_flight),
                                    limit=room,
                                )
                            )
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        log.warning("trigger runs not claimed", error=type(exc).__name__)
                    for run in claimed:
                        self._start(run)
                if (claimed and len(claimed) >= room) or self._wake.is_set():
                    continue
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=poll)
                except TimeoutError:
                    pass
        finally:
            keeper.cancel()
            acting = list(self._in_flight.values())
            for task in acting:
                task.cancel()
            await asyncio.gather(keeper, *acting, return_exceptions=True)

    def _start(self, run: dict[str, Any]) -> None:
        key = run["key"]
        task = asyncio.create_task(self._advance_run(run), name="prm-triggers-run")
        self._in_flight[key] = task

        def done(_task: asyncio.Task[None]) -> None:
            full = len(self._in_flight) >= MAX_IN_FLIGHT
            if self._in_flight.get(key) is _task:
                del self._in_flight[key]
            if full:  # room again: look for due runs
                self._wake.set()

        task.add_done_callback(done)

    async def _keep_leases(self) -> None:
        """Renew, every third of a lease, the leases of the runs this process is taking through
        their steps (a send may take longer than a lease): only a dead process's runs are
        claimed again when their lease runs out."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            keys = list(self._in_flight)
            if not keys:
                continue
            try:
                await self.hub.store.write(
                    functools.partial(runs.renew_leases, keys=keys, owner=self.owner, lease_s=self.lease_s)
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may be away: the next renewal tries again
                log.warning("trigger run leases not renewed", error=type(exc).__name__)

    def _claim(
        self, conn: Connection, *, now: datetime, paused: list[str], acting: list[str], limit: int
    ) -> list[dict[str, Any]]:
        # a paused trigger's runs wait, unclaimed, for it to be resumed; a run this process is
        # acting on (its lease renewal late) is not claimed again
        return runs.claim_due(conn, self.owner, now, self.lease_s, limit, exclude=paused, acting=acting)

    async def _advance_run(self, run: dict[str, Any]) -> None:
        """Take a claimed run through its steps until it waits or ends."""
        try:
            values = await self._steps(run)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = exc.args[0] if isinstance(exc, _Retry) and exc.args else type(exc).__name__
            if run["attempts"] >= MAX_ATTEMPTS:
                values = {"status": "failed", "reason": f"gave up after {run['attempts']} attempts: {reason}"[:500]}
                log.error("trigger run failed", trigger=run["trigger"], reason=str(reason)[:200])
            else:
                delay = backoff_s(run["attempts"], None, base_s=1.0, cap_s=300.0)
                values = {"due_at": utcnow() + timedelta(seconds=delay), "reason": str(reason)[:500]}
                log.warning("trigger act will be retried", trigger=run["trigger"], retry_in_s=round(delay, 2))
        values.setdefault("updated_at", utcnow())
        extra = values.pop("_write", None)

        def write(conn: Connection) -> None:
            if runs.save_run(conn, run["key"], self.owner, run["attempts"], values) and extra is not None:
                extra(conn)

        try:
            await self._save(write)
        except Exception as exc:  # the lease runs out and the run is claimed again
            log.warning("trigger run not saved", trigger=run["trigger"], error=type(exc).__name__)

    async def _save(self, write: Callable[[Connection], None]) -> None:
        """Run ``write`` (a run's save) in a write transaction shared with the saves queued
        meanwhile: one transaction writes what the runs acted on together did, not one each
        (SQLite has one writer, shared with ingest)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.add_done_callback(lambda f: f.cancelled() or f.exception())  # awaited by no one after a cancel
        self._saves.append((write, done))
        if self._saving is None or self._saving.done():
            self._saving = asyncio.create_task(self._write_saves(), name="prm-triggers-saves")
        await asyncio.shield(done)  # a run cancelled as the hub stops: its save still goes

    async def _write_saves(self) -> None:
        while self._saves:
            batch, self._saves = self._saves, []
            await self._write_batch(batch)

    async def _write_batch(self, batch: list[tuple[Callable[[Connection], None], asyncio.Future[None]]]) -> None:
        def write(conn: Connection) -> None:
            for one, _done in batch:
                one(conn)

        try:
            await self.hub.store.write(write)
        except Exception as exc:
            if len(batch) > 1:  # one save failing must not fail the others: each alone
                for item in batch:
                    await self._write_batch([item])
                return
            failed = batch[0][1]
            if not failed.done():
                failed.set_exception(exc)
            return
        for _one, done in batch:
            if not done.done():
                done.set_result(None)

    async def _steps(self, run: dict[str, Any]) -> dict[str, Any]:
        trigger = self.triggers.get(run["trigger"])
        if trigger is None:
            return {"status": "cancelled", "reason": "the trigger was removed", "due_at": None}
        step_no = run["step"]
        carried: dict[str, Any] = {}  # what the last act of this pass did, kept whatever comes next
        while step_no < len(trigger.steps):
            step = trigger.steps[step_no]
            now = utcnow()
            if isinstance(step, Wait):
                if step_no != run["step"]:
                    # arriving at a wait: the next step is due once it is over
                    return carried | {"step": step_no, "since": now, "due_at": now + timedelta(seconds=step.seconds)}
                if step.unless:  # claimed at a wait: it is over
                    came = await self.hub.store.read(
                        functools.partial(_came, customer_id=run["customer_id"], types=step.unless, since=run["since"])
                    )
                    if came is not None:
                        return {"status": "cancelled", "reason": f"a {came} event came within the wait", "due_at": None}
            elif isinstance(step, Check):
                facts = await self.hub.store.read(functools.partial(self._facts, run=run))
                if facts is None or not step.rule.matches(facts):
                    ended = {"status": "ended", "reason": f"steps[{step_no}].check did not match", "due_at": None}
                    return carried | ended
            else:
                outcome = await self._act(trigger, step, step_no, run)
                if outcome.get("status") != "fired":
                    return carried | {"step": step_no} | outcome  # a guard said no, or later, or it failed
                if step_no + 1 == len(trigger.steps):
                    return outcome | {"step": step_no + 1, "due_at": None}
                # more steps follow: what this act writes goes now, the run's state with the next save
                extra = outcome.pop("_write", None)
                if extra is not None:
                    await self.hub.store.write(extra)
                carried = {k: v for k, v in outcome.items() if k in _CARRIED}
                run = {**run, **carried}
            step_no += 1
        return carried | {"status": "fired", "step": step_no, "due_at": None}

    def _facts(self, conn: Connection, *, run: dict[str, Any]) -> dict[str, Any] | None:
        now = utcnow()
        cid = _current(conn, {run["customer_id"]}).get(run["customer_id"])
        if cid is None:
            return None
        facts = self.hub.planner.facts_of(conn, [cid], now).get(cid)
        if facts is None:
            return None
        change = {k: v for k, v in run["change"].items() if k != "at"}
        return {
            **facts,
            **_contact_facts(conn, cid, now, "consents days_since_last_contact"),
            "change": change,
            "change_type": run["change_type"],
        }

    # ---- acting ------------------------------------------------------------------------

    async def _act(self, trigger: Trigger, act: Act, step_no: int, run: dict[str, Any]) -> dict[str, Any]:
        key = runs.act_key(run["key"], step_no)
        now = utcnow()
        channel = act.channel if act.kind != "offer" else None
        # a message whose event is recorded was sent (before a crash, or by a process whose
        # lease ran out): it is not handed over again, and nothing is left to do
        sent = (self._touchpoint(act), outbound_event_id(key)) if act.kind == "message" else None

        def read(conn: Connection) -> tuple[dict[str, Any] | None, datetime | None]:
            who = _customer(
                conn, customer_id=run["customer_id"], channel=channel, now=now, window=self.settings.frequency_window_s
            )
            if sent is None or sent[0] is None:
                return who, None
            return who, _recorded_at(conn, sent[0], sent[1])

        who, sent_at = await self.hub.store.read(read)
        base: dict[str, Any] = {"channel": channel, "customer_id": who["id"] if who else run["customer_id"]}
        if sent is not None and sent_at is not None:
            return base | {"status": "fired", "fired_at": sent_at, "event_id": sent[1], "reason": None}
        if who is None or who["erased"]:
            return base | {"status": "skipped", "reason": "the customer was erased", "due_at": None}
        cid = who["id"]
        if suppressed(who["traits"], channel):
            return base | {"status": "skipped", "reason": "the customer is suppressed", "due_at": None}
        if trigger.purpose == "marketing":
            purpose = "marketing"
            if not allows(who["consents"], purpose, channel, defaults=self.hub.planner.offers.consent_defaults):
                where = f" on {channel}" if channel else ""
                return base | {"status": "skipped", "reason": f"no marketing consent{where}", "due_at": None}
        if trigger.cooldown_s is not None:
            last = await self.hub.store.read(functools.partial(_last_fired, trigger=trigger.name, customer_id=cid))
            if last is not None and now - last < timedelta(seconds=trigger.cooldown_s):
                return base | {"status": "skipped", "reason": "within the trigger's cooldown", "due_at": None}
        if act.kind != "offer":
            if trigger.purpose == "marketing" and who["sent_recently"] >= self.settings.frequency_cap:
                return base | {"status": "skipped", "reason": f"frequency cap on {channel}", "due_at": None}
            quiet = self.settings.quiet_until(who["traits"], now)
            if quiet is not None:
                # later, not never: the run waits, unclaimed, for the quiet hours to end
                return base | {"status": "scheduled", "due_at": quiet, "reason": "waiting for quiet hours to end"}
        if run["control"]:
            return base | {"status": "held_out", "fired_at": now, "due_at": None, "reason": None}
        values = {
            "first_name": who["traits"].get("first_name"),
            "name": who["traits"].get("name"),
            "tier": who["tier"],
            "trigger": trigger.name,
            "code": (act.offer or {}).get("code"),
        }
        # a survey's message carries its scale and signed link (prm_core.surveys)
        survey = self.hub.surveys.survey_of(act, key, run["change_type"], run["change"], self._touchpoint(act))
        if survey is not None:
            values["survey_url"] = survey["survey_url"]
        if act.kind == "offer":
            outcome = await self._queue_offer(trigger, act, key, cid, who, now)
        elif act.kind == "partner":
            outcome = await self._ask_partner(trigger, act, key, cid, who, act.render(values))
        else:
            outcome = await self._send(trigger, act, key, cid, who, act.render(values), survey)
        if outcome.get("status") == "fired":
            self._note_latency(run, now)
        return base | {"reason": None} | outcome

    def _note_latency(self, run: dict[str, Any], now: datetime) -> None:
        at = run["change"].get("at")
        if isinstance(at, str) and len(self.latencies) < 100_000:
            self.latencies.append((now - datetime.fromisoformat(at)).total_seconds())

    def _touchpoint(self, act: Act) -> str | None:
        named = act.touchpoint or (self.settings.touchpoint if act.kind != "message" else None)
        tps = self.hub.registrations.touchpoints
        if named is not None:
            return named if named in tps else None
        if act.channel in tps:
            return act.channel
        return next((tp.name for tp in sorted(tps, key=lambda t: t.name) if tp.channel == act.channel), None)

    def _outbound(
        self, key: str, type_: str, touchpoint: str, who: Mapping[str, Any], data: Mapping[str, Any]
    ) -> Event:
        return Event(
            id=outbound_event_id(key),
            type=type_,
            occurred_at=utcnow(),
            touchpoint=touchpoint,
            identities=(who["identity"],),
            direction="outbound",
            data=data,
        )

    def _cannot_record(self, act: Act, tp: str | None, who: Mapping[str, Any], what: str) -> dict[str, Any] | None:
        """Why an offer or a partner request cannot be recorded on the customer, or ``None``."""
        if tp is None:
            return {
                "status": "failed",
                "reason": f"touch point {act.touchpoint or self.settings.touchpoint!r} is not registered",
                "due_at": None,
            }
        if who["identity"] is None:
            return {
                "status": "skipped",
                "reason": f"the customer has no identity to record the {what} on",
                "due_at": None,
            }
        return None

    async def _queue_offer(
        self, trigger: Trigger, act: Act, key: str, cid: str, who: Mapping[str, Any], now: datetime
    ) -> dict[str, Any]:
        offer = dict(act.offer or {})
        tp = self._touchpoint(act)
        refused = self._cannot_record(act, tp, who, "offer")
        if refused is not None:
            return refused
        assert tp is not None  # _cannot_record refused a missing one
        data = {"trigger": trigger.name, "action": "offer", "code": offer["code"], "purpose": trigger.purpose}
        (recorded,) = await self.hub.record([self._outbound(key, "offer.queued", tp, who, data)])
        row = {
            "key": key,
            "trigger": trigger.name,
            "customer_id": cid,
            "code": offer["code"],
            "title": offer["title"],
            "description": offer["description"],
            "score": offer["score"],
            # an offer the trigger made for the service (transactional) needs no marketing consent where it is said
            "purpose": "marketing" if trigger.purpose == "marketing" else "personalization",
            "queued_at": now,
            "expires_at": now + timedelta(seconds=act.expires_s),
            "made_at": None,
        }

        def write(conn: Connection) -> None:
            if conn.execute(sa.select(trigger_offers.c.key).where(trigger_offers.c.key == key)).first() is None:
                conn.execute(trigger_offers.insert().values(**row))

        return {
            "status": "fired",
            "fired_at": now,
            "event_id": recorded.event.id,
            "offer": offer,
            "expires_at": row["expires_at"],
            "_write": write,
        }

    async def _ask_partner(
        self, trigger: Trigger, act: Act, key: str, cid: str, who: Mapping[str, Any], text: str
    ) -> dict[str, Any]:
        partners = self.hub.registrations.partners
        name = act.partner
        if name is None:
            name = next((p.name for p in sorted(partners, key=lambda p: p.name) if p.role == "notification"), None)
        if name is None or name not in partners:
            reason = f"no partner {name!r}" if name else "no partner with role notification"
            return {"status": "failed", "reason": reason, "due_at": None}
        tp = self._touchpoint(act)
        refused = self._cannot_record(act, tp, who, "request")
        if refused is not None:
            return refused
        assert tp is not None  # _cannot_record refused a missing one
        request = FulfillmentRequest(
            id=key,
            partner=name,
            action=act.request,
            customer_id=cid,
            payload={"trigger": trigger.name, "channel": act.channel, "purpose": trigger.purpose, "text": text},
            idempotency_key=key,
        )
        planned = PlannedFulfillment(
            request, role=getattr(partners.get(name), "role", ""), outbox_id="ful_" + key[4:36]
        )
        data = {
            "trigger": trigger.name,
            "action": "partner",
            "purpose": trigger.purpose,
            "fulfillments": [{"request_id": key, "partner": name, "action": act.request}],
        }
        base = self._outbound(key, "fulfillment.planned", tp, who, data)
        event = PlannedEvent(
            **{
                a: getattr(base, a)
                for a in ("id", "type", "occurred_at", "touchpoint", "identities", "direction", "data")
            },
            planned=(planned,),
        )
        (recorded,) = await self.hub.record([event])
        self.hub.outbox.wake()
        return {"status": "fired", "fired_at": utcnow(), "event_id": recorded.event.id}

    async def _send(
        self,
        trigger: Trigger,
        act: Act,
        key: str,
        cid: str,
        who: Mapping[str, Any],
        text: str,
        survey: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        channel = act.channel or ""
        hook = self.hub.pm.hook.prm_send_message
        if not hook.get_hookimpls():
            return {
                "status": "failed",
                "reason": f"undeliverable: no touch point plugin sends messages ({channel} included)",
                "due_at": None,
            }
        tp = self._touchpoint(act)
        if tp is None:
            return {
                "status": "failed",
                "reason": f"undeliverable: no touch point is registered for the {channel} channel",
                "due_at": None,
            }
        if who["identity"] is None:
            return {"status": "skipped", "reason": "the customer has no identity to send to", "due_at": None}
        message = Message(
            id=key,
            channel=channel,
            customer_id=cid,
            text=text,
            purpose=trigger.purpose,
            trigger=trigger.name,
            to=who["address"],
            subject=act.subject,
            locale=who["traits"].get("locale"),
            first_name=who["traits"].get("first_name"),
            data=survey or {},
        )
        try:
            answer = hook(message=message)
            if inspect.isawaitable(answer):
                answer = await asyncio.wait_for(answer, timeout=30)
        except Exception as exc:
            raise _Retry(f"the {channel} sender failed: {type(exc).__name__}") from exc
        if answer is None:
            return {
                "status": "failed",
                "reason": f"undeliverable: no plugin sends on the {channel} channel",
                "due_at": None,
            }
        if not isinstance(answer, MessageResult):
            raise _Retry(f"the {channel} sender answered {type(answer).__name__}, not a MessageResult")
        if answer.status != "sent":
            return {
                "status": "failed",
                "reason": f"the {channel} sender refused it: {answer.reason}"[:500],
                "due_at": None,
            }
        data: dict[str, Any] = {
            "trigger": trigger.name,
            "action": "message",
            "channel": channel,
            "purpose": trigger.purpose,
            "message_id": key,
            "ref": answer.ref,
        }
        if survey is not None:  # what the survey asks, never its link (the link answers it)
            data["survey"] = {k: survey["survey"][k] for k in ("kind", "scale", "about", "question")}
        # keyed by the message id: a reply naming it (an email's In-Reply-To) joins this dialogue
        sent = evolve(self._outbound(key, "message.sent", tp, who, data), dialogue=key)
        recorded = await self._record_sent(sent)
        return {"status": "fired", "fired_at": utcnow(), "event_id": recorded.event.id}

    async def _record_sent(self, event: Event) -> RecordedEvent:
        """Record a sent message's event (its ``message.sent`` change is written with it, in its
        transaction: :func:`message_changes`). The message is out: a database away for a moment
        is waited for here, since a retried act would hand the message over again."""
        for wait_s in (0.1, 0.3, 1.0, 3.0):
            try:
                (recorded,) = await self.hub.record([event])
                return recorded
            except (StoreUnavailable, Overloaded) as exc:
                log.warning("sent message not recorded yet", error=type(exc).__name__, retry_in_s=wait_s)
                await asyncio.sleep(wait_s)
        (recorded,) = await self.hub.record([event])
        return recorded


def claim_cursor(conn: Connection, *, name: str, owner: str, now: datetime, lease_s: float) -> int | None:
    """Take (or renew) the lease on the feed reader ``name``'s row of ``trigger_cursor`` and
    give its position; ``None`` while another process holds a lease that has not run out.
    The update names the holder it read, so of two processes claiming at once one wins."""
    c = trigger_cursor.c
    row = conn.execute(sa.select(trigger_cursor).where(c.name == name)).first()
    if row is None:
        return None
    if row.lease_owner not in (None, owner) and row.lease_until and row.lease_until > now:
        return None
    holder = c.lease_owner.is_(None) if row.lease_owner is None else c.lease_owner == row.lease_owner
    taken = conn.execute(
        trigger_cursor.update()
        .where(c.name == name, holder)
        .values(lease_owner=owner, lease_until=now + timedelta(seconds=lease_s))
    ).rowcount
    return int(row.position) if taken else None


def message_changes(recorded: Sequence[RecordedEvent]) -> list[NewChange]:
    """The ``message.sent`` changes of a trigger's ``message.sent`` events just recorded: the
    recording transaction writes them (:class:`~prm_core.recording.IngestRules`), so a sent
    message's change commits exactly when its event does, once, however often the act is
    retried (a duplicate event adds nothing)."""
    found = []
    for r in recorded:
        ev = r.event
        if ev.type == "message.sent" and ev.direction == "outbound" and ev.id.startswith(OUTBOUND_PREFIX):
            data = ev.data
            if "message_id" not in data:
                continue
            change = {
                "message_id": data["message_id"],
                "channel": data.get("channel"),
                "touchpoint": ev.touchpoint,
                "dialogue_id": r.dialogue_id,
            }
            found.append(NewChange("message.sent", r.customer_id, change))
    return found


# ---- reads ---------------------------------------------------------------------------


def _occurred(change: Change) -> datetime | None:
    """When an ``event.recorded`` change's event happened (``None`` for other changes)."""
    raw = change.data.get("occurred_at") if change.type == "event.recorded" else None
    if not isinstance(raw, str):
        return None
    try:
        at = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _recorded_at(conn: Connection, touchpoint: str, event_id: str) -> datetime | None:
    """When the event ``event_id`` was recorded at ``touchpoint`` (its time), or ``None``."""
    e = events.c
    q = sa.select(e.occurred_at).where(e.touchpoint == touchpoint, e.event_id == event_id)
    at: datetime | None = conn.execute(q).scalar()
    if at is not None and at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at


def _due(conn: Connection, *, now: datetime, paused: set[str]) -> bool:
    r = trigger_runs.c
    q = sa.select(r.key).where(r.status == "scheduled", r.due_at <= now)
    if paused:
        q = q.where(r.trigger.not_in(sorted(paused)))
    return conn.execute(q.limit(1)).first() is not None


def _current(conn: Connection, ids: set[str]) -> dict[str, str]:
    """Each customer id as it is now (itself, or the survivor it was merged into)."""
    c = customers.c
    rows = conn.execute(sa.select(c.id, c.merged_into).where(c.id.in_(sorted(ids)))).all()
    found = {r.id: r.merged_into or r.id for r in rows}
    # merges keep redirects one hop long (prm_core.merging): one more look is enough
    onward = {v for v in found.values() if v not in found}
    if onward:
        more = dict(conn.execute(sa.select(c.id, c.merged_into).where(c.id.in_(sorted(onward)))).all())
        found = {k: (more.get(v) or v) for k, v in found.items()}
    return found


def _owners(customer_id: str) -> Any:
    c = customers.c
    return sa.select(c.id).where(sa.or_(c.id == customer_id, c.merged_into == customer_id))


def _contact_facts(conn: Connection, customer_id: str, now: datetime, text: str) -> dict[str, Any]:
    """``consents`` and ``days_since_last_contact``, read only when the condition names them."""
    out: dict[str, Any] = {"consents": [], "days_since_last_contact": None}
    if "consents" in text:
        out["consents"] = granted(load_consents(conn, customer_id))
    if "days_since_last_contact" in text:
        e = events.c
        last = conn.execute(
            sa.select(sa.func.max(e.occurred_at)).where(e.customer_id == customer_id, e.direction == "outbound")
        ).scalar()
        if last is not None:
            if last.tzinfo is None:  # a bare MAX() may come back without the column's type
                last = last.replace(tzinfo=UTC)
            out["days_since_last_contact"] = (now - last).total_seconds() / 86400
    return out


def _came(conn: Connection, *, customer_id: str, types: Sequence[str], since: datetime) -> str | None:
    """The type of an inbound event of ``types`` the customer had since ``since``, if any."""
    e = events.c
    cid = _current(conn, {customer_id}).get(customer_id, customer_id)
    q = sa.select(e.type).where(
        e.customer_id == cid, e.occurred_at >= since, e.type.in_(list(types)), e.direction == "inbound"
    )
    return conn.execute(q.limit(1)).scalar()


def _last_fired(conn: Connection, *, trigger: str, customer_id: str) -> datetime | None:
    r = trigger_runs.c
    q = sa.select(sa.func.max(r.fired_at)).where(
        r.trigger == trigger, r.customer_id.in_(_owners(customer_id)), r.fired_at.is_not(None)
    )
    return conn.execute(q).scalar()


def _customer(
    conn: Connection, *, customer_id: str, channel: str | None, now: datetime, window: float
) -> dict[str, Any] | None:
    """What the guards and the act need of the customer, as they are now."""
    cid = _current(conn, {customer_id}).get(customer_id)
    if cid is None:
        return None
    row = conn.execute(sa.select(customers.c.tier, customers.c.traits).where(customers.c.id == cid)).first()
    if row is None:
        return None
    erased = conn.execute(sa.select(erasures.c.customer_id).where(erasures.c.customer_id == cid)).first() is not None
    i = identities.c
    owned = conn.execute(
        sa.select(i.namespace, i.value)
        .where(i.customer_id.in_(_owners(cid)), i.shared.is_(False))
        .order_by(i.namespace, i.first_seen_at)
    ).all()
    wanted = ADDRESS.get(channel or "")
    address = next((r for r in owned if r.namespace == wanted), None)
    chosen = address or (owned[0] if owned else None)
    sent = 0
    if channel is not None:
        r = trigger_runs.c
        sent = (
            conn.execute(
                sa.select(sa.func.count()).where(
                    r.customer_id.in_(_owners(cid)),
                    r.channel == channel,
                    r.control.is_(False),
                    r.fired_at > now - timedelta(seconds=window),
                )
            ).scalar()
            or 0
        )
    return {
        "id": cid,
        "erased": erased,
        "tier": row.tier,
        "traits": dict(row.traits or {}),
        "consents": load_consents(conn, cid),
        "identity": Identity(chosen.namespace, chosen.value) if chosen else None,
        "address": address.value if address else None,
        "sent_recently": int(sent),
    }
