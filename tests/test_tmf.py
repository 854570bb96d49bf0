"""TM Forum adapters (TMF646 Appointment, TMF687 Stock) and the partner simulators built on them.

Every message is checked against the TM Forum v4.0.0 definitions (tests/tmf_spec.py says which).
"""

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
from prm_tmf.simulators import AppointmentSimulator, StockSimulator, sign_headers
from tmf_spec import SPECS, assert_conforms, spec, violations

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


def test_the_specs_checked_here_are_v4_0_0_and_a_message_missing_a_required_field_fails_them():
    for protocol in SPECS:
        assert "4.0.0" in spec(protocol)["$comment"]
    assert spec("tmf646")["basePath"].rstrip("/") == prm_tmf.BASE_PATHS["tmf646"] == AppointmentSimulator.prefix
    assert spec("tmf687")["basePath"].rstrip("/") == prm_tmf.BASE_PATHS["tmf687"] == StockSimulator.prefix
    # what the hub used to send: the checks here would have caught each
    old_party = {"validFor": {}, "relatedParty": [{"role": "customer", "name": "Ann", "@referredType": "Individual"}]}
    assert violations("tmf646", "Appointment_Create", old_party) == ["relatedParty.0: 'id' is a required property"]
    old_reserve = {"reserveProductStockItem": [{"id": "1", "productStock": {}, "quantity": {"amount": 1}}]}
    assert len(violations("tmf687", "ReserveProductStock_Create", old_reserve)) == 2
    item = {"id": "1", "checkedProductStock": {"stockedProduct": {"id": "p"}}, "requestedQuantity": {"amount": 1}}
    assert violations("tmf687", "CheckProductStock_Create", {"checkProductStockItem": [item]}) == [
        "checkProductStockItem.0.checkedProductStock: 'productStockLevel' is a required property"
    ]
    assert violations("tmf687", "CheckProductStock", {"state": "acknowledged"})


def test_an_appointment_uses_tmf646_field_names():
    visit = {"name": "Ann Lee", "phone": "+14155550100", "address": "1 Main St"}
    call = prm_tmf.build_call(
        "tmf646", request("schedule", {**WINDOW, "product_id": "wm-300", "issue": "noise", "visit": visit})
    )
    assert call.path == "/appointment"
    body = call.body
    assert_conforms("tmf646", "Appointment_Create", body)
    assert body["@type"] == "Appointment" and body["externalId"] == "idem-1"
    assert body["validFor"] == {"startDateTime": WINDOW["window_start"], "endDateTime": WINDOW["window_end"]}
    assert body["relatedPlace"]["role"] == "interventionAddress"
    assert body["relatedEntity"] == [{"id": "wm-300", "role": "product", "@referredType": "Product"}]
    assert body["contactMedium"] == [{"mediumType": "phone", "characteristic": {"phoneNumber": "+14155550100"}}]
    # RelatedParty.id is required: a pseudonym per partner, not the hub's customer id
    (party,) = body["relatedParty"]
    assert party["id"] and "cus_1" not in party["id"] and party["name"] == "Ann Lee"
    other = FulfillmentRequest("ful_1", "other-firm", "schedule", "cus_1", "dlg_1", {**WINDOW, "visit": visit}, "k")
    assert prm_tmf.build_call("tmf646", other).body["relatedParty"][0]["id"] != party["id"]
    bare = prm_tmf.build_call("tmf646", request("schedule", {**WINDOW})).body
    assert_conforms("tmf646", "Appointment_Create", bare)
    assert not {"relatedParty", "relatedPlace", "contactMedium", "relatedEntity"} & set(bare)
    search = prm_tmf.build_call("tmf646", request("search_slots", WINDOW))
    assert search.path == "/searchTimeSlot"
    assert_conforms("tmf646", "SearchTimeSlot_Create", search.body)


def test_stock_requests_use_tmf687_field_names_and_unknown_actions_are_named():
    call = prm_tmf.build_call("tmf687", request("check_stock", {"parts": ["pump-7", {"id": "belt", "quantity": 2}]}))
    assert call.path == "/checkProductStock"
    assert_conforms("tmf687", "CheckProductStock_Create", call.body)
    items = call.body["checkProductStockItem"]
    assert [i["checkedProductStock"]["stockedProduct"]["id"] for i in items] == ["pump-7", "belt"]
    assert [i["requestedQuantity"]["amount"] for i in items] == [1, 2]
    reserve = prm_tmf.build_call("tmf687", request("reserve", {"parts": [{"id": "belt", "quantity": 2}]}))
    assert reserve.path == "/reserveProductStock"
    assert_conforms("tmf687", "ReserveProductStock_Create", reserve.body)
    (item,) = reserve.body["reserveProductStockItem"]
    assert item["requestedProduct"]["id"] == "belt" and item["quantityRequested"]["amount"] == 2
    with pytest.raises(ValueError, match="check_stock, reserve"):
        prm_tmf.build_call("tmf687", request("schedule", {}))


def note(event_type: str | None, key: str, resource: dict[str, Any]) -> dict[str, Any]:
    if key == "appointment":  # Appointment.validFor is required
        resource = {"validFor": {}, **resource}
    body: dict[str, Any] = {"eventId": "e1", "eventTime": T0, "event": {key: resource}}
    if event_type:
        body["eventType"] = event_type
    return body


def test_notifications_map_to_statuses():
    appt = note("AppointmentStateChangeEvent", "appointment", {"id": "a1", "status": "completed"})
    assert_conforms("tmf646", "AppointmentStateChangeEvent", appt)
    got = prm_tmf.parse_callback("tmf646", appt)
    assert (got.ref, got.status, dict(got.data)) == (
        "a1",
        "completed",
        {"partner_ref": "a1", "appointment_id": "a1", "appointment_status": "completed"},
    )
    # the hub's key in externalId names the request even before the hub learnt the appointment's id
    keyed = note(
        "AppointmentStateChangeEvent", "appointment", {"id": "a1", "externalId": "idem-1", "status": "confirmed"}
    )
    assert (prm_tmf.parse_callback("tmf646", keyed).ref, prm_tmf.parse_callback("tmf646", keyed).status) == (
        "idem-1",
        "confirmed",
    )
    # eventType is optional: the listener path names the event, else it is a state change
    bare = note(None, "appointment", {"id": "a1", "status": "confirmed", "@type": "Appointment", "@baseType": "X"})
    assert_conforms("tmf646", "AppointmentStateChangeEvent", bare)
    assert prm_tmf.parse_callback("tmf646", bare).status == "confirmed"
    deleted = prm_tmf.parse_callback("tmf646", bare, listener="appointmentDeleteEvent")
    assert (deleted.event_type, deleted.status, deleted.data["appointment_status"]) == (
        "AppointmentDeleteEvent",
        "rejected",
        "deleted",
    )
    # a delete event is never a confirmation, whatever status the deleted appointment had
    gone = note("AppointmentDeleteEvent", "appointment", {"id": "a1", "status": "confirmed"})
    assert_conforms("tmf646", "AppointmentDeleteEvent", gone)
    assert prm_tmf.parse_callback("tmf646", gone).status == "rejected"
    # an attribute change without a status keeps the request's
    moved = note(
        "AppointmentAttributeValueChangeEvent",
        "appointment",
        {"id": "a1", "validFor": {"startDateTime": T0, "endDateTime": T0}},
    )
    assert_conforms("tmf646", "AppointmentAttributeValueChangeEvent", moved)
    changed = prm_tmf.parse_callback("tmf646", moved)
    assert changed.status is None and changed.data["window_start"] == T0
    # search time slot: its status is read, not assumed
    for state, status in [("inProgress", "pending"), ("rejected", "rejected"), ("done", "confirmed")]:
        search = note("SearchTimeSlotStateChangeEvent", "searchTimeSlot", {"id": "s1", "status": state})
        assert_conforms("tmf646", "SearchTimeSlotStateChangeEvent", search)
        assert prm_tmf.parse_callback("tmf646", search).status == status
    # an event type the hub does not act on is ignored, never a confirmation
    other = prm_tmf.parse_callback("tmf646", {"eventType": "Other", "event": {}})
    assert other.ignored and other.status is None
    assert prm_tmf.parse_callback("tmf687", appt).ignored

    # TMF687: TaskStateType is accepted | inProgress | done | terminatedWithError
    for state, status in [("accepted", "pending"), ("inProgress", "pending"), ("done", "confirmed"),
                          ("terminatedWithError", "failed")]:  # fmt: skip
        task = note("CheckProductStockStateChangeEvent", "checkProductStock", {"id": "t1", "state": state})
        assert_conforms("tmf687", "CheckProductStockStateChangeEvent", task)
        assert prm_tmf.parse_callback("tmf687", task).status == status
    task = note("CheckProductStockStateChangeEvent", "checkProductStock", {"id": "t1", "state": "done",
                "checkProductStockItem": []})  # fmt: skip
    got = prm_tmf.parse_callback("tmf687", task)
    assert (got.ref, got.status, dict(got.data)) == (
        "t1",
        "confirmed",
        {"partner_ref": "t1", "state": "done", "parts": []},
    )
    # the older spelling is still read, as an alias of accepted
    old = note("CheckProductStockStateChangeEvent", "checkProductStock", {"id": "t1", "state": "acknowledged"})
    assert prm_tmf.parse_callback("tmf687", old).data["state"] == "accepted"
    reserved = {
        "id": "r1",
        "reserveProductStockState": "done",
        "reserveProductStockItem": [
            {"id": "1", "requestedProduct": {"id": "belt"}, "quantityRequested": {"amount": 2},
             "quantityReserved": {"amount": 2}, "reserveProductStockState": "done"},
        ],
    }  # fmt: skip
    event = note("ReserveProductStockStateChangeEvent", "reserveProductStock", reserved)
    assert_conforms("tmf687", "ReserveProductStockStateChangeEvent", event)
    got = prm_tmf.parse_callback("tmf687", event)
    assert (got.ref, got.status) == ("r1", "confirmed")
    assert got.data["parts"] == [{"id": "belt", "quantity": 2, "availability": "done", "reserved": 2}]
    answer = prm_tmf.parse_result("tmf687", request("reserve", {}), 201, reserved)
    assert answer.status == "confirmed" and answer.data["parts"][0]["reserved"] == 2


@pytest.mark.parametrize(
    ("protocol", "body", "field"),
    [
        ("tmf646", note("AppointmentStateChangeEvent", "appointment", {"id": "a1", "status": "booked"}),
         "event.appointment.status"),
        ("tmf646", note("AppointmentStateChangeEvent", "appointment", {"status": "confirmed"}), "event.appointment.id"),
        ("tmf646", note("SearchTimeSlotStateChangeEvent", "searchTimeSlot", {"id": "s", "status": "created"}),
         "event.searchTimeSlot.status"),
        ("tmf646", note("AppointmentStateChangeEvent", "appointment", {"id": 7}), "event.appointment.id"),
        ("tmf687", note("CheckProductStockStateChangeEvent", "checkProductStock", {"id": "t", "state": "finished"}),
         "event.checkProductStock.state"),
        ("tmf687", note(None, "reserveProductStock", {"reserveProductStockState": "done"}),
         "event.reserveProductStock.id"),
        ("tmf687", {"eventType": "CheckProductStockStateChangeEvent", "event": []}, "event"),
    ],
)  # fmt: skip
def test_a_notification_breaking_the_spec_names_the_field(protocol, body, field):
    with pytest.raises(prm_tmf.InvalidMessage) as caught:
        prm_tmf.parse_callback(protocol, body)
    assert caught.value.field == field
    if field.endswith(("status", "state")):
        assert caught.value.ref  # the request it names can be marked for attention


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


OPEN_CLIENTS: list[PartnerClient] = []


@pytest.fixture(autouse=True)
async def _close_clients() -> Any:
    yield
    while OPEN_CLIENTS:
        await OPEN_CLIENTS.pop().close()


def client(sim: Any, protocol: str) -> PartnerClient:
    made = PartnerClient(PartnerSettings("p", "x", protocol, sim.url, sim.secret, 3000))
    OPEN_CLIENTS.append(made)  # its session is closed after the test
    return made


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


async def test_an_accepted_stock_check_is_completed_by_the_partners_notifications(hub_client, make_key, stock):
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
    assert check["status"] == "pending" and check["data"]["state"] == "accepted"
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
    # accepted, then inProgress, then done: each message as TMF687 v4.0.0 defines it
    states = [m.get("state") or m["event"]["checkProductStock"]["state"] for _, m in stock.sent]
    assert states == ["accepted", "inProgress", "done"]
    for definition, message in stock.sent:
        assert_conforms("tmf687", definition, message)
    assert datetime.now(tz=UTC) - row.updated_at < timedelta(minutes=1)


async def test_every_message_the_simulators_send_follows_the_v4_0_0_definitions(aiohttp_server):
    """Synchronous answers, errors, and the asynchronous paths (accepted, inProgress, done,
    terminatedWithError, a state change, a delete), as received by a registered listener."""
    from aiohttp import web

    received: list[tuple[str, dict[str, Any]]] = []

    async def listener(request: web.Request) -> web.Response:
        received.append((request.match_info["event"], await request.json()))
        return web.json_response({"id": "x", "callback": "/"}, status=201)

    app = web.Application()
    app.router.add_post("/hub/{partner}/listener/{event}", listener)
    hub = await aiohttp_server(app)
    field = AppointmentSimulator(secret(), callback_delay_ms=1)
    stock = StockSimulator(secret(), stock={"pump-7": 1}, callback_delay_ms=1)
    await field.serve()
    await stock.serve()
    try:
        for sim, name, protocol in ((field, "field", "tmf646"), (stock, "stock", "tmf687")):
            text = json.dumps({"callback": str(hub.make_url(f"/hub/{name}"))})
            async with aiohttp.ClientSession() as session:
                async with session.post(sim.url + "/hub", data=text, headers=sign_headers(sim.secret, text)) as resp:
                    assert resp.status == 201
                async with session.post(sim.url + "/hub", json={}) as resp:
                    assert resp.status == 401
                    assert_conforms(protocol, "Error", await resp.json())
        f, s = client(field, "tmf646"), client(stock, "tmf687")
        await f.fulfill(request("schedule", WINDOW, key="a1"))
        await f.fulfill(request("schedule", {"window_start": "2026-11-28T00:00:00Z",
                                             "window_end": "2026-11-29T00:00:00Z"}, key="a2"))  # fmt: skip
        await f.fulfill(request("search_slots", WINDOW, key="a3"))
        assert (await f.fulfill(request("schedule", {}, key="a4"))).status == "rejected"  # 400
        field.answer_later = True
        later = await f.fulfill(request("schedule", {**WINDOW, "window_end": "2026-11-27T00:00:00Z"}, key="a5"))
        assert later.status == "pending"
        await s.fulfill(request("check_stock", {"parts": ["pump-7", "belt"]}, key="s1"))
        await s.fulfill(request("reserve", {"parts": ["pump-7"]}, key="s2"))
        await s.fulfill(request("reserve", {"parts": ["pump-7"]}, key="s3"))  # none left
        stock.answer_later = True
        await s.fulfill(request("check_stock", {"parts": ["pump-7"]}, key="s4"))
        stock.terminate = True
        await s.fulfill(request("reserve", {"parts": ["pump-7"]}, key="s5"))
        field.set_status(later.data["appointment_id"], "completed")
        field.delete(later.data["appointment_id"])
        want = {"appointmentStateChangeEvent": 2, "appointmentDeleteEvent": 1,
                "checkProductStockStateChangeEvent": 2, "reserveProductStockStateChangeEvent": 2}  # fmt: skip

        async def all_received() -> bool:
            return sum(want.values()) == len(received)

        deadline = asyncio.get_running_loop().time() + 10
        while not await all_received():
            assert asyncio.get_running_loop().time() < deadline, received
            await asyncio.sleep(0.02)
    finally:
        await field.stop()
        await stock.stop()
    assert {e: sum(1 for n, _ in received if n == e) for e in want} == want
    states = [m["event"]["reserveProductStock"]["reserveProductStockState"] for n, m in received if "reserve" in n]
    assert states == ["inProgress", "terminatedWithError"]
    definitions = {d for d, _ in field.sent + stock.sent}
    assert definitions >= {"Appointment", "SearchTimeSlot", "Error", "EventSubscription", "CheckProductStock",
                           "ReserveProductStock", "AppointmentDeleteEvent"}  # fmt: skip
    for sim, protocol in ((field, "tmf646"), (stock, "tmf687")):
        for definition, message in sim.sent:
            assert_conforms(protocol, definition, message)
    for name, message in received:
        protocol = "tmf646" if name.startswith("appointment") else "tmf687"
        assert message["eventType"] == name[0].upper() + name[1:]
        assert_conforms(protocol, message["eventType"], message)


async def test_an_answer_breaking_the_spec_is_marked_for_attention_not_left_pending(aiohttp_server):
    from aiohttp import web

    answers = {
        "/checkProductStock": {"id": "t1", "state": "acknowledgedLater"},
        "/searchTimeSlot": {"id": "s1", "status": "created", "availableTimeSlot": []},
    }

    async def answer(request: web.Request) -> web.Response:
        return web.json_response(answers[request.path], status=201)

    app = web.Application()
    app.router.add_post("/{action}", answer)
    server = await aiohttp_server(app)
    for protocol, action, field in [("tmf687", "check_stock", "body.state"), ("tmf646", "search_slots", "body.status")]:
        settings = PartnerSettings("p", "x", protocol, str(server.make_url("")).rstrip("/"), secret(), 3000)
        partner = PartnerClient(settings)
        try:
            result = await partner.fulfill(request(action, {**WINDOW, "parts": ["pump-7"]}))
        finally:
            await partner.close()
        assert result.status == "failed"
        assert result.data["attention"]["field"] == field
