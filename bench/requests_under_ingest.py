#!/usr/bin/env python
"""Does ingest slow the requests a customer waits for? Request answer times, alone and under ingest.

    python bench/requests_under_ingest.py                  # 3 rounds of 300 requests each way
    python bench/requests_under_ingest.py --quick          # 1 round of 100
    python bench/requests_under_ingest.py --database postgresql --postgres-url postgresql://postgres@127.0.0.1:5432/postgres

The hub runs as ``prm serve`` runs it by default: the journal on and one ``prm process`` beside
the server (``bench/ingest.py``'s hub, ``--journal --journal-processors 1``), on a fresh SQLite
file (or a PostgreSQL database of its own, dropped at the end). Then:

1. **capacity**: ``bench/ingest.py``'s web mix, 100 events per request, ``--clients`` clients
   keeping requests in flight for ``--capacity-s`` seconds; the processing capacity is the
   events accepted over the time from the window's start until the journal is drained (what
   the processor sustains, not what the server accepts);
2. **rounds**, each in two phases and the journal drained between them: *quiet*, ``--requests``
   request turns (``POST /v1/touchpoints/web/requests``, a ``question`` from one of
   ``--customers`` known customers in turn, one at a time); *under ingest*, the same while the
   web mix arrives open loop at ``--load`` (half) of the capacity (one request of 100 events
   every ``100 / rate`` s, on schedule).

Printed: the capacity, then per phase the answer times' p50 and p99, the ingest rate reached and
the journal's largest lag, and the ratio of the p99 under ingest to the quiet p99 (target: at
most 1, "unchanged or better"). The quiet and loaded phases alternate, so both see the same
machine. Timing is never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ingest import (
    EVENTS_PATH,
    EventFactory,
    create_web_key,
    databases,
    drain,
    free_port,
    journal_state,
    percentile,
    python_load,
    start_server,
)
from partner_request import positive  # a number above zero, or a usage error naming it

BATCH = 100  # events per ingest request
REQUESTS_PATH = "/v1/touchpoints/web/requests"
TARGET_RATIO = 1.0  # the p99 under ingest over the quiet p99: unchanged or better


def question(n: int, customers: int) -> dict[str, Any]:
    """A request turn from a known customer (``asker-K``), answered while they wait."""
    return {
        "id": f"q-{n}-{time.monotonic_ns()}",
        "type": "question",
        "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "identities": {"email": f"asker-{n % customers}@example.com"},
        "data": {"topic": "opening hours"},
    }


async def ask(url: str, key: str, requests: int, customers: int) -> list[float]:
    """``requests`` request turns, one at a time: each answer's time in seconds."""
    import aiohttp

    headers = {"Authorization": f"Bearer {key}"}
    times: list[float] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        for n in range(requests):
            started = time.perf_counter()
            async with session.post(url, json=question(n, customers), headers=headers) as resp:
                body = await resp.read()
                if resp.status != 200:
                    sys.exit(f"a request was answered {resp.status}: {body[:300]!r}")
            times.append(time.perf_counter() - started)
    return times


async def ingest(url: str, key: str, rate: float, tag: str, customers: int, stop: asyncio.Event) -> dict[str, int]:
    """Open loop until ``stop``: one request of :data:`BATCH` events every ``BATCH / rate`` s,
    on schedule, whether earlier ones were answered or not."""
    import aiohttp

    factory = EventFactory(tag, customers, seed=3)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    counts = {"sent": 0, "ok": 0, "errors": 0}
    interval = BATCH / rate
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def post(body: bytes) -> None:
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    counts["ok" if resp.status == 200 else "errors"] += 1
                    await resp.read()
            except (aiohttp.ClientError, TimeoutError):
                counts["errors"] += 1

        tasks = []
        started = time.monotonic()
        while not stop.is_set():
            tasks.append(asyncio.create_task(post(factory.body(BATCH))))
            counts["sent"] += 1
            delay = started + counts["sent"] * interval - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
        await asyncio.gather(*tasks)
    return counts


async def largest_lag(server: Any, stop: asyncio.Event) -> float:
    """The journal's largest lag (``/healthz``) seen every 0.25 s until ``stop``."""
    worst = 0.0
    while not stop.is_set():
        state = await asyncio.to_thread(journal_state, server)
        if state is not None:
            worst = max(worst, float(state["lag_s"]))
        try:
            await asyncio.wait_for(stop.wait(), 0.25)
        except TimeoutError:
            pass
    return worst


async def under_ingest(args: argparse.Namespace, server: Any, key: str, rate: float, round_no: int) -> dict[str, Any]:
    """The requests while the web mix arrives at ``rate`` events/s, open loop."""
    events_url = server.base_url + EVENTS_PATH
    requests_url = server.base_url + REQUESTS_PATH
    stop = asyncio.Event()
    lag = asyncio.create_task(largest_lag(server, stop))
    load = asyncio.create_task(ingest(events_url, key, rate, f"load{round_no}", args.ingest_customers, stop))
    await asyncio.sleep(1.0)  # the load settles
    started = time.monotonic()
    times = await ask(requests_url, key, args.requests, args.customers)
    elapsed = time.monotonic() - started
    stop.set()
    counts = await load
    return {"times": times, "lag_s": await lag, "rate": counts["ok"] * BATCH / (elapsed + 1.0), **counts}


def row(name: str, times: list[float], extra: str = "") -> str:
    ms = sorted(t * 1000 for t in times)
    return f"{name:<14} p50 {statistics.median(ms):7.1f} ms  p99 {percentile(ms, 99):7.1f} ms{extra}"


async def measure(args: argparse.Namespace, server: Any, key: str) -> None:
    window = (time.time() + 1.0, time.time() + 1.0 + args.capacity_s)
    load = await python_load(server.base_url + EVENTS_PATH, key, BATCH, args.clients, window, "cap", 1000, 1, "web")
    await asyncio.sleep(max(0.0, window[1] - time.time()))
    left = await asyncio.to_thread(drain, server)
    if left is None:
        sys.exit("the journal did not drain after the capacity run")
    capacity = load["ok"] * BATCH / (args.capacity_s + left)
    rate = capacity * args.load
    print(f"processing capacity: {capacity:,.0f} events/s ({load['ok'] * BATCH:,} events in {args.capacity_s:.0f} s,")
    print(f"  drained {left:.1f} s after; {load['non200'] + load['bad_body']} errors); driven at {rate:,.0f} events/s")
    requests_url = server.base_url + REQUESTS_PATH
    await ask(requests_url, key, max(20, args.requests // 5), args.customers)  # warm: the askers exist
    quiet_all: list[float] = []
    loaded_all: list[float] = []
    for round_no in range(1, args.rounds + 1):
        quiet = await ask(requests_url, key, args.requests, args.customers)
        loaded = await under_ingest(args, server, key, rate, round_no)
        if await asyncio.to_thread(drain, server) is None:
            sys.exit("the journal did not drain after a loaded phase")
        quiet_all += quiet
        loaded_all += loaded["times"]
        print(f"-- round {round_no}")
        print(row("quiet", quiet))
        reached = f"   ingest {loaded['rate']:,.0f} events/s ({loaded['errors']} errors)"
        reached += f", journal lag <= {loaded['lag_s']:.2f} s"
        print(row("under ingest", loaded["times"], reached))
    q99 = percentile(sorted(quiet_all), 99)
    l99 = percentile(sorted(loaded_all), 99)
    print("-- all rounds")
    print(row("quiet", quiet_all))
    print(row("under ingest", loaded_all))
    ratio = l99 / q99 if q99 else float("inf")
    met = "met" if ratio <= TARGET_RATIO else "NOT met"
    print(f"p99 under ingest / quiet p99: {ratio:.2f} (target <= {TARGET_RATIO:g}: {met})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=positive(int), default=300, help="request turns per phase")
    parser.add_argument("--rounds", type=positive(int), default=3)
    parser.add_argument("--customers", type=positive(int), default=50, help="customers asking, in turn")
    parser.add_argument("--ingest-customers", type=positive(int), default=10_000, help="customers of the ingested mix")
    parser.add_argument("--load", type=positive(float), default=0.5, help="the ingest rate, a share of the capacity")
    parser.add_argument("--capacity-s", type=positive(float), default=10.0)
    parser.add_argument("--clients", type=positive(int), default=4, help="clients of the capacity run")
    parser.add_argument("--processors", type=positive(int), default=1, help="`prm process` processes beside the server")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--quick", action="store_true", help="one round of 100 requests, 5 s of capacity")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds, args.capacity_s = 100, 1, 5.0
    workdir = Path(tempfile.mkdtemp(prefix="prm-bench-requests-"))
    with databases(args, workdir) as (database_url, _unused), ExitStack() as stack:
        argv = ["--role", "hub", "--database-url", database_url, "--hub-log-level", "warning"]
        argv += ["--journal", "--journal-processors", str(args.processors)]
        server = stack.enter_context(start_server("hub", argv, free_port(), workdir))
        server.wait_ready()
        key = asyncio.run(create_web_key(database_url))
        print(f"hub: journal on, {args.processors} processor(s), {args.database}; logs in {workdir}")
        asyncio.run(measure(args, server, key))


if __name__ == "__main__":
    main()
