#!/usr/bin/env python
"""Latency of the 360-degree view on SQLite as the store grows: 10k and 100k customers.

For each size, a database is generated with about ``--events-per-customer`` events per
customer (10 to 30, 20 on average), written straight into the tables of
:mod:`prm_core.store.tables` with SQLAlchemy Core after the hub's own migrations, shaped as
ingest writes them:

- a customer (``person``; some with a name in ``traits``), its identities (an email, for
  some an anonymous id, a phone, a loyalty card);
- web visits of 1 to 6 events (page, product views, sometimes an order with revenue),
  call-center calls keyed by call id (started, a service request, ended with an outcome),
  point-of-sale transactions of one event each; each a dialogue with the intent, status and
  times ingest would give it;
- its ``customer_metrics`` row, consistent with its events.

Events are inserted in time order within chunks of customers, so one customer's events are
scattered over the table as they are after real ingest, not stored side by side. Databases
are cached under ``--cache-dir`` keyed by size, seed and a hash of the schema (tables and
migrations), so reruns skip generation.

Then both hubs are opened (``Hub.open`` with every installed plugin) and ``Hub.view(id)`` is
timed for ``--views`` random customers per size, in interleaved blocks so both sizes see the
same machine noise. The same views are also timed with :func:`prm_core.view.build_view` on a
plain synchronous SQLite connection, which separates the queries from the async plumbing
(reader pool, aiosqlite's thread, greenlets, plugin hooks).

Printed: p50/p90/p99/max per size, the growth of p99 from 10k to 100k, and the targets
(p99 <= 10 ms at 100k, growth <= 1.5x). Timing is never asserted.

Run ``python bench/view.py`` (a few minutes the first time, under a minute once cached) or
``python bench/view.py --quick`` (~30 s; smaller sizes, not comparable with the targets).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import prm_core.store.tables as tables_module
from prm_core.config import Config
from prm_core.hub import Hub
from prm_core.store import Store
from prm_core.store.engine import MIGRATIONS
from prm_core.store.tables import customers, dialogues, events, identities, metrics
from prm_core.view import build_view

GENERATOR_VERSION = "1"  # bump when the generated data changes shape
TARGET_P99_MS = 10.0  # at the largest size
TARGET_GROWTH = 1.5  # p99(largest) / p99(smallest)
CHUNK_CUSTOMERS = 5_000  # customers generated, time-sorted and inserted together
NOW = datetime(2026, 11, 1)  # naive UTC; fixed, so cached databases do not depend on the day
HISTORY_DAYS = 730

FIRST_NAMES = ("Ann", "Bob", "Chen", "Dana", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kofi", "Lena")
LAST_NAMES = ("Smith", "Garcia", "Ng", "Okafor", "Rossi", "Khan", "Berg", "Silva", "Dubois", "Kim")
PRODUCTS = tuple(f"sku-{n}" for n in range(500))
EPOCH = datetime(1970, 1, 1)

# the column order of the generated rows
CUSTOMER_COLUMNS = ("kind", "tier", "tier_source", "traits", "merged_into", "created_at", "updated_at", "id")
IDENTITY_COLUMNS = ("namespace", "value", "customer_id", "shared", "first_seen_at")
DIALOGUE_COLUMNS = (
    "id", "touchpoint", "ref", "customer_id", "status", "intent", "outcome", "opened_at", "last_event_at", "closed_at",
)  # fmt: skip
EVENT_COLUMNS = (
    "touchpoint", "event_id", "type", "occurred_at", "received_at", "customer_id", "ingest_customer_id",
    "dialogue_id", "direction", "identities", "data",
)  # fmt: skip
METRICS_COLUMNS = (
    "customer_id", "event_count", "order_count", "lifetime_revenue", "first_seen_at", "last_seen_at", "touchpoints",
)  # fmt: skip


@dataclass
class Chunk:
    """Rows for one chunk of customers, as tuples in the column orders above."""

    customers: list[tuple[Any, ...]] = field(default_factory=list)
    identities: list[tuple[Any, ...]] = field(default_factory=list)
    dialogues: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    metrics: list[tuple[Any, ...]] = field(default_factory=list)


# ---- data generation --------------------------------------------------------------------------
#
# Rows are built directly in the form SQLAlchemy stores them on SQLite (timestamps as naive-UTC
# "YYYY-MM-DD HH:MM:SS.ffffff" text, JSON as json.dumps text, Numeric as REAL, booleans as 0/1)
# and inserted with the driver's executemany: SQLAlchemy's per-row bind processing would triple
# the generation time. ``check`` reads a customer back through the hub to catch any mismatch.

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]  # 10 bits -> 2 characters


def ts(at: datetime) -> str:
    """A naive-UTC datetime as SQLAlchemy's SQLite ``DATETIME`` stores it."""
    return at.isoformat(sep=" ", timespec="microseconds")


def js(value: Any) -> str:
    """A value as SQLAlchemy's ``JSON`` type stores it on SQLite."""
    return json.dumps(value)


class Generator:
    """Generates customers, identities, dialogues, events and metrics as ingest would have written them."""

    def __init__(self, events_per_customer: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.low = max(1, events_per_customer // 2)
        self.high = events_per_customer * 3 // 2
        self.seq = 0

    def new_id(self, prefix: str, at: datetime) -> str:
        """Like :func:`prm_core.ids.new_id` (48 bits of milliseconds, 80 random bits, Crockford base32),
        but for the time ``at`` and reproducible from the seed."""
        value = (int((at - EPOCH).total_seconds() * 1000) << 80 | self.rng.getrandbits(80)) & ((1 << 130) - 1)
        return prefix + "_" + "".join(_PAIRS[(value >> shift) & 1023] for shift in range(120, -1, -10))

    def chunk(self, first: int, count: int) -> Chunk:
        """Customers ``first`` .. ``first + count - 1``; events sorted by time within the chunk."""
        out = Chunk()
        for n in range(first, first + count):
            self._customer(n, out)
        out.events.sort(key=lambda row: row[EVENT_COLUMNS.index("occurred_at")])
        return out

    def _customer(self, n: int, out: Chunk) -> None:
        rng = self.rng
        created = NOW - timedelta(days=rng.uniform(1, HISTORY_DAYS))
        cid = self.new_id("cus", created)
        traits: dict[str, Any] = {}
        if rng.random() < 0.6:
            traits = {"first_name": rng.choice(FIRST_NAMES), "last_name": rng.choice(LAST_NAMES)}
        idents = [("email", f"user{n}@example.com")]
        if rng.random() < 0.5:
            idents.append(("anonymous_id", f"anon-{n}-0"))
        if rng.random() < 0.25:
            idents.append(("phone", f"+1555{n:07d}"))
        if rng.random() < 0.10:
            idents.append(("loyalty_card", f"LC{n:09d}"))
        for namespace, value in idents:
            out.identities.append((namespace, value, cid, 0, ts(created)))
        email = js([f"email:user{n}@example.com"])

        target = rng.randint(self.low, self.high)
        made: list[tuple[Any, ...]] = []
        times: list[datetime] = []
        revenue, orders, touchpoints = Decimal(0), 0, set()
        while len(made) < target:
            start = created + timedelta(seconds=rng.uniform(0, (NOW - created).total_seconds()))
            kind = rng.random()
            if kind < 0.60:
                visit = self._web_visit(cid, email, start, min(target - len(made), rng.randint(1, 6)), out)
            elif kind < 0.75:
                visit = self._call(cid, email, start, out)
            else:
                visit = self._pos(cid, email, start, out)
            for at, row, amount in visit:
                made.append(row)
                times.append(at)
                touchpoints.add(row[0])
                if amount is not None:
                    revenue += amount
                    orders += 1
        out.customers.append(("person", None, None, js(traits), None, ts(created), ts(max(times)), cid))
        out.metrics.append(
            (cid, len(made), orders, float(revenue), ts(min(times)), ts(max(times)), js(sorted(touchpoints)))
        )
        out.events += made

    def _event(
        self,
        touchpoint: str,
        type_: str,
        at: datetime,
        cid: str,
        did: str,
        ident: str,
        data: dict[str, Any],
    ) -> tuple[datetime, tuple[Any, ...], Decimal | None]:
        """(time, the events row in EVENT_COLUMNS order, revenue or None)."""
        self.seq += 1
        received = at + timedelta(milliseconds=self.rng.randint(20, 2000))
        row = (touchpoint, f"g{self.seq}", type_, ts(at), ts(received), cid, cid, did, "inbound", ident, js(data))
        amount = Decimal(str(data["revenue"])) if "revenue" in data else None
        return at, row, amount

    def _dialogue(
        self,
        out: Chunk,
        did: str,
        touchpoint: str,
        ref: str,
        cid: str,
        opened: datetime,
        last: datetime,
        *,
        intent: str | None,
        outcome: str | None,
        closed: bool,
    ) -> None:
        status = "closed" if closed else "open"
        out.dialogues.append(
            (did, touchpoint, ref, cid, status, intent, outcome, ts(opened), ts(last), ts(last) if closed else None)
        )

    def _web_visit(self, cid: str, email: str, start: datetime, count: int, out: Chunk) -> list[Any]:
        """A web visit: pages and product views, sometimes ending in an order."""
        rng = self.rng
        did = self.new_id("dlg", start)
        made, at, intent = [], start, None
        for i in range(count):
            r = rng.random()
            if i == count - 1 and count > 2 and r < 0.3:
                data: dict[str, Any] = {"order_id": f"o{self.seq}", "revenue": round(rng.uniform(5, 300), 2)}
                made.append(self._event("web", "order.completed", at, cid, did, email, data))
                intent = "sale"
            elif r < 0.6:
                made.append(self._event("web", "page", at, cid, did, email, {"url": f"/p/{rng.randrange(200)}"}))
            else:
                data = {"product_id": rng.choice(PRODUCTS)}
                made.append(self._event("web", "product.viewed", at, cid, did, email, data))
            at += timedelta(seconds=rng.uniform(5, 300))
        # a visit ends by inactivity: the hub closes it when a later event comes, else it stays open
        last = made[-1][0]
        self._dialogue(out, did, "web", did, cid, start, last, intent=intent, outcome=None, closed=at < NOW)
        return made

    def _call(self, cid: str, email: str, start: datetime, out: Chunk) -> list[Any]:
        """A call-center call, keyed by its call id, closed by its outcome."""
        rng = self.rng
        did, ref = self.new_id("dlg", start), f"call-{self.seq}"
        made = [self._event("callcenter", "call.started", start, cid, did, email, {"call_id": ref, "queue": "care"})]
        at = start + timedelta(seconds=rng.uniform(20, 200))
        data = {"call_id": ref, "product_id": rng.choice(PRODUCTS)}
        made.append(self._event("callcenter", "service.request", at, cid, did, email, data))
        outcome = rng.choice(("resolved", "escalated", "callback"))
        at += timedelta(seconds=rng.uniform(30, 600))
        made.append(self._event("callcenter", "call.ended", at, cid, did, email, {"call_id": ref, "outcome": outcome}))
        self._dialogue(out, did, "callcenter", ref, cid, start, at, intent="service", outcome=outcome, closed=True)
        return made

    def _pos(self, cid: str, email: str, start: datetime, out: Chunk) -> list[Any]:
        """A point-of-sale transaction: one event, a dialogue of its own (keyed by the event id)."""
        rng = self.rng
        did = self.new_id("dlg", start)
        data = {"revenue": round(rng.uniform(2, 150), 2), "store": f"s{rng.randrange(40)}"}
        made = [self._event("pos", "transaction", start, cid, did, email, data)]
        ref = made[0][1][1]
        self._dialogue(out, did, "pos", ref, cid, start, start, intent="sale", outcome=None, closed=False)
        return made


def schema_fingerprint() -> str:
    """A hash of what decides the database's shape: tables, migrations, this generator."""
    h = hashlib.sha256(GENERATOR_VERSION.encode())
    for path in [Path(tables_module.__file__), *sorted((MIGRATIONS / "versions").glob("*.py"))]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def generate(path: Path, size: int, events_per_customer: int, seed: int) -> None:
    """Create the database at ``path``: the hub's migrations, then generated rows."""
    url = f"sqlite:///{path}"

    async def migrate() -> None:
        store = Store.open(url)
        try:
            await store.migrate()
        finally:
            await store.dispose()

    asyncio.run(migrate())
    engine = sa.create_engine(url)
    gen = Generator(events_per_customer, seed)
    started = time.monotonic()
    with engine.connect() as conn:
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-262144"):
            conn.exec_driver_sql(f"PRAGMA {pragma}")
        conn.commit()
        plan = (
            (customers, CUSTOMER_COLUMNS, "customers"),
            (identities, IDENTITY_COLUMNS, "identities"),
            (dialogues, DIALOGUE_COLUMNS, "dialogues"),
            (events, EVENT_COLUMNS, "events"),
            (metrics, METRICS_COLUMNS, "metrics"),
        )
        for first in range(0, size, CHUNK_CUSTOMERS):
            rows = gen.chunk(first, min(CHUNK_CUSTOMERS, size - first))
            with conn.begin():
                for table, columns, attr in plan:
                    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
                    conn.exec_driver_sql(sql, getattr(rows, attr))
            if sys.stdout.isatty():
                done = first + len(rows.customers)
                print(f"\r  generated {done:,}/{size:,} customers ({time.monotonic() - started:.0f} s)", end="")
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")  # as the hub leaves it
        conn.commit()
    engine.dispose()
    print(f"\r  generated {size:,} customers in {time.monotonic() - started:.0f} s", flush=True)


def database_for(size: int, events_per_customer: int, seed: int, cache_dir: Path | None, workdir: Path) -> Path:
    """A database of ``size`` customers: from the cache when there, else generated (and cached)."""
    name = f"view-{size}x{events_per_customer}-s{seed}-{schema_fingerprint()}.db"
    target = (cache_dir or workdir) / name
    if target.exists():
        print(f"  {size:,} customers: cached {target}", flush=True)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + f".part{os.getpid()}")
    print(f"  {size:,} customers: generating {target}", flush=True)
    try:
        generate(partial, size, events_per_customer, seed)
        partial.rename(target)
    finally:
        for leftover in (partial, partial.with_name(partial.name + "-wal"), partial.with_name(partial.name + "-shm")):
            leftover.unlink(missing_ok=True)
    return target


# ---- measuring ----------------------------------------------------------------------------------


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy (every core, every process), from ``/proc/stat``."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass
class Noise:
    """Cores used by this process and by everything else while views were timed."""

    own: float = 0.0
    other: float = 0.0


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of an ascending sequence."""
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


@dataclass
class SizeRun:
    """One size's database, open both ways, and its samples (seconds)."""

    size: int
    path: Path
    ids: list[str]
    hub: Hub
    sync_engine: sa.Engine
    rows: dict[str, int]
    hub_samples: list[float] = field(default_factory=list)
    sync_samples: list[float] = field(default_factory=list)

    def summary(self, samples: list[float]) -> dict[str, float]:
        ordered = sorted(samples)
        return {
            "n": len(ordered),
            "p50_ms": 1000 * percentile(ordered, 50),
            "p90_ms": 1000 * percentile(ordered, 90),
            "p99_ms": 1000 * percentile(ordered, 99),
            "max_ms": 1000 * ordered[-1],
            "mean_ms": 1000 * statistics.fmean(ordered),
        }


def count_rows(path: Path) -> dict[str, int]:
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            return {
                t.name: int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
                for t in (customers, identities, dialogues, events)
            }
    finally:
        engine.dispose()


async def check(run: SizeRun) -> None:
    """The generated data reads back as ingest's would: resolvable identities, a full timeline, metrics."""
    n = run.size // 2
    view = await run.hub.view(f"email:user{n}@example.com")
    count = await run.hub.store.read(
        lambda conn: conn.execute(
            sa.select(sa.func.count()).select_from(events).where(events.c.customer_id == view.customer.id)
        ).scalar_one()
    )
    problems = []
    if view.metrics["event_count"] != count:
        problems.append(f"metrics say {view.metrics['event_count']} events, the log has {count}")
    if len(view.timeline) != min(20, count):
        problems.append(f"timeline has {len(view.timeline)} entries for {count} events")
    if not view.dialogues:
        problems.append("no dialogues")
    if problems:
        sys.exit(f"the generated database {run.path} does not read back as expected: {'; '.join(problems)}")


async def time_views(runs: list[SizeRun], views: int, warmup: int, block: int, seed: int) -> Noise:
    """Warm up, then time ``views`` random views per size, alternating sizes every ``block`` views."""
    rng = random.Random(seed)
    for run in runs:
        for _ in range(warmup):
            await run.hub.view(rng.choice(run.ids))
    sync_conns = {run.size: run.sync_engine.connect() for run in runs}
    try:
        for run in runs:
            conn = sync_conns[run.size]
            for _ in range(warmup):
                build_view(conn, rng.choice(run.ids))
            conn.rollback()
        busy0, own0, wall0 = machine_busy(), time.process_time(), time.monotonic()
        done = 0
        while done < views:
            step = min(block, views - done)
            for run in runs:
                picks = [rng.choice(run.ids) for _ in range(step)]
                for cid in picks:
                    started = time.perf_counter()
                    await run.hub.view(cid)
                    run.hub_samples.append(time.perf_counter() - started)
                conn = sync_conns[run.size]
                for cid in picks:
                    started = time.perf_counter()
                    with conn.begin():
                        build_view(conn, cid)
                    run.sync_samples.append(time.perf_counter() - started)
            done += step
        wall, own = time.monotonic() - wall0, time.process_time() - own0
        return Noise(own / wall, max(0.0, machine_busy() - busy0 - own) / wall)
    finally:
        for conn in sync_conns.values():
            conn.close()


async def measure(paths: dict[int, Path], args: argparse.Namespace) -> tuple[list[SizeRun], Noise]:
    """Open every size's database, check it, time the views."""
    runs: list[SizeRun] = []
    opened: list[Any] = []
    try:
        for size, path in paths.items():
            cm = Hub.open(Config(database_url=f"sqlite:///{path}"), autoload=True)
            hub = await cm.__aenter__()
            opened.append(cm)
            ids = await hub.store.read(lambda conn: [r[0] for r in conn.execute(sa.select(customers.c.id))])
            run = SizeRun(size, path, ids, hub, sa.create_engine(f"sqlite:///{path}"), count_rows(path))
            await check(run)
            runs.append(run)
        noise = await time_views(runs, args.views, args.warmup, args.block, args.seed)
    finally:
        for cm in reversed(opened):
            await cm.__aexit__(None, None, None)
        for run in runs:
            run.sync_engine.dispose()
    return runs, noise


def mark(ok: bool) -> str:
    return "met" if ok else "MISSED"


def label(size: int) -> str:
    return f"{size // 1000}k" if size % 1000 == 0 else str(size)


def report(runs: list[SizeRun], noise: Noise, args: argparse.Namespace) -> dict[str, Any]:
    """Print the table and the targets; return the figures."""
    print(
        f"\n{'size':>6} {'customers':>10} {'events':>11} {'db MB':>7}   {'':<22} {'p50':>7} {'p90':>7}"
        f" {'p99':>7} {'max':>7}  (ms, {args.views} views each)"
    )
    figures: dict[str, Any] = {}
    for run in runs:
        db_mb = run.path.stat().st_size / 2**20
        for name, samples in (("Hub.view", run.hub_samples), ("build_view (sync conn)", run.sync_samples)):
            s = run.summary(samples)
            figures.setdefault(label(run.size), {})[name] = s
            head = (
                f"{label(run.size):>6} {run.rows['customers']:>10,} {run.rows['events']:>11,} {db_mb:>7,.0f}"
                if name == "Hub.view"
                else f"{'':>6} {'':>10} {'':>11} {'':>7}"
            )
            print(
                f"{head}   {name:<22} {s['p50_ms']:>7.2f} {s['p90_ms']:>7.2f} {s['p99_ms']:>7.2f} {s['max_ms']:>7.2f}"
            )
    print(
        f"while timing, this process used {noise.own:.0%} of a core and the rest of the machine"
        f" {noise.other:.0%} (noise; {os.cpu_count()} cores)"
    )
    figures["cpu_own"], figures["cpu_other"] = noise.own, noise.other
    small, large = runs[0], runs[-1]
    p99_small = small.summary(small.hub_samples)["p99_ms"]
    p99_large = large.summary(large.hub_samples)["p99_ms"]
    sync_growth = (
        large.summary(large.sync_samples)["p99_ms"] / small.summary(small.sync_samples)["p99_ms"]
        if small.sync_samples
        else float("nan")
    )
    growth = p99_large / p99_small
    quick = " (--quick sizes: not comparable with the targets)" if args.quick else ""
    print(
        f"\nHub.view p99 at {label(large.size)}: {p99_large:.2f} ms   target <= {TARGET_P99_MS:.0f} ms"
        f"   {mark(p99_large <= TARGET_P99_MS)}{quick}\n"
        f"p99 growth {label(small.size)} -> {label(large.size)}: {growth:.2f}x   target <= {TARGET_GROWTH:.1f}x"
        f"   {mark(growth <= TARGET_GROWTH)}   (build_view alone: {sync_growth:.2f}x){quick}"
    )
    figures["growth_p99"] = growth
    figures["growth_p99_build_view"] = sync_growth
    # smallest first, for bench/run.py's table
    figures["sizes"] = [{"customers": r.size, **r.summary(r.hub_samples)} for r in runs]
    return figures


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Latency of Hub.view (the 360-degree view) on SQLite at 10k and 100k customers "
        "(prints, never asserts).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="~30 s smoke run: 2k and 20k customers, 300 views")
    parser.add_argument("--sizes", default="10000,100000", help="customer counts, comma-separated, smallest first")
    parser.add_argument("--events-per-customer", type=int, default=20, help="mean events per customer")
    parser.add_argument("--views", type=int, default=2000, help="timed views per size")
    parser.add_argument("--warmup", type=int, default=200, help="untimed views per size first")
    parser.add_argument("--block", type=int, default=100, help="views per size before switching to the next size")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated data and of the picks")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "prm-bench-view",
        help="where generated databases are kept between runs",
    )
    parser.add_argument("--no-cache", action="store_true", help="generate into a temporary directory, then delete")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.views, args.warmup = "2000,20000", 300, 50
    args.size_list = sorted(int(x) for x in args.sizes.split(",") if x.strip())
    if len(args.size_list) < 2:
        parser.error("--sizes needs at least two sizes")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(
        f"prm view benchmark  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  cpus {os.cpu_count()}"
        f"  load avg {os.getloadavg()[0]:.2f}\n"
        f"sizes {', '.join(f'{s:,}' for s in args.size_list)} customers x ~{args.events_per_customer} events;"
        f" {args.views} timed views per size after {args.warmup} untimed",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="prm-bench-view-"))
    cache_dir: Path | None = None if args.no_cache else args.cache_dir
    try:
        paths = {
            size: database_for(size, args.events_per_customer, args.seed, cache_dir, workdir) for size in args.size_list
        }
        runs, noise = asyncio.run(measure(paths, args))
        figures = report(runs, noise, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        figures["date"] = datetime.now(UTC).isoformat(timespec="seconds")
        figures["cpus"] = os.cpu_count()
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
