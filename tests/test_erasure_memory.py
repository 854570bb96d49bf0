"""Erasure reaches memory too: after ``DELETE /v1/customers/{ref}`` no plugin holds the
person's data anywhere (the screen-pop replay ring, a connection's queue, calls waiting for
a pop, partner news waiting for an open stream), in this process and, on PostgreSQL, in
every hub process (the screen-pop bus)."""

from __future__ import annotations

import asyncio
import json
import os
import types
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pluggy
import pytest
from browsing import eventually
from prm_callcenter import screen_pops
from prm_callcenter.screenpop import ScreenPops
from prm_partner.push import sessions

from prm_core.config import Config
from prm_core.hub import Hub
from prm_core.model import Event, RecordedEvent
from prm_core.outbox import Fulfillment
from prm_core.server.state import HUB
from prm_core.testing import POSTGRES_ENV, postgres_database

EMAIL, PHONE, NAME, STREET = "quincy.marlowe@example.com", "+14155550177", "Quincy", "7 Marlowe Row"
PERSONAL = (EMAIL, PHONE, NAME, STREET)
CTI = "/v1/touchpoints/callcenter/events"


@pytest.fixture
def hub_config(database_url: str) -> Config:
    screenpop = {"heartbeat_s": 0.3, "ring_size": 10}
    return Config(
        database_url=database_url,
        public_url="http://hub.test",
        raw={"touchpoints": {"callcenter": {"screenpop": screenpop}}},
    )


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def keys(make_key: Any) -> dict[str, str]:
    return {"cti": await make_key("touchpoint:callcenter"), "admin": await make_key("admin")}


async def known_caller(client: Any, keys: dict[str, str]) -> str:
    """Quincy, with an email, a phone, a name and a street; returns the customer id."""
    first = {
        "id": "c-0-offered",
        "type": "call.offered",
        "occurred_at": "2026-11-23T09:00:00Z",
        "identities": {"email": EMAIL},
        "data": {"call_id": "c-0", "ani": PHONE, "queue": "q"},
    }
    assert (await client.post(CTI, json=first, headers=bearer(keys["cti"]))).status == 200
    patch = {"traits": {"first_name": NAME, "street": STREET}}
    resp = await client.patch(f"/v1/customers/phone:{PHONE}", json=patch, headers=bearer(keys["admin"]))
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["id"])


def offered(call: str, agent: str) -> dict[str, Any]:
    return {
        "id": f"{call}-offered",
        "type": "call.offered",
        "occurred_at": "2026-11-23T09:10:00Z",
        "data": {"call_id": call, "ani": PHONE, "queue": "q", "agent_id": agent},
    }


def strings_in(root: Any) -> Iterator[str]:
    """Every string reachable from a plugin object through data: containers, attrs classes,
    plain objects, queues, JSON texts. It does not follow into the hub itself (its store is
    the database), nor into code (modules, classes, functions) or the event loop's objects."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, str):
            yield obj
        elif isinstance(obj, bytes):
            yield obj.decode("utf-8", "replace")
        elif isinstance(obj, Mapping):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset) or type(obj).__name__ == "deque":
            stack.extend(obj)
        elif isinstance(obj, Hub | Config | pluggy.PluginManager | asyncio.AbstractEventLoop | asyncio.Future):
            continue
        elif isinstance(obj, types.ModuleType):
            if obj is root:  # a plugin that is a module: its own global objects
                stack.extend(v for k, v in vars(obj).items() if not k.startswith("__"))
        elif isinstance(obj, type | types.FunctionType | types.MethodType | types.BuiltinFunctionType):
            continue
        elif isinstance(obj, asyncio.Queue):
            stack.extend(obj._queue)  # type: ignore[attr-defined]
        elif hasattr(obj, "__dict__") or hasattr(obj, "__slots__"):
            if not type(obj).__module__.startswith(("prm", "collections", "builtins")):
                continue  # a library's object (a connection, a breaker): not where a plugin keeps data
            stack.extend(vars(obj).values() if hasattr(obj, "__dict__") else [])
            for cls in type(obj).__mro__:
                stack.extend(getattr(obj, s) for s in getattr(cls, "__slots__", ()) if hasattr(obj, s))


def personal_data_held(hub: Hub) -> list[tuple[str, str]]:
    """(plugin, personal value) for each value still held in memory by a registered plugin."""
    found = []
    for plugin in hub.pm.get_plugins():
        name = hub.pm.get_name(plugin) or repr(plugin)
        for text in strings_in(plugin):
            found.extend((name, value) for value in PERSONAL if value in text)
    return sorted(set(found))


async def replayed(client: Any, key: str, agent: str) -> list[dict[str, Any]]:
    """What a reconnecting agent gets with ?since=0, up to the first heartbeat."""
    messages = []
    async with client.ws_connect(f"/v1/agents/{agent}/screenpop?since=0", headers=bearer(key)) as ws:
        async with asyncio.timeout(10):
            while (message := await ws.receive_json())["type"] != "heartbeat":
                messages.append(message)
    return messages


async def test_after_an_erasure_a_reconnecting_agent_replays_nothing_of_the_person(hub_client, keys):
    cid = await known_caller(hub_client, keys)
    async with hub_client.ws_connect("/v1/agents/a-1/screenpop", headers=bearer(keys["cti"])) as ws:
        resp = await hub_client.post(CTI, json=offered("c-1", "a-1"), headers=bearer(keys["cti"]))
        assert resp.status == 200
        async with asyncio.timeout(10):
            while (pop := await ws.receive_json())["type"] != "screen_pop":
                pass
    assert pop["customer_id"] == cid and EMAIL in json.dumps(pop)
    before = await replayed(hub_client, keys["cti"], "a-1")
    assert any(m["type"] == "screen_pop" and m["customer_id"] == cid for m in before)

    resp = await hub_client.delete(f"/v1/customers/{cid}", headers=bearer(keys["admin"]))
    assert resp.status == 200, await resp.text()
    after = await replayed(hub_client, keys["cti"], "a-1")
    assert [m["type"] for m in after] == ["hello"]
    assert not [v for v in PERSONAL if v in json.dumps(after)]


async def test_an_erasure_empties_every_holder_of_the_broker(hub_client, keys):
    hub = hub_client.app[HUB]
    pops = screen_pops(hub)
    assert pops is not None
    cid = await known_caller(hub_client, keys)
    # an agent connected but not reading yet: the pop waits in the connection's queue
    waiting = pops.connect("a-2", None)
    assert (await hub_client.post(CTI, json=offered("c-2", "a-2"), headers=bearer(keys["cti"]))).status == 200

    async def queued() -> bool:
        return bool(waiting.queue) and bool(pops.channel("a-2").ring)

    await eventually(queued, "the pop to reach the waiting connection")
    # a call waiting for a worker, as when a burst of calls outruns them
    call = Event(
        id="c-3-offered",
        type="call.offered",
        occurred_at=datetime(2026, 11, 23, 9, 20, tzinfo=UTC),
        touchpoint="callcenter",
        data={"call_id": "c-3", "ani": PHONE, "agent_id": "a-3"},
    )
    pops._calls.append((RecordedEvent(call, cid, "dlg-unsent"), "a-3"))
    assert cid in pops.showing
    assert personal_data_held(hub)  # the walk does find what the broker holds

    resp = await hub_client.delete(f"/v1/customers/phone:{PHONE}", headers=bearer(keys["admin"]))
    assert resp.status == 200 and (await resp.json())["incomplete"] == []
    assert not waiting.queue and not pops.channel("a-2").ring
    assert [r.customer_id for r, _ in pops._calls] == [] and cid not in pops.showing
    assert personal_data_held(hub) == []
    pops.disconnect("a-2", waiting)


async def test_no_plugin_holds_the_person_after_an_erasure(hub_client, keys, make_key):
    """The person goes through every touch point (events, answered requests, a screen pop to
    an agent who never reads it); after the erasure, no registered plugin holds any of it."""
    hub = hub_client.app[HUB]
    cid = await known_caller(hub_client, keys)
    who = {"email": EMAIL, "phone": PHONE}
    for tp in sorted(hub.registrations.touchpoints.names()):
        tp_key = await make_key(f"touchpoint:{tp}")
        turn = {"id": f"{tp}-1", "type": "page", "occurred_at": "2026-11-23T09:40:00Z", "identities": who}
        for route in ("events", "requests"):
            resp = await hub_client.post(f"/v1/touchpoints/{tp}/{route}", json=turn, headers=bearer(tp_key))
            assert resp.status == 200, (tp, route, await resp.text())
            turn = {**turn, "id": f"{tp}-2", "data": {"street": STREET}}
    pops = screen_pops(hub)
    assert pops is not None
    unread = pops.connect("a-4", None)
    assert (await hub_client.post(CTI, json=offered("c-4", "a-4"), headers=bearer(keys["cti"]))).status == 200
    await eventually(lambda: _true(bool(unread.queue)), "the pop to wait for the agent")
    assert personal_data_held(hub)

    resp = await hub_client.delete(f"/v1/customers/{cid}", headers=bearer(keys["admin"]))
    assert resp.status == 200 and (await resp.json())["incomplete"] == []
    assert personal_data_held(hub) == []
    pops.disconnect("a-4", unread)


async def _true(value: bool) -> bool:
    return value


async def test_an_erasure_drops_partner_news_waiting_for_an_open_stream(hub_client, keys):
    hub = hub_client.app[HUB]
    cid = await known_caller(hub_client, keys)
    queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
    sessions.open["dlg-q"].add(queue)
    try:
        now = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)

        def news(customer: str, street: str) -> Fulfillment:
            return Fulfillment(
                id=f"ful-{customer}",
                partner="fieldservice",
                role="field_service",
                action="schedule",
                status="confirmed",
                customer_id=customer,
                dialogue_id="dlg-q",
                touchpoint="web",
                requested_at=now,
                updated_at=now,
                data={"street": street},
            )

        sessions.push(news(cid, STREET))
        sessions.push(news("cus-someone-else", "1 Other Road"))
        assert personal_data_held(hub)
        resp = await hub_client.delete(f"/v1/customers/{cid}", headers=bearer(keys["admin"]))
        assert resp.status == 200 and (await resp.json())["incomplete"] == []
        assert [queue.get_nowait()[0] for _ in range(queue.qsize())] == ["cus-someone-else"]
        assert personal_data_held(hub) == []
    finally:
        sessions.open["dlg-q"].discard(queue)
        sessions.open.pop("dlg-q", None)


@pytest.fixture
def shared_postgres() -> Iterator[str]:
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set: the screen-pop bus is PostgreSQL's LISTEN/NOTIFY")
    yield from postgres_database(base)


@pytest.mark.postgres
async def test_an_erasure_reaches_the_screen_pops_of_every_hub_process(shared_postgres):
    """Two brokers on their own connections to one database, as two ``prm serve`` processes:
    the one where the erasure ran tells the other through the bus."""
    async with Hub.open(Config(database_url=shared_postgres), autoload=True) as hub:
        here, there = ScreenPops(hub), ScreenPops(hub)
        await here.start(shared=True)
        await there.start(shared=True)
        try:
            text = json.dumps({"type": "screen_pop", "seq": 1, "customer_id": "cus-q", "customer": {"email": EMAIL}})
            there.publish("a-9", 1, text)
            there.showing["cus-q"] = {"a-9"}
            here.prm_customer_erased("cus-q", ["cus-q-merged"])

            async def forgotten() -> bool:
                return not there.channel("a-9").ring and "cus-q" not in there.showing

            await eventually(forgotten, "the other process to forget the erased customer's pops")
        finally:
            await here.stop()
            await there.stop()
