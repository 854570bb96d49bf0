"""Delivering the feed to its destinations: in order, at least once, each on its own cursor.

One task per ``[destinations.NAME]``, started with the hub, reads the changes after the
destination's cursor (a page of ``batch_size``, of its ``types``), hands them to its sink,
and only then moves the cursor past them, in a transaction of its own. A crash between the
two sends the page again on restart, with the same positions, so a receiver deduplicates by
them. A failing sink is retried with exponential backoff and full jitter
(:func:`prm_core.outbox.backoff_s`) behind a circuit breaker; changes it refuses for good
(:class:`~prm_core.feed.Refused`) go to its dead-letter list and the rest go on.

Nothing here runs on the ingest or request paths: a destination that is down only falls
behind (``prm destinations`` and the ``prm_destination_lag_*`` metrics show how far).

Several hub processes on one PostgreSQL database share the work: a destination is delivered
by the process holding its lease (``destination_cursors.lease_owner``), renewed as it goes;
another takes over when a lease runs out.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import structlog
from aiobreaker import CircuitBreaker, CircuitBreakerError
from attrs import define, field
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy.engine import Connection

from ..config import Config
from ..errors import ConfigError
from ..ids import new_id
from ..outbox import backoff_s
from ..store.tables import dead_letters, destination_cursors, utcnow
from .changes import Change, parse_position
from .destinations import DestinationKind, DestinationSettings, Refused, Sink
from .reading import FeedSignal, FellBehind, Page, bounds, read_changes

if TYPE_CHECKING:
    from ..plugins import Registry
    from ..store import Store

__all__ = ["Destination", "Relay", "open_destinations", "replay"]

log = structlog.get_logger(__name__)


@define
class Destination:
    """One configured destination, its sink, and what the relay knows of its progress."""

    settings: DestinationSettings
    sink: Sink
    start: str  # "earliest" or "latest" (open_destinations checks the settings and their defaults)
    retry_base_s: float
    retry_cap_s: float
    deliver_timeout_s: float
    breaker: CircuitBreaker = field(init=False)
    # progress, for the metrics (the database holds the truth: prm destinations reads it)
    cursor: int = field(init=False, default=0)
    pending_through: int | None = field(init=False, default=None)  # the pinned batch's end
    lease_until: datetime | None = field(init=False, default=None)  # this process's lease, as last written
    head: int = field(init=False, default=0)
    oldest_pending_at: datetime | None = field(init=False, default=None)
    delivered: int = field(init=False, default=0)
    failures: int = field(init=False, default=0)
    refused: int = field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        self.breaker = CircuitBreaker(
            fail_max=5, timeout_duration=timedelta(seconds=60), exclude=[Refused], name=self.settings.name
        )

    @property
    def name(self) -> str:
        return self.settings.name


def open_destinations(
    config: Config,
    kinds: Registry[DestinationKind],
    read: Callable[[Callable[[Connection], Any]], Awaitable[Any]] | None = None,
) -> list[Destination]:
    """Check every ``[destinations.NAME]`` and open its sink. A bad setting raises
    :class:`~prm_core.errors.ConfigError` naming the key; nothing is connected yet.
    ``read``: the hub's ``store.read``, handed to the sinks in their settings."""
    tables = config.raw.get("destinations", {})
    if not isinstance(tables, Mapping):
        raise ConfigError("[destinations] must be a table of [destinations.NAME] tables")
    opened: list[Destination] = []
    for name, raw in sorted(tables.items()):
        if not isinstance(raw, Mapping):
            raise ConfigError(f"[destinations.{name}] must be a table")
        if not (0 < len(name) <= 64) or not all(ch.isalnum() or ch in "-_" for ch in name):
            raise ConfigError(f"[destinations.{name}]: a destination's name is letters, digits, - and _ (64 at most)")
        kind_name = raw.get("kind")
        if not isinstance(kind_name, str) or kind_name not in kinds:
            known = ", ".join(kinds.names()) or "none"
            raise ConfigError(f"[destinations.{name}].kind must name a destination kind (registered: {known})")
        probe = DestinationSettings(name=name, kind=kind_name, raw=raw, config=config)
        types: frozenset[str] | None = None
        if "types" in raw:
            types = frozenset(probe.texts("types"))
            if any(len(t) > 64 for t in types):
                raise probe.invalid("types", "must list change types")
        batch_size = probe.integer("batch_size", default=1000, minimum=1, maximum=1000)
        start = raw.get("start", "earliest")
        if start not in ("earliest", "latest"):
            raise probe.invalid("start", 'must be "earliest" or "latest"')
        settings = DestinationSettings(
            name=name, kind=kind_name, raw=raw, config=config, types=types, batch_size=batch_size, read=read
        )
        sink = kinds[kind_name].open(settings)
        if not isinstance(sink, Sink):
            raise ConfigError(f"destination kind {kind_name!r} opened {type(sink).__name__}, which is not a Sink")
        opened.append(
            Destination(
                settings,
                sink,
                start=start,
                retry_base_s=probe.number("retry_base_s", default=1.0, minimum=0.001),
                retry_cap_s=probe.number("retry_cap_s", default=300.0, minimum=0.001),
                deliver_timeout_s=probe.number("deliver_timeout_s", default=60.0, minimum=0.001),
            )
        )
    return opened


@define
class Relay:
    """Runs one delivery task per destination (see the module docstring)."""

    store: Store
    destinations: list[Destination]
    signal: FeedSignal
    lease_s: float  # [feed] destination_lease_s
    poll_s: float = 1.0
    owner: str = field(factory=lambda: new_id("rly"))
    _tasks: list[asyncio.Task[None]] = field(init=False, factory=list)
    _stopping: bool = field(init=False, default=False)

    async def start(self) -> None:
        """Give every new destination its cursor (``start``: the oldest change kept, or the
        newest there is now), then start delivering."""
        if self.destinations:
            await self.store.write(self._register)
        for dest in self.destinations:
            self._tasks.append(asyncio.create_task(self._run(dest), name=f"prm-destination-{dest.name}"))

    async def stop(self) -> None:
        """Stop delivering (a page in flight is sent again after a restart), give the leases
        back so another hub can go on at once, and close every sink."""
        self._stopping = True  # a cancellation swallowed by a library still ends the loop
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except BaseException:
                pass
        self._tasks.clear()
        if self.destinations:
            try:
                await self.store.write(self._release)
            except Exception as exc:  # the lease runs out by itself
                log.warning("destination leases not released", error=type(exc).__name__)
        for dest in self.destinations:
            try:
                await dest.sink.close()
            except Exception as exc:
                log.warning("destination close failed", destination=dest.name, error=type(exc).__name__)

    def _register(self, conn: Connection) -> None:
        c = destination_cursors.c
        known = set(conn.execute(sa.select(c.name)).scalars())
        now = utcnow()
        for dest in self.destinations:
            if dest.name not in known:
                pruned, head = bounds(conn)
                position = head if dest.start == "latest" else pruned
                conn.execute(
                    destination_cursors.insert().values(
                        name=dest.name, kind=dest.settings.kind, position=position, updated_at=now
                    )
                )

    def _release(self, conn: Connection) -> None:
        c = destination_cursors.c
        conn.execute(
            destination_cursors.update().where(c.lease_owner == self.owner).values(lease_owner=None, lease_until=None)
        )

    # ---- one destination -------------------------------------------------------------

    async def _run(self, dest: Destination) -> None:
        attempt = 0
        # watched from before each read: a commit landing between the read and the wait ends
        # that wait (a commit before this round's read is in what it reads: not watched)
        watched = self.signal.watch()
        try:
            while not self._stopping:
                self.signal.unwatch(watched)
                watched = self.signal.watch()
                try:
                    cursor = await self._cursor(dest)
                    if cursor is None:  # another hub process delivers it
                        await asyncio.sleep(self.lease_s / 2)
                        continue
                    read = functools.partial(
                        read_changes,
                        after=cursor,
                        limit=dest.settings.batch_size,
                        types=dest.settings.types,
                        check=False,
                    )
                    page = await self.store.read(read)
                except FellBehind as exc:
                    message = f"destination {dest.name} fell behind the feed's retention: {exc}"
                    log.error("destination fell behind", destination=dest.name, pruned_through=exc.pruned_through)
                    await self._note_error(dest, message)
                    await asyncio.sleep(max(self.poll_s, 5.0))
                    continue
                except Exception as exc:  # the database may be away for a while
                    log.warning("destination read failed", destination=dest.name, error=type(exc).__name__)
                    await asyncio.sleep(self.poll_s)
                    continue
                dest.head = max(dest.head, page.next)
                if dest.pending_through is not None:
                    # a batch was pinned and not delivered (a failure, a crash): the very same batch again
                    page = Page([c for c in page.changes if c.seq <= dest.pending_through], dest.pending_through)
                elif page.changes and not await self._pin(dest, cursor, page.next):
                    continue
                if not page.changes:
                    dest.oldest_pending_at = None
                    if page.next > cursor:  # changes of other types went by
                        await self._advance(dest, cursor, page.next, [], "")
                    await self.signal.wait(self.poll_s, watched=watched)
                    continue
                dest.oldest_pending_at = page.changes[0].at
                # a delivery may outlast the lease (a slow receiver, a warehouse writing its
                # history): renewed while it runs, so no other process delivers the destination meanwhile
                renewing = asyncio.create_task(self._keep_lease(dest), name=f"lease-{dest.name}")
                try:
                    await asyncio.wait_for(
                        dest.breaker.call_async(dest.sink.deliver, page.changes), timeout=dest.deliver_timeout_s
                    )
                    refused: Sequence[str] = ()
                    reason = ""
                except Refused as exc:
                    batch = {c.position for c in page.changes}
                    refused = [p for p in exc.positions if p in batch]
                    reason = exc.reason
                except CircuitBreakerError:
                    await asyncio.sleep(max(_rest_left_s(dest.breaker), 0.05))
                    continue
                except Exception as exc:
                    attempt += 1
                    dest.failures += 1
                    delay = backoff_s(attempt, None, base_s=dest.retry_base_s, cap_s=dest.retry_cap_s)
                    error = _describe(exc)
                    log.warning(
                        "destination delivery failed", destination=dest.name, error=error, retry_in_s=round(delay, 3)
                    )
                    await self._note_error(dest, error)
                    await asyncio.sleep(delay)
                    continue
                finally:
                    renewing.cancel()
                attempt = 0
                refusing = set(refused)
                await self._advance(
                    dest, cursor, page.next, [c for c in page.changes if c.position in refusing], reason
                )
                dest.delivered += len(page.changes) - len(refused)
                dest.refused += len(refused)
        finally:
            self.signal.unwatch(watched)

    async def _keep_lease(self, dest: Destination) -> None:
        """Renew this process's lease of ``dest`` every third of its time, until cancelled."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.store.write(functools.partial(self._renew, dest))
            except Exception as exc:  # the lease runs out by itself; the delivery goes on
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from exc  # cancelled mid-write: the delivery ended
                log.warning("destination lease not renewed", destination=dest.name, error=type(exc).__name__)

    def _renew(self, dest: Destination, conn: Connection) -> None:
        c = destination_cursors.c
        until = utcnow() + timedelta(seconds=self.lease_s)
        renewed = conn.execute(
            destination_cursors.update()
            .where(c.name == dest.name, c.lease_owner == self.owner)
            .values(lease_until=until)
        )
        if renewed.rowcount:
            dest.lease_until = until

    async def _cursor(self, dest: Destination) -> int | None:
        """The cursor to read after: read while this process's lease has more than half its
        time left (the writer is shared with ingest: no write transaction per page for
        nothing), else written as the lease is renewed or taken."""
        now = utcnow()
        if dest.lease_until is not None and dest.lease_until - now > timedelta(seconds=self.lease_s / 2):
            # read, not written: the cursor may have been moved back (prm destinations replay)
            c = destination_cursors.c
            q = sa.select(c.position, c.pending_through, c.lease_owner).where(c.name == dest.name)
            row = await self.store.read(lambda conn: conn.execute(q).first())
            if row is not None and row.lease_owner == self.owner:
                dest.cursor, dest.pending_through = int(row.position), row.pending_through
                return dest.cursor
        dest.lease_until = None
        claimed = await self.store.write(functools.partial(self._claim, dest))
        if claimed is None:
            return None
        dest.cursor, dest.pending_through = claimed
        dest.lease_until = now + timedelta(seconds=self.lease_s)
        return dest.cursor

    def _claim(self, dest: Destination, conn: Connection) -> tuple[int, int | None] | None:
        """The destination's cursor, once this process holds its lease (``None``: another does)."""
        c = destination_cursors.c
        now = utcnow()
        row = conn.execute(sa.select(destination_cursors).where(c.name == dest.name)).first()
        if row is None:
            pruned, head = bounds(conn)
            position = head if dest.start == "latest" else pruned
            conn.execute(
                destination_cursors.insert().values(
                    name=dest.name,
                    kind=dest.settings.kind,
                    position=position,
                    updated_at=now,
                    lease_owner=self.owner,
                    lease_until=now + timedelta(seconds=self.lease_s),
                )
            )
            return position, None
        if row.lease_owner not in (None, self.owner) and row.lease_until and row.lease_until > now:
            return None
        taken = conn.execute(
            destination_cursors.update()
            .where(
                c.name == dest.name,
                c.lease_owner.is_(row.lease_owner) if row.lease_owner is None else c.lease_owner == row.lease_owner,
            )
            .values(lease_owner=self.owner, lease_until=now + timedelta(seconds=self.lease_s), kind=dest.settings.kind)
        ).rowcount
        return (int(row.position), row.pending_through) if taken else None

    async def _pin(self, dest: Destination, cursor: int, through: int) -> bool:
        """Note the batch about to be sent (it ends at ``through``), so that it is the batch
        sent again after a failure or a crash: receivers see the same batch, with the same id."""

        def write(conn: Connection) -> bool:
            c = destination_cursors.c
            return bool(
                conn.execute(
                    destination_cursors.update()
                    .where(c.name == dest.name, c.lease_owner == self.owner, c.position == cursor)
                    .values(pending_through=through)
                ).rowcount
            )

        try:
            pinned = await self.store.write(write)
        except Exception as exc:
            log.warning("destination batch not pinned", destination=dest.name, error=type(exc).__name__)
            pinned = False
        if not pinned:  # the lease or the cursor moved (prm destinations replay): read it again
            dest.lease_until = None
            await asyncio.sleep(self.poll_s)
            return False
        return True

    async def _advance(self, dest: Destination, cursor: int, to: int, refused: Sequence[Change], reason: str) -> None:
        now = utcnow()

        def write(conn: Connection) -> bool:
            c = destination_cursors.c
            moved = conn.execute(
                destination_cursors.update()
                .where(c.name == dest.name, c.lease_owner == self.owner, c.position == cursor)
                .values(
                    position=to,
                    pending_through=None,
                    updated_at=now,
                    delivered_at=now,
                    last_error=None,
                    lease_until=now + timedelta(seconds=self.lease_s),
                )
            ).rowcount
            if moved and refused:
                d = dead_letters.c
                known = set(
                    conn.execute(
                        sa.select(d.position).where(
                            d.destination == dest.name, d.position.in_([r.seq for r in refused])
                        )
                    ).scalars()
                )
                rows = [
                    {"destination": dest.name, "position": r.seq, "type": r.type, "reason": reason[:500], "at": now}
                    for r in refused
                    if r.seq not in known
                ]
                if rows:
                    conn.execute(dead_letters.insert(), rows)
            return bool(moved)

        try:
            if not await self.store.write(write):
                # the lease was taken over, or the cursor moved (prm destinations replay): read again
                log.info("destination cursor moved elsewhere", destination=dest.name)
                dest.lease_until = None
                return
        except Exception as exc:  # delivered but not noted: it is sent again, same positions
            log.warning("destination cursor not saved", destination=dest.name, error=type(exc).__name__)
            dest.lease_until = None
            await asyncio.sleep(self.poll_s)
            return
        dest.cursor, dest.pending_through = to, None
        dest.lease_until = now + timedelta(seconds=self.lease_s)
        if refused:
            log.warning("destination refused changes", destination=dest.name, count=len(refused), reason=reason[:200])

    async def _note_error(self, dest: Destination, error: str) -> None:
        now = utcnow()

        def write(conn: Connection) -> None:
            c = destination_cursors.c
            conn.execute(
                destination_cursors.update()
                .where(c.name == dest.name)
                .values(last_error=error[:500], last_error_at=now, updated_at=now)
            )

        try:
            await self.store.write(write)
        except Exception as exc:
            log.warning("destination error not saved", destination=dest.name, error=type(exc).__name__)

    # ---- metrics ---------------------------------------------------------------------

    def collector(self) -> _RelayCollector:
        """A Prometheus collector of :meth:`collect` (register it on a registry)."""
        return _RelayCollector(self)

    def collect(self) -> Iterator[Any]:
        """Prometheus: each destination's lag and counts (a collector the server registers)."""
        lag = GaugeMetricFamily(
            "prm_destination_lag_changes",
            "Positions between a destination's cursor and the feed's head",
            labels=["destination"],
        )
        lag_s = GaugeMetricFamily(
            "prm_destination_lag_seconds",
            "Age of the oldest change a destination has yet to take",
            labels=["destination"],
        )
        delivered = CounterMetricFamily(
            "prm_destination_delivered", "Changes delivered to a destination", labels=["destination"]
        )
        failures = CounterMetricFamily(
            "prm_destination_failures", "Failed delivery attempts (retried)", labels=["destination"]
        )
        refused = CounterMetricFamily(
            "prm_destination_dead_letters", "Changes a destination refused for good", labels=["destination"]
        )
        now = utcnow()
        for dest in self.destinations:
            lag.add_metric([dest.name], max(0, dest.head - dest.cursor))
            pending = dest.oldest_pending_at
            lag_s.add_metric([dest.name], max(0.0, (now - pending).total_seconds()) if pending else 0.0)
            delivered.add_metric([dest.name], dest.delivered)
            failures.add_metric([dest.name], dest.failures)
            refused.add_metric([dest.name], dest.refused)
        yield from (lag, lag_s, delivered, failures, refused)


class _RelayCollector:
    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def collect(self) -> Iterator[Any]:
        return self.relay.collect()


def _rest_left_s(breaker: CircuitBreaker) -> float:
    """Seconds until the breaker lets a call through again. aiobreaker's ``time_until_open``
    raises TypeError (rather than answering None) once the rest is over, as it can be a moment
    after the call it refused."""
    try:
        left = breaker.time_until_open
    except TypeError:
        return 0.0
    return left.total_seconds() if left is not None else 0.0


def _describe(exc: BaseException) -> str:
    """An error as kept and shown: its type, and its message when a sink wrote one for us.

    Sinks write messages without personal data (a status code, a connection error)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


async def replay(store: Store, name: str, start: str) -> int:
    """``prm destinations replay NAME --from POSITION``: deliver again from ``start`` on.

    The destination's cursor goes back to just before it (its dead letters from there are
    forgotten: they are tried again). Returns the new cursor."""
    position = parse_position(start, "from")
    if position < 1:
        raise ConfigError("--from must be a position of the feed (1 or more)")

    def write(conn: Connection) -> int:
        c = destination_cursors.c
        row = conn.execute(sa.select(destination_cursors).where(c.name == name)).first()
        if row is None:
            raise ConfigError(f"no destination {name!r} has delivered yet (see prm destinations)")
        pruned, head = bounds(conn)
        if position - 1 < pruned:
            raise ConfigError(f"position {position} is older than the oldest change kept ({pruned + 1})")
        if position > head + 1:
            raise ConfigError(f"position {position} is past the newest change ({head})")
        conn.execute(
            destination_cursors.update()
            .where(c.name == name)
            .values(position=position - 1, pending_through=None, updated_at=utcnow())
        )
        d = dead_letters.c
        conn.execute(dead_letters.delete().where(d.destination == name, d.position >= position))
        return position - 1

    return await store.write(write)
