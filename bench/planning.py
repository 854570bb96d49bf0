#!/usr/bin/env python
"""What keeping the value model, tiers and scorecard current costs ingest.

The same events are recorded through ``Hub.record`` (the group-commit writer every ingest
route uses) by two hubs on fresh SQLite files (or PostgreSQL with ``--database``): one with
planning on (three tier rules in ``[tiers.rules]``, a catalog) and one with
``[planning] on_ingest = false``. Rounds alternate between them so both see the same machine.
Requests are recorded ``--concurrency`` at a time, ``--batch`` events each, so group commit
batches as it does under load. The mix: page and product views by known customers (a pool of
``--customers`` emails), orders with revenue, and request answers with offers (which planning
records as offers made; here they come from the wire, so they count as events only).

Printed per round: events/s with and without planning; then the median of each and the
overhead ratio (without / with, less one) next to the target (at most 20%). Timing
is never asserted. In-process, with no HTTP in front, is the strictest place to measure: the
HTTP work planning does not touch would only dilute the ratio.

Run ``python bench/planning.py`` (about a minute) or ``--quick`` (about 15 s).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs

import prm_core.ingest
from prm_core.config import Config
from prm_core.hub import Hub

_record_batch = prm_core.ingest.record_batch

RULES = {
    "platinum": "lifetime_revenue >= 5000",
    "gold": "lifetime_revenue >= 1000 or traits['vip'] == true",
    "silver": "purchases >= 3 and days_since_last_purchase < 90",
}
START = datetime(2026, 1, 1, tzinfo=UTC)


def make_events(n: int, customers: int, seed: int, prefix: str) -> list[dict]:
    rng = random.Random(seed)
    events = []
    for i in range(n):
        who = {"email": f"c{rng.randrange(customers)}@example.com"}
        at = (START + timedelta(seconds=i * 7)).isoformat()
        roll = rng.random()
        if roll < 0.5:
            body = {"type": "page", "data": {"path": f"/p/{rng.randrange(100)}"}}
        elif roll < 0.8:
            body = {"type": "product.viewed", "data": {"product_id": "wm-300"}}
        elif roll < 0.95:
            body = {"type": "order.completed", "data": {"revenue": f"{rng.randrange(20, 900)}.00", "currency": "USD"}}
        else:
            body = {
                "type": "delivery",
                "direction": "outbound",
                "data": {
                    "offers_made": [{"id": f"ofr-{prefix}-{i}", "code": "accessory:hose-kit", "source": "bench"}],
                    "elapsed_ms": 12.0,
                    "budget_ms": 250,
                    "degraded": [],
                },
            }
        events.append({"id": f"{prefix}-{i}", "occurred_at": at, "identities": who, **body})
    return events


CPU = {"record": 0.0, "planning": 0.0}


def _timed_record_batch(conn, batch, rules):  # type: ignore[no-untyped-def]
    started = time.thread_time()
    try:
        return _record_batch(conn, batch, rules)
    finally:
        CPU["record"] += time.thread_time() - started


def _timed(after_write):  # type: ignore[no-untyped-def]
    def run(*args):  # type: ignore[no-untyped-def]
        started = time.thread_time()
        try:
            return after_write(*args)
        finally:
            CPU["planning"] += time.thread_time() - started

    return run


prm_core.ingest.record_batch = _timed_record_batch  # type: ignore[assignment]  # the writer calls it by this name


async def run_phase(
    database_url: str, planning: bool, events: list[dict], batch: int, concurrency: int
) -> tuple[float, float, float]:
    raw: dict = {"planning": {"on_ingest": planning}}
    if planning:
        raw |= {"tiers": {"rules": RULES}, "catalog": {"items": {"wm-300": {"title": "Washer"}}}}
    async with Hub.open(Config(database_url=database_url, raw=raw), autoload=True) as hub:
        if hub.ingestor.rules.after_write is not None:
            hub.ingestor.rules = attrs.evolve(hub.ingestor.rules, after_write=_timed(hub.ingestor.rules.after_write))
        CPU["record"] = CPU["planning"] = 0.0
        parsed = [
            ev for i in range(0, len(events), 1000) for ev in hub.parse_events({"events": events[i : i + 1000]}, "web")
        ]
        chunks = [parsed[i : i + batch] for i in range(0, len(parsed), batch)]
        queue: asyncio.Queue = asyncio.Queue()
        for chunk in chunks:
            queue.put_nowait(chunk)

        async def worker() -> None:
            while not queue.empty():
                await hub.record(queue.get_nowait())

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        rate = len(events) / (time.perf_counter() - started)
        # CPU seconds per 1000 events inside the recording transactions, and planning's part of it
        per_k = 1000 / len(events)
        return rate, CPU["record"] * per_k, CPU["planning"] * per_k


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=6000, help="events per phase")
    parser.add_argument("--batch", type=int, default=10, help="events per record() call")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--customers", type=int, default=500)
    parser.add_argument("--database", help="a PostgreSQL server URL (default: SQLite files in a temporary directory)")
    parser.add_argument("--quick", action="store_true", help="1 round of 2000 events")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.events = 1, 2000
    rates: dict[bool, list[float]] = {True: [], False: []}
    cpu: dict[bool, list[float]] = {True: [], False: []}
    share: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for planning in (False, True) if r % 2 == 0 else (True, False):
                if args.database:
                    from prm_core.testing import postgres_database

                    gen = postgres_database(args.database)
                    url = next(gen)
                else:
                    url = f"sqlite:///{Path(tmp) / f'r{r}-{planning}.db'}"
                events = make_events(args.events, args.customers, seed=r, prefix=f"r{r}")
                rate, record_cpu, planning_cpu = await run_phase(url, planning, events, args.batch, args.concurrency)
                if args.database:
                    gen.close()
                rates[planning].append(rate)
                cpu[planning].append(record_cpu)
                if planning:
                    share.append(planning_cpu / record_cpu)
                print(
                    f"round {r + 1}: planning {'on ' if planning else 'off'} {rate:8.0f} events/s, "
                    f"recording CPU {record_cpu * 1000:6.1f} ms per 1000 events"
                    + (f" (planning {planning_cpu * 1000:5.1f} ms)" if planning else ""),
                    flush=True,
                )
    on, off = statistics.median(rates[True]), statistics.median(rates[False])
    overhead = off / on - 1
    cpu_on, cpu_off = statistics.median(cpu[True]), statistics.median(cpu[False])
    print(f"median events/s: planning off {off:.0f}, on {on:.0f}")
    print(f"planning's ingest overhead, throughput: {overhead * 100:.1f}% (target: at most 20%)")
    print(
        f"recording CPU per 1000 events: off {cpu_off * 1000:.1f} ms, on {cpu_on * 1000:.1f} ms "
        f"({(cpu_on / cpu_off - 1) * 100:.1f}% more); planning's own share of it {statistics.median(share) * 100:.1f}%"
    )
    print("(throughput swings with whatever else the machine runs; CPU time inside the transactions does less)")


if __name__ == "__main__":
    asyncio.run(main())
