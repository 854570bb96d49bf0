"""The change feed's edges: the positions a client may send, the change types a plugin may
use, and the fields each change type carries (``CORE_TYPES``, what plugins and docs/feed.md
rely on) against what the hub emits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from prm_core import hookimpl
from prm_core.config import Config
from prm_core.errors import InvalidInput
from prm_core.feed import CORE_TYPES, check_plugin_type, parse_position
from prm_core.feed.writing import topics
from prm_core.hub import Hub
from prm_core.model import FulfillmentRequest, FulfillmentResult, Identity
from prm_core.outbox import Claim, PlannedEvent, PlannedFulfillment
from prm_core.privacy.consents import write_consents
from prm_core.privacy.erasure import erase_customer
from prm_core.store.tables import utcnow

BIGINT_MAX = 2**63 - 1  # the position column's largest value


@pytest.mark.parametrize(
    ("raw", "value"),
    [("0", 0), ("42", 42), (str(BIGINT_MAX), BIGINT_MAX), ("0000000000000000042", 42)],
)
def test_a_position_is_up_to_19_ascii_digits_within_the_column(raw: str, value: int) -> None:
    assert parse_position(raw) == value


@pytest.mark.parametrize(
    "raw",
    [
        str(BIGINT_MAX + 1),  # 19 digits, past what the column holds
        "99999999999999999999",
        "00000000000000000042",  # 20 characters, however small
        "\uff14\uff12",  # fullwidth digits: digits to str.isdigit, not a position
        "\u00b2",
        "",
        "-1",
        "+1",
        " 1",
        "1.0",
    ],
)
def test_anything_else_is_refused_naming_the_field(raw: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_position(raw, "from")
    assert refused.value.field == "from" and "from must be a position from this feed" in str(refused.value)


def test_a_position_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_position(42)  # type: ignore[arg-type]
    assert refused.value.field == "after"


@pytest.mark.parametrize("name", ["loyalty.earned", "a.b", "shop_2.cart.abandoned", "a." + "b" * 62])
def test_a_plugin_type_is_dotted_lower_case_words_up_to_64_characters(name: str) -> None:
    assert check_plugin_type(name) == name


@pytest.mark.parametrize(
    "name", ["loyalty", "Loyalty.earned", "loyalty.", ".earned", "loyalty..earned", "2fa.sent", "a." + "b" * 63]
)
def test_other_plugin_types_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="must be dotted lower-case words"):
        check_plugin_type(name)


@pytest.mark.parametrize("name", sorted(CORE_TYPES))
def test_the_cores_types_are_not_a_plugins(name: str) -> None:
    with pytest.raises(ValueError, match="is the core's own"):
        check_plugin_type(name)


def ev(event_id: str, minute: int, **identities: str) -> dict[str, Any]:
    return {"id": event_id, "type": "page", "occurred_at": f"2026-11-23T08:{minute:02d}:00Z", "identities": identities}


async def send(hub: Hub, *bodies: dict[str, Any]) -> list[Any]:
    return await hub.record(hub.parse_events({"events": list(bodies)}, "web"))


def test_a_commit_tells_each_changes_type_an_events_type_and_an_offers_source_kind() -> None:
    """What a commit's changes are about, for the readers that wait for some of them only."""
    rows = [
        {"type": "event.recorded", "data": {"type": "page", "source": "x:y"}},
        {"type": "offer.made", "data": {"source": "trigger:cart", "type": "z"}},
        {"type": "offer.made", "data": {"source": "agent"}},
        {"type": "offer.made", "data": {}},
        {"type": "customer.created", "data": {"type": "page", "source": "trigger:cart"}},
    ]
    assert topics(rows) == {
        "event.recorded", "event:page", "offer.made", "offer.made:trigger", "offer.made:agent", "offer.made:",
        "customer.created",
    }  # fmt: skip
    assert topics([]) == frozenset()


async def test_each_change_carries_the_fields_its_type_lists(hub):
    (ann,) = await send(hub, ev("e1", 0, email="ann@example.com"))
    await send(hub, ev("e2", 1, phone="+14155550100"))
    (linking,) = await send(hub, ev("e3", 2, email="ann@example.com", phone="+14155550100"))
    (merge,) = await hub.merges(linking.customer_id)
    await hub.unmerge(merge.id)
    await hub.update_customer(ann.customer_id, {"traits": {"first_name": "Ann"}, "tier": "gold"})
    await hub.update_customer(ann.customer_id, {"kind": "group"})
    (cyd,) = await send(hub, ev("e4", 3, email="cyd@example.com"))
    await erase_customer(hub, cyd.customer_id)

    feed = [c.to_json() for c in (await hub.feed.read(None, 1000)).changes]
    seen = {c["type"] for c in feed}
    assert seen >= {
        "customer.created", "dialogue.opened", "event.recorded", "customers.merged",
        "customers.unmerged", "customer.updated", "customer.erased",
    }  # fmt: skip
    updated: set[str] = set()
    for change in feed:
        fields = set(change["data"])
        if change["customer_id"] == cyd.customer_id and change["type"] != "customer.erased":
            assert fields == set(), change  # scrubbed by the erasure
        elif change["type"] == "customer.updated":
            assert fields and fields <= set(CORE_TYPES["customer.updated"]), change  # only what changed
            updated |= fields
        else:
            assert fields == set(CORE_TYPES[change["type"]]), change
    assert updated >= {"kind", "traits", "tier", "tier_source"}  # each seen in some update


class Technicians:
    """A field-service partner that confirms every request with the technician's name."""

    __name__ = "technicians"

    @hookimpl
    def prm_fulfill(self, request: FulfillmentRequest) -> Any:
        return self.answer(request) if request.partner == "fieldservice" else None

    async def answer(self, request: FulfillmentRequest) -> FulfillmentResult:
        return FulfillmentResult(request.id, "fieldservice", "confirmed", {"technician": "T-9"})


async def test_sales_consents_closed_dialogues_offers_and_partner_work_carry_the_fields_their_types_list(
    database_url: str, frozen_clock: Any
) -> None:
    catalog = {"items": {"wm-300": {"title": "WM-300 washer", "price": "1299.00", "accessories": ["pedestal"]},
                         "pedestal": {"title": "Pedestal", "price": "199.00"}}}  # fmt: skip
    config = Config(
        database_url=database_url,
        public_url="http://hub.test",
        raw={"catalog": catalog, "touchpoints": {"web": {"budget_ms": 10_000}}},
    )
    async with Hub.open(config, plugins=[Technicians()], autoload=True) as hub:
        now = frozen_clock.now = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)

        def at(minutes: float) -> str:
            return (now - timedelta(minutes=minutes)).isoformat()

        ann = {"email": "ann@example.com"}
        call = {"identities": ann, "dialogue": "call-1"}
        (first, _) = await hub.record(
            hub.parse_events(
                {"events": [{"id": "c1", "type": "call.started", "occurred_at": at(30), **call},
                            {"id": "c2", "type": "dialogue.closed", "occurred_at": at(29), **call}]},
                "callcenter",
            )
        )  # fmt: skip
        customer_id = first.customer_id
        sale = {"id": "s1", "type": "order.completed", "occurred_at": at(20), "identities": ann,
                "data": {"revenue": "12.50", "currency": "USD"}}  # fmt: skip
        await send(hub, sale)
        decision = {"purpose": "marketing", "channel": "*", "granted": True, "source": "test"}
        await hub.store.write(lambda conn: write_consents(conn, customer_id, [decision], utcnow()))
        (looked,) = hub.parse_events(
            {"id": "r1", "type": "product.viewed", "occurred_at": at(10), "identities": ann,
             "data": {"product_id": "wm-300"}},
            "web",
        )  # fmt: skip
        answer = await hub.request(looked)
        (offer,) = [o for o in answer.delivery.offers if o.code == "accessory:pedestal"]
        accepted = {"id": "a1", "type": "offer.accepted", "identities": ann,
                    "data": {"offer_id": offer.data["offer_id"]}}  # fmt: skip
        frozen_clock.advance(minutes=1)  # the offer was made at `now`: it is answered after
        await send(hub, {**accepted, "occurred_at": at(-0.5)})
        request = FulfillmentRequest("req-1", "fieldservice", "book", customer_id, idempotency_key="k-1")
        planned = PlannedFulfillment(request, role="technician")
        booking = PlannedEvent(
            id="b1", type="service.requested", occurred_at=now + timedelta(seconds=40), touchpoint="web",
            identities=(Identity("email", "ann@example.com"),), planned=(planned,),
            claimed_until=now + timedelta(hours=1),
        )  # fmt: skip
        (booked,) = await hub.record([booking])
        await hub.outbox.attempt(Claim(planned.outbox_id, 1, request, "web", booked.dialogue_id, "technician"))

        feed = [c.to_json() for c in (await hub.feed.read(None, 1000)).changes]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for change in feed:
        assert change["customer_id"] == customer_id, change
        by_type.setdefault(change["type"], []).append(change["data"])
    for kind in ("dialogue.closed", "offer.made", "offer.responded", "fulfillment.updated"):
        assert by_type.get(kind), f"no {kind} in {sorted(by_type)}"
        for data in by_type[kind]:
            assert set(data) == set(CORE_TYPES[kind]), (kind, data)
    updated = by_type["customer.updated"]
    assert [set(data) for data in updated] == [{"value"}, {"consents"}]
    assert {"value", "consents"} <= set(CORE_TYPES["customer.updated"])
    (closed,) = by_type["dialogue.closed"]
    assert closed["dialogue_id"] == first.dialogue_id


async def test_retention_keeps_a_change_exactly_as_old_as_the_retention(hub, frozen_clock):
    frozen_clock.now = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)  # the events' morning
    await send(hub, ev("e1", 0, email="ann@example.com"))
    made = len((await hub.feed.read(None, 1000)).changes)
    frozen_clock.advance(days=hub.feed.retention_days)
    assert await hub.feed.prune_once() == 0
    assert len((await hub.feed.read(None, 1000)).changes) == made
    frozen_clock.advance(seconds=1)
    assert await hub.feed.prune_once() == made
    assert (await hub.feed.read(None, 1000)).changes == []
    assert await hub.feed.prune_once() == 0  # nothing left to prune


async def test_changes_of_a_step_rolled_back_to_its_savepoint_are_not_in_the_feed(hub, monkeypatch):
    # planning runs in a savepoint of the recording transaction: when it fails after adding a
    # buyer's figures (a customer.updated change), the figures and their change both go, and
    # the events with their own changes stay
    from prm_core.planning import Planner

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug in planning")

    monkeypatch.setattr(Planner, "_add_days", broken)
    sale = {
        "id": "sale-1",
        "type": "order.completed",
        "occurred_at": "2026-11-23T08:00:00Z",
        "identities": {"email": "ho@example.com"},
        "data": {"revenue": "90", "currency": "USD"},
    }
    (recorded,) = await send(hub, sale)
    feed = [c.to_json() for c in (await hub.feed.read(None, 1000)).changes]
    assert [c["type"] for c in feed] == ["customer.created", "dialogue.opened", "event.recorded"]
    assert feed[-1]["data"]["event_id"] == recorded.event.id
    monkeypatch.undo()
    await send(hub, {**sale, "id": "sale-2"})  # the same, planning working: its change is there
    feed = [c.to_json() for c in (await hub.feed.read(None, 1000)).changes]
    assert [c["data"] for c in feed if c["type"] == "customer.updated" and "value" in c["data"]]


async def test_a_write_cancelled_mid_statement_ends_cancelled(database_url: str) -> None:
    """A task cancelled while its write transaction waits on the database (a hub stopping)
    ends cancelled: forgetting the changes it emitted must not raise on the connection the
    cancellation left invalid, which would hide the cancellation and keep the task looping."""
    import asyncio

    import sqlalchemy as sa

    from prm_core.feed.changes import NewChange
    from prm_core.feed.writing import emit

    async with Hub.open(Config(database_url=database_url)) as hub:
        pg = hub.store.writer.dialect.name == "postgresql"
        slow = (
            "SELECT pg_sleep(5)"
            if pg
            else "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000000) "
            "SELECT count(*) FROM n"
        )

        def write(conn: Any) -> None:
            emit(conn, NewChange("customer.updated", "cus_x", {"traits": {}}))
            conn.execute(sa.text(slow))

        task = asyncio.ensure_future(hub.store.write(write))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        page = await hub.feed.read(None, 100, {"customer.updated"})
        assert [c.customer_id for c in page.changes] == []  # nothing of the cancelled write
