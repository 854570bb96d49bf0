"""The Segment / RudderStack tracking API, driven by the vendors' own Python SDKs over loopback."""

from __future__ import annotations

import asyncio
import gzip
import json
from datetime import UTC, datetime, timedelta

import pytest
from positions import settled
from prm_segment import MAX_MESSAGE_BYTES
from rudderstack.analytics.client import Client as RudderClient
from segment.analytics.client import Client as SegmentClient
from segment_sdks import basic, sdk_send

from prm_core.server.state import HUB
from prm_core.testing.conformance import TouchPointConformance


@pytest.mark.parametrize("sdk", [SegmentClient, RudderClient], ids=["segment", "rudderstack"])
async def test_an_anonymous_visit_then_identify_ends_as_one_customer(hub_client, make_key, sdk):
    key, read = await make_key("touchpoint:web"), await make_key("read")
    host = str(hub_client.make_url("")).rstrip("/")
    calls = [
        ("page", {"anonymous_id": "anon-1", "name": "Washers", "properties": {"path": "/washers"}}),
        ("track", {"anonymous_id": "anon-1", "event": "Product Viewed", "properties": {"product_id": "wm-300"}}),
        (
            "identify",
            {
                "user_id": "u-42",
                "anonymous_id": "anon-1",
                "traits": {"email": "Ann@Example.com", "first_name": "Ann", "phone": "not a phone"},
            },
        ),
        ("track", {"user_id": "u-42", "event": "Order Completed", "properties": {"revenue": 129.5}}),
        ("group", {"user_id": "u-42", "group_id": "acme", "traits": {"name": "Acme Corp"}}),
    ]
    errors = await asyncio.to_thread(sdk_send, sdk, key, host, calls)
    assert errors == []
    view = await (await hub_client.get("/v1/customers/email:ann@example.com", headers=basic(read))).json()
    types = [t["type"] for t in view["timeline"]]
    assert sorted(types) == sorted(["page", "Product Viewed", "identify", "Order Completed", "group"])
    assert {(i["namespace"], i["value"]) for i in view["identities"]} == {
        ("anonymous_id", "anon-1"),
        ("user_id", "u-42"),
        ("email", "ann@example.com"),
    }
    assert view["traits"]["first_name"] == "Ann"
    assert view["metrics"]["lifetime_revenue"] == "129.50"
    assert view["memberships"][0]["kind"] == "organization"
    assert view["memberships"][0]["name"] == "Acme Corp"
    org = await (await hub_client.get("/v1/customers/account_id:acme", headers=basic(read))).json()
    assert [m["id"] for m in org["members"]] == [view["id"]]
    # one visit: the web's inactivity rule threads it into one dialogue
    assert len({t["dialogue"] for t in view["timeline"]}) == 1


@pytest.mark.parametrize("sdk", [SegmentClient, RudderClient], ids=["segment", "rudderstack"])
async def test_a_track_named_as_a_call_type_is_a_track(hub_client, make_key, sdk):
    """A track's name is the tracker's to choose: one named "group", "identify" or "page" is
    recorded as that track (its properties kept), not taken for the call of that name."""
    key, read = await make_key("touchpoint:web"), await make_key("read")
    host = str(hub_client.make_url("")).rstrip("/")
    names = ["group", "identify", "page"]
    calls = [
        ("identify", {"user_id": "u-5", "traits": {"first_name": "Bo"}, "message_id": "t-0"}),
        *(
            ("track", {"user_id": "u-5", "event": name, "properties": {"first_name": name}, "message_id": f"t-{name}"})
            for name in names
        ),
    ]
    errors = await asyncio.to_thread(sdk_send, sdk, key, host, calls)
    assert errors == []
    await settled(hub_client.app[HUB])  # Segment's answer carries no position
    view = await (await hub_client.get("/v1/customers/user_id:u-5", headers=basic(read))).json()
    tracks = sorted((t["event_id"], t["type"], t["data"]) for t in view["timeline"] if t["event_id"] != "t-0")
    assert tracks == [
        (f"t-{name}", name, {"source": "segment", "properties": {"first_name": name}}) for name in sorted(names)
    ]
    assert view["traits"]["first_name"] == "Bo"  # a track's properties are no identify's traits
    assert view["memberships"] == []


async def test_message_ids_deduplicate_and_sent_at_corrects_clock_skew(hub_client, make_key):
    key, read = await make_key("touchpoint:web"), await make_key("read")
    now = datetime.now(UTC)
    skewed = now - timedelta(hours=2)  # the client's clock is two hours slow
    body = {
        "batch": [
            {
                "type": "track",
                "messageId": "m-1",
                "userId": "u-1",
                "event": "Signed Up",
                "timestamp": (skewed - timedelta(seconds=30)).isoformat(),
            }
        ],
        "sentAt": skewed.isoformat(),
    }
    for _ in range(2):
        resp = await hub_client.post("/v1/batch", json=body, headers=basic(key))
        assert resp.status == 200
        assert await resp.json() == {"success": True}
    await settled(hub_client.app[HUB])  # what was sent is recorded: Segment's answers carry no position
    view = await (await hub_client.get("/v1/customers/user_id:u-1", headers=basic(read))).json()
    assert len(view["timeline"]) == 1
    stored = datetime.fromisoformat(view["timeline"][0]["occurred_at"])
    assert abs((stored - (now - timedelta(seconds=30))).total_seconds()) < 20


async def test_write_key_in_the_body_and_single_calls(hub_client, make_key):
    key, read = await make_key("touchpoint:web"), await make_key("read")
    resp = await hub_client.post(
        "/v1/track", json={"writeKey": key, "userId": "u-2", "event": "Clicked", "messageId": "s-1"}
    )
    assert resp.status == 200
    alias = await hub_client.post(
        "/v1/alias", json={"userId": "u-2", "previousId": "anon-9", "messageId": "s-2"}, headers=basic(key)
    )
    assert alias.status == 200
    await settled(hub_client.app[HUB])
    view = await (await hub_client.get("/v1/customers/anonymous_id:anon-9", headers=basic(read))).json()
    assert ("user_id", "u-2") in {(i["namespace"], i["value"]) for i in view["identities"]}


async def test_gzip_bodies_are_accepted(hub_client, make_key):
    key = await make_key("touchpoint:web")
    body = gzip.compress(json.dumps({"batch": [{"type": "page", "userId": "u-3", "messageId": "g-1"}]}).encode())
    resp = await hub_client.post(
        "/v1/batch", data=body, headers={**basic(key), "Content-Encoding": "gzip", "Content-Type": "application/json"}
    )
    assert resp.status == 200


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{not json", 400, None),
        (json.dumps({"batch": [{"type": "track", "event": "x"}]}).encode(), 400, "batch[0].userId"),
        (json.dumps({"batch": [{"type": "shout", "userId": "u"}]}).encode(), 400, "batch[0].type"),
        (json.dumps({"batch": [{"type": "track", "userId": "u"}]}).encode(), 400, "batch[0].event"),
        (
            json.dumps(
                {"batch": [{"type": "page", "userId": "u", "properties": {"x": "y" * MAX_MESSAGE_BYTES}}]}
            ).encode(),
            400,
            "batch[0]",
        ),
        (
            json.dumps(
                {"batch": [{"type": "page", "userId": f"u{i}", "properties": {"x": "y" * 20_000}} for i in range(30)]}
            ).encode(),
            413,
            None,
        ),
        (
            json.dumps({"batch": [{"type": "page", "userId": "u", "timestamp": "soon"}]}).encode(),
            400,
            "batch[0].timestamp",
        ),
    ],
)
async def test_bad_input_is_refused_and_writes_nothing(hub_client, make_key, body, status, field):
    key = await make_key("touchpoint:web")
    resp = await hub_client.post("/v1/batch", data=body, headers=basic(key))
    assert resp.status == status
    error = (await resp.json())["error"]
    assert error.get("field") == field
    hub = hub_client.app[HUB]
    count = await hub.store.read(lambda conn: conn.exec_driver_sql("SELECT count(*) FROM events").scalar())
    assert count == 0


async def test_a_wrong_key_is_refused(hub_client, make_key):
    pos = await make_key("touchpoint:pos")
    body = {"batch": [{"type": "page", "userId": "u", "messageId": "x"}]}
    assert (await hub_client.post("/v1/batch", json=body, headers=basic(pos))).status == 403
    assert (await hub_client.post("/v1/batch", json=body)).status == 401
    assert (await hub_client.post("/v1/batch", json={**body, "writeKey": "nope"})).status == 401


class TestConformance(TouchPointConformance):
    """The web touch point through its Segment adapter."""

    touchpoint = "web"

    @staticmethod
    def _message(e: dict) -> dict:
        return {
            "type": "identify",
            "messageId": e["id"],
            "userId": e["identities"]["email"],
            "timestamp": e["occurred_at"],
            "traits": {**e["identities"], **e.get("data", {})},
        }

    async def send_events(self, client, key, batch):
        headers = basic(key) if key else {}
        return await client.post("/v1/batch", json={"batch": [self._message(e) for e in batch]}, headers=headers)

    async def send_raw(self, client, key, body):
        return await client.post("/v1/batch", data=body, headers=basic(key))

    async def forge(self, client, batch):
        return await client.post("/v1/batch", json={"batch": [self._message(e) for e in batch]}, headers=basic("x"))
