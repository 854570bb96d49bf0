"""TM Forum adapters (TMF646 Appointment, TMF687 Stock) and the partner simulators built on them."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import prm_tmf
import pytest
from prm_partner.client import PartnerClient
from prm_partner.settings import PartnerSettings
from prm_tmf.simulators import AppointmentSimulator, StockSimulator

from prm_core.config import Config
from prm_core.model import FulfillmentRequest
from prm_core.server.state import HUB
from prm_core.store.tables import outbox

T0 = "2026-11-23T08:00:00Z"


def secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


def request(action: str, payload: dict[str, Any], key: str = "idem-1") -> FulfillmentRequest:
    return FulfillmentRequest("ful_1", "p", action, "cus_1", "dlg_1", payload, key)


MONDAY = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
WINDOW = {"window_start": "2026-11-23T07:00:00Z", "window_end": "2026-11-24T07:00:00Z"}


def test_an_appointment_uses_tmf646_field_names():
    visit = {"name": "Ann Lee", "phone": "+14155550100", "address": "1 Main St"}
    call = prm_tmf.build_call(
        "tmf646", request("schedule", {**WINDOW, "product_id": "wm-300", "issue": "noise", "visit": visit})
    )
    assert call.path == "/appointment"
    body = call.body
    assert body["@type"] == "Appointment" and body["externalId"] == "idem-1"
    assert body["validFor"] == {"startDateTime": WINDOW["window_start"], "endDateTime": WINDOW["window_end"]}
    assert body["relatedPlace"]["role"] == "interventionAddress"
    assert body["relatedEntity"] == [{"id": "wm-300", "role": "product", "@referredType": "Product"}]
    assert body["contactMedium"] == [{"mediumType": "phone", "characteristic": {"phoneNumber": "+14155550100"}}]
    bare = prm_tmf.build_call("tmf646", request("schedule", {**WINDOW})).body
    assert not {"relatedParty", "relatedPlace", "contactMedium"} & set(bare)


def test_a_stock_check_uses_tmf687_field_names_and_unknown_actions_are_named():
    call = prm_tmf.build_call("tmf687", request("check_stock", {"parts": ["pump-7", {"id": "belt", "quantity": 2}]}))
    assert call.path == "/checkProductStock"
    items = call.body["checkProductStockItem"]
    assert [i["checkedProductStock"]["stockedProduct"]["id"] for i in items] == ["pump-7", "belt"]
    assert [i["requestedQuantity"]["amount"] for i in items] == [1, 2]
    with pytest.raises(ValueError, match="check_stock, reserve"):
        prm_tmf.build_call("tmf687", request("schedule", {}))


def test_notifications_map_to_statuses():
    appt = {"eventType": "AppointmentStateChangeEvent", "event": {"appointment": {"id": "a1", "status": "completed"}}}
    assert prm_tmf.parse_callback("tmf646", appt) == (
        "a1",
        "completed",
        {"partner_ref": "a1", "appointment_id": "a1", "appointment_status": "completed"},
    )
    assert prm_tmf.parse_callback("tmf646", {"eventType": "Other"}) is None
    # the hub's key in externalId names the request even before the hub learnt the appointment's id
    keyed = {**appt, "event": {"appointment": {"id": "a1", "externalId": "idem-1", "status": "confirmed"}}}
    assert prm_tmf.parse_callback("tmf646", keyed)[:2] == ("idem-1", "confirmed")
    assert prm_tmf.parse_callback("tmf687", appt) is None
    task = {"event": {"checkProductStock": {"id": "t1", "state": "done", "checkProductStockItem": []}}}
    assert prm_tmf.parse_callback("tmf687", task) == (
        "t1",
        "confirmed",
        {"partner_ref": "t1", "state": "done", "parts": []},
    )


@pytest.fixture
async def field():
    sim = AppointmentSimulator(secret())
    await sim.serve()
    yield sim
    await sim.stop()


@pytest.fixture
async def stock():
    sim = StockSimulator(secret(), stock={"pump-7": 1})
    await sim.serve()
    yield sim
    await sim.stop()


def client(sim: Any, protocol: str) -> PartnerClient:
    return PartnerClient(PartnerSettings("p", "x", protocol, sim.url, sim.secret, 3000))


async def test_the_simulator_refuses_unsigned_calls_and_answers_a_repeated_key_the_same(field):
    async with aiohttp.ClientSession() as session, session.post(field.url + "/appointment", json={}) as resp:
        assert resp.status == 401
    assert field.refused_signatures == 1
    c = client(field, "tmf646")
    first = await c.fulfill(request("schedule", WINDOW))
    again = await c.fulfill(request("schedule", WINDOW))
    assert first == again and first.status == "confirmed"
    assert (field.delivered, field.duplicates, len(field.appointments)) == (1, 1, 1)


async def test_search_time_slots_lists_free_working_day_slots_in_the_window(field):
    result = await client(field, "tmf646").fulfill(
        request("search_slots", {"window_start": "2026-11-27T00:00:00Z", "window_end": "2026-12-01T00:00:00Z"})
    )
    starts = [datetime.fromisoformat(s["window_start"]) for s in result.data["slots"]]
    assert starts and all(s.weekday() < 5 for s in starts)  # Friday and Monday, not the weekend
    assert {s.date().isoformat() for s in starts} == {"2026-11-27", "2026-11-30"}


async def test_a_booking_with_no_slot_in_the_window_fails(field):
    saturday = {"window_start": "2026-11-28T00:00:00Z", "window_end": "2026-11-29T23:00:00Z"}
    result = await client(field, "tmf646").fulfill(request("schedule", saturday))
    assert result.status == "failed"


async def test_reserving_takes_stock_and_a_second_reservation_of_the_last_unit_fails(stock):
    c = client(stock, "tmf687")
    one = await c.fulfill(request("reserve", {"parts": ["pump-7"]}, key="k1"))
    two = await c.fulfill(request("reserve", {"parts": ["pump-7"]}, key="k2"))
    assert [p["availability"] for p in one.data["parts"]] == ["done"]
    assert [p["availability"] for p in two.data["parts"]] == ["terminatedWithError"]
    check = await c.fulfill(request("check_stock", {"parts": ["pump-7"]}, key="k3"))
    assert check.data["parts"] == [{"id": "pump-7", "quantity": 1, "availability": "unavailable", "in_stock": 0}]


# ---- an asynchronous stock check through the hub --------------------------------------------------------


@pytest.fixture
def hub_config(database_url, stock) -> Config:
    return Config(
        database_url=database_url,
        raw={
            "partners": {
                "supplier": {"role": "inventory", "protocol": "tmf687", "url": stock.url, "secret": stock.secret}
            },
            "outbox": {"poll_ms": 50},
            "touchpoints": {"web": {"budget_ms": 3000}},
        },
    )


async def test_an_acknowledged_stock_check_is_completed_by_the_partners_notification(hub_client, make_key, stock):
    stock.callback_url = str(hub_client.make_url("/v1/partners/supplier/callbacks"))
    key = await make_key("touchpoint:web")
    body = {
        "id": "sr1",
        "type": "service.request",
        "occurred_at": T0,
        "identities": {"email": "ann@example.com"},
        "data": {"product_id": "wm-300", "parts": ["pump-7"]},
    }
    resp = await hub_client.post("/v1/touchpoints/web/requests", json=body, headers={"Authorization": f"Bearer {key}"})
    (check,) = (await resp.json())["delivery"]["fulfillments"]
    assert check["status"] == "pending" and check["data"]["state"] == "acknowledged"
    hub = hub_client.app[HUB]

    async def confirmed() -> Any:
        rows = await hub.store.read(lambda c: list(c.execute(outbox.select())))
        return rows if rows and rows[0].status == "confirmed" else None

    deadline = asyncio.get_running_loop().time() + 10
    while not await confirmed():
        assert asyncio.get_running_loop().time() < deadline, stock.callbacks_sent
        await asyncio.sleep(0.05)
    (row,) = await confirmed()
    assert row.result["parts"][0]["availability"] == "available"
    while not (stock.callbacks_sent and stock.callbacks_sent[-1][0] == 200):  # the partner hears back last
        assert asyncio.get_running_loop().time() < deadline, stock.callbacks_sent
        await asyncio.sleep(0.05)
    # the callback's body was signed by the partner with the same secret: the hub checked it
    assert json.loads(json.dumps(stock.callbacks_sent[0][1]))["eventType"] == "CheckProductStockStateChangeEvent"
    assert datetime.now(tz=UTC) - row.updated_at < timedelta(minutes=1)
