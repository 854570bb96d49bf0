"""Storage faults and overload: 503 with Retry-After, nothing half-written, recovery by itself.

The database is made locked (another process holds SQLite's write lock), full (SQLite's page
limit reached) or gone (PostgreSQL behind a TCP proxy that is cut), and the writer's queue is
made to overflow. Each time the hub answers 503 with ``Retry-After`` and a JSON error, writes
nothing of the refused request, and takes the same request again once the fault is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from positions import counts, recorded

from prm_core.config import Config
from prm_core.server.app import create_app
from prm_core.server.state import HUB
from prm_core.testing import POSTGRES_ENV, postgres_database


def _events(prefix: str, n: int = 3) -> dict[str, Any]:
    return {
        "events": [
            {
                "id": f"{prefix}-{i}",
                "type": "page.viewed",
                "occurred_at": "2026-11-23T10:00:00Z",
                "identities": {"anonymous_id": f"{prefix}-device"},
            }
            for i in range(n)
        ]
    }


async def _stored(client: Any, prefix: str) -> int:
    store = client.app[HUB].store

    def count(conn: sa.Connection) -> int:
        return int(
            conn.execute(
                sa.text("SELECT count(*) FROM events WHERE event_id LIKE :p"), {"p": f"{prefix}-%"}
            ).scalar_one()
        )

    return await store.read(count)


async def _assert_unavailable(resp: Any) -> None:
    assert resp.status == 503, await resp.text()
    assert resp.headers["Retry-After"] == "1"
    body = await resp.json()
    assert body["error"]["code"] == "unavailable"
    assert "nothing was written" in body["error"]["message"]


@pytest.fixture
def sqlite_config(tmp_path: Any) -> Config:
    # a short busy timeout keeps the locked case quick; the default is 5 s. The journal off:
    # these tests are of the direct path, where the events route writes the database itself
    return Config(
        database_url=f"sqlite:///{tmp_path}/prm.db",
        public_url="http://hub.test",
        raw={"database": {"busy_timeout_ms": 300}, "ingest": {"journal": False}},
    )


async def _client(config: Config, aiohttp_client: Any) -> tuple[Any, str]:
    from prm_core.keys import create_key

    client = await aiohttp_client(create_app(config))
    key, _ = await create_key(client.app[HUB].store, "touchpoint:web")
    return client, key


async def test_sqlite_locked_by_another_process(sqlite_config: Config, aiohttp_client: Any, tmp_path: Any) -> None:
    client, key = await _client(sqlite_config, aiohttp_client)
    auth = {"Authorization": f"Bearer {key}"}
    other = sqlite3.connect(f"{tmp_path}/prm.db", isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # what a second writer (prm import, another hub) holds
        resp = await client.post("/v1/touchpoints/web/events", json=_events("locked"), headers=auth)
        await _assert_unavailable(resp)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert await _stored(client, "locked") == 0
    resp = await client.post("/v1/touchpoints/web/events", json=_events("locked"), headers=auth)
    assert resp.status == 200
    assert await resp.json() == {"accepted": 3, "duplicates": 0}


async def test_sqlite_full(sqlite_config: Config, aiohttp_client: Any) -> None:
    client, key = await _client(sqlite_config, aiohttp_client)
    auth = {"Authorization": f"Bearer {key}"}
    store = client.app[HUB].store
    assert store.sync_writer is not None

    async def limit(pages: int | None) -> None:
        # max_page_count is per connection: set it on the writer's own (there is one)
        def set_limit(conn: Any) -> None:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            current = raw.execute("PRAGMA page_count").fetchone()[0]
            raw.execute(f"PRAGMA max_page_count={pages or current}")

        await store.write(set_limit)

    await limit(None)  # the disk is full: not one more page
    try:
        resp = await client.post("/v1/touchpoints/web/events", json=_events("full", 200), headers=auth)
        await _assert_unavailable(resp)
    finally:
        await limit(1_073_741_823)
    assert await _stored(client, "full") == 0
    resp = await client.post("/v1/touchpoints/web/events", json=_events("full", 200), headers=auth)
    assert resp.status == 200
    assert await _stored(client, "full") == 200


class _Proxy:
    """A TCP proxy in front of PostgreSQL that a test can cut (the database is gone) and restore."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.server: asyncio.Server | None = None
        self.port = 0
        self.pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for pipe in list(self.pipes):
            pipe.cancel()
        await asyncio.gather(*self.pipes, return_exceptions=True)
        await self.server.wait_closed()
        self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            finally:
                dst.close()

        tasks = {asyncio.ensure_future(pump(reader, up_writer)), asyncio.ensure_future(pump(up_reader, writer))}
        self.pipes |= tasks
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.gather(*tasks)
        self.pipes -= tasks


@pytest.fixture
def postgres_url() -> Iterator[str]:
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set: PostgreSQL tests need a server")
    yield from postgres_database(base)


@pytest.fixture
async def proxied_postgres(postgres_url: str) -> AsyncIterator[tuple[_Proxy, str]]:
    url = sa.make_url(postgres_url)
    proxy = _Proxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    try:
        yield proxy, url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    finally:
        if proxy.server is not None:
            await proxy.cut()


@pytest.mark.postgres
async def test_postgres_gone_then_back(proxied_postgres: tuple[_Proxy, str], aiohttp_client: Any) -> None:
    proxy, url = proxied_postgres
    client, key = await _client(Config(database_url=url, public_url="http://hub.test"), aiohttp_client)
    auth = {"Authorization": f"Bearer {key}"}
    resp = await client.post("/v1/touchpoints/web/events", json=_events("before"), headers=auth)
    assert resp.status == 200

    await proxy.cut()
    resp = await client.post("/v1/touchpoints/web/events", json=_events("gone"), headers=auth)
    await _assert_unavailable(resp)
    health = await client.get("/healthz")
    assert health.status == 503

    await proxy.start()  # the same address: the database is back
    for _ in range(50):  # the pool notices the new server on its own
        resp = await client.post("/v1/touchpoints/web/events", json=_events("gone"), headers=auth)
        if resp.status == 200:
            break
        await _assert_unavailable(resp)
        await asyncio.sleep(0.1)
    assert resp.status == 200
    assert counts(await resp.json()) == {"accepted": 3, "duplicates": 0}
    assert (await client.get("/healthz")).status == 200
    await recorded(client.app[HUB], await resp.json())  # and recorded, once the processor is past them
    assert await _stored(client, "gone") == 3


async def test_a_full_queue_answers_503_before_memory_grows(hub_config: Config, aiohttp_client: Any) -> None:
    config = Config(
        database_url=hub_config.database_url,
        public_url="http://hub.test",
        # the journal off: the bound under test is the direct path's writer queue
        raw={"server": {"max_pending_events": 5}, "ingest": {"journal": False}},
    )
    client, key = await _client(config, aiohttp_client)
    auth = {"Authorization": f"Bearer {key}"}
    resp = await client.post("/v1/touchpoints/web/events", json=_events("flood", 6), headers=auth)
    await _assert_unavailable(resp)
    assert await _stored(client, "flood") == 0
    resp = await client.post("/v1/touchpoints/web/events", json=_events("flood", 5), headers=auth)
    assert resp.status == 200
