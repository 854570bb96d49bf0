"""Crash consistency with the journal on: SIGKILL the hub while it journals and processes.

As in ``test_crash.py``, a client drives identity-linking events with fixed ids and retries
each batch until it is acknowledged; the hub runs with ``[ingest] journal = true``, so an
acknowledgement means journaled, and the processor records behind it. The hub is killed at
random moments (while appending, while processing, between the two) and started again; with
``prm serve --processors N`` the processor processes are killed too, alone or with the server
(two processors sharing the journal on PostgreSQL). At the end, once the journal is
processed: every acknowledged event is recorded exactly once, the metrics count each once, and
the journal is empty.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
from pathlib import Path

import aiohttp
import pytest
from hubprocs import PERSONS, assert_consistent, cli, drive, free_port, launch, wait_up

ROUNDS = 8
MIN_PER_ROUND = 3 * PERSONS


@pytest.fixture
def crash_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PRM_")}


async def until_acked(acked: set[str], at_least: int, driving: asyncio.Future[int]) -> None:
    try:
        async with asyncio.timeout(120):
            while len(acked) < at_least:
                assert not driving.done(), driving.exception()
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"the hub made no progress: {len(acked)} of {at_least} events acknowledged") from None


async def journal_drained(port: int) -> dict[str, object]:
    """``/healthz``'s journal once its depth is 0 (two minutes at most)."""
    async with aiohttp.ClientSession() as session:
        async with asyncio.timeout(120):
            while True:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    journal: dict[str, object] = (await resp.json())["journal"]
                if journal["depth"] == 0:
                    return journal
                await asyncio.sleep(0.05)


def start_hub(database_url: str, port: int, env: dict[str, str], cwd: Path, processors: int):
    args = ["serve", "--port", str(port), "--database", database_url, "--log-level", "warning"]
    return launch([*args, "--processors", str(processors)], env=env, cwd=cwd)


def children(pid: int) -> list[int]:
    """The processes ``pid``'s threads started (Linux), i.e. its journal processors."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


async def processor_of(pid: int) -> int:
    for _ in range(1200):  # a minute: the server starts it once migrated
        found = children(pid)
        if found:
            return found[0]
        await asyncio.sleep(0.05)
    raise AssertionError("the server started no journal processor")


@pytest.mark.parametrize("processors", [0, 1, 2], ids=["in-the-server", "processor-process", "two-processors"])
async def test_sigkill_with_the_journal_loses_and_duplicates_nothing(
    database_url: str, crash_env: dict[str, str], tmp_path: Path, processors: int
) -> None:
    if processors > 1 and database_url.startswith("sqlite"):
        pytest.skip("SQLite takes one journal processor")
    (tmp_path / "prm.toml").write_text("[ingest]\njournal = true\n")  # read from the hub's working directory
    key = cli("keys", "create", "--scope", "touchpoint:web", "--database", database_url, env=crash_env, cwd=tmp_path)
    port = free_port()
    acked: set[str] = set()
    rng = random.Random(20261205)
    stop = asyncio.Event()
    driving = asyncio.ensure_future(drive([port], key, acked, stop))
    proc = start_hub(database_url, port, crash_env, tmp_path, processors)
    kills = {"server": 0, "processor": 0}
    try:
        for round_ in range(ROUNDS):
            await wait_up(port, proc)
            await until_acked(acked, len(acked) + MIN_PER_ROUND, driving)
            await asyncio.sleep(rng.uniform(0.0, 0.6))
            assert not driving.done(), driving.exception()
            if processors and round_ % 2:
                # the processor alone (the server starts another); the server keeps acknowledging
                os.kill(await processor_of(proc.pid), signal.SIGKILL)
                kills["processor"] += 1
                continue
            # the server (and with it its processor, which dies with its parent)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills["server"] += 1
            proc = start_hub(database_url, port, crash_env, tmp_path, processors)
        await wait_up(port, proc)
        stop.set()
        total = await asyncio.wait_for(driving, timeout=300)
        journal = await journal_drained(port)
    finally:
        driving.cancel()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert len(acked) == total
    assert total > 20 * PERSONS, "too few events to mean anything"
    assert journal["head"] == journal["processed"]
    assert kills["server"] > 0 and (kills["processor"] > 0 or not processors)
    await assert_consistent(database_url, total)
