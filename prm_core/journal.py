"""Journaled ingest: acknowledge fire-and-forget events once journaled, record them behind.

With ``[ingest] journal = true``, the events routes hand validated events to
:meth:`Journal.append` instead of recording them while the sender waits. The journal's
writer groups whatever has queued up into one transaction (group commit, as
:mod:`prm_core.ingest` does), drops the events whose ``(touch point, id)`` is journaled or
recorded already (so ``duplicates`` stays exact), appends the rest under increasing
positions, commits, and only then answers each caller with the position of the journal's
head. Nothing is acknowledged before it is durable.

Where the journal lives:

- SQLite: a file of its own beside the database (``prm.db`` → ``prm.journal.db``), so an
  append never waits behind a processing transaction. Positions come from ``AUTOINCREMENT``
  and are never reused.
- PostgreSQL: the ``journal`` table; appends take one transaction-scoped advisory lock, so
  positions commit in order and a reader never skips one still in flight.

The :class:`Processor` records the journal in order, in batches, through the same
:func:`~prm_core.recording.record_batch` as the direct path. Its place (``journal_cursor``)
is written in the same transaction as the batch's events, so a crash leaves both or
neither. On PostgreSQL that transaction also deletes the batch's journal rows. On SQLite the
journal's rows are in another file: they are deleted afterwards, in the journal's own
transaction, up to the cursor read from the database. A crash between the two leaves rows
the cursor has passed; they are never read again (reading starts after the cursor) and the
next trim deletes them. Recording is idempotent by event id as a second line of defence.

The duplicate check is exact because the writer checks the journal first and the events
table second, and rows leave the journal only once their events are committed: an event is
always in one of the two when it is looked for.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
import structlog
from attrs import define, field, frozen
from sqlalchemy.engine import Connection

from .errors import ConfigError, Overloaded, StoreUnavailable
from .ingest import group_commits
from .model import Event, Identity
from .recording import BatchOutcome, IngestRules, record_batch
from .store import Store
from .store.doorbell import Doorbell
from .store.engine import async_url, close_listener
from .store.tables import journal, journal_cursor, journal_rejected, utcnow

__all__ = ["Accepted", "Doorbell", "Journal", "JournalSettings", "Processor", "journal_path"]

log = structlog.get_logger(__name__)

CURSOR = "processor"
MIN_BATCH = 50  # the processor's smallest batch, however slow recording is
FOLLOW_S = 0.05  # how often a hub whose processor runs elsewhere reads its place, while behind
NOTIFY_CHANNEL = "prm_journal"  # PostgreSQL: appends notify it; processors listen
LISTENING_POLL_S = 1.0  # how often an idle processor looks at the journal anyway (a lost notice)
STAT_S = 0.25  # SQLite: how often a processor woken by the doorbell also looks at the journal's files
RELISTEN_S = 30.0  # PostgreSQL: how often a processor that lost its listener tries again
_LOCK_KEY = 0x6A6F75726E616C  # "journal": serializes appends (and so positions) on PostgreSQL
_READ_AFTER = "SELECT position, body FROM journal WHERE position > ? ORDER BY position LIMIT ?"

# the SQLite journal file's own schema: the journal and journal_rejected tables' columns (positions never reused)
_SQLITE_DDL = (
    "CREATE TABLE IF NOT EXISTS journal ("
    " position INTEGER PRIMARY KEY AUTOINCREMENT,"
    " touchpoint VARCHAR(64) NOT NULL,"
    " event_id VARCHAR(200) NOT NULL,"
    " body JSON NOT NULL,"
    " appended_at DATETIME NOT NULL,"
    " CONSTRAINT uq_journal_touchpoint_event_id UNIQUE (touchpoint, event_id))",
    "CREATE TABLE IF NOT EXISTS journal_rejected ("
    " position BIGINT NOT NULL PRIMARY KEY,"
    " touchpoint VARCHAR(64) NOT NULL,"
    " event_id VARCHAR(200) NOT NULL,"
    " body JSON NOT NULL,"
    " error VARCHAR(200) NOT NULL,"
    " rejected_at DATETIME NOT NULL)",
)


@frozen
class JournalSettings:
    """``[ingest]``: whether the journal is on, and its bounds."""

    enabled: bool = True
    max_depth: int = 1_000_000  # events journaled and not processed; past it, appends answer 503
    batch: int = 2000  # events one processing transaction records, at most
    batch_ms: int = 200  # the time a processing transaction aims at: batches are sized to it
    read_wait_ms: int = 2000  # how long a read with a position waits for the processor
    sync_wait_ms: int = 5000  # how long a synchronous write waits for the journal to be processed
    retry_after_s: int = 1

    @classmethod
    def from_config(cls, section: Any) -> JournalSettings:
        known = {"journal", "max_depth", "batch", "batch_ms", "read_wait_ms", "sync_wait_ms", "retry_after_s"}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(f"[ingest] has no setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
        enabled = section.get("journal", True)
        if not isinstance(enabled, bool):
            raise ConfigError(f"[ingest].journal must be true or false, not {enabled!r}")
        values: dict[str, int] = {}
        for name in ("max_depth", "batch", "batch_ms", "read_wait_ms", "sync_wait_ms", "retry_after_s"):
            value = section.get(name, getattr(cls(), name))
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if "wait" in name else 1):
                raise ConfigError(f"[ingest].{name} must be a positive whole number, not {value!r}")
            values[name] = value
        return cls(enabled=enabled, **values)


@frozen
class Accepted:
    """What an append did: how many events were new, how many duplicates (``flags``, one per
    event in input order: true for a duplicate), and the position to read after."""

    accepted: int
    duplicates: int
    position: int
    flags: tuple[bool, ...] = ()


def journal_path(database_url: str) -> Path:
    """The SQLite journal file beside the database file (``prm.db`` → ``prm.journal.db``)."""
    db = async_url(database_url).database or ""
    if not db or db == ":memory:":
        raise ConfigError("[ingest].journal needs a database file (not an in-memory database)")
    path = Path(db).expanduser()
    return path.with_name(f"{path.stem}.journal{path.suffix or '.db'}")


def encode(ev: Event, received_at: datetime) -> dict[str, Any]:
    """The journal's object of an event (``received_at`` when the event has none)."""
    return {
        "id": ev.id,
        "type": ev.type,
        "occurred_at": ev.occurred_at.isoformat(),
        "touchpoint": ev.touchpoint,
        "identities": [f"{i.namespace}:{i.value}" for i in ev.identities],
        "dialogue": ev.dialogue,
        "direction": ev.direction,
        "data": ev.data,
        "received_at": (ev.received_at or received_at).isoformat(),
        "dialogue_id": ev.dialogue_id,
        "verified": ev.verified,
    }


def encode_texts(batch: Sequence[Event], received_at: datetime) -> list[str]:
    """The journal's text of each event: :func:`encode`'s object as compact JSON, which
    :func:`decode` reads back, serialized by ``orjson``. What ``orjson`` refuses (an integer
    past 64 bits, a key that is not a string) the standard library's ``json`` writes instead."""
    return [_dumps(encode(ev, received_at)) for ev in batch]


def decode(body: dict[str, Any]) -> Event:
    return Event(
        id=body["id"],
        type=body["type"],
        occurred_at=_aware(body["occurred_at"]),
        touchpoint=body["touchpoint"],
        identities=tuple(Identity.parse(ref) for ref in body["identities"]),
        dialogue=body["dialogue"],
        direction=body["direction"],
        data=body["data"],
        received_at=_aware(body["received_at"]),
        dialogue_id=body["dialogue_id"],
        verified=body["verified"],
    )


def _aware(text: str) -> datetime:
    at = datetime.fromisoformat(text)
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(value, separators=(",", ":"))


@define
class _Job:
    events: Sequence[Event]
    future: asyncio.Future[Accepted]


@define
class Journal:
    """The journal and its writer task (one per hub process)."""

    store: Store
    settings: JournalSettings
    # SQLite: the journal file's engine and the one thread its transactions run in
    engine: sa.Engine | None = None
    reader: sa.Engine | None = None  # SQLite: the journal file read without taking its write lock
    _thread: ThreadPoolExecutor | None = field(init=False, default=None)
    _queue: asyncio.Queue[_Job | None] = field(init=False, factory=asyncio.Queue)
    _task: asyncio.Task[None] | None = field(init=False, default=None)
    _follower: asyncio.Task[None] | None = field(init=False, default=None)
    _pending: int = field(init=False, default=0)
    head: int = field(init=False, default=0)  # the last position this process appended (or found)
    processed: int = field(init=False, default=0)  # the processor's place, as last seen here
    _moved: asyncio.Event = field(init=False, factory=asyncio.Event)
    _behind: asyncio.Event = field(init=False, factory=asyncio.Event)  # set: head is past processed
    # identity (and dialogue key) -> a journal position at or after its latest event appended
    # here and not yet processed: what a synchronous write naming it waits for (see recent_position)
    _recent: dict[str, int] = field(init=False, factory=dict)
    _pruned_at: float = field(init=False, default=0.0)
    on_append: Callable[[], None] | None = field(init=False, default=None)
    _path: Path | None = field(init=False, default=None)  # SQLite: the journal file
    _wal: Path | None = field(init=False, default=None)  # and its write-ahead log
    doorbell: Doorbell | None = field(init=False, default=None)  # SQLite: wakes another process's processor

    @classmethod
    def open(cls, store: Store, settings: JournalSettings, database_url: str) -> Journal:
        if store.dialect != "sqlite":
            return cls(store, settings)
        path = journal_path(database_url)
        path.parent.mkdir(parents=True, exist_ok=True)
        opened = cls(store, settings, _sqlite_engine(path, immediate=True), _sqlite_engine(path, immediate=False))
        opened._path, opened._wal = path, path.with_name(path.name + "-wal")
        opened.doorbell = Doorbell(path)
        return opened

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self, *, follow: bool = False) -> None:
        """Start the writer; ``follow``: the processor runs in other processes, whose
        progress this one reads from the cursor (for its depth, back-pressure and waits)."""
        self.processed = await self.store.read(_cursor)
        self.head = await self._run(self._prepare)
        self._task = asyncio.create_task(self._writer(), name="prm-journal-writer")
        if follow:
            self._follower = asyncio.create_task(self._follow(), name="prm-journal-follower")

    async def _follow(self) -> None:
        # only while this process has appended past the processor's place: an idle hub reads nothing
        while True:
            if self.head <= self.processed:
                self._behind.clear()
                await self._behind.wait()
            await asyncio.sleep(FOLLOW_S)
            try:
                self.advanced(await self.store.read(_cursor))
            except StoreUnavailable:
                continue

    async def stop_writer(self) -> None:
        """Journal what is queued, then stop appending."""
        if self._task is not None:
            self._queue.put_nowait(None)
            await self._task
            self._task = None

    async def close(self) -> None:
        await self.stop_writer()
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)
            self._follower = None
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None
        for engine in (self.engine, self.reader):
            if engine is not None:
                engine.dispose()
        if self.doorbell is not None:
            self.doorbell.close()

    def _prepare(self, conn: Connection) -> int:
        """Create the SQLite journal file's table; the head. A journal file younger than the
        database (restored, or deleted) continues after the cursor, never below it."""
        if self.engine is not None:
            for ddl in _SQLITE_DDL:
                conn.exec_driver_sql(ddl)
            head = conn.execute(sa.text("SELECT max(position) FROM journal")).scalar() or 0
            if head < self.processed:
                conn.exec_driver_sql("DELETE FROM sqlite_sequence WHERE name = 'journal'")
                conn.execute(
                    sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES ('journal', :p)"), {"p": self.processed}
                )
                head = self.processed
            return int(head)
        head = conn.execute(sa.select(sa.func.max(journal.c.position))).scalar() or 0
        return max(int(head), self.processed)

    async def _run(self, fn: Callable[[Connection], Any]) -> Any:
        """One transaction on the journal: its own file's (SQLite) or the database's."""
        if self.engine is None:
            return await self.store.write(fn)
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prm-journal")
        engine = self.engine

        def run() -> Any:
            with engine.begin() as conn:
                return fn(conn)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, run)
        except sa.exc.OperationalError as exc:
            raise StoreUnavailable(f"the journal cannot take writes now ({type(exc).__name__})") from exc

    # ---- appending -------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Events journaled and not yet processed (as this process knows it), and queued."""
        return max(0, self.head - self.processed) + self._pending

    async def append(self, events: Sequence[Event]) -> Accepted:
        """Journal ``events`` durably; see the module docstring."""
        if not events:
            return Accepted(0, 0, self.head)
        if self._task is None:
            raise RuntimeError("the journal is not started")
        if self.depth + len(events) > self.settings.max_depth:
            raise Overloaded(f"{self.depth} journaled events are waiting to be processed")
        future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self._pending += len(events)
        self._queue.put_nowait(_Job(events, future))
        # a caller that goes away cancels its future, nothing more: its events stay queued and
        # are journaled, and the writer answers only the futures still waiting
        return await future

    async def _writer(self) -> None:
        await group_commits(self._queue, self.settings.batch, self._commit)

    async def _commit(self, jobs: list[_Job]) -> None:
        batch = [ev for job in jobs for ev in job.events]
        now = utcnow()
        try:
            flags, head = await self._run(lambda conn: self._append(conn, batch, now))
        except Exception as exc:
            self._pending -= len(batch)
            if not isinstance(exc, StoreUnavailable):
                log.error("journal append failed", events=len(batch), error=type(exc).__name__)
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        self._pending -= len(batch)
        self.head = max(self.head, head)
        if self.head > self.processed:
            self._behind.set()
        recent = self._recent
        for ev, duplicate in zip(batch, flags, strict=True):
            if not duplicate:
                for key in _keys(ev):
                    recent[key] = head
        start = 0
        for job in jobs:
            part = tuple(flags[start : start + len(job.events)])
            start += len(job.events)
            dups = sum(part)
            if not job.future.done():
                job.future.set_result(Accepted(len(part) - dups, dups, self.head, part))
        if self.on_append is not None:
            self.on_append()
        if self.doorbell is not None and any(not f for f in flags):
            self.doorbell.ring()

    def _append(self, conn: Connection, batch: Sequence[Event], now: datetime) -> tuple[list[bool], int]:
        pg = self.engine is None
        if pg:
            conn.execute(_PG_LOCK, {"k": _LOCK_KEY, "channel": NOTIFY_CHANNEL})
        keys = list(dict.fromkeys((ev.touchpoint, ev.id) for ev in batch))
        seen = _pg_existing(conn, keys) if pg else self._sqlite_existing(conn, keys)
        flags: list[bool] = []
        fresh: list[Event] = []
        for ev in batch:
            key = (ev.touchpoint, ev.id)
            if key in seen:
                flags.append(True)
                continue
            seen.add(key)
            flags.append(False)
            fresh.append(ev)
        if fresh:
            bodies = encode_texts(fresh, now)
            if pg:
                at = now.astimezone(UTC).replace(tzinfo=None)
                params = {"tps": [e.touchpoint for e in fresh], "ids": [e.id for e in fresh], "bodies": bodies}
                conn.execute(_PG_INSERT, {**params, "at": at})
            else:
                # the journal file's rows bound as the driver takes them: SQLAlchemy's processing of
                # each JSON and timestamp value cost more than the insert. The text is what the journal
                # table's types read back (JSON; naive UTC as SQLAlchemy writes SQLite's DATETIME)
                at_text = now.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
                conn.exec_driver_sql(
                    "INSERT INTO journal (touchpoint, event_id, body, appended_at) VALUES (?, ?, ?, ?)",
                    [(e.touchpoint, e.id, body, at_text) for e, body in zip(fresh, bodies, strict=True)],
                )
        head = conn.execute(_HEAD).scalar() or 0
        return flags, int(head)

    def _sqlite_existing(self, conn: Connection, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """SQLite: of these ``(touch point, id)``, those in the journal file (``conn``), then of
        the rest those in the database's events table: a statement per table and touch point."""
        seen = _sqlite_existing(conn, "journal", keys)
        rest = [key for key in keys if key not in seen] if seen else keys
        if rest:  # the journal first, the events second: see the module docstring
            assert self.store.sync_reader is not None
            with self.store.sync_reader.begin() as db:
                seen |= _sqlite_existing(db, "events", rest)
        return seen

    def files_signature(self) -> tuple[int, ...]:
        """SQLite: the journal file's and its write-ahead log's modification times and sizes,
        which a commit to the journal changes; ``()`` on PostgreSQL (nothing to look at).
        A commit within the kernel's coarse clock tick of the write before, into a log started
        again from its beginning, changes neither: the once-a-second look sees it. (Reading
        SQLite's own index file instead would mean closing a descriptor to it, which drops
        the locks SQLite holds on it in this process.)"""
        if self.engine is None or self._path is None:
            return ()
        found: list[int] = []
        for path in (self._path, self._wal or self._path):
            try:
                st = os.stat(path)
            except OSError:
                found += (0, 0)
                continue
            found += (st.st_mtime_ns, st.st_size)
        return tuple(found)

    # ---- the processor's place ---------------------------------------------------------

    def advanced(self, position: int) -> None:
        if position > self.processed:
            self.processed = position
            self._moved.set()
            self._moved = asyncio.Event()
            if position >= self.head:
                self._recent.clear()
            elif len(self._recent) > 50_000 and time.monotonic() - self._pruned_at > 1.0:
                self._pruned_at = time.monotonic()
                self._recent = {k: p for k, p in self._recent.items() if p > position}

    async def refresh(self) -> None:
        """Read the processor's place and the journal's head from the database, for a report
        (``/healthz``, ``/metrics``) true of every hub process, not only of this one's appends."""
        self.advanced(await self.store.read(_cursor))

        def newest(conn: Connection) -> int:
            return int(conn.execute(_HEAD).scalar() or 0)

        if self.reader is None:
            head = await self.store.read(newest)
        else:
            reader = self.reader

            def read() -> int:
                with reader.begin() as conn:
                    return newest(conn)

            head = await asyncio.to_thread(read)
        if head > self.head:
            self.head = head
            if head > self.processed:
                self._behind.set()

    def recent_position(self, events: Sequence[Event]) -> int:
        """The position a synchronous write of ``events`` waits for: the latest journaled (here)
        and unprocessed event naming one of their identities or dialogue keys; 0 when none. The
        processor records in order, so once it is past that, every journaled event of theirs is."""
        recent = self._recent
        if not recent:
            return 0
        return max((recent.get(key, 0) for ev in events for key in _keys(ev)), default=0)

    async def wait_processed(self, position: int, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until the processor has passed ``position``."""
        deadline = time.monotonic() + timeout_s
        while self.processed < position:
            left = deadline - time.monotonic()
            if left <= 0:
                # another process's processor may have passed it: the cursor is the truth
                self.advanced(await self.store.read(_cursor))
                return self.processed >= position
            moved = self._moved
            try:
                await asyncio.wait_for(moved.wait(), timeout=min(left, 0.05))
            except TimeoutError:
                self.advanced(await self.store.read(_cursor))
        return True

    async def lag_s(self) -> float:
        """Seconds since the oldest event not yet processed was journaled (0 when none)."""
        after = self.processed

        def oldest(conn: Connection) -> datetime | None:
            q = sa.select(sa.func.min(journal.c.appended_at)).where(journal.c.position > after)
            found: datetime | None = conn.execute(q).scalar()
            return found

        if self.reader is None:
            at = await self.store.read(oldest)
        else:
            reader = self.reader

            def read() -> datetime | None:
                with reader.begin() as conn:
                    return oldest(conn)

            at = await asyncio.to_thread(read)
        if at is None:
            return 0.0
        return max(0.0, (utcnow() - at).total_seconds())

    # ---- what the processor reads and trims (SQLite: the journal file) -----------------

    def read_after(self, conn: Connection, position: int, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """Up to ``limit`` journaled events after ``position``, in order. ``conn`` is the
        processing transaction (PostgreSQL); on SQLite the journal file is read."""
        q = (
            sa.select(journal.c.position, journal.c.body)
            .where(journal.c.position > position)
            .order_by(journal.c.position)
            .limit(limit)
        )
        if self.reader is None:
            return [(int(r.position), r.body) for r in conn.execute(q)]
        with self.reader.begin() as jconn:
            # the driver's rows, each body parsed here: SQLAlchemy's processing of every row and
            # JSON value cost more than the read (the body is JSON text, as the journal wrote it)
            rows = jconn.exec_driver_sql(_READ_AFTER, (position, limit))
            return [(position, json.loads(body)) for position, body in rows]

    async def trim(self) -> None:
        """SQLite: delete the journal's rows the processor has passed (read from the database)."""
        if self.engine is None:
            return
        assert self.store.sync_reader is not None
        reader = self.store.sync_reader

        def delete(conn: Connection) -> None:
            with reader.begin() as db:
                upto = _cursor(db)
            conn.execute(sa.delete(journal).where(journal.c.position <= upto))

        await self._run(delete)


def _keys(ev: Event) -> Iterator[str]:
    for identity in ev.identities:
        yield f"{identity.namespace}:{identity.value}"
    if ev.dialogue:
        yield f"\x00{ev.touchpoint}\x00{ev.dialogue}"
    if ev.dialogue_id:
        yield f"\x00\x00{ev.dialogue_id}"


def _sqlite_engine(path: Path, *, immediate: bool) -> sa.Engine:
    engine = sa.create_engine(
        f"sqlite+pysqlite:///{path}",
        pool_size=1 if immediate else 4,
        max_overflow=0,
        connect_args={"timeout": 30, "check_same_thread": False},
        hide_parameters=True,
    )

    @sa.event.listens_for(engine, "connect")
    def on_connect(dbapi_conn: Any, record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA secure_delete=ON")  # an erased person's journaled rows leave no copy
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _sqlite_existing(conn: Connection, table: str, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """SQLite: which of ``keys`` are in ``table``, one statement per touch point (a batch has
    one or a few), the ids bound as one JSON array whatever their number."""
    by_touchpoint: dict[str, list[str]] = {}
    for tp, event_id in keys:
        by_touchpoint.setdefault(tp, []).append(event_id)
    sql = f"SELECT event_id FROM {table} WHERE touchpoint = ? AND event_id IN (SELECT value FROM json_each(?))"
    found: set[tuple[str, str]] = set()
    for tp, ids in by_touchpoint.items():
        rows = conn.exec_driver_sql(sql, (tp, _dumps(ids)))
        found.update((tp, r[0]) for r in rows)
    return found


def _pg_existing(conn: Connection, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """PostgreSQL: which of ``keys`` are in the journal or the events table, in one statement:
    one snapshot, in which the processor's transaction (its events recorded, their journal
    rows deleted) has committed entirely or not at all, so each is found in one of the two."""
    if not keys:
        return set()
    rows = conn.execute(_PG_EXISTING, {"tps": [k[0] for k in keys], "ids": [k[1] for k in keys]})
    return {(r[0], r[1]) for r in rows}


# the lock serializes appends; the notice (sent at commit) wakes the processors listening
_PG_LOCK = sa.text("SELECT pg_advisory_xact_lock(:k), pg_notify(:channel, '')")
_HEAD = sa.select(sa.func.max(journal.c.position))
_KEYS = "unnest(CAST(:tps AS varchar[]), CAST(:ids AS varchar[])) AS k(tp, id)"
_PG_EXISTING = sa.text(
    f"SELECT j.touchpoint, j.event_id FROM journal AS j JOIN {_KEYS} ON j.touchpoint = k.tp AND j.event_id = k.id"
    f" UNION ALL SELECT e.touchpoint, e.event_id FROM events AS e JOIN {_KEYS}"
    " ON e.touchpoint = k.tp AND e.event_id = k.id"
)
# one statement for the batch, its rows (and so their positions) in the batch's order
_PG_INSERT = sa.text(
    "INSERT INTO journal (touchpoint, event_id, body, appended_at)"
    " SELECT k.tp, k.id, CAST(k.body AS jsonb), CAST(:at AS timestamp) FROM unnest("
    "CAST(:tps AS varchar[]), CAST(:ids AS varchar[]), CAST(:bodies AS text[])) WITH ORDINALITY AS k(tp, id, body, n)"
    " ORDER BY k.n"
)


def _cursor(conn: Connection) -> int:
    q = sa.select(journal_cursor.c.position).where(journal_cursor.c.name == CURSOR)
    return int(conn.execute(q).scalar() or 0)


@define
class Processor:
    """Records the journal in order, in batches, beside the server (an asyncio task)."""

    journal: Journal
    store: Store
    rules: IngestRules
    after_commit: Callable[[BatchOutcome], None]
    batch: int = 2000  # at most
    batch_ms: int = 200  # the time a batch's transaction aims at (see _loop)
    idle_s: float = 0.05  # how often an idle processor looks for another process's appends
    rejected: int = field(init=False, default=0)  # events it could not record (kept in journal_rejected)
    _wake: asyncio.Event = field(init=False, factory=asyncio.Event)
    _task: asyncio.Task[None] | None = field(init=False, default=None)
    _stopping: bool = field(init=False, default=False)
    _listener: Any = field(init=False, default=None)  # asyncpg's connection, on PostgreSQL
    _hearing: bool = field(init=False, default=False)  # other processes' appends wake it
    _listened_at: float = field(init=False, default=0.0)

    def start(self) -> None:
        self.journal.on_append = self._wake.set
        self._task = asyncio.create_task(self._loop(), name="prm-journal-processor")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await task
            except Exception as exc:  # the loop ends only when stopped; a failure still cleans up
                log.error("journal processor failed", error=type(exc).__name__)
        await self._unlisten()

    async def _unlisten(self) -> None:
        if self.journal.doorbell is not None and self._hearing:
            self.journal.doorbell.close()
        self._hearing = False
        listener, self._listener = self._listener, None
        await close_listener(listener, "journal")

    async def _listen(self) -> None:
        """Hear other processes' appends (PostgreSQL: their commits notify; SQLite: they ring
        the journal's doorbell), so an idle processor waits on them, not on a clock. Whatever
        fails here, the processor still works: it looks every ``idle_s`` instead."""
        self._listened_at = time.monotonic()
        try:
            if self.journal.doorbell is not None:
                self._hearing = self.journal.doorbell.listen(lambda _messages: self._wake.set())
                return
            if self.store.dialect != "postgresql":
                return
            self._listener = await self.store.listen(NOTIFY_CHANNEL, self._heard)
            self._hearing = True
        except Exception as exc:
            log.warning("journal notices not heard; looking every idle_s", error=type(exc).__name__)
            await self._unlisten()

    def _heard(self, *notice: Any) -> None:
        self._wake.set()

    async def _idle(self, seen: tuple[int, ...]) -> None:
        """Wait for work: an append here, another process's (a notice on PostgreSQL, the
        doorbell on SQLite), or a change to the journal's files since ``seen`` was taken
        (SQLite: two ``stat`` calls, not a transaction: every ``STAT_S`` while other processes'
        appends wake it, as a second way to see them, else every ``idle_s``). It returns, for a
        look at the journal itself, at least every ``LISTENING_POLL_S`` (a change too quick for
        the files' times, a lost notice), and every ``idle_s`` on PostgreSQL when nothing wakes it."""
        since = time.monotonic()
        while not self._wake.is_set():
            if self._hearing and self._listener is not None and self._listener.is_closed():
                log.warning("journal notices lost; looking every idle_s")
                await self._unlisten()
            if not self._hearing and self.store.dialect == "postgresql":
                if time.monotonic() - self._listened_at >= RELISTEN_S:
                    await self._listen()
            if seen:
                every = STAT_S if self._hearing else self.idle_s
            else:
                every = LISTENING_POLL_S if self._hearing else self.idle_s
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=every)
                return
            except TimeoutError:
                pass
            if not seen or self.journal.files_signature() != seen:
                return
            if time.monotonic() - since >= LISTENING_POLL_S:
                return

    async def _loop(self) -> None:
        failures = 0
        limit = min(self.batch, 100)  # the first batches size the rest
        per_event_s = 0.0
        await self._listen()
        while not self._stopping:
            # cleared and looked at before the read: an append committing during it is not missed
            self._wake.clear()
            seen = self.journal.files_signature()
            try:
                started = time.monotonic()
                done = await self.process_once(limit)
                failures = 0
                if done:
                    # a batch of about batch_ms: a synchronous write queued behind it on the one
                    # SQLite writer (or waiting for its customers' locks) waits that long at most
                    took = (time.monotonic() - started) / done
                    per_event_s = took if not per_event_s else 0.7 * per_event_s + 0.3 * took
                    limit = max(MIN_BATCH, min(self.batch, int(self.batch_ms / 1000 / per_event_s)))
            except StoreUnavailable:
                failures += 1
                await asyncio.sleep(min(2.0, 0.05 * 2**failures))
                continue
            except Exception as exc:  # a bug must not end the processor; the journal keeps the events
                failures += 1
                log.error("journal processing failed", error=type(exc).__name__)
                await asyncio.sleep(min(2.0, 0.05 * 2**failures))
                continue
            if done == 0:
                await self._idle(seen)

    async def process_once(self, limit: int) -> int:
        """Record the next batch (at most ``limit`` events); how many journal rows it passed."""
        try:
            passed, outcome, upto = await self.store.write(lambda conn: self._process(conn, limit))
        except StoreUnavailable:
            raise
        except Exception:
            if limit == 1:
                raise
            # the batch failed as a whole: one event at a time, so only the offender is skipped
            return await self._one_by_one(limit)
        self.journal.advanced(upto)
        if outcome is not None:
            try:
                self.after_commit(outcome)
            except Exception as exc:  # a plugin's bug must not stall the processor
                log.error("after-commit hooks failed", error=type(exc).__name__)
        if passed:
            await self.journal.trim()
        return passed

    async def _one_by_one(self, limit: int) -> int:
        total = 0
        for _ in range(limit):
            try:
                n = await self.process_once(1)
            except StoreUnavailable:
                raise
            except Exception as exc:
                error = type(exc).__name__
                n = await self.store.write(functools.partial(self._skip_one, error=error))
                if n == 0:
                    break
                self.rejected += n
                log.error("journaled event not recorded; kept in journal_rejected", error=error)
                self.journal.advanced(await self.store.read(_cursor))
            if n == 0:
                break
            total += n
        return total

    def _lock_cursor(self, conn: Connection) -> int:
        c = journal_cursor.c
        q = sa.select(c.position).where(c.name == CURSOR)
        if conn.dialect.name == "postgresql":
            q = q.with_for_update()  # several processes' processors take turns, never a batch twice
        found = conn.execute(q).scalar()
        if found is None:
            conn.execute(journal_cursor.insert().values(name=CURSOR, position=0, updated_at=utcnow()))
            if conn.dialect.name == "postgresql":
                found = conn.execute(q).scalar()
        return int(found or 0)

    def _move_cursor(self, conn: Connection, upto: int) -> None:
        c = journal_cursor.c
        conn.execute(journal_cursor.update().where(c.name == CURSOR).values(position=upto, updated_at=utcnow()))
        if conn.dialect.name == "postgresql":
            conn.execute(sa.delete(journal).where(journal.c.position <= upto))

    def _process(self, conn: Connection, limit: int) -> tuple[int, BatchOutcome | None, int]:
        at = self._lock_cursor(conn)
        rows = self.journal.read_after(conn, at, limit)
        if not rows:
            return 0, None, at
        batch = [decode(body) for _, body in rows]
        outcome = record_batch(conn, batch, self.rules)
        upto = rows[-1][0]
        self._move_cursor(conn, upto)
        return len(rows), outcome, upto

    def _skip_one(self, conn: Connection, error: str) -> int:
        """Move the cursor past the next event, which could not be recorded, keeping a copy in
        ``journal_rejected`` (on SQLite in the journal's file, committed first: a crash in
        between leaves the copy, and the event is tried again)."""
        at = self._lock_cursor(conn)
        rows = self.journal.read_after(conn, at, 1)
        if not rows:
            return 0
        position, body = rows[0]
        row = {
            "position": position,
            "touchpoint": body["touchpoint"],
            "event_id": body["id"],
            "body": body,
            "error": error[:200],
            "rejected_at": utcnow(),
        }
        if self.journal.engine is None:
            conn.execute(journal_rejected.insert(), row)
        else:
            with self.journal.engine.begin() as jconn:
                jconn.execute(journal_rejected.insert().prefix_with("OR IGNORE"), row)
        self._move_cursor(conn, position)
        return 1
