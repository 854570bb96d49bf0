"""Test databases: throw-away PostgreSQL databases and schema templates migrated once per run.

Migrating an empty database takes most of a hub's start in a test (most of a second per
test on PostgreSQL), and every test would migrate the same schema. :class:`Databases`
migrates one template per backend the first time a test asks for it, then each test gets
a copy: a file copy on SQLite, ``CREATE DATABASE ... TEMPLATE`` on PostgreSQL. The hub's
start then finds the schema at the newest revision and migrates nothing, as it does on a
database an earlier run migrated; what the hub does is unchanged.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Coroutine, Generator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa

from ..store import Store

__all__ = ["POSTGRES_ENV", "Databases", "postgres_database"]

POSTGRES_ENV = "PRM_TEST_POSTGRES_URL"
T = TypeVar("T")


def _dsn(base_url: str, database: str | None = None) -> str:
    u = sa.make_url(base_url).set(drivername="postgresql")
    if database is not None:
        u = u.set(database=database)
    return u.render_as_string(hide_password=False)


def _unreachable(exc: Exception) -> None:
    # set but unreachable: a failure, never a silent skip
    pytest.fail(f"{POSTGRES_ENV} is set but PostgreSQL is unreachable: {type(exc).__name__}: {exc}")


def _admin(base_url: str, sql: str) -> None:
    import asyncpg

    async def execute() -> None:
        conn = await asyncpg.connect(_dsn(base_url), timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(execute())


def postgres_database(base_url: str) -> Generator[str, None, None]:
    """Create a throw-away database on the server of ``base_url``; yield its URL; drop it."""
    name = f"prm_test_{uuid.uuid4().hex[:12]}"
    try:
        _admin(base_url, f'CREATE DATABASE "{name}"')
    except Exception as exc:
        _unreachable(exc)
    try:
        yield _dsn(base_url, name)
    finally:
        _admin(base_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# the schema of the current database, down to what a test could change: tables, columns,
# defaults, constraints, indexes, sequences, views, functions, triggers, types, extensions,
# the database's own settings, and the revision alembic recorded
_SCHEMA = """
WITH ns AS (
    SELECT oid, nspname FROM pg_namespace
    WHERE nspname <> 'information_schema' AND nspname NOT LIKE 'pg\\_%'
)
SELECT md5(string_agg(line, E'\\n' ORDER BY line)) FROM (
    SELECT 'schema ' || nspname FROM ns
    UNION ALL
    SELECT format('relation %s.%s %s', ns.nspname, c.relname, c.relkind)
    FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
    UNION ALL
    SELECT format('column %s.%s.%s %s %s %s', ns.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
                  a.attnotnull, pg_get_expr(d.adbin, d.adrelid))
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN ns ON ns.oid = c.relnamespace
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT format('constraint %s %s', conname, pg_get_constraintdef(k.oid))
    FROM pg_constraint k JOIN ns ON ns.oid = k.connamespace
    UNION ALL
    SELECT 'index ' || pg_get_indexdef(i.indexrelid)
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN ns ON ns.oid = c.relnamespace
    UNION ALL
    SELECT format('function %s.%s(%s)', ns.nspname, p.proname, pg_get_function_identity_arguments(p.oid))
    FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace
    UNION ALL
    SELECT format('trigger %s', tgname) FROM pg_trigger WHERE NOT tgisinternal
    UNION ALL
    SELECT format('type %s.%s', ns.nspname, t.typname) FROM pg_type t JOIN ns ON ns.oid = t.typnamespace
    UNION ALL
    SELECT format('extension %s %s', extname, extversion) FROM pg_extension
    UNION ALL
    SELECT format('setting %s', s.setconfig) FROM pg_db_role_setting s
    WHERE s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
    UNION ALL
    SELECT 'revision ' || version_num FROM public.alembic_version
) AS schema(line)
"""


async def _migrate(url: str) -> None:
    store = Store.open(url)
    try:
        await store.migrate()
    finally:
        await store.dispose()


class Databases:
    """The test run's databases: empty or migrated, SQLite files or PostgreSQL databases.

    A migrated PostgreSQL database goes back to a pool when its test ends, emptied: a
    ``DELETE`` of every table's rows and every sequence restarted take milliseconds, where
    dropping a database makes PostgreSQL checkpoint (writing out every dirty page of the
    server) and creating one writes a copy of the template. A test that changed the schema
    (its fingerprint differs from the template's) has its database dropped instead.

    PostgreSQL statements go through connections kept open for the run in a thread of its
    own (asyncpg connections belong to one event loop; each test runs a loop of its own).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._sqlite: Path | None = None
        self._servers: dict[str, _Server] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # ---- SQLite ---------------------------------------------------------------------------

    def sqlite_copy(self, path: Path) -> str:
        """Copy the migrated SQLite template to ``path``; its URL."""
        if self._sqlite is None:
            template = self.directory / "template.db"
            asyncio.run(_migrate(f"sqlite:///{template}"))
            # one self-contained file: the write-ahead log checkpointed into it and removed (the
            # hub's connections switch the copy back to WAL, as they do a new file)
            conn = sqlite3.connect(template)
            try:
                conn.execute("PRAGMA journal_mode=DELETE")
            finally:
                conn.close()
            self._sqlite = template
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._sqlite, path)
        return f"sqlite:///{path}"

    # ---- PostgreSQL ----------------------------------------------------------------------

    def postgres(self, base_url: str, *, migrated: bool) -> Generator[str, None, None]:
        """A database of its own on the server of ``base_url``, empty or migrated, for one test."""
        server = self._servers.get(base_url)
        if server is None:
            server = self._servers[base_url] = _Server(base_url)
        try:
            if migrated:
                if server.template is None:
                    self._run(server.make_template())
                name = server.free.pop() if server.free else self._run(server.create(copy=True))
            else:
                name = self._run(server.create(copy=False))
        except Exception as exc:
            _unreachable(exc)
        try:
            yield _dsn(base_url, name)
        finally:
            if migrated and self._run(server.empty(name)):
                server.free.append(name)
            else:
                self._run(server.drop(name))

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="prm-test-databases", daemon=True)
            self._thread.start()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        """Drop the pooled databases and the templates; close the connections."""
        try:
            for server in self._servers.values():
                self._run(server.close())
        finally:
            self._servers.clear()
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
                assert self._thread is not None
                self._thread.join()
                self._loop.close()
                self._loop = None
            if self._sqlite is not None:
                self._sqlite.unlink(missing_ok=True)
                self._sqlite = None


class _Server:
    """One PostgreSQL server's template, pool of emptied databases and admin connection."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.template: str | None = None
        self.free: list[str] = []
        self._schema = ""  # the template's fingerprint (_SCHEMA)
        self._emptying = ""  # the statements that empty a copy of the template
        self._seeded: list[tuple[str, str, list[tuple[Any, ...]]]] = []  # (schema, table, rows)
        self._admin: Any = None

    async def _execute(self, sql: str, *args: Any) -> None:
        import asyncpg

        if self._admin is None or self._admin.is_closed():
            self._admin = await asyncpg.connect(_dsn(self.base_url), timeout=10)
        await self._admin.execute(sql, *args)

    async def make_template(self) -> None:
        import asyncpg

        name = f"prm_template_{uuid.uuid4().hex[:12]}"
        await self._execute(f'CREATE DATABASE "{name}"')
        self.template = name
        await _migrate(_dsn(self.base_url, name))
        conn = await asyncpg.connect(_dsn(self.base_url, name), timeout=10)
        try:
            self._schema = await conn.fetchval(_SCHEMA)
            tables = await conn.fetch(
                "SELECT schemaname, tablename FROM pg_tables"
                " WHERE schemaname = 'public' AND tablename <> 'alembic_version' ORDER BY 1, 2"
            )
            # the rows migrations wrote (a database's own secrets): each emptied copy gets them back
            for schema, table in tables:
                rows = await conn.fetch(f'SELECT * FROM "{schema}"."{table}"')
                if rows:
                    self._seeded.append((schema, table, [tuple(r) for r in rows]))
            sequences = await conn.fetch(
                "SELECT format('%I.%I', schemaname, sequencename), coalesce(last_value, start_value), last_value"
                " IS NOT NULL FROM pg_sequences WHERE schemaname = 'public'"
            )
        finally:
            await conn.close()
        # foreign keys are not checked (replica role): the tables empty in any order
        self._emptying = "; ".join(
            [
                "SET LOCAL session_replication_role = replica",
                *(f'DELETE FROM "{schema}"."{table}"' for schema, table in tables),
                *(f"SELECT setval('{seq}', {value}, {called})" for seq, value, called in sequences),
            ]
        )
        # nobody connects to it again: a connection would make every copy fail
        await self._execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')

    async def create(self, *, copy: bool) -> str:
        name = f"prm_test_{uuid.uuid4().hex[:12]}"
        await self._execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{self.template}"' if copy else ""))
        return name

    async def empty(self, name: str) -> bool:
        """Empty a copy of the template for the next test; false if its schema changed."""
        import asyncpg

        # what the test left connected (a hub process it killed, say) goes first
        await self._execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        conn = await asyncpg.connect(_dsn(self.base_url, name), timeout=10)
        try:
            try:
                same = await conn.fetchval(_SCHEMA) == self._schema
            except asyncpg.PostgresError:  # alembic's table is gone, say
                same = False
            if same:
                async with conn.transaction():
                    await conn.execute(self._emptying)
                    for schema, table, rows in self._seeded:
                        await conn.copy_records_to_table(table, records=rows, schema_name=schema)
            return same
        finally:
            await conn.close()

    async def drop(self, name: str) -> None:
        await self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def close(self) -> None:
        try:
            for name in [*self.free, *([self.template] if self.template else [])]:
                await self.drop(name)
        finally:
            self.free.clear()
            self.template = None
            if self._admin is not None:
                await self._admin.close()
                self._admin = None
