"""The knowledge loop of docs/warehouse.md, run as written: the hub's events exported to
Parquet, a propensity model fitted on them outside the hub (DuckDB and numpy), the scores
written back as traits, and a campaign on them answering at the web touch point."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from positions import recorded

from prm_core.config import Config
from prm_core.planning.campaigns import in_control
from prm_core.server.state import HUB
from prm_core.warehouse.export import export

PAGE = Path(__file__).resolve().parent.parent / "docs" / "warehouse.md"
MARKER = "<!-- sample: tested-by tests/test_warehouse_loop.py::test_the_documented_knowledge_loop -->"


def documented_code() -> list[str]:
    """The page's Python blocks this test stands for, in page order."""
    text = PAGE.read_text(encoding="utf-8")
    blocks = re.findall(re.escape(MARKER) + r"\n```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 2, "docs/warehouse.md should show the fit and the campaign"
    return blocks


@pytest.fixture
def hub_config(database_url: str) -> Config:
    raw = {"privacy": {"defaults": {"marketing": True}}, "touchpoints": {"web": {"budget_ms": 5000}}}
    return Config(database_url=database_url, public_url="http://hub.test", raw=raw)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def history(i: int, now: datetime) -> list[dict[str, Any]]:
    """Customer ``u<i>``: 1-6 page views; most of those who viewed four or more bought."""
    pages = 1 + i % 6
    who = {"user_id": f"u{i:02}"}
    evs = [
        {"id": f"p-{i}-{n}", "type": "page", "occurred_at": (now - timedelta(days=3, minutes=n)).isoformat(),
         "identities": who}
        for n in range(pages)
    ]  # fmt: skip
    if (pages >= 4 and i % 5 != 0) or i == 7:
        evs.append({"id": f"o-{i}", "type": "order.completed", "occurred_at": (now - timedelta(days=2)).isoformat(),
                    "identities": who, "data": {"revenue": "40"}})  # fmt: skip
    return evs


async def test_the_documented_knowledge_loop(hub_client, make_key, tmp_path):
    now = datetime.now(UTC)
    web, admin = await make_key("touchpoint:web"), await make_key("admin")
    events = [e for i in range(30) for e in history(i, now)]
    r = await hub_client.post("/v1/touchpoints/web/events", json={"events": events}, headers=auth(web))
    assert r.status == 200
    hub = hub_client.app[HUB]
    await recorded(hub, await r.json())  # the export reads what is recorded
    warehouse = tmp_path / "warehouse"
    await export(hub.config, f"parquet:{warehouse}", progress=False)

    # the page's code, as a data scientist runs it: against the files and the hub's HTTP API
    # (in a thread: it makes blocking calls to the server this event loop runs)
    scope = {"WAREHOUSE": str(warehouse), "HUB": str(hub_client.make_url("")).rstrip("/"), "ADMIN_KEY": admin}
    for code in documented_code():
        await asyncio.to_thread(exec, compile(code, str(PAGE), "exec"), scope)

    scores = {}
    for i in range(30):
        view = await (await hub_client.get(f"/v1/customers/user_id:u{i:02}", headers=auth(admin))).json()
        scores[i] = (view["id"], view["traits"]["propensity"])
    assert 0 <= min(s for _, s in scores.values()) < 0.5 < max(s for _, s in scores.values()) <= 1
    by_pages = {pages: {s for i, (_, s) in scores.items() if 1 + i % 6 == pages} for pages in range(1, 7)}
    assert max(by_pages[1]) < min(by_pages[6])  # more pages viewed, likelier to buy

    # the scores at work: a request at the web touch point
    offered = {}
    for i, (customer_id, score) in scores.items():
        visit = {
            "id": f"visit-{i}",
            "type": "page",
            "occurred_at": now.isoformat(),
            "identities": {"user_id": f"u{i:02}"},
        }
        r = await hub_client.post("/v1/touchpoints/web/requests", json=visit, headers=auth(web))
        answer = await r.json()
        assert r.status == 200 and answer["degraded"] == [], answer
        offered[i] = any(o["code"] == "free-delivery" for o in answer["delivery"]["offers"])
        expected = score >= 0.5 and not in_control("first-order", customer_id, 10)
        assert offered[i] == expected, (i, score)
    assert any(offered.values())

    # the offers made reach the warehouse through the feed on the next export
    await export(hub.config, f"parquet:{warehouse}", progress=False)
    offers = f"read_parquet('{warehouse}/offers/**/*.parquet', hive_partitioning = true)"
    made = duckdb.sql(
        f"SELECT customer_id, code, campaign FROM {offers} WHERE response IS DISTINCT FROM 'held_out'"
        " QUALIFY row_number() OVER (PARTITION BY offer_id ORDER BY position DESC) = 1"
    ).fetchall()
    assert sorted(c for c, code, _ in made if code == "free-delivery") == sorted(
        scores[i][0] for i, shown in offered.items() if shown
    )
    assert {campaign for _, code, campaign in made if code == "free-delivery"} == {"first-order"}
