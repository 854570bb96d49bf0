"""Bringing a warehouse up to date: its history first, then the feed, batch by batch.

A warehouse starts from a *snapshot* of the feed (its last position, read in one transaction
with the last event): every row the hub holds is written as of that position (the history,
which includes whatever was recorded before the feed existed), then every change after it.
Progress is kept at the warehouse itself (its :class:`Mark`), written with the rows it
covers, so an interrupted export or a restarted hub continues where it stopped, and a change
delivered again is skipped or overwrites what it wrote the first time (at-least-once
delivery, exactly-once rows).

A change tells which rows it touched; the rows themselves are read from the hub's tables as
they are now (a customer with its identities and figures, a dialogue with its status), so
each batch writes whole rows, and a row written late is never older than its position says.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from attrs import evolve, field, frozen
from sqlalchemy.engine import Connection

from ..feed import Change
from ..feed.changes import CORE_TYPES
from .reading import Columns, Snapshot, current_rows, history_page, take_snapshot
from .schema import TABLES

__all__ = ["Batch", "Loader", "Mark", "Warehouse"]

T = TypeVar("T")
Read = Callable[[Callable[[Connection], T]], Awaitable[T]]

# the helper column naming a row's partition day (not a column of the tables)
DAY = "_day"


@frozen
class Mark:
    """How far a warehouse got: its snapshot, each table's history, the last change written."""

    snapshot: Snapshot | None = None
    # table -> the key its history continues after, or True once written whole
    history: Mapping[str, Any] = field(factory=dict)
    position: int = 0

    def history_done(self) -> bool:
        return all(self.history.get(t) is True for t in TABLES)

    @property
    def through(self) -> int:
        """Changes up to here are in the warehouse (a snapshot's once its history is whole)."""
        snapshot = self.snapshot.position if self.snapshot is not None and self.history_done() else 0
        return max(self.position, snapshot)

    def to_json(self) -> dict[str, Any]:
        snap = self.snapshot
        return {
            "snapshot": None
            if snap is None
            else {"position": snap.position, "events_through": snap.events_through, "at": snap.at.isoformat()},
            "history": {t: {"done": v is True, "after": None if v is True else v} for t, v in self.history.items()},
            "position": self.position,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Mark:
        snap = doc.get("snapshot")
        snapshot = (
            None
            if snap is None
            else Snapshot(int(snap["position"]), int(snap["events_through"]), datetime.fromisoformat(snap["at"]))
        )
        history = {t: True if v.get("done") else v.get("after") for t, v in doc.get("history", {}).items()}
        return cls(snapshot, history, int(doc.get("position", 0)))


@frozen
class Batch:
    """Rows to write, erasures to apply after them, and the mark to keep once both are durable.

    ``name`` is derived from positions (``part-<first>-<last>`` for changes,
    ``history-<snapshot>-<first key>`` for history pages), so writing a batch again gives
    the same files, not more. ``tables`` rows carry ``position`` and ``_day``."""

    name: str
    tables: Mapping[str, Columns]
    erasures: Sequence[tuple[int, tuple[str, ...]]]
    mark: Mark


class Warehouse(Protocol):
    """Where the tables go: Parquet files, a PostgreSQL schema."""

    async def mark(self) -> Mark:
        """The mark last written (an empty one for a new warehouse)."""
        ...

    async def write(self, batch: Batch) -> None:
        """Write the rows, then apply the erasures, then keep the mark. Writing the same batch
        again must give the same result."""
        ...

    async def close(self) -> None: ...


def _day(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d")


def _keys(table: str, cols: Columns) -> list[Any]:
    if table == "events":
        return list(zip(cols["touchpoint"], cols["event_id"], strict=True))
    return cols[TABLES[table].key[0]]


# change type -> (table, field of ``data`` holding the row's key)
_ROWS_OF = {
    "dialogue.opened": ("dialogues", "dialogue_id"),
    "dialogue.closed": ("dialogues", "dialogue_id"),
    "offer.made": ("offers", "offer_id"),
    "offer.responded": ("offers", "offer_id"),
    "fulfillment.updated": ("fulfillments", "fulfillment_id"),
    "customers.merged": ("merges", "merge_id"),
    "customers.unmerged": ("merges", "merge_id"),
}


class Loader:
    """Writes the history and then the feed's changes into one warehouse.

    ``read`` runs a function on a read transaction of the hub's database (``Store.read``).
    """

    def __init__(self, warehouse: Warehouse, read: Read[Any], *, page: int = 10_000) -> None:
        self.warehouse = warehouse
        self.read = read
        self.page = page
        self._mark: Mark | None = None
        # the write of a call that was cancelled (a destination's delivery timeout) goes on in
        # its thread or transaction: the next call waits for it and rereads the mark, so two
        # writes never overlap and nothing is written twice under different names
        self._writing: asyncio.Future[None] | None = None

    async def mark(self) -> Mark:
        if self._writing is not None:
            left, self._writing = self._writing, None
            await asyncio.wait([left])
            if not left.cancelled():
                left.exception()  # its caller is gone: a failure only means the mark is older
            self._mark = None
        if self._mark is None:
            self._mark = await self.warehouse.mark()
        return self._mark

    async def _write(self, batch: Batch) -> None:
        await self.mark()
        self._writing = asyncio.ensure_future(self.warehouse.write(batch))
        await asyncio.shield(self._writing)
        self._writing = None
        self._mark = batch.mark

    async def history(self, progress: Callable[[str, int], None] | None = None) -> Mark:
        """Write every row the hub holds as of the warehouse's snapshot (taken now if it has
        none), continuing where an earlier run stopped. ``progress(table, rows)`` after each page."""
        mark = await self.mark()
        if mark.snapshot is None:
            mark = evolve(mark, snapshot=await self.read(take_snapshot))
            await self._write(Batch("snapshot", {}, (), mark))
        snapshot = mark.snapshot
        assert snapshot is not None
        day = _day(snapshot.at)
        for table in TABLES:
            after = mark.history.get(table)
            if after is True:
                continue

            def page(after: Any, table: str = table) -> asyncio.Future[tuple[Columns, Any, Any]]:
                read = functools.partial(history_page, table=table, after=after, limit=self.page, snapshot=snapshot)
                return asyncio.ensure_future(self.read(read))

            # the next page is read while this one is written: reading is the database's work
            # and the driver's, writing Arrow's, and both let go of the interpreter lock
            pending: asyncio.Future[tuple[Columns, Any, Any]] | None = page(after)
            while pending is not None:
                cols, first, following = await pending
                pending = page(following) if following is not None else None
                try:
                    count = len(cols[TABLES[table].names[1]])
                    cols.setdefault("position", [snapshot.position] * count)
                    cols[DAY] = [day] * count
                    if isinstance(first, int):
                        first = f"{first:020d}"
                    mark = evolve(mark, history={**mark.history, table: True if following is None else following})
                    name = f"history-{snapshot.position:020d}-{_name_part(first)}"
                    await self._write(Batch(name, {table: cols} if count else {}, (), mark))
                    if progress is not None:
                        progress(table, count)
                except BaseException:
                    if pending is not None:
                        pending.cancel()
                        await asyncio.gather(pending, return_exceptions=True)
                    raise
        return mark

    async def changes(self, changes: Sequence[Change]) -> int:
        """Write what these changes (in feed order) touched; skip those already written.
        Returns how many changes were new to the warehouse."""
        mark = await self.mark()
        new = [c for c in changes if c.seq > mark.through]
        if not new:
            return 0
        touched: dict[str, dict[Any, Change]] = {t: {} for t in TABLES if t != "changes"}
        erasures: list[tuple[int, tuple[str, ...]]] = []
        own: list[Change] = []  # changes of types plugins define: kept as they are
        for change in new:
            data = change.data
            if change.customer_id is not None:
                touched["customers"][change.customer_id] = change
            if change.type not in CORE_TYPES:
                own.append(change)
            elif change.type == "event.recorded" and data:
                touched["events"][(data["touchpoint"], data["event_id"])] = change
            elif change.type in _ROWS_OF and data:
                table, key = _ROWS_OF[change.type]
                touched[table][data[key]] = change
                if table == "merges":
                    for cid in (data.get("survivor_id"), data.get("merged_id")):
                        if cid:
                            touched["customers"][cid] = change
            elif change.type == "customer.erased" and change.customer_id is not None:
                merged = tuple(str(m) for m in data.get("merged_ids", ()))
                erasures.append((change.seq, (change.customer_id, *merged)))
                for cid in merged:
                    touched["customers"][cid] = change

        def read(conn: Connection) -> dict[str, Columns]:
            return {t: current_rows(conn, t, keys) for t, keys in touched.items() if keys}

        tables = await self.read(read)
        for table, cols in tables.items():
            by_key = touched[table]
            # a row's version is the latest change in the batch that touched it
            cause = [by_key[k] for k in _keys(table, cols)]
            cols["position"] = [c.seq for c in cause]
            cols[DAY] = [_day(c.at) for c in cause]
        if own:
            tables["changes"] = {
                "position": [c.seq for c in own],
                "type": [c.type for c in own],
                "at": [c.at for c in own],
                "customer_id": [c.customer_id for c in own],
                "data": [json.dumps(dict(c.data), separators=(",", ":")) for c in own],
                DAY: [_day(c.at) for c in own],
            }
        name = f"part-{new[0].seq:020d}-{new[-1].seq:020d}"
        await self._write(Batch(name, tables, erasures, evolve(mark, position=changes[-1].seq)))
        return len(new)


def _name_part(key: Any) -> str:
    """A key as part of a file name: ids and numbers are [A-Za-z0-9_-] already; anything else
    (an event id chosen by a touch point) is kept to those characters."""
    return "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_") else "_" for ch in str(key))[:120]
