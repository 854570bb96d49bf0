"""Several hub processes on one PostgreSQL: no home-made cluster, just the database.

Three ``prm serve`` processes share one database. Four clients each talk to one of them and
send identity-linking events about the same forty people at once (a person's anonymous
devices log in at one hub while their email arrives at another), so links and merges for one
person race across processes. At the end each person is one customer, no event is orphaned
or lost or stored twice, and the metrics count every event once. A process stopped in the
middle leaves nothing half-done for the others. A call offered at one process pops on the
screen of an agent connected to another (PostgreSQL LISTEN/NOTIFY).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from hubprocs import assert_consistent, cli, drive, free_port, processed, start_hub, wait_up

from prm_core.testing import POSTGRES_ENV, postgres_database

HUBS = 3


@pytest.fixture
def shared_postgres() -> Iterator[str]:
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set: several hubs share a PostgreSQL server")
    yield from postgres_database(base)


@pytest.mark.postgres
async def test_linking_events_for_the_same_people_at_three_hubs_converge(shared_postgres: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRM_")}
    key = cli("keys", "create", "--scope", "touchpoint:web", "--database", shared_postgres, env=env, cwd=tmp_path)
    ports = [free_port() for _ in range(HUBS)]
    procs = [start_hub(shared_postgres, port, env, tmp_path) for port in ports]
    acked: set[str] = set()
    positions: dict[int, int] = {}  # port -> the latest position it answered
    try:
        await asyncio.gather(*(wait_up(port, proc) for port, proc in zip(ports, procs, strict=True)))
        total = await asyncio.wait_for(
            drive(ports, key, acked, asyncio.Event(), workers=6, limit=150, positions=positions), 240
        )
        # one hub stops (SIGTERM, as an orchestrator scales in) while the others go on
        procs[0].send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(procs[0].wait, 30) == 0
        more = await asyncio.wait_for(
            drive(ports[1:], key, acked, asyncio.Event(), workers=4, limit=200, positions=positions), 240
        )
        # what was acknowledged is journaled; the check below reads what is recorded. Each hub
        # that goes on waits for the positions it answered itself (the stopped hub's all
        # precede the second round's).
        assert set(positions) == set(ports), "each hub answered some batches"
        for port in ports[1:]:
            await asyncio.wait_for(processed(port, positions[port]), 120)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    # the second run starts again at batch 0: the first 150 batches are replays, acknowledged as duplicates
    assert more >= total
    assert len(acked) == more
    await assert_consistent(shared_postgres, more)


@pytest.mark.postgres
async def test_a_call_offered_at_one_hub_pops_on_an_agent_connected_to_another(
    shared_postgres: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRM_")}
    key = cli(
        "keys", "create", "--scope", "touchpoint:callcenter", "--database", shared_postgres, env=env, cwd=tmp_path
    )
    ports = [free_port() for _ in range(2)]
    procs = [start_hub(shared_postgres, port, env, tmp_path) for port in ports]
    headers = {"Authorization": f"Bearer {key}"}
    offered = {
        "id": "pbx-1-offered",
        "type": "call.offered",
        "occurred_at": "2026-11-23T09:05:00Z",
        "data": {"call_id": "1", "ani": "+14155550100", "queue": "priority", "agent_id": "a-7"},
    }
    try:
        await asyncio.gather(*(wait_up(port, proc) for port, proc in zip(ports, procs, strict=True)))
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(
                f"http://127.0.0.1:{ports[1]}/v1/agents/a-7/screenpop", headers=headers
            ) as ws:
                hello = await ws.receive_json(timeout=10)
                assert hello["type"] == "hello"
                resp = await session.post(
                    f"http://127.0.0.1:{ports[0]}/v1/touchpoints/callcenter/events", json=offered, headers=headers
                )
                assert resp.status == 200, await resp.text()
                while True:
                    pop = await ws.receive_json(timeout=15)
                    if pop["type"] == "screen_pop":
                        break
                assert pop["call_id"] == "1"
                assert pop["queue"] == "priority"
                assert {"namespace": "phone", "value": "+14155550100"} in pop["customer"]["identities"]
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
