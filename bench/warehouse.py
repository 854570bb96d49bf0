#!/usr/bin/env python
"""``prm export --to parquet:DIR`` of a store full of events: events/s and the export's peak RSS.

    python bench/warehouse.py                 # 200,000 events (a quick run)
    python bench/warehouse.py --full          # 1,000,000 events
    python bench/warehouse.py --events 300000 --customers 30000

The store is filled directly (customers, their metrics and identities, a dialogue per
customer, events spread over 30 days: a realistic export, not a realistic ingest), then
the export (``prm export``'s function, imports excluded) runs in a process of its own, so its
peak RSS is the export's alone. Printed: events/s by the clock and per CPU-second (the
steadier figure on a shared machine), the process's peak RSS, the Parquet files' size; then
the same export again, which finds nothing new.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prm_core.store.engine import Store  # after the path above

CHUNK = 50_000


async def migrate(url: str) -> None:
    store = Store.open(url)
    try:
        await store.migrate()
    finally:
        await store.dispose()


def fill(path: Path, events: int, customers: int) -> None:
    """Customers and events written straight into the tables, as a long-running hub leaves them."""
    start = datetime(2026, 11, 1, tzinfo=UTC).replace(tzinfo=None)
    at = start.isoformat(sep=" ")
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    with db:
        db.executemany(
            "INSERT INTO customers (id, kind, traits, created_at, updated_at) VALUES (?, 'person', '{}', ?, ?)",
            ((f"cus_{c:026d}", at, at) for c in range(customers)),
        )
        db.executemany(
            "INSERT INTO identities (namespace, value, customer_id, shared, first_seen_at) VALUES (?, ?, ?, 0, ?)",
            (("email", f"user{c}@example.com", f"cus_{c:026d}", at) for c in range(customers)),
        )
        db.executemany(
            "INSERT INTO customer_metrics (customer_id, event_count, order_count, lifetime_revenue, touchpoints,"
            " return_count, revenue_by_currency, categories) VALUES (?, ?, 0, 0, '[\"web\"]', 0, '{}', '{}')",
            ((f"cus_{c:026d}", events // customers) for c in range(customers)),
        )
        db.executemany(
            "INSERT INTO dialogues (id, touchpoint, ref, customer_id, status, opened_at, last_event_at)"
            " VALUES (?, 'web', ?, ?, 'open', ?, ?)",
            ((f"dlg_{c:026d}", f"dlg_{c:026d}", f"cus_{c:026d}", at, at) for c in range(customers)),
        )
    for first in range(0, events, CHUNK):
        rows = []
        for n in range(first, min(first + CHUNK, events)):
            c = n % customers
            when = (start + timedelta(seconds=n * 2_592_000 // events)).isoformat(sep=" ", timespec="microseconds")
            data = json.dumps({"url": f"/products/{n % 500}", "n": n})
            rows.append((f"ev-{n}", when, when, f"cus_{c:026d}", f"dlg_{c:026d}", data))
        with db:
            db.executemany(
                "INSERT INTO events (touchpoint, event_id, type, occurred_at, received_at, customer_id,"
                " ingest_customer_id, dialogue_id, direction, identities, data)"
                " VALUES ('web', ?, 'page', ?, ?, ?, ?3, ?, 'inbound', '[]', ?)",
                [(e, w, r, cu, dl, d) for e, w, r, cu, dl, d in rows],
            )
    db.close()


def child(url: str, target: str, page: str) -> None:
    """The export itself (run as ``--child``): times ``prm export``'s work, imports excluded."""
    from prm_core.config import Config
    from prm_core.warehouse.export import export

    wall, cpu = time.perf_counter(), time.process_time()
    result = asyncio.run(export(Config(database_url=url), f"parquet:{target}", page=int(page), progress=False))
    figures = {
        "seconds": time.perf_counter() - wall,
        "cpu_seconds": time.process_time() - cpu,
        "rows": result.history_rows,
        "changes": result.changes,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(figures))


def export(url: str, target: Path, page: int) -> dict[str, float]:
    """One export in a process of its own, so its peak RSS is the export's alone."""
    done = subprocess.run(
        [sys.executable, __file__, "--child", url, str(target), str(page)], capture_output=True, text=True, check=True
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--full", action="store_true", help="1,000,000 events")
    parser.add_argument("--customers", type=int, default=0, help="default: one per 10 events")
    parser.add_argument("--page", type=int, default=10_000, help="rows per history page (prm export's own)")
    parser.add_argument("--child", nargs=3, metavar=("URL", "DIR", "PAGE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    events = 1_000_000 if args.full else args.events
    customers = args.customers or max(1, events // 10)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "prm.db"
        url = f"sqlite:///{db}"
        asyncio.run(migrate(url))
        started = time.perf_counter()
        fill(db, events, customers)
        print(f"filled {events:,} events, {customers:,} customers in {time.perf_counter() - started:.1f} s")
        target = Path(tmp) / "warehouse"
        f = export(url, target, args.page)
        size = sum(p.stat().st_size for p in target.rglob("*.parquet")) / 1e6
        print(
            f"export: {events:,} events ({f['rows']:,.0f} rows in all) in {f['seconds']:.1f} s:"
            f" {events / f['seconds']:,.0f} events/s, {events / f['cpu_seconds']:,.0f} events per CPU-second"
        )
        print(f"peak RSS of the export process: {f['peak_rss_mb']:.0f} MB; Parquet files: {size:.0f} MB")
        again = export(url, target, args.page)
        print(f"again (nothing new): {again['seconds']:.2f} s, {again['rows']:.0f} rows")


if __name__ == "__main__":
    main()
