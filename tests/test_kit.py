"""The fixtures prm_core.testing offers plugin authors."""

from __future__ import annotations

from datetime import timedelta

from prm_core.model import Event


def page(n: int, at, **identities) -> Event:
    return Event(id=f"p{n}", type="page", occurred_at=at, touchpoint="web", identities=identities)


async def test_hook_recorder_sees_calls_after_start(hub, hook_recorder, frozen_clock):
    from prm_core.identity import normalize_identities

    ids = normalize_identities({"email": "ann@example.com"}, hub.registrations.namespaces.items, "US")
    await hub.record([page(1, frozen_clock.now)])
    await hub.record([Event(id="p2", type="page", occurred_at=frozen_clock.now, touchpoint="web", identities=ids)])
    created = hook_recorder.getcalls("prm_customer_created")
    assert len(created) == 2
    assert created[1].event.id == "p2"
    recorded = hook_recorder.getcalls("prm_event_recorded")
    assert [c.recorded.event.id for c in recorded] == ["p1", "p2"]
    assert hook_recorder.getcalls("prm_touchpoints") == []  # registration happened before


async def test_frozen_clock_stamps_what_the_hub_records(hub, frozen_clock):
    from prm_core.identity import normalize_identities

    ids = normalize_identities({"email": "ann@example.com"}, hub.registrations.namespaces.items, "US")
    start = frozen_clock.now
    await hub.record([Event(id="a", type="page", occurred_at=start, touchpoint="web", identities=ids)])
    frozen_clock.advance(minutes=31)
    await hub.record([Event(id="b", type="page", occurred_at=frozen_clock.now, touchpoint="web", identities=ids)])
    view = await hub.view("email:ann@example.com")
    assert view.customer.created_at == start
    # 31 minutes apart on the web: two visits, two dialogues
    assert len(view.dialogues) == 2
    assert view.metrics["last_seen_at"] - view.metrics["first_seen_at"] == timedelta(minutes=31)


async def test_log_capture_sees_redacted_logs(hub_client, make_key, log_capture):
    key = await make_key("touchpoint:web")
    await hub_client.post(
        "/v1/touchpoints/web/events",
        json={"id": "x", "type": "page", "occurred_at": "2026-01-01T09:00:00Z", "identities": {"email": "a@b.co"}},
        headers={"Authorization": f"Bearer {key}"},
    )
    access = [e for e in log_capture.entries if e.get("event") == "http"]
    assert access and access[0]["status"] == 200
    assert "a@b.co" not in log_capture.text
