"""The core HTTP surface, end to end on a real aiohttp server and database."""

from __future__ import annotations

import pytest
from positions import after, counts

EVENT = {
    "id": "e1",
    "type": "page",
    "occurred_at": "2026-11-23T08:00:00Z",
    "identities": {"email": " Ann@Example.com "},
}


async def test_events_are_recorded_once_and_visible_in_the_view(hub_client, make_key):
    web_key, read_key = await make_key("touchpoint:web"), await make_key("read")
    auth = {"Authorization": f"Bearer {web_key}"}
    resp = await hub_client.post("/v1/touchpoints/web/events", json={"events": [EVENT]}, headers=auth)
    assert resp.status == 200, await resp.text()
    assert counts(await resp.json()) == {"accepted": 1, "duplicates": 0}
    assert resp.headers["X-Request-Id"]
    again = await hub_client.post("/v1/touchpoints/web/events", json=EVENT, headers=auth)
    assert counts(await again.json()) == {"accepted": 0, "duplicates": 1}

    ann = f"/v1/customers/email:ann@example.com{after(await again.json())}"
    view = await hub_client.get(ann, headers={"Authorization": f"Bearer {read_key}"})
    body = await view.json()
    assert body["identities"] == [{"namespace": "email", "value": "ann@example.com"}]
    assert [t["event_id"] for t in body["timeline"]] == ["e1"]
    assert body["metrics"]["event_count"] == 1


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        (b"{nope", 400, "malformed_json", None),
        (b'{"events": [{"type": "page", "occurred_at": "2026-11-23T08:00:00Z"}]}', 422, "missing", "events[0].id"),
        (b'{"id": "x", "type": "page", "occurred_at": "yesterday"}', 422, "invalid", "occurred_at"),
        (b'{"id": "x", "type": "page", "occurred_at": "2026-11-23T08:00:00"}', 422, "invalid", "occurred_at"),
        (
            b'{"id": "x", "type": "p", "occurred_at": "2026-11-23T08:00:00Z", "identities": {"phone": "abc"}}',
            422,
            "invalid",
            "identities.phone",
        ),
        (
            b'{"id": "x", "type": "p", "occurred_at": "2026-11-23T08:00:00Z", "identities": {"shoe": "42"}}',
            422,
            "invalid",
            "identities.shoe",
        ),
    ],
)
async def test_bad_input_is_refused_and_writes_nothing(hub_client, make_key, body, status, code, field):
    key = await make_key("touchpoint:web")
    resp = await hub_client.post("/v1/touchpoints/web/events", data=body, headers={"Authorization": f"Bearer {key}"})
    assert resp.status == status
    error = (await resp.json())["error"]
    assert error["code"] == code
    assert error.get("field") == field
    read = await make_key("read")
    missing = await hub_client.get("/v1/customers/email:ann@example.com", headers={"Authorization": f"Bearer {read}"})
    assert missing.status == 404
