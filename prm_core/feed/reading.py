"""Reading the feed: a page of changes after a position, and waiting for the next commit.

Every read is one indexed range scan on the primary key (``position > after ORDER BY
position LIMIT n``), so reading from the start of a feed months long holds one page in
memory at a time. Retention (:func:`prune`) removes changes older than
``[feed] retention_days``; the last position it removed is kept (``feed_state``), so a
reader asking for what follows an older position is told it fell behind
(:class:`FellBehind`) instead of silently missing the pruned changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from datetime import datetime

import sqlalchemy as sa
from attrs import define, field, frozen
from sqlalchemy.engine import Connection

from ..errors import InvalidInput, PrmError
from ..store.lists import one_of
from ..store.tables import changes, feed_state
from .changes import Change

__all__ = ["FeedSignal", "FellBehind", "Page", "bounds", "prune", "read_changes"]

PRUNED_THROUGH = "pruned_through"


class FellBehind(PrmError):
    """The changes after ``after`` up to ``pruned_through`` were removed by retention."""

    def __init__(self, after: int, pruned_through: int) -> None:
        super().__init__(
            f"position {after} is older than the oldest change kept: changes up to {pruned_through} were pruned"
            " by retention; start again from the oldest kept change"
        )
        self.pruned_through = pruned_through


@frozen
class Page:
    """Changes after a position, oldest first, and the position to ask after next."""

    changes: list[Change]
    next: int


def _change(row: sa.Row) -> Change:  # type: ignore[type-arg]
    return Change(seq=row.position, type=row.type, at=row.at, customer_id=row.customer_id, data=row.data)


def bounds(conn: Connection) -> tuple[int, int]:
    """``(pruned_through, head)``: the last position retention removed (0: none) and the
    newest position there is (0: none yet)."""
    pruned = conn.execute(sa.select(feed_state.c.position).where(feed_state.c.name == PRUNED_THROUGH)).scalar()
    head = conn.execute(sa.select(sa.func.max(changes.c.position))).scalar()
    return int(pruned or 0), max(int(head or 0), int(pruned or 0))


_PAGE = sa.select(changes).where(changes.c.position > sa.bindparam("after")).order_by(changes.c.position)
_PAGE_OF_TYPES = {
    pg: sa.select(changes)
    .where(changes.c.position > sa.bindparam("after"), one_of(changes.c.type, "types", pg))
    .order_by(changes.c.position)
    for pg in (False, True)
}


def read_changes(
    conn: Connection, after: int | None, limit: int, types: Collection[str] | None = None, *, check: bool = True
) -> Page:
    """Up to ``limit`` changes after position ``after`` (of ``types``, when given);
    ``after=None`` reads from the oldest change kept.

    ``check``: refuse a position past the newest (:class:`~prm_core.errors.InvalidInput`).
    A position retention has passed raises :class:`FellBehind`; a read from the oldest kept
    never does (a pruning during it moves the oldest kept, and it reads from there).
    """
    oldest = after is None
    pruned, head = bounds(conn)
    if after is None:
        after = pruned
    if check and after > head:
        raise InvalidInput(f"after is past the newest position of this feed ({head})", "after", code="bad_position")
    if after < pruned:
        raise FellBehind(after, pruned)
    if types:
        q = _PAGE_OF_TYPES[conn.dialect.name == "postgresql"].limit(limit)
        rows = conn.execute(q, {"after": after, "types": sorted(types)}).all()
    else:
        rows = conn.execute(_PAGE.limit(limit), {"after": after}).all()
    if conn.dialect.name == "postgresql":
        # each statement sees what committed before it started (READ COMMITTED), so a pruning
        # that committed after the bounds above took changes this page would have held: its
        # mark, read after the page, tells the reader it fell behind instead of skipping them
        pruned_now, _ = bounds(conn)
        if after < pruned_now:
            if oldest:
                return read_changes(conn, None, limit, types, check=check)
            raise FellBehind(after, pruned_now)
    found = [_change(r) for r in rows]
    if len(found) == limit:
        return Page(found, found[-1].seq)
    # fewer than asked for: everything up to the head read above was looked at (positions
    # are final once visible, see prm_core.feed.writing), so a filtered reader skips it all;
    # on PostgreSQL each statement sees what committed before it, so the page may go past it
    newest = max(head, found[-1].seq if found else 0)
    return Page(found, max(after, newest))


def prune(conn: Connection, before: datetime, *, batch: int = 10_000) -> int:
    """Remove up to ``batch`` changes older than ``before``, oldest first; returns how many.

    The last position removed is remembered, so readers behind it are told."""
    c = changes.c
    upto = conn.execute(
        sa.select(sa.func.max(c.position)).where(
            c.position.in_(sa.select(c.position).where(c.at < before).order_by(c.position).limit(batch))
        )
    ).scalar()
    if upto is None:
        return 0
    removed = conn.execute(changes.delete().where(c.position <= upto)).rowcount
    mark = feed_state.c.name == PRUNED_THROUGH
    updated = conn.execute(feed_state.update().where(mark).values(position=upto)).rowcount
    if not updated:
        conn.execute(feed_state.insert().values(name=PRUNED_THROUGH, position=upto))
    return int(removed or 0)


@define
class FeedSignal:
    """Wakes readers waiting for changes when a commit of this process adds some.

    ``notify`` may be called from any thread; waiters are woken on their event loop. A
    reader that wants some changes only waits for their topics
    (:func:`prm_core.feed.writing.topics`), and sleeps through commits of others.
    """

    _loop: asyncio.AbstractEventLoop | None = field(init=False, default=None)
    # the commits watched for: (topics, or None for any, set by the next such commit)
    _watches: list[tuple[frozenset[str] | None, asyncio.Event]] = field(init=False, factory=list)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def notify(self, topics: Collection[str] | None = None) -> None:
        """A commit added changes about ``topics`` (``None``: about anything, as another hub
        process's commit, heard on PostgreSQL, may be)."""
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._fire(topics)
        else:
            loop.call_soon_threadsafe(self._fire, topics)

    def _fire(self, topics: Collection[str] | None = None) -> None:
        watching: list[tuple[frozenset[str] | None, asyncio.Event]] = []
        for wanted, woken in self._watches:
            if topics is None or wanted is None or not wanted.isdisjoint(topics):
                woken.set()
            else:
                watching.append((wanted, woken))
        self._watches = watching

    def watch(self, topics: Collection[str] | None = None) -> asyncio.Event:
        """An event the next commit that adds changes (about one of ``topics``, when given)
        sets. A reader watches before it reads, so a commit while it reads is not missed;
        :meth:`wait` with ``watched`` waits for it, and stops watching."""
        woken = asyncio.Event()
        self._watches.append((None if topics is None else frozenset(topics), woken))
        return woken

    async def wait(
        self, seconds: float, topics: Collection[str] | None = None, *, watched: asyncio.Event | None = None
    ) -> bool:
        """Until the next commit that adds changes (about one of ``topics``, when given),
        or ``seconds``: whether woken. With ``watched`` (from :meth:`watch`), until that
        event is set, which it may already be."""
        event = self.watch(topics) if watched is None else watched
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation
            # that arrives as the event is set, and the waiting task would never stop
            async with asyncio.timeout(seconds):
                await event.wait()
            return True
        except TimeoutError:
            return False
        finally:
            self.unwatch(event)

    def unwatch(self, watched: asyncio.Event) -> None:
        """Stop watching (what :meth:`watch` returned)."""
        if not watched.is_set():
            self._watches = [w for w in self._watches if w[1] is not watched]
