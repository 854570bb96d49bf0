#!/usr/bin/env python
"""CPU per event of journaled acceptance, stage by stage, in one process (no HTTP).

A library hub (every installed plugin, ``[ingest] journal = true``, its processor "elsewhere"
so that nothing records behind and only acceptance is measured) takes request bodies of
``--batch`` events of ``bench/ingest.py``'s web mix, as ``POST /v1/touchpoints/web/events``
handles them after authentication:

- ``parse``: the body's JSON through the hub's loader (:func:`prm_core.server.routes.parse_json_body`);
- ``validate``: :meth:`Hub.parse_events` (every event checked, identities normalized);
- ``accept``: :meth:`Hub.accept`, ``--concurrency`` requests at a time so that the journal's
  writer groups them as it does under load: the window check, the queue, and the writer's
  thread (encoding, the duplicate check, the insert, the commit);
- ``total``: the three in one request, ``--concurrency`` at a time.

The started hub's heap is frozen (``gc.freeze()``) as ``prm serve`` freezes it. Each figure
is process CPU time (all threads) per event, in microseconds, the median of
``--rounds``; wall time is printed beside ``total``. The database is fresh per run: SQLite in a
temporary directory, or a new database on ``--postgres-url`` (``--database postgresql``).

To compare two versions of the code in one session, alternate runs with ``PYTHONPATH`` pointing
at each tree (``PYTHONPATH=/tmp/base:/tmp/base/plugins:/tmp/base/contrib``).
Timing is never asserted.

Run ``python bench/accept_path.py`` (about 30 s) or ``--database postgresql``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import EventFactory  # bench/ingest.py: the same mix of events

import prm_core
from prm_core.config import Config
from prm_core.hub import Hub
from prm_core.server.routes import parse_json_body


@asynccontextmanager
async def database(kind: str, postgres_url: str) -> AsyncIterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="prm-bench-accept-") as tmp:
            yield f"sqlite+aiosqlite:///{tmp}/prm.db"
        return
    import asyncpg

    name = f"prm_bench_accept_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield postgres_url.rsplit("/", 1)[0] + "/" + name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def in_flight(items: list[Any], step: Callable[[Any], Awaitable[Any]], concurrency: int) -> None:
    """``step`` each item, ``concurrency`` at a time (as requests in flight)."""
    queue = iter(items)

    async def worker() -> None:
        for item in queue:
            await step(item)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def run(args: argparse.Namespace) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {"parse": [], "validate": [], "accept": [], "total": [], "total_wall": []}
    async with database(args.database, args.postgres_url) as url:
        config = Config(database_url=url, raw={"ingest": {"journal": True}})
        async with Hub.open(config, autoload=True, journal_processor="elsewhere") as hub:
            gc.collect()
            gc.freeze()  # as the served hub does once started ([server] freeze_heap)
            factory = EventFactory("accept", args.customers, seed=1)
            per_round = max(args.events // args.batch, args.concurrency)
            n = per_round * args.batch

            async def whole(body: bytes) -> None:
                await hub.accept(hub.parse_events(parse_json_body(body), "web"))

            for _ in range(args.rounds):
                bodies = [factory.body(args.batch) for _ in range(per_round)]
                started = time.process_time()
                values = [parse_json_body(body) for body in bodies]
                figures["parse"].append((time.process_time() - started) * 1e6 / n)
                started = time.process_time()
                parsed = [hub.parse_events(value, "web") for value in values]
                figures["validate"].append((time.process_time() - started) * 1e6 / n)
                started = time.process_time()
                await in_flight(parsed, hub.accept, args.concurrency)
                figures["accept"].append((time.process_time() - started) * 1e6 / n)
                bodies = [factory.body(args.batch) for _ in range(per_round)]
                started, wall = time.process_time(), time.perf_counter()
                await in_flight(bodies, whole, args.concurrency)
                figures["total"].append((time.process_time() - started) * 1e6 / n)
                figures["total_wall"].append((time.perf_counter() - wall) * 1e6 / n)
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100, help="events per request body")
    parser.add_argument("--events", type=int, default=10_000, help="events per stage and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight in the accept stages")
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument(
        "--postgres-url", default=os.environ.get("PRM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    )
    parser.add_argument("--label", default="", help="a name printed with the figures")
    args = parser.parse_args(argv)
    figures = asyncio.run(run(args))
    where = Path(prm_core.__file__).resolve().parent.parent
    medians = "  ".join(f"{k} {statistics.median(v):6.1f}" for k, v in figures.items())
    print(f"{args.label or where}  {args.database} batch {args.batch}: CPU us/event  {medians}", flush=True)


if __name__ == "__main__":
    main()
