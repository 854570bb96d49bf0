"""Database engines, transactions with retries, and migrations.

SQLite (the embedded default) runs in WAL mode with ``synchronous=FULL``: a commit is on
disk before it returns, and the ingest path shares one commit among many requests so
that costs little. Writes go through one dedicated connection that begins
``IMMEDIATE`` (SQLite has a single writer anyway; taking the lock up front avoids
upgrade deadlocks); reads use their own pool and never wait for the writer.

PostgreSQL uses asyncpg; several hub processes may share it (advisory locks in the
ingest path keep identity resolution consistent across them).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import random
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import sqlalchemy as sa
import structlog
from alembic import command
from alembic.config import Config as AlembicConfig
from attrs import define, field
from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from ..errors import ConfigError, StoreUnavailable
from ..feed import writing as feed_writing

__all__ = ["Store", "advisory_locks", "async_url", "customer_lock_key", "identity_lock_key"]

T = TypeVar("T")
log = structlog.get_logger(__name__)
MIGRATIONS = Path(__file__).with_name("migrations")
# what SQLAlchemy's asyncpg adapter reads from a URL for itself, not for asyncpg.connect
_ENGINE_ONLY_CONNECT_ARGS = ("async_creator_fn", "prepared_statement_cache_size", "prepared_statement_name_func")
# any constant works; it only has to be the same in every hub process
_MIGRATION_LOCK = 0x50524D_01


def async_url(url: str) -> sa.URL:
    """Map a configured URL to its async driver: ``sqlite:///x`` -> ``sqlite+aiosqlite:///x``."""
    try:
        u = make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"database url {url!r} is not a valid URL") from exc
    backend = u.get_backend_name()
    if backend == "sqlite":
        if not u.database or u.database == ":memory:":
            raise ConfigError("an in-memory SQLite database cannot be shared by the hub's connections; use a file")
        return u.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres"):
        return u.set(drivername="postgresql+asyncpg")
    raise ConfigError(f"unsupported database {backend!r}: use sqlite:///path or postgresql://...")


def identity_lock_key(namespace: str, value: str) -> str:
    return f"i\x1f{namespace}\x1f{value}"


def customer_lock_key(customer_id: str) -> str:
    return f"c\x1f{customer_id}"


def advisory_locks(conn: Connection, keys: Iterable[str]) -> None:
    """PostgreSQL: take transaction-scoped advisory locks on ``keys``, in sorted order so two
    transactions never wait on each other crosswise. A no-op on SQLite, whose single writer
    already serializes transactions."""
    if conn.dialect.name != "postgresql":
        return
    conn.execute(
        sa.text("SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM unnest(CAST(:keys AS text[])) AS k"),
        {"keys": sorted(set(keys))},
    )


def _retryable(exc: BaseException) -> bool:
    """Lock contention and lost races, which a fresh attempt of the transaction resolves."""
    if isinstance(exc, IntegrityError):
        return True
    # SQLite's "database is locked" is not retried: the busy timeout has already waited for
    # the other process's write; waiting again would only hold every request queued behind it
    if isinstance(exc, DBAPIError):
        code = getattr(exc.orig, "sqlstate", None) or getattr(getattr(exc.orig, "__cause__", None), "sqlstate", None)
        return code in {"40001", "40P01", "55P03"}
    return False


def _unavailable(exc: BaseException) -> bool:
    """The database is gone, full or unreachable: nothing to do but answer 503."""
    if isinstance(exc, OSError | ConnectionError | asyncio.TimeoutError):
        return True
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or isinstance(exc, OperationalError) or "connection" in str(exc).lower()
    return False


@define
class Store:
    """The hub's database: a writer engine, a reader engine, migrations."""

    url: sa.URL
    writer: AsyncEngine
    reader: AsyncEngine
    # SQLite: plain synchronous engines, used from worker threads (see write/read)
    sync_writer: sa.Engine | None = None
    sync_reader: sa.Engine | None = None
    # SQLite: the thread every write transaction runs in (there is one writer connection): one
    # thread's allocator arena instead of the default pool's several, which kept freed memory
    # growing RSS under a steady load
    _writer_thread: ThreadPoolExecutor | None = field(init=False, default=None)
    # SQLite: the writer connection, kept checked out by the writer thread between transactions:
    # a check-out and check-in per transaction (with the pool's reset, a ROLLBACK) cost more
    # CPU than a one-event transaction's own statements
    _writer_conn: Connection | None = field(init=False, default=None)
    # the change feed (prm_core.feed.writing): whether changes are written, and who to tell
    # (on the event loop, with the changes' topics) when a commit added some
    feed: bool = field(init=False, default=True)
    on_changes: Callable[[frozenset[str]], None] | None = field(init=False, default=None)

    async def connect(self) -> asyncpg.Connection:
        """PostgreSQL: an asyncpg connection of its own (for ``LISTEN`` and ``NOTIFY``, outside
        the pools), made as the engine makes its connections: the URL's host, port, ``ssl``
        and other query options mean the same. Close it when done."""
        args, params = self.reader.dialect.create_connect_args(self.reader.url)
        for engine_only in _ENGINE_ONLY_CONNECT_ARGS:  # SQLAlchemy's adapter takes these before asyncpg
            params.pop(engine_only, None)
        return await asyncpg.connect(*args, **params)

    async def listen(self, channel: str, callback: Callable[..., Any]) -> Any:
        """PostgreSQL: a connection of its own (:meth:`connect`) that ``LISTEN``s on ``channel``,
        calling ``callback`` for each notice (other hub processes' commits). Closed again if the
        ``LISTEN`` fails; raises what connecting raised. Close it with :func:`close_listener`."""
        conn = await self.connect()
        try:
            await conn.add_listener(channel, callback)
        except BaseException:
            await close_listener(conn, channel)
            raise
        return conn

    @property
    def dialect(self) -> str:
        return self.url.get_backend_name()

    @classmethod
    def open(cls, url: str, *, pool_size: int = 8, busy_timeout_ms: int = 5000) -> Store:
        """Create engines for ``url`` (``sqlite:///...`` or ``postgresql://...``). Connects lazily.

        ``busy_timeout_ms`` is how long a SQLite write waits for another process's write
        (``prm import``, a second hub on the same file) before the hub answers 503.
        """
        u = async_url(url)
        if u.get_backend_name() == "sqlite":
            Path(u.database or "").expanduser().parent.mkdir(parents=True, exist_ok=True)
            writer = create_async_engine(
                u, pool_size=1, max_overflow=0, connect_args={"timeout": 30}, hide_parameters=True
            )
            reader = create_async_engine(
                u, pool_size=pool_size, max_overflow=0, connect_args={"timeout": 30}, hide_parameters=True
            )
            _sqlite_setup(writer.sync_engine, immediate=True, busy_timeout_ms=busy_timeout_ms)
            _sqlite_setup(reader.sync_engine, immediate=False, busy_timeout_ms=busy_timeout_ms)
            # A whole transaction runs in one worker thread on a plain sqlite3 connection:
            # one hand-off per transaction instead of several per statement through
            # aiosqlite, and SQLite works without holding the event loop's GIL meanwhile.
            plain = u.set(drivername="sqlite+pysqlite")
            args = {"timeout": 30, "check_same_thread": False}
            sync_writer = sa.create_engine(plain, pool_size=1, max_overflow=0, connect_args=args, hide_parameters=True)
            sync_reader = sa.create_engine(
                plain, pool_size=pool_size, max_overflow=0, connect_args=args, hide_parameters=True
            )
            _sqlite_setup(sync_writer, immediate=True, busy_timeout_ms=busy_timeout_ms)
            _sqlite_setup(sync_reader, immediate=False, busy_timeout_ms=busy_timeout_ms)
            return cls(u, writer, reader, sync_writer, sync_reader)
        else:
            # Custom plans always: asyncpg prepares every statement, and after five runs PostgreSQL
            # may switch to a generic plan that cannot see the array in "event_id = ANY($2)" and
            # scans every event of the touch point instead (seen on tables not yet analyzed, as
            # every new database is); planning these small queries costs far less than that.
            pg_args: dict[str, Any] = {"server_settings": {"plan_cache_mode": "force_custom_plan"}}
            # parameters stay out of error messages: they are personal data
            writer = create_async_engine(
                u, pool_size=2, max_overflow=2, pool_pre_ping=True, hide_parameters=True, connect_args=pg_args
            )
            reader = create_async_engine(
                u, pool_size=pool_size, max_overflow=4, pool_pre_ping=True, hide_parameters=True, connect_args=pg_args
            )
        return cls(u, writer, reader)

    async def write(self, fn: Callable[[Connection], T], *, attempts: int = 6) -> T:
        """Run ``fn`` in one write transaction, retrying on lock contention.

        Raises :class:`StoreUnavailable` when the database is unreachable or stays locked;
        either way the transaction was rolled back and nothing was written.
        """
        try:
            try:
                return await self._write_once(fn)
            except Exception as exc:
                if not _retryable(exc) or attempts < 2:
                    raise
            await asyncio.sleep(random.uniform(0, 0.01))  # the first of the backoff's waits
            # contention: the first attempt lost a race; tenacity paces the rest. The first
            # attempt goes without it, since its bookkeeping costs more than a small transaction
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(_retryable),
                stop=stop_after_attempt(attempts - 1),
                wait=wait_random_exponential(multiplier=0.01, max=0.5),
                reraise=True,
            ):
                with attempt:
                    return await self._write_once(fn)
        except Exception as exc:
            if _retryable(exc) or _unavailable(exc):
                log.warning("store write failed", error=type(exc).__name__)
                raise StoreUnavailable(f"the database cannot take writes now ({type(exc).__name__})") from exc
            raise
        raise AssertionError("unreachable")  # pragma: no cover  # AsyncRetrying always returns or raises

    async def _write_once(self, fn: Callable[[Connection], T]) -> T:
        if self.sync_writer is not None:
            if self._writer_thread is None:
                self._writer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prm-writer")
            # as asyncio.to_thread does: the caller's context (structlog's bound request id) goes along
            run = functools.partial(contextvars.copy_context().run, self._in_writer_thread, fn)
            result, added = await asyncio.get_running_loop().run_in_executor(self._writer_thread, run)
        else:
            async with self.writer.begin() as conn:
                result, added = await conn.run_sync(self._with_changes, fn)
        if added and self.on_changes is not None:
            self.on_changes(added)
        return result

    def _with_changes(self, conn: Connection, fn: Callable[[Connection], T]) -> tuple[T, frozenset[str]]:
        """``fn`` then, as the transaction's last statement, the changes it emitted
        (:mod:`prm_core.feed.writing`): they commit with it or not at all. Returns ``fn``'s
        result and the changes' topics."""
        feed_writing.begin(conn, self.feed)
        try:
            result = fn(conn)
            return result, feed_writing.flush(conn)
        finally:
            feed_writing.discard(conn)

    def _in_writer_thread(self, fn: Callable[[Connection], T]) -> tuple[T, frozenset[str]]:
        """One write transaction on the writer connection (SQLite; in the writer thread only)."""
        assert self.sync_writer is not None
        conn = self._writer_conn
        if conn is None or conn.closed or conn.invalidated:
            conn = self._writer_conn = self.sync_writer.connect()
        try:
            with conn.begin():
                return self._with_changes(conn, fn)
        except BaseException:
            # after a failure the connection goes back to the pool, which resets it (or discards
            # it if broken); the next transaction checks out a clean one
            self._writer_conn = None
            conn.close()
            raise

    async def checkpoint(self) -> bool:
        """SQLite: copy the write-ahead log into the database file and truncate it, so no page
        image written before (an erased person's rows) stays in the log. Whether it completed
        (a reader in a long transaction can hold it back until a later checkpoint). PostgreSQL:
        nothing to do, ``True``."""
        if self.sync_writer is None:
            return True
        if self._writer_thread is None:
            self._writer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prm-writer")
        return await asyncio.get_running_loop().run_in_executor(self._writer_thread, self._checkpoint)

    def _checkpoint(self) -> bool:
        assert self.sync_writer is not None
        conn = self._writer_conn
        if conn is None or conn.closed or conn.invalidated:
            conn = self._writer_conn = self.sync_writer.connect()
        # on the driver's connection, outside any transaction (SQLAlchemy would begin one)
        raw: Any = conn.connection.driver_connection
        busy, _, _ = raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return not busy

    def _release_writer(self) -> None:
        if self._writer_conn is not None:
            self._writer_conn.close()
            self._writer_conn = None

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in a read transaction on a reader connection.

        On SQLite the transaction reads one snapshot; on PostgreSQL (READ COMMITTED) each
        statement sees what committed before it started, so a reader that compares what two
        statements saw must allow for commits between them."""
        try:
            if self.sync_reader is not None:
                return await asyncio.to_thread(_in_transaction, self.sync_reader, fn)
            async with self.reader.connect() as conn:
                async with conn.begin():
                    return await conn.run_sync(fn)
        except Exception as exc:
            if _unavailable(exc):
                raise StoreUnavailable(f"the database cannot be read now ({type(exc).__name__})") from exc
            raise

    async def migrate(self) -> list[str]:
        """Apply every pending migration; returns the revisions applied. Safe to race."""

        def upgrade(conn: Connection) -> list[str]:
            if self.dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            cfg = AlembicConfig()
            cfg.set_main_option("script_location", str(MIGRATIONS))
            cfg.attributes["connection"] = conn
            applied: list[str] = []
            cfg.attributes["on_revision"] = applied.append
            command.upgrade(cfg, "head")
            return applied

        async with self.writer.begin() as conn:
            return await conn.run_sync(upgrade)

    async def dispose(self) -> None:
        await self.writer.dispose()
        await self.reader.dispose()
        if self._writer_thread is not None:
            # the connection is the writer thread's: it goes back to the pool from there
            await asyncio.get_running_loop().run_in_executor(self._writer_thread, self._release_writer)
            self._writer_thread.shutdown(wait=True)
            self._writer_thread = None
        for engine in (self.sync_writer, self.sync_reader):
            if engine is not None:
                engine.dispose()


def _in_transaction(engine: sa.Engine, fn: Callable[[Connection], T]) -> T:
    with engine.begin() as conn:
        return fn(conn)


def _sqlite_setup(engine: sa.Engine, *, immediate: bool, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_conn: Any, record: Any) -> None:
        # take transaction control from the driver so BEGIN is ours to issue
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        # what a delete or an update frees is overwritten with zeros (Debian's build does so by
        # default, others do not): no old copy of an erased person's rows stays in free space
        cur.execute("PRAGMA secure_delete=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


async def close_listener(conn: Any, name: str) -> None:
    """Close a connection :meth:`Store.listen` opened (``None`` or closed already: nothing);
    a failure is logged as ``"<name> listener not closed"``, never raised."""
    if conn is None or conn.is_closed():
        return
    try:
        await conn.close(timeout=5)
    except Exception as exc:
        log.warning(f"{name} listener not closed", error=type(exc).__name__)
