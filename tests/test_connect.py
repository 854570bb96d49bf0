"""Amazon Connect contact events, as EventBridge API destinations deliver them, on the call center."""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest
from browsing import eventually
from prm_callcenter import screen_pops
from prm_connect import PATH

from prm_core.server.state import HUB

INSTANCE = "arn:aws:connect:us-west-2:111122223333:instance/9308c2a1-9bc6-4cea-8290-6c0b4a6d38fa"
CONTACT = "5ca32fbd-8f92-46af-92a5-6b0f970f0efe"
AGENT = "f73e4a4b-9e5d-4c1d-97a7-4ef2e1f8d7c1"
QUEUE = "5cbe4a6e-59f5-4c5c-a2be-4b1e6a8b1f3e"
CALLER = "+14155550100"


def envelope(event_id: str, detail: dict[str, Any], time: str) -> dict[str, Any]:
    """An EventBridge event of Amazon Connect, shaped as the AWS documentation's samples."""
    return {
        "version": "0",
        "id": event_id,
        "detail-type": "Amazon Connect Contact Event",
        "source": "aws.connect",
        "account": "111122223333",
        "time": time,
        "region": "us-west-2",
        "resources": [f"{INSTANCE}/contact/{CONTACT}", INSTANCE],
        "detail": {
            "contactId": CONTACT,
            "channel": "VOICE",
            "instanceArn": INSTANCE,
            "initiationMethod": "INBOUND",
            "initiationTimestamp": "2026-11-23T09:00:01.000Z",
            "customerEndpoint": {"type": "TELEPHONE_NUMBER", "address": CALLER},
            "systemEndpoint": {"type": "TELEPHONE_NUMBER", "address": "+18005550199"},
            **detail,
        },
    }


QUEUE_INFO = {
    "queueArn": f"{INSTANCE}/queue/{QUEUE}",
    "queueType": "STANDARD",
    "enqueueTimestamp": "2026-11-23T09:00:20.000Z",
}
INITIATED = envelope("7a1f1f2c-0001-4d3a-9a8e-2b7a1d3c4e01", {"eventType": "INITIATED"}, "2026-11-23T09:00:02Z")
QUEUED = envelope(
    "7a1f1f2c-0002-4d3a-9a8e-2b7a1d3c4e02", {"eventType": "QUEUED", "queueInfo": QUEUE_INFO}, "2026-11-23T09:00:21Z"
)
CONNECTED = envelope(
    "7a1f1f2c-0003-4d3a-9a8e-2b7a1d3c4e03",
    {
        "eventType": "CONNECTED_TO_AGENT",
        "queueInfo": QUEUE_INFO,
        "agentInfo": {
            "agentArn": f"{INSTANCE}/agent/{AGENT}",
            "connectedToAgentTimestamp": "2026-11-23T09:00:41.000Z",
        },
    },
    "2026-11-23T09:00:42Z",
)
DISCONNECTED = envelope(
    "7a1f1f2c-0004-4d3a-9a8e-2b7a1d3c4e04",
    {
        "eventType": "DISCONNECTED",
        "queueInfo": QUEUE_INFO,
        "agentInfo": {"agentArn": f"{INSTANCE}/agent/{AGENT}", "connectedToAgentTimestamp": "2026-11-23T09:00:41.000Z"},
        "disconnectTimestamp": "2026-11-23T09:06:13.000Z",
        "disconnectReason": "CUSTOMER_DISCONNECT",
    },
    "2026-11-23T09:06:14Z",
)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def keys(make_key: Any) -> dict[str, str]:
    return {"cti": await make_key("touchpoint:callcenter"), "read": await make_key("read")}


async def send(client: Any, key: str, body: Any) -> Any:
    return await client.post(PATH, json=body, headers=bearer(key))


async def test_a_contact_is_one_call_and_redeliveries_change_nothing(hub_client, keys):
    pops = screen_pops(hub_client.app[HUB])
    assert pops is not None
    agent_screen = pops.connect(AGENT, None)
    for event in (INITIATED, QUEUED, CONNECTED, DISCONNECTED):  # one per request, as API destinations send
        resp = await send(hub_client, keys["cti"], event)
        assert resp.status == 200, await resp.text()
    # EventBridge delivers at least once
    again = await send(hub_client, keys["cti"], [CONNECTED, DISCONNECTED])
    assert await again.json() == {"accepted": 0, "duplicates": 3, "ignored": 0}

    resp = await hub_client.get(f"/v1/customers/phone:{CALLER}?limit=50", headers=bearer(keys["read"]))
    assert resp.status == 200, await resp.text()
    view = await resp.json()
    (call,) = view["dialogues"]
    assert (call["touchpoint"], call["ref"], call["status"]) == ("callcenter", CONTACT, "closed")
    timeline = list(reversed(view["timeline"]))
    types = [e["type"] for e in timeline]
    assert types == ["call.started", "call.queued", "call.offered", "call.answered", "call.ended"]
    assert timeline[2]["data"]["agent_id"] == AGENT and timeline[2]["data"]["queue"] == QUEUE
    assert timeline[2]["occurred_at"] == "2026-11-23T09:00:41Z"
    assert timeline[4]["data"]["disconnect_reason"] == "CUSTOMER_DISCONNECT"

    async def popped() -> bool:
        return bool(agent_screen.queue)

    await eventually(popped, "the agent's screen pop")
    assert f'"call_id":"{CONTACT}"' in agent_screen.queue[0]


async def test_a_transfer_stays_in_the_call_of_its_initial_contact(hub_client, keys):
    transferred = copy.deepcopy(INITIATED)
    transferred["id"] = "7a1f1f2c-0005-4d3a-9a8e-2b7a1d3c4e05"
    transferred["detail"].update(
        contactId="0b9c3c1e-6d2f-4f7e-9c55-0a9a7a3b2c11",
        initialContactId=CONTACT,
        previousContactId=CONTACT,
        initiationMethod="TRANSFER",
    )
    assert (await send(hub_client, keys["cti"], [INITIATED, transferred])).status == 200
    view = await (await hub_client.get(f"/v1/customers/phone:{CALLER}", headers=bearer(keys["read"]))).json()
    (call,) = view["dialogues"]
    assert call["ref"] == CONTACT
    assert [e["type"] for e in reversed(view["timeline"])] == ["call.started", "call.transferred"]


async def test_chats_and_other_event_types_are_acknowledged_and_left_out(hub_client, keys):
    chat = copy.deepcopy(INITIATED)
    chat["id"], chat["detail"]["channel"] = "chat-1", "CHAT"
    updated = envelope("upd-1", {"eventType": "CONTACT_DATA_UPDATED"}, "2026-11-23T09:01:00Z")
    resp = await send(hub_client, keys["cti"], [chat, updated])
    assert await resp.json() == {"accepted": 0, "duplicates": 0, "ignored": 2}


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda e: e.update({"detail-type": "EC2 Instance State-change Notification"}), "[1].detail-type"),
        (lambda e: e.pop("id"), "[1].id"),
        (lambda e: e["detail"].pop("contactId"), "[1].detail.contactId"),
        (lambda e: e["detail"]["agentInfo"].pop("agentArn"), "[1].detail.agentInfo.agentArn"),
        (lambda e: e["detail"]["agentInfo"].update(connectedToAgentTimestamp="soon"),
         "[1].detail.agentInfo.connectedToAgentTimestamp"),
        (lambda e: e["detail"]["customerEndpoint"].update(address="not a number"),
         "[1].detail.customerEndpoint.address"),
    ],
)  # fmt: skip
async def test_a_malformed_event_is_refused_naming_the_field_and_nothing_is_written(hub_client, keys, mutate, field):
    bad = copy.deepcopy(CONNECTED)
    mutate(bad)
    resp = await send(hub_client, keys["cti"], [INITIATED, bad])
    assert resp.status == 422, await resp.text()
    assert (await resp.json())["error"]["field"] == field
    missing = await hub_client.get(f"/v1/customers/phone:{CALLER}", headers=bearer(keys["read"]))
    assert missing.status == 404


async def test_eventbridge_must_present_a_call_center_key(hub_client, make_key):
    assert (await hub_client.post(PATH, json=INITIATED)).status == 401
    web = await make_key("touchpoint:web")
    assert (await send(hub_client, web, INITIATED)).status == 403
    # an API destination's Basic auth connection: the key as user name
    key = await make_key("touchpoint:callcenter")
    basic = {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}
    assert (await hub_client.post(PATH, json=INITIATED, headers=basic)).status == 200
