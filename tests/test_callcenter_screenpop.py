"""Screen pops: the caller's 360 view on the agent's WebSocket when a call is offered."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import WSCloseCode, WSMsgType, WSServerHandshakeError
from browsing import eventually
from positions import read_after
from prm_callcenter import screen_pops

from prm_core import hookimpl
from prm_core.config import Config
from prm_core.server.state import HUB

CTI = "/v1/touchpoints/callcenter/events"
CALLER = "+14155550100"
WAIT = 10.0  # generous: a pop normally arrives in milliseconds


class Fulfillments:
    """What the partner area will add to the view: the customer's open service work."""

    @hookimpl
    def prm_enrich_view(self, view: Any) -> dict[str, Any]:
        return {
            "fulfillments": [
                {
                    "id": "ful-1",
                    "partner": "fieldservice",
                    "role": "field_service",
                    "action": "schedule",
                    "status": "confirmed",
                    "dialogue_id": None,
                    "requested_at": "2026-11-23T08:00:00Z",
                    "updated_at": "2026-11-23T08:00:01Z",
                    "data": {"window_start": "2026-11-24T08:00:00Z", "window_end": "2026-11-24T12:00:00Z"},
                }
            ]
        }


@pytest.fixture
def hub_plugins() -> list[Any]:
    return [Fulfillments()]


@pytest.fixture
def hub_config(database_url: str) -> Config:
    screenpop = {"heartbeat_s": 0.5, "connection_queue": 5, "ring_size": 10}
    return Config(
        database_url=database_url,
        public_url="http://hub.test",
        raw={"touchpoints": {"callcenter": {"screenpop": screenpop}}},
    )


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def offered(call: str, agent: str, minute: int = 10, ani: str = CALLER) -> dict[str, Any]:
    return {
        "id": f"{call}-offered",
        "type": "call.offered",
        "occurred_at": f"2026-11-23T09:{minute:02d}:00Z",
        "data": {"call_id": call, "ani": ani, "dnis": "+18005550199", "queue": "priority", "agent_id": agent},
    }


async def offer(client: Any, key: str, *events: dict[str, Any]) -> None:
    resp = await client.post(CTI, json={"events": list(events)}, headers=bearer(key))
    assert resp.status == 200, await resp.text()


async def next_of(ws: Any, kind: str) -> dict[str, Any]:
    """The next message of ``kind``, skipping heartbeats."""
    async with asyncio.timeout(WAIT):
        while True:
            message = await ws.receive_json()
            if message["type"] == kind:
                return message


@pytest.fixture
async def keys(make_key: Any) -> dict[str, str]:
    return {
        "cti": await make_key("touchpoint:callcenter"),
        "ivr": await make_key("touchpoint:ivr"),
        "read": await make_key("read"),
        "admin": await make_key("admin"),
        "web": await make_key("touchpoint:web"),
    }


async def test_an_offered_call_pops_the_callers_story_on_the_agents_screen(hub_client, keys):
    # before the call: the IVR path the caller took, and a platinum tier set by hand
    ivr = [
        ("ivr.call.started", {}),
        ("ivr.menu", {"menu": "main", "prompt": "service or sales"}),
        ("ivr.input", {"menu": "main", "digits": "2"}),
        ("ivr.transferred", {"queue": "priority"}),
    ]
    events = [
        {
            "id": f"ivr-{i}",
            "type": t,
            "occurred_at": f"2026-11-23T09:0{i}:00Z",
            "identities": {"phone": CALLER},
            "dialogue": "ivr-call-1",
            "data": data,
        }
        for i, (t, data) in enumerate(ivr)
    ]
    resp = await hub_client.post("/v1/touchpoints/ivr/events", json={"events": events}, headers=bearer(keys["ivr"]))
    assert resp.status == 200, await resp.text()
    await read_after(hub_client, await resp.json(), f"phone:{CALLER}", bearer(keys["read"]))  # the patch names them
    tier = {"tier": "platinum"}
    resp = await hub_client.patch(f"/v1/customers/phone:{CALLER}", json=tier, headers=bearer(keys["admin"]))
    assert resp.status == 200, await resp.text()

    # and, the evening before, a service request at the web portal, still open
    request = {
        "id": "web-req-1",
        "type": "service.request",
        "occurred_at": "2026-11-22T18:30:00Z",
        "identities": {"phone": CALLER, "email": "ann@example.com"},
        "data": {"product_id": "wm-300", "issue": "drum noise"},
    }
    resp = await hub_client.post("/v1/touchpoints/web/events", json=request, headers=bearer(keys["web"]))
    assert resp.status == 200, await resp.text()

    async with hub_client.ws_connect("/v1/agents/a-7/screenpop", headers=bearer(keys["read"])) as ws:
        hello = await next_of(ws, "hello")
        assert hello["agent_id"] == "a-7"
        await offer(hub_client, keys["cti"], offered("c-1", "a-7"))
        pop = await next_of(ws, "screen_pop")

    assert (pop["call_id"], pop["agent_id"], pop["queue"]) == ("c-1", "a-7", "priority")
    assert pop["seq"] > hello["seq"]
    customer = pop["customer"]
    assert customer["tier"] == "platinum"
    assert {"namespace": "phone", "value": CALLER} in customer["identities"]
    assert customer["fulfillments"][0]["data"]["window_start"] == "2026-11-24T08:00:00Z"
    ivr_call, web_visit = customer["recent_contacts"]  # newest first
    assert (ivr_call["touchpoint"], web_visit["touchpoint"]) == ("ivr", "web")
    (open_request,) = customer["open_service_requests"]
    assert open_request["id"] == web_visit["id"]
    assert open_request["events"][0]["data"]["issue"] == "drum noise"
    assert [e["type"] for e in ivr_call["events"]] == [t for t, _ in ivr]
    assert ivr_call["events"][2]["data"]["digits"] == "2"
    assert "offers" in customer and "timeline" in customer


async def test_only_the_agent_offered_the_call_gets_it_and_every_screen_of_that_agent_does(hub_client, keys):
    path = "/v1/agents/{}/screenpop"
    async with (
        hub_client.ws_connect(path.format("a-1"), headers=bearer(keys["cti"])) as first,
        hub_client.ws_connect(path.format("a-1"), headers=bearer(keys["cti"])) as second,
        hub_client.ws_connect(path.format("a-2"), headers=bearer(keys["cti"])) as other,
    ):
        for ws in (first, second, other):
            await next_of(ws, "hello")
        await offer(hub_client, keys["cti"], offered("c-2", "a-1"))
        assert (await next_of(first, "screen_pop"))["call_id"] == "c-2"
        assert (await next_of(second, "screen_pop"))["call_id"] == "c-2"
        await offer(hub_client, keys["cti"], offered("c-3", "a-2", ani="+14155550177"))
        # a-2's next pop is its own call: a-1's never reached it
        assert (await next_of(other, "screen_pop"))["call_id"] == "c-3"


async def test_a_partner_answering_after_the_pop_updates_the_screens_showing_that_caller(hub_client, keys):
    from datetime import UTC, datetime

    from prm_core.outbox import Fulfillment

    path = "/v1/agents/{}/screenpop"
    async with (
        hub_client.ws_connect(path.format("a-1"), headers=bearer(keys["cti"])) as showing,
        hub_client.ws_connect(path.format("a-2"), headers=bearer(keys["cti"])) as other,
    ):
        await next_of(showing, "hello")
        await next_of(other, "hello")
        await offer(hub_client, keys["cti"], offered("c-9", "a-1"))
        pop = await next_of(showing, "screen_pop")
        now = datetime(2026, 11, 23, 9, 12, tzinfo=UTC)
        booked = Fulfillment(
            id="ful_1", partner="fieldservice", role="field_service", action="schedule", status="confirmed",
            customer_id=pop["customer_id"], dialogue_id="dlg_x", touchpoint="web", requested_at=now,
            updated_at=now, data={"window_start": "2026-11-24T09:00:00Z", "window_end": "2026-11-24T12:00:00Z"},
        )  # fmt: skip
        # what the outbox does when a late partner answer is durable (PostgreSQL: through the bus)
        hub_client.app[HUB].hooks.fulfillment_updated(booked)
        update = await next_of(showing, "fulfillment_updated")
        assert update["customer_id"] == pop["customer_id"]
        assert update["fulfillment"]["status"] == "confirmed"
        assert update["fulfillment"]["data"]["window_start"] == "2026-11-24T09:00:00Z"
        assert update["seq"] > pop["seq"]  # kept for resume like a pop
        await offer(hub_client, keys["cti"], offered("c-10", "a-2", ani="+14155550177"))
        # a-2 never showed that caller: its next message is its own call's pop
        assert (await next_of(other, "screen_pop"))["call_id"] == "c-10"
        assert not [m for m in await _drain(other) if m["type"] == "fulfillment_updated"]


async def _drain(ws: Any) -> list[dict[str, Any]]:
    found = []
    try:
        while True:
            found.append(await ws.receive_json(timeout=0.3))
    except TimeoutError:
        return found


async def test_a_transfer_pops_the_call_on_the_receiving_agents_screen(hub_client, keys):
    async with hub_client.ws_connect("/v1/agents/a-9/screenpop", headers=bearer(keys["cti"])) as ws:
        await next_of(ws, "hello")
        transfer = {
            "id": "t-1",
            "type": "call.transferred",
            "occurred_at": "2026-11-23T09:12:00Z",
            "data": {"call_id": "c-4", "agent_id": "a-1", "to_agent_id": "a-9", "to_queue": "billing"},
        }
        await offer(hub_client, keys["cti"], offered("c-4", "a-1"), transfer)
        pop = await next_of(ws, "screen_pop")
    assert (pop["call_id"], pop["event"], pop["queue"]) == ("c-4", "call.transferred", "billing")


async def test_heartbeats_flow_while_no_call_comes(hub_client, keys):
    async with hub_client.ws_connect("/v1/agents/a-1/screenpop", headers=bearer(keys["cti"])) as ws:
        hello = await next_of(ws, "hello")
        beat = await next_of(ws, "heartbeat")
    assert beat["seq"] == hello["seq"]


async def test_a_reconnecting_agent_gets_the_pops_it_missed_and_only_those(hub_client, keys):
    path = "/v1/agents/a-5/screenpop"
    async with hub_client.ws_connect(path, headers=bearer(keys["cti"])) as ws:
        await next_of(ws, "hello")
        await offer(hub_client, keys["cti"], offered("c-10", "a-5"))
        seen = await next_of(ws, "screen_pop")
    # the line dropped; two calls came meanwhile
    await offer(hub_client, keys["cti"], offered("c-11", "a-5", 11), offered("c-12", "a-5", 12, ani="+14155550122"))
    hub = hub_client.app[HUB]
    pops = screen_pops(hub)
    assert pops is not None

    async def kept() -> bool:
        return len(pops.channel("a-5").ring) == 3

    await eventually(kept, "the missed pops to be kept")
    async with hub_client.ws_connect(f"{path}?since={seen['seq']}", headers=bearer(keys["cti"])) as ws:
        missed = [await next_of(ws, "screen_pop"), await next_of(ws, "screen_pop")]
        assert sorted(p["call_id"] for p in missed) == ["c-11", "c-12"]
        assert missed[0]["seq"] < missed[1]["seq"]
        # nothing else is replayed: the next message is a heartbeat
        assert (await ws.receive_json(timeout=WAIT))["type"] == "heartbeat"


async def test_a_vanished_agent_never_stalls_ingest_and_loses_only_its_oldest_pops(hub_client, keys):
    pops = screen_pops(hub_client.app[HUB])
    assert pops is not None
    # a connection nobody reads from: its queue holds 5 (the configured connection_queue)
    stuck = pops.connect("a-3", None)
    for n in range(12):
        await offer(hub_client, keys["cti"], offered(f"v-{n}", "a-3", ani=f"+1415555{n:04d}"))

    async def all_built() -> bool:
        return stuck.dropped + len(stuck.queue) == 12

    await eventually(all_built, "twelve pops for the vanished agent")
    assert (len(stuck.queue), stuck.dropped) == (5, 7)
    assert pops.dropped_pops >= 7
    # what is left are the newest five pops, in the order they were made
    newest = [text for _, text in list(pops.channel("a-3").ring)[-5:]]
    assert [await stuck.next(0) for _ in range(5)] == newest
    pops.disconnect("a-3", stuck)


async def test_the_broker_drops_the_oldest_waiting_call_when_its_queue_is_full(hub_client, keys):
    pops = screen_pops(hub_client.app[HUB])
    assert pops is not None
    for task in pops._tasks:  # no worker builds pops: calls pile up
        task.cancel()
    pops.pending_calls = 3
    pops.channel("a-4")  # the agent has been seen here (on PostgreSQL, notices for others are not ours)
    await offer(hub_client, keys["cti"], *[offered(f"q-{n}", "a-4", ani=f"+1415556{n:04d}") for n in range(5)])
    for _ in range(100):  # on PostgreSQL the calls come back over LISTEN/NOTIFY
        if pops.dropped_calls == 2:
            break
        await asyncio.sleep(0.05)
    assert pops.stats()["pending_calls"] == 3
    assert pops.dropped_calls == 2
    assert [r.event.data["call_id"] for r, _ in pops._calls] == ["q-2", "q-3", "q-4"]
    resp = await hub_client.get("/v1/screenpops/stats", headers=bearer(keys["read"]))
    assert (await resp.json())["dropped_calls"] == 2
    assert (await hub_client.get("/v1/screenpops/stats", headers=bearer(keys["cti"]))).status == 403


# ---- authentication ------------------------------------------------------------------------


async def test_the_socket_needs_a_key_with_the_call_center_or_read_scope(hub_client, keys):
    path = "/v1/agents/a-1/screenpop"
    with pytest.raises(WSServerHandshakeError) as missing:
        await hub_client.ws_connect(path)
    assert missing.value.status == 401
    with pytest.raises(WSServerHandshakeError) as wrong:
        await hub_client.ws_connect(path, headers=bearer(keys["web"]))
    assert wrong.value.status == 403
    with pytest.raises(WSServerHandshakeError) as bad_since:
        await hub_client.ws_connect(f"{path}?since=yesterday", headers=bearer(keys["cti"]))
    assert bad_since.value.status == 422


async def test_a_browser_opens_the_socket_with_a_one_time_ticket(hub_client, keys):
    resp = await hub_client.post("/v1/agents/a-1/screenpop/tickets", headers=bearer(keys["read"]))
    assert resp.status == 200, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    ticket = (await resp.json())["ticket"]
    # a ticket is for its agent only
    with pytest.raises(WSServerHandshakeError) as other_agent:
        await hub_client.ws_connect(f"/v1/agents/a-2/screenpop?ticket={ticket}")
    assert other_agent.value.status == 401
    # ... and it was spent by that attempt
    with pytest.raises(WSServerHandshakeError) as spent:
        await hub_client.ws_connect(f"/v1/agents/a-1/screenpop?ticket={ticket}")
    assert spent.value.status == 401

    ticket = (await (await hub_client.post("/v1/agents/a-1/screenpop/tickets", headers=bearer(keys["cti"]))).json())[
        "ticket"
    ]
    url = f"/v1/agents/a-1/screenpop?ticket={ticket}"
    async with hub_client.ws_connect(url, protocols=("prm.screenpop.v1",)) as ws:
        assert ws.protocol == "prm.screenpop.v1"
        await next_of(ws, "hello")
        await offer(hub_client, keys["cti"], offered("c-20", "a-1"))
        assert (await next_of(ws, "screen_pop"))["call_id"] == "c-20"
    with pytest.raises(WSServerHandshakeError) as replayed:
        await hub_client.ws_connect(f"/v1/agents/a-1/screenpop?ticket={ticket}")
    assert replayed.value.status == 401

    forbidden = await hub_client.post("/v1/agents/a-1/screenpop/tickets", headers=bearer(keys["web"]))
    assert forbidden.status == 403
    assert (await forbidden.json())["error"]["code"] == "forbidden"


async def test_an_expired_ticket_opens_nothing(hub_client, keys):
    pops = screen_pops(hub_client.app[HUB])
    assert pops is not None
    pops.ticket_ttl_s = -1.0  # issued already expired
    ticket = (await (await hub_client.post("/v1/agents/a-1/screenpop/tickets", headers=bearer(keys["cti"]))).json())[
        "ticket"
    ]
    with pytest.raises(WSServerHandshakeError) as expired:
        await hub_client.ws_connect(f"/v1/agents/a-1/screenpop?ticket={ticket}")
    assert expired.value.status == 401


async def test_a_graceful_stop_closes_the_sockets_instead_of_waiting_for_agents(hub_client, keys):
    async with hub_client.ws_connect("/v1/agents/a-1/screenpop", headers=bearer(keys["cti"])) as ws:
        await next_of(ws, "hello")
        await hub_client.app.shutdown()  # what the server runs first on SIGTERM
        async with asyncio.timeout(WAIT):
            while (await ws.receive()).type not in (WSMsgType.CLOSE, WSMsgType.CLOSED):
                pass
    assert ws.close_code == WSCloseCode.GOING_AWAY
