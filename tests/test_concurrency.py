"""Concurrent ingest through several hubs on one database never splits or duplicates anything.

Each ``Hub.open`` has its own writer and group commit, so on PostgreSQL several open hubs
are several hub processes whose transactions really race (the advisory locks in
:mod:`prm_core.recording` are what keeps them consistent). On SQLite they take turns on
the database's single write lock; the test checks the same invariants there.
"""

from __future__ import annotations

import asyncio
import random
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from prm_core.hub import Hub
from prm_core.model import RecordedEvent
from prm_core.store.tables import customers, dialogues, events, identities, metrics

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
HUBS = 3


def person(n: int) -> dict[str, str]:
    return {"email": f"person{n}@example.com", "phone": f"+1415555{n:04d}", "user_id": f"u-{n}"}


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


class Hubs:
    """Several hubs on one database, as several processes would be."""

    def __init__(self, hubs: list[Hub]) -> None:
        self.hubs = hubs

    async def send(self, n: int, touchpoint: str, body: dict[str, Any]) -> RecordedEvent:
        hub = self.hubs[n % len(self.hubs)]
        (recorded,) = await hub.record(hub.parse_events(body, touchpoint))
        return recorded

    async def read(self, query: Any) -> list[Any]:
        return await self.hubs[0].store.read(lambda conn: list(conn.execute(query)))


async def open_hubs(stack: AsyncExitStack, config: Any) -> Hubs:
    # opened one after another: the first migrates, the others find the schema in place
    return Hubs([await stack.enter_async_context(Hub.open(config, autoload=True)) for _ in range(HUBS)])


def linking_events(people: range, rng: random.Random, prefix: str) -> list[tuple[int, str, dict[str, Any], int]]:
    """For each person: each identity alone (twice), then every pair of them, at random hubs.

    Returns ``(hub, touchpoint, body, person)`` in a random order.
    """
    out = []
    for p in people:
        ids = person(p)
        groups: list[tuple[str, ...]] = [(k,) for k in ids] * 2
        groups += [("email", "phone"), ("phone", "user_id"), ("email", "user_id")]
        for i, keys in enumerate(groups):
            body = {
                "id": f"{prefix}-{p}-{i}",
                "type": "order.placed" if i % 3 == 0 else "page",
                "occurred_at": at(p * 7 + i),
                "identities": {k: ids[k] for k in keys},
                "data": {"revenue": "1.25"} if i % 3 == 0 else {},
            }
            out.append((rng.randrange(HUBS), rng.choice(["pos", "web", "callcenter"]), body, p))
    rng.shuffle(out)
    return out


async def check_consistency(hubs: Hubs, owner: dict[str, int], people: int) -> None:
    """One live customer per person, everything pointing at live customers, metrics that add up."""
    live = {r.id for r in await hubs.read(sa.select(customers.c.id).where(customers.c.merged_into.is_(None)))}
    whose = {(ns, v): n for n in range(people) for ns, v in [*person(n).items(), ("loyalty_card", f"L{n}")]}
    by_person: dict[int, set[str]] = {}
    for r in await hubs.read(sa.select(identities.c.namespace, identities.c.value, identities.c.customer_id)):
        by_person.setdefault(whose[(r.namespace, r.value)], set()).add(r.customer_id)
    assert len(by_person) == people
    for n, cids in by_person.items():
        assert len(cids) == 1, f"person {n} is split over {sorted(cids)}"
    cid_of = {n: next(iter(cids)) for n, cids in by_person.items()}
    assert len(set(cid_of.values())) == people, "two people share a customer"
    assert set(cid_of.values()) == live, "a live customer without identities, or a merged one with some"

    rows = await hubs.read(sa.select(events.c.event_id, events.c.customer_id, events.c.data, events.c.touchpoint))
    assert sorted(r.event_id for r in rows) == sorted(owner), "events lost or stored twice"
    counts: dict[str, int] = {}
    revenue: dict[str, Decimal] = {}
    for r in rows:
        assert r.customer_id == cid_of[owner[r.event_id]], f"event {r.event_id} points at a merged-away customer"
        counts[r.customer_id] = counts.get(r.customer_id, 0) + 1
        revenue[r.customer_id] = revenue.get(r.customer_id, Decimal(0)) + Decimal(r.data.get("revenue", 0))
    for r in await hubs.read(sa.select(dialogues.c.id, dialogues.c.customer_id)):
        assert r.customer_id in live, f"dialogue {r.id} points at a merged-away customer"
    stored = {r.customer_id: r for r in await hubs.read(sa.select(metrics))}
    assert set(stored) == live
    for cid, row in stored.items():
        assert row.event_count == counts[cid], "metrics lost an update"
        assert Decimal(row.lifetime_revenue) == revenue[cid]


async def test_concurrent_linking_through_several_hubs_leaves_one_customer_per_person(hub_config):
    async with AsyncExitStack() as stack:
        hubs = await open_hubs(stack, hub_config)
        owner: dict[str, int] = {}
        rng = random.Random(1234)
        people = 0
        for round_ in range(4):
            batch = range(people, people + 10)
            people += 10
            planned = linking_events(batch, rng, f"r{round_}")
            owner.update({body["id"]: p for _, _, body, p in planned})
            results = await asyncio.gather(*(hubs.send(h, tp, body) for h, tp, body, _ in planned))
            assert not any(r.duplicate for r in results)
            # every answer names a customer that resolves to the person's one customer
            resolved = await asyncio.gather(*(hubs.hubs[0].resolve(r.customer_id) for r in results))
            per_person: dict[int, set[str]] = {}
            for (_, _, _, p), cid in zip(planned, resolved, strict=True):
                per_person.setdefault(p, set()).add(cid)
            assert all(len(c) == 1 for c in per_person.values())
        await check_consistency(hubs, owner, people)
        # and every person is found, by each identity, at every hub
        for n in range(0, people, 7):
            seen = {(await h.view(f"{ns}:{v}")).customer.id for h in hubs.hubs for ns, v in person(n).items()}
            assert len(seen) == 1


async def test_identities_arriving_in_pairs_at_different_hubs_converge(hub_config):
    """The chain a-b at one hub, b-c at another, c-d at a third, all at once: one customer."""
    async with AsyncExitStack() as stack:
        hubs = await open_hubs(stack, hub_config)
        chain = [f"link{i}@example.com" for i in range(12)]
        bodies = [
            {
                "id": f"chain-{i}",
                "type": "page",
                "occurred_at": at(i),
                # account_id: a namespace without a limit, so the whole chain is one customer
                "identities": {"email": chain[i], "account_id": f"chain-user-{i + 1}"},
            }
            for i in range(len(chain) - 1)
        ] + [
            {
                "id": f"chain-u-{i}",
                "type": "page",
                "occurred_at": at(100 + i),
                "identities": {"account_id": f"chain-user-{i}", "email": chain[i]},
            }
            for i in range(1, len(chain))
        ]
        random.Random(7).shuffle(bodies)
        await asyncio.gather(*(hubs.send(i, "pos", b) for i, b in enumerate(bodies)))
        rows = await hubs.read(sa.select(identities.c.customer_id).distinct())
        assert len(rows) == 1
        (cid,) = (r.customer_id for r in rows)
        live = await hubs.read(sa.select(customers.c.id).where(customers.c.merged_into.is_(None)))
        assert [r.id for r in live] == [cid]
        (m,) = await hubs.read(sa.select(metrics))
        assert (m.customer_id, m.event_count) == (cid, len(bodies))
        assert {r.customer_id for r in await hubs.read(sa.select(events.c.customer_id))} == {cid}


async def test_the_same_event_sent_concurrently_to_every_hub_is_stored_once(hub_config):
    async with AsyncExitStack() as stack:
        hubs = await open_hubs(stack, hub_config)
        bodies = [
            {
                "id": f"dup-{i}",
                "type": "order.placed",
                "occurred_at": at(i),
                "identities": {"email": f"dup{i % 3}@example.com"},
                "data": {"revenue": 2},
            }
            for i in range(6)
        ]
        sends = [(h, b) for b in bodies for h in range(HUBS) for _ in range(3)]
        random.Random(3).shuffle(sends)
        results = await asyncio.gather(*(hubs.send(h, "pos", b) for h, b in sends))
        for body in bodies:
            mine = [r for (_, b), r in zip(sends, results, strict=True) if b is body]
            assert sum(not r.duplicate for r in mine) == 1, body["id"]
            assert len({r.dialogue_id for r in mine}) == 1
            assert len({r.customer_id for r in mine}) == 1
        rows = await hubs.read(sa.select(events.c.event_id))
        assert sorted(r.event_id for r in rows) == sorted(b["id"] for b in bodies)
        stored = await hubs.read(sa.select(metrics.c.event_count, metrics.c.order_count))
        assert sorted((r.event_count, r.order_count) for r in stored) == [(2, 2)] * 3
        assert len(await hubs.read(sa.select(dialogues))) == 6
        assert len(await hubs.read(sa.select(customers))) == 3


async def test_a_person_linked_while_their_identities_are_in_use_at_other_hubs(hub_config):
    """A merge moves identities the linking event does not name, while other hubs record with them.

    Each hub's batch names identities no other hub's batch names, so nothing but the
    customers they resolve to makes them wait for each other.
    """
    async with AsyncExitStack() as stack:
        hubs = await open_hubs(stack, hub_config)
        people = range(20)
        owner: dict[str, int] = {}
        # first: each person looks like two customers, {email} and {phone, user_id, loyalty_card}
        for p in people:
            ids = person(p)
            for i, idents in enumerate(
                [{"email": ids["email"]}, {"phone": ids["phone"], "user_id": ids["user_id"], "loyalty_card": f"L{p}"}]
            ):
                body = {"id": f"s-{p}-{i}", "type": "page", "occurred_at": at(p * 2 + i), "identities": idents}
                owner[body["id"]] = p
                await hubs.send(0, "pos", body)
        # then, all at once: email and phone linked at hub 0, the user id used alone at hub 1 and
        # the loyalty card alone at hub 2
        planned = []
        for p in people:
            ids = person(p)
            planned.append((0, {"email": ids["email"], "phone": ids["phone"]}, p))
            planned += [(1, {"user_id": ids["user_id"]}, p)] * 3
            planned += [(2, {"loyalty_card": f"L{p}"}, p)] * 3
        random.Random(11).shuffle(planned)
        sends = []
        for i, (h, idents, p) in enumerate(planned):
            body = {"id": f"c-{i}", "type": "page", "occurred_at": at(1000 + i), "identities": idents}
            owner[body["id"]] = p
            sends.append(hubs.send(h, "pos", body))
        await asyncio.gather(*sends)
        await check_consistency(hubs, owner, len(people))


async def test_one_customer_busy_at_every_hub_keeps_exact_metrics_and_one_web_visit(hub_config):
    """The same customer through a different identity at each hub, at once."""
    async with AsyncExitStack() as stack:
        hubs = await open_hubs(stack, hub_config)
        people = range(5)
        owner: dict[str, int] = {}
        for p in people:
            body = {"id": f"s-{p}", "type": "page", "occurred_at": at(p), "identities": person(p)}
            owner[body["id"]] = p
            await hubs.send(0, "pos", body)
        planned = []
        for p in people:
            for h, ns in enumerate(["email", "phone", "user_id"]):
                planned += [(h, ns, p)] * 6
        random.Random(5).shuffle(planned)
        sends = []
        for i, (h, ns, p) in enumerate(planned):
            body = {
                "id": f"w-{i}",
                "type": "order.placed",
                "occurred_at": at(600 + i),
                "identities": {ns: person(p)[ns]},
                "data": {"revenue": "0.75"},
            }
            owner[body["id"]] = p
            sends.append(hubs.send(h, "web", body))
        await asyncio.gather(*sends)
        await check_consistency(hubs, owner, len(people))
        # all within a few minutes: one visit per person, not one per hub
        for p in people:
            view = await hubs.hubs[0].view(f"email:{person(p)['email']}")
            web = [d for d in view.dialogues if d.touchpoint == "web"]
            assert len(web) == 1, f"person {p} has {len(web)} web visits"


async def test_unmerges_racing_ingest_keep_metrics_exact(hub_config):
    """Undo merges at one hub while the customers involved are recorded for at the others."""
    async with AsyncExitStack() as stack:
        hubs = await open_hubs(stack, hub_config)
        people = range(8)
        for p in people:
            ids = person(p)
            # two customers, then an event that links them
            for name, idents in [
                ("a", {"email": ids["email"]}),
                ("b", {"user_id": ids["user_id"]}),
                ("l", {"email": ids["email"], "user_id": ids["user_id"]}),
            ]:
                await hubs.send(
                    0, "pos", {"id": f"{name}-{p}", "type": "page", "occurred_at": at(p), "identities": idents}
                )
        merge_ids = [(await hubs.hubs[0].merges(f"email:{person(p)['email']}"))[0].id for p in people]
        sends = []
        for p in people:
            ids = person(p)
            for k in range(6):
                ns = "email" if k % 2 else "user_id"
                body = {
                    "id": f"r-{p}-{k}",
                    "type": "order.placed",
                    "occurred_at": at(100 + k),
                    "identities": {ns: ids[ns]},
                    "data": {"revenue": 1},
                }
                sends.append(hubs.send(1 + k % 2, "pos", body))
        undo = [hubs.hubs[0].unmerge(m) for m in merge_ids]
        await asyncio.gather(*undo[:4], *sends, *undo[4:])

        live = {r.id for r in await hubs.read(sa.select(customers.c.id).where(customers.c.merged_into.is_(None)))}
        assert len(live) == 2 * len(people)
        rows = await hubs.read(sa.select(events.c.customer_id))
        counts: dict[str, int] = {}
        for r in rows:
            assert r.customer_id in live
            counts[r.customer_id] = counts.get(r.customer_id, 0) + 1
        stored = {r.customer_id: r.event_count for r in await hubs.read(sa.select(metrics))}
        assert stored == counts, "metrics lost an update"
        for p in people:
            email = await hubs.hubs[1].resolve(f"email:{person(p)['email']}")
            user = await hubs.hubs[2].resolve(f"user_id:{person(p)['user_id']}")
            assert email != user
