"""Crash consistency: SIGKILL the hub under sustained ingest, restart it, lose nothing.

This is the direct path, events recorded before their 2xx (``[ingest] journal = false``);
``tests/test_journal_crash.py`` kills a journaled hub and its processor.

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
import subprocess
from pathlib import Path

import pytest
from hubprocs import PERSONS, assert_consistent, cli, drive, free_port, start_hub, wait_up

ROUNDS = 10
# acknowledged events each round must reach before the kill can come: the floor of the final
# check below, whatever the machine's speed (a fixed time alive acked 470 events on a slow day)
MIN_PER_ROUND = 3 * PERSONS


@pytest.fixture
def crash_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PRM_")}


async def until_acked(acked: set[str], at_least: int, driving: asyncio.Future[int]) -> None:
    """Wait (two minutes at most) until ``at_least`` events are acknowledged."""
    try:
        async with asyncio.timeout(120):
            while len(acked) < at_least:
                assert not driving.done(), driving.exception()
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"the hub made no progress: {len(acked)} of {at_least} events acknowledged") from None


async def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    database_url: str, crash_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "prm.toml").write_text("[ingest]\njournal = false\n")  # read from the hub's working directory
    key = cli("keys", "create", "--scope", "touchpoint:web", "--database", database_url, env=crash_env, cwd=tmp_path)
    port = free_port()
    acked: set[str] = set()
    rng = random.Random(20261123)
    stop = asyncio.Event()
    driving = asyncio.ensure_future(drive([port], key, acked, stop))
    proc = start_hub(database_url, port, crash_env, tmp_path)
    try:
        for _ in range(ROUNDS):
            await wait_up(port, proc)
            await until_acked(acked, len(acked) + MIN_PER_ROUND, driving)
            await asyncio.sleep(rng.uniform(0.0, 1.0))
            assert not driving.done(), driving.exception()
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc = start_hub(database_url, port, crash_env, tmp_path)
        await wait_up(port, proc)
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
    await assert_consistent(database_url, total)
