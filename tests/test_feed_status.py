"""What ``prm destinations`` shows of each destination, read from the database: configured or
with a cursor, its kind, position, lag (in changes of its types, and in seconds), last error,
last delivery and dead letters."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from prm_core.clock import FrozenClock
from prm_core.config import Config
from prm_core.feed.status import destination_status
from prm_core.hub import Hub
from prm_core.store.tables import dead_letters, destination_cursors

START = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> Iterator[FrozenClock]:
    with FrozenClock(START) as frozen:
        yield frozen


@pytest.fixture
async def hub(clock: FrozenClock, database_url: str) -> AsyncIterator[Hub]:
    async with Hub.open(Config(database_url=database_url), autoload=True) as hub:
        yield hub


async def test_each_destination_configured_or_with_a_cursor(clock: FrozenClock, hub: Hub) -> None:
    events = [
        {
            "id": f"e{i}",
            "type": "page",
            "occurred_at": f"2026-11-23T08:0{i}:00Z",
            "identities": {"email": f"p{i}@x.org"},
        }
        for i in range(3)
    ]
    await hub.record(hub.parse_events({"events": events}, "web"))
    page = await hub.feed.read(None, 1000)
    everything = list(page.changes)
    created = [c.seq for c in everything if c.type == "customer.created"]
    opened = [c.seq for c in everything if c.type == "dialogue.opened"]
    head = everything[-1].seq
    assert len(created) == 3 and opened
    rows = [
        # configured with another kind than its row's, of one type given as a string
        {"name": "lake", "kind": "kept", "position": created[0], "last_error": "ConnectionError: away",
         "last_error_at": START + timedelta(seconds=30), "delivered_at": START + timedelta(seconds=20)},
        {"name": "bus", "kind": "nats", "position": 0},  # of two types, from the start
        {"name": "gone", "kind": "webhook", "position": head},  # no longer configured, caught up
    ]  # fmt: skip
    none = {"last_error": None, "last_error_at": None, "delivered_at": None}
    letters = [{"destination": "lake", "position": p, "type": "customer.created", "reason": "no", "at": START}
               for p in created[:2]]  # fmt: skip
    await hub.store.write(
        lambda conn: (
            conn.execute(destination_cursors.insert(), [{"updated_at": START, **none, **r} for r in rows]),
            conn.execute(dead_letters.insert(), letters),
        )
    )
    clock.advance(seconds=90.26)
    configured: dict[str, Any] = {
        "lake": {"kind": "parquet", "types": "customer.created"},
        "bus": {"kind": "nats", "types": ["customer.created", "dialogue.opened"]},
        "crm": {"kind": "webhook"},  # never run: no cursor
        "nil": {},  # no kind (the hub refuses to start with it): shown all the same
    }
    found = await hub.store.read(lambda conn: destination_status(conn, configured))
    assert [{k: v for k, v in d.items() if k not in ("last_error_at", "delivered_at")} for d in found] == [
        {"name": "bus", "kind": "nats", "configured": True, "position": "0", "head": str(head),
         "lag": {"changes": len(created) + len(opened), "seconds": 90.3}, "last_error": None, "dead_letters": 0},
        {"name": "crm", "kind": "webhook", "configured": True, "position": None, "head": str(head),
         "lag": {"changes": None, "seconds": None}, "last_error": None, "dead_letters": 0},
        {"name": "gone", "kind": "webhook", "configured": False, "position": str(head), "head": str(head),
         "lag": {"changes": 0, "seconds": 0.0}, "last_error": None, "dead_letters": 0},
        {"name": "lake", "kind": "parquet", "configured": True, "position": str(created[0]), "head": str(head),
         "lag": {"changes": 2, "seconds": 90.3}, "last_error": "ConnectionError: away", "dead_letters": 2},
        {"name": "nil", "kind": None, "configured": True, "position": None, "head": str(head),
         "lag": {"changes": None, "seconds": None}, "last_error": None, "dead_letters": 0},
    ]  # fmt: skip
    _bus, crm, gone, lake, _nil = found
    assert {k: crm[k] for k in none} == none and (gone["last_error_at"], gone["delivered_at"]) == (None, None)
    assert lake["last_error_at"].startswith("2026-11-23T09:00:30")
    assert lake["delivered_at"].startswith("2026-11-23T09:00:20")
