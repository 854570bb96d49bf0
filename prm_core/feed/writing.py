"""Adding changes to the feed inside the transaction that makes them.

Code that changes something calls :func:`emit` on its transaction's connection; the
store (:meth:`prm_core.store.Store.write`) collects what was emitted and inserts it all,
in one statement, as the transaction's last step (:func:`flush`). So a change record
commits exactly when its change does, and a batch of events costs one more bulk INSERT,
not a statement per event.

Positions follow commit order. On SQLite there is one writer, so the order rows are
inserted in is the order they commit in. On PostgreSQL several transactions (and several
hub processes) write at once, and a sequence alone hands out numbers in the order
transactions *ask*, not the order they commit: a reader could see position 7 committed
while 6 is still in flight, move past it, and never see 6. So the insert first takes one
transaction-scoped advisory lock, held until commit: transactions with changes take their
positions, and commit, one at a time. The lock is taken as the last statement, so it is
held only for the INSERT and the commit itself. The same statement sends a ``NOTIFY`` on
``prm_changes``, delivered at commit, which wakes the long polls of other hub processes
(:class:`prm_core.feed.feed.Feed` listens).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..store.bulk import execute_many
from ..store.lists import one_of
from ..store.tables import changes, utcnow
from .changes import NewChange

__all__ = [
    "FEED_LOCK",
    "begin",
    "discard",
    "emit",
    "emit_rows",
    "event_topic",
    "flush",
    "mark",
    "offer_topic",
    "rollback_to",
    "scrub_customers",
    "topics",
]

_PENDING = "prm.feed.pending"
# any constant works; it only has to be the same in every hub process
FEED_LOCK = 0x50524D_02
_INSERT = changes.insert()
NOTIFY_CHANNEL = "prm_changes"
_LOCK_AND_NOTIFY = sa.text("SELECT pg_advisory_xact_lock(:k), pg_notify(:channel, '')")


def begin(conn: Connection, enabled: bool = True) -> None:
    """Start collecting the changes of the transaction beginning on ``conn`` (the store
    calls this). With ``enabled`` false, :func:`emit` drops what it is given (the feed is
    switched off, as ``bench/ingest.py --no-feed`` does)."""
    if enabled:
        conn.info[_PENDING] = []
    else:
        conn.info.pop(_PENDING, None)


def emit(conn: Connection, *new: NewChange) -> None:
    """Add changes to the feed, in the transaction running on ``conn``."""
    pending = conn.info.get(_PENDING)
    if pending is None:
        return
    now = None
    for change in new:
        at = change.at
        if at is None:
            now = now or utcnow()
            at = now
        pending.append({"type": change.type, "at": at, "customer_id": change.customer_id, "data": dict(change.data)})


def emit_rows(conn: Connection, rows: Iterable[dict[str, Any]]) -> None:
    """Add changes already shaped as rows (``type``, ``at``, ``customer_id``, ``data``): the
    ingest path's way, which builds them by the thousand."""
    pending = conn.info.get(_PENDING)
    if pending is not None:
        pending.extend(rows)


def mark(conn: Connection) -> int:
    """How many changes the transaction has emitted so far (before a savepoint)."""
    return len(conn.info.get(_PENDING) or ())


def rollback_to(conn: Connection, marked: int) -> None:
    """Forget the changes emitted since :func:`mark` (their savepoint rolled back)."""
    pending = conn.info.get(_PENDING)
    if pending is not None:
        del pending[marked:]


def flush(conn: Connection) -> frozenset[str]:
    """Insert the transaction's changes (the store calls this last); returns their topics
    (:func:`topics`), empty when there were none."""
    rows: list[dict[str, Any]] | None = conn.info.pop(_PENDING, None)
    if not rows:
        return frozenset()
    if conn.dialect.name == "postgresql":
        # the notice reaches listeners (other hub processes' long polls) when this commits
        conn.execute(_LOCK_AND_NOTIFY, {"k": FEED_LOCK, "channel": NOTIFY_CHANNEL})
    execute_many(conn, _INSERT, rows)
    return topics(rows)


def event_topic(event_type: str) -> str:
    """The topic of an ``event.recorded`` change about an event of ``event_type``."""
    return "event:" + event_type


def offer_topic(source_kind: str) -> str:
    """The topic of an ``offer.made`` change about an offer whose ``source`` is of this kind
    (what comes before its first colon: ``trigger`` for ``trigger:cart``)."""
    return "offer.made:" + source_kind


def topics(rows: Iterable[dict[str, Any]]) -> frozenset[str]:
    """What a commit's changes are about, for readers that wait for some of them only
    (:meth:`prm_core.feed.reading.FeedSignal.wait`): each change's type; for an
    ``event.recorded`` change also its event's type (:func:`event_topic`), for an
    ``offer.made`` change the kind of its offer's source (:func:`offer_topic`)."""
    found = set()
    for row in rows:
        kind = row["type"]
        found.add(kind)
        if kind == "event.recorded":
            found.add(event_topic(str((row["data"] or {}).get("type"))))
        elif kind == "offer.made":
            found.add(offer_topic(str((row["data"] or {}).get("source") or "").partition(":")[0]))
    return frozenset(found)


def discard(conn: Connection) -> None:
    """Forget what a failed transaction emitted. A connection that a cancelled task left
    invalidated has nothing to forget (its info goes with it), and touching it would raise,
    hiding the cancellation from the task."""
    if conn.invalidated:
        return
    conn.info.pop(_PENDING, None)


_SCRUB = {pg: changes.update().where(one_of(changes.c.customer_id, "ids", pg)).values(data={}) for pg in (False, True)}


def scrub_customers(conn: Connection, ids: Sequence[str]) -> None:
    """Erasure: the changes about these customers keep their type, time and customer id,
    and lose their data (traits, identities' traces) for every later reader."""
    if ids:
        conn.execute(_SCRUB[conn.dialect.name == "postgresql"], {"ids": list(ids)})
