"""Segment's tracking API with [ingest] journal = true, driven by Segment's own Python SDK:
calls that act on no customer are journaled; identify with traits and group calls are recorded
while the sender waits, their trait merge and membership applied before the answer."""

from __future__ import annotations

import asyncio

import pytest
from polling import until
from segment.analytics.client import Client as SegmentClient
from segment_sdks import basic, sdk_send

from prm_core.config import Config
from prm_core.server.state import HUB


@pytest.fixture
def hub_config(database_url: str) -> Config:
    return Config(database_url=database_url, public_url="http://hub.test", raw={"ingest": {"journal": True}})


async def test_calls_acting_on_no_customer_are_journaled(hub_client, make_key):
    key, read = await make_key("touchpoint:web"), await make_key("read")
    hub = hub_client.app[HUB]
    host = str(hub_client.make_url("")).rstrip("/")
    head = hub.journal.head
    calls = [
        ("page", {"anonymous_id": "anon-7", "name": "Home", "message_id": "p-1"}),
        ("track", {"anonymous_id": "anon-7", "event": "Product Viewed", "message_id": "p-2"}),
        ("identify", {"user_id": "u-7", "anonymous_id": "anon-7", "message_id": "p-3"}),  # no traits
        ("alias", {"user_id": "u-7", "previous_id": "anon-8", "message_id": "p-4"}),
    ]
    assert await asyncio.to_thread(sdk_send, SegmentClient, key, host, calls) == []
    assert hub.journal.head == head + 4  # each call journaled, none recorded while the SDK waited

    async def timeline() -> list[str]:
        resp = await hub_client.get("/v1/customers/user_id:u-7", headers=basic(read))
        view = await resp.json() if resp.status == 200 else {"timeline": []}
        return sorted(t["event_id"] for t in view["timeline"]) if len(view["timeline"]) == 4 else []

    assert await until(timeline) == ["p-1", "p-2", "p-3", "p-4"]
    # an SDK's retry is a duplicate, found in the events once processed: nothing journaled again
    again = await hub_client.post(
        "/v1/track", json={"userId": "u-7", "event": "Product Viewed", "messageId": "p-2"}, headers=basic(key)
    )
    assert again.status == 200 and await again.json() == {"success": True}
    assert hub.journal.head == head + 4


async def test_identify_traits_and_group_calls_apply_before_the_answer(hub_client, make_key):
    key, read = await make_key("touchpoint:web"), await make_key("read")
    hub = hub_client.app[HUB]
    host = str(hub_client.make_url("")).rstrip("/")
    # journaled first: the identify naming the same visitor waits for it to be recorded
    page = ("page", {"anonymous_id": "anon-1", "message_id": "g-1"})
    assert await asyncio.to_thread(sdk_send, SegmentClient, key, host, [page]) == []
    head = hub.journal.head
    calls = [
        (
            "identify",
            {"user_id": "u-1", "anonymous_id": "anon-1", "traits": {"first_name": "Ann"}, "message_id": "g-2"},
        ),
        ("group", {"user_id": "u-1", "group_id": "acme", "traits": {"name": "Acme Corp"}, "message_id": "g-3"}),
    ]
    assert await asyncio.to_thread(sdk_send, SegmentClient, key, host, calls) == []
    assert hub.journal.head == head  # recorded while the SDK waited, not journaled
    view = await (await hub_client.get("/v1/customers/user_id:u-1", headers=basic(read))).json()
    assert view["traits"]["first_name"] == "Ann"
    assert [m["name"] for m in view["memberships"]] == ["Acme Corp"]

    async def timeline() -> list[str]:
        got = await (await hub_client.get("/v1/customers/anonymous_id:anon-1", headers=basic(read))).json()
        ids = sorted(t["event_id"] for t in got["timeline"])
        return ids if len(ids) == 3 else []

    assert await until(timeline) == ["g-1", "g-2", "g-3"]  # one customer: the page's visitor is Ann


async def test_a_track_named_as_a_call_type_is_journaled_as_a_track(hub_client, make_key):
    """A track named "group", "identify" or "page" acts on no customer: journaled, and
    recorded behind the answer as the track it is."""
    key, read = await make_key("touchpoint:web"), await make_key("read")
    hub = hub_client.app[HUB]
    host = str(hub_client.make_url("")).rstrip("/")
    head = hub.journal.head
    names = ["group", "identify", "page"]
    calls = [
        ("track", {"user_id": "u-6", "event": name, "properties": {"n": i}, "message_id": f"t-{name}"})
        for i, name in enumerate(names)
    ]
    assert await asyncio.to_thread(sdk_send, SegmentClient, key, host, calls) == []
    assert hub.journal.head == head + 3  # each journaled: none recorded while the SDK waited

    async def tracks() -> list[tuple[str, dict]]:
        resp = await hub_client.get("/v1/customers/user_id:u-6", headers=basic(read))
        view = await resp.json() if resp.status == 200 else {"timeline": []}
        found = sorted((t["type"], t["data"]) for t in view["timeline"])
        return found if len(found) == 3 else []

    assert await until(tracks) == [
        (name, {"source": "segment", "properties": {"n": i}}) for i, name in enumerate(names)
    ]


async def test_a_bad_message_refuses_the_batch_and_journals_nothing(hub_client, make_key):
    key = await make_key("touchpoint:web")
    hub = hub_client.app[HUB]
    head = hub.journal.head
    body = {"batch": [{"type": "track", "userId": "u-9", "event": "Clicked"}, {"type": "page"}]}
    resp = await hub_client.post("/v1/batch", json=body, headers=basic(key))
    assert resp.status == 400
    assert (await resp.json())["error"]["field"] == "batch[1].userId"
    assert hub.journal.head == head
