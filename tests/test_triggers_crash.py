"""Crash consistency of the trigger engine: SIGKILL ``prm serve`` while triggers fire, start it
again, and every change that qualifies fires each trigger exactly once.

Two triggers answer each ``order.completed`` event: one sends a message through a touch point
plugin (loaded by ``prm serve`` from a distribution made for the test) that writes each
message id it is handed (and the hub process's id) to a file before it answers ``sent``; one
queues an offer. Sending is at least once: a kill between the plugin's answer and the record of
the ``message.sent`` event hands the same message id over again after the restart, which is why
the hook documents ``message.id`` as the key to de-duplicate by; a message whose event is
recorded is never handed over again, and no hub process hands one over twice. So: every
qualifying change's message id arrives at least once, the set of ids is exactly the qualifying
changes' (none for another change), and what the hub records (the run, the ``message.sent``
event and change, the offer) is there exactly once.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hubprocs import cli, drive, free_port, start_hub, wait_up
from sqlalchemy.ext.asyncio import create_async_engine

from prm_core.store.engine import async_url
from prm_core.triggers.engine import OUTBOUND_PREFIX
from prm_core.triggers.runs import act_key, run_key

ROUNDS = 4

PLUGIN = """
import asyncio
import os

from prm_core.plugin import MessageResult, TouchPoint, hookimpl

SENT = {sent!r}


@hookimpl
def prm_touchpoints(config):
    return [TouchPoint(name="crash-mail", channel="email", budget_ms=1000)]


@hookimpl
async def prm_send_message(message):
    if message.channel != "email":
        return None
    await asyncio.sleep(0.005)  # a provider's round trip: kills land between the send and the record
    with open(SENT, "a", encoding="utf-8") as out:
        out.write(f"{{os.getpid()}} {{message.id}}\\n")  # handed to the OS: a SIGKILL of the hub does not lose it
    return MessageResult("sent", ref=message.id)
"""

CONFIG = """
[feed]
destination_lease_s = 1  # the triggers' leases too: a killed hub's runs are claimed again soon

[triggers]
quiet_hours = "none"
max_event_age = "30d"
poll_s = 0.2

[triggers.receipt]
on = "event.recorded"
when = "change['type'] == 'order.completed'"
purpose = "transactional"
action = { kind = "message", channel = "email", template = "Thank you" }

[triggers.coupon]
on = "event.recorded"
when = "change['type'] == 'order.completed'"
purpose = "transactional"
action = { kind = "offer", code = "next-order", title = "Next order", touchpoint = "web" }
"""


def plugin_distribution(root: Path, sent: Path) -> None:
    """A module and its ``.dist-info`` under ``root``: ``prm serve`` loads it by entry point."""
    (root / "crash_mail.py").write_text(PLUGIN.format(sent=str(sent)), encoding="utf-8")
    info = root / "crash_mail-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: crash-mail\nVersion: 1.0\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("[prm]\ncrash-mail = crash_mail\n", encoding="utf-8")


@pytest.fixture
def crash_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRM_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path / "dist"), env.get("PYTHONPATH", "")) if p)
    return env


def handed(sent: Path) -> list[tuple[int, str]]:
    """``(hub process id, message id)`` for each hand-over of a message to the sender."""
    if not sent.exists():
        return []
    pairs = (line.split(" ", 1) for line in sent.read_text(encoding="utf-8").splitlines() if line)
    return [(int(pid), message_id) for pid, message_id in pairs]


async def recorded_messages(database_url: str) -> set[str]:
    """The ids of the messages whose ``message.sent`` event is recorded."""
    engine = create_async_engine(async_url(database_url))
    try:
        async with engine.connect() as conn:
            query = "SELECT event_id FROM events WHERE type = 'message.sent' AND direction = 'outbound'"
            ids = (await conn.execute(sa.text(query))).scalars()
            return {"act_" + event_id.removeprefix(OUTBOUND_PREFIX) for event_id in ids}
    finally:
        await engine.dispose()


def _data(raw: Any) -> dict[str, Any]:
    """A JSON column as the driver hands it (text on SQLite, decoded on PostgreSQL)."""
    return dict(json.loads(raw) if isinstance(raw, str) else raw)


async def read_state(database_url: str) -> dict[str, Any]:
    """What the hub recorded, straight from the database, while it may still be firing runs.

    The runs are read first: what a fired run implies (its event, its change, its offer)
    committed no later than the run, so the later reads see it. Read the other way round,
    each statement seeing what is committed when it starts, a run fired between the two
    reads shows as fired without its change. On PostgreSQL the reads share one snapshot too.
    """
    engine = create_async_engine(async_url(database_url))
    try:
        async with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execution_options(isolation_level="REPEATABLE READ")

            async def rows(query: str) -> list[Any]:
                return list((await conn.execute(sa.text(query))).all())

            runs = await rows("SELECT key, trigger, position, status FROM trigger_runs")
            changes = [(int(p), t, _data(d)) for p, t, d in await rows("SELECT position, type, data FROM changes")]
            outbound = await rows("SELECT type FROM events WHERE direction = 'outbound'")
            return {
                "orders": {p for p, t, d in changes if t == "event.recorded" and d.get("type") == "order.completed"},
                "sent_changes": Counter(d["message_id"] for _p, t, d in changes if t == "message.sent"),
                "runs": {r.key: (r.trigger, int(r.position), r.status) for r in runs},
                "offers": [r.key for r in await rows("SELECT key FROM trigger_offers")],
                "outbound": Counter(r.type for r in outbound),
            }
    finally:
        await engine.dispose()


async def test_sigkill_while_triggers_fire_loses_no_run_and_records_each_once(
    database_url: str, crash_env: dict[str, str], tmp_path: Path
) -> None:
    sent = tmp_path / "sent.txt"
    (tmp_path / "dist").mkdir()
    plugin_distribution(tmp_path / "dist", sent)
    (tmp_path / "prm.toml").write_text(CONFIG, encoding="utf-8")
    key = cli("keys", "create", "--scope", "touchpoint:web", "--database", database_url, env=crash_env, cwd=tmp_path)
    port = free_port()
    acked: set[str] = set()
    rng = random.Random(20261205)
    stop = asyncio.Event()
    driving = asyncio.ensure_future(drive([port], key, acked, stop, workers=2))
    proc = start_hub(database_url, port, crash_env, tmp_path)
    # hub process -> the messages whose sending was recorded before it started
    recorded_before: dict[int, set[str]] = {proc.pid: set()}
    try:
        for _ in range(ROUNDS):
            await wait_up(port, proc)
            seen = len(handed(sent))
            async with asyncio.timeout(120):  # killed while it sends, not before it started
                while len(handed(sent)) < seen + 10:
                    assert not driving.done(), driving.exception()
                    assert proc.poll() is None, "the hub exited"
                    await asyncio.sleep(0.02)
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            before = await recorded_messages(database_url)
            proc = start_hub(database_url, port, crash_env, tmp_path)
            recorded_before[proc.pid] = before
        await wait_up(port, proc)
        stop.set()
        await asyncio.wait_for(driving, timeout=300)
        async with asyncio.timeout(120):
            while True:
                state = await read_state(database_url)
                if len(state["runs"]) == 2 * len(state["orders"]) and all(
                    status != "scheduled" for _t, _p, status in state["runs"].values()
                ):
                    break
                assert proc.poll() is None, "the hub exited"
                await asyncio.sleep(0.2)
    finally:
        driving.cancel()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()

    orders = state["orders"]
    assert len(orders) >= 30, "too few orders to mean anything"
    # one run per trigger and qualifying change, and no other; every one fired
    expected_runs = {run_key(t, p): (t, p) for t in ("receipt", "coupon") for p in orders}
    assert {k: (t, p) for k, (t, p, _s) in state["runs"].items()} == expected_runs
    assert Counter(s for _t, _p, s in state["runs"].values()) == Counter({"fired": 2 * len(orders)})
    # each message id handed over at least once; the de-duplicated set is exactly the orders'
    messages = {act_key(run_key("receipt", p), 0) for p in orders}
    hand_overs = handed(sent)
    got = Counter(message_id for _pid, message_id in hand_overs)
    assert set(got) == messages
    # again only after a kill: never twice by one hub process, and never once its sending was
    # recorded (a kill between the sender's answer and the record is what hands one over again)
    assert [pair for pair, n in Counter(hand_overs).items() if n > 1] == []
    assert [(pid, m) for pid, m in hand_overs if m in recorded_before[pid]] == []
    # what the hub records of a message or an offer is there once, whatever the sends
    assert state["sent_changes"] == Counter(dict.fromkeys(messages, 1))
    assert sorted(state["offers"]) == sorted(act_key(run_key("coupon", p), 0) for p in orders)
    assert state["outbound"] == Counter({"message.sent": len(orders), "offer.queued": len(orders)})
    again = sum(n > 1 for n in got.values())
    print(f"{len(orders)} orders, {again} message ids handed over again after a kill")
