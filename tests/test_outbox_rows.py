"""What the outbox's rows tell, read back through the hub: the view's newest requests, the
results of a turn, a request found by any of its references."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prm_core.hub import Hub
from prm_core.model import FulfillmentRequest
from prm_core.outbox import MAX_VIEW_FULFILLMENTS, PlannedEvent, PlannedFulfillment, outbox_rows
from prm_core.store.tables import outbox, utcnow


async def ann(hub: Hub) -> Any:
    body = {"id": "a1", "type": "page", "occurred_at": "2026-11-23T08:00:00Z", "identities": {"email": "ann@x.com"}}
    (recorded,) = await hub.record(hub.parse_events(body, "web"))
    return recorded


async def plant(hub: Hub, who: Any, count: int, **fields: Any) -> list[dict[str, Any]]:
    """``count`` requests of ``who``, one a minute, the last the newest."""
    start = utcnow() - timedelta(hours=1)
    rows = []
    for n in range(count):
        at = start + timedelta(minutes=n)
        request = FulfillmentRequest(f"r-{n}", "fieldservice", "book", who.customer_id, idempotency_key=f"k-{n}")
        turn = PlannedEvent(
            id=f"turn-{n}", type="service.requested", occurred_at=at, touchpoint="web",
            planned=(PlannedFulfillment(request, role="technician"),),
        )  # fmt: skip
        (row,) = outbox_rows(turn, who.customer_id, who.dialogue_id, at)
        rows.append({**row, **fields})
    await hub.store.write(lambda conn: conn.execute(outbox.insert(), rows))
    return rows


async def test_the_view_lists_the_newest_twenty_requests(hub):
    who = await ann(hub)
    await plant(hub, who, MAX_VIEW_FULFILLMENTS + 1)
    assert MAX_VIEW_FULFILLMENTS == 20
    listed = (await hub.view(who.customer_id)).sections["fulfillments"]
    assert [f["id"] for f in listed] == [f"r-{n}" for n in range(20, 0, -1)]  # r-0, the oldest, left out
    assert listed[0] | {"requested_at": None, "updated_at": None} == {
        "id": "r-20", "partner": "fieldservice", "role": "technician", "action": "book", "status": "pending",
        "dialogue_id": who.dialogue_id, "requested_at": None, "updated_at": None, "data": {},
    }  # fmt: skip


async def test_results_of_a_turn_read_completed_work_as_confirmed(hub):
    who = await ann(hub)
    rows = await plant(hub, who, 3)
    states = {
        "r-0": ("completed", {"technician": "T-9"}),
        "r-1": ("rejected", {"why": "no slot"}),
        "r-2": ("pending", {}),
    }
    for row in rows:
        status, result = states[row["request_id"]]
        await hub.store.write(
            lambda conn, i=row["id"], s=status, r=result: conn.execute(
                outbox.update().where(outbox.c.id == i).values(status=s, result=r)
            )
        )
    results = await hub.outbox.results_of("turn-0")
    assert [(r.request_id, r.partner, r.status, dict(r.data)) for r in results] == [
        ("r-0", "fieldservice", "confirmed", {"technician": "T-9"})
    ]
    assert [r.status for r in await hub.outbox.results_of("turn-1")] == ["rejected"]
    assert [r.status for r in await hub.outbox.results_of("turn-2")] == ["pending"]
    assert await hub.outbox.results_of("turn-9") == []


async def test_a_request_is_found_by_its_id_its_key_or_the_partners_reference(hub):
    who = await ann(hub)
    (row,) = await plant(hub, who, 1, partner_ref="FS-77")
    for ref in ("r-0", "k-0", "FS-77"):
        found = await hub.outbox.find("fieldservice", ref)
        assert found is not None and (found.id, found.outbox_id, found.partner_ref) == ("r-0", row["id"], "FS-77")
    assert await hub.outbox.find("supplier", "r-0") is None  # only this partner's requests
    assert await hub.outbox.find("fieldservice", "r-9") is None
