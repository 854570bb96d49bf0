#!/usr/bin/env python
"""What a synchronous write waits for while journaled ingest runs behind it.

A hub (library, SQLite in a temporary directory, every installed plugin) takes a steady load
of 100-event batches through :meth:`Hub.accept` (``--rate`` events/s, people from a pool), and
meanwhile records one event at a time through :meth:`Hub.record`, the synchronous path of
requests, CTI, POS and IVR, and times each. Cases, each on a fresh database:

- ``off``: no journal: the load is recorded directly, sharing the writer with the timed writes;
- ``others``: the journal on; the timed writes name people absent from the load (they wait for
  nothing: the hub waits only for journaled events naming the identities a write names);
- ``same``: the journal on; each timed write names a person of the load's latest batch (it
  waits until the processor has recorded that batch);
- ``head``: the journal on; each timed write waits for the whole journal as it stands (the
  alternative: wait until the processor has passed the journal's head).

Printed per case: the timed writes' p50, p99 and max, the load's accepted rate and the
journal's depth at the end. Timing is never asserted.

Run ``python bench/journal_wait.py`` (about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

from prm_core.config import Config
from prm_core.hub import Hub
from prm_core.journal import Journal
from prm_core.model import Event, Identity


def event(eid: str, *identities: str) -> Event:
    return Event(
        id=eid,
        type="page.viewed",
        occurred_at=datetime.now(UTC),
        touchpoint="web",
        identities=tuple(Identity.parse(i) for i in identities),
    )


async def run_case(case: str, args: argparse.Namespace) -> dict[str, Any]:
    recent_position = Journal.recent_position
    if case == "head":  # the alternative: every synchronous write waits for the journal's head
        Journal.recent_position = lambda self, events: self.head  # type: ignore[method-assign]
    try:
        return await _run_case(case, args)
    finally:
        Journal.recent_position = recent_position  # type: ignore[method-assign]


async def _run_case(case: str, args: argparse.Namespace) -> dict[str, Any]:
    workdir = tempfile.mkdtemp(prefix="prm-bench-journal-wait-")
    raw = {"ingest": {"journal": case != "off", "batch": args.batch}}
    async with Hub.open(Config(database_url=f"sqlite:///{workdir}/prm.db", raw=raw), autoload=True) as hub:
        stop = asyncio.Event()
        latest: list[str] = ["email:seed@example.com"]
        accepted = 0

        async def load() -> None:
            nonlocal accepted
            n = 0
            interval = 100 / args.rate
            while not stop.is_set():
                started = time.monotonic()
                batch = [event(f"l{n + i}", f"email:p{(n + i) % args.people}@example.com") for i in range(100)]
                latest[0] = f"email:p{(n + 99) % args.people}@example.com"
                n += 100
                await hub.accept(batch)
                accepted += 100
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

        loading = asyncio.ensure_future(load())
        await asyncio.sleep(1.0)  # the load reaches its pace
        started_all = time.monotonic()
        times: list[float] = []
        for k in range(args.writes):
            who = latest[0] if case == "same" else f"email:sync{k}@example.com"
            started = time.monotonic()
            await hub.record([event(f"s{k}", who)])
            times.append((time.monotonic() - started) * 1000)
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started_all
        stop.set()
        await loading
        depth = hub.journal.depth if hub.journal is not None else 0
    times.sort()
    return {
        "case": case,
        "p50_ms": statistics.median(times),
        "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))],
        "max_ms": times[-1],
        "accepted_per_s": accepted / (elapsed + 1.0),
        "depth": depth,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=3000.0, help="events/s the load sends (in batches of 100)")
    parser.add_argument("--batch", type=int, default=2000, help="[ingest] batch: a processing transaction's most")
    parser.add_argument("--people", type=int, default=5000, help="the load's pool of people")
    parser.add_argument("--writes", type=int, default=100, help="timed synchronous writes per case")
    parser.add_argument("--cases", default="off,others,same,head", help="comma-separated: off, others, same, head")
    args = parser.parse_args()
    print(
        f"load {args.rate:,.0f} events/s in batches of 100; [ingest] batch = {args.batch};"
        f" {args.writes} timed writes per case",
        flush=True,
    )
    for case in args.cases.split(","):
        r = asyncio.run(run_case(case.strip(), args))
        print(
            f"{r['case']:<7} sync write p50 {r['p50_ms']:>8.1f} ms  p99 {r['p99_ms']:>8.1f} ms"
            f"  max {r['max_ms']:>8.1f} ms   load accepted {r['accepted_per_s']:>7,.0f} events/s"
            f"  journal depth at the end {r['depth']:,}",
            flush=True,
        )


if __name__ == "__main__":
    main()
