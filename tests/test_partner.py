"""Partner services end to end: real TMF646/TMF687 partner servers (the simulators), real
Standard Webhooks signatures both ways, the outbox on SQLite and PostgreSQL.

The partners here are aiohttp servers on loopback; what they received is checked with the
``standardwebhooks`` library (each simulator verifies every call, and refuses a bad one).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import web
from attrs import evolve
from cloudevents.core.bindings.http import HTTPMessage, from_structured_event
from positions import read_after
from prm_partner.playbook import add_business_days, visit_details
from prm_tmf.simulators import AppointmentSimulator, StockSimulator, sign_headers
from standardwebhooks import Webhook
from tmf_spec import assert_conforms

from prm_core import hookimpl
from prm_core.config import Config
from prm_core.hub import Hub
from prm_core.outbox import Fulfillment
from prm_core.store.tables import outbox, partner_callbacks

T0 = "2026-11-23T08:00:00Z"
ANN = {"email": "ann@example.com", "phone": "+14155550100"}


def async_len(read: Callable[[], Any], n: int) -> Callable[[], Any]:
    async def check() -> bool:
        return len(await read()) == n

    return check


def headers_of(body: str) -> dict[str, str]:
    return sign_headers(new_secret(), body)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


async def eventually(check: Callable[[], Any], within_s: float = 15.0) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


class Pushes:
    """A touch point that pushes fulfillment updates to its open sessions (here: a list)."""

    __name__ = "pushes"

    def __init__(self) -> None:
        self.updates: list[Fulfillment] = []

    @hookimpl
    def prm_fulfillment_updated(self, fulfillment):
        self.updates.append(fulfillment)

    def of(self, partner: str, status: str) -> list[Fulfillment]:
        return [f for f in self.updates if f.partner == partner and f.status == status]


@pytest.fixture
async def field() -> Any:
    sim = AppointmentSimulator(new_secret(), latency_ms=20)
    await sim.serve()
    yield sim
    await sim.stop()


@pytest.fixture
async def stock() -> Any:
    sim = StockSimulator(new_secret(), stock={"pump-7": 3, "belt-2": 0}, latency_ms=10)
    await sim.serve()
    yield sim
    await sim.stop()


def partners_config(database_url: str, field: Any, stock: Any, **extra: Any) -> Config:
    raw: dict[str, Any] = {
        "partners": {
            "fieldservice": {
                "role": "field_service",
                "protocol": "tmf646",
                "url": field.url,
                "secret": field.secret,
                "timeout_ms": 5000,
                "register_listener": False,  # public_url names no server here
            },
            "supplier": {
                "role": "inventory",
                "protocol": "tmf687",
                "url": stock.url,
                "secret": stock.secret,
                "timeout_ms": 5000,
                "register_listener": False,
            },
        },
        "outbox": {"poll_ms": 50, "retry_base_ms": 50, "retry_cap_s": 0.3, "lease_s": 30},
        "partner_breaker": {"fail_max": 1000},
        "touchpoints": {"web": {"budget_ms": 3000}},
    }
    for key, value in extra.items():
        raw[key] = {**raw.get(key, {}), **value}
    return Config(database_url=database_url, public_url="http://hub.test", raw=raw)


@pytest.fixture
def pushes() -> Pushes:
    return Pushes()


@pytest.fixture
def hub_config(request, database_url, field, stock) -> Config:
    if getattr(request, "param", None) == "failover":  # a second field-service firm
        return request.getfixturevalue("failover_config")
    return partners_config(database_url, field, stock)


@pytest.fixture
def hub_plugins(pushes):
    return [pushes]


async def platinum_ann(hub: Hub) -> str:
    (rec,) = await hub.record(
        hub.parse_events({"id": "e0", "type": "identify", "occurred_at": T0, "identities": ANN}, "web")
    )
    await hub.update_customer(
        rec.customer_id,
        {"tier": "platinum", "traits": {"first_name": "Ann", "last_name": "Lee", "address": "1 Main St, Springfield"}},
    )
    return rec.customer_id


def service_request(event_id: str = "sr1", parts: list[Any] | None = None) -> dict[str, Any]:
    return {
        "id": event_id,
        "type": "service.request",
        "occurred_at": T0,
        "identities": {"email": "ann@example.com"},
        "data": {"product_id": "wm-300", "issue": "drum does not spin", "parts": parts or ["pump-7", "belt-2"]},
    }


async def rows(hub: Hub, *where: Any) -> list[Any]:
    return await hub.store.read(lambda conn: list(conn.execute(sa.select(outbox).where(*where))))


# ---- the flagship: a service request at the web ---------------------------------------------------


async def test_a_service_request_books_a_technician_and_checks_parts_in_the_answer(
    hub_client, make_key, field, stock, pushes
):
    admin, web_key = await make_key("admin"), await make_key("touchpoint:web")
    auth = {"Authorization": f"Bearer {admin}"}
    sent = await hub_client.post(
        "/v1/touchpoints/web/events",
        json={"id": "e0", "type": "identify", "occurred_at": T0, "identities": ANN},
        headers={"Authorization": f"Bearer {web_key}"},
    )
    await read_after(hub_client, await sent.json(), "email:ann@example.com", auth)  # Ann is recorded
    patched = await hub_client.patch(
        "/v1/customers/email:ann@example.com",
        json={"tier": "platinum", "traits": {"first_name": "Ann", "last_name": "Lee", "address": "1 Main St"}},
        headers=auth,
    )
    assert patched.status == 200
    before = datetime.now(tz=UTC)
    resp = await hub_client.post(
        "/v1/touchpoints/web/requests", json=service_request(), headers={"Authorization": f"Bearer {web_key}"}
    )
    assert resp.status == 200
    answer = await resp.json()
    assert answer["degraded"] == []
    by_partner = {f["partner"]: f for f in answer["delivery"]["fulfillments"]}
    visit = by_partner["fieldservice"]
    assert visit["status"] == "confirmed"
    start = datetime.fromisoformat(visit["data"]["window_start"])
    end = datetime.fromisoformat(visit["data"]["window_end"])
    # platinum: the visit is within one business day
    assert before - timedelta(minutes=1) <= start < end <= add_business_days(before, 1) + timedelta(minutes=1)
    parts = {p["id"]: p["availability"] for p in by_partner["supplier"]["data"]["parts"]}
    assert parts == {"pump-7": "available", "belt-2": "unavailable"}

    # what each partner was told: only what its role needs
    (booking,) = field.bodies
    assert booking["@type"] == "Appointment"
    assert booking["relatedParty"][0]["name"] == "Ann Lee"
    assert booking["contactMedium"][0]["characteristic"]["phoneNumber"] == "+14155550100"
    assert booking["relatedPlace"]["name"] == "1 Main St"
    assert "ann@example.com" not in json.dumps(booking)
    (check,) = stock.bodies
    assert not {"Ann", "Lee", "+14155550100", "ann@example.com", "Main"} & set(
        json.dumps(check).replace('"', " ").split()
    )
    # signed, with an idempotency key that is also the Standard Webhooks message id
    for sim in (field, stock):
        (headers,) = sim.headers
        assert headers["Idempotency-Key"] == headers["webhook-id"]
        assert sim.refused_signatures == 0

    # the view lists both, newest first, in the public view's shape
    read = {"Authorization": f"Bearer {await make_key('read')}"}

    async def settled() -> list[dict[str, Any]] | None:
        view = await (await hub_client.get("/v1/customers/email:ann@example.com", headers=read)).json()
        found = view["fulfillments"]
        return found if [f["status"] for f in found] == ["confirmed", "confirmed"] else None

    listed = await eventually(settled)
    assert set(listed[0]) == {
        "id", "partner", "role", "action", "status", "dialogue_id", "requested_at", "updated_at", "data",
    }  # fmt: skip
    assert {f["role"] for f in listed} == {"field_service", "inventory"}
    assert {f["dialogue_id"] for f in listed} == {answer["dialogue_id"]}
    view = await (await hub_client.get("/v1/customers/email:ann@example.com", headers=read)).json()
    types = [t["type"] for t in view["timeline"] if t["dialogue"] == answer["dialogue_id"]]
    assert types.count("fulfillment.updated") == 2 and "fulfillment.planned" in types
    await eventually(lambda: len(pushes.of("fieldservice", "confirmed")) == 1)


async def test_without_partner_sharing_consent_the_technician_gets_no_personal_data(hub, field, stock):
    cid = await platinum_ann(hub)
    view = await hub.view(cid)
    assert visit_details(view, "fieldservice") == {
        "name": "Ann Lee",
        "phone": "+14155550100",
        "address": "1 Main St, Springfield",
    }
    # consents reach the view through the privacy area; the rule is prm_core.consent.allows
    denied = {"purpose": "partner_sharing", "channel": "fieldservice", "granted": False, "recorded_at": T0}
    assert visit_details(evolve(view, consents=(denied,)), "fieldservice") == {}
    elsewhere = {**denied, "channel": "otherfirm"}
    assert visit_details(evolve(view, consents=(elsewhere,)), "fieldservice") != {}


@pytest.mark.parametrize(
    ("asked", "due"),
    [
        ("2026-12-07T10:30:00+00:00", "2026-12-08T10:30:00+00:00"),  # Monday: Tuesday, same time
        ("2026-12-04T10:30:00+00:00", "2026-12-07T10:30:00+00:00"),  # Friday: over the weekend to Monday
        ("2026-12-05T10:30:00+00:00", "2026-12-08T00:00:00+00:00"),  # Saturday: all of Monday
        ("2026-12-06T01:00:00+00:00", "2026-12-08T00:00:00+00:00"),  # Sunday night: all of Monday
    ],
)
def test_a_business_day_does_not_start_at_the_weekend(asked: str, due: str):
    assert add_business_days(datetime.fromisoformat(asked), 1) == datetime.fromisoformat(due)


async def test_entitlement_follows_the_tier_and_config(hub, field, stock):
    cid = await platinum_ann(hub)
    await hub.update_customer(cid, {"tier": "gold"})
    (request,) = hub.parse_events(service_request("sr-gold"), "web")
    answer = await hub.request(request)
    visit = next(f for f in answer.delivery.fulfillments if f.partner == "fieldservice")
    assert visit.status == "confirmed"
    (booking,) = field.bodies
    start = datetime.fromisoformat(booking["validFor"]["startDateTime"])
    end = datetime.fromisoformat(booking["validFor"]["endDateTime"])
    assert end == add_business_days(start, 2)


# ---- never lost ---------------------------------------------------------------------------------------


async def test_a_partner_down_queues_requests_and_delivers_each_exactly_once_after_recovery(hub, field, stock, pushes):
    await platinum_ann(hub)
    stock.down, stock.retry_after_s = True, 0
    answers = []
    for n in range(4):
        (request,) = hub.parse_events(service_request(f"sr{n}"), "web")
        answers.append(await hub.request(request))
    for answer in answers:
        # the touch point still answered, naming the partner that was down
        assert answer.delivery.degraded == ("partner:supplier",)
        assert [f.partner for f in answer.delivery.fulfillments] == ["fieldservice"]
    await eventually(lambda: stock.outage_answers >= 8)  # retried while down
    stock.down = False
    await eventually(lambda: len(pushes.of("supplier", "confirmed")) == 4)
    assert stock.delivered == 4 and stock.duplicates == 0
    assert len(set(stock.key_counts)) == 4
    done = await rows(hub, outbox.c.partner == "supplier")
    assert {r.status for r in done} == {"confirmed"} and all(r.next_attempt_at is None for r in done)
    assert all(r.attempts >= 2 for r in done)


async def test_a_late_partner_finishes_in_the_background_and_is_pushed(hub, field, stock, pushes):
    await platinum_ann(hub)
    field.hold()  # the field-service firm answers only after the touch point's budget has passed
    (request,) = hub.parse_events(service_request(), "web")
    try:
        answer = await hub.request(request)
        assert answer.delivery.degraded == ("partner:fieldservice",)
        assert [f.partner for f in answer.delivery.fulfillments] == ["supplier"]
        assert not pushes.of("fieldservice", "confirmed")
    finally:
        field.release()
    (late,) = await eventually(lambda: pushes.of("fieldservice", "confirmed"))
    assert late.dialogue_id == answer.recorded.dialogue_id
    assert late.data["window_start"] and late.data["window_end"]
    view = await hub.view("email:ann@example.com")
    assert any(
        t["type"] == "fulfillment.updated"
        and t["data"]["partner"] == "fieldservice"
        and t["dialogue"] == late.dialogue_id
        for t in view.timeline
    )
    assert field.delivered == 1 and field.duplicates == 0


async def test_the_plan_is_durable_with_its_event_and_a_replay_asks_nobody_again(hub, field, stock):
    await platinum_ann(hub)
    (request,) = hub.parse_events(service_request(), "web")
    first = await hub.request(request)
    await eventually(async_len(lambda: rows(hub, outbox.c.status == "confirmed"), 2))
    again = await hub.request(request)
    # the replay's answer says what the partners said, without asking them again
    assert {(f.partner, f.status) for f in again.delivery.fulfillments} == {
        ("fieldservice", "confirmed"),
        ("supplier", "confirmed"),
    }
    planned = await rows(hub)
    assert len(planned) == 2
    assert {r.cause_event_id for r in planned} == {
        next(
            t["event_id"]
            for t in (await hub.view("email:ann@example.com")).timeline
            if t["type"] == "fulfillment.planned"
        )
    }
    assert {r.dialogue_id for r in planned} == {first.recorded.dialogue_id}
    assert field.calls == stock.calls == 1


async def test_calls_to_a_partner_reuse_one_connection_which_the_stopping_hub_closes(database_url, field, stock):
    from prm_partner import directory

    async with Hub.open(partners_config(database_url, field, stock), autoload=True) as hub:
        await platinum_ann(hub)
        for n in range(3):
            (request,) = hub.parse_events(service_request(f"sr-{n}"), "web")
            answer = await hub.request(request)
            assert answer.delivery.degraded == ()
        assert field.calls == stock.calls == 3
        # one kept-alive connection per partner: every call came from the same client port
        assert len(set(field.peers)) == len(set(stock.peers)) == 1
        assert field.peers[0] != stock.peers[0]
        sessions = [client.session() for client in directory.clients.values()]
        assert sessions and not any(s.closed for s in sessions)
    # prm_hub_stopping: the partners' sessions (and their connections) are closed with the hub
    assert all(s.closed for s in sessions)


async def test_a_row_left_by_a_dead_hub_is_sent_after_restart_and_an_acknowledged_one_is_not_resent(
    database_url, field, stock
):
    config = partners_config(database_url, field, stock)
    field.down, field.retry_after_s = True, 3600  # the first hub never gets it through
    async with Hub.open(config, autoload=True) as first:
        await platinum_ann(first)
        (request,) = first.parse_events(service_request(), "web")
        answer = await first.request(request)
        assert "partner:fieldservice" in answer.delivery.degraded
        await eventually(lambda: stock.delivered == 1)
        await eventually(
            lambda: first.store.read(
                lambda c: (
                    c.execute(sa.select(outbox.c.status).where(outbox.c.partner == "supplier")).scalar() == "confirmed"
                )
            )
        )
    (waiting,) = await _read_rows(database_url, outbox.c.partner == "fieldservice")
    assert waiting.status == "pending" and waiting.next_attempt_at > datetime.now(tz=UTC) + timedelta(minutes=30)
    field.down = False
    # the partner is back; time passes (the Retry-After is over): a new hub process picks the row up
    await _write(database_url, outbox.update().values(next_attempt_at=datetime.now(tz=UTC) - timedelta(seconds=1))
                 .where(outbox.c.partner == "fieldservice"))  # fmt: skip
    stock_calls = stock.calls
    async with Hub.open(config, autoload=True) as second:
        await eventually(
            lambda: second.store.read(
                lambda c: (
                    c.execute(sa.select(outbox.c.status).where(outbox.c.partner == "fieldservice")).scalar()
                    == "confirmed"
                )
            )
        )
        await asyncio.sleep(0.3)  # a few more polls: nothing else is due
    assert field.delivered == 1 and field.duplicates == 0
    assert stock.calls == stock_calls  # acknowledged before the restart: not sent again
    # a hub that died after the partner acknowledged but before it wrote so down re-sends with
    # the same Idempotency-Key: the partner recognizes it, and books nothing twice
    await _write(database_url, outbox.update().values(status="pending", next_attempt_at=datetime.now(tz=UTC))
                 .where(outbox.c.partner == "fieldservice"))  # fmt: skip
    async with Hub.open(config, autoload=True) as third:
        await eventually(
            lambda: third.store.read(
                lambda c: (
                    c.execute(sa.select(outbox.c.status).where(outbox.c.partner == "fieldservice")).scalar()
                    == "confirmed"
                )
            )
        )
    assert field.delivered == 1 and field.duplicates == 1 and len(field.appointments) == 1


async def _read_rows(database_url: str, *where: Any) -> list[Any]:
    from prm_core.store import Store

    store = Store.open(database_url)
    try:
        return await store.read(lambda conn: list(conn.execute(sa.select(outbox).where(*where))))
    finally:
        await store.dispose()


async def _write(database_url: str, statement: Any) -> None:
    from prm_core.store import Store

    store = Store.open(database_url)
    try:
        await store.write(lambda conn: conn.execute(statement))
    finally:
        await store.dispose()


async def test_two_hubs_claim_each_due_row_once(database_url, field, stock):
    config = partners_config(database_url, field, stock, outbox={"poll_ms": 60_000})
    async with Hub.open(config, autoload=True) as a, Hub.open(config, migrate=False, autoload=True) as b:
        await a.outbox.stop()
        await b.outbox.stop()
        now = datetime.now(tz=UTC) - timedelta(seconds=1)
        await a.store.write(
            lambda conn: conn.execute(
                outbox.insert(),
                [
                    {
                        "id": f"ful_{n}", "request_id": f"r{n}", "idempotency_key": f"k{n}", "partner": "supplier",
                        "role": "inventory", "action": "check_stock", "customer_id": "cus_x", "touchpoint": "web",
                        "dialogue_id": "dlg_x", "cause_event_id": "e", "payload": {}, "status": "pending", "result": {},
                        "attempts": 0, "next_attempt_at": now, "requested_at": now, "updated_at": now,
                    }
                    for n in range(40)
                ],
            )
        )  # fmt: skip

        async def drain(hub: Hub) -> list[str]:
            got: list[str] = []
            while batch := await hub.outbox.claim(3):
                got += [c.row_id for c in batch]
            return got

        claimed = await asyncio.gather(*(drain(hub) for hub in (a, b, a, b)))
    ids = [row_id for got in claimed for row_id in got]
    assert len(ids) == len(set(ids)) == 40


# ---- inbound callbacks ------------------------------------------------------------------------------


@pytest.fixture
def async_field(field, hub_client):
    field.callback_url = str(hub_client.make_url("/v1/partners/fieldservice/callbacks"))
    return field


async def _ask(hub_client, make_key) -> dict[str, Any]:
    web_key = await make_key("touchpoint:web")
    headers = {"Authorization": f"Bearer {web_key}"}
    resp = await hub_client.post("/v1/touchpoints/web/requests", json=service_request(), headers=headers)
    assert resp.status == 200
    return await resp.json()


async def test_a_signed_callback_confirms_a_pending_booking(hub_client, make_key, async_field, pushes):
    answer = await _ask(hub_client, make_key)
    visit = next(f for f in answer["delivery"]["fulfillments"] if f["partner"] == "fieldservice")
    assert visit["status"] == "pending"  # initialized: the partner confirms later
    (confirmed,) = await eventually(lambda: pushes.of("fieldservice", "confirmed"))
    # the hub told its touch points before answering the partner: the partner learns a moment later
    await eventually(lambda: async_field.callbacks_sent and async_field.callbacks_sent[-1][0] == 200)
    assert confirmed.data["appointment_id"] == visit["data"]["appointment_id"]


async def test_a_forged_or_stale_callback_is_refused_and_writes_nothing(hub_client, make_key, field, stock):
    answer = await _ask(hub_client, make_key)
    appt = next(f for f in answer["delivery"]["fulfillments"] if f["partner"] == "fieldservice")["data"]
    hub = hub_client.app[__import__("prm_core.server.state", fromlist=["HUB"]).HUB]
    await eventually(lambda: rows(hub, outbox.c.partner == "fieldservice", outbox.c.status == "confirmed"))
    note = json.dumps(
        {
            "eventType": "AppointmentStateChangeEvent",
            "event": {"appointment": {"id": appt["appointment_id"], "status": "cancelled"}},
        }
    )
    url = "/v1/partners/fieldservice/callbacks"
    forged = await hub_client.post(url, data=note, headers=sign_headers(new_secret(), note))
    assert forged.status == 401
    stale = sign_headers(field.secret, note)
    old = datetime.now(tz=UTC) - timedelta(minutes=10)
    stale |= {
        "webhook-timestamp": str(int(old.timestamp())),
        "webhook-signature": Webhook(field.secret).sign(stale["webhook-id"], old, note),
    }
    assert (await hub_client.post(url, data=note, headers=stale)).status == 401
    unsigned = await hub_client.post(url, data=note, headers={"Content-Type": "application/json"})
    assert unsigned.status == 401
    # another partner, validly signed, cannot touch the field-service firm's booking: not even
    # by naming its appointment id or the hub's request id in a notification of its own
    (booking,) = await rows(hub, outbox.c.partner == "fieldservice")
    for ref in (appt["appointment_id"], booking.request_id, booking.idempotency_key):
        task = {"checkProductStock": {"id": ref, "state": "terminatedWithError"}}
        theirs = json.dumps({"eventType": "CheckProductStockStateChangeEvent", "event": task})
        other = await hub_client.post(
            "/v1/partners/supplier/callbacks", data=theirs, headers=sign_headers(stock.secret, theirs)
        )
        assert other.status == 404
    # an appointment event from a stock partner is not one it sends: logged, answered, ignored
    wrong_kind = await hub_client.post(
        "/v1/partners/supplier/callbacks", data=note, headers=sign_headers(stock.secret, note)
    )
    assert wrong_kind.status == 200 and (await wrong_kind.json())["ignored"] is True
    assert (await hub_client.post("/v1/partners/nobody/callbacks", data=note, headers=headers_of(note))).status == 404
    (row,) = await rows(hub, outbox.c.partner == "fieldservice")
    assert row.status == "confirmed"
    assert (
        await hub.store.read(lambda c: c.execute(sa.select(sa.func.count()).select_from(partner_callbacks)).scalar())
        == 0
    )
    # the real partner's cancellation applies once; a redelivery is recognized
    headers = sign_headers(field.secret, note)
    first = await (await hub_client.post(url, data=note, headers=headers)).json()
    again = await (await hub_client.post(url, data=note, headers=headers)).json()
    assert (first["status"], first["duplicate"], again["duplicate"]) == ("rejected", False, True)
    (row,) = await rows(hub, outbox.c.partner == "fieldservice")
    assert row.status == "rejected"


# ---- a CloudEvents partner ------------------------------------------------------------------------------


async def test_a_cloudevents_partner_gets_a_signed_cloudevent_and_completes_by_callback(
    database_url, aiohttp_client, pushes, field, stock
):
    secret = new_secret()
    received: list[Any] = []

    async def notify(request: web.Request) -> web.Response:
        raw = await request.text()
        Webhook(secret).verify(raw, dict(request.headers))  # raises on a bad signature
        event = from_structured_event(HTTPMessage(headers=dict(request.headers), body=raw.encode()))
        received.append((event, request.headers["Idempotency-Key"]))
        return web.json_response({"status": "pending"}, status=202)

    app = web.Application()
    app.router.add_post("/notify", notify)
    notifier = await aiohttp_client(app)
    config = partners_config(database_url, field, stock)
    raw = dict(config.raw)
    raw["partners"] = {
        "notifier": {
            "role": "field_service",
            "protocol": "cloudevents",
            "url": str(notifier.make_url("/notify")),
            "secret": secret,
        }
    }
    async with Hub.open(evolve(config, raw=raw), plugins=[pushes], autoload=True) as hub:
        await platinum_ann(hub)
        (request,) = hub.parse_events(service_request(), "web")
        answer = await hub.request(request)
        (result,) = answer.delivery.fulfillments
        assert result.status == "pending"
        ((event, key),) = received
        assert event.get_type() == "com.prm.fulfillment.schedule"
        assert event.get_id() == key and event.get_subject() == result.request_id
        assert event.get_data()["visit"]["name"] == "Ann Lee"
        found, applied = await hub.outbox.apply_callback(
            "notifier", "msg-1", result.request_id, "completed", {"technician": "T-9"}
        )
        assert applied and found is not None and found.status == "completed"
        view = await hub.view("email:ann@example.com")
        (listed,) = view.sections["fulfillments"]
        assert listed["status"] == "completed" and listed["data"]["technician"] == "T-9"
        assert pushes.of("notifier", "completed")


# ---- pushing to the open session ---------------------------------------------------------------------


async def _sse_events(resp: Any) -> Any:
    """Yield the JSON of each ``fulfillment`` event of a Server-Sent Events stream."""
    async for raw in resp.content:
        line = raw.decode().strip()
        if line.startswith("data: "):
            yield json.loads(line[6:])


async def test_the_portal_session_is_pushed_the_late_appointment(hub_client, make_key, field, stock):
    field.hold()  # the field-service firm answers once the session below has seen it pending
    key = await make_key("touchpoint:web")
    auth = {"Authorization": f"Bearer {key}"}
    answer = await (await hub_client.post("/v1/touchpoints/web/requests", json=service_request(), headers=auth)).json()
    assert answer["degraded"] == ["partner:fieldservice"]
    url = f"/v1/touchpoints/web/dialogues/{answer['dialogue_id']}/fulfillments"
    assert (await hub_client.get(url)).status == 401
    pos = await make_key("touchpoint:pos")
    assert (await hub_client.get(url, headers={"Authorization": f"Bearer {pos}"})).status == 403
    elsewhere = f"/v1/touchpoints/pos/dialogues/{answer['dialogue_id']}/fulfillments"
    assert (await hub_client.get(elsewhere, headers={"Authorization": f"Bearer {pos}"})).status == 404
    seen: list[tuple[str, str]] = []
    try:
        async with hub_client.get(url, headers=auth) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
            async for update in _sse_events(resp):
                seen.append((update["partner"], update["status"]))
                if update["partner"] == "fieldservice" and update["status"] == "pending":
                    field.release()
                if update["partner"] == "fieldservice" and update["status"] == "confirmed":
                    assert update["data"]["window_start"] and update["dialogue_id"] == answer["dialogue_id"]
                    break
    finally:
        field.release()  # a call held back never outlives the test
    # first the state as it stood (the technician still pending), then the change
    assert ("fieldservice", "pending") in seen and seen[-1] == ("fieldservice", "confirmed")


@pytest.mark.parametrize("touchpoint", ["ivr", "callcenter"])
async def test_the_same_playbook_runs_from_the_call_center_and_the_ivr(hub, field, stock, touchpoint):
    await platinum_ann(hub)
    body = {**service_request(f"sr-{touchpoint}"), "identities": {"phone": "+14155550100"}}
    (request,) = hub.parse_events(body, touchpoint)
    answer = await hub.request(request)
    assert {(f.partner, f.status) for f in answer.delivery.fulfillments} == {
        ("fieldservice", "confirmed"),
        ("supplier", "confirmed"),
    }
    assert {r.touchpoint for r in await rows(hub)} == {touchpoint}


async def test_erasure_calls_off_unsent_partner_work_and_scrubs_what_was_sent(hub, field, stock):
    from prm_core.privacy.erasure import erase_customer
    from prm_core.privacy.export import export_chunks

    await platinum_ann(hub)
    field.down, field.retry_after_s = True, 3600  # the technician booking cannot get through
    (request,) = hub.parse_events(service_request("sr-erased"), "web")
    await hub.request(request)
    exported = json.loads(b"".join([chunk async for chunk in await export_chunks(hub, "email:ann@example.com")]))
    sent = {r["partner"]: r for r in exported["partner_requests"]}
    assert set(sent) == {"fieldservice", "supplier"}
    assert "Ann" in json.dumps(sent["fieldservice"]["payload"])  # the export shows what partners get

    await erase_customer(hub, "email:ann@example.com")
    after = {r.partner: r for r in await rows(hub)}
    assert all(r.payload == {} and r.result == {} for r in after.values())
    assert after["fieldservice"].status == "failed" and after["fieldservice"].next_attempt_at is None
    assert after["supplier"].status == "confirmed"  # what was done stays done, anonymously
    field.down = False
    await asyncio.sleep(0.5)  # several outbox polls: nothing more is sent for the erased customer
    assert field.delivered == 0


# ---- the TM Forum hub/listener pattern ------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_hub_registers_its_listener_and_tm_forum_notifications_reach_the_listener_paths(
    database_url, aiohttp_client, field, stock
):
    from prm_core.server.app import create_app
    from prm_core.server.state import HUB

    port = _free_port()
    field.answer_later = stock.answer_later = True
    config = partners_config(database_url, field, stock)
    raw = {**config.raw, "partners": {n: {**t, "register_listener": True} for n, t in config.raw["partners"].items()}}
    config = evolve(config, public_url=f"http://127.0.0.1:{port}", raw=raw)
    client = await aiohttp_client(create_app(config), server_kwargs={"port": port})
    # at start: POST {url}/hub with the EventSubscriptionInput, signed like every call
    await eventually(lambda: field.listeners and stock.listeners)
    ((field_sub,),) = [list(field.listeners.values())]
    assert field_sub["callback"] == f"http://127.0.0.1:{port}/v1/partners/fieldservice"
    assert [s["callback"] for s in stock.listeners.values()] == [f"http://127.0.0.1:{port}/v1/partners/supplier"]
    hub = client.app[HUB]
    await platinum_ann(hub)
    key = await create_key_for(hub, "touchpoint:web")
    resp = await client.post(
        "/v1/touchpoints/web/requests", json=service_request(), headers={"Authorization": f"Bearer {key}"}
    )
    answer = await resp.json()
    by_partner = {f["partner"]: f for f in answer["delivery"]["fulfillments"]}
    # someone listens: the partners answer pending and notify the listener paths later
    assert by_partner["fieldservice"]["data"]["appointment_status"] == "initialized"
    assert by_partner["supplier"]["data"]["state"] == "accepted"
    await eventually(async_len(lambda: rows(hub, outbox.c.status == "confirmed"), 2))
    # each notification taken, with the listener's 201 (after a 404 when it came before the hub
    # had written down the answer that named the request: the partner retries)
    last = {n["eventId"]: status for status, n in field.callbacks_sent + stock.callbacks_sent}
    assert set(last.values()) == {201}
    assert {n["eventType"] for _, n in stock.callbacks_sent} == {"CheckProductStockStateChangeEvent"}

    # the firm withdraws the booking: the view shows it withdrawn, not booked
    appt_id = by_partner["fieldservice"]["data"]["appointment_id"]
    field.delete(appt_id)
    await eventually(async_len(lambda: rows(hub, outbox.c.status == "rejected"), 1))
    view = await hub.view("email:ann@example.com")
    visit = next(f for f in view.sections["fulfillments"] if f["partner"] == "fieldservice")
    assert visit["status"] == "rejected" and visit["data"]["appointment_status"] == "deleted"
    for sim, protocol in ((field, "tmf646"), (stock, "tmf687")):
        for definition, message in sim.sent:
            assert_conforms(protocol, definition, message)

    # stopping the hub unregisters (DELETE {url}/hub/{id})
    await client.close()
    assert field.listeners == {} and stock.listeners == {}


async def create_key_for(hub: Hub, scope: str) -> str:
    from prm_core.keys import create_key

    key, _ = await create_key(hub.store, scope)
    return key


async def test_spec_breaking_or_unknown_notifications_at_the_listener(hub_client, make_key, field, stock):
    answer = await _ask(hub_client, make_key)
    check = next(f for f in answer["delivery"]["fulfillments"] if f["partner"] == "supplier")
    hub = hub_client.app[__import__("prm_core.server.state", fromlist=["HUB"]).HUB]
    await eventually(async_len(lambda: rows(hub, outbox.c.status == "confirmed"), 2))
    url = "/v1/partners/supplier/listener/checkProductStockStateChangeEvent"

    async def post(path: str, body: dict[str, Any]) -> Any:
        text = json.dumps(body)
        return await hub_client.post(path, data=text, headers=sign_headers(stock.secret, text))

    # the spec's accepted state, without the optional eventType: 201, as the spec's listener answers
    accepted = {"event": {"checkProductStock": {"id": check["data"]["partner_ref"], "state": "inProgress"}}}
    resp = await post(url, accepted)
    assert resp.status == 201 and (await resp.json())["status"] == "pending"
    # a state outside TaskStateType: 422 naming the field; the request is marked for attention
    bad = {"event": {"checkProductStock": {"id": check["data"]["partner_ref"], "state": "finished"}}}
    resp = await post(url, bad)
    assert resp.status == 422
    assert (await resp.json())["error"]["field"] == "event.checkProductStock.state"
    (row,) = await rows(hub, outbox.c.partner == "supplier")
    assert row.result["attention"]["field"] == "event.checkProductStock.state"
    # an event type this hub does not act on: answered, logged, and the request unchanged
    resp = await post("/v1/partners/supplier/listener/productStockCreateEvent", {"event": {"productStock": {}}})
    assert resp.status == 201 and (await resp.json())["ignored"] is True
    (after,) = await rows(hub, outbox.c.partner == "supplier")
    assert after.status == row.status
    # an eventType that is not the listener's is refused
    resp = await post(url, {**accepted, "eventType": "ReserveProductStockStateChangeEvent"})
    assert resp.status == 422 and (await resp.json())["error"]["field"] == "eventType"
    # unsigned: 401, and the answer says why
    resp = await hub_client.post(url, json=accepted)
    assert resp.status == 401 and "signed" in (await resp.json())["error"]["message"]
    assert (await post("/v1/partners/supplier/listener/not-an-event", accepted)).status == 404


# ---- several field-service firms ---------------------------------------------------------------------


def test_firms_are_chosen_by_region_skill_and_tier_cheapest_first():
    from prm_partner.failover import choose_firms
    from prm_partner.settings import partner_settings

    def firm(**terms: Any) -> dict[str, Any]:
        return {"role": "field_service", "protocol": "tmf646", "url": "http://x", "secret": new_secret(), **terms}

    config = Config(
        raw={
            "partners": {
                "anyfix": firm(price=120),
                "northfix": firm(regions=["north"], price=90),
                "southfix": firm(regions=["south"], price=50),
                "premium": firm(tiers=["platinum"], skills=["fridges"], price=10),
                "unpriced": firm(),
            }
        }
    )
    firms = [s for s in partner_settings(config).values()]
    names = lambda **k: [f.name for f in choose_firms(firms, **k)]  # noqa: E731
    assert names(region="north", skill=None, tier="gold") == ["northfix", "anyfix", "unpriced"]
    assert names(region="south", skill="fridges", tier="platinum") == ["premium", "southfix", "anyfix", "unpriced"]
    assert names(region=None, skill="washers", tier=None) == ["anyfix", "unpriced"]
    with pytest.raises(Exception, match=r"\[partners.bad\].price"):
        partner_settings(Config(raw={"partners": {"bad": firm(price="cheap")}}))
    with pytest.raises(Exception, match=r"\[partners.bad\].regions"):
        partner_settings(Config(raw={"partners": {"bad": firm(regions="north")}}))


@pytest.fixture
async def backup() -> Any:
    sim = AppointmentSimulator(new_secret(), latency_ms=20)
    await sim.serve()
    yield sim
    await sim.stop()


def two_firms(database_url: str, field: Any, stock: Any, backup: Any) -> Config:
    config = partners_config(database_url, field, stock)
    raw = dict(config.raw)
    raw["partners"] = {
        **raw["partners"],
        "fieldservice": {**raw["partners"]["fieldservice"], "regions": ["north"], "price": 90, "timeout_ms": 400},
        "backupfirm": {
            "role": "field_service",
            "protocol": "tmf646",
            "url": backup.url,
            "secret": backup.secret,
            "timeout_ms": 400,
            "price": 120,
            "register_listener": False,
        },
    }
    raw["touchpoints"] = {"web": {"budget_ms": 3000}}
    return evolve(config, raw=raw)


async def northern_ann(hub: Hub) -> None:
    cid = await platinum_ann(hub)
    await hub.update_customer(cid, {"traits": {"region": "north"}})


@pytest.mark.parametrize("trouble", ["down", "slow", "refuses", "no slot"])
async def test_the_next_firm_takes_the_visit_when_the_first_cannot_within_the_budget(
    database_url, field, stock, backup, trouble
):
    if trouble == "down":
        field.down, field.retry_after_s = True, 3600
    elif trouble == "slow":
        field.latency_s = 2.0  # past its 400 ms timeout
    elif trouble == "refuses":
        field.refuse = True  # 409: its final no
    else:
        field.technicians = 0  # answers failed: no slot in the window
    async with Hub.open(two_firms(database_url, field, stock, backup), autoload=True) as hub:
        await northern_ann(hub)
        (request,) = hub.parse_events(service_request(), "web")
        answer = await hub.request(request)
        assert answer.delivery.degraded == ()
        visit = next(f for f in answer.delivery.fulfillments if f.partner == "fieldservice")
        # the answer says which firm took the job, and which was passed over
        assert visit.status == "confirmed"
        assert (visit.data["firm"], visit.data["tried"]) == ("backupfirm", ["fieldservice"])
        assert backup.delivered == 1 and backup.bodies[0]["relatedParty"][0]["name"] == "Ann Lee"
        assert "_failover" not in backup.bodies[0] and "backupfirm" not in json.dumps(backup.bodies[0])
        view = await hub.view("email:ann@example.com")
        listed = next(f for f in view.sections["fulfillments"] if f["role"] == "field_service")
        assert listed["data"]["firm"] == "backupfirm" and listed["status"] == "confirmed"


async def test_the_first_firm_keeps_the_job_when_it_can_and_only_the_firm_that_took_it_can_update_it(
    database_url, field, stock, backup
):
    async with Hub.open(two_firms(database_url, field, stock, backup), autoload=True) as hub:
        await northern_ann(hub)
        (request,) = hub.parse_events(service_request(), "web")
        answer = await hub.request(request)
        visit = next(f for f in answer.delivery.fulfillments if f.partner == "fieldservice")
        assert visit.data["firm"] == "fieldservice" and "tried" not in visit.data
        assert backup.calls == 0
        # a customer in a region the first firm does not cover goes to the other one directly
        await hub.update_customer("email:ann@example.com", {"traits": {"region": "south"}})
        (south,) = hub.parse_events(service_request("sr-south"), "web")
        answer = await hub.request(south)
        visit = next(f for f in answer.delivery.fulfillments if f.partner != "supplier")
        assert (visit.partner, visit.data["firm"]) == ("backupfirm", "backupfirm")
    assert backup.delivered == 1


@pytest.mark.parametrize("hub_config", ["failover"], indirect=True)
async def test_a_notification_from_the_firm_that_took_over_applies_and_one_from_the_passed_over_firm_does_not(
    hub_client, make_key, field, backup
):
    from prm_core.server.state import HUB

    field.down, field.retry_after_s = True, 3600
    hub = hub_client.app[HUB]
    await northern_ann(hub)
    answer = await _ask(hub_client, make_key)
    visit = next(f for f in answer["delivery"]["fulfillments"] if f["partner"] == "fieldservice")
    assert visit["data"]["firm"] == "backupfirm"
    (booking,) = backup.bodies
    appt = {"id": visit["data"]["appointment_id"], "externalId": booking["externalId"], "validFor": {}}

    async def notify(sim: Any, partner: str, status: str) -> Any:
        text = json.dumps({"event": {"appointment": {**appt, "status": status}}})
        url = f"/v1/partners/{partner}/listener/appointmentStateChangeEvent"
        return await hub_client.post(url, data=text, headers=sign_headers(sim.secret, text))

    passed_over = await notify(field, "fieldservice", "cancelled")
    assert passed_over.status == 201 and (await passed_over.json())["ignored"] is True
    taken = await notify(backup, "backupfirm", "completed")
    assert taken.status == 201 and (await taken.json())["status"] == "completed"
    (row,) = await rows(hub, outbox.c.role == "field_service")
    assert (row.partner, row.status, row.result["firm"]) == ("fieldservice", "completed", "backupfirm")
    # a status outside AppointmentStateType from the firm that took it: 422, and the request is marked
    bad = await notify(backup, "backupfirm", "booked")
    assert bad.status == 422 and (await bad.json())["error"]["field"] == "event.appointment.status"
    (row,) = await rows(hub, outbox.c.role == "field_service")
    assert (row.status, row.result["attention"]["field"]) == ("completed", "event.appointment.status")


@pytest.fixture
def failover_config(database_url, field, stock, backup) -> Config:
    return two_firms(database_url, field, stock, backup)


async def test_when_every_firm_says_no_the_visit_is_rejected_and_when_all_are_down_it_waits(
    database_url, field, stock, backup
):
    field.refuse = backup.refuse = True
    async with Hub.open(two_firms(database_url, field, stock, backup), autoload=True) as hub:
        await northern_ann(hub)
        (request,) = hub.parse_events(service_request(), "web")
        answer = await hub.request(request)
        visit = next(f for f in answer.delivery.fulfillments if f.partner == "fieldservice")
        assert visit.status == "rejected"
        assert (visit.data["http_status"], visit.data["tried"]) == (409, ["fieldservice", "backupfirm"])
        field.refuse = backup.refuse = False
        field.down = backup.down = True
        field.retry_after_s = backup.retry_after_s = 0
        (again,) = hub.parse_events(service_request("sr-down"), "web")
        answer = await hub.request(again)
        # nobody took it, someone may later: the turn names the firm, the outbox asks the chain again
        assert answer.delivery.degraded == ("partner:fieldservice",)
        await eventually(lambda: field.outage_answers >= 2 and backup.outage_answers >= 2)
        backup.down = False
        (row,) = await eventually(lambda: rows(hub, outbox.c.status == "confirmed", outbox.c.role == "field_service"))
        assert row.result["firm"] == "backupfirm"


@pytest.mark.parametrize(
    "answer",
    [b'{"status": "confirmed", "data": {"slot": 1e400}}', b'{"status": "confirmed", "data": {"slot": "\\ud800"}}',
     b'{"status": "confirmed", "data": {"slot": "a\\u0000"}}', b'{"status": "confirmed", "data": {"n": 1' + b"0" * 5000
     + b"}}"],
    ids=["past_a_double", "lone_surrogate", "nul", "huge_int"],
)  # fmt: skip
async def test_an_answer_no_store_keeps_is_taken_as_no_body(database_url, aiohttp_client, pushes, field, stock, answer):
    """What the hub's JSON loader refuses from a caller, it refuses from a partner's answer: else
    it would be stored with the result (PostgreSQL refuses it; SQLite keeps what its readers fail on)."""

    async def notify(request: web.Request) -> web.Response:
        return web.Response(body=answer, status=200, content_type="application/json")

    app = web.Application()
    app.router.add_post("/notify", notify)
    notifier = await aiohttp_client(app)
    config = partners_config(database_url, field, stock)
    raw = dict(config.raw)
    raw["partners"] = {
        "notifier": {"role": "field_service", "protocol": "cloudevents", "url": str(notifier.make_url("/notify")),
                     "secret": new_secret()}
    }  # fmt: skip
    async with Hub.open(evolve(config, raw=raw), plugins=[pushes], autoload=True) as hub:
        await platinum_ann(hub)
        (request,) = hub.parse_events(service_request(), "web")
        (result,) = (await hub.request(request)).delivery.fulfillments
        assert result.status == "confirmed" and result.data == {}
        (row,) = await rows(hub, outbox.c.partner == "notifier")
        assert (row.status, row.result) == ("confirmed", {})
        assert (await hub.view("email:ann@example.com")).sections["fulfillments"]
