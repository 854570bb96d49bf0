"""A partner's word about a customer erased since it was asked: its answer to a request in
flight at the erasure, and its callback afterwards, are acknowledged and kept nowhere (no
event in the erased dialogue, nothing in the outbox row, the view or the change feed), and
plugins are not told. A request the erased customer's anonymous shell makes later is
answered as any other."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from prm_tmf.simulators import sign_headers

from prm_core import hookimpl
from prm_core.config import Config
from prm_core.hub import Hub
from prm_core.merging import merge_customers
from prm_core.model import FulfillmentRequest, FulfillmentResult
from prm_core.outbox import Claim, Outbox, PlannedEvent, PlannedFulfillment, outbox_rows
from prm_core.privacy.erasure import erase_customer
from prm_core.server.state import HUB
from prm_core.store.tables import changes, events, metadata, outbox, partner_callbacks, utcnow

# what the partner says about the person: it must be found nowhere once they are erased
MARKER = "Tom Quillfeather"
SECRET = "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQQ=="


class Gate:
    """A partner that answers when the test opens the gate, with the marker in its answer."""

    __name__ = "gate"

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.called = asyncio.Event()

    @hookimpl
    def prm_fulfill(self, request):
        if request.partner != "slowfield":
            return None
        return self._answer(request)

    async def _answer(self, request: FulfillmentRequest) -> FulfillmentResult:
        self.called.set()
        await self.open.wait()
        return FulfillmentResult(request.id, "slowfield", "confirmed", {"technician": MARKER, "partner_ref": "ap-1"})


class Told:
    __name__ = "told"

    def __init__(self) -> None:
        self.updates: list[Any] = []

    @hookimpl
    def prm_fulfillment_updated(self, fulfillment):
        self.updates.append(fulfillment)


async def ann(hub: Hub, email: str = "ann@example.com", **others: str) -> Any:
    identities = {"email": email} if email else others
    body = {
        "id": f"id-{email}{others}",
        "type": "page",
        "occurred_at": "2026-11-23T08:00:00Z",
        "identities": identities,
    }
    (recorded,) = await hub.record(hub.parse_events(body, "web"))
    return recorded


async def plant(hub: Hub, who: Any, partner: str, request_id: str, *, claimed: bool, **fields: Any) -> dict[str, Any]:
    """An outbox row of ``who``'s dialogue, as a turn that planned it writes it."""
    now = utcnow()
    request = FulfillmentRequest(request_id, partner, "book", who.customer_id, payload={"address": "12 Quince Lane"})
    turn = PlannedEvent(
        id=f"turn-{request_id}", type="service.requested", occurred_at=now, touchpoint="web",
        planned=(PlannedFulfillment(request, role="technician"),),
        claimed_until=now + timedelta(seconds=30) if claimed else None,
    )  # fmt: skip
    (row,) = outbox_rows(turn, who.customer_id, who.dialogue_id, now)
    row = {**row, **fields}
    await hub.store.write(lambda conn: conn.execute(outbox.insert(), [row]))
    return row


async def everything(hub: Hub) -> str:
    """Every row of every table of the hub, as text."""

    def read(conn: Any) -> str:
        return "\n".join(repr(list(conn.execute(sa.select(t)).all())) for t in metadata.sorted_tables)

    return await hub.store.read(read)


async def fulfillment_events(hub: Hub, dialogue_id: str) -> list[Any]:
    e = events.c
    q = sa.select(e.event_id, e.data).where(e.dialogue_id == dialogue_id, e.type == "fulfillment.updated")
    return await hub.store.read(lambda conn: conn.execute(q).all())


async def fulfillment_changes(hub: Hub, customer_id: str) -> list[Any]:
    c = changes.c
    q = sa.select(c.position, c.data).where(c.customer_id == customer_id, c.type == "fulfillment.updated")
    return await hub.store.read(lambda conn: conn.execute(q).all())


# ---- an answer in flight at the erasure ---------------------------------------------------------


@pytest.fixture
def hub_plugins() -> list[Any]:
    return [Gate(), Told()]


def gate(hub: Hub) -> Gate:
    return next(p for p in hub.pm.get_plugins() if isinstance(p, Gate))


def told(hub: Hub) -> Told:
    return next(p for p in hub.pm.get_plugins() if isinstance(p, Told))


async def test_an_answer_in_flight_at_the_erasure_is_kept_nowhere(hub, log_capture):
    who = await ann(hub)
    row = await plant(hub, who, "slowfield", "r-ann", claimed=True)
    claim = Claim(row["id"], 1, FulfillmentRequest("r-ann", "slowfield", "book", who.customer_id), "web",
                  who.dialogue_id, "technician")  # fmt: skip
    answered = hub.outbox.dispatch(claim)
    await asyncio.wait_for(gate(hub).called.wait(), 5)

    await erase_customer(hub, who.customer_id)
    changes_before = await fulfillment_changes(hub, who.customer_id)
    gate(hub).open.set()
    result = await asyncio.wait_for(answered, 5)
    assert result.data["technician"] == MARKER  # the partner did answer, late
    await asyncio.wait_for(asyncio.gather(*hub.outbox._inflight), 5)  # its recording, in the background

    assert await fulfillment_events(hub, who.dialogue_id) == []
    (after,) = await hub.store.read(lambda conn: conn.execute(sa.select(outbox)).all())
    assert (after.status, after.result, after.payload, after.next_attempt_at) == ("failed", {}, {}, None)
    assert after.partner_ref is None
    assert await fulfillment_changes(hub, who.customer_id) == changes_before
    assert told(hub).updates == []
    view = await hub.view(who.customer_id)
    assert [f["data"] for f in view.sections["fulfillments"]] == [{}]
    assert MARKER not in json.dumps(view.to_json(), default=str)
    assert MARKER not in await everything(hub)
    assert await hub.outbox.claim(10) == []  # called off: never sent again
    dropped = [e for e in log_capture.entries if e["event"] == "partner answer for an erased customer dropped"]
    assert [(e["partner"], e["status"]) for e in dropped] == [("slowfield", "confirmed")]
    assert MARKER not in log_capture.text


async def test_answers_for_a_customer_merged_into_the_erased_one_are_dropped_too(hub):
    by_email, by_phone = await ann(hub), await ann(hub, "", phone="+14155550100")
    rows = {
        w.customer_id: await plant(hub, w, "slowfield", f"r-{n}", claimed=True)
        for n, w in enumerate((by_email, by_phone))
    }
    both = {"id": "both", "type": "login", "occurred_at": "2026-11-23T08:05:00Z",
            "identities": {"email": "ann@example.com", "phone": "+14155550100"}}  # fmt: skip
    await hub.record(hub.parse_events(both, "web"))
    assert len({await hub.resolve(w.customer_id) for w in (by_email, by_phone)}) == 1  # merged

    await erase_customer(hub, "email:ann@example.com")
    gate(hub).open.set()
    for w in (by_email, by_phone):
        row = rows[w.customer_id]
        claim = Claim(row["id"], 1, FulfillmentRequest(row["request_id"], "slowfield", "book", w.customer_id), "web",
                      w.dialogue_id, "technician")  # fmt: skip
        await hub.outbox.attempt(claim)
        assert await fulfillment_events(hub, w.dialogue_id) == []
    assert told(hub).updates == []
    assert MARKER not in await everything(hub)


async def test_an_answer_for_an_erased_customer_merged_since_into_another_is_dropped(hub):
    who, bob = await ann(hub), await ann(hub, "bob@example.com")
    row = await plant(hub, who, "slowfield", "r-ann", claimed=True)
    await erase_customer(hub, who.customer_id)
    # a later merge (an operator resolving an identity conflict as one person) makes the erased
    # customer a redirect to someone never erased: the request stays the erased person's
    await hub.store.write(
        lambda conn: merge_customers(conn, bob.customer_id, who.customer_id, reason="test", cause=None, now=utcnow())
    )
    assert await hub.resolve(who.customer_id) == bob.customer_id
    gate(hub).open.set()
    claim = Claim(row["id"], 1, FulfillmentRequest("r-ann", "slowfield", "book", who.customer_id), "web",
                  who.dialogue_id, "technician")  # fmt: skip
    await hub.outbox.attempt(claim)
    assert await fulfillment_events(hub, who.dialogue_id) == []
    assert told(hub).updates == []
    assert MARKER not in await everything(hub)


async def test_an_answer_recorded_before_the_erasure_is_scrubbed_and_others_are_kept(hub):
    who, bob = await ann(hub), await ann(hub, "bob@example.com")
    rows = {
        name: await plant(hub, w, "slowfield", f"r-{name}", claimed=True) for name, w in (("ann", who), ("bob", bob))
    }
    gate(hub).open.set()
    for name, w in (("ann", who), ("bob", bob)):
        claim = Claim(rows[name]["id"], 1, FulfillmentRequest(f"r-{name}", "slowfield", "book", w.customer_id), "web",
                      w.dialogue_id, "technician")  # fmt: skip
        await hub.outbox.attempt(claim)
    assert [r.data["data"]["technician"] for r in await fulfillment_events(hub, bob.dialogue_id)] == [MARKER]

    await erase_customer(hub, who.customer_id)
    assert [r.data for r in await fulfillment_events(hub, who.dialogue_id)] == [{"erased": True}]
    assert [r.data["data"]["technician"] for r in await fulfillment_events(hub, bob.dialogue_id)] == [MARKER]
    assert [u.customer_id for u in told(hub).updates] == [who.customer_id, bob.customer_id]


async def test_a_request_the_erased_customers_shell_makes_later_is_answered(hub):
    who = await ann(hub)
    await erase_customer(hub, who.customer_id)
    # a touch point still naming the anonymous shell's dialogue: new work, not the erased person's
    row = await plant(hub, who, "slowfield", "r-later", claimed=True, updated_at=utcnow() + timedelta(seconds=1))
    gate(hub).open.set()
    claim = Claim(row["id"], 1, FulfillmentRequest("r-later", "slowfield", "book", who.customer_id), "web",
                  who.dialogue_id, "technician")  # fmt: skip
    await hub.outbox.attempt(claim)
    (event,) = await fulfillment_events(hub, who.dialogue_id)
    assert event.data["data"]["technician"] == MARKER
    assert [u.data["technician"] for u in told(hub).updates] == [MARKER]


@pytest.mark.parametrize("step", ["find", "_record"])
async def test_a_callback_read_before_the_erasure_and_written_after_it_is_dropped(hub, monkeypatch, step, log_capture):
    """The erasure commits while the callback is applied: after the request was read (``find``),
    or after the callback was found not erased, as its event is about to be recorded."""
    who = await ann(hub)
    await plant(hub, who, "slowfield", "r-ann", claimed=False, status="confirmed", next_attempt_at=None,
                partner_ref="ap-1", result={"appointment": "12 Quince Lane at 9"})  # fmt: skip
    original = getattr(Outbox, step)

    async def erased_meanwhile(outbox: Outbox, *args: Any) -> Any:
        if step == "find":
            found = await original(outbox, *args)  # read as it was: the erasure commits right after
            await erase_customer(hub, who.customer_id)
            return found
        await erase_customer(hub, who.customer_id)
        return await original(outbox, *args)

    monkeypatch.setattr(Outbox, step, erased_meanwhile)
    found, applied = await hub.outbox.apply_callback("slowfield", "msg-1", "ap-1", "completed", {"by": MARKER})
    assert not applied and found is not None and found.data == {}
    assert await fulfillment_events(hub, who.dialogue_id) == []
    (after,) = await hub.store.read(lambda conn: conn.execute(sa.select(outbox)).all())
    assert (after.status, after.result, after.payload) == ("confirmed", {}, {})
    assert told(hub).updates == []
    assert MARKER not in await everything(hub)
    assert "12 Quince Lane" not in await everything(hub)
    dropped = [e for e in log_capture.entries if e["event"] == "partner callback for an erased customer dropped"]
    assert [(e["partner"], e["status"]) for e in dropped] == [("slowfield", "completed")]


async def test_a_callback_for_another_customer_after_an_erasure_is_applied(hub):
    who = await ann(hub)
    eve = await ann(hub, "eve@example.com")
    await plant(hub, who, "slowfield", "r-ann", claimed=False, status="confirmed", next_attempt_at=None,
                partner_ref="ap-1")  # fmt: skip
    await plant(hub, eve, "slowfield", "r-eve", claimed=False, status="confirmed", next_attempt_at=None)
    await erase_customer(hub, eve.customer_id)  # someone else's erasure (and request), after Ann's request
    found, applied = await hub.outbox.apply_callback("slowfield", "msg-1", "ap-1", "completed", {"by": MARKER})
    assert applied and found is not None and found.data == {"by": MARKER}
    (event,) = await fulfillment_events(hub, who.dialogue_id)
    assert event.data["data"] == {"by": MARKER}


# ---- a partner's callback after the erasure, through its HTTP route -----------------------------


@pytest.fixture
def callback_config(database_url: str) -> Config:
    raw = {
        "partners": {
            "notifier": {"role": "field_service", "protocol": "cloudevents", "url": "http://127.0.0.1:9/notify",
                         "secret": SECRET},
        },
    }  # fmt: skip
    return Config(database_url=database_url, public_url="http://hub.test", raw=raw)


async def test_a_callback_after_the_erasure_is_acknowledged_and_kept_nowhere(
    callback_config, aiohttp_client, log_capture
):
    from prm_core.server.app import create_app

    path = "/v1/partners/notifier/callbacks"

    watcher = Told()
    client = await aiohttp_client(create_app(callback_config, plugins=[watcher]))
    hub = client.app[HUB]
    who = await ann(hub)
    row = await plant(hub, who, "notifier", "r-ann", claimed=False, status="confirmed", next_attempt_at=None,
                      partner_ref="ap-1", result={"appointment": "12 Quince Lane at 9"})  # fmt: skip
    await erase_customer(hub, who.customer_id)
    changes_before = await fulfillment_changes(hub, who.customer_id)

    note = json.dumps({"request_id": "r-ann", "status": "completed", "data": {"technician": MARKER}})
    headers = sign_headers(SECRET, note)
    first = await client.post(path, data=note, headers=headers)
    assert first.status == 200
    assert await first.json() == {"id": "r-ann", "status": "confirmed", "duplicate": True}
    again = await client.post(path, data=note, headers=headers)  # the partner's redelivery
    assert again.status == 200 and (await again.json())["duplicate"] is True
    # by the partner's own reference too, with another webhook id
    other = json.dumps({"request_id": "ap-1", "status": "completed", "data": {"technician": MARKER}})
    assert (await client.post(path, data=other, headers=sign_headers(SECRET, other))).status == 200

    assert await fulfillment_events(hub, who.dialogue_id) == []
    (after,) = await hub.store.read(lambda conn: conn.execute(sa.select(outbox)).all())
    assert (after.id, after.status, after.result, after.payload, after.next_attempt_at) == (
        row["id"], "confirmed", {}, {}, None,
    )  # fmt: skip
    assert await fulfillment_changes(hub, who.customer_id) == changes_before
    assert watcher.updates == []
    taken = await hub.store.read(
        lambda conn: conn.execute(sa.select(sa.func.count()).select_from(partner_callbacks)).scalar()
    )
    assert taken == 2  # both webhook ids are known: a redelivery is a duplicate
    assert MARKER not in await everything(hub)
    dropped = [e for e in log_capture.entries if e["event"] == "partner callback for an erased customer dropped"]
    assert [(e["partner"], e["status"]) for e in dropped] == [("notifier", "completed")] * 2
    assert MARKER not in log_capture.text
