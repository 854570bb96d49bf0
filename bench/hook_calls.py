#!/usr/bin/env python
"""What calling plugins through pluggy costs the ingest path, against calling them directly.

The hub calls each plugin's implementation through a pluggy caller of its own
(``PrmPluginManager.callers``), so pluggy's monitoring sees every call. The baseline is the
mechanism that went around pluggy: each implementation's function called straight from
``get_hookimpls()`` (``Direct`` below, a ``Hooks`` whose calls do that), measured in the same
process on the same events::

    python bench/hook_calls.py                    # 2000-event batches, then the notifications alone
    python bench/hook_calls.py --batch 32 --batches 60
    python bench/hook_calls.py --listeners 3      # three more plugins hearing every event

Three hubs, each on a fresh SQLite database with the installed plugins, record the same
batches (``bench/ingest.py``'s web mix), the order rotating batch by batch so a drift of the
machine falls on all of them:

- ``pluggy``: the hub as it is;
- ``direct``: the same, its hooks called around pluggy (the baseline);
- ``no broker``: the hub as it is without the call center's screen-pop broker, which its
  ``prm_hub_started`` now registers for every hub (it used to run with the server only): what
  the broker's ``prm_event_recorded`` adds to a hub used as a library.

Printed: each hub's median events/s and events per CPU-second, the ratios to ``direct`` (median
of per-batch ratios), and then the notifications of one committed batch alone
(``Hooks.batch_committed``: customers created, dialogues opened, events recorded), in ns per
event, through pluggy and directly, and the difference as a share of the CPU a recorded event
takes.
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
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from ingest import EventFactory

import prm_core.hub as hub_module
from prm_core import hookimpl
from prm_core.config import Config
from prm_core.hooks import Hooks, _raise
from prm_core.hub import Hub
from prm_core.recording import BatchOutcome


class Direct(Hooks):
    """The baseline: implementations called straight from ``get_hookimpls()``, around pluggy."""

    def _impls(self, name: str) -> list[Any]:
        impls = getattr(self.pm.hook, name).get_hookimpls()
        return [i for i in reversed(impls) if not (i.wrapper or i.hookwrapper)]

    def has(self, name: str) -> bool:
        return bool(self._impls(name))

    def _notify(self, name: str, **kwargs: Any) -> None:
        for impl in self._impls(name):
            try:
                impl.function(*(kwargs[arg] for arg in impl.argnames))
            except Exception:
                pass

    def _each(self, name: str, *, awaitable: bool = False, **kwargs: Any) -> list[tuple[str, Any]]:
        results: list[tuple[str, Any]] = []
        for impl in self._impls(name):
            try:
                value = impl.function(*(kwargs[arg] for arg in impl.argnames))
            except Exception as exc:
                if awaitable:
                    results.append((impl.plugin_name, _raise(exc)))
                continue
            if value is not None:
                results.append((impl.plugin_name, value))
        return results

    def batch_committed(self, outcome: BatchOutcome) -> None:
        for customer, event in outcome.customers_created:
            self.customer_created(customer, event)
        for merge in outcome.merges:
            self.customers_merged(merge)
        for dialogue, recorded in outcome.dialogues_opened:
            self.dialogue_opened(dialogue, recorded)
        if self.pm.hook.prm_event_recorded.get_hookimpls():
            for recorded in outcome.recorded:
                if not recorded.duplicate:
                    self.event_recorded(recorded)
        for dialogue in outcome.dialogues_closed:
            self.dialogue_closed(dialogue)
        for fulfillment in outcome.fulfillments_updated:
            self.fulfillment_updated(fulfillment)


class Listener:
    """A plugin hearing every event, customer and dialogue, doing the least it can."""

    def __init__(self, n: int) -> None:
        self.__name__ = f"listener-{n}"
        self.heard = 0

    @hookimpl
    def prm_event_recorded(self, recorded: Any) -> None:
        self.heard += 1

    @hookimpl
    def prm_customer_created(self, customer: Any, event: Any) -> None:
        self.heard += 1

    @hookimpl
    def prm_dialogue_opened(self, dialogue: Any, event: Any) -> None:
        self.heard += 1


@contextlib.asynccontextmanager
async def opened(url: str, name: str, plugins: list[Any]) -> Any:
    hooks = hub_module.Hooks
    hub_module.Hooks = Direct if name == "direct" else Hooks  # type: ignore[misc]
    try:
        async with Hub.open(Config(database_url=url), plugins=plugins) as hub:
            hub_module.Hooks = hooks  # type: ignore[misc]
            if name == "no broker":  # as the call center's prm_hub_stopping does
                broker = hub.pm.unregister(name="prm_callcenter.screenpops")
                assert broker is not None, "the call center's broker is not running"
                await broker.stop()
            yield hub
    finally:
        hub_module.Hooks = hooks  # type: ignore[misc]


async def run(args: argparse.Namespace) -> None:
    names = ["pluggy", "direct", "no broker"]
    factory = EventFactory("hooks", args.customers, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        async with contextlib.AsyncExitStack() as stack:
            hubs = {}
            for i, name in enumerate(names):
                plugins = [Listener(n) for n in range(args.listeners)]
                hubs[name] = await stack.enter_async_context(opened(f"sqlite:///{tmp}/{i}.db", name, plugins))
            for name, hub in hubs.items():
                listening = [p for p, _ in hub.pm.callers("prm_event_recorded")]
                print(f"{name:>9}: {type(hub.hooks).__name__}, prm_event_recorded heard by {listening}")
            rates: dict[str, list[float]] = {name: [] for name in names}
            cpu: dict[str, list[float]] = {name: [] for name in names}
            for n in range(args.batches + 1):
                bodies = [json.loads(factory.body(min(100, args.batch))) for _ in range(max(1, args.batch // 100))]
                order = names[n % 3 :] + names[: n % 3]
                for name in order:
                    hub = hubs[name]
                    batch = [ev for body in bodies for ev in hub.parse_events(body, "web")]
                    started, cpu_started = time.perf_counter(), time.process_time()
                    await hub.record(batch)
                    if n:  # the first batch warms up
                        rates[name].append(len(batch) / (time.perf_counter() - started))
                        cpu[name].append(len(batch) / max(time.process_time() - cpu_started, 1e-6))
            # a committed batch's outcome, rebuilt from the pluggy hub's own records, for the micro figures
            outcomes = [await _outcome(hubs["pluggy"], factory, args.batch)]
            print(f"\n{args.batches} batches of {args.batch} events, {args.listeners} extra listener(s):")
            for name in names:
                print(
                    f"{name:>9}: median {statistics.median(rates[name]):,.0f} events/s,"
                    f" per CPU-second {statistics.median(cpu[name]):,.0f}"
                )
            for name in ("pluggy", "no broker"):
                wall = statistics.median(a / b for a, b in zip(rates[name], rates["direct"], strict=True))
                per_cpu = statistics.median(a / b for a, b in zip(cpu[name], cpu["direct"], strict=True))
                print(f"{name} / direct: {wall:.3f} (events/s), {per_cpu:.3f} (events per CPU-second)")
            pluggy_hooks, direct_hooks = hubs["pluggy"].hooks, Direct(hubs["pluggy"].pm)
            print("\nnotifications of one committed batch alone (Hooks.batch_committed), best of 5:")
            for outcome in outcomes:
                events = len(outcome.recorded)
                per = {}
                for label, hooks in (("pluggy", pluggy_hooks), ("direct", direct_hooks)):
                    best = min(_timed(hooks, outcome) for _ in range(5))
                    per[label] = best / events * 1e9
                    print(f"{label:>9}: {per[label]:,.0f} ns per event ({events} events)")
                extra = per["pluggy"] - per["direct"]
                recording = 1e9 / statistics.median(cpu["direct"])  # CPU-ns per event of the direct hub
                print(
                    f"pluggy - direct: {extra:,.0f} ns per event, {extra / recording:.2%} of the CPU"
                    f" a recorded event takes ({recording:,.0f} ns)"
                )


async def _outcome(hub: Hub, factory: EventFactory, size: int) -> BatchOutcome:
    """A batch recorded by ``hub`` and its outcome as the writer hands it to the hooks."""
    seen: list[BatchOutcome] = []
    ingestor = hub.ingestor
    original = ingestor.after_commit

    def kept(outcome: BatchOutcome) -> None:
        seen.append(outcome)
        original(outcome)

    ingestor.after_commit = kept
    try:
        bodies = [json.loads(factory.body(min(100, size))) for _ in range(max(1, size // 100))]
        await hub.record([ev for body in bodies for ev in hub.parse_events(body, "web")])
    finally:
        ingestor.after_commit = original
    merged = BatchOutcome()
    for outcome in seen:
        merged.recorded += outcome.recorded
        merged.customers_created += outcome.customers_created
        merged.dialogues_opened += outcome.dialogues_opened
    return merged


def _timed(hooks: Hooks, outcome: BatchOutcome) -> float:
    started = time.perf_counter()
    hooks.batch_committed(outcome)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2000, help="events per recording transaction")
    parser.add_argument("--batches", type=int, default=12, help="timed batches per hub (after one warm-up batch)")
    parser.add_argument("--listeners", type=int, default=0, help="extra plugins hearing every event")
    parser.add_argument("--customers", type=int, default=10_000, help="size of the customer (email) pool")
    parser.add_argument("--seed", type=int, default=1)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
