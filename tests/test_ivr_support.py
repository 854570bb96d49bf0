"""Shared pieces of the IVR tests (no tests of its own): a field-service plugin filling the view's ``fulfillments``
(as the partner area will), a known caller set up through the web, and store counts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from prm_core import hookimpl
from prm_core.hub import Hub
from prm_core.model import Identity
from prm_core.store.tables import dialogues, events

ANN_PHONE = "+14155550100"
ANN_WEB_PHONE = "(415) 555-0100"  # how she typed it on the web portal


def window() -> tuple[datetime, datetime]:
    """A technician window tomorrow morning, US Pacific time, as a partner would state it."""
    day = (datetime.now(UTC) + timedelta(days=1)).date()
    start = datetime(day.year, day.month, day.day, 17, tzinfo=UTC)  # 9:00 at -08:00
    return start.astimezone(_PST), (start + timedelta(hours=2)).astimezone(_PST)


_PST = datetime.fromisoformat("2026-01-01T00:00:00-08:00").tzinfo


class FieldService:
    """``prm_enrich_view``: Ann has a confirmed technician visit (the shape of the view's fulfillments section)."""

    __name__ = "test-field-service"

    def __init__(self, *, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.start, self.end = window()

    @hookimpl
    def prm_enrich_view(self, view):
        if Identity("phone", ANN_PHONE) not in view.identities:
            return None
        return self._sections()

    async def _sections(self) -> dict[str, Any]:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return {
            "fulfillments": [
                {
                    "id": "ful_1",
                    "partner": "fieldservice",
                    "role": "field_service",
                    "action": "schedule",
                    "status": "confirmed",
                    "dialogue_id": None,
                    "requested_at": "2026-11-20T10:00:00Z",
                    "updated_at": "2026-11-20T10:00:05Z",
                    "data": {"window_start": self.start.isoformat(), "window_end": self.end.isoformat()},
                }
            ]
        }


async def known_on_the_web(hub: Hub, *, tier: str | None = "platinum") -> str:
    """Ann identified on the web portal with her phone as she types it; made platinum by hand."""
    (event,) = hub.parse_events(
        {
            "id": "web-identify-1",
            "type": "identify",
            "occurred_at": "2026-11-20T09:00:00Z",
            "identities": {"email": "ann@example.com", "phone": ANN_WEB_PHONE},
        },
        "web",
    )
    (recorded,) = await hub.record([event])
    await hub.update_customer(recorded.customer_id, {"traits": {"first_name": "Ann", "last_name": "Lee"}, "tier": tier})
    return recorded.customer_id


async def ivr_events(hub: Hub, dialogue_ref: str | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    """``(event_id, type, data)`` of the IVR touch point, in recording order."""
    e, d = events.c, dialogues.c

    def read(conn: Any) -> list[tuple[str, str, dict[str, Any]]]:
        q = sa.select(e.event_id, e.type, e.data).where(e.touchpoint == "ivr").order_by(e.seq)
        if dialogue_ref is not None:
            q = q.join(dialogues, d.id == e.dialogue_id).where(d.ref == dialogue_ref)
        return [(r.event_id, r.type, dict(r.data)) for r in conn.execute(q)]

    return await hub.store.read(read)


async def dialogue_of(hub: Hub, ref: str) -> Any:
    d = dialogues.c
    return await hub.store.read(
        lambda conn: conn.execute(sa.select(dialogues).where(d.touchpoint == "ivr", d.ref == ref)).one_or_none()
    )


async def count_all_events(hub: Hub) -> int:
    return await hub.store.read(lambda conn: conn.execute(sa.select(sa.func.count()).select_from(events)).scalar_one())
