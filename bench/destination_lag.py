#!/usr/bin/env python
"""Does a destination keep up? Delivery lag of the NATS and Parquet destinations under ingest.

    python bench/destination_lag.py             # 20 s at half capacity
    python bench/destination_lag.py --quick     # 8 s

The driver starts a hub process (as ``prm serve`` runs it, as ``bench/ingest.py`` does) on a
fresh SQLite file with two destinations: ``[destinations.stream] kind = "nats"`` (JetStream at
127.0.0.1:4222, a stream and subject prefix of this run's own, deleted at the end) and
``[destinations.lake] kind = "parquet"`` (a temporary folder). Then:

1. **capacity**: ``bench/ingest.py``'s web mix, 100 events per request, a few clients keeping
   requests in flight for ``--capacity-s`` seconds: events/s with both destinations attached;
2. the destinations catch up with what that left behind;
3. **driven**: the same mix at ``--load`` (half) of that rate, open loop: one request of 100
   events every ``100 / rate`` seconds on a fixed schedule, whether earlier ones were answered
   or not, for ``--duration`` seconds; then the destinations are given time to drain.

Lag is measured per change of the driven phase (positions after the feed's head when it
starts), from the change's ``at``: the time the hub's recording transaction was made (taken
as it starts writing, a few milliseconds before its commit), so lag includes the commit:

- **NATS**: an ordered JetStream consumer in the driver; each message's lag is its receive
  time minus its ``at`` (the ``Nats-Msg-Id`` header is its position);
- **Parquet**: the destination's cursor (``destination_cursors``, the row
  ``prm destinations`` reads) is polled every 100 ms from the database file; when it moves,
  each change it passed has lag = the poll's time minus its ``at`` (a cursor moves only once
  the files are written, so this is when a reader could see the change, to 100 ms).

Printed: capacity, driven rate, and per destination the changes delivered and lag p50, p99
and max, with p99 over the 2 s target. Timing is never asserted. Loopback addresses only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ingest import (
    EVENTS_PATH,
    EventFactory,
    Server,
    cpu_seconds,
    create_web_key,
    free_port,
    machine_busy,
    percentile,
    python_load,
)

NATS_URL = "nats://127.0.0.1:4222"
TARGET_P99_S = 2.0  # a change reaches each destination within this, at half capacity
BATCH = 100  # events per request
POLL_S = 0.1  # the Parquet cursor's polling interval


def serve(database_url: str, port: int, raw_json: str) -> None:
    """The hub as ``prm serve`` runs it (``--role hub``), with the destinations of ``raw_json``."""
    from aiohttp import web

    from prm_core.config import Config
    from prm_core.logs import configure_logging
    from prm_core.server.app import create_app

    configure_logging("warning", cache=True)
    app = create_app(Config(database_url=database_url, raw=json.loads(raw_json)), owns_process=True)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def epoch(value: str | datetime) -> float:
    """Seconds since the epoch of a change's ``at`` (ISO text, or the database's naive UTC)."""
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


@dataclass
class Lags:
    """Each delivered change's ``at`` and lag (seconds), by position: a repeat keeps the first."""

    name: str
    seen: dict[int, tuple[float, float]] = field(default_factory=dict)

    def add(self, position: int, at: float, lag: float) -> None:
        self.seen.setdefault(position, (at, lag))

    def row(self) -> str:
        """Delivered, p50, p99, max, p99 over the target."""
        values = sorted(lag for _at, lag in self.seen.values())
        p50, p99 = percentile(values, 50), percentile(values, 99)
        high = values[-1] if values else 0.0
        return (
            f"{self.name:<8} {len(values):>9,} {p50:>8.3f} {p99:>8.3f} {high:>8.3f}"
            f"   {p99 / TARGET_P99_S:>5.2f} {'ok' if values and p99 <= TARGET_P99_S else 'MISSED'}"
        )

    def trend(self, started: float, step: float) -> str:
        """p99 of the changes made in each ``step`` seconds of the driven phase: a lag that
        grows from one to the next is a destination falling behind."""
        windows: dict[int, list[float]] = {}
        for at, lag in self.seen.values():
            windows.setdefault(int((at - started) // step), []).append(lag)
        return " ".join(f"{percentile(sorted(windows[w]), 99):.2f}" for w in sorted(windows))


class Feed:
    """Reads the hub's SQLite file beside it (WAL: readers never block the hub's writer)."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)

    def head(self) -> int:
        return int(self.db.execute("SELECT coalesce(max(position), 0) FROM changes").fetchone()[0])

    def cursor(self, name: str) -> int:
        row = self.db.execute("SELECT position FROM destination_cursors WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else -1

    def ats(self, after: int, through: int) -> list[tuple[int, float]]:
        query = "SELECT position, at FROM changes WHERE position > ? AND position <= ?"
        rows = self.db.execute(query, (after, through))
        return [(int(p), epoch(at)) for p, at in rows]

    async def caught_up(self, names: list[str], through: int, within_s: float) -> bool:
        """Wait until every destination's cursor reached ``through``."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if all(self.cursor(n) >= through for n in names):
                return True
            await asyncio.sleep(POLL_S)
        return False


async def follow_cursor(feed: Feed, name: str, start: int, lags: Lags, stop: asyncio.Event) -> None:
    """Every 100 ms: the changes the destination's cursor passed since the last look."""
    seen = max(start, feed.cursor(name))
    while not stop.is_set():
        now = time.time()
        moved = feed.cursor(name)
        if moved > seen:
            for position, at in feed.ats(seen, moved):
                lags.add(position, at, now - at)
            seen = moved
        await asyncio.sleep(POLL_S)


async def drive(url: str, key: str, rate: float, duration: float, tag: str, customers: int) -> dict[str, int]:
    """Open loop: one request of :data:`BATCH` events every ``BATCH / rate`` s, on schedule."""
    import aiohttp

    factory = EventFactory(tag, customers, seed=2)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    counts = {"sent": 0, "ok": 0, "errors": 0, "late": 0}
    interval = BATCH / rate
    requests = max(1, int(duration / interval))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def post(body: bytes) -> None:
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    answer = await resp.json() if resp.status == 200 else None
                good = isinstance(answer, dict) and answer.get("accepted") == BATCH
                counts["ok" if good else "errors"] += 1
            except (aiohttp.ClientError, TimeoutError, ValueError):
                counts["errors"] += 1

        tasks = []
        started = time.monotonic()
        for n in range(requests):
            delay = started + n * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -interval:
                counts["late"] += 1  # the driver itself fell behind its schedule
            counts["sent"] += 1
            tasks.append(asyncio.create_task(post(factory.body(BATCH))))
        await asyncio.gather(*tasks)
    return counts


def start_hub(database_url: str, raw: dict[str, Any], log: Path) -> Server:
    """This file run with ``--role hub``, its output to ``log``."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--role", "hub", database_url, str(port), json.dumps(raw)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return Server("hub", port, proc, log)


async def measure(args: argparse.Namespace, workdir: Path) -> None:
    import nats
    from nats.js.api import ConsumerConfig, DeliverPolicy

    run = secrets.token_hex(4).upper()
    stream, subject = f"PRM_BENCH_{run}", f"prm_bench_{run.lower()}"
    db_path = workdir / "prm.db"
    database_url = f"sqlite:///{db_path}"
    key = await create_web_key(database_url)
    destinations: dict[str, dict[str, Any]] = {
        "stream": {"kind": "nats", "servers": [NATS_URL], "stream": stream, "subject": subject},
        "lake": {"kind": "parquet", "path": str(workdir / "lake")},
    }
    if args.batch_size:
        for table in destinations.values():
            table["batch_size"] = args.batch_size
    raw = {"destinations": destinations}
    nc = await nats.connect(NATS_URL, connect_timeout=5, max_reconnect_attempts=2)
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=[f"{subject}.>"])
    hub = start_hub(database_url, raw, workdir / "hub.log")
    proc = hub.proc
    log = hub.log
    names = ["stream", "lake"]
    try:
        hub.wait_ready()
        feed = Feed(db_path)
        url = hub.base_url + EVENTS_PATH

        window = (time.time() + 1.0, time.time() + 1.0 + args.capacity_s)
        load = await python_load(url, key, BATCH, args.clients, window, "cap", args.customers, 1, "web")
        capacity = load["ok"] * BATCH / args.capacity_s
        rate = args.rate or capacity * args.load
        print(
            f"capacity: {capacity:,.0f} events/s ({BATCH} events/request, {args.clients} clients,"
            f" {args.capacity_s:.0f} s, destinations attached; {load['non200'] + load['bad_body']} errors)"
        )
        if not await feed.caught_up(names, feed.head(), within_s=180):
            sys.exit(f"the destinations did not catch up with the capacity run in 180 s; see {log}")

        start = feed.head()
        lags = {"stream": Lags("nats"), "lake": Lags("parquet")}

        async def on_message(msg: Any) -> None:
            received = time.time()
            position = int(msg.headers["Nats-Msg-Id"])
            if position > start:
                at = epoch(json.loads(msg.data)["at"])
                lags["stream"].add(position, at, received - at)

        sub = await js.subscribe(
            f"{subject}.>",
            stream=stream,
            cb=on_message,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW),
        )
        stop = asyncio.Event()
        follower = asyncio.create_task(follow_cursor(feed, "lake", start, lags["lake"], stop))
        driven_at, hub_cpu, busy = time.time(), cpu_seconds(proc.pid), machine_busy()
        counts = await drive(url, key, rate, args.duration, "lag", args.customers)
        wall = time.time() - driven_at
        end = feed.head()
        drained = await feed.caught_up(names, end, within_s=60)
        await asyncio.sleep(1.0)  # the last NATS messages and cursor poll
        stop.set()
        await follower
        await sub.unsubscribe()
        print(
            f"driven: {rate:,.0f} events/s ({rate / capacity:.0%} of capacity) for {args.duration:.0f} s, open loop:"
            f" {counts['ok']} requests ok, {counts['errors']} errors, {counts['late']} sent late;"
            f" {end - start:,} changes ({(end - start) / args.duration:,.0f}/s)"
            + ("" if drained else "; NOT drained within 60 s")
        )
        print(
            f"hub: {(cpu_seconds(proc.pid) - hub_cpu) / wall:.2f} cores busy;"
            f" the whole machine (every process, every core): {(machine_busy() - busy) / wall:.2f} cores busy"
        )
        print(f"{'dest':<8} {'delivered':>9} {'p50 s':>8} {'p99 s':>8} {'max s':>8}   p99/{TARGET_P99_S:.0f}s")
        for name in names:
            print(lags[name].row())
        step = args.duration / 5
        for name in names:
            print(f"{lags[name].name} p99 by {step:.0f} s of driven load: {lags[name].trend(driven_at, step)}")
    finally:
        hub.stop()
        try:
            await js.delete_stream(stream)
        finally:
            await nc.close()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--role":
        serve(sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of driven load (default 20)")
    parser.add_argument("--quick", action="store_true", help="8 s of driven load, 3 s of capacity")
    parser.add_argument("--capacity-s", type=float, default=6.0, help="seconds of the capacity run")
    parser.add_argument("--load", type=float, default=0.5, help="driven rate, as a share of capacity")
    parser.add_argument("--rate", type=float, help="driven rate in events/s (default: --load of the capacity)")
    parser.add_argument("--clients", type=int, default=4, help="requests in flight in the capacity run")
    parser.add_argument("--batch-size", type=int, help="both destinations' batch_size (default: the hub's, 100)")
    parser.add_argument("--customers", type=int, default=10_000, help="size of the customer (email) pool")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.capacity_s = 8.0, 3.0
    with tempfile.TemporaryDirectory(prefix="prm-lag-") as tmp:
        asyncio.run(measure(args, Path(tmp)))


if __name__ == "__main__":
    main()
