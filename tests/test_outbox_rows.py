"""What the outbox's rows tell, read back through the hub: the view's newest requests, the
results of a turn, a request found by any of its references."""

from __future__ import annotations

import gc
import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from prm_core import hookimpl
from prm_core.hub import Hub
from prm_core.model import FulfillmentRequest, FulfillmentResult
from prm_core.outbox import MAX_VIEW_FULFILLMENTS, Claim, PlannedEvent, PlannedFulfillment, RetryLater, outbox_rows
from prm_core.store.tables import outbox, utcnow


async def ann(hub: Hub) -> Any:
    body = {"id": "a1", "type": "page", "occurred_at": "2026-11-23T08:00:00Z", "identities": {"email": "ann@x.com"}}
    (recorded,) = await hub.record(hub.parse_events(body, "web"))
    return recorded


async def plant(hub: Hub, who: Any, count: int, **fields: Any) -> list[dict[str, Any]]:
    """``count`` requests of ``who``, one a minute, the last the newest."""
    start = utcnow() - timedelta(hours=1)
    rows = []
    for n in range(count):
        at = start + timedelta(minutes=n)
        request = FulfillmentRequest(f"r-{n}", "fieldservice", "book", who.customer_id, idempotency_key=f"k-{n}")
        turn = PlannedEvent(
            id=f"turn-{n}", type="service.requested", occurred_at=at, touchpoint="web",
            planned=(PlannedFulfillment(request, role="technician"),),
        )  # fmt: skip
        (row,) = outbox_rows(turn, who.customer_id, who.dialogue_id, at)
        rows.append({**row, **fields})
    await hub.store.write(lambda conn: conn.execute(outbox.insert(), rows))
    return rows


async def test_the_view_lists_the_newest_twenty_requests(hub):
    who = await ann(hub)
    await plant(hub, who, MAX_VIEW_FULFILLMENTS + 1)
    assert MAX_VIEW_FULFILLMENTS == 20
    listed = (await hub.view(who.customer_id)).sections["fulfillments"]
    assert [f["id"] for f in listed] == [f"r-{n}" for n in range(20, 0, -1)]  # r-0, the oldest, left out
    assert listed[0] | {"requested_at": None, "updated_at": None} == {
        "id": "r-20", "partner": "fieldservice", "role": "technician", "action": "book", "status": "pending",
        "dialogue_id": who.dialogue_id, "requested_at": None, "updated_at": None, "data": {},
    }  # fmt: skip


async def test_results_of_a_turn_read_completed_work_as_confirmed(hub):
    who = await ann(hub)
    rows = await plant(hub, who, 3)
    states = {
        "r-0": ("completed", {"technician": "T-9"}),
        "r-1": ("rejected", {"why": "no slot"}),
        "r-2": ("pending", {}),
    }
    for row in rows:
        status, result = states[row["request_id"]]
        await hub.store.write(
            lambda conn, i=row["id"], s=status, r=result: conn.execute(
                outbox.update().where(outbox.c.id == i).values(status=s, result=r)
            )
        )
    results = await hub.outbox.results_of("turn-0")
    assert [(r.request_id, r.partner, r.status, dict(r.data)) for r in results] == [
        ("r-0", "fieldservice", "confirmed", {"technician": "T-9"})
    ]
    assert [r.status for r in await hub.outbox.results_of("turn-1")] == ["rejected"]
    assert [r.status for r in await hub.outbox.results_of("turn-2")] == ["pending"]
    assert await hub.outbox.results_of("turn-9") == []


async def test_a_request_is_found_by_its_id_its_key_or_the_partners_reference(hub):
    who = await ann(hub)
    (row,) = await plant(hub, who, 1, partner_ref="FS-77")
    for ref in ("r-0", "k-0", "FS-77"):
        found = await hub.outbox.find("fieldservice", ref)
        assert found is not None and (found.id, found.outbox_id, found.partner_ref) == ("r-0", row["id"], "FS-77")
    assert await hub.outbox.find("supplier", "r-0") is None  # only this partner's requests
    assert await hub.outbox.find("fieldservice", "r-9") is None


async def test_a_reference_two_requests_share_finds_the_newest(hub):
    # a partner that names its booking, not our request: a second request for the same visit
    who = await ann(hub)
    rows = await plant(hub, who, 2, partner_ref="FS-77")
    found = await hub.outbox.find("fieldservice", "FS-77")
    assert found is not None and (found.id, found.outbox_id) == ("r-1", rows[1]["id"])


async def test_a_partners_reference_is_kept_to_200_characters_and_finds_the_request(hub, register_plugin):
    long_ref = "FS-" + "7" * 300
    register_plugin(Counting("refs", FulfillmentResult("r-0", "fieldservice", "pending", {"partner_ref": long_ref})))
    who = await ann(hub)
    (row,) = await plant(hub, who, 1, attempts=1)
    await hub.outbox.attempt(claim_of(row, who, 1))
    found = await hub.outbox.find("fieldservice", long_ref[:200])
    assert found is not None and found.partner_ref == long_ref[:200] and found.outbox_id == row["id"]


async def test_an_answer_without_a_reference_keeps_the_one_the_partner_gave_before(hub, register_plugin):
    register_plugin(Counting("norefs", FulfillmentResult("r-0", "fieldservice", "pending", {"slot": "9:00"})))
    who = await ann(hub)
    (row,) = await plant(hub, who, 1, attempts=1, partner_ref="FS-1")
    await hub.outbox.attempt(claim_of(row, who, 1))
    found = await hub.outbox.find("fieldservice", "FS-1")
    assert found is not None and (found.partner_ref, found.data) == ("FS-1", {"slot": "9:00"})


async def test_a_callback_naming_no_request_changes_nothing_and_keeps_its_webhook_id_unused(hub):
    who = await ann(hub)
    assert await hub.outbox.apply_callback("fieldservice", "wh-1", "r-0", "confirmed", {"slot": "9:00"}) == (
        None,
        False,
    )
    # the request turns up (planned late, answered pending): the same delivery, sent again, applies to it
    (row,) = await plant(hub, who, 1, next_attempt_at=None)
    found, applied = await hub.outbox.apply_callback("fieldservice", "wh-1", "r-0", "confirmed", {"slot": "9:00"})
    assert applied and found is not None and (found.outbox_id, found.status) == (row["id"], "confirmed")
    assert await state(hub, row["id"]) == ("confirmed", {"slot": "9:00"}, 0)


async def test_two_partners_may_send_the_same_webhook_id(hub):
    # each partner makes up its own delivery ids: one partner's id says nothing about another's
    who = await ann(hub)
    (field,) = await plant(hub, who, 1, next_attempt_at=None)  # answered pending: waiting for callbacks
    (stock,) = await plant(
        hub, who, 1, partner="supplier", request_id="s-0", idempotency_key="sk-0", next_attempt_at=None
    )
    _, first = await hub.outbox.apply_callback("fieldservice", "msg_1", "r-0", "confirmed", {"slot": "9:00"})
    _, second = await hub.outbox.apply_callback("supplier", "msg_1", "s-0", "completed", {"shipped": True})
    assert (first, second) == (True, True)
    assert await state(hub, field["id"]) == ("confirmed", {"slot": "9:00"}, 0)
    assert await state(hub, stock["id"]) == ("completed", {"shipped": True}, 0)
    # the same partner sending it again is a redelivery: nothing changes
    _, again = await hub.outbox.apply_callback("supplier", "msg_1", "s-0", "failed", {})
    assert again is False and await state(hub, stock["id"]) == ("completed", {"shipped": True}, 0)
    # each callback applied is a change on the feed, once
    changes = [(c["fulfillment_id"], c["partner"], c["status"], c["data"]) for c in await fulfillment_changes(hub)]
    assert changes == [
        ("r-0", "fieldservice", "confirmed", {"slot": "9:00"}),
        ("s-0", "supplier", "completed", {"shipped": True}),
    ]


async def test_a_request_is_claimed_once_it_is_due_and_an_idle_poll_takes_no_write_lock(hub, frozen_clock, monkeypatch):
    await hub.outbox.stop()  # this test claims, not the worker
    frozen_clock.now = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    who = await ann(hub)
    (row,) = await plant(hub, who, 1, next_attempt_at=frozen_clock.now + timedelta(minutes=5))
    writes = 0
    write = type(hub.store).write

    async def counted(store: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal writes
        writes += fn.__qualname__.startswith("Outbox.claim.")  # the hub's other tasks write too
        return await write(store, fn, *args, **kwargs)

    monkeypatch.setattr(type(hub.store), "write", counted)
    assert await hub.outbox.claim(16) == []
    assert writes == 0, "nothing due: a poll only reads"
    frozen_clock.advance(minutes=5)  # due exactly now
    (claim,) = await hub.outbox.claim(16)
    assert (claim.row_id, claim.attempt, writes) == (row["id"], 1, 1)
    assert await hub.outbox.claim(16) == []  # leased: not claimed twice


class Answers:
    """Answers every request to partner ``fieldservice`` with ``status``."""

    __name__ = "answers"

    def __init__(self, status: str) -> None:
        self.status = status

    @hookimpl
    def prm_fulfill(self, request):
        if request.partner == "fieldservice":
            return self.answer(request)
        return None

    async def answer(self, request: FulfillmentRequest) -> FulfillmentResult:
        return FulfillmentResult(request.id, "fieldservice", self.status, {"technician": "T-9"})  # type: ignore[arg-type]


async def state(hub: Hub, row_id: str) -> tuple[Any, ...]:
    o = outbox.c
    query = sa.select(o.status, o.result, o.attempts).where(o.id == row_id)
    return tuple(await hub.store.read(lambda conn: conn.execute(query).one()))


def claim_of(row: dict[str, Any], who: Any, attempt: int) -> Claim:
    request = FulfillmentRequest(row["request_id"], "fieldservice", "book", who.customer_id, idempotency_key="k")
    return Claim(row["id"], attempt, request, "web", who.dialogue_id, "technician")


async def fulfillment_changes(hub: Hub) -> list[dict[str, Any]]:
    page = await hub.feed.read(None, 1000)
    return [c.to_json()["data"] for c in page.changes if c.type == "fulfillment.updated"]


@pytest.fixture(params=["returning", "no returning"])
def update_returning(request: Any, hub: Hub, monkeypatch: Any) -> None:
    """Both ways a partner's answer settles its row: with UPDATE ... RETURNING (PostgreSQL,
    SQLite 3.35 on) and, on a database without it (an older SQLite), reading the row back."""
    if request.param == "no returning":
        for engine in (hub.store.sync_writer, hub.store.writer):
            if engine is not None:
                monkeypatch.setattr(engine.dialect, "update_returning", False)


async def test_an_answer_to_a_claim_taken_over_changes_nothing_and_the_newer_claim_settles(
    hub, register_plugin, hook_recorder, log_capture, update_returning
):
    register_plugin(Answers("confirmed"))
    who = await ann(hub)
    (row,) = await plant(hub, who, 1, attempts=2)  # the worker took it over: attempt 2 is current
    await hub.outbox.attempt(claim_of(row, who, 1))
    assert await state(hub, row["id"]) == ("pending", {}, 2)
    assert hook_recorder.getcalls("prm_fulfillment_updated") == []
    assert await fulfillment_changes(hub) == []
    (taken,) = [e for e in log_capture.entries if e["event"] == "fulfillment claim was taken over"]
    assert (taken["partner"], taken["attempt"]) == ("fieldservice", 1)
    await hub.outbox.attempt(claim_of(row, who, 2))
    assert await state(hub, row["id"]) == ("confirmed", {"technician": "T-9"}, 2)
    (told,) = hook_recorder.getcalls("prm_fulfillment_updated")
    assert (told.fulfillment.id, told.fulfillment.status) == (row["request_id"], "confirmed")
    # the old claim's partner answers the same, late: nothing more is told
    await hub.outbox.attempt(claim_of(row, who, 1))
    assert await state(hub, row["id"]) == ("confirmed", {"technician": "T-9"}, 2)
    assert len(hook_recorder.getcalls("prm_fulfillment_updated")) == 1


async def test_a_replayed_answer_of_the_same_claim_is_told_again(hub, register_plugin, hook_recorder, update_returning):
    # the same claim's outcome recorded twice (a retry of the recording): the row is as the first
    # left it, and the outcome is told again, so a plugin that missed it catches up
    register_plugin(Answers("confirmed"))
    who = await ann(hub)
    (row,) = await plant(hub, who, 1, attempts=1)
    await hub.outbox.attempt(claim_of(row, who, 1))
    assert len(await fulfillment_changes(hub)) == 1  # the settlement's change, at once
    await hub.outbox.attempt(claim_of(row, who, 1))
    assert await state(hub, row["id"]) == ("confirmed", {"technician": "T-9"}, 1)
    told = hook_recorder.getcalls("prm_fulfillment_updated")
    assert [(t.fulfillment.outbox_id, t.fulfillment.status) for t in told] == [(row["id"], "confirmed")] * 2
    # the feed has the change once: the replay wrote nothing
    (change,) = await fulfillment_changes(hub)
    assert (change["fulfillment_id"], change["status"], change["data"]) == (
        row["request_id"], "confirmed", {"technician": "T-9"},
    )  # fmt: skip


async def test_a_late_answer_does_not_overwrite_a_request_already_settled(
    hub, register_plugin, hook_recorder, update_returning
):
    register_plugin(Answers("rejected"))
    who = await ann(hub)
    (row,) = await plant(hub, who, 1, attempts=1, status="completed", result={"by": "callback"})
    await hub.outbox.attempt(claim_of(row, who, 1))
    assert await state(hub, row["id"]) == ("completed", {"by": "callback"}, 1)
    assert hook_recorder.getcalls("prm_fulfillment_updated") == []


@pytest.mark.parametrize("attempt", [1, 20])  # a retry planned, or (the 20th) the request given up
async def test_a_call_failing_after_a_callback_settled_the_request_leaves_it_settled(hub, attempt, hook_recorder):
    who = await ann(hub)
    (row,) = await plant(
        hub, who, 1, attempts=attempt, status="completed", result={"by": "callback"}, next_attempt_at=None
    )
    late = Claim(
        row["id"], attempt, FulfillmentRequest("r-0", "nobody", "book", who.customer_id), "web", who.dialogue_id
    )
    with pytest.raises(RetryLater):
        await hub.outbox.attempt(late)
    o = outbox.c
    query = sa.select(o.status, o.result, o.last_error, o.next_attempt_at).where(o.id == row["id"])
    after = await hub.store.read(lambda conn: conn.execute(query).one())
    assert tuple(after) == ("completed", {"by": "callback"}, None, None)  # never sent again, nothing failed
    assert hook_recorder.getcalls("prm_fulfillment_updated") == []


class Counting:
    """Serves partner ``fieldservice``, counting the calls actually made."""

    def __init__(self, name: str, answer: Any) -> None:
        self.__name__ = name
        self.answer, self.calls = answer, 0

    @hookimpl
    def prm_fulfill(self, request):
        return self.call(request) if request.partner == "fieldservice" else None

    async def call(self, request: FulfillmentRequest) -> Any:
        self.calls += 1
        return self.answer


async def test_one_partner_is_called_once_even_when_two_plugins_serve_it(hub, register_plugin):
    first = register_plugin(Counting("first", FulfillmentResult("r-0", "fieldservice", "confirmed", {})))
    second = register_plugin(Counting("second", FulfillmentResult("r-0", "fieldservice", "confirmed", {})))
    who = await ann(hub)
    (row,) = await plant(hub, who, 1, attempts=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = await hub.outbox.attempt(claim_of(row, who, 1))
        gc.collect()
    assert result.status == "confirmed"
    assert first.calls + second.calls == 1  # the other plugin's call is closed unstarted
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []


async def test_a_partner_nobody_serves_or_a_wrong_answer_is_retried_later(hub, register_plugin):
    who = await ann(hub)
    rows = await plant(hub, who, 2, attempts=1, next_attempt_at=None)  # not due: the worker leaves them to the test
    nobody = Claim(
        rows[0]["id"], 1, FulfillmentRequest("r-0", "nobody", "book", who.customer_id), "web", who.dialogue_id
    )
    with pytest.raises(RetryLater, match="no plugin fulfills partner 'nobody'"):
        await hub.outbox.attempt(nobody)
    register_plugin(Counting("wrong", {"status": "confirmed"}))  # not a FulfillmentResult
    with pytest.raises(TypeError, match="prm_fulfill for 'fieldservice' returned dict"):
        await hub.outbox.attempt(claim_of(rows[1], who, 1))
    o = outbox.c
    query = sa.select(o.request_id, o.status, o.last_error, o.next_attempt_at).order_by(o.request_id)
    after = await hub.store.read(lambda conn: conn.execute(query).all())
    assert [(r.request_id, r.status, r.last_error) for r in after] == [
        ("r-0", "pending", "no plugin fulfills partner 'nobody'"),
        ("r-1", "pending", "TypeError"),
    ]
    assert all(r.next_attempt_at > utcnow() for r in after)
