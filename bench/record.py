#!/usr/bin/env python
"""The ingest writer alone, in process: ``Hub.record`` on batches of ``bench/ingest.py``'s events.

No HTTP, no load generator, no second process: the recording transaction (``record_batch``
and its commit) is what is timed, so figures move far less with a busy machine than
``bench/ingest.py``'s, and a profiler sees only the writer::

    python bench/record.py                          # SQLite, 2000-event batches (the writer's size at 100/request)
    python bench/record.py --batch 32               # the size group commit reaches at 1 event per request
    python bench/record.py --database postgresql://postgres@127.0.0.1:5432/bench   # an empty database
    py-spy record -f raw -o writer.txt -- python bench/record.py
    python bench/record.py --identity-rules off     # no identity rule at all: what the rules cost
    python bench/record.py --feed both              # the change feed's cost: with and without, same run

Events are made by ``bench/ingest.py``'s ``EventFactory`` (web mix: merges included) and
parsed by the hub before timing starts. Printed: events/s over the timed batches (the first
is a warm-up), and the SQL statements that took the most time (SQLAlchemy cursor events).

``--feed both`` records every batch twice, into a hub writing the change feed and into one
with ``[feed] enabled = false`` (each on its own fresh database, the same events, the order
alternating batch by batch so a drift of the machine falls on both), and prints each one's
rates and the ratio of the two: the feed's cost to the ingest writer. ``--feed off`` runs
without it alone. (On PostgreSQL, ``--database-nofeed`` names the second empty database.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from sqlalchemy import event as sa_event

sys.path.insert(0, str(Path(__file__).parent))

from ingest import EventFactory

from prm_core.config import Config
from prm_core.hub import Hub


async def compare(args: argparse.Namespace) -> None:
    """``--feed both``: the same batches into a hub with the feed and one without."""
    with tempfile.TemporaryDirectory() as tmp:
        urls = {
            "feed": args.database or f"sqlite:///{tmp}/feed.db",
            "no feed": args.database_nofeed or f"sqlite:///{tmp}/nofeed.db",
        }
        if args.database and not args.database_nofeed:
            sys.exit("--feed both on --database needs --database-nofeed, a second empty database")
        factory = EventFactory("rec", args.customers, args.seed)
        hubs = {}
        async with contextlib.AsyncExitStack() as stack:
            for name, url in urls.items():
                raw = {} if name == "feed" else {"feed": {"enabled": False}}
                hubs[name] = await stack.enter_async_context(Hub.open(Config(database_url=url, raw=raw), autoload=True))
            rates: dict[str, list[float]] = {name: [] for name in hubs}
            cpu_rates: dict[str, list[float]] = {name: [] for name in hubs}
            for n in range(args.batches + 1):
                bodies = [json.loads(factory.body(min(100, args.batch))) for _ in range(max(1, args.batch // 100))]
                order = list(hubs) if n % 2 == 0 else list(reversed(hubs))
                for name in order:
                    hub = hubs[name]
                    batch = [ev for body in bodies for ev in hub.parse_events(body, "web")]
                    started, cpu_started = time.perf_counter(), time.process_time()
                    await hub.record(batch)
                    if n:  # the first batch warms up
                        rates[name].append(len(batch) / (time.perf_counter() - started))
                        cpu_rates[name].append(len(batch) / max(time.process_time() - cpu_started, 1e-6))
        for name in hubs:
            rate, cpu_rate = statistics.median(rates[name]), statistics.median(cpu_rates[name])
            print(
                f"{name:>7}: {args.batches} batches of {args.batch} events: median {rate:,.0f} events/s,"
                f" per CPU-second {cpu_rate:,.0f}"
            )
        pairs = zip(cpu_rates["feed"], cpu_rates["no feed"], strict=True)
        per_cpu = statistics.median(a / b for a, b in pairs)
        wall = statistics.median(a / b for a, b in zip(rates["feed"], rates["no feed"], strict=True))
        of_medians = statistics.median(cpu_rates["feed"]) / statistics.median(cpu_rates["no feed"])
        print(
            f"with the feed / without: {wall:.3f} (events/s), {per_cpu:.3f} (events per CPU-second),"
            f" {of_medians:.3f} (their medians' ratio); target >= 0.90"
        )


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database or f"sqlite:///{tmp}/prm.db"
        factory = EventFactory("rec", args.customers, args.seed)
        raw: dict[str, Any] = {"feed": {"enabled": False}} if args.feed == "off" else {}
        if args.identity_rules == "limited":  # a limit the mix's logins reach (an anonymous visitor's email)
            raw["identity"] = {"rules": {"email": {"limit": 1}}}
        elif args.identity_rules == "off":
            from prm_core.identity_rules import IdentityRules

            IdentityRules.from_config = classmethod(lambda cls, *a, **k: None)  # type: ignore[method-assign,assignment]
        async with Hub.open(Config(database_url=url, raw=raw), autoload=True) as hub:
            sql: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
            engine = hub.store.sync_writer or hub.store.writer.sync_engine

            @sa_event.listens_for(engine, "before_cursor_execute")
            def before(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
                conn.info["bench_started"] = time.perf_counter()

            @sa_event.listens_for(engine, "after_cursor_execute")
            def after(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
                figures = sql[" ".join(statement.split())[:60]]
                figures[0] += 1
                figures[1] += time.perf_counter() - conn.info["bench_started"]

            rates, cpu_rates = [], []
            for n in range(args.batches + 1):
                bodies = [json.loads(factory.body(min(100, args.batch))) for _ in range(max(1, args.batch // 100))]
                batch = [ev for body in bodies for ev in hub.parse_events(body, "web")]
                started, cpu_started = time.perf_counter(), time.process_time()
                await hub.record(batch)
                if n:  # the first batch warms up
                    rates.append(len(batch) / (time.perf_counter() - started))
                    # CPU of the whole process (the writer's thread included): what a busy machine disturbs less
                    cpu_rates.append(len(batch) / max(time.process_time() - cpu_started, 1e-6))
                if n == 0:
                    sql.clear()
            print(
                f"{args.batches} batches of {args.batch} events: median {statistics.median(rates):,.0f} events/s"
                f" (min {min(rates):,.0f}, max {max(rates):,.0f}); per CPU-second {statistics.median(cpu_rates):,.0f}"
            )
            for statement, (count, seconds) in sorted(sql.items(), key=lambda kv: -kv[1][1])[:10]:
                print(f"  {seconds * 1000:8.1f} ms {int(count):6d}x  {statement}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", help="a database URL (default: a fresh SQLite file)")
    parser.add_argument("--batch", type=int, default=2000, help="events per recording transaction")
    parser.add_argument("--batches", type=int, default=10, help="timed batches (after one warm-up batch)")
    parser.add_argument("--customers", type=int, default=10_000, help="size of the customer (email) pool")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--identity-rules",
        choices=["on", "limited", "off"],
        default="on",
        help="on: the default rules; limited: and [identity.rules.email] limit = 1; off: none at all",
    )
    parser.add_argument(
        "--feed", choices=["on", "off", "both"], default="on", help="write the change feed; both: compare (see above)"
    )
    parser.add_argument("--database-nofeed", help="--feed both on PostgreSQL: a second empty database")
    args = parser.parse_args()
    asyncio.run(compare(args) if args.feed == "both" else run(args))


if __name__ == "__main__":
    main()
