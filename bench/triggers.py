#!/usr/bin/env python
"""What triggers cost ingest, and how soon a trigger fires after its change.

    python bench/triggers.py            # 3 rounds of 8 s per side, then 15 s driven
    python bench/triggers.py --quick    # 2 rounds of 3 s, then 6 s driven

In one process, as ``prm serve`` runs it (the engine shares the hub's event loop and its
SQLite writer with ingest), on fresh SQLite files in a temporary directory:

1. **ingest, side by side**: the same web mix as ``bench/ingest.py`` (page and product views,
   carts, orders with revenue, by ``--customers`` known customers), 100 events per
   ``Hub.record`` call, ``--clients`` calls in flight, into a hub with no trigger and into a
   hub with ``--triggers`` triggers (on ``event.recorded`` and ``customer.updated``, conditions
   over the change and the customer's facts; a tenth of the changes match one, each match a run
   written and later acted on), alternating per round. Printed: events/s of each, medians, and
   the median of each round's ratio (the two sides of a round run back to back, so the ratio
   drifts less than the machine's load) next to the target (triggers cost at most 10%); and the
   process's CPU time per event of each side (every thread's: the engine's reads and ingest's
   writer included), less sensitive to other work on the machine than events/s.
2. **change to firing**: the hub with triggers, driven open loop at ``--load`` (half) of the
   rate it reached, one call of 100 events on a fixed schedule; one event in each call is a
   ``bench.ping`` a trigger without delay answers with a message (to an in-process sender).
   Per fired run: the time from its change's ``at`` (the recording transaction) to the act.
   Printed: p50, p99 and max, p99 next to the 1 s target.

Timing is never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prm_core import hookimpl
from prm_core.config import Config
from prm_core.hub import Hub
from prm_core.logs import configure_logging
from prm_core.model import TouchPoint
from prm_core.triggers import MessageResult

TARGET_OVERHEAD = 0.10  # triggers may cost ingest this share of its rate at most
TARGET_P99_S = 1.0  # change to firing, at half capacity
BATCH = 100


class Sender:
    """An email touch point sending into a counter: the act's own cost, no network."""

    def __init__(self) -> None:
        self.sent = 0

    @hookimpl
    def prm_touchpoints(self, config: Any) -> list[TouchPoint]:
        return [TouchPoint(name="email", channel="email", budget_ms=1000)]

    @hookimpl
    def prm_send_message(self, message: Any) -> MessageResult | None:
        if message.channel != "email":
            return None
        self.sent += 1
        return MessageResult("sent", ref=str(self.sent))


def triggers(n: int) -> dict[str, Any]:
    """``n`` triggers like an operator's: a few kinds, each matching a part of the changes."""
    kinds: list[dict[str, Any]] = [
        {
            "on": "event.recorded",
            "when": "change['type'] == 'cart' and lifetime_revenue >= {x}",
            "delay": "30m",
            "unless": ["order.completed"],
            "action": {"kind": "message", "channel": "email", "template": "Your cart, $first_name"},
        },
        {
            "on": "customer.updated",
            "when": "change['tier'] == 'platinum' and purchases >= {x}",
            "purpose": "transactional",
            "action": {"kind": "message", "channel": "email", "template": "Welcome"},
        },
        {
            "on": "event.recorded",
            "when": "change['type'] == 'order.completed' and churn_risk >= 0.{x}",
            "cooldown": "30d",
            "action": {"kind": "offer", "code": "winback", "touchpoint": "web"},
        },
        {
            # not a plain conjunction: the rules engine itself evaluates it, for every cart
            "on": "event.recorded",
            "when": "change['type'] == 'cart' and (traits['vip'] == true or lifetime_revenue >= {x}00)",
            "action": {"kind": "offer", "code": "vip", "touchpoint": "web"},
        },
        {
            "on": "event.recorded",
            "when": "change['type'] == 'product' and traits['vip'] == true and purchases >= {x}",
            "action": {"kind": "offer", "code": "vip-product", "touchpoint": "web"},
        },
    ]
    found: dict[str, Any] = {}
    for i in range(n):
        kind = dict(kinds[i % len(kinds)])
        kind["when"] = str(kind["when"]).format(x=i)
        found[f"t{i}"] = kind
    return found


PING = {
    "on": "event.recorded",
    "when": "change['type'] == 'bench.ping'",
    "purpose": "transactional",
    "action": {"kind": "message", "channel": "email", "template": "pong"},
}


def config(path: Path, n: int, ping: bool = False) -> Config:
    section: dict[str, Any] = {"quiet_hours": "none", "frequency_cap": 1000, **triggers(n)}
    if ping:
        section["ping"] = PING
    raw = {"triggers": section, "tiers": {"rules": {"platinum": "lifetime_revenue >= 2000"}}}
    return Config(database_url=f"sqlite:///{path}", public_url="http://bench.test", raw=raw)


class Mix:
    """The web mix of bench/ingest.py, by known customers (so identities repeat)."""

    def __init__(self, customers: int, seed: int) -> None:
        self.customers = customers
        self.rng = random.Random(seed)
        self.n = 0

    def batch(self, ping: bool = False) -> dict[str, Any]:
        now = datetime.now(UTC).isoformat()
        events = []
        for i in range(BATCH):
            self.n += 1
            email = f"c{self.rng.randrange(self.customers)}@example.com"
            roll = self.rng.random()
            kind = "page"
            data: dict[str, Any] = {"url": "/"}
            if roll < 0.2:
                kind, data = "product", {"product_id": f"p{self.rng.randrange(50)}"}
            elif roll < 0.3:
                kind, data = "cart", {"items": 1}
            elif roll < 0.4:
                kind, data = "order.completed", {"revenue": str(self.rng.randrange(20, 400)), "currency": "USD"}
            if ping and i == 0:
                kind, data = "bench.ping", {}
            events.append(
                {"id": f"e{self.n}", "type": kind, "occurred_at": now, "identities": {"email": email}, "data": data}
            )
        return {"events": events}


async def ingest(hub: Hub, mix: Mix, seconds: float, clients: int) -> float:
    """Events/s recorded by ``clients`` callers, each one call in flight, for ``seconds``."""
    done = 0
    stop = time.monotonic() + seconds

    async def client() -> None:
        nonlocal done
        while time.monotonic() < stop:
            await hub.record(hub.parse_events(mix.batch(), "web"))
            done += BATCH

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    return done / (time.monotonic() - started)


async def side(tmp: Path, name: str, n: int, mix: Mix, seconds: float, clients: int) -> tuple[float, float]:
    """Events/s, and CPU seconds of this process per event, while ``seconds`` are measured."""
    async with Hub.open(config(tmp / f"{name}.db", n), plugins=[Sender()], autoload=True) as hub:
        await ingest(hub, mix, 1.0, clients)  # warm-up: customers known, statements prepared
        cpu, started = time.process_time(), time.monotonic()
        rate = await ingest(hub, mix, seconds, clients)
        events = rate * (time.monotonic() - started)
        return rate, (time.process_time() - cpu) / events


async def driven(tmp: Path, n: int, rate: float, seconds: float, customers: int) -> list[float]:
    """Open loop at ``rate`` events/s; the seconds from each ping's change to its act."""
    sender = Sender()
    mix = Mix(customers, 7)
    async with Hub.open(config(tmp / "driven.db", n, ping=True), plugins=[sender], autoload=True) as hub:
        await ingest(hub, mix, 1.0, 4)
        hub.triggers.latencies.clear()
        interval = BATCH / rate
        start = time.monotonic()
        calls: list[asyncio.Task[Any]] = []
        k = 0
        while time.monotonic() - start < seconds:
            due = start + k * interval
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            calls.append(asyncio.ensure_future(hub.record(hub.parse_events(mix.batch(ping=True), "web"))))
            k += 1
        await asyncio.gather(*calls)
        for _ in range(200):  # the last pings' acts, a moment after their calls were answered
            if len(hub.triggers.latencies) >= k:
                break
            await asyncio.sleep(0.05)
        return list(hub.triggers.latencies)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--triggers", type=int, default=10, help="triggers in the hub with triggers (10)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured per side and round")
    parser.add_argument("--driven", type=float, default=15.0, help="seconds of the driven phase")
    parser.add_argument("--clients", type=int, default=8, help="Hub.record calls in flight")
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--load", type=float, default=0.5, help="share of the measured rate driven (0.5)")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3 s, 6 s driven")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration, args.driven = 2, 3.0, 6.0
    configure_logging("warning")
    rates: dict[str, list[float]] = {"none": [], "triggers": []}
    cpus: dict[str, list[float]] = {"none": [], "triggers": []}
    with tempfile.TemporaryDirectory(prefix="prm-bench-triggers-") as tmp:
        root = Path(tmp)
        for r in range(args.rounds):
            order = ("none", "triggers") if r % 2 == 0 else ("triggers", "none")
            for which in order:
                n = args.triggers if which == "triggers" else 0
                rate, cpu = await side(root, f"{which}-{r}", n, Mix(args.customers, r), args.duration, args.clients)
                rates[which].append(rate)
                cpus[which].append(cpu)
                print(f"round {r + 1}  {which:<8}  {rate:9.0f} events/s  {cpu * 1e6:5.0f} CPU-us/event", flush=True)
        none, with_triggers = statistics.median(rates["none"]), statistics.median(rates["triggers"])
        # each round's two sides ran back to back: their ratio drifts less than the machine's load
        paired = statistics.median(t / n for t, n in zip(rates["triggers"], rates["none"], strict=True))
        overhead = 1 - paired
        cpu_ratio = statistics.median(t / n for t, n in zip(cpus["triggers"], cpus["none"], strict=True))
        driven_rate = with_triggers * args.load
        latencies = await driven(root, args.triggers, driven_rate, args.driven, args.customers)
    met = "met" if overhead <= TARGET_OVERHEAD else "NOT met"
    print()
    print(f"ingest, no trigger:        {none:9.0f} events/s (median of {args.rounds})")
    print(f"ingest, {args.triggers} triggers:      {with_triggers:9.0f} events/s (median of {args.rounds})")
    print(f"overhead:                  {overhead:9.1%}  (median of each round's ratio)")
    print(f"                           (target <= {TARGET_OVERHEAD:.0%}: {met})")
    print(f"CPU per event, triggers / none: {cpu_ratio:.3f} (median of each round's ratio)")
    p50, p99 = pct(latencies, 0.5), pct(latencies, 0.99)
    met = "met" if p99 <= TARGET_P99_S else "NOT met"
    print(f"driven at {driven_rate:.0f} events/s ({args.load:.0%} of capacity), {len(latencies)} pings fired:")
    worst = max(latencies or [0.0])
    print(f"change to firing:          p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {worst * 1000:.0f} ms")
    print(f"                           (target p99 <= {TARGET_P99_S:.0f} s: {met})")


if __name__ == "__main__":
    asyncio.run(main())
