#!/usr/bin/env python
"""The journal's processor alone, in process: drain a filled journal, per CPU-second.

A library hub (``Hub.open``, installed plugins, ``[ingest] journal = true``) has its own
processor stopped; ``--warm`` events of ``bench/ingest.py``'s web mix (merges included) are
journaled and drained first (the customers then exist, as on a hub that has run a while),
then ``--events`` more are journaled and drained by a :class:`prm_core.journal.Processor`
calling ``process_once(--batch)`` until the journal is empty. That drain is what is timed:
reading and decoding the journal's rows, ``record_batch``, the cursor, the commit, the hooks
after commit and the trim. Printed: events/s (wall) and per CPU-second of the process, and
microseconds of CPU per event::

    python bench/process.py                         # SQLite, 20,000 events, batches of 2,000
    python bench/process.py --batch 500
    python bench/process.py --postgres postgresql://postgres@127.0.0.1:5432/postgres  # a fresh database per run
    python bench/process.py --profile prof.out      # cProfile of the timed drain
    python bench/process.py --compare /tmp/base --rounds 3   # against another source tree, alternated

``--compare TREE`` runs the measurement in child processes, alternately with the code of
``TREE`` (a checkout of the same project, e.g. ``git archive`` of main) and with this one,
``--rounds`` times each, and prints each round and the medians' ratio after / before.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TREE_ENV = "PRM_BENCH_TREE"


def _use_tree() -> None:
    """A child of ``--compare``: import the project from ``$PRM_BENCH_TREE``, not the
    editable install (whose import hook would otherwise win over ``sys.path``)."""
    tree = os.environ.get(TREE_ENV)
    if not tree:
        return
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
    sys.path[:0] = [tree, f"{tree}/plugins", f"{tree}/contrib"]  # as pyproject.toml's package-dir


async def measure(args: argparse.Namespace, url: str) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    from ingest import EventFactory

    import prm_core
    from prm_core.config import Config
    from prm_core.hub import Hub
    from prm_core.journal import Processor

    factory = EventFactory("proc", args.customers, args.seed)
    raw: dict[str, Any] = {"ingest": {"journal": True}}
    async with Hub.open(Config(database_url=url, raw=raw), autoload=True) as hub:
        assert hub.processor is not None and hub.journal is not None
        await hub.processor.stop()  # ours below, with a fixed batch size
        processor = Processor(hub.journal, hub.store, hub.ingestor.rules, hub.hooks.batch_committed, batch=args.batch)

        async def fill(n: int) -> None:
            for i in range(0, n, 100):
                body = json.loads(factory.body(min(100, n - i)))
                await hub.accept(hub.parse_events(body, "web"))

        async def drain() -> int:
            total = 0
            while done := await processor.process_once(args.batch):
                total += done
            return total

        await fill(args.warm)
        await drain()
        await fill(args.events)
        if args.freeze:  # as prm serve does once the hub has started (prm_core.server.app)
            gc.collect()
            gc.freeze()
        collecting = {"at": 0.0, "s": 0.0}

        def gc_timer(phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                collecting["at"] = time.perf_counter()
            else:
                collecting["s"] += time.perf_counter() - collecting["at"]

        gc.callbacks.append(gc_timer)
        profiler = None
        if args.profile:  # the processing transaction, in the store's writer thread (its hooks and trim aside)
            import cProfile

            profiler = cProfile.Profile()
            process = Processor._process
            Processor._process = lambda self, conn, limit: profiler.runcall(process, self, conn, limit)  # type: ignore[method-assign]
        started, cpu_started = time.perf_counter(), time.process_time()
        drained = await drain()
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        gc.callbacks.remove(gc_timer)
        gc.unfreeze()
        if profiler is not None:
            profiler.dump_stats(args.profile)
        assert drained == args.events, (drained, args.events)
    return {
        "code": str(Path(prm_core.__file__).parent.parent),
        "events": drained,
        "events_per_s": drained / wall,
        "per_cpu_s": drained / cpu,
        "us_per_event": cpu / drained * 1e6,
        "gc_us_per_event": collecting["s"] / drained * 1e6,
    }


async def _admin(server: str, sql: str) -> None:
    import asyncpg  # the hub's own PostgreSQL driver

    conn = await asyncpg.connect(server.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _fresh_postgres(server: str) -> tuple[str, str]:
    name = f"bench_process_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(server, f"CREATE DATABASE {name}"))
    return name, server.rsplit("/", 1)[0] + "/" + name


def _drop_postgres(server: str, name: str) -> None:
    asyncio.run(_admin(server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def run_once(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        if not args.postgres:
            return asyncio.run(measure(args, f"sqlite:///{tmp}/prm.db"))
        name, url = _fresh_postgres(args.postgres)
        try:
            return asyncio.run(measure(args, url))
        finally:
            _drop_postgres(args.postgres, name)


def _line(label: str, r: dict[str, Any]) -> str:
    return (
        f"{label:>7}: {r['events']:,} events: {r['events_per_s']:,.0f} events/s, per CPU-second"
        f" {r['per_cpu_s']:,.0f}, {r['us_per_event']:.1f} us CPU/event (in collections"
        f" {r['gc_us_per_event']:.1f})  ({r['code']})"
    )


def compare(args: argparse.Namespace, argv: list[str]) -> None:
    trees = {"before": str(Path(args.compare).resolve()), "after": str(Path(args.after or HERE.parent).resolve())}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    child, skip = [], False
    for a in argv:  # the child measures once: without the options of the comparison
        if skip or a in ("--compare", "--after", "--rounds"):
            skip = not skip
            continue
        child.append(a)
    for n in range(args.rounds):
        order = list(trees) if n % 2 == 0 else list(reversed(trees))
        for name in order:
            env = {**os.environ, TREE_ENV: trees[name]}
            out = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), *child, "--json"],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            results[name].append(r)
            print(_line(f"{name} {n + 1}", r), flush=True)
    med = {
        name: {k: statistics.median(r[k] for r in rs) for k in ("per_cpu_s", "events_per_s", "us_per_event")}
        for name, rs in results.items()
    }
    for name, m in med.items():
        print(
            f"{name:>7} (median of {args.rounds}): {m['events_per_s']:,.0f} events/s,"
            f" per CPU-second {m['per_cpu_s']:,.0f}, {m['us_per_event']:.1f} us CPU/event"
        )
    print(
        f"after / before: per CPU-second {med['after']['per_cpu_s'] / med['before']['per_cpu_s']:.2f},"
        f" us CPU/event {med['after']['us_per_event'] / med['before']['us_per_event']:.2f},"
        f" events/s {med['after']['events_per_s'] / med['before']['events_per_s']:.2f}"
    )


def main() -> None:
    _use_tree()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000, help="events journaled, then drained (timed)")
    parser.add_argument("--warm", type=int, default=10_000, help="events journaled and drained before timing")
    parser.add_argument("--batch", type=int, default=2000, help="events per processing transaction")
    parser.add_argument("--customers", type=int, default=10_000, help="size of the customer (email) pool")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--postgres", help="a PostgreSQL server URL: each run creates (and drops) a database of its own"
    )
    parser.add_argument(
        "--no-freeze",
        dest="freeze",
        action="store_false",
        help="leave the heap unfrozen (prm process does not freeze it)",
    )
    parser.add_argument("--profile", help="write a cProfile of the timed drain here")
    parser.add_argument("--compare", help="another source tree: run both, alternately (see above)")
    parser.add_argument("--after", help="with --compare: the tree measured as after (default: this one)")
    parser.add_argument("--rounds", type=int, default=3, help="with --compare: runs of each")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.compare:
        compare(args, sys.argv[1:])
        return
    result = run_once(args)
    print(json.dumps(result) if args.json else _line("drain", result))


if __name__ == "__main__":
    main()
