#!/usr/bin/env python
"""Screen-pop latency: from ``call.offered`` accepted (HTTP 200) to the pop on the agent's socket.

What runs, each server in its own process:

- **the hub**: ``prm serve`` on a fresh SQLite database (logging at ``--log-level``, default
  ``warning``, to ``hub.log``), with every installed plugin; keys made with ``prm keys create``;
- **the baseline**: a bare aiohttp app doing the same round trip with nothing in between:
  ``POST /offer`` answers 200 and pushes a small JSON message to the agent's WebSocket;
- **the client** (this process): ``--agents`` (50) WebSockets, one per agent, Bearer key.

Before the calls, ``--callers`` (1,000) callers get a history through the hub's API: an IVR
call of four events (started, menu, input, transferred) and a web visit of two events, so each
pop carries a real 360 view with recent contacts. Then ``--calls`` (1,000) ``call.offered``
events are posted, one per request, ``--concurrency`` (8) in flight, each offered to agent
``n % agents`` for a caller drawn from the pool. Per call, the latency is the time from the
200 answer to the pop with that ``call_id`` on the agent's socket, on this process's
monotonic clock (negative when the pop overtook the HTTP answer). The same sequence runs
against the baseline first.

Printed: p50/p90/p99/max for the baseline and the hub, the hub's p99 as a multiple of the
baseline's, pops lost (never arrived within ``--timeout``), and the target (hub p99 <= 100 ms).
Timing is never asserted. ``python bench/screenpop.py`` (about a minute); ``--quick`` for 200
calls and 200 callers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

PRM = [sys.executable, "-c", "from prm_core.cli import main; main()"]

BARE_SERVER = r"""
import asyncio, json, sys
from aiohttp import web

agents = {}

async def push(agent, text):
    for ws in list(agents.get(agent, ())):
        await ws.send_str(text)

async def offer(request):
    body = await request.json()
    text = json.dumps({"type": "screen_pop", "call_id": body["call_id"]})
    # as the hub does: answer first, push after (the hub pushes once the event is durable)
    asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(push(body["agent_id"], text)))
    return web.json_response({"accepted": 1, "duplicates": 0})

async def socket(request):
    ws = web.WebSocketResponse(heartbeat=20)
    await ws.prepare(request)
    agent = request.match_info["agent"]
    agents.setdefault(agent, set()).add(ws)
    await ws.send_str(json.dumps({"type": "hello"}))
    async for _ in ws:
        pass
    agents[agent].discard(ws)
    return ws

app = web.Application()
app.router.add_post("/offer", offer)
app.router.add_get("/v1/agents/{agent}/screenpop", socket)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_up(url: str, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as resp:
                    if resp.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not come up in {within_s}s")
            await asyncio.sleep(0.1)


def make_key(database: str, scope: str) -> str:
    out = subprocess.run([*PRM, "keys", "create", "--scope", scope, "--database", database], check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    return out.strip().splitlines()[-1]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


class Agents:
    """One WebSocket per agent; futures keyed by call id resolve when its pop arrives."""

    def __init__(self) -> None:
        self.waiting: dict[str, asyncio.Future[float]] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []

    async def connect(self, session: aiohttp.ClientSession, base: str, agents: int, headers: dict[str, str]) -> None:
        for n in range(agents):
            ws = await session.ws_connect(f"{base}/v1/agents/agent-{n}/screenpop", headers=headers, heartbeat=None)
            hello = await ws.receive_json(timeout=10)
            assert hello["type"] == "hello", hello
            self.sockets.append(ws)
            self.tasks.append(asyncio.create_task(self._read(ws)))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            at = time.monotonic()
            if '"screen_pop"' not in msg.data:
                continue
            call_id = json.loads(msg.data)["call_id"]
            future = self.waiting.get(call_id)
            if future is not None and not future.done():
                future.set_result(at)

    def expect(self, call_id: str) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiting[call_id] = future
        return future

    async def close(self) -> None:
        for ws in self.sockets:
            await ws.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def run_calls(
    session: aiohttp.ClientSession,
    agents: Agents,
    post: Any,
    calls: list[tuple[str, int, str]],
    concurrency: int,
    wait_s: float,
) -> tuple[list[float], list[float], int]:
    """Post the calls: latencies in ms from the 200 to the pop and from sending the POST to the
    pop, and how many pops never came."""
    latencies: list[float] = []
    round_trips: list[float] = []
    lost = 0
    queue: asyncio.Queue[tuple[str, int, str]] = asyncio.Queue()
    for call in calls:
        queue.put_nowait(call)

    async def worker() -> None:
        nonlocal lost
        while not queue.empty():
            call_id, agent, caller = queue.get_nowait()
            arrived = agents.expect(call_id)
            sent = time.monotonic()
            async with post(session, call_id, agent, caller) as resp:
                body = await resp.read()
                accepted = time.monotonic()
                if resp.status != 200:
                    raise SystemExit(f"call {call_id}: HTTP {resp.status} {body[:200]!r}")
            try:
                at = await asyncio.wait_for(arrived, wait_s)
            except TimeoutError:
                lost += 1
                continue
            latencies.append((at - accepted) * 1000)
            round_trips.append((at - sent) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, round_trips, lost


def summary(name: str, values: list[float]) -> str:
    if not values:
        return f"{name:22} no pops arrived"
    return (
        f"{name:22} n={len(values):5}  p50={statistics.median(values):7.2f} ms  p90={pct(values, 90):7.2f} ms  "
        f"p99={pct(values, 99):7.2f} ms  max={max(values):7.2f} ms"
    )


async def seed(session: aiohttp.ClientSession, base: str, ivr: str, web: str, callers: list[str]) -> None:
    """Each caller's IVR call and web visit, posted in batches of 100 events."""
    ivr_events, web_events = [], []
    for n, phone in enumerate(callers):
        for i, (kind, data) in enumerate(
            [("ivr.call.started", {}), ("ivr.menu", {"menu": "main"}), ("ivr.input", {"digits": "2"}),
             ("ivr.transferred", {"queue": "support"})]
        ):  # fmt: skip
            ivr_events.append({"id": f"ivr-{n}-{i}", "type": kind, "occurred_at": f"2026-11-23T08:00:0{i}Z",
                               "identities": {"phone": phone}, "dialogue": f"ivr-{n}", "data": data})  # fmt: skip
        for i, kind in enumerate(["page", "service.request"]):
            web_events.append({"id": f"web-{n}-{i}", "type": kind, "occurred_at": f"2026-11-22T18:00:0{i}Z",
                               "identities": {"phone": phone, "email": f"caller{n}@example.com"},
                               "data": {"path": "/support"}})  # fmt: skip
    for tp, key, events in (("ivr", ivr, ivr_events), ("web", web, web_events)):
        for start in range(0, len(events), 100):
            batch = {"events": events[start : start + 100]}
            resp = await session.post(f"{base}/v1/touchpoints/{tp}/events", json=batch,
                                      headers={"Authorization": f"Bearer {key}"})  # fmt: skip
            assert resp.status == 200, await resp.text()


def main(args: argparse.Namespace) -> None:
    """Start the hub and the bare server (each its own process), measure, stop them."""
    workdir = Path(tempfile.mkdtemp(prefix="prm-bench-screenpop-"))
    database = f"sqlite:///{workdir}/prm.db"
    subprocess.run([*PRM, "db", "upgrade", "--database", database], check=True, capture_output=True)
    keys = {s: make_key(database, s) for s in ("touchpoint:callcenter", "touchpoint:ivr", "touchpoint:web")}
    hub_port, bare_port = free_port(), free_port()
    env = {**os.environ, "PRM_DATABASE_URL": database}
    with open(workdir / "hub.log", "w") as log:
        hub = subprocess.Popen([*PRM, "serve", "--port", str(hub_port), "--log-level", args.log_level],
                               stdout=log, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    bare = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(bare_port)])
    try:
        figures = asyncio.run(measure(args, f"http://127.0.0.1:{hub_port}", f"http://127.0.0.1:{bare_port}", keys))
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    finally:
        for proc in (hub, bare):
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


async def measure(args: argparse.Namespace, hub_base: str, bare_base: str, keys: dict[str, str]) -> dict[str, Any]:
    rng = random.Random(args.seed)
    callers = [f"+1415{n:07d}" for n in range(args.callers)]
    calls = [(f"call-{n}", n % args.agents, rng.choice(callers)) for n in range(args.calls)]
    await wait_up(f"{hub_base}/healthz")
    await wait_up(f"{bare_base}/offer")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        started = time.monotonic()
        await seed(session, hub_base, keys["touchpoint:ivr"], keys["touchpoint:web"], callers)
        print(f"seeded {len(callers)} callers (6 events each) in {time.monotonic() - started:.1f} s")

        @contextlib.asynccontextmanager
        async def post_bare(session: Any, call_id: str, agent: int, caller: str) -> Any:
            body = {"call_id": call_id, "agent_id": f"agent-{agent}", "ani": caller}
            async with session.post(f"{bare_base}/offer", json=body) as resp:
                yield resp

        cti_headers = {"Authorization": f"Bearer {keys['touchpoint:callcenter']}"}

        @contextlib.asynccontextmanager
        async def post_hub(session: Any, call_id: str, agent: int, caller: str) -> Any:
            event = {
                "id": f"{call_id}-offered",
                "type": "call.offered",
                "occurred_at": "2026-11-23T09:00:00Z",
                "data": {"call_id": call_id, "ani": caller, "dnis": "+18005550199", "queue": "support",
                         "agent_id": f"agent-{agent}"},
            }  # fmt: skip
            async with session.post(f"{hub_base}/v1/touchpoints/callcenter/events", json=event,
                                    headers=cti_headers) as resp:  # fmt: skip
                yield resp

        results = {}
        for name, base, post, headers in (
            ("baseline", bare_base, post_bare, {}),
            ("hub", hub_base, post_hub, cti_headers),
        ):
            agents = Agents()
            await agents.connect(session, base, args.agents, headers)
            # a short warm-up outside the figures (imports, caches, the JIT-less first calls)
            warm = [(f"warm-{name}-{n}", n % args.agents, callers[n % len(callers)]) for n in range(20)]
            await run_calls(session, agents, post, warm, args.concurrency, args.timeout)
            started = time.monotonic()
            results[name] = await run_calls(session, agents, post, calls, args.concurrency, args.timeout)
            elapsed = time.monotonic() - started
            await agents.close()
            accepted, round_trip, lost = results[name]
            print(f"{name}: {len(calls) / elapsed:.0f} calls/s, {lost} pops lost")
            print("  " + summary("200 -> pop", accepted))
            print("  " + summary("POST sent -> pop", round_trip))
    print()
    print(f"agents={args.agents} calls={args.calls} concurrency={args.concurrency} callers={args.callers} SQLite")
    hub_p99 = pct(results["hub"][0], 99) if results["hub"][0] else float("inf")
    for q in (50, 99):
        bare_ms = pct(results["baseline"][1], q)
        hub_ms = pct(results["hub"][1], q) if results["hub"][1] else 0.0
        print(f"POST sent -> pop p{q}: hub / bare aiohttp = {hub_ms:.2f} / {bare_ms:.2f} ms = {hub_ms / bare_ms:.1f}x")
    verdict = "met" if hub_p99 <= 100 and not results["hub"][2] else "NOT met"
    print(f"target: hub p99 (200 -> pop) <= 100 ms: {verdict} ({hub_p99:.1f} ms); lost pops: {results['hub'][2]}")
    return {
        "p50_ms": pct(results["hub"][0], 50) if results["hub"][0] else None,
        "p99_ms": hub_p99,
        "baseline": "bare aiohttp push, POST sent -> pop",
        "baseline_p99_ms": pct(results["baseline"][1], 99),
        "hub_sent_to_pop_p99_ms": pct(results["hub"][1], 99) if results["hub"][1] else None,
        "lost": results["hub"][2],
        "calls": args.calls,
        "agents": args.agents,
    }


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--agents", type=int, default=50)
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--callers", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=8, help="calls in flight")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a pop before it counts as lost")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning"])
    p.add_argument("--seed", type=int, default=6)
    p.add_argument("--keep", action="store_true", help="keep the database and hub.log")
    p.add_argument("--quick", action="store_true", help="200 calls, 200 callers")
    p.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file (bench/run.py reads it)")
    args = p.parse_args()
    if args.quick:
        args.calls, args.callers = 200, 200
    return args


if __name__ == "__main__":
    main(parse())
