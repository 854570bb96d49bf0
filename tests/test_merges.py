"""Merging customers when an event links them, undoing merges, groups, and shared identities."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from prm_core import hookimpl
from prm_core.clock import FrozenClock
from prm_core.errors import InvalidInput, NotFound
from prm_core.hub import Hub
from prm_core.merging import merge_customers
from prm_core.model import Identity, IdentityNamespace
from prm_core.store.tables import (
    customers,
    dialogues,
    events,
    identities,
    memberships,
    merges,
    metrics,
    shared_links,
    utcnow,
)

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


class KioskPlugin:
    """A shared namespace: one kiosk is used by many customers."""

    @hookimpl
    def prm_identity_namespaces(self, config: Any) -> list[IdentityNamespace]:
        return [IdentityNamespace("kiosk_device", lambda v, region: v.strip(), shared=True)]


@pytest.fixture
def hub_plugins() -> list[Any]:
    return [KioskPlugin()]


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def event(event_id: str, minutes: float, type: str = "page", **extra: Any) -> dict[str, Any]:
    idents = extra.pop("identities", {})
    return {"id": event_id, "type": type, "occurred_at": at(minutes), "identities": idents, **extra}


async def send(hub: Hub, touchpoint: str, *bodies: dict[str, Any]) -> list[Any]:
    return await hub.record(hub.parse_events({"events": list(bodies)}, touchpoint))


async def rows(hub: Hub, query: Any) -> list[Any]:
    return await hub.store.read(lambda conn: list(conn.execute(query)))


async def full_view(hub: Hub, ref: str) -> dict[str, Any]:
    """Everything the API shows about a customer: one page holds the whole timeline here."""
    view = await hub.view(ref, limit=200)
    assert view.next_cursor is None
    return view.to_json()


async def state_of(hub: Hub, cid: str) -> dict[str, Any]:
    """The rows that belong to ``cid``, as sets, beyond what the view shows."""
    e, d, i, m = events.c, dialogues.c, identities.c, memberships.c
    return {
        "customer": [
            tuple(r)
            for r in await rows(
                hub,
                sa.select(customers.c.kind, customers.c.merged_into, customers.c.tier, customers.c.tier_source).where(
                    customers.c.id == cid
                ),
            )
        ],
        "identities": {
            (r.namespace, r.value) for r in await rows(hub, sa.select(i.namespace, i.value).where(i.customer_id == cid))
        },
        "events": {
            (r.touchpoint, r.event_id, r.dialogue_id)
            for r in await rows(hub, sa.select(e.touchpoint, e.event_id, e.dialogue_id).where(e.customer_id == cid))
        },
        "dialogues": {tuple(r) for r in await rows(hub, sa.select(dialogues).where(d.customer_id == cid))},
        "groups": {
            (r.group_id, r.role) for r in await rows(hub, sa.select(m.group_id, m.role).where(m.member_id == cid))
        },
        "members": {
            (r.member_id, r.role) for r in await rows(hub, sa.select(m.member_id, m.role).where(m.group_id == cid))
        },
        "metrics": [tuple(r) for r in await rows(hub, sa.select(metrics).where(metrics.c.customer_id == cid))],
    }


async def assert_nothing_points_at(hub: Hub, cid: str) -> None:
    assert await rows(hub, sa.select(identities).where(identities.c.customer_id == cid)) == []
    assert await rows(hub, sa.select(events).where(events.c.customer_id == cid)) == []
    assert await rows(hub, sa.select(dialogues).where(dialogues.c.customer_id == cid)) == []
    assert await rows(hub, sa.select(metrics).where(metrics.c.customer_id == cid)) == []
    m = memberships.c
    assert await rows(hub, sa.select(memberships).where(sa.or_(m.member_id == cid, m.group_id == cid))) == []


async def add_to(hub: Hub, ref: str, group: str, role: str | None = None) -> Any:
    item: Any = {"group": group, "role": role} if role else group
    return await hub.update_customer(ref, {"memberships": {"add": [item]}})


# ---- a linking event merges ---------------------------------------------------------------


async def two_customers(hub: Hub) -> dict[str, Any]:
    """Ann (the older: a web visit, a purchase) and what looks like someone else: a caller with a phone."""
    (w1,) = await send(hub, "web", event("w1", 0, identities={"email": "ann@example.com"}))
    await send(
        hub, "pos", event("p1", 5, "order.placed", identities={"email": "ann@example.com"}, data={"revenue": 10})
    )
    (c1,) = await send(
        hub,
        "callcenter",
        event("c1", 60, "service.request", identities={"phone": "(415) 555-0100"}, dialogue="call-1"),
    )
    await send(
        hub,
        "pos",
        event("p2", 70, "order.placed", identities={"phone": "4155550100", "user_id": "u-9"}, data={"revenue": "5.50"}),
        event("c2", 75, "call.ended", identities={"phone": "4155550100"}, data={"outcome": "booked"}),
    )
    ann, other = w1.customer_id, c1.customer_id
    assert ann != other
    await hub.update_customer(ann, {"traits": {"name": "Ann", "city": "Oslo"}})
    await hub.update_customer(other, {"traits": {"name": "A. Smith", "vip": True}, "tier": "gold"})
    shared = await hub.create_customer("group", {"name": "Book club"})
    household = await hub.create_customer("group", {"name": "Smith household"})
    org = await hub.create_customer("organization", {"name": "Acme"})
    await add_to(hub, ann, shared.id)
    # joined the later-created organization first, so creation order and id order differ
    await add_to(hub, other, org.id, role="buyer")
    await add_to(hub, other, household.id, role="parent")
    await add_to(hub, other, shared.id, role="host")
    return {"ann": ann, "other": other, "shared": shared.id, "household": household.id, "org": org.id}


async def test_a_linking_event_merges_two_customers_into_the_older_one(hub):
    c = await two_customers(hub)
    ann, other = c["ann"], c["other"]
    before_ann, before_other = await full_view(hub, ann), await full_view(hub, other)
    assert before_other["metrics"]["event_count"] == 3

    (cause,) = await send(
        hub,
        "pos",
        event(
            "p3",
            180,
            "order.placed",
            identities={"email": "ann@example.com", "phone": "415-555-0100"},
            data={"revenue": 7},
        ),
    )
    assert cause.customer_id == ann  # the older customer survives

    (merge,) = await hub.merges(ann)
    assert (merge.survivor_id, merge.merged_id) == (ann, other)
    assert (merge.cause_touchpoint, merge.cause_event_id) == ("pos", "p3")
    assert merge.undone_at is None
    assert "p3" in merge.reason
    assert await hub.merges(other) == [merge]  # the merged id redirects

    merged_view = await full_view(hub, other)
    assert merged_view["id"] == ann
    assert await hub.resolve(other) == ann
    assert merged_view == await full_view(hub, "phone:4155550100") == await full_view(hub, "user_id:u-9")
    assert {(i["namespace"], i["value"]) for i in merged_view["identities"]} == {
        ("email", "ann@example.com"),
        ("phone", "+14155550100"),
        ("user_id", "u-9"),
    }
    assert [t["event_id"] for t in merged_view["timeline"]] == ["p3", "c2", "p2", "c1", "p1", "w1"]
    assert {d["id"] for d in merged_view["dialogues"]} == (
        {d["id"] for d in before_ann["dialogues"]} | {d["id"] for d in before_other["dialogues"]} | {cause.dialogue_id}
    )
    m = merged_view["metrics"]
    assert m["event_count"] == 6 == before_ann["metrics"]["event_count"] + before_other["metrics"]["event_count"] + 1
    assert m["order_count"] == 3
    assert m["lifetime_revenue"] == "22.50"
    assert m["average_sale"] == "7.50"
    assert m["first_seen_at"] == "2026-11-23T08:00:00Z"
    assert m["last_seen_at"] == "2026-11-23T11:00:00Z"
    assert m["touchpoints"] == ["callcenter", "pos", "web"]
    # traits are combined, the survivor's win; the survivor had no tier, so it takes the other's
    assert merged_view["traits"] == {"name": "Ann", "city": "Oslo", "vip": True}
    assert (merged_view["tier"], merged_view["tier_source"]) == ("gold", "manual")
    # memberships move to the survivor, without doubling the group both were in
    groups = {(g["group_id"], g["role"]) for g in merged_view["memberships"]}
    assert groups == {(c["shared"], None), (c["org"], "buyer"), (c["household"], "parent")}
    household = await full_view(hub, c["household"])
    assert [x["id"] for x in household["members"]] == [ann]

    await assert_nothing_points_at(hub, other)
    (row,) = await rows(hub, sa.select(customers.c.merged_into).where(customers.c.id == other))
    assert row.merged_into == ann


async def test_unmerge_restores_both_customers_exactly(hub):
    c = await two_customers(hub)
    ann, other = c["ann"], c["other"]
    before = {cid: (await full_view(hub, cid), await state_of(hub, cid)) for cid in (ann, other)}
    before_groups = {g: await full_view(hub, c[g]) for g in ("shared", "household", "org")}

    (cause,) = await send(
        hub, "pos", event("p3", 180, "order.placed", identities={"email": "ann@example.com", "phone": "4155550100"})
    )
    (merge,) = await hub.merges(ann)

    undone = await hub.unmerge(merge.id)
    assert undone.id == merge.id
    assert undone.undone_at is not None
    assert (await hub.merges(other))[0].undone_at == undone.undone_at

    view_other, state_other = await full_view(hub, other), await state_of(hub, other)
    assert view_other == before[other][0]
    assert state_other == before[other][1]

    # the survivor is as it was, plus the event that caused the merge (it was recorded as the survivor's)
    view_ann, state_ann = await full_view(hub, ann), await state_of(hub, ann)
    old_view, old_state = before[ann]
    (cause_entry,) = [t for t in view_ann["timeline"] if t["event_id"] == "p3"]
    assert view_ann["timeline"] == [cause_entry, *old_view["timeline"]]
    assert cause_entry["dialogue"] == cause.dialogue_id
    (cause_dialogue,) = [d for d in view_ann["dialogues"] if d["id"] == cause.dialogue_id]
    assert view_ann["dialogues"] == [cause_dialogue, *old_view["dialogues"]]
    expected_metrics = {
        **old_view["metrics"],
        "event_count": old_view["metrics"]["event_count"] + 1,
        "last_seen_at": "2026-11-23T11:00:00Z",
    }
    assert view_ann["metrics"] == expected_metrics
    rest = {k: v for k, v in view_ann.items() if k not in ("timeline", "dialogues", "metrics")}
    assert rest == {k: v for k, v in old_view.items() if k not in ("timeline", "dialogues", "metrics")}
    assert state_ann["events"] == old_state["events"] | {("pos", "p3", cause.dialogue_id)}
    assert {k: v for k, v in state_ann.items() if k not in ("events", "dialogues", "metrics")} == {
        k: v for k, v in old_state.items() if k not in ("events", "dialogues", "metrics")
    }
    for group in ("shared", "household", "org"):
        after = await full_view(hub, c[group])
        assert after["members"] == before_groups[group]["members"], group
        assert after["id"] == before_groups[group]["id"]

    # the phone is the other customer's again
    (later,) = await send(hub, "ivr", event("i1", 200, identities={"phone": "4155550100"}))
    assert later.customer_id == other

    with pytest.raises(InvalidInput) as info:
        await hub.unmerge(merge.id)
    assert info.value.code == "already_undone"
    with pytest.raises(NotFound):
        await hub.unmerge("mrg_nope")


async def test_a_batch_that_creates_and_links_customers_merges_them_in_the_same_commit(hub):
    recorded = await send(
        hub,
        "web",
        event("w1", 0, identities={"email": "ann@example.com"}),
        event("w2", 1, identities={"phone": "4155550100"}),
        event("w3", 2, identities={"email": "ann@example.com", "phone": "4155550100"}),
        event("w4", 3, identities={"phone": "4155550100"}),
    )
    ann = recorded[0].customer_id
    # every result names the customer that exists after the commit, even those recorded before the merge
    assert {r.customer_id for r in recorded} == {ann}
    (merge,) = await hub.merges(ann)
    other = merge.merged_id
    assert other != ann
    assert (merge.survivor_id, merge.cause_touchpoint, merge.cause_event_id) == (ann, "web", "w3")
    # the events recorded as the other customer's before the merge remember it
    ingested = await rows(hub, sa.select(events.c.event_id, events.c.ingest_customer_id, events.c.customer_id))
    assert {(r.event_id, r.ingest_customer_id, r.customer_id) for r in ingested} == {
        ("w1", ann, ann),
        ("w2", other, ann),
        ("w3", ann, ann),
        ("w4", ann, ann),
    }
    view = await hub.view(other)
    assert view.customer.id == ann
    assert view.metrics["event_count"] == 4
    # the linking event joins the most recent open visit; the other one is left as it was
    ids = [r.dialogue_id for r in recorded]
    assert ids[0] != ids[1] == ids[2] == ids[3]
    assert {d.id for d in view.dialogues} == {ids[0], ids[1]}
    await assert_nothing_points_at(hub, other)
    live = await rows(hub, sa.select(customers.c.id).where(customers.c.merged_into.is_(None)))
    assert [r.id for r in live] == [ann]


async def test_one_event_linking_three_customers_merges_all_into_the_oldest(hub):
    (a,) = await send(hub, "web", event("w1", 0, identities={"email": "a@example.com"}))
    (b,) = await send(hub, "web", event("w2", 1, identities={"phone": "4155550100"}))
    (c,) = await send(hub, "web", event("w3", 2, identities={"user_id": "u-1"}))
    ids = {"email": "a@example.com", "phone": "4155550100", "user_id": "u-1"}
    (link,) = await send(hub, "pos", event("p1", 5, identities=ids, data={"revenue": 3}))
    assert link.customer_id == a.customer_id
    found = await hub.merges(a.customer_id)
    assert {(m.survivor_id, m.merged_id) for m in found} == {
        (a.customer_id, b.customer_id),
        (a.customer_id, c.customer_id),
    }
    for cid in (b.customer_id, c.customer_id):
        assert (await hub.view(cid)).customer.id == a.customer_id
        await assert_nothing_points_at(hub, cid)
    view = await hub.view(a.customer_id)
    assert view.metrics["event_count"] == 4
    assert view.metrics["lifetime_revenue"] == Decimal("3.00")
    assert len(view.identities) == 3


async def test_undoing_a_merge_gives_back_what_the_merged_customer_had_absorbed(hub):
    (x,) = await send(hub, "pos", event("p1", 0, identities={"loyalty_card": "L-1"}, data={"revenue": 1}))
    (a,) = await send(hub, "web", event("w1", 1, identities={"email": "a@example.com"}))
    (b,) = await send(hub, "web", event("w2", 2, identities={"phone": "4155550100"}))
    # b absorbs nothing yet; a newer customer is merged into b first... b is older than y
    (y,) = await send(hub, "pos", event("p2", 3, identities={"user_id": "u-1"}, data={"revenue": 2}))
    await send(hub, "pos", event("p3", 4, identities={"phone": "4155550100", "user_id": "u-1"}))
    (m_first,) = await hub.merges(y.customer_id)
    assert (m_first.survivor_id, m_first.merged_id) == (b.customer_id, y.customer_id)
    before_b = await full_view(hub, b.customer_id)
    before_a = await full_view(hub, a.customer_id)

    await send(hub, "pos", event("p4", 5, identities={"email": "a@example.com", "user_id": "u-1"}))
    m_second = next(m for m in await hub.merges(a.customer_id) if m.merged_id == b.customer_id)
    assert m_second.survivor_id == a.customer_id
    # redirects stay one hop long
    merged_into = dict(
        (r.id, r.merged_into) for r in await rows(hub, sa.select(customers.c.id, customers.c.merged_into))
    )
    assert merged_into[y.customer_id] == merged_into[b.customer_id] == a.customer_id
    assert (await hub.view(y.customer_id)).customer.id == a.customer_id

    await hub.unmerge(m_second.id)
    assert await full_view(hub, b.customer_id) == before_b
    assert (await hub.view(y.customer_id)).customer.id == b.customer_id
    after_a = await full_view(hub, a.customer_id)
    assert [t["event_id"] for t in after_a["timeline"]] == ["p4", *[t["event_id"] for t in before_a["timeline"]]]
    assert after_a["identities"] == before_a["identities"]
    assert x.customer_id not in {a.customer_id, b.customer_id}


async def test_a_merge_can_only_be_undone_while_the_customer_is_still_merged(hub):
    (a,) = await send(hub, "web", event("w1", 0, identities={"email": "a@example.com"}))
    (b,) = await send(hub, "web", event("w2", 1, identities={"phone": "4155550100"}))
    await send(hub, "pos", event("p1", 2, identities={"email": "a@example.com", "phone": "4155550100"}))
    (merge,) = await hub.merges(a.customer_id)
    await hub.unmerge(merge.id)
    with pytest.raises(InvalidInput) as info:
        await hub.unmerge(merge.id)
    assert info.value.code == "already_undone"
    # the customers stay apart until an event links them again
    (again,) = await send(hub, "pos", event("p2", 3, identities={"email": "a@example.com", "phone": "4155550100"}))
    assert again.customer_id == a.customer_id
    assert len(await hub.merges(b.customer_id)) == 2


# ---- groups --------------------------------------------------------------------------------


async def test_a_group_view_aggregates_its_members(hub):
    (ann,) = await send(hub, "web", event("w1", 0, identities={"email": "ann@example.com"}))
    bob, _ = await send(
        hub,
        "pos",
        event("p1", 10, "order.placed", identities={"email": "bob@example.com"}, data={"revenue": 20}),
        event("p2", 20, "order.placed", identities={"email": "bob@example.com"}, data={"revenue": 10}),
    )
    household = await hub.create_customer("group", {"name": "The Smiths"})
    org = await hub.create_customer("organization", {"name": "Acme"})
    assert (household.kind, org.kind) == ("group", "organization")

    view = await add_to(hub, "email:ann@example.com", household.id, role="parent")
    assert [(g["group_id"], g["role"], g["kind"], g["name"]) for g in view.memberships] == [
        (household.id, "parent", "group", "The Smiths")
    ]
    await add_to(hub, bob.customer_id, household.id)
    await add_to(hub, bob.customer_id, org.id, role="employee")
    await add_to(hub, bob.customer_id, org.id, role="employee")  # adding twice is harmless

    group = await hub.view(household.id)
    assert group.customer.kind == "group"
    assert [(m["id"], m["role"], m["kind"]) for m in group.members] == [
        (ann.customer_id, "parent", "person"),
        (bob.customer_id, None, "person"),
    ]
    assert [t["event_id"] for t in group.timeline] == ["p2", "p1", "w1"]
    assert len(group.dialogues) == 3
    assert group.metrics["event_count"] == 3
    assert group.metrics["order_count"] == 2
    assert group.metrics["lifetime_revenue"] == Decimal("30.00")
    assert group.metrics["average_sale"] == Decimal("15.00")
    assert group.metrics["touchpoints"] == ["pos", "web"]
    assert group.metrics["first_seen_at"] == T0
    assert group.identities == ()

    bob_view = await hub.view("email:bob@example.com")
    assert {(g["group_id"], g["name"], g["kind"]) for g in bob_view.memberships} == {
        (household.id, "The Smiths", "group"),
        (org.id, "Acme", "organization"),
    }
    assert bob_view.members == ()
    assert bob_view.metrics["event_count"] == 2  # a person's view is the person's own

    org_view = await hub.view(org.id)
    assert [m["id"] for m in org_view.members] == [bob.customer_id]
    assert org_view.metrics["event_count"] == 2

    await hub.update_customer(bob.customer_id, {"memberships": {"remove": [household.id]}})
    group = await hub.view(household.id)
    assert [m["id"] for m in group.members] == [ann.customer_id]
    assert group.metrics["event_count"] == 1


async def test_membership_rules(hub):
    (ann,) = await send(hub, "web", event("w1", 0, identities={"email": "ann@example.com"}))
    (bob,) = await send(hub, "web", event("w2", 0, identities={"email": "bob@example.com"}))
    group = await hub.create_customer("group")
    with pytest.raises(InvalidInput):
        await add_to(hub, ann.customer_id, bob.customer_id)  # a person has no members
    with pytest.raises(InvalidInput):
        await add_to(hub, group.id, group.id)
    with pytest.raises(InvalidInput, match="no group cus_nope"):  # the customer exists; the group does not
        await add_to(hub, ann.customer_id, "cus_nope")
    with pytest.raises(InvalidInput):
        await hub.create_customer("family")
    assert (await hub.view(group.id)).members == ()


async def test_an_event_never_glues_a_person_to_an_organization(hub):
    org = await hub.create_customer("organization", {"name": "Acme"})
    now = utcnow()

    def give_org_an_account(conn: Any) -> None:
        conn.execute(
            identities.insert().values(
                namespace="account_id", value="ACME-1", customer_id=org.id, shared=False, first_seen_at=now
            )
        )

    await hub.store.write(give_org_an_account)
    assert (await hub.view("account_id:ACME-1")).customer.id == org.id
    (ann,) = await send(hub, "web", event("w0", 0, identities={"email": "ann@example.com"}))
    (rec,) = await send(hub, "web", event("w1", 1, identities={"email": "ann@example.com", "account_id": "ACME-1"}))
    assert rec.customer_id == ann.customer_id != org.id
    assert await hub.merges(org.id) == []
    assert (await hub.view("account_id:ACME-1")).customer.id == org.id
    assert (await hub.view("email:ann@example.com")).customer.id == rec.customer_id
    # an event only the organization's identity names is the organization's
    (own,) = await send(hub, "web", event("w2", 2, identities={"account_id": "ACME-1"}))
    assert own.customer_id == org.id


# ---- shared identities -------------------------------------------------------------------


async def test_a_shared_namespace_links_without_merging(hub):
    (ann,) = await send(hub, "web", event("w1", 0, identities={"email": "ann@example.com", "kiosk_device": "K1"}))
    (bob,) = await send(hub, "web", event("w2", 1, identities={"email": "bob@example.com", "kiosk_device": " K1 "}))
    assert ann.customer_id != bob.customer_id
    assert await hub.merges(ann.customer_id) == [] == await hub.merges(bob.customer_id)
    # the shared value is no one's identity
    assert await rows(hub, sa.select(identities).where(identities.c.namespace == "kiosk_device")) == []
    with pytest.raises(NotFound):
        await hub.view("kiosk_device:K1")
    assert Identity("kiosk_device", "K1") not in (await hub.view(ann.customer_id)).identities
    # an event with only the shared identity goes to whoever used it last
    (anon,) = await send(hub, "pos", event("p1", 5, identities={"kiosk_device": "K1"}))
    assert anon.customer_id == bob.customer_id
    (later,) = await send(hub, "web", event("w3", 10, identities={"email": "ann@example.com", "kiosk_device": "K1"}))
    assert later.customer_id == ann.customer_id
    (anon2,) = await send(hub, "pos", event("p2", 11, identities={"kiosk_device": "K1"}))
    assert anon2.customer_id == ann.customer_id
    live = await rows(hub, sa.select(customers.c.id).where(customers.c.merged_into.is_(None)))
    assert len(live) == 2


async def test_a_value_shared_before_anyone_owned_it_links_without_merging(hub):
    await hub.set_shared("phone:(415) 555-0100", True)
    (ann,) = await send(
        hub, "callcenter", event("c1", 0, identities={"email": "ann@example.com", "phone": "4155550100"})
    )
    (bob,) = await send(
        hub, "callcenter", event("c2", 1, identities={"email": "bob@example.com", "phone": "4155550100"})
    )
    assert ann.customer_id != bob.customer_id
    assert await hub.merges(ann.customer_id) == []
    assert Identity("phone", "+14155550100") not in (await hub.view(ann.customer_id)).identities
    # another phone of ann's is hers alone and still links
    (c3,) = await send(
        hub, "callcenter", event("c3", 2, identities={"email": "ann@example.com", "phone": "4155550111"})
    )
    assert c3.customer_id == ann.customer_id
    assert (await hub.view("phone:4155550111")).customer.id == ann.customer_id
    # a call from the shared phone alone is for whoever used it last
    (c4,) = await send(hub, "callcenter", event("c4", 3, identities={"phone": "4155550100"}))
    assert c4.customer_id == bob.customer_id


async def test_an_owned_value_marked_shared_links_without_merging(hub):
    (ann,) = await send(
        hub, "callcenter", event("c1", 0, identities={"email": "ann@example.com", "phone": "4155550100"})
    )
    await hub.set_shared("phone:+14155550100", True)
    (bob,) = await send(
        hub, "callcenter", event("c2", 1, identities={"email": "bob@example.com", "phone": "4155550100"})
    )
    (carl,) = await send(hub, "callcenter", event("c3", 2, identities={"user_id": "carl", "phone": "4155550100"}))
    assert len({ann.customer_id, bob.customer_id, carl.customer_id}) == 3
    assert await hub.merges(ann.customer_id) == [] == await hub.merges(bob.customer_id)
    # it stays in its first owner's view; the others are linked to it
    assert Identity("phone", "+14155550100") in (await hub.view(ann.customer_id)).identities
    assert Identity("phone", "+14155550100") not in (await hub.view(bob.customer_id)).identities
    (again,) = await send(
        hub, "callcenter", event("c4", 3, identities={"email": "ann@example.com", "phone": "4155550100"})
    )
    assert again.customer_id == ann.customer_id
    live = await rows(hub, sa.select(customers.c.id).where(customers.c.merged_into.is_(None)))
    assert len(live) == 3


async def test_merges_of_a_customer_nobody_knows_is_not_found(hub):
    with pytest.raises(NotFound):
        await hub.merges("cus_nope")
    assert await rows(hub, sa.select(merges)) == []


async def test_a_shared_identity_last_used_by_a_merged_customer_leads_to_the_survivor(hub):
    (ann,) = await send(hub, "web", event("w1", 0, identities={"email": "ann@example.com"}))
    (kiosk,) = await send(hub, "pos", event("p1", 1, identities={"phone": "4155550100", "kiosk_device": "K1"}))
    assert kiosk.customer_id != ann.customer_id
    await send(hub, "pos", event("p2", 2, identities={"email": "ann@example.com", "phone": "4155550100"}))
    (merge,) = await hub.merges(ann.customer_id)
    assert merge.merged_id == kiosk.customer_id
    (anon,) = await send(hub, "pos", event("p3", 3, identities={"kiosk_device": "K1"}))
    assert anon.customer_id == ann.customer_id
    await assert_nothing_points_at(hub, kiosk.customer_id)
    # once undone, each keeps its own link: p3 was recorded as ann's, so the kiosk stays with her
    await hub.unmerge(merge.id)
    links = await rows(hub, sa.select(shared_links.c.customer_id).where(shared_links.c.value == "K1"))
    assert {r.customer_id for r in links} == {kiosk.customer_id, ann.customer_id}
    (anon2,) = await send(hub, "pos", event("p4", 4, identities={"kiosk_device": "K1"}))
    assert anon2.customer_id == ann.customer_id


async def test_a_dialogue_begun_on_a_shared_identity_can_link_its_user_later_in_the_batch(hub):
    (ann,) = await send(hub, "web", event("w1", 0, identities={"email": "ann@example.com", "kiosk_device": "K1"}))
    (bob,) = await send(hub, "web", event("w2", 1, identities={"email": "bob@example.com"}))
    # one call: first only the kiosk is known (so it is ann's, who used it last), then bob says who he is
    first, second = await send(
        hub,
        "callcenter",
        event("c1", 5, identities={"kiosk_device": "K1"}, dialogue="call-1"),
        event("c2", 6, identities={"email": "bob@example.com"}, dialogue="call-1"),
    )
    assert first.dialogue_id == second.dialogue_id
    assert first.customer_id == second.customer_id == ann.customer_id  # the older survives
    (merge,) = await hub.merges(bob.customer_id)
    assert (merge.survivor_id, merge.merged_id, merge.cause_event_id) == (ann.customer_id, bob.customer_id, "c2")


# ---- merging groups ----------------------------------------------------------------------


async def two_groups(hub: Hub) -> dict[str, str]:
    """A club (p1, p3; no events of its own) and a team (p2, p3; one sale of its own)."""
    people = {}
    for n in (1, 2, 3):
        (rec,) = await send(hub, "web", event(f"g-w{n}", n, identities={"email": f"p{n}@example.com"}))
        people[f"p{n}"] = rec.customer_id
    club = Identity("account_id", "CLUB-1")
    team = Identity("loyalty_card", "TEAM-1")
    club_id = await hub.join_group(people["p1"], club, kind="group", traits={"name": "Club"})
    await hub.join_group(people["p3"], club, kind="group")
    team_id = await hub.join_group(people["p2"], team, kind="group", traits={"name": "Team"})
    await hub.join_group(people["p3"], team, kind="group")
    (sale,) = await send(
        hub, "pos", event("g-p1", 5, "order.placed", identities={"loyalty_card": "TEAM-1"}, data={"revenue": 10})
    )
    assert sale.customer_id == team_id  # an event naming only the team's identity is the team's
    return {**people, "club": club_id, "team": team_id}


async def test_merging_two_groups_keeps_the_members_of_both(hub):
    g = await two_groups(hub)
    before = {cid: await state_of(hub, g[cid]) for cid in ("club", "team")}
    assert before["team"]["members"] == {(g["p2"], None), (g["p3"], None)}
    m = memberships.c
    team_members = sa.select(m.member_id, m.role, m.created_at).where(m.group_id == g["team"]).order_by(m.member_id)
    members_before = await rows(hub, team_members)

    (linking,) = await send(hub, "pos", event("g-p2", 6, identities={"account_id": "CLUB-1", "loyalty_card": "TEAM-1"}))
    assert linking.customer_id == g["club"]  # the older group survives
    (merge,) = await hub.merges(g["club"])
    assert (merge.survivor_id, merge.merged_id) == (g["club"], g["team"])
    club = await state_of(hub, g["club"])
    assert club["members"] == {(g["p1"], None), (g["p2"], None), (g["p3"], None)}
    assert club["identities"] == {("account_id", "CLUB-1"), ("loyalty_card", "TEAM-1")}
    (metrics_row,) = await rows(hub, sa.select(metrics).where(metrics.c.customer_id == g["club"]))
    assert (metrics_row.event_count, metrics_row.order_count, metrics_row.lifetime_revenue) == (2, 1, Decimal(10))
    for person in ("p2", "p3"):
        groups = {gr["group_id"] for gr in (await full_view(hub, g[person]))["memberships"]}
        assert groups == {g["club"]}, person
    await assert_nothing_points_at(hub, g["team"])

    await hub.unmerge(merge.id)
    assert await state_of(hub, g["team"]) == before["team"]
    assert await rows(hub, team_members) == members_before  # as they were, joining times included
    after = await state_of(hub, g["club"])
    assert {k: after[k] for k in ("members", "groups", "identities")} == {
        k: before["club"][k] for k in ("members", "groups", "identities")
    }


async def test_undoing_a_merge_recorded_before_membership_times_were_kept(hub):
    g = await two_groups(hub)
    await send(hub, "pos", event("g-p2", 6, identities={"account_id": "CLUB-1", "loyalty_card": "TEAM-1"}))
    (merge,) = await hub.merges(g["club"])

    def as_an_old_record(conn: Any) -> None:
        moved = conn.execute(sa.select(merges.c.moved).where(merges.c.id == merge.id)).scalar_one()
        mem = moved["memberships"]
        old = {**mem, "as_member": [e[:2] for e in mem["as_member"]], "as_group": [e[:2] for e in mem["as_group"]]}
        conn.execute(merges.update().where(merges.c.id == merge.id).values(moved={**moved, "memberships": old}))

    await hub.store.write(as_an_old_record)
    with FrozenClock(utcnow() + timedelta(days=1)) as clock:
        await hub.unmerge(merge.id)
    m = memberships.c
    restored = await rows(hub, sa.select(m.member_id, m.created_at).where(m.group_id == g["team"]))
    assert {r.member_id for r in restored} == {g["p2"], g["p3"]}
    # without the membership's own time, the undo's time
    assert {r.created_at.replace(tzinfo=UTC) for r in restored} == {clock.now}
    assert (await state_of(hub, g["club"]))["members"] == {(g["p1"], None), (g["p3"], None)}


async def test_a_merge_adds_up_purchases_by_currency_category_and_return(hub):
    def sale(event_id: str, minutes: float, who: dict[str, str], revenue: str, currency: str, kind: str = "sale"):
        data = {"revenue": revenue, "currency": currency, "transaction_type": kind, "line_items": [{"category": "Tea"}]}
        return event(event_id, minutes, "order.placed", identities=who, data=data)

    ann, bob = {"email": "ann@example.com"}, {"phone": "4155550100"}
    await send(hub, "pos", sale("s1", 0, ann, "10.00", "EUR"), sale("s2", 1, ann, "-2.00", "EUR", "return"))
    await send(hub, "pos", sale("s3", 2, bob, "5.00", "USD"), sale("s4", 3, bob, "-1.00", "USD", "return"))
    await send(hub, "pos", sale("s5", 4, bob, "3.00", "EUR"))
    await send(hub, "web", event("w1", 5, identities={**ann, **bob}))
    m = (await full_view(hub, "email:ann@example.com"))["metrics"]
    assert (m["order_count"], m["return_count"]) == (3, 2)
    assert m["revenue_by_currency"] == {"EUR": "11.00", "USD": "4.00"}
    # euros and dollars with no rate ([money.rates]) are never added into one figure
    assert m["lifetime_revenue"] is None and m["mixed_currencies"] == ["EUR", "USD"]
    assert m["categories"] == {"Tea": 3}


async def test_the_survivors_tier_wins_over_the_merged_customers(hub):
    pairs = [("ann", "gold", "bob", "silver"), ("cat", "gold", "dan", None)]
    for n, (older, tier, newer, other_tier) in enumerate(pairs):
        (a,) = await send(hub, "web", event(f"o{n}", 0, identities={"email": f"{older}@example.com"}))
        (b,) = await send(hub, "web", event(f"n{n}", 1, identities={"user_id": newer}))
        await hub.update_customer(a.customer_id, {"tier": tier})
        if other_tier is not None:
            await hub.update_customer(b.customer_id, {"tier": other_tier})
        await send(hub, "web", event(f"l{n}", 2, identities={"email": f"{older}@example.com", "user_id": newer}))
        view = await full_view(hub, b.customer_id)
        assert view["id"] == a.customer_id
        assert (view["tier"], view["tier_source"]) == ("gold", "manual"), older


async def test_a_merge_without_a_cause_and_with_a_long_reason(hub):
    """A merge made by hand (no event caused it) into a customer without events of its own."""
    a = await hub.create_customer("person", {"name": "A"})
    (b,) = await send(hub, "web", event("w2", 1, identities={"email": "b@example.com"}))
    reason = "merged by hand: " + "x" * 600
    merge = await hub.store.write(
        lambda conn: merge_customers(conn, a.id, b.customer_id, reason=reason, cause=None, now=utcnow())
    )
    assert (merge.cause_touchpoint, merge.cause_event_id) == (None, None)
    (stored,) = await hub.merges(b.customer_id)
    assert (stored.id, stored.cause_touchpoint, stored.cause_event_id) == (merge.id, None, None)
    assert stored.reason == reason[:500]
    merged = await hub.view("email:b@example.com")
    assert (merged.customer.id, merged.metrics["event_count"]) == (a.id, 1)

    await hub.unmerge(merge.id)
    assert (await hub.view(b.customer_id)).metrics["event_count"] == 1
    assert (await hub.view(a.id)).metrics["event_count"] == 0


async def test_a_merge_whose_customer_was_split_off_by_hand_cannot_be_undone(hub):
    (a,) = await send(hub, "web", event("w1", 0, identities={"email": "a@example.com"}))
    (b,) = await send(hub, "web", event("w2", 1, identities={"phone": "4155550100"}))
    await send(hub, "pos", event("p1", 2, identities={"email": "a@example.com", "phone": "4155550100"}))
    (merge,) = await hub.merges(a.customer_id)
    split = customers.update().where(customers.c.id == b.customer_id).values(merged_into=None)
    await hub.store.write(lambda conn: conn.execute(split))
    with pytest.raises(InvalidInput) as info:
        await hub.unmerge(merge.id)
    assert info.value.code == "not_merged"
    assert (await hub.merges(a.customer_id))[0].undone_at is None


async def test_undoing_an_earlier_merge_then_a_later_one_leaves_each_customer_its_own(hub):
    """B merged into A, A into C (B's redirect now points at C); B's merge undone first, then A's.
    D, merged into C on its own, stays C's throughout."""
    (c,) = await send(hub, "web", event("c1", 0, identities={"user_id": "c"}))
    (d,) = await send(hub, "web", event("d1", 0.5, identities={"loyalty_card": "D-1"}))
    await send(hub, "pos", event("l0", 0.6, identities={"user_id": "c", "loyalty_card": "D-1"}))
    (a,) = await send(hub, "web", event("a1", 1, identities={"email": "a@example.com"}))
    (b,) = await send(hub, "callcenter", event("b1", 2, identities={"phone": "4155550100"}, dialogue="call-b"))
    before_b = await state_of(hub, b.customer_id)
    await send(hub, "pos", event("l1", 3, identities={"email": "a@example.com", "phone": "4155550100"}))
    await send(hub, "pos", event("l2", 4, identities={"user_id": "c", "email": "a@example.com"}))
    made = {r.merged_id: r for r in await rows(hub, sa.select(merges))}
    m1, m2 = made[b.customer_id], made[a.customer_id]
    assert (m1.survivor_id, m2.survivor_id) == (a.customer_id, c.customer_id)

    await hub.unmerge(m1.id)
    assert await state_of(hub, b.customer_id) == before_b
    await hub.unmerge(m2.id)
    assert await state_of(hub, b.customer_id) == before_b  # B stays itself: its merge was undone
    assert (await hub.view(b.customer_id)).customer.id == b.customer_id
    assert (await hub.view("email:a@example.com")).customer.id == a.customer_id
    assert (await hub.view(d.customer_id)).customer.id == c.customer_id
