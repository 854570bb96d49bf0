"""The transactional outbox: partner work that is never lost.

A fulfillment request is written as an ``outbox`` row in the same transaction as the
dialogue event that planned it (a :class:`PlannedEvent`, recorded by the ingest writer like
any other event, see :func:`outbox_rows`). From then on the row is the truth:

- the touch point's request dispatches it at once (the row is born claimed by that call,
  ``attempts = 1`` and a lease in ``next_attempt_at``) so a waiting customer is not delayed
  by a poll;
- the :class:`Outbox` worker, started with the hub, claims rows whose ``next_attempt_at`` has
  passed (a lease that ran out means the hub that held it died), on PostgreSQL with
  ``FOR UPDATE SKIP LOCKED`` so several hub processes never claim one row together;
- ``attempts`` is the fencing token of a claim: a dispatcher whose lease was taken over
  cannot overwrite the newer dispatcher's outcome;
- a failed attempt is rescheduled with exponential backoff and full jitter, never sooner
  than the partner's ``Retry-After`` (:class:`RetryLater`), until ``max_attempts``;
- every change of status is recorded as a ``fulfillment.updated`` event in the dialogue
  that asked (id derived from the request and status, so recording it twice is a
  duplicate) and then told to plugins through ``prm_fulfillment_updated``;
- a partner's answer or callback about a request an erasure scrubbed (the customer was
  erased since it was asked, :func:`erased_requests`) is acknowledged and dropped: no
  event, no change to the row, nothing told (the erasure promises nothing about the person
  is kept).

Partners see every retry with the same ``Idempotency-Key``, so a request re-sent after a
crash (acknowledged by the partner, but not yet marked here) is recognized by the partner.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa
import structlog
from attrs import define, evolve, field, frozen
from sqlalchemy.engine import Connection

from .feed.changes import NewChange
from .feed.writing import emit
from .ids import new_id
from .model import Event, FulfillmentRequest, FulfillmentResult, _iso
from .store.engine import advisory_locks, customer_lock_key
from .store.lists import one_of
from .store.tables import customers, erasures, outbox, partner_callbacks, utcnow

if TYPE_CHECKING:
    from .hub import Hub

__all__ = [
    "STATUSES",
    "Claim",
    "Fulfillment",
    "FulfillmentEvent",
    "FulfillmentStatus",
    "Outbox",
    "PlannedEvent",
    "PlannedFulfillment",
    "RetryLater",
    "backoff_s",
    "erased_answers",
    "erased_requests",
    "fulfillments_of",
    "fulfillments_of_dialogue",
    "outbox_rows",
]

log = structlog.get_logger(__name__)

STATUSES = ("pending", "confirmed", "rejected", "failed", "completed")
FulfillmentStatus = Literal["pending", "confirmed", "rejected", "failed", "completed"]
MAX_VIEW_FULFILLMENTS = 20


class RetryLater(Exception):
    """Raised by a ``prm_fulfill`` implementation when the partner cannot take the request now
    (a 429/503, a timeout, an open circuit breaker). ``retry_after_s`` is the partner's own
    ``Retry-After``, the earliest the outbox will try again."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


@frozen
class PlannedFulfillment:
    """A fulfillment request with the role of its partner, as planned for one turn."""

    request: FulfillmentRequest
    role: str = ""
    outbox_id: str = field(factory=lambda: new_id("ful"))


@frozen
class PlannedEvent(Event):
    """An event recorded together with the partner work it plans: recording it inserts one
    outbox row per ``planned`` item in the same transaction. Never parsed from a request
    body, so no touch point can put work in the outbox by sending an event.

    ``claimed_until``: the rows are born claimed by the caller, who dispatches them at once;
    the worker takes them over only when that lease runs out.
    """

    planned: tuple[PlannedFulfillment, ...] = ()
    claimed_until: datetime | None = None


@frozen
class FulfillmentEvent(Event):
    """A ``fulfillment.updated`` event about outbox row ``row_id``: what a partner answered or
    called back. Recording drops it when an erasure scrubbed that row (see
    :func:`erased_answers`): the partner's word about an erased customer is not kept."""

    row_id: str = ""


@frozen
class SettledEvent(FulfillmentEvent):
    """A ``fulfillment.updated`` event that also writes its outbox row's new state, in the same
    transaction (and the same group commit as other events). ``fence``: the ``attempts`` the
    row must still have (the claim that made the attempt), so a dispatcher whose lease was
    taken over writes nothing to the row. Applied even when the event is a duplicate: the
    status was told before, but the row may have been claimed again since."""

    fence: int = field(kw_only=True)
    values: Mapping[str, Any] = field(factory=dict)


def _settle(returning: bool) -> Any:
    c = outbox.c
    update = outbox.update().where(
        c.id == sa.bindparam("settled_row"), c.status == "pending", c.attempts == sa.bindparam("settled_fence")
    )
    return update.returning(outbox) if returning else update


# built once (a statement built per call costs more than running it): with RETURNING or without
# (a database without UPDATE ... RETURNING, such as SQLite before 3.35)
_SETTLE = {returning: _settle(returning) for returning in (False, True)}
_ROW = sa.select(outbox).where(outbox.c.id == sa.bindparam("settled_row"))


def settle_row(conn: Connection, ev: Event) -> Fulfillment | None:
    """Inside the recording transaction: apply a :class:`SettledEvent`'s row update.

    Returns the request as it now is, for ``prm_fulfillment_updated`` once the batch commits,
    when the row has the event's outcome from the event's claim (just written, or written by
    the same claim before: a replay); ``None`` when the event is not a settlement, or when the
    claim was taken over (the newer claim's outcome stays, and is the one told).
    """
    if not isinstance(ev, SettledEvent) or not ev.row_id:
        return None
    returning = conn.dialect.update_returning  # PostgreSQL, SQLite 3.35+: the row for the hook, no second read
    # the SET clause comes from the parameters' names (the columns ev.values sets)
    params = {**ev.values, "settled_row": ev.row_id, "settled_fence": ev.fence}
    update = _SETTLE[returning]
    row = None
    if returning:
        row = conn.execute(update, params).first()
        updated = row is not None
    else:
        updated = bool(conn.execute(update, params).rowcount)
    if row is None:  # read it: no RETURNING, or not pending any more (told before, or taken over)
        row = conn.execute(_ROW, {"settled_row": ev.row_id}).first()
        if row is None or row.attempts != ev.fence or row.status != ev.values.get("status"):
            log.info("fulfillment claim was taken over", partner=ev.data.get("partner"), attempt=ev.fence)
            return None
    fulfillment = _fulfillment(row)
    if updated:
        emit(conn, fulfillment_change(fulfillment))
    return fulfillment


def erased_requests(conn: Connection, row_ids: Collection[str]) -> set[str]:
    """The outbox rows among ``row_ids`` that an erasure scrubbed: the customer of the row (or
    the customer it is merged into) was erased when or after the row last changed, which an
    erasure's own scrub of the row sets (:mod:`prm_core.privacy.erasure`). A request an erased
    customer's anonymous shell makes later is not one of them."""
    if not row_ids:
        return set()
    return set(conn.execute(_ERASED_Q[conn.dialect.name == "postgresql"], {"ids": sorted(row_ids)}).scalars())


def _erased_q(pg: bool) -> Any:
    o, c, e = outbox.c, customers.c, erasures.c
    erased = sa.exists().where(
        e.customer_id.in_([c.id, sa.func.coalesce(c.merged_into, c.id)]), e.erased_at >= o.updated_at
    )
    return sa.select(o.id).join_from(outbox, customers, c.id == o.customer_id).where(one_of(o.id, "ids", pg), erased)


_ERASED_Q = {pg: _erased_q(pg) for pg in (False, True)}  # the row ids are one parameter (prm_core.store.lists)


def erased_answers(conn: Connection, batch: Sequence[Event], indices: Iterable[int]) -> set[int]:
    """Inside the recording transaction (after the batch holds its customers' locks, so an
    erasure is either committed or waits): the positions among ``indices`` of
    :class:`FulfillmentEvent` s whose row an erasure scrubbed. Recording drops them, and
    settles no row for them: the erasure already called the request off."""
    about = {i: ev.row_id for i in indices if isinstance(ev := batch[i], FulfillmentEvent) and ev.row_id}
    erased = erased_requests(conn, set(about.values()))
    dropped = {i for i, row_id in about.items() if row_id in erased}
    for i in sorted(dropped):
        ev = batch[i]
        log.info(
            "partner answer for an erased customer dropped",
            partner=ev.data.get("partner"),
            status=ev.data.get("status"),
        )
    return dropped


def _lock_owner(conn: Connection, customer_id: str) -> None:
    """PostgreSQL: take the customer lock an erasure takes (following merges), so an erasure
    either committed before this transaction reads the row or waits until it commits."""
    if conn.dialect.name != "postgresql":
        return
    while True:
        advisory_locks(conn, [customer_lock_key(customer_id)])
        row = conn.execute(sa.select(customers.c.merged_into).where(customers.c.id == customer_id)).first()
        if row is None or row.merged_into is None:
            return
        customer_id = row.merged_into


def fulfillment_change(f: Fulfillment) -> NewChange:
    """The ``fulfillment.updated`` change (prm_core.feed) of a request's new status."""
    data = {
        "fulfillment_id": f.id,
        "partner": f.partner,
        "role": f.role,
        "action": f.action,
        "status": f.status,
        "dialogue_id": f.dialogue_id,
        "data": dict(f.data),
    }
    return NewChange("fulfillment.updated", f.customer_id, data, at=f.updated_at)


@frozen
class Fulfillment:
    """One fulfillment request as the hub knows it now: what the view lists and what
    ``prm_fulfillment_updated`` receives."""

    id: str
    partner: str
    role: str
    action: str
    status: FulfillmentStatus
    customer_id: str
    dialogue_id: str
    touchpoint: str
    requested_at: datetime
    updated_at: datetime
    data: Mapping[str, Any] = field(factory=dict)
    partner_ref: str | None = None
    outbox_id: str = ""

    def to_json(self) -> dict[str, Any]:
        """The shape of the view's ``fulfillments`` section (the public view's shape)."""
        return {
            "id": self.id,
            "partner": self.partner,
            "role": self.role,
            "action": self.action,
            "status": self.status,
            "dialogue_id": self.dialogue_id,
            "requested_at": _iso(self.requested_at),
            "updated_at": _iso(self.updated_at),
            "data": dict(self.data),
        }


@frozen
class Claim:
    """The right to make attempt number ``attempt`` of outbox row ``row_id``."""

    row_id: str
    attempt: int
    request: FulfillmentRequest
    touchpoint: str = ""
    dialogue_id: str = ""
    role: str = ""


def outbox_rows(ev: Event, customer_id: str, dialogue_id: str, now: datetime) -> list[dict[str, Any]]:
    """The outbox rows a recorded event adds (none unless it is a :class:`PlannedEvent`)."""
    if not isinstance(ev, PlannedEvent):
        return []
    rows = []
    for planned in ev.planned:
        req = planned.request
        rows.append(
            {
                "id": planned.outbox_id,
                "request_id": req.id,
                "idempotency_key": req.idempotency_key or req.id,
                "partner": req.partner,
                "role": planned.role,
                "action": req.action,
                "customer_id": customer_id,
                "touchpoint": ev.touchpoint,
                "dialogue_id": dialogue_id,
                "cause_event_id": ev.id,
                "payload": dict(req.payload),
                "status": "pending",
                "result": {},
                "partner_ref": None,
                "attempts": 1 if ev.claimed_until else 0,
                "last_error": None,
                "next_attempt_at": ev.claimed_until or now,
                "requested_at": now,
                "updated_at": now,
            }
        )
    return rows


def backoff_s(attempt: int, retry_after_s: float | None, *, base_s: float, cap_s: float) -> float:
    """Delay before the next attempt: exponential with full jitter (so a partner coming back
    is not hit by every queued request at once), never sooner than its ``Retry-After``."""
    ceiling = min(cap_s, base_s * 2 ** max(0, attempt - 1))
    delay = random.uniform(ceiling / 2, ceiling)
    return max(delay, retry_after_s or 0.0)


def _fulfillment(row: Any) -> Fulfillment:
    return Fulfillment(
        id=row.request_id,
        partner=row.partner,
        role=row.role,
        action=row.action,
        status=row.status,
        customer_id=row.customer_id,
        dialogue_id=row.dialogue_id,
        touchpoint=row.touchpoint,
        requested_at=row.requested_at,
        updated_at=row.updated_at,
        data=row.result or {},
        partner_ref=row.partner_ref,
        outbox_id=row.id,
    )


# built once with bind parameters: building a statement and its cache key cost more than
# running it on its index, on every view
_LIMIT: sa.BindParameter[int] = sa.bindparam("limit", type_=sa.Integer())
_OF_CUSTOMERS_Q = {  # per database kind: the owners are one parameter (prm_core.store.lists)
    pg: sa.select(outbox)
    .where(one_of(outbox.c.customer_id, "owners", pg))
    .order_by(outbox.c.requested_at.desc(), outbox.c.id)
    .limit(_LIMIT)
    for pg in (False, True)
}
_OF_DIALOGUE_Q = (
    sa.select(outbox)
    .where(outbox.c.dialogue_id == sa.bindparam("dialogue_id"))
    .order_by(outbox.c.requested_at.desc(), outbox.c.id)
    .limit(_LIMIT)
)


def fulfillments_of(conn: Connection, owners: Sequence[str], limit: int = MAX_VIEW_FULFILLMENTS) -> list[Fulfillment]:
    """The newest fulfillment requests of these customers (for the view)."""
    q = _OF_CUSTOMERS_Q[conn.dialect.name == "postgresql"]
    return [_fulfillment(r) for r in conn.execute(q, {"owners": list(owners), "limit": limit})]


def fulfillments_of_dialogue(conn: Connection, dialogue_id: str, limit: int = 50) -> list[Fulfillment]:
    """The fulfillment requests a dialogue made, newest first."""
    return [_fulfillment(r) for r in conn.execute(_OF_DIALOGUE_Q, {"dialogue_id": dialogue_id, "limit": limit})]


def _request(row: Any) -> FulfillmentRequest:
    return FulfillmentRequest(
        id=row.request_id,
        partner=row.partner,
        action=row.action,
        customer_id=row.customer_id,
        dialogue_id=row.dialogue_id,
        payload=row.payload or {},
        idempotency_key=row.idempotency_key,
    )


@define
class Outbox:
    """Dispatches outbox rows: at once for a waiting customer, and from a worker for the rest.
    Made by :meth:`from_config`, which holds the defaults."""

    hub: Hub
    lease_s: float
    poll_s: float
    base_s: float
    cap_s: float
    max_attempts: int
    batch: int = 16
    max_inflight: int = 64
    _task: asyncio.Task[None] | None = field(init=False, default=None)
    _wake: asyncio.Event = field(init=False, factory=asyncio.Event)
    _inflight: set[asyncio.Task[Any]] = field(init=False, factory=set)

    @classmethod
    def from_config(cls, hub: Hub) -> Outbox:
        """``[outbox]``: ``lease_s``, ``poll_ms``, ``retry_base_ms``, ``retry_cap_s``, ``max_attempts``."""
        cfg = hub.config.section("outbox")
        return cls(
            hub,
            lease_s=float(cfg.get("lease_s", 30)),
            poll_s=float(cfg.get("poll_ms", 1000)) / 1000,
            base_s=float(cfg.get("retry_base_ms", 500)) / 1000,
            cap_s=float(cfg.get("retry_cap_s", 300)),
            max_attempts=int(cfg.get("max_attempts", 20)),
        )

    # ---- life cycle --------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="prm-outbox")

    async def stop(self) -> None:
        """Stop claiming; cancel attempts in flight (their leases run out and another
        dispatcher, or this hub after a restart, sends them again with the same key)."""
        for task in [self._task, *self._inflight]:
            if task is not None:
                task.cancel()
        for task in [self._task, *self._inflight]:
            if task is not None:
                try:
                    await task
                except BaseException:
                    pass
        self._task = None
        self._inflight.clear()

    def wake(self) -> None:
        self._wake.set()

    def lease_until(self) -> datetime:
        return utcnow() + timedelta(seconds=self.lease_s)

    def background(self, work: Any) -> asyncio.Task[Any]:
        """Run ``work`` past the answer, stopped with the hub."""
        task = asyncio.ensure_future(work)
        self._inflight.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not isinstance(exc, RetryLater):
                log.warning("fulfillment attempt failed", error=type(exc).__name__)

    async def _run(self) -> None:
        while True:
            # cleared before the look, not after it: a wake that comes while the claim is under
            # way (a request planned, a retry scheduled) then ends the wait below at once
            self._wake.clear()
            claims: list[Claim] = []
            room = self.max_inflight - len(self._inflight)
            if room > 0:
                try:
                    claims = await self.claim(min(self.batch, room))
                except Exception as exc:  # the database may be away for a while: keep polling
                    log.warning("outbox claim failed", error=type(exc).__name__)
            for claim in claims:
                self.background(self.attempt(claim))
            if len(claims) == self.batch:
                await asyncio.sleep(0)
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_s)
            except TimeoutError:
                pass

    # ---- claiming and attempting ------------------------------------------------------

    async def claim(self, limit: int) -> list[Claim]:
        """Claim up to ``limit`` due rows (lease ``lease_s``)."""
        now = utcnow()
        until = now + timedelta(seconds=self.lease_s)

        def due(conn: Connection) -> bool:
            c = outbox.c
            # a row with no next attempt (NULL) compares as unknown: never due
            q = sa.select(c.id).where(c.next_attempt_at <= now).limit(1)
            return conn.execute(q).first() is not None

        # a read first: an idle hub polling must not take the write lock every second
        if not await self.hub.store.read(due):
            return []

        def write(conn: Connection) -> list[Claim]:
            c = outbox.c
            q = sa.select(outbox).where(c.next_attempt_at <= now).order_by(c.next_attempt_at).limit(limit)
            if conn.dialect.name == "postgresql":
                q = q.with_for_update(skip_locked=True)
            claims = []
            for row in conn.execute(q).all():
                attempt = row.attempts + 1
                conn.execute(outbox.update().where(c.id == row.id).values(attempts=attempt, next_attempt_at=until))
                claims.append(Claim(row.id, attempt, _request(row), row.touchpoint, row.dialogue_id, row.role))
            return claims

        return await self.hub.store.write(write)

    def dispatch(self, claim: Claim, hold: asyncio.Event | None = None) -> asyncio.Future[FulfillmentResult]:
        """Attempt ``claim`` now for a waiting customer: the future resolves as soon as the
        partner answers (or fails); recording the outcome, and a late answer, carry on in
        the background, so a customer who could not wait still sees the result arrive.

        ``hold``: recording waits until it is set, which the turn does as it queues its
        answer, so the answer is never queued behind its own partners' bookkeeping, and the
        outcomes known by then join the answer's transaction and commit.
        """
        answered: asyncio.Future[FulfillmentResult] = asyncio.get_running_loop().create_future()
        # whoever waited may have given up: a failure nobody looks at is still retrieved
        answered.add_done_callback(lambda f: f.cancelled() or f.exception())

        async def run() -> None:
            try:
                result = await self._call(claim.request)
            except asyncio.CancelledError:
                answered.cancel()
                raise
            except Exception as exc:
                answered.set_exception(exc)
                await self._reschedule(claim, exc)
                return
            answered.set_result(result)
            if hold is not None:
                await hold.wait()
            await self._settle(claim, result)

        self.background(run())
        return answered

    async def attempt(self, claim: Claim) -> FulfillmentResult:
        """Ask the partner once; record the outcome (or schedule the retry) and return it.

        Raises what the partner call raised, after the retry is scheduled.
        """
        try:
            result = await self._call(claim.request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._reschedule(claim, exc)
            raise
        await self._settle(claim, result)
        return result

    async def _call(self, request: FulfillmentRequest) -> FulfillmentResult:
        serving = self.hub.hooks.fulfill(request)
        if not serving:
            raise RetryLater(f"no plugin fulfills partner {request.partner!r}")
        (_plugin, work), *others = serving
        for _, extra in others:  # one partner, one call: a second plugin serving it is a misconfiguration
            close = getattr(extra, "close", None)
            if close is not None:
                close()
        result = await work
        if not isinstance(result, FulfillmentResult):
            raise TypeError(f"prm_fulfill for {request.partner!r} returned {type(result).__name__}")
        return result

    async def _reschedule(self, claim: Claim, exc: Exception) -> None:
        retry_after = exc.retry_after_s if isinstance(exc, RetryLater) else None
        reason = exc.reason if isinstance(exc, RetryLater) else type(exc).__name__
        now = utcnow()
        give_up = claim.attempt >= self.max_attempts
        delay = backoff_s(claim.attempt, retry_after, base_s=self.base_s, cap_s=self.cap_s)
        log.info(
            "fulfillment attempt failed",
            partner=claim.request.partner,
            attempt=claim.attempt,
            reason=reason[:200],
            retry_in_s=None if give_up else round(delay, 3),
        )
        values: dict[str, Any] = {"last_error": reason[:500], "updated_at": now}
        if give_up:
            values |= {"status": "failed", "next_attempt_at": None, "result": {"error": reason[:200]}}
        else:
            values["next_attempt_at"] = now + timedelta(seconds=delay)
        row = await self._update(claim, values)
        if row is not None and give_up:
            await self._announce(row)
        elif row is not None:
            self.wake()

    async def _settle(self, claim: Claim, result: FulfillmentResult) -> None:
        data = dict(result.data)
        ref = data.get("partner_ref")
        values = {
            "status": result.status,
            "result": data,
            "next_attempt_at": None,  # answered; a pending one now waits for the partner's callback
            "last_error": None,
            "updated_at": utcnow(),
            **({"partner_ref": str(ref)[:200]} if ref else {}),
        }
        if claim.touchpoint not in self.hub.registrations.touchpoints:
            # its touch point is gone (config changed): keep the row right, tell no dialogue
            row = await self._update(claim, values)
            if row is not None:
                self.hub.hooks.fulfillment_updated(_fulfillment(row))
            return
        # the row and the dialogue's event in one transaction, sharing the ingest's group commit
        event = SettledEvent(
            id=f"fulfillment:{claim.row_id}:{result.status}",
            type="fulfillment.updated",
            occurred_at=utcnow(),
            touchpoint=claim.touchpoint,
            dialogue_id=claim.dialogue_id,
            direction="outbound",
            data={
                "fulfillment_id": claim.request.id,
                "partner": claim.request.partner,
                "role": claim.role,
                "action": claim.request.action,
                "status": result.status,
                "data": data,
            },
            row_id=claim.row_id,
            fence=claim.attempt,
            values=values,
        )
        # the recording transaction applies the row's update and, once it commits, tells
        # prm_fulfillment_updated (see settle_row)
        await self.hub.record([event])

    async def _update(self, claim: Claim, values: Mapping[str, Any]) -> Any:
        """Apply ``values`` if the claim is still current; returns the row after, or ``None``."""

        def write(conn: Connection) -> Any:
            c = outbox.c
            done = conn.execute(
                outbox.update()
                .where(c.id == claim.row_id, c.attempts == claim.attempt, c.status == "pending")
                .values(**values)
            )
            if done.rowcount == 0:
                return None
            row = conn.execute(sa.select(outbox).where(c.id == claim.row_id)).one()
            if "status" in values:  # given up (a retry planned is no change of status)
                emit(conn, fulfillment_change(_fulfillment(row)))
            return row

        row = await self.hub.store.write(write)
        if row is None:
            log.info("fulfillment claim was taken over", partner=claim.request.partner, attempt=claim.attempt)
        return row

    async def results_of(self, cause_event_id: str) -> list[FulfillmentResult]:
        """What the partners said so far to the requests planned by event ``cause_event_id``."""

        def read(conn: Connection) -> list[Any]:
            c = outbox.c
            return list(conn.execute(sa.select(outbox).where(c.cause_event_id == cause_event_id).order_by(c.id)))

        return [
            # a result has no "completed": work done is work confirmed, for an answer
            FulfillmentResult(r.request_id, r.partner, "confirmed" if r.status == "completed" else r.status, r.result)
            for r in await self.hub.store.read(read)
        ]

    # ---- callbacks ---------------------------------------------------------------------

    async def find(self, partner: str, ref: str) -> Fulfillment | None:
        """The request of ``partner`` that ``ref`` names: our request id, the idempotency key,
        or the partner's own reference. Only this partner's requests are searched."""

        def read(conn: Connection) -> Any:
            c = outbox.c
            q = (
                sa.select(outbox)
                .where(
                    c.partner == partner,
                    sa.or_(c.request_id == ref, c.idempotency_key == ref, c.partner_ref == ref),
                )
                .order_by(c.requested_at.desc())
                .limit(1)
            )
            return conn.execute(q).one_or_none()

        row = await self.hub.store.read(read)
        return _fulfillment(row) if row is not None else None

    async def apply_callback(
        self,
        partner: str,
        webhook_id: str,
        ref: str,
        status: FulfillmentStatus,
        data: Mapping[str, Any],
    ) -> tuple[Fulfillment | None, bool]:
        """Apply a partner's (verified) callback: ``(fulfillment, applied)``.

        ``(None, False)``: no request of this partner is named by ``ref``; ``applied`` is
        false for a ``webhook-id`` seen before (a redelivery), and nothing changes.
        The event is recorded before the row changes, so a crash in between leaves the
        callback unapplied and the partner's redelivery applies it.

        A callback about a request an erasure scrubbed (:func:`erased_requests`) is taken
        (its ``webhook-id`` is kept, so a redelivery is a duplicate) and dropped: the row
        stays as the erasure left it, no event is recorded, no plugin is told, and the
        answer is ``(the row as stored, False)``.
        """
        found = await self.find(partner, ref)
        if found is None:
            return None, False
        now = utcnow()

        def seen(conn: Connection) -> bool:
            k = partner_callbacks.c
            q = sa.select(k.webhook_id).where(k.partner == partner, k.webhook_id == webhook_id)
            return conn.execute(q).first() is not None

        if await self.hub.store.read(seen):
            return found, False

        def taken(conn: Connection) -> None:
            if not seen(conn):
                conn.execute(partner_callbacks.insert().values(partner=partner, webhook_id=webhook_id, received_at=now))

        if await self.hub.store.read(lambda conn: bool(erased_requests(conn, [found.outbox_id]))):
            await self.hub.store.write(taken)
            log.info("partner callback for an erased customer dropped", partner=partner, status=status)
            return evolve(found, data={}), False  # as the erasure left it, whenever it was read
        merged = {**found.data, **data}
        updated = Fulfillment(
            id=found.id,
            partner=found.partner,
            role=found.role,
            action=found.action,
            status=status,
            customer_id=found.customer_id,
            dialogue_id=found.dialogue_id,
            touchpoint=found.touchpoint,
            requested_at=found.requested_at,
            updated_at=now,
            data=merged,
            partner_ref=found.partner_ref,
            outbox_id=found.outbox_id,
        )
        await self._record(updated)

        def write(conn: Connection) -> str:
            """What the transaction did: "seen" (a redelivery), "erased" (an erasure scrubbed the
            row after it was read: the scrub stays) or "applied"."""
            if seen(conn):
                return "seen"
            conn.execute(partner_callbacks.insert().values(partner=partner, webhook_id=webhook_id, received_at=now))
            _lock_owner(conn, found.customer_id)
            if erased_requests(conn, [found.outbox_id]):
                return "erased"
            c = outbox.c
            conn.execute(
                outbox.update()
                .where(c.id == found.outbox_id)
                # a callback is the partner's word: nothing left to send, whatever a retry had planned
                .values(status=status, result=merged, next_attempt_at=None, updated_at=now)
            )
            emit(conn, fulfillment_change(updated))
            return "applied"

        done = await self.hub.store.write(write)
        if done == "erased":
            log.info("partner callback for an erased customer dropped", partner=partner, status=status)
            return evolve(found, data={}), False
        if done == "applied":
            self.hub.hooks.fulfillment_updated(updated)
        return updated, done == "applied"

    # ---- telling the dialogue ----------------------------------------------------------

    async def _announce(self, row: Any) -> None:
        fulfillment = _fulfillment(row)
        try:
            await self._record(fulfillment)
        except Exception as exc:  # the row holds the truth; the dialogue event is its echo
            log.warning("fulfillment event not recorded", partner=fulfillment.partner, error=type(exc).__name__)
        self.hub.hooks.fulfillment_updated(fulfillment)

    async def _record(self, f: Fulfillment) -> None:
        event = FulfillmentEvent(
            row_id=f.outbox_id,
            id=f"fulfillment:{f.outbox_id}:{f.status}",
            type="fulfillment.updated",
            occurred_at=utcnow(),
            touchpoint=f.touchpoint,
            dialogue_id=f.dialogue_id,
            direction="outbound",
            data={
                "fulfillment_id": f.id,
                "partner": f.partner,
                "role": f.role,
                "action": f.action,
                "status": f.status,
                "data": dict(f.data),
            },
        )
        if f.touchpoint in self.hub.registrations.touchpoints:
            await self.hub.record([event])
