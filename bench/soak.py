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

``--journal`` runs the hub with ``[ingest] journal = true``: the events are acknowledged once
journaled and recorded behind by the processor, in the hub process or, with ``--processors
1``, in a ``prm process`` child (``prm serve --processors``), whose RSS is sampled and reported
the same way. The journal's depth and the processor's lag (``/healthz``) are printed at the end.

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


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (the journal processors of ``prm serve --processors``)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    try:
        return proc_status_kb(pid, field) / 1024
    except (OSError, ValueError):
        return 0.0


async def sample(
    pid: int, every: float, stop_at: float, started: float
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """``(hub, processors)``: each sample's seconds and RSS (the processors' summed)."""
    hub_points, processor_points = [], []
    while time.monotonic() < stop_at:
        at = time.monotonic() - started
        hub_points.append((at, rss_mb(pid)))
        kids = children(pid)
        if kids:
            processor_points.append((at, sum(rss_mb(k) for k in kids)))
        await asyncio.sleep(every)
    return hub_points, processor_points


def start_hub(
    database_url: str, workdir: Path, *, journal: bool = False, processors: int = 0
) -> tuple[subprocess.Popen[bytes], str, int]:
    """``prm keys create`` then ``prm serve`` on ``database_url``; returns the process, key and port."""
    config = workdir / "prm.toml"
    config.write_text(f"[ingest]\njournal = {'true' if journal else 'false'}\n")
    env = {**os.environ, "PRM_DATABASE_URL": database_url, "PRM_CONFIG": str(config)}
    cli = [sys.executable, "-m", "prm_core.cli"]
    made = subprocess.run(
        [*cli, "keys", "create", "--scope", "touchpoint:web"], env=env, capture_output=True, text=True, check=True
    )
    port = free_port()
    with (workdir / "hub.log").open("wb") as log:
        hub = subprocess.Popen(
            [*cli, "serve", "--port", str(port), "--log-level", "warning", "--processors", str(processors)],
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
    counts, (points, processor_points) = await asyncio.gather(
        drive(base + "/v1/touchpoints/web/events", key, args, stop_at),
        sample(hub.pid, args.sample, stop_at, started),
    )
    half = args.minutes * 30
    kids = children(hub.pid)
    async with aiohttp.ClientSession() as session, session.get(base + "/healthz") as resp:
        health = await resp.json()
    return {
        "rss_start_mb": rss_start,
        "rss_peak_mb": rss_mb(hub.pid, "VmHWM"),
        "rss_end_mb": rss_mb(hub.pid),
        "slope_first_half_mb_per_min": slope([p for p in points if p[0] < half]),
        "slope_second_half_mb_per_min": slope([p for p in points if p[0] >= half]),
        "processors": len(kids),
        "processor_rss_start_mb": processor_points[0][1] if processor_points else None,
        "processor_rss_peak_mb": sum(rss_mb(k, "VmHWM") for k in kids) if kids else None,
        "processor_rss_end_mb": sum(rss_mb(k) for k in kids) if kids else None,
        "processor_slope_second_half_mb_per_min": slope([p for p in processor_points if p[0] >= half]),
        "journal": health.get("journal"),
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
    parser.add_argument("--journal", action="store_true", help="run the hub with [ingest] journal = true")
    parser.add_argument(
        "--processors", type=int, default=0, help="with --journal: prm serve --processors (0: in the hub process)"
    )
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="prm-bench-soak-"))
    print(
        f"prm soak benchmark  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  cpus {os.cpu_count()}"
        f"  load avg {os.getloadavg()[0]:.2f}\n{args.minutes:g} min at {args.rate:g} req/s x {args.batch} events"
        f" ({rfc3339_now()})" + (f"  journal on, processors {args.processors}" if args.journal else ""),
        flush=True,
    )
    database_url = args.database_url or f"sqlite:///{workdir}/prm.db"
    hub, key, port = start_hub(database_url, workdir, journal=args.journal, processors=args.processors)
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
    if figures["processors"]:
        peak = figures["processor_rss_peak_mb"]
        print(
            f"processor{'s' if figures['processors'] > 1 else ''}: RSS after start"
            f" {figures['processor_rss_start_mb']:.0f} MB, at end {figures['processor_rss_end_mb']:.0f} MB,"
            f" peak {peak:.0f} MB  target <= {TARGET_RSS_MB:.0f} MB  {'met' if peak <= TARGET_RSS_MB else 'MISSED'};"
            f" slope second half {figures['processor_slope_second_half_mb_per_min']:+.2f} MB/min",
            flush=True,
        )
    if figures["journal"]:
        j = figures["journal"]
        print(f"journal at the end: depth {j['depth']:,}, lag {j['lag_s']:.1f} s, head {j['head']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
