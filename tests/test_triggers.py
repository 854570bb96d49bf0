"""Triggers and journeys: runs started from the change feed, exactly once, acted on behind the
guards, kept across restarts; the four shipped examples end to end; the API and the config."""

from __future__ import annotations

import asyncio
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from polling import until

from prm_core import hookimpl
from prm_core.clock import FrozenClock
from prm_core.config import Config
from prm_core.errors import ConfigError
from prm_core.feed.changes import CORE_TYPES, NewChange
from prm_core.feed.writing import emit
from prm_core.hub import Hub
from prm_core.model import FulfillmentResult, Partner, TouchPoint
from prm_core.planning.campaigns import in_control
from prm_core.privacy.consents import write_consents
from prm_core.privacy.erasure import erase_customer
from prm_core.server.state import HUB
from prm_core.store.tables import planning_models, trigger_cursor, trigger_offers, trigger_runs, utcnow
from prm_core.triggers import MessageResult
from prm_core.triggers import engine as trigger_engine
from prm_core.triggers.conditions import compile_condition, shortcut

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)  # noon UTC: outside the default quiet hours
TIERS = {"platinum": "lifetime_revenue >= 5000", "gold": "lifetime_revenue >= 1000"}


class Outbox:
    """A touch point plugin sending email and SMS into lists: what a real sender would get."""

    def __init__(self, answer: str = "sent") -> None:
        self.sent: list[Any] = []
        self.answer = answer

    @hookimpl
    def prm_touchpoints(self, config: Any) -> list[TouchPoint]:
        return [
            TouchPoint(name="email", channel="email", budget_ms=1000),
            TouchPoint(name="sms", channel="sms", budget_ms=1000),
        ]

    @hookimpl
    def prm_send_message(self, message: Any) -> Any:
        if message.channel not in ("email", "sms"):
            return None
        return self._send(message)

    async def _send(self, message: Any) -> MessageResult:
        if self.answer != "sent":
            return MessageResult("failed", self.answer)
        self.sent.append(message)
        return MessageResult("sent", ref=f"ref-{len(self.sent)}")


class Notifier:
    """A partner with role notification, answering through the outbox."""

    def __init__(self) -> None:
        self.asked: list[Any] = []

    @hookimpl
    def prm_partners(self, config: Any) -> list[Partner]:
        return [Partner(name="notifyco", role="notification")]

    @hookimpl
    def prm_fulfill(self, request: Any) -> Any:
        if request.partner != "notifyco":
            return None
        return self._answer(request)

    async def _answer(self, request: Any) -> FulfillmentResult:
        self.asked.append(request)
        return FulfillmentResult(request.id, "notifyco", "confirmed")


def config_of(database_url: str, triggers: dict[str, Any], **settings: Any) -> Config:
    section = {"poll_s": 0.02, "quiet_hours": "none", **settings, **triggers}
    return Config(
        database_url=database_url,
        public_url="http://hub.test",
        # a request's offers are those ready within the budget: a generous one on a busy test machine
        raw={"triggers": section, "tiers": {"rules": TIERS}, "touchpoints": {"web": {"budget_ms": 10_000}}},
    )


def ev(event_id: str, type_: str, email: str, *, at: datetime = T0, **data: Any) -> dict[str, Any]:
    return {"id": event_id, "type": type_, "occurred_at": at.isoformat(), "identities": {"email": email}, "data": data}


async def send(hub: Hub, *bodies: dict[str, Any]) -> list[Any]:
    return await hub.record(hub.parse_events({"events": list(bodies)}, "web"))


async def runs_of(hub: Hub, trigger: str | None = None) -> list[Any]:
    q = sa.select(trigger_runs).order_by(trigger_runs.c.created_at, trigger_runs.c.key)
    if trigger is not None:
        q = q.where(trigger_runs.c.trigger == trigger)
    return await hub.store.read(lambda conn: list(conn.execute(q)))


async def settled(hub: Hub, trigger: str, count: int = 1) -> list[Any]:
    """The trigger's runs once ``count`` of them are no longer scheduled."""

    async def check() -> list[Any] | None:
        found = await runs_of(hub, trigger)
        done = [r for r in found if r.status != "scheduled"]
        return found if len(done) >= count else None

    return await until(check)


async def grant_marketing(hub: Hub, customer_id: str, channel: str = "*") -> None:
    change = {"purpose": "marketing", "channel": channel, "granted": True, "source": "test"}
    await hub.store.write(lambda conn: write_consents(conn, customer_id, [change], utcnow()))


# ---- the shipped examples ------------------------------------------------------------

WELCOME = {
    "on": "customer.updated",
    "when": "change['tier'] == 'platinum'",
    "purpose": "transactional",
    "action": {"kind": "message", "channel": "email", "subject": "Welcome to platinum",
               "template": "Dear $first_name, welcome to our platinum tier."},
}  # fmt: skip
CART = {
    "on": "event.recorded",
    "when": "change['type'] == 'cart'",
    "delay": "30m",
    "unless": ["purchase", "order.completed"],
    "action": {"kind": "message", "channel": "email", "template": "$first_name, your cart is waiting."},
}
SURVEY = {
    "on": "fulfillment.updated",
    "when": "change['role'] == 'field_service' and change['status'] == 'completed'",
    "delay": "2h",
    "purpose": "transactional",
    "action": {"kind": "message", "channel": "sms", "template": "How was your technician visit? Reply 1-5."},
}
RETENTION = {
    "on": "event.recorded",
    "when": "churn_risk >= 0.6",
    "cooldown": "30d",
    "action": {"kind": "offer", "code": "winback-20", "title": "20% off your next order", "score": 0.9,
               "touchpoint": "web"},
}  # fmt: skip


@pytest.fixture
def outbox() -> Outbox:
    return Outbox()


@pytest.fixture
def hub_plugins(outbox: Outbox) -> list[Any]:
    return [outbox]


@pytest.fixture
def hub_config(database_url: str) -> Config:
    return config_of(database_url, {"welcome": WELCOME, "cart": CART, "survey": SURVEY, "retention": RETENTION})


@pytest.fixture
def clock() -> Any:
    with FrozenClock(T0) as frozen:
        yield frozen


async def test_a_customer_becoming_platinum_gets_the_welcome_once(hub, outbox, clock):
    (r,) = await send(hub, ev("s1", "order.completed", "ann@example.com", revenue="1200", currency="USD"))
    await hub.add_traits({r.customer_id: {"first_name": "Ann"}})
    await send(hub, ev("s2", "order.completed", "ann@example.com", revenue="4000", currency="USD"))
    await send(hub, ev("s3", "order.completed", "ann@example.com", revenue="10", currency="USD"))
    (run,) = await settled(hub, "welcome")
    assert (run.status, run.channel, run.customer_id) == ("fired", "email", r.customer_id)
    (message,) = outbox.sent
    assert message.to == "ann@example.com" and message.subject == "Welcome to platinum"
    assert message.text == "Dear Ann, welcome to our platinum tier."
    assert run.event_id == "trigger:" + message.id.removeprefix("act_")
    # an outbound event in the 360 view, and message.sent on the feed
    view = await hub.view(r.customer_id)
    sent = [e for e in view.timeline if e["type"] == "message.sent"]
    assert sent and sent[0]["direction"] == "outbound" and sent[0]["touchpoint"] == "email"
    page = await hub.feed.read(None, 1000, types={"message.sent"})
    (change,) = page.changes
    assert change.customer_id == r.customer_id
    assert change.data == {"message_id": message.id, "channel": "email", "touchpoint": "email",
                           "dialogue_id": sent[0]["dialogue"]}  # fmt: skip
    assert set(change.data) == set(CORE_TYPES["message.sent"]), "the fields the feed's table lists"


async def test_an_abandoned_cart_is_reminded_after_the_wait_unless_a_purchase_came(hub, outbox, clock):
    (ann,) = await send(hub, ev("c1", "cart", "ann@example.com"))
    (bob,) = await send(hub, ev("c2", "cart", "bob@example.com"))
    await grant_marketing(hub, ann.customer_id, "email")
    await grant_marketing(hub, bob.customer_id, "email")
    await until(lambda: _count(hub, "cart", 2))
    await asyncio.sleep(0.2)
    assert outbox.sent == []  # nothing before the 30 minutes are over
    clock.advance(minutes=10)
    await send(hub, ev("p1", "order.completed", "bob@example.com", at=clock.now, revenue="30", currency="USD"))
    clock.advance(minutes=21)
    runs = {r.customer_id: r for r in await settled(hub, "cart", 2)}
    assert runs[ann.customer_id].status == "fired"
    assert (runs[bob.customer_id].status, runs[bob.customer_id].reason) == (
        "cancelled",
        "a order.completed event came within the wait",
    )
    assert [m.to for m in outbox.sent] == ["ann@example.com"]


async def test_a_change_is_judged_once_as_it_happened_even_when_the_lease_is_renewed(database_url, monkeypatch):
    vip = {
        "on": "event.recorded",
        "when": "change['type'] == 'page.viewed' and traits['vip'] == 'yes'",
        "purpose": "transactional",
        "action": {"kind": "message", "channel": "email", "template": "Hello"},
    }
    # a position past changes that start nothing would be written only now and then: here never
    monkeypatch.setattr(trigger_engine, "NOTE_S", 1e9)
    async with Hub.open(config_of(database_url, {"vip": vip}), autoload=True) as hub:
        engine = hub.triggers
        (ann,) = await send(hub, ev("v1", "page.viewed", "ann@example.com", at=datetime.now(UTC)))
        head = (await hub.feed.read(None, 1000)).next

        async def read_past_it() -> bool:
            return engine._cursor is not None and engine._cursor >= head

        await until(read_past_it)  # judged: ann is no VIP yet, so no run
        await hub.add_traits({ann.customer_id: {"vip": "yes"}})
        renewed_from = engine._lease_until
        engine._lease_until = 0.0  # the lease is due for renewal at the next read

        async def renewed() -> bool:
            return engine._lease_until > renewed_from

        await until(renewed)
        await until(read_past_it)
        assert await runs_of(hub, "vip") == []  # the page view came before she was a VIP


async def test_history_loaded_late_starts_no_run(hub, outbox, clock):
    await send(hub, ev("old", "cart", "ann@example.com", at=T0 - timedelta(days=3)))
    await send(hub, ev("new", "cart", "ann@example.com"))
    await until(lambda: runs_of(hub, "cart"))
    await asyncio.sleep(0.2)
    assert [r.change["event_id"] for r in await runs_of(hub, "cart")] == ["new"]


async def test_marketing_needs_consent_for_the_channel(hub, outbox, clock):
    await send(hub, ev("c1", "cart", "ann@example.com"))
    await until(lambda: _count(hub, "cart", 1))
    clock.advance(minutes=31)
    (run,) = await settled(hub, "cart")
    assert (run.status, run.reason) == ("skipped", "no marketing consent on email")
    assert outbox.sent == []


async def test_a_survey_follows_a_completed_technician_visit(hub, outbox, clock):
    (ann,) = await send(hub, ev("v1", "service.request", "ann@example.com"))
    data = {"fulfillment_id": "f1", "partner": "fieldco", "role": "field_service", "action": "schedule",
            "dialogue_id": ann.dialogue_id, "data": {}}  # fmt: skip
    await hub.store.write(
        lambda conn: emit(
            conn,
            NewChange("fulfillment.updated", ann.customer_id, {**data, "status": "confirmed"}),
            NewChange("fulfillment.updated", ann.customer_id, {**data, "status": "completed"}),
        )
    )
    await until(lambda: _count(hub, "survey", 1))
    clock.advance(hours=2)
    (run,) = await settled(hub, "survey")
    assert run.status == "fired"
    (message,) = outbox.sent
    assert message.channel == "sms" and message.purpose == "transactional"
    assert message.to is None  # ann has no phone: the sender is told, and decides


async def test_a_customer_at_risk_gets_the_retention_offer_at_the_next_contact(hub, clock):
    # a fitted model under which a customer who bought twice long ago is likely gone
    params = {"r": 0.25, "alpha": 4.0, "a": 1.5, "b": 2.5}
    await hub.store.write(
        lambda conn: conn.execute(planning_models.insert().values(name="bgnbd", params=params, fitted_at=T0))
    )
    hub.planner.forget_models()
    long_ago = T0 - timedelta(days=300)
    (ann,) = await send(hub, ev("o1", "order.completed", "ann@example.com", at=long_ago, revenue="50", currency="USD"))
    await grant_marketing(hub, ann.customer_id)
    await send(
        hub,
        ev("o2", "order.completed", "ann@example.com", at=long_ago + timedelta(days=1), revenue="50", currency="USD"),
        ev("o3", "order.completed", "bob@example.com", at=T0 - timedelta(days=3), revenue="50", currency="USD"),
        ev("o4", "order.completed", "bob@example.com", at=T0 - timedelta(days=1), revenue="50", currency="USD"),
    )
    # her old orders, loaded now, are history: they start no run; her visit today does
    await send(hub, ev("visit-bob", "page", "bob@example.com"), ev("visit", "page", "ann@example.com"))
    (run,) = await settled(hub, "retention")  # only ann is at risk, once she bought twice long ago
    assert (run.status, run.customer_id, run.change["event_id"]) == ("fired", ann.customer_id, "visit")
    # the next request at any touch point says it, and then it is done
    answer = await hub.request(hub.parse_events(ev("ask", "page", "ann@example.com"), "web")[0])
    offers = [o for o in answer.delivery.offers if o.code == "winback-20"]
    assert offers and offers[0].source == "trigger:retention"

    async def made() -> bool:
        rows = await hub.store.read(lambda conn: list(conn.execute(sa.select(trigger_offers))))
        return bool(rows) and rows[0].made_at is not None

    await until(made)
    again = await hub.request(hub.parse_events(ev("ask2", "page", "ann@example.com"), "web")[0])
    assert "winback-20" not in [o.code for o in again.delivery.offers]
    # the cooldown: every later event of hers (the requests, the hub's answers) starts a run, which a guard stops
    runs = await settled(hub, "retention", 5)
    assert [r.status for r in runs].count("fired") == 1
    assert {(r.status, r.reason) for r in runs if r.status != "fired"} == {("skipped", "within the trigger's cooldown")}


async def _count(hub: Hub, trigger: str, n: int) -> bool:
    return len(await runs_of(hub, trigger)) >= n


# ---- guards --------------------------------------------------------------------------

HELLO = {
    "on": "event.recorded",
    "when": "change['type'] == 'hello'",
    "action": {"kind": "message", "channel": "email", "template": "Hello $first_name"},
}


def opened(database_url: str, triggers: dict[str, Any], plugins: list[Any], **settings: Any) -> Any:
    return Hub.open(config_of(database_url, triggers, **settings), plugins=plugins, autoload=True)


async def test_quiet_hours_hold_a_message_until_they_end_in_the_customers_time_zone(database_url, clock):
    outbox = Outbox()
    hello = {**HELLO, "purpose": "transactional"}
    async with opened(database_url, {"hello": hello}, [outbox], quiet_hours="21:00-08:00") as hub:
        (ann,) = await send(hub, ev("h0", "page", "ann@example.com"))
        await hub.add_traits({ann.customer_id: {"time_zone": "America/New_York"}})  # noon UTC is 07:00 there
        await send(hub, ev("h1", "hello", "ann@example.com"))
        await settled_reason(hub, "hello", "waiting for quiet hours to end")
        (run,) = await runs_of(hub, "hello")
        assert run.due_at == datetime(2026, 11, 23, 13, 0, tzinfo=UTC) and outbox.sent == []
        clock.advance(hours=1)
        (run,) = await settled(hub, "hello")
        assert run.status == "fired" and len(outbox.sent) == 1


async def settled_reason(hub: Hub, trigger: str, reason: str) -> None:
    async def check() -> bool:
        return any(r.reason == reason for r in await runs_of(hub, trigger))

    await until(check)


async def test_the_frequency_cap_counts_per_customer_and_channel(database_url, clock):
    outbox = Outbox()
    async with opened(database_url, {"hello": HELLO}, [outbox], frequency_cap=2) as hub:
        (ann,) = await send(hub, ev("h0", "page", "ann@example.com"))
        await grant_marketing(hub, ann.customer_id)
        for n in range(3):
            await send(hub, ev(f"h{n + 1}", "hello", "ann@example.com"))
            await settled(hub, "hello", n + 1)
        runs = await runs_of(hub, "hello")
        assert [(r.status, r.reason) for r in runs] == [
            ("fired", None),
            ("fired", None),
            ("skipped", "frequency cap on email"),
        ]
        assert len(outbox.sent) == 2


async def test_a_holdout_is_recorded_like_a_control_group_and_gets_nothing(database_url, clock):
    outbox = Outbox()
    async with opened(database_url, {"hello": {**HELLO, "holdout_percent": 50}}, [outbox]) as hub:
        ids = []
        for n in range(12):
            (r,) = await send(hub, ev(f"p{n}", "page", f"c{n}@example.com"))
            await grant_marketing(hub, r.customer_id)
            ids.append(r.customer_id)
        await send(hub, *(ev(f"h{n}", "hello", f"c{n}@example.com") for n in range(12)))
        runs = await settled(hub, "hello", 12)
        control = {cid for cid in ids if in_control("trigger:hello", cid, 50)}
        assert 0 < len(control) < 12  # both sides, for this seed of ids
        assert {r.customer_id for r in runs if r.status == "held_out"} == control
        assert all(r.control for r in runs if r.status == "held_out")
        assert {m.customer_id for m in outbox.sent} == set(ids) - control


async def test_no_action_for_an_erased_or_suppressed_customer(database_url, clock):
    outbox = Outbox()
    cart = {**CART, "purpose": "transactional"}
    async with opened(database_url, {"cart": cart}, [outbox]) as hub:
        (ann,) = await send(hub, ev("c1", "cart", "ann@example.com"))
        (bob,) = await send(hub, ev("c2", "cart", "bob@example.com"))
        await hub.add_traits({bob.customer_id: {"suppressed": ["email"]}})
        await until(lambda: _count(hub, "cart", 2))
        await erase_customer(hub, ann.customer_id)
        await settled_reason(hub, "cart", "customer erased")
        clock.advance(minutes=31)
        runs = {r.customer_id: r for r in await settled(hub, "cart", 2)}
        assert (runs[ann.customer_id].status, runs[ann.customer_id].change) == ("cancelled", {})
        assert (runs[bob.customer_id].status, runs[bob.customer_id].reason) == (
            "skipped",
            "the customer is suppressed",
        )
        assert outbox.sent == []


# ---- actions -------------------------------------------------------------------------


async def test_a_message_on_a_channel_no_plugin_sends_is_recorded_undeliverable(database_url, clock):
    hello = {**HELLO, "purpose": "transactional"}
    async with opened(database_url, {"hello": hello}, []) as hub:
        await send(hub, ev("h1", "hello", "ann@example.com"))
        (run,) = await settled(hub, "hello")
        assert run.status == "failed"
        assert run.reason in (
            "undeliverable: no touch point plugin sends messages (email included)",  # no sender installed
            "undeliverable: no touch point is registered for the email channel",  # prm_email, without [email]
        )


async def test_a_sender_refusing_a_message_fails_the_run_with_its_reason(database_url, clock):
    hello = {**HELLO, "purpose": "transactional"}
    async with opened(database_url, {"hello": hello}, [Outbox(answer="mailbox does not exist")]) as hub:
        await send(hub, ev("h1", "hello", "ann@example.com"))
        (run,) = await settled(hub, "hello")
        assert (run.status, run.reason) == ("failed", "the email sender refused it: mailbox does not exist")


async def test_a_notification_partner_is_asked_once_through_the_outbox(database_url, clock):
    notifier = Notifier()
    notify = {
        "on": "event.recorded",
        "when": "change['type'] == 'hello'",
        "purpose": "transactional",
        "action": {"kind": "partner", "channel": "sms", "template": "Hi $first_name", "touchpoint": "web"},
    }
    async with opened(database_url, {"notify": notify}, [notifier]) as hub:
        (ann,) = await send(hub, ev("h1", "hello", "ann@example.com"))
        await hub.add_traits({ann.customer_id: {"first_name": "Ann"}})
        (run,) = await settled(hub, "notify")
        assert run.status == "fired"
        await until(lambda: _true(notifier.asked))
        (asked,) = notifier.asked
        assert (asked.partner, asked.action, asked.customer_id) == ("notifyco", "notify", ann.customer_id)
        assert asked.payload["channel"] == "sms" and asked.idempotency_key == asked.id
        view = await hub.view(ann.customer_id)
        assert [e["direction"] for e in view.timeline if e["type"] == "fulfillment.planned"] == ["outbound"]


async def _true(value: Any) -> bool:
    return bool(value)


# ---- journeys, restarts, exactly once --------------------------------------------------

JOURNEY = {
    "on": "event.recorded",
    "when": "change['type'] == 'signup'",
    "purpose": "transactional",
    "steps": [
        {"act": {"kind": "message", "channel": "email", "template": "Welcome $first_name"}},
        {"wait": "1d", "unless": ["unsubscribe"]},
        {"check": "purchases == 0"},
        {"act": {"kind": "message", "channel": "email", "template": "Here is how to start"}},
    ],
}


async def test_a_journey_waits_across_a_restart_and_each_step_happens_once(database_url, clock):
    outbox = Outbox()
    async with opened(database_url, {"journey": JOURNEY}, [outbox]) as hub:
        await send(hub, ev("u1", "signup", "ann@example.com"), ev("u2", "signup", "bob@example.com"))

        async def both_waiting() -> bool:
            found = await runs_of(hub, "journey")
            return len(found) == 2 and all(r.step == 1 and r.due_at > clock.now for r in found)

        await until(both_waiting)
        assert [m.text for m in outbox.sent] == ["Welcome ", "Welcome "]
        await send(hub, ev("b1", "order.completed", "bob@example.com", revenue="10", currency="USD"))
    # the hub is down while the journeys wait; a day passes
    clock.advance(days=1, minutes=1)
    async with opened(database_url, {"journey": JOURNEY}, [outbox]) as hub:
        runs = {r.change["event_id"]: r for r in await settled(hub, "journey", 2)}
        assert (runs["u1"].status, runs["u1"].step) == ("fired", 4)
        assert (runs["u2"].status, runs["u2"].reason) == ("ended", "steps[2].check did not match")
        assert [m.text for m in outbox.sent] == ["Welcome ", "Welcome ", "Here is how to start"]
        assert len({m.id for m in outbox.sent}) == 3


async def test_a_pending_delay_survives_a_restart_and_fires_once(database_url, clock):
    outbox = Outbox()
    cart = {**CART, "purpose": "transactional"}
    async with opened(database_url, {"cart": cart}, [outbox]) as hub:
        await send(hub, ev("c1", "cart", "ann@example.com"))
        await until(lambda: _count(hub, "cart", 1))
        # as if the hub died before it noted its place in the feed: it reads the cart again
        await hub.store.write(lambda conn: conn.execute(trigger_cursor.update().values(position=0)))
    clock.advance(minutes=31)
    async with opened(database_url, {"cart": cart}, [outbox]) as hub:
        (run,) = await settled(hub, "cart")
        await asyncio.sleep(0.3)  # time to read the feed again, and to fire twice if it were going to
        assert len(await runs_of(hub, "cart")) == 1
        assert run.status == "fired" and len(outbox.sent) == 1


async def test_a_message_recorded_before_its_run_was_saved_is_not_handed_over_again(database_url, clock):
    """As if the hub died between recording a message's event and saving its run: the run is
    claimed again, finds the message recorded, and fires without handing it over again; the
    feed has its message.sent change once."""
    outbox = Outbox()
    hello = {**HELLO, "purpose": "transactional"}
    async with opened(database_url, {"hello": hello}, [outbox]) as hub:
        await send(hub, ev("h1", "hello", "ann@example.com"))
        (first,) = await settled(hub, "hello")
        lost = {"status": "scheduled", "step": 0, "due_at": clock.now, "fired_at": None, "event_id": None}
        await hub.store.write(lambda conn: conn.execute(trigger_runs.update().values(**lost)))
        (again,) = await settled(hub, "hello")
        assert (first.status, again.status, again.event_id) == ("fired", "fired", first.event_id)
        assert again.attempts == first.attempts + 1 and again.fired_at == first.fired_at
        assert len(outbox.sent) == 1
        page = await hub.feed.read(None, 1000, types={"message.sent"})
        assert [c.data["message_id"] for c in page.changes] == [outbox.sent[0].id]


class SlowOutbox(Outbox):
    """A sender taking longer than a run's lease: a provider's slow round trip."""

    async def _send(self, message: Any) -> MessageResult:
        await asyncio.sleep(2.5)
        return await super()._send(message)


async def test_a_run_outliving_its_lease_in_a_live_hub_process_is_not_taken_over(database_url):
    """Two hub processes share the runs, with leases shorter than a send: the process taking a
    run through its steps keeps its lease, so no message is handed over twice, and each sent
    message has one message.sent change."""
    outbox = SlowOutbox()
    hello = {**HELLO, "purpose": "transactional"}
    config = Config(
        database_url=database_url,
        public_url="http://hub.test",
        # a lease of 1 s (renewed every third of it): a loaded test machine's event loop may stall
        # for a few hundred milliseconds, and that must not pass for a dead process
        raw={"triggers": {"poll_s": 0.02, "quiet_hours": "none", "hello": hello}, "feed": {"destination_lease_s": 1.0}},
    )
    async with (
        Hub.open(config, plugins=[outbox], autoload=True) as first,
        Hub.open(config, plugins=[outbox], autoload=True) as second,
    ):
        now = datetime.now(UTC)
        await send(first, *(ev(f"h{i}", "hello", f"c{i}@example.com", at=now) for i in range(6)))
        fired = await settled(second, "hello", 6)
        await asyncio.sleep(3.0)  # time for a process whose lease was taken over to send again
        assert [r.status for r in fired] == ["fired"] * 6
        assert sorted(m.id for m in outbox.sent) == sorted({m.id for m in outbox.sent}) and len(outbox.sent) == 6
        page = await first.feed.read(None, 1000, types={"message.sent"})
        assert sorted(c.data["message_id"] for c in page.changes) == sorted(m.id for m in outbox.sent)


# ---- the API and the config ----------------------------------------------------------


async def test_triggers_are_listed_created_paused_and_resumed_through_the_api(hub_client, make_key, clock):
    admin = {"Authorization": f"Bearer {await make_key('admin')}"}
    hello = {"name": "hello", **HELLO, "purpose": "transactional"}
    created = await hub_client.post("/v1/triggers", json=hello, headers=admin)
    assert created.status == 201, await created.text()
    body = await created.json()
    assert (body["name"], body["on"], body["source"], body["paused"]) == ("hello", "event.recorded", "api", False)
    listed = await (await hub_client.get("/v1/triggers", headers=admin)).json()
    assert [(t["name"], t["source"]) for t in listed["triggers"]] == [
        ("cart", "config"),
        ("hello", "api"),
        ("retention", "config"),
        ("survey", "config"),
        ("welcome", "config"),
    ]
    hub = hub_client.app[HUB]
    paused = await hub_client.post("/v1/triggers/hello/pause", headers=admin)
    assert (await paused.json())["paused"] is True
    await send(hub, ev("h1", "hello", "ann@example.com"))
    await asyncio.sleep(0.3)
    assert await runs_of(hub, "hello") == []  # no run while paused
    resumed = await hub_client.post("/v1/triggers/hello/resume", headers=admin)
    assert (await resumed.json())["paused"] is False
    await send(hub, ev("h2", "hello", "ann@example.com"))
    (run,) = await settled(hub, "hello")
    assert run.change["event_id"] == "h2" and run.status == "fired"
    one = await (await hub_client.get("/v1/triggers/hello", headers=admin)).json()
    assert one["results"]["runs"]["fired"] == 1
    assert one["results"]["treated"] == {"customers": 1, "converted": 0, "conversion_rate": 0.0}
    missing = await hub_client.post("/v1/triggers/nope/pause", headers=admin)
    assert missing.status == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "bad", "on": "event.recorded", "when": "change['type'] ==", "action": HELLO["action"]}, "when"),
        ({"name": "bad", "on": "event.recorded", "when": "nope > 1", "action": HELLO["action"]}, "when"),
        (
            {"name": "bad", "on": "event.recorded", "action": {"kind": "message", "channel": "email",
                                                                 "template": "Hi $password"}},
            "action.template",
        ),
        ({"name": "bad", "on": "event.recorded", "action": {"kind": "offer", "code": "x", "touchpoint": "nope"}},
         "action.touchpoint"),
        ({"name": "bad", "on": "event.recorded", "steps": [{"wait": "1d"}]}, "steps"),
        ({"name": "bad", "on": "event.recorded", "steps": [{"check": "tier > 5"}, {"act": HELLO["action"]}]},
         "steps[0].check"),
        ({"name": "Bad Name", "on": "event.recorded", "action": HELLO["action"]}, "name"),
        ({"name": "bad", "on": "nothing", "action": HELLO["action"]}, "on"),
        ({"name": "bad", "on": "event.recorded", "delay": "soon", "action": HELLO["action"]}, "delay"),
        ({"name": "bad", "on": "event.recorded", "action": HELLO["action"], "holdout_percent": 95},
         "holdout_percent"),
    ],
)  # fmt: skip
async def test_a_broken_trigger_is_a_422_naming_the_field_and_writes_nothing(hub_client, make_key, body, field):
    admin = {"Authorization": f"Bearer {await make_key('admin')}"}
    answer = await hub_client.post("/v1/triggers", json=body, headers=admin)
    assert answer.status == 422, await answer.text()
    assert (await answer.json())["error"]["field"] == field
    listed = await (await hub_client.get("/v1/triggers", headers=admin)).json()
    assert "bad" not in [t["name"] for t in listed["triggers"]]


async def test_a_configured_trigger_is_changed_in_the_config_not_the_api(hub_client, make_key):
    admin = {"Authorization": f"Bearer {await make_key('admin')}"}
    answer = await hub_client.post("/v1/triggers", json={"name": "cart", **HELLO}, headers=admin)
    assert answer.status == 409 and (await answer.json())["error"]["field"] == "name"


@pytest.mark.parametrize(
    ("triggers", "named"),
    [
        ({"cart": {**CART, "when": "change['type'] =="}}, "[triggers.cart].when has a syntax error"),
        ({"cart": {**CART, "unless": "purchase", "delay": "half an hour"}}, "[triggers.cart].delay must be"),
        ({"cart": {**CART, "action": {"kind": "message", "channel": "email", "template": "${x"}}},
         "[triggers.cart].action.template is not a valid template"),
        ({"cart": {**CART, "steps": []}}, "[triggers.cart].action goes in a step"),
        ({"offer": {**RETENTION, "action": {"kind": "offer", "code": "x"}}},
         "[triggers.offer].action.touchpoint is required"),
        ({"cadence": 3}, "[triggers].cadence is not a setting of [triggers]"),
    ],
)  # fmt: skip
async def test_a_broken_configured_trigger_stops_the_hub_naming_the_key(database_url, triggers, named):
    with pytest.raises(ConfigError) as caught:
        async with opened(database_url, triggers, [Outbox()]):
            pass
    assert str(caught.value).startswith(named) and "\n" not in str(caught.value)


# ---- the page's examples -------------------------------------------------------------


def documented_examples() -> dict[str, Any]:
    page = (Path(__file__).resolve().parent.parent / "docs" / "triggers.md").read_text(encoding="utf-8")
    marker = "test_the_documented_examples_fire -->\n```toml\n"
    return tomllib.loads(page[page.index(marker) + len(marker) :].split("```", 1)[0])


async def test_the_documented_examples_fire(database_url, clock):
    """docs/triggers.md's four examples, as written, each on what it listens for."""
    raw = documented_examples()
    raw["triggers"] |= {"quiet_hours": "none", "poll_s": 0.02}
    outbox = Outbox()
    config = Config(database_url=database_url, public_url="http://hub.test", raw=raw)
    async with Hub.open(config, plugins=[outbox], autoload=True) as hub:
        params = {"r": 0.25, "alpha": 4.0, "a": 1.5, "b": 2.5}
        await hub.store.write(
            lambda conn: conn.execute(planning_models.insert().values(name="bgnbd", params=params, fitted_at=T0))
        )
        hub.planner.forget_models()
        # platinum: a customer whose purchases pass 5000
        (ann,) = await send(hub, ev("s1", "order.completed", "ann@example.com", revenue="6000", currency="USD"))
        # a cart left, by a customer who agreed to marketing email
        (bob,) = await send(hub, ev("b0", "page", "bob@example.com"))
        await grant_marketing(hub, bob.customer_id, "email")
        await send(hub, ev("b1", "cart", "bob@example.com"))
        # a technician's visit completed
        (cid,) = await send(hub, ev("v1", "service.request", "cid@example.com"))
        visit = {"fulfillment_id": "f1", "partner": "fieldco", "role": "field_service", "action": "schedule",
                 "status": "completed", "dialogue_id": cid.dialogue_id, "data": {}}  # fmt: skip
        await hub.store.write(lambda conn: emit(conn, NewChange("fulfillment.updated", cid.customer_id, visit)))
        # a customer drifting away, who agreed to marketing
        long_ago = T0 - timedelta(days=300)
        (dan,) = await send(
            hub, ev("d1", "order.completed", "dan@example.com", at=long_ago, revenue="50", currency="USD")
        )
        await grant_marketing(hub, dan.customer_id)
        await send(hub, ev("d2", "order.completed", "dan@example.com", at=long_ago + timedelta(days=1), revenue="50",
                           currency="USD"))  # fmt: skip
        await send(hub, ev("d3", "page", "dan@example.com"))
        (welcome,) = await settled(hub, "platinum_welcome")
        assert (welcome.status, welcome.customer_id) == ("fired", ann.customer_id)
        retention = await settled(hub, "retention")
        held = in_control("trigger:retention", dan.customer_id, 10)
        assert retention[0].status == ("held_out" if held else "fired")
        await until(lambda: _count(hub, "abandoned_cart", 1))
        await until(lambda: _count(hub, "visit_survey", 1))
        clock.advance(hours=2, minutes=1)
        (cart,) = await settled(hub, "abandoned_cart")
        (survey,) = await settled(hub, "visit_survey")
        assert (cart.status, cart.customer_id) == ("fired", bob.customer_id)
        assert (survey.status, survey.customer_id) == ("fired", cid.customer_id)
        assert sorted((m.trigger, m.channel) for m in outbox.sent) == [
            ("abandoned_cart", "email"),
            ("platinum_welcome", "email"),
            ("visit_survey", "sms"),
        ]


# ---- conditions --------------------------------------------------------------------------

SHORTCUT_RULES = [
    "lifetime_revenue >= 3",
    "3 <= purchases",
    "churn_risk > 0.6 and days_since_last_purchase < 30",
    "tier == 'gold'",
    "tier != 'gold'",
    "traits['vip'] == true",
    "traits['vip'] != false",
    "traits['n'] < 100",
    "change['type'] == 'cart' and lifetime_revenue >= 100",
    "change['tier'] == 'platinum' and purchases >= 2",
    "change['n'] == 1",
    "change['n'] != 1",
    "change['n'] >= 2.5",
    "change['type'] != 'cart'",
    "change['type'] == 'cart' and (traits['vip'] == true or lifetime_revenue >= 100)",
    "traits['n'] < 100 or tier == 'gold'",
    "lifetime_revenue >= 3 or purchases < 2 and change['n'] != 1",
    "(change['type'] == 'x' or traits['vip'] != false) and churn_risk > 0.5",
    "tier == 'gold' or traits['n'] >= 2 or change['tier'] == 'platinum'",
]
ANY = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 6000), st.floats(-1, 6000), st.sampled_from(["gold", "cart", "x"])
)
NUMBER = st.one_of(st.none(), st.integers(0, 6000), st.floats(0, 6000))


@settings(max_examples=300, deadline=None)
@given(
    text=st.sampled_from(SHORTCUT_RULES),
    numbers=st.fixed_dictionaries(
        {k: NUMBER for k in ("lifetime_revenue", "purchases", "churn_risk", "days_since_last_purchase")}
    ),
    tier=st.one_of(st.none(), st.sampled_from(["gold", "platinum", "x"])),
    traits=st.one_of(st.dictionaries(st.sampled_from(["vip", "n"]), ANY), st.none()),
    change=st.dictionaries(st.sampled_from(["type", "tier", "n"]), ANY),
)
def test_a_plain_condition_is_decided_as_the_rules_engine_decides_it(text, numbers, tier, traits, change):
    rule = compile_condition(text, "when")
    fast = shortcut(rule)
    assert fast is not None, text
    facts = {**numbers, "tier": tier, "traits": traits, "change": change}
    assert fast.matches(facts) == rule.matches(facts)


def test_a_condition_beyond_plain_comparisons_is_left_to_the_rules_engine():
    for text in ("tier == 'gold' or 'x' in touchpoints", "traits['city'] =~ 'Par.*'", "not traits['vip'] == true"):
        assert shortcut(compile_condition(text, "when")) is None, text
