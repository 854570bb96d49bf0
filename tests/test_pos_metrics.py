"""Purchase metrics kept on ingest are exactly those recomputed from the events, whatever
the sales, returns and voids and however they are batched (hypothesis)."""

from __future__ import annotations

import asyncio
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prm_core.config import Config
from prm_core.hub import Hub
from prm_core.merging import recompute_metrics
from prm_core.model import Event, Identity
from prm_core.store.tables import metrics

T0 = datetime(2026, 11, 1, 9, tzinfo=UTC)
CATEGORIES = ["washers", "dryers", "detergents", "accessories", "warranty"]

purchase = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(["sale", "sale", "sale", "return", "void", None]),
        "revenue": st.decimals(min_value=0, max_value=5000, places=2, allow_nan=False, allow_infinity=False),
        "currency": st.sampled_from(["EUR", "USD", "JPY", None]),
        "categories": st.lists(st.sampled_from(CATEGORIES), max_size=3),
        "minutes": st.integers(min_value=0, max_value=10_000),
    }
)


def event(n: int, card: str, p: dict[str, Any]) -> Event:
    data: dict[str, Any] = {
        "revenue": str(-p["revenue"] if p["kind"] in ("return", "void") else p["revenue"]),
        "line_items": [{"item_id": f"i{k}", "category": c} for k, c in enumerate(p["categories"])],
    }
    if p["kind"] is not None:
        data["transaction_type"] = p["kind"]
    if p["currency"] is not None:
        data["currency"] = p["currency"]
    return Event(
        id=f"{card}-{n}",
        type="pos.sale",
        occurred_at=T0 + timedelta(minutes=p["minutes"]),
        touchpoint="pos",
        identities=[Identity("loyalty_card", card)],
        data=data,
    )


def row(hub: Hub) -> Any:
    async def read() -> list[Any]:
        return await hub.store.read(lambda conn: [tuple(r) for r in conn.execute(sa.select(metrics))])

    return read()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(purchases=st.lists(purchase, min_size=1, max_size=12), cuts=st.lists(st.integers(1, 12), max_size=4))
def test_metrics_on_ingest_equal_a_recount(purchases, cuts):
    events = [event(n, "LC-1", p) for n, p in enumerate(purchases)]
    batches, start = [], 0
    for cut in sorted(set(cuts)):
        if start < cut < len(events):
            batches.append(events[start:cut])
            start = cut
    batches.append(events[start:])

    async def main(directory: str) -> tuple[Any, Any]:
        async with Hub.open(Config(database_url=f"sqlite:///{Path(directory) / 'prm.db'}"), autoload=True) as hub:
            for batch in batches:
                await hub.record(batch)
            kept = await row(hub)
            customer = kept[0][0]
            await hub.store.write(lambda conn: recompute_metrics(conn, [customer]))
            return kept, await row(hub)

    with tempfile.TemporaryDirectory() as directory:
        kept, recounted = asyncio.run(main(directory))
    assert kept == recounted
