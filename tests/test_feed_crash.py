"""Crash consistency of a destination: SIGKILL ``prm serve`` while it delivers the change feed
to a webhook receiver, start it again, and every change still arrives, none skipped, each
re-sent batch with the same ``webhook-id`` and the same changes.

The receiver is a real aiohttp server verifying every delivery with standardwebhooks; it
answers a little slowly, so kills land while batches are in flight.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import web
from hubprocs import cli, drive, free_port, processed, start_hub, wait_up
from sqlalchemy.ext.asyncio import create_async_engine
from standardwebhooks import Webhook

from prm_core.store.engine import async_url

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ROUNDS = 4


class Receiver:
    def __init__(self) -> None:
        self.batches: dict[str, list[list[str]]] = {}  # webhook-id -> the positions of each delivery
        self.arrivals: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        Webhook(SECRET).verify(body, dict(request.headers))
        changes = json.loads(body)["changes"]
        self.batches.setdefault(request.headers["webhook-id"], []).append([c["position"] for c in changes])
        self.arrivals.extend(changes)
        await asyncio.sleep(0.02)
        return web.Response(status=204)

    def positions(self) -> set[int]:
        return {int(c["position"]) for c in self.arrivals}


@pytest.fixture
def crash_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PRM_")}


async def feed_positions(database_url: str) -> set[int]:
    engine = create_async_engine(async_url(database_url))
    try:
        async with engine.connect() as conn:
            return set((await conn.execute(sa.text("SELECT position FROM changes"))).scalars())
    finally:
        await engine.dispose()


async def test_sigkill_while_delivering_skips_nothing_and_resends_the_same_batches(
    database_url: str, crash_env: dict[str, str], tmp_path: Path, aiohttp_server: Any
) -> None:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/changes", receiver.handle)
    server = await aiohttp_server(app)
    (tmp_path / "prm.toml").write_text(
        # the destination's crash behaviour, on the path it was written for (events recorded by
        # the server itself); tests/test_journal_crash.py kills a journaled hub and its processor
        "[ingest]\njournal = false\n\n[feed]\ndestination_lease_s = 1\n\n"
        f'[destinations.crm]\nkind = "webhook"\nurl = "{server.make_url("/changes")}"\nsecret = "{SECRET}"\n'
        "batch_size = 7\nretry_base_s = 0.05\n",
        encoding="utf-8",
    )
    key = cli("keys", "create", "--scope", "touchpoint:web", "--database", database_url, env=crash_env, cwd=tmp_path)
    port = free_port()
    acked: set[str] = set()
    rng = random.Random(20261205)
    stop = asyncio.Event()
    positions: dict[int, int] = {}  # port -> the latest journal position it answered
    driving = asyncio.ensure_future(drive([port], key, acked, stop, workers=2, positions=positions))
    proc = start_hub(database_url, port, crash_env, tmp_path)
    try:
        for _ in range(ROUNDS):
            await wait_up(port, proc)
            seen = len(receiver.arrivals)
            async with asyncio.timeout(120):  # killed while it delivers, not before it started
                while len(receiver.arrivals) < seen + 20:
                    assert not driving.done(), driving.exception()
                    await asyncio.sleep(0.02)
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc = start_hub(database_url, port, crash_env, tmp_path)
        await wait_up(port, proc)
        stop.set()
        await asyncio.wait_for(driving, timeout=300)
        # every acknowledged event recorded (journaled ones included), so every change is made
        await asyncio.wait_for(processed(port, max(positions.values(), default=0)), timeout=120)
        expected = await feed_positions(database_url)
        async with asyncio.timeout(120):
            while not expected <= receiver.positions():
                assert proc.poll() is None, "the hub exited"
                await asyncio.sleep(0.05)
    finally:
        driving.cancel()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()

    assert receiver.positions() == expected, "a change never reached the receiver"
    # a batch sent again carries the same id and the very same changes
    for webhook_id, deliveries in receiver.batches.items():
        assert all(d == deliveries[0] for d in deliveries), webhook_id
    ids_by_batch = {tuple(d[0]): webhook_id for webhook_id, ds in receiver.batches.items() for d in ds}
    assert len(ids_by_batch) == len(receiver.batches)
    # first arrivals follow the feed's order (so each customer's changes arrive in order)
    first: list[int] = []
    for change in receiver.arrivals:
        if int(change["position"]) not in first:
            first.append(int(change["position"]))
    assert first == sorted(first)
    assert len(expected) > 200, "too few changes to mean anything"
    resent = sum(len(ds) > 1 for ds in receiver.batches.values())
    print(f"{len(receiver.batches)} batches, {resent} sent again after a kill")
