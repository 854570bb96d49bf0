"""Threading events into dialogues: explicit keys, inactivity, one per event, closing, intent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from prm_core.dialogue import infer_intent
from prm_core.hub import Hub, answer_id
from prm_core.model import Event, Identity
from prm_core.store.tables import dialogues, events

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
ANN = {"email": "ann@example.com"}


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def event(event_id: str, minutes: float = 0, type: str = "page", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": event_id, "type": type, "occurred_at": at(minutes), "identities": ANN}
    body.update(extra)
    return body


async def send(hub: Hub, touchpoint: str, *bodies: dict[str, Any]) -> list[Any]:
    return await hub.record(hub.parse_events({"events": list(bodies)}, touchpoint))


async def dialogue_rows(hub: Hub) -> dict[str, Any]:
    rows = await hub.store.read(lambda conn: list(conn.execute(sa.select(dialogues))))
    return {r.id: r for r in rows}


async def event_dialogues(hub: Hub) -> dict[str, str]:
    rows = await hub.store.read(lambda conn: list(conn.execute(sa.select(events.c.event_id, events.c.dialogue_id))))
    return {r.event_id: r.dialogue_id for r in rows}


# ---- explicit keys -----------------------------------------------------------------------


async def test_an_explicit_dialogue_key_threads_events_at_its_touch_point(hub):
    first = await send(hub, "callcenter", event("c1", 0, "call.started", dialogue="call-1"))
    rest = await send(
        hub,
        "callcenter",
        event("c2", 2, "call.note", dialogue="call-1"),
        event("c3", 3, "call.started", dialogue="call-2"),
        event("c4", 4, "call.transfer", dialogue="call-1"),
    )
    (c1,), (c2, c3, c4) = first, rest
    assert c1.dialogue_id == c2.dialogue_id == c4.dialogue_id != c3.dialogue_id
    rows = await dialogue_rows(hub)
    assert len(rows) == 2
    call1 = rows[c1.dialogue_id]
    assert (call1.touchpoint, call1.ref, call1.status) == ("callcenter", "call-1", "open")
    assert call1.opened_at == T0
    assert call1.last_event_at == T0 + timedelta(minutes=4)
    assert rows[c3.dialogue_id].ref == "call-2"


async def test_the_same_key_at_another_touch_point_is_another_dialogue(hub):
    a, b = (
        await send(hub, "callcenter", event("x1", 0, dialogue="K-1")),
        await send(hub, "pos", event("x1", 1, dialogue="K-1")),
    )
    assert a[0].dialogue_id != b[0].dialogue_id
    rows = await dialogue_rows(hub)
    assert {(r.touchpoint, r.ref) for r in rows.values()} == {("callcenter", "K-1"), ("pos", "K-1")}


async def test_an_explicit_key_wins_over_the_web_inactivity_rule(hub):
    recorded = await send(
        hub,
        "web",
        event("w1", 0),
        event("w2", 1, dialogue="checkout-9"),
        event("w3", 2),
        event("w4", 90, dialogue="checkout-9"),
    )
    w1, w2, w3, w4 = (r.dialogue_id for r in recorded)
    assert w1 == w3
    assert w2 == w4 != w1


# ---- the web: inactivity ----------------------------------------------------------------


async def test_web_threads_by_inactivity_and_opens_a_new_visit_after_thirty_minutes(hub):
    (a,) = await send(hub, "web", event("w1", 0))
    (b,) = await send(hub, "web", event("w2", 10))
    (c,) = await send(hub, "web", event("w3", 39))  # 29 minutes after the last event: same visit
    assert a.dialogue_id == b.dialogue_id == c.dialogue_id
    (d,) = await send(hub, "web", event("w4", 70))  # 31 minutes of silence: a new visit
    assert d.dialogue_id != a.dialogue_id
    rows = await dialogue_rows(hub)
    stale, fresh = rows[a.dialogue_id], rows[d.dialogue_id]
    assert stale.status == "closed"
    assert stale.closed_at == stale.last_event_at == T0 + timedelta(minutes=39)
    assert stale.opened_at == T0
    assert fresh.status == "open"
    assert fresh.opened_at == fresh.last_event_at == T0 + timedelta(minutes=70)
    assert fresh.ref == fresh.id
    view = await hub.view("email:ann@example.com")
    assert [(d.id, d.status) for d in view.dialogues] == [(fresh.id, "open"), (stale.id, "closed")]


@pytest.mark.parametrize(
    ("opened", "last"),
    [
        (datetime(1, 1, 1, tzinfo=UTC), datetime(1, 1, 1, tzinfo=UTC)),
        (datetime(9999, 12, 31, 23, 59, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, tzinfo=UTC)),
        (datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, tzinfo=UTC)),
    ],
)
async def test_an_open_dialogue_at_the_edge_of_time_does_not_break_the_next_event(hub, opened, last):
    """A dialogue stored with year 1 or 9999 (before event times were bounded): the next event
    of its customer at that touch point is still recorded, in a visit of its own or in that one."""
    (a,) = await send(hub, "web", event("w1", 0))
    await hub.store.write(
        lambda conn: conn.execute(
            dialogues.update().where(dialogues.c.id == a.dialogue_id).values(opened_at=opened, last_event_at=last)
        )
    )
    (b,) = await send(hub, "web", event("w2", 5))
    assert (b.dialogue_id == a.dialogue_id) == (opened <= T0 <= last)
    assert (await dialogue_rows(hub))[b.dialogue_id].status == "open"


async def test_web_inactivity_inside_one_batch(hub):
    recorded = await send(hub, "web", event("w1", 0), event("w2", 29), event("w3", 60), event("w4", 61))
    ids = [r.dialogue_id for r in recorded]
    assert ids[0] == ids[1] != ids[2] == ids[3]
    rows = await dialogue_rows(hub)
    assert rows[ids[0]].status == "closed"
    assert rows[ids[0]].closed_at == T0 + timedelta(minutes=29)
    assert rows[ids[2]].status == "open"


async def test_exactly_thirty_minutes_is_still_the_same_visit(hub):
    recorded = await send(hub, "web", event("w1", 0), event("w2", 30))
    assert recorded[0].dialogue_id == recorded[1].dialogue_id


async def test_web_visits_are_per_customer(hub):
    recorded = await send(
        hub,
        "web",
        event("w1", 0),
        {**event("w2", 1), "identities": {"email": "bob@example.com"}},
        event("w3", 2),
    )
    assert recorded[0].dialogue_id == recorded[2].dialogue_id != recorded[1].dialogue_id
    assert recorded[0].customer_id != recorded[1].customer_id


async def test_web_session_timeout_is_configurable(hub_config):
    from attrs import evolve

    config = evolve(hub_config, raw={"touchpoints": {"web": {"session_timeout_minutes": 5}}})
    async with Hub.open(config, autoload=True) as hub:
        recorded = await send(hub, "web", event("w1", 0), event("w2", 4), event("w3", 10))
        ids = [r.dialogue_id for r in recorded]
        assert ids[0] == ids[1] != ids[2]


# ---- one dialogue per event -------------------------------------------------------------


async def test_without_a_key_callcenter_ivr_and_pos_open_one_dialogue_per_event(hub):
    for tp in ("callcenter", "ivr", "pos"):
        recorded = await send(hub, tp, event(f"{tp}-1", 0), event(f"{tp}-2", 1))
        (later,) = await send(hub, tp, event(f"{tp}-3", 2))
        ids = {r.dialogue_id for r in [*recorded, later]}
        assert len(ids) == 3, tp
    rows = await dialogue_rows(hub)
    assert len(rows) == 9
    assert len({r.customer_id for r in rows.values()}) == 1
    # the event id is the dialogue's ref, so a later event can join it by key
    assert sorted((r.touchpoint, r.ref) for r in rows.values()) == sorted(
        (tp, f"{tp}-{i}") for tp in ("callcenter", "ivr", "pos") for i in (1, 2, 3)
    )


# ---- closing, intent, direction ---------------------------------------------------------


async def test_an_outcome_closes_the_dialogue_and_late_events_by_key_still_join_it(hub):
    (start,) = await send(hub, "callcenter", event("c1", 0, "service.request", dialogue="call-7"))
    (end,) = await send(hub, "callcenter", event("c2", 5, "call.note", dialogue="call-7", data={"outcome": "resolved"}))
    assert start.dialogue_id == end.dialogue_id
    row = (await dialogue_rows(hub))[start.dialogue_id]
    assert (row.status, row.outcome, row.intent) == ("closed", "resolved", "service")
    assert row.closed_at == T0 + timedelta(minutes=5)

    (late,) = await send(hub, "callcenter", event("c3", 20, "agent.note", dialogue="call-7", data={"text": "x"}))
    (later,) = await send(
        hub, "callcenter", event("c4", 30, "agent.note", dialogue="call-7", data={"outcome": "other"})
    )
    assert late.dialogue_id == later.dialogue_id == start.dialogue_id
    row = (await dialogue_rows(hub))[start.dialogue_id]
    # still closed, with its first outcome and closing time; the late notes extend it
    assert (row.status, row.outcome) == ("closed", "resolved")
    assert row.closed_at == T0 + timedelta(minutes=5)
    assert row.last_event_at == T0 + timedelta(minutes=30)
    assert len(await dialogue_rows(hub)) == 1


async def test_a_call_closed_without_an_outcome_takes_the_wrap_up_outcome_and_stays_closed(hub):
    (start,) = await send(hub, "callcenter", event("w1", 0, "call.offered", dialogue="call-9"))
    await send(hub, "callcenter", event("w2", 4, "dialogue.closed", dialogue="call-9"))
    (wrap,) = await send(hub, "callcenter", event("w3", 6, "call.outcome", dialogue="call-9", data={"outcome": "sold"}))
    await send(hub, "callcenter", event("w4", 9, "call.outcome", dialogue="call-9", data={"outcome": "other"}))
    assert wrap.dialogue_id == start.dialogue_id
    row = (await dialogue_rows(hub))[start.dialogue_id]
    # the first outcome after the hang-up is the call's; the dialogue stays closed when it closed
    assert (row.status, row.outcome) == ("closed", "sold")
    assert row.closed_at == T0 + timedelta(minutes=4)
    assert len(await dialogue_rows(hub)) == 1


async def test_dialogue_closed_type_closes_without_an_outcome(hub):
    recorded = await send(
        hub, "ivr", event("i1", 0, "menu", dialogue="ivr-1"), event("i2", 1, "dialogue.closed", dialogue="ivr-1")
    )
    row = (await dialogue_rows(hub))[recorded[0].dialogue_id]
    assert (row.status, row.outcome) == ("closed", None)


async def test_an_outcome_closes_a_web_visit_and_the_next_event_opens_another(hub):
    recorded = await send(
        hub,
        "web",
        event("w1", 0, "order.started"),
        event("w2", 2, "order.completed", data={"outcome": "purchased", "revenue": 12.5}),
        event("w3", 4),
    )
    ids = [r.dialogue_id for r in recorded]
    assert ids[0] == ids[1] != ids[2]
    rows = await dialogue_rows(hub)
    assert (rows[ids[0]].status, rows[ids[0]].outcome, rows[ids[0]].intent) == ("closed", "purchased", "sale")
    assert rows[ids[2]].status == "open"


async def test_only_string_outcomes_close(hub):
    (rec,) = await send(hub, "callcenter", event("c1", 0, dialogue="k", data={"outcome": 3}))
    assert (await dialogue_rows(hub))[rec.dialogue_id].status == "open"


async def test_intent_is_inferred_from_the_first_event_that_has_one(hub):
    cases = {
        "service.request": "service",
        "Service.Complaint": "service",
        "info.hours": "information",
        "quote.requested": "sale",
        "order.placed": "sale",
        "purchase": "sale",
        "page": None,
    }
    for i, (type_, intent) in enumerate(cases.items()):
        (rec,) = await send(hub, "pos", event(f"p{i}", i, type_))
        assert (await dialogue_rows(hub))[rec.dialogue_id].intent == intent, type_
    # an explicit data.intent wins; an unknown one is ignored
    (a,) = await send(hub, "pos", event("q1", 20, "service.request", data={"intent": "sale"}))
    (b,) = await send(hub, "pos", event("q2", 21, "service.request", data={"intent": "gossip"}))
    rows = await dialogue_rows(hub)
    assert rows[a.dialogue_id].intent == "sale"
    assert rows[b.dialogue_id].intent == "service"
    # the first intent sticks
    recorded = await send(
        hub,
        "callcenter",
        event("c1", 0, "call.started", dialogue="z"),
        event("c2", 1, "service.request", dialogue="z"),
        event("c3", 2, "order.placed", dialogue="z"),
    )
    assert (await dialogue_rows(hub))[recorded[0].dialogue_id].intent == "service"


async def test_outbound_direction_is_kept(hub):
    recorded = await send(
        hub,
        "callcenter",
        event("c1", 0, "call.started", dialogue="call-1"),
        event("c2", 1, "call.callback", dialogue="call-1", direction="outbound"),
    )
    assert recorded[0].dialogue_id == recorded[1].dialogue_id
    view = await hub.view("email:ann@example.com")
    assert [(t["event_id"], t["direction"], t["dialogue"]) for t in view.timeline] == [
        ("c2", "outbound", recorded[0].dialogue_id),
        ("c1", "inbound", recorded[0].dialogue_id),
    ]


async def test_an_event_can_join_a_dialogue_by_the_hubs_own_id(hub):
    from prm_core.model import Event

    (first,) = await send(hub, "pos", event("p1", 0, "transaction.started"))
    reply = Event(
        id=answer_id("p1"),
        type="delivery",
        occurred_at=T0 + timedelta(seconds=1),
        touchpoint="pos",
        dialogue_id=first.dialogue_id,
        direction="outbound",
    )
    (rec,) = await hub.record([reply])
    assert rec.dialogue_id == first.dialogue_id
    assert rec.customer_id == first.customer_id
    view = await hub.view(first.customer_id)
    assert [(t["event_id"], t["direction"]) for t in view.timeline] == [
        (answer_id("p1"), "outbound"),
        ("p1", "inbound"),
    ]
    assert len(view.dialogues) == 1


async def test_hub_request_records_the_answer_outbound_in_the_same_dialogue(hub):
    (ev,) = hub.parse_events(event("w1", 0, "service.request"), "web")
    await hub.request(ev)
    view = await hub.view("email:ann@example.com")
    by_id = {t["event_id"]: t for t in view.timeline}
    assert by_id[answer_id("w1")]["direction"] == "outbound"
    assert by_id[answer_id("w1")]["dialogue"] == by_id["w1"]["dialogue"]
    assert by_id["w1"]["direction"] == "inbound"
    assert len(view.dialogues) == 1
    assert view.dialogues[0].intent == "service"
    assert view.metrics["event_count"] == 2


async def test_duplicates_do_not_touch_dialogues(hub):
    (a,) = await send(hub, "web", event("w1", 0))
    (dup,) = await send(hub, "web", event("w1", 100))
    assert dup.duplicate
    assert dup.dialogue_id == a.dialogue_id
    rows = await dialogue_rows(hub)
    assert len(rows) == 1
    assert rows[a.dialogue_id].last_event_at == T0
    assert rows[a.dialogue_id].status == "open"


async def test_a_recycled_dialogue_key_does_not_glue_strangers(hub):
    """Two POS transactions a week apart share a transaction number; the cards are different people."""
    first = await send(
        hub, "pos", event("t1", 0, identities={"loyalty_card": "111"}, dialogue="1001", data={"outcome": "paid"})
    )
    later = Event(
        id="t2",
        type="transaction",
        occurred_at=first[0].event.occurred_at + timedelta(days=7),
        touchpoint="pos",
        identities=(Identity("loyalty_card", "222"),),
        dialogue="1001",
    )
    (second,) = await hub.record([later])
    assert second.customer_id != first[0].customer_id
    assert second.dialogue_id != first[0].dialogue_id
    # while a call is live, an account number first given mid-call joins the caller
    (call,) = await send(hub, "callcenter", event("c1", 0, identities={"phone": "+14155550100"}, dialogue="call-9"))
    (mid,) = await send(hub, "callcenter", event("c2", 1, identities={"account_id": "A-77"}, dialogue="call-9"))
    assert (mid.customer_id, mid.dialogue_id) == (call.customer_id, call.dialogue_id)


# ---- out-of-order events, the window's early edge, long outcomes, intents ------------------


async def test_an_event_older_than_the_dialogues_opening_moves_its_opening_back(hub):
    recorded = await send(
        hub, "callcenter", event("c1", 10, "call.offered", dialogue="call-3"), event("c2", 5, dialogue="call-3")
    )
    assert recorded[0].dialogue_id == recorded[1].dialogue_id
    row = (await dialogue_rows(hub))[recorded[0].dialogue_id]
    assert (row.opened_at, row.last_event_at) == (T0 + timedelta(minutes=5), T0 + timedelta(minutes=10))


async def test_a_web_event_up_to_the_timeout_before_the_visit_opened_joins_it(hub):
    bob = {"email": "bob@example.com"}
    ann = await send(hub, "web", event("a1", 40), event("a2", 10))  # exactly 30 minutes earlier
    assert ann[0].dialogue_id == ann[1].dialogue_id
    row = (await dialogue_rows(hub))[ann[0].dialogue_id]
    assert (row.opened_at, row.last_event_at) == (T0 + timedelta(minutes=10), T0 + timedelta(minutes=40))
    bobs = await send(hub, "web", event("b1", 40, identities=bob), event("b2", 9.5, identities=bob))
    assert bobs[0].dialogue_id != bobs[1].dialogue_id


async def test_an_outcome_is_kept_to_64_characters(hub):
    long = "resolved " + "x" * 100
    (closed,) = await send(hub, "callcenter", event("c1", 0, dialogue="call-1", data={"outcome": long}))
    await send(hub, "callcenter", event("w1", 0, "call.offered", dialogue="call-2"))
    await send(hub, "callcenter", event("w2", 1, "dialogue.closed", dialogue="call-2"))
    (wrapped,) = await send(hub, "callcenter", event("w3", 2, dialogue="call-2", data={"outcome": long}))
    rows = await dialogue_rows(hub)
    assert rows[closed.dialogue_id].outcome == long[:64]
    assert rows[wrapped.dialogue_id].outcome == long[:64]
    assert len(long[:64]) == 64


@pytest.mark.parametrize(
    ("type_", "intent"),
    [
        ("info.hours", "information"),
        ("information.opening_hours", "information"),
        ("INFORMATION.faq", "information"),
        ("service.request", "service"),
        ("quote.requested", "sale"),
        ("order.placed", "sale"),
        ("sale.completed", "sale"),
        ("transaction", "sale"),
        ("transaction.completed", "sale"),
        ("purchase", "sale"),
        ("purchases.listed", "sale"),
        ("page", None),
        ("informational", None),
        ("services", None),
        ("sales", None),
        ("reorder.placed", None),
    ],
)
def test_the_intent_of_an_event_type(type_, intent):
    assert infer_intent(type_, {}) == intent


@pytest.mark.parametrize(
    ("explicit", "intent"), [("sale", "sale"), ("information", "information"), ("service", "service"), ("gossip", None)]
)
def test_an_explicit_intent_wins_when_it_is_one_of_the_three(explicit, intent):
    assert infer_intent("page", {"intent": explicit}) == intent
    assert infer_intent("quote.requested", {"intent": explicit}) == (intent or "sale")
    assert infer_intent("service.request", {"intent": ["sale"]}) == "service"
