"""Properties of identity resolution and merges, on a fresh SQLite database per example.

(a) Whatever order linking events arrive in, and however they are split into batches, the
    identities end up partitioned into customers the same way: the connected components
    of "seen in one event" (an explicit dialogue key links like an identity).
(b) Merging two customers and undoing the merge gives back what each had: which customer
    owns each identity, their events, dialogues, memberships, traits and metrics (the event
    that caused the merge stays, as recorded, with the survivor).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prm_core import hookimpl
from prm_core.config import Config
from prm_core.hub import Hub
from prm_core.model import Event, Identity, IdentityNamespace
from prm_core.store.tables import customers, dialogues, events, identities, memberships, metrics

T = TypeVar("T")
T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class KioskPlugin:
    @hookimpl
    def prm_identity_namespaces(self, config: Any) -> list[IdentityNamespace]:
        return [IdentityNamespace("kiosk_device", lambda v, region: v.strip(), shared=True)]


def with_hub(fn: Callable[[Hub], Awaitable[T]]) -> T:
    """Run ``fn`` against a hub on a database of its own, in an event loop of its own."""

    async def main(directory: str) -> T:
        # these properties are about linking itself: no namespace is limited (identity_rules)
        rules = {"user_id": {"limit": 0}}
        config = Config(database_url=f"sqlite:///{Path(directory) / 'prm.db'}", raw={"identity": {"rules": rules}})
        async with Hub.open(config, plugins=[KioskPlugin()], autoload=True) as hub:
            return await fn(hub)

    with tempfile.TemporaryDirectory() as directory:
        return asyncio.run(main(directory))


async def read(hub: Hub, query: Any) -> list[Any]:
    return await hub.store.read(lambda conn: list(conn.execute(query)))


# ---- (a) the partition does not depend on arrival order ---------------------------------

POOL = [
    Identity("email", "a@example.com"),
    Identity("email", "b@example.com"),
    Identity("phone", "+14155550100"),
    Identity("phone", "+14155550101"),
    Identity("user_id", "u-1"),
    Identity("user_id", "u-2"),
    Identity("loyalty_card", "L-1"),
    Identity("loyalty_card", "L-2"),
    Identity("anonymous_id", "anon-1"),
    Identity("anonymous_id", "anon-2"),
    Identity("account_id", "acc-1"),
    Identity("account_id", "acc-2"),
]
KIOSK = Identity("kiosk_device", "K1")

# an event: some identities of the pool, maybe the shared kiosk, maybe a call's dialogue key
linking_event = st.tuples(
    st.sets(st.sampled_from(POOL), min_size=1, max_size=2),
    st.booleans(),
    st.none() | st.sampled_from(["call-1", "call-2"]),
)


def expected_partition(planned: list[tuple[set[Identity], bool, str | None]]) -> set[frozenset[str]]:
    """Connected components of identities that appear together (dialogue keys join too)."""
    parent: dict[Any, Any] = {}

    def find(x: Any) -> Any:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for idents, _, key in planned:
        nodes = [*idents, *([("dialogue", key)] if key else [])]
        for node in nodes:
            find(node)
        for node in nodes[1:]:
            parent[find(node)] = find(nodes[0])
    groups: dict[Any, set[str]] = {}
    for node in list(parent):
        if isinstance(node, Identity):
            groups.setdefault(find(node), set()).add(str(node))
    return {frozenset(g) for g in groups.values()}


def to_events(planned: list[tuple[set[Identity], bool, str | None]]) -> list[Event]:
    out = []
    for i, (idents, kiosk, key) in enumerate(planned):
        out.append(
            Event(
                id=f"e{i}",
                type="order.placed" if i % 2 else "page",
                occurred_at=T0 + timedelta(minutes=i),
                touchpoint="callcenter" if key else "pos",
                identities=tuple(sorted([*idents, *([KIOSK] if kiosk else [])], key=str)),
                dialogue=key,
                data={"revenue": i} if i % 2 else {},
            )
        )
    return out


def split(items: list[Event], cuts: list[bool]) -> list[list[Event]]:
    batches: list[list[Event]] = [[]]
    for item, cut in zip(items, cuts, strict=False):
        if cut and batches[-1]:
            batches.append([])
        batches[-1].append(item)
    if len(items) > len(cuts):
        batches[-1].extend(items[len(cuts) :])
    return [b for b in batches if b]


def record_all(batches: list[list[Event]], concurrently: bool) -> tuple[set[frozenset[str]], dict[str, Any]]:
    async def run(hub: Hub) -> tuple[set[frozenset[str]], dict[str, Any]]:
        if concurrently:
            await asyncio.gather(*(hub.record(b) for b in batches))
        else:
            for b in batches:
                await hub.record(b)
        owned: dict[str, set[str]] = {}
        for r in await read(hub, sa.select(identities.c.namespace, identities.c.value, identities.c.customer_id)):
            owned.setdefault(r.customer_id, set()).add(f"{r.namespace}:{r.value}")
        live = {r.id for r in await read(hub, sa.select(customers.c.id).where(customers.c.merged_into.is_(None)))}
        rows = await read(hub, sa.select(events.c.event_id, events.c.customer_id))
        counts: dict[str, int] = {}
        for r in rows:
            counts[r.customer_id] = counts.get(r.customer_id, 0) + 1
        stored = {r.customer_id: r.event_count for r in await read(hub, sa.select(metrics))}
        facts = {
            "owners_live": set(owned) <= live,
            "events": sorted(r.event_id for r in rows),
            "events_on_live": all(r.customer_id in live for r in rows),
            "dialogues_on_live": all(
                r.customer_id in live for r in await read(hub, sa.select(dialogues.c.customer_id))
            ),
            "metrics_exact": stored == counts,
        }
        return {frozenset(v) for v in owned.values()}, facts

    return with_hub(run)


@PROPERTY
@given(
    planned=st.lists(linking_event, min_size=1, max_size=12),
    data=st.data(),
)
def test_the_partition_of_identities_does_not_depend_on_arrival_order(planned, data):
    evs = to_events(planned)
    expected = expected_partition(planned)
    first_order = data.draw(st.permutations(evs), label="first order")
    second_order = data.draw(st.permutations(evs), label="second order")
    first_cuts = data.draw(st.lists(st.booleans(), max_size=len(evs)), label="first cuts")
    second_cuts = data.draw(st.lists(st.booleans(), max_size=len(evs)), label="second cuts")
    concurrently = data.draw(st.booleans(), label="second run's batches concurrent")

    one, facts_one = record_all(split(first_order, first_cuts), concurrently=False)
    two, facts_two = record_all(split(second_order, second_cuts), concurrently=concurrently)
    assert one == two == expected
    for facts in (facts_one, facts_two):
        assert facts == {
            "owners_live": True,
            "events": sorted(e.id for e in evs),
            "events_on_live": True,
            "dialogues_on_live": True,
            "metrics_exact": True,
        }


# ---- (b) merge then unmerge ---------------------------------------------------------------

own_event = st.fixed_dictionaries(
    {
        "touchpoint": st.sampled_from(["web", "pos", "callcenter", "ivr"]),
        "minutes": st.integers(min_value=0, max_value=600),
        "revenue": st.none() | st.decimals(min_value=0, max_value=500, places=2),
        "outcome": st.none() | st.just("resolved"),
        "keyed": st.booleans(),
    }
)
side = st.fixed_dictionaries(
    {
        "identities": st.integers(min_value=1, max_value=3),
        "events": st.lists(own_event, min_size=1, max_size=5),
        "traits": st.dictionaries(st.sampled_from(["name", "city", "vip", "size"]), st.integers(0, 9), max_size=3),
        "tier": st.none() | st.sampled_from(["gold", "silver"]),
        "in_group": st.booleans(),
        "absorbed": st.booleans(),
    }
)


async def snapshot(hub: Hub) -> dict[str, Any]:
    """Everything that says whose what is (timestamps of bookkeeping aside)."""

    def collect(conn: Any) -> dict[str, Any]:
        by: dict[str, Any] = {}
        for r in conn.execute(sa.select(identities)):
            by.setdefault("identities", {})[(r.namespace, r.value)] = r.customer_id
        for r in conn.execute(
            sa.select(events.c.customer_id, events.c.touchpoint, events.c.event_id, events.c.dialogue_id)
        ):
            by.setdefault("events", {}).setdefault(r.customer_id, set()).add((r.touchpoint, r.event_id, r.dialogue_id))
        for r in conn.execute(sa.select(dialogues)):
            by.setdefault("dialogues", {}).setdefault(r.customer_id, set()).add(tuple(r))
        for r in conn.execute(sa.select(metrics)):
            by.setdefault("metrics", {})[r.customer_id] = r._asdict()
        by["memberships"] = {tuple(r) for r in conn.execute(sa.select(memberships))}
        c = customers.c
        q = sa.select(c.id, c.kind, c.tier, c.tier_source, c.traits, c.merged_into, c.created_at)
        by["customers"] = {r.id: r._asdict() for r in conn.execute(q)}
        return by

    return await hub.store.read(collect)


def side_events(name: str, spec: dict[str, Any], idents: list[Identity], start: int) -> list[Event]:
    out = []
    for i, e in enumerate(spec["events"]):
        data: dict[str, Any] = {}
        if e["revenue"] is not None:
            data["revenue"] = str(e["revenue"])
        if e["outcome"]:
            data["outcome"] = e["outcome"]
        out.append(
            Event(
                id=f"{name}{i}",
                type="service.request" if i % 2 else "order.placed",
                occurred_at=T0 + timedelta(minutes=start + e["minutes"]),
                touchpoint=e["touchpoint"],
                identities=(idents[i % len(idents)],),
                dialogue=f"{name}-call" if e["keyed"] and e["touchpoint"] == "callcenter" else None,
                data=data,
            )
        )
    return out


@PROPERTY
@given(a=side, b=side, b_first=st.booleans(), cause_revenue=st.none() | st.integers(1, 99))
def test_merge_then_unmerge_restores_who_owns_what(a, b, b_first, cause_revenue):
    ids = {
        "a": [Identity("email", "a@example.com"), Identity("user_id", "a"), Identity("loyalty_card", "LA")],
        "b": [Identity("phone", "+14155550100"), Identity("user_id", "b"), Identity("loyalty_card", "LB")],
    }
    spec = {"a": a, "b": b}

    async def run(hub: Hub) -> None:
        group = await hub.create_customer("group", {"name": "Household"})
        cid: dict[str, str] = {}
        for name in ("b", "a") if b_first else ("a", "b"):
            s = spec[name]
            mine = ids[name][: s["identities"]]
            # every identity of the side seen once together, then the side's own events
            (first,) = await hub.record(
                [Event(id=f"{name}-intro", type="page", occurred_at=T0, touchpoint="pos", identities=tuple(mine))]
            )
            cid[name] = first.customer_id
            await hub.record(side_events(name, s, mine, start=1))
            if s["absorbed"]:
                # a customer of its own, merged into this side before anything else happens
                extra = Identity("anonymous_id", f"{name}-device")
                (x,) = await hub.record(
                    [Event(id=f"{name}-x", type="page", occurred_at=T0, touchpoint="web", identities=(extra,))]
                )
                await hub.record(
                    [
                        Event(
                            id=f"{name}-x-link",
                            type="page",
                            occurred_at=T0 + timedelta(minutes=1),
                            touchpoint="web",
                            identities=(extra, mine[0]),
                        )
                    ]
                )
                assert (await hub.resolve(x.customer_id)) == cid[name]
            changes: dict[str, Any] = {"traits": s["traits"]}
            if s["tier"]:
                changes["tier"] = s["tier"]
            if s["in_group"]:
                changes["memberships"] = {"add": [{"group": group.id, "role": name}]}
            await hub.update_customer(cid[name], changes)

        before = await snapshot(hub)
        cause = Event(
            id="cause",
            type="order.placed",
            occurred_at=T0 + timedelta(days=1),
            touchpoint="pos",
            identities=(ids["a"][0], ids["b"][0]),
            data={"revenue": cause_revenue} if cause_revenue else {},
        )
        (recorded,) = await hub.record([cause])
        survivor, merged = (cid["b"], cid["a"]) if b_first else (cid["a"], cid["b"])
        assert recorded.customer_id == survivor
        merge = next(m for m in await hub.merges(survivor) if m.cause_event_id == "cause")
        assert (merge.survivor_id, merge.merged_id) == (survivor, merged)
        during = await snapshot(hub)
        assert merged not in during["events"]
        assert merged not in during["dialogues"]
        assert merged not in during["metrics"]
        assert set(during["identities"].values()) <= {survivor}
        assert during["metrics"][survivor]["event_count"] == (
            before["metrics"][survivor]["event_count"] + before["metrics"][merged]["event_count"] + 1
        )

        await hub.unmerge(merge.id)
        after = await snapshot(hub)

        # the cause event (and its dialogue) stayed with the survivor, as it was recorded
        cause_row = ("pos", "cause", recorded.dialogue_id)
        assert cause_row in after["events"][survivor]
        after["events"][survivor].discard(cause_row)
        (cause_dialogue,) = [d for d in after["dialogues"][survivor] if d[0] == recorded.dialogue_id]
        after["dialogues"][survivor].discard(cause_dialogue)
        m_before, m_after = before["metrics"][survivor], after["metrics"].pop(survivor)
        before["metrics"].pop(survivor)
        revenue = Decimal(cause_revenue or 0)
        assert m_after["event_count"] == m_before["event_count"] + 1
        assert m_after["order_count"] == m_before["order_count"] + (1 if cause_revenue else 0)
        assert Decimal(m_after["lifetime_revenue"]) == Decimal(m_before["lifetime_revenue"]) + revenue
        assert m_after["first_seen_at"] == m_before["first_seen_at"]
        assert m_after["last_seen_at"] == cause.occurred_at
        assert m_after["touchpoints"] == sorted({*m_before["touchpoints"], "pos"})
        assert after == before

    with_hub(run)
