"""Crash consistency: SIGKILL the hub under sustained ingest, restart it, lose nothing.

A client drives batches of identity-linking events with fixed ids and retries each batch,
unchanged, until it is acknowledged, as a well-behaved tracker does. Meanwhile the hub
process is killed with SIGKILL at random moments and started again, ten times. At the end
every event is stored exactly once, every event's dialogue exists and belongs to the
event's customer, each person is one customer, and the metrics count every event once.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa

from prm_core.store.engine import async_url

PERSONS = 40
PER_BATCH = 10
ROUNDS = 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str, env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "prm_core.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def _event(n: int) -> dict[str, Any]:
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


@pytest.fixture
def crash_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRM_")}
    yield env


async def _drive(port: int, key: str, acked: set[str], stop: asyncio.Event) -> int:
    """Send batches until ``stop``, each until it is acknowledged; return how many events were sent.

    Connection errors and 503s mean the hub is down or recovering: the same batch is sent again.
    """
    url = f"http://127.0.0.1:{port}/v1/touchpoints/web/events"
    headers = {"Authorization": f"Bearer {key}"}
    timeout = aiohttp.ClientTimeout(total=10)
    next_batch = 0

    async def worker() -> None:
        nonlocal next_batch
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set():
                b, next_batch = next_batch, next_batch + 1
                batch = [_event(b * PER_BATCH + i) for i in range(PER_BATCH)]
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

    await asyncio.gather(*(worker() for _ in range(4)))
    return next_batch * PER_BATCH


def _start(database_url: str, port: int, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
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


async def _wait_up(port: int, proc: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            assert proc.poll() is None, "the hub exited on start"
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("the hub did not come up")


async def _check(database_url: str, total: int) -> None:
    """The invariants, read straight from the database after the last round."""
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(async_url(database_url))
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_assert_consistent, total)
    finally:
        await engine.dispose()


def _assert_consistent(conn: sa.Connection, total: int) -> None:
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


async def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    database_url: str, crash_env: dict[str, str], tmp_path: Path
) -> None:
    key = _cli("keys", "create", "--scope", "touchpoint:web", "--database", database_url, env=crash_env, cwd=tmp_path)
    port = _free_port()
    acked: set[str] = set()
    rng = random.Random(20261123)
    stop = asyncio.Event()
    driving = asyncio.ensure_future(_drive(port, key, acked, stop))
    proc = _start(database_url, port, crash_env, tmp_path)
    try:
        for _ in range(ROUNDS):
            await _wait_up(port, proc)
            await asyncio.sleep(rng.uniform(0.2, 1.2))
            assert not driving.done(), driving.exception()
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc = _start(database_url, port, crash_env, tmp_path)
        await _wait_up(port, proc)
        stop.set()
        total = await asyncio.wait_for(driving, timeout=300)
    finally:
        driving.cancel()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert len(acked) == total
    assert total > 20 * PERSONS, "too few events to mean anything"
    await _check(database_url, total)
