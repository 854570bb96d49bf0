#!/usr/bin/env python
"""Memory under a long steady load: the hub's RSS over a soak, and its slope.

Starts ``prm serve`` on a fresh SQLite file (or a fresh PostgreSQL database), makes a
``touchpoint:web`` key, and drives it with a paced Python client at ``--rate`` requests per
second of ``--batch`` events each (the web mix of ``bench/ingest.py``: known and anonymous
visitors, logins that merge, orders) over ``--customers`` customers, so the store keeps
growing while the process should not. The hub's ``VmRSS`` is sampled every ``--sample``
seconds.

Printed: RSS after start, the peak (``VmHWM``), RSS at the end, and the slope of RSS over the
second half of the run (least squares, MB per minute) next to the slope over the first half
(the warm-up, when caches and pools fill), with targets RSS <= 300 MB and flat (second-half
slope <= 1 MB/min). Timing and memory are never asserted.

Run ``python bench/soak.py`` (10 minutes) or ``python bench/soak.py --minutes 1``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import EventFactory, free_port, proc_status_kb, rfc3339_now

TARGET_RSS_MB = 300.0
TARGET_SLOPE_MB_PER_MIN = 1.0


MAX_IN_FLIGHT = 64


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) points, in MB per minute."""
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


async def drive(url: str, key: str, args: argparse.Namespace, stop_at: float) -> dict[str, int]:
    """Paced load: ``rate`` requests/s spread over a few connections; counts answers."""
    factory = EventFactory("soak", args.customers, seed=7)
    counts = {"ok": 0, "errors": 0, "behind": 0}
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    interval = 1 / args.rate

    async def one(session: aiohttp.ClientSession) -> None:
        try:
            async with session.post(url, data=factory.body(args.batch), headers=headers) as resp:
                await resp.read()
                counts["ok" if resp.status == 200 else "errors"] += 1
        except aiohttp.ClientError:
            counts["errors"] += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as session:
        pending: set[asyncio.Task[None]] = set()
        next_at = time.monotonic()
        while time.monotonic() < stop_at:
            if len(pending) >= MAX_IN_FLIGHT:
                # the hub is behind the rate: skip this tick (counted) rather than queue requests
                # without bound in this client, which would then flood the hub once it catches up
                counts["behind"] += 1
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                continue
            task = asyncio.ensure_future(one(session))
            pending.add(task)
            task.add_done_callback(pending.discard)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.gather(*pending)
    return counts


async def sample(pid: int, every: float, stop_at: float, started: float) -> list[tuple[float, float]]:
    points = []
    while time.monotonic() < stop_at:
        points.append((time.monotonic() - started, proc_status_kb(pid, "VmRSS") / 1024))
        await asyncio.sleep(every)
    return points


def start_hub(database_url: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str, int]:
    """``prm keys create`` then ``prm serve`` on ``database_url``; returns the process, key and port."""
    env = {**os.environ, "PRM_DATABASE_URL": database_url}
    cli = [sys.executable, "-m", "prm_core.cli"]
    made = subprocess.run(
        [*cli, "keys", "create", "--scope", "touchpoint:web"], env=env, capture_output=True, text=True, check=True
    )
    port = free_port()
    with (workdir / "hub.log").open("wb") as log:
        hub = subprocess.Popen(
            [*cli, "serve", "--port", str(port), "--log-level", "warning"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return hub, made.stdout.strip().splitlines()[-1], port


async def soak(args: argparse.Namespace, hub: subprocess.Popen[bytes], key: str, port: int) -> dict[str, Any]:
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(600):
            try:
                async with session.get(base + "/healthz") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
    rss_start = proc_status_kb(hub.pid, "VmRSS") / 1024
    started = time.monotonic()
    stop_at = started + args.minutes * 60
    counts, points = await asyncio.gather(
        drive(base + "/v1/touchpoints/web/events", key, args, stop_at),
        sample(hub.pid, args.sample, stop_at, started),
    )
    half = args.minutes * 30
    return {
        "rss_start_mb": rss_start,
        "rss_peak_mb": proc_status_kb(hub.pid, "VmHWM") / 1024,
        "rss_end_mb": proc_status_kb(hub.pid, "VmRSS") / 1024,
        "slope_first_half_mb_per_min": slope([p for p in points if p[0] < half]),
        "slope_second_half_mb_per_min": slope([p for p in points if p[0] >= half]),
        "requests_ok": counts["ok"],
        "errors": counts["errors"],
        "behind": counts["behind"],
        "events": counts["ok"] * args.batch,
        "minutes": args.minutes,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the soak")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--batch", type=int, default=10, help="events per request")
    parser.add_argument("--customers", type=int, default=50_000, help="size of the customer pool")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--database-url", help="default: a fresh SQLite file in a temporary directory")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="prm-bench-soak-"))
    print(
        f"prm soak benchmark  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  cpus {os.cpu_count()}"
        f"  load avg {os.getloadavg()[0]:.2f}\n{args.minutes:g} min at {args.rate:g} req/s x {args.batch} events"
        f" ({rfc3339_now()})",
        flush=True,
    )
    hub, key, port = start_hub(args.database_url or f"sqlite:///{workdir}/prm.db", workdir)
    try:
        figures = asyncio.run(soak(args, hub, key, port))
    finally:
        hub.terminate()
        hub.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)
    flat = figures["slope_second_half_mb_per_min"] <= TARGET_SLOPE_MB_PER_MIN
    print(
        f"events {figures['events']:,} ({figures['errors']} errors;"
        f" {figures['behind']} requests not sent while {MAX_IN_FLIGHT} were in flight)\n"
        f"RSS after start {figures['rss_start_mb']:.0f} MB, at end {figures['rss_end_mb']:.0f} MB,"
        f" peak {figures['rss_peak_mb']:.0f} MB  target <= {TARGET_RSS_MB:.0f} MB"
        f"  {'met' if figures['rss_peak_mb'] <= TARGET_RSS_MB else 'MISSED'}\n"
        f"slope: first half {figures['slope_first_half_mb_per_min']:+.2f} MB/min (warm-up),"
        f" second half {figures['slope_second_half_mb_per_min']:+.2f} MB/min"
        f"  target <= {TARGET_SLOPE_MB_PER_MIN:g}  {'met' if flat else 'MISSED'}",
        flush=True,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
