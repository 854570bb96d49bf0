"""POS answer time: ``POST /v1/touchpoints/pos/transactions`` against its budget.

Starts the hub (every installed plugin, plus one offer plugin so receipts carry offers that
are rendered and recorded) on a temporary SQLite database, and sends transactions one at a
time from an aiohttp client, as a till does. The baseline, measured in the same run, is the
same transaction sent as a plain event to ``POST /v1/touchpoints/pos/events`` (record only,
no value delivery). Prints medians and 95th percentiles, the ratio of the two, and the p95
as a share of the POS budget. Asserts nothing.

    python bench/pos.py            # 300 transactions per phase
    python bench/pos.py --count 50
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from prm_core import hookimpl
from prm_core.config import Config
from prm_core.keys import create_key
from prm_core.logs import configure_logging
from prm_core.model import Offer
from prm_core.server.app import create_app
from prm_core.server.state import HUB


class Accessories:
    __name__ = "bench-accessories"

    @hookimpl
    def prm_propose_offers(self, request: Any) -> list[Offer]:
        return [Offer(code="DET-10", title="10% off detergent", description="On your next visit.", score=0.5)]


def transaction(n: int) -> dict[str, Any]:
    return {
        "store_id": "S1",
        "workstation_id": "W1",
        "sequence_number": n,
        "business_day": "2026-11-23",
        "currency": "EUR",
        "line_items": [
            {
                "item_id": "WM-300",
                "category": "washers",
                "quantity": 1,
                "unit_price": "499.00",
                "extended_amount": "499.00",
            }
        ],
        "tax": "99.80",
        "total": "598.80",
        "tenders": [{"type": "card", "amount": "598.80"}],
        "customer_ref": {"loyalty_card": f"LC-{n % 500}"},
    }


def event(n: int) -> dict[str, Any]:
    return {
        "id": f"baseline-{n}",
        "type": "pos.sale",
        "occurred_at": "2026-11-23T10:00:00Z",
        "identities": {"loyalty_card": f"LC-{n % 500}"},
        "data": {"revenue": "499.00", "currency": "EUR"},
    }


def summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[max(0, int(len(ordered) * 0.95) - 1)]


async def main(count: int) -> None:
    configure_logging("warning")
    with tempfile.TemporaryDirectory() as tmp:
        # the baseline records its event before the answer, as the transaction does: no journal
        config = Config(database_url=f"sqlite:///{Path(tmp)}/prm.db", raw={"ingest": {"journal": False}})
        app = create_app(config, plugins=[Accessories()], owns_process=True)  # as prm serve does
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        key, _ = await create_key(app[HUB].store, "touchpoint:pos")
        budget = app[HUB].touchpoint("pos").budget_ms
        headers = {"Authorization": f"Bearer {key}"}
        base = f"http://127.0.0.1:{port}"
        timings: dict[str, list[float]] = {"events": [], "transactions": []}
        async with aiohttp.ClientSession() as session:
            for n in range(count):
                for phase, path, body in (
                    ("events", "/v1/touchpoints/pos/events", event(n)),
                    ("transactions", "/v1/touchpoints/pos/transactions", transaction(n)),
                ):
                    started = time.perf_counter()
                    async with session.post(base + path, json=body, headers=headers) as resp:
                        await resp.read()
                        assert resp.status == 200, await resp.text()
                    timings[phase].append((time.perf_counter() - started) * 1000)
        await runner.cleanup()
    base_median, base_p95 = summary(timings["events"])
    pos_median, pos_p95 = summary(timings["transactions"])
    print(f"{count} requests per phase, one at a time")
    print(f"baseline  POST /events        median {base_median:7.1f} ms   p95 {base_p95:7.1f} ms")
    print(f"POS       POST /transactions  median {pos_median:7.1f} ms   p95 {pos_p95:7.1f} ms")
    print(f"ratio (POS / baseline)        median {pos_median / base_median:7.2f}      p95 {pos_p95 / base_p95:7.2f}")
    print(f"POS p95 / budget ({budget} ms)     {pos_p95 / budget:7.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=300)
    asyncio.run(main(parser.parse_args().count))
