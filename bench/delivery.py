#!/usr/bin/env python
"""Value-delivery overhead: answering a request next to only recording the same event.

One in-process hub on a fresh SQLite file (every installed plugin, plus a value provider and
an offer hook that answer at once, so the concurrent machinery is exercised, not waited on)
takes, in interleaved blocks so both see the same machine noise:

- ``Hub.record([event])``: the event made durable, its customer resolved, its dialogue threaded;
- ``Hub.request(event)``: the same, then the view, the value provider, the offers, rendering,
  and the answer recorded as the dialogue's outbound event: what a touch point waits for.

Printed: p50/p99 of each, the overhead (request minus record, at p50 and p99) and the ratio,
and the share of the web budget (250 ms) the overhead takes. Never asserted.

Run ``python bench/delivery.py`` (about a minute) or ``--requests 300``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prm_core import hookimpl
from prm_core.config import Config
from prm_core.hub import Hub
from prm_core.model import Event, Identity, Offer, ValueProvider, ValueRequest


class Instant:
    """A value provider and an offer hook that answer at once."""

    @hookimpl
    def prm_value_providers(self, config: Config) -> list[ValueProvider]:
        async def provide(request: ValueRequest) -> Mapping[str, Any]:
            return {"segment": "bench"}

        return [ValueProvider(name="instant", about="business", provide=provide)]

    @hookimpl
    def prm_propose_offers(self, request: ValueRequest) -> list[Offer]:
        return [Offer(code="bench", title="Bench offer", score=1.0)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(3)
    workdir = Path(tempfile.mkdtemp(prefix="prm-bench-delivery-"))
    config = Config(database_url=f"sqlite:///{workdir}/prm.db")
    timings: dict[str, list[float]] = {"record": [], "request": []}
    n = 0

    def event(kind: str) -> Event:
        nonlocal n
        n += 1
        who = rng.randrange(args.customers)
        return Event(
            id=f"{kind}-{n}",
            type="product.viewed",
            occurred_at=datetime.now(UTC),
            touchpoint="web",
            identities=(Identity("email", f"c{who}@example.com"),),
            data={"product_id": f"p{who % 50}"},
        )

    async with Hub.open(config, plugins=[Instant()], autoload=True) as hub:
        for _ in range(args.warmup):
            await hub.request(event("warm"))
        for _ in range(max(1, args.requests // args.block)):
            for kind in ("record", "request"):
                for _ in range(args.block):
                    ev = event(kind)
                    t0 = time.perf_counter()
                    if kind == "record":
                        await hub.record([ev])
                    else:
                        answer = await hub.request(ev)
                        assert not answer.delivery.degraded, answer.delivery.degraded
                    timings[kind].append((time.perf_counter() - t0) * 1000)
    out: dict[str, Any] = {}
    for kind, values in timings.items():
        out[f"{kind}_p50_ms"] = percentile(values, 50)
        out[f"{kind}_p99_ms"] = percentile(values, 99)
    out["overhead_p50_ms"] = out["request_p50_ms"] - out["record_p50_ms"]
    out["overhead_p99_ms"] = out["request_p99_ms"] - out["record_p99_ms"]
    out["ratio_p50"] = out["request_p50_ms"] / out["record_p50_ms"]
    out["samples"] = len(timings["request"])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=2000, help="timed requests (and as many records)")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--block", type=int, default=100, help="calls of one kind before switching")
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    print(
        f"prm value-delivery benchmark  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  cpus {os.cpu_count()}"
        f"  load avg {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    f = asyncio.run(run(args))
    print(
        f"record   p50 {f['record_p50_ms']:6.2f} ms  p99 {f['record_p99_ms']:6.2f} ms\n"
        f"request  p50 {f['request_p50_ms']:6.2f} ms  p99 {f['request_p99_ms']:6.2f} ms\n"
        f"overhead p50 {f['overhead_p50_ms']:6.2f} ms  p99 {f['overhead_p99_ms']:6.2f} ms"
        f"  (request / record at p50: {f['ratio_p50']:.2f}; p99 overhead is"
        f" {f['overhead_p99_ms'] / 250:.1%} of the web budget)",
        flush=True,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(f, indent=2) + "\n")


if __name__ == "__main__":
    main()
