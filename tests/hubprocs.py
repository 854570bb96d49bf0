"""Hub processes for the tests that start ``prm serve`` for real: crashes, several hubs.

``linking_event(n)`` is event ``n`` of a stream about ``PERSONS`` people whose anonymous
devices log in now and then (so identities link and customers merge); ``drive`` sends such
events in batches until told to stop, each batch again until it is acknowledged;
``assert_consistent`` checks, straight in the database, what must hold after any of it.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa

from prm_core.store.engine import async_url

PERSONS = 40
PER_BATCH = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str, env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "prm_core.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def linking_event(n: int) -> dict[str, Any]:
    """Event ``n`` of person ``n % PERSONS``: a few anonymous devices that log in now and then."""
    person, visit = n % PERSONS, n // PERSONS
    identities = {"anonymous_id": f"device-{person}-{visit % 3}"}
    if visit % 4 == 0:
        identities["user_id"] = f"user-{person}"
    if visit % 7 == 1:
        identities["email"] = f"person{person}@example.com"
    revenue = {"revenue": "10.00"} if n % 5 == 0 else {}
    return {
        "id": f"ev-{n}",
        "type": "order.completed" if revenue else "page.viewed",
        "occurred_at": f"2026-11-23T10:{(n // 60) % 60:02d}:{n % 60:02d}Z",
        "identities": identities,
        "data": revenue,
    }


async def drive(
    ports: list[int], key: str, acked: set[str], stop: asyncio.Event, *, workers: int = 4, limit: int | None = None
) -> int:
    """Send batches until ``stop`` (or ``limit`` batches), each until it is acknowledged; return
    how many events were sent. Worker ``i`` sends to ``ports[i % len(ports)]``, so with several
    hubs the same people's identities arrive at different processes at once.

    Connection errors and 503s mean the hub is down or recovering: the same batch is sent again.
    """
    headers = {"Authorization": f"Bearer {key}"}
    timeout = aiohttp.ClientTimeout(total=10)
    next_batch = 0

    async def worker(port: int) -> None:
        nonlocal next_batch
        url = f"http://127.0.0.1:{port}/v1/touchpoints/web/events"
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set() and (limit is None or next_batch < limit):
                b, next_batch = next_batch, next_batch + 1
                batch = [linking_event(b * PER_BATCH + i) for i in range(PER_BATCH)]
                while True:
                    try:
                        async with session.post(url, json={"events": batch}, headers=headers) as resp:
                            if resp.status == 200:
                                acked.update(e["id"] for e in batch)
                                break
                            # 503 while the database recovers is expected; anything else is a bug
                            assert resp.status == 503, (resp.status, await resp.text())
                    except (TimeoutError, aiohttp.ClientError):
                        pass
                    await asyncio.sleep(0.05)

    await asyncio.gather(*(worker(ports[i % len(ports)]) for i in range(workers)))
    return next_batch * PER_BATCH


def start_hub(database_url: str, port: int, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prm_core.cli",
            "serve",
            "--port",
            str(port),
            "--database",
            database_url,
            "--log-level",
            "warning",
        ],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def wait_up(port: int, proc: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as session:
        # a minute: three hubs migrating and starting at once on a busy 2-core machine took over 15 s
        for _ in range(1200):
            assert proc.poll() is None, "the hub exited on start"
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("the hub did not come up within a minute")


async def assert_consistent(database_url: str, total: int) -> None:
    """The invariants, read straight from the database after the last round."""
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(async_url(database_url))
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_consistent, total)
    finally:
        await engine.dispose()


def _consistent(conn: sa.Connection, total: int) -> None:
    rows = conn.execute(sa.text("SELECT event_id, count(*) FROM events WHERE touchpoint = 'web' GROUP BY event_id"))
    counts = dict(rows.all())
    assert len(counts) == total, f"{total - len(counts)} acknowledged events are missing"
    assert set(counts.values()) == {1}, "an event is stored twice"

    live = dict(conn.execute(sa.text("SELECT id, merged_into FROM customers")).all())

    def follow(cid: str) -> str:
        seen = set()
        while live.get(cid) is not None:
            assert cid not in seen, "a merge cycle"
            seen.add(cid)
            cid = live[cid]
        return cid

    orphans = conn.execute(
        sa.text("SELECT count(*) FROM events e LEFT JOIN dialogues d ON d.id = e.dialogue_id WHERE d.id IS NULL")
    ).scalar_one()
    assert orphans == 0, "events whose dialogue does not exist"
    for ev_customer, dlg_customer in conn.execute(
        sa.text("SELECT e.customer_id, d.customer_id FROM events e JOIN dialogues d ON d.id = e.dialogue_id")
    ):
        assert follow(ev_customer) == follow(dlg_customer), "an event and its dialogue belong to different customers"
    for ev_customer in conn.execute(sa.text("SELECT DISTINCT customer_id FROM events")).scalars():
        assert live[ev_customer] is None, "an event points at a merged-away customer"

    per_person = {}
    for namespace, value, cid in conn.execute(sa.text("SELECT namespace, value, customer_id FROM identities")):
        if namespace == "user_id":
            per_person[value] = follow(cid)
    assert len(per_person) == PERSONS
    assert len(set(per_person.values())) == PERSONS, "two people share a customer"

    counted = conn.execute(
        sa.text(
            "SELECT coalesce(sum(m.event_count), 0) FROM customer_metrics m "
            "JOIN customers c ON c.id = m.customer_id WHERE c.merged_into IS NULL"
        )
    ).scalar_one()
    assert counted == total, f"metrics count {counted} events, the log holds {total}"
    revenue = conn.execute(
        sa.text(
            "SELECT coalesce(sum(m.lifetime_revenue), 0) FROM customer_metrics m "
            "JOIN customers c ON c.id = m.customer_id WHERE c.merged_into IS NULL"
        )
    ).scalar_one()
    assert float(revenue) == 10.0 * len([n for n in range(total) if n % 5 == 0])
