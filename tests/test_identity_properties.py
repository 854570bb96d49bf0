"""Properties of identity rules over random streams of identify events.

Whatever the order, batching, placeholders and conflicting values: no customer holds more
values of a limited namespace than its limit, no blocked value links two customers, and
every event is recorded exactly once. The same through several hubs at once (several
processes on PostgreSQL, whose transactions really race).
"""

from __future__ import annotations

import asyncio
import random
import tempfile
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from attrs import evolve
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prm_core.config import Config
from prm_core.hub import Hub
from prm_core.identity_rules import PLACEHOLDERS
from prm_core.store.tables import customers, events, identities

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALUES = {
    "user_id": ["U-1", "U-2", "U-3", "undefined", "null", "0", "N/A"],
    "email": ["a@example.com", "b@example.com", "test@test.com"],
    "anonymous_id": ["an-1", "an-2", "anonymous"],
    "phone": ["+14155550100", "0000000000"],
}
LIMITS = {"user_id": 1, "email": 2}
RULES = {"email": {"limit": 2}}

identify = st.fixed_dictionaries({}, optional={ns: st.sampled_from(values) for ns, values in VALUES.items()}).filter(
    bool
)


def blocked(ns: str, value: str) -> bool:
    return value.lower() in PLACEHOLDERS


def body(n: int, idents: dict[str, str]) -> dict[str, Any]:
    at = (T0 + timedelta(minutes=n)).isoformat().replace("+00:00", "Z")
    return {"id": f"e{n}", "type": "identify", "occurred_at": at, "identities": idents}


def components(stream: list[dict[str, str]]) -> dict[str, int]:
    """Event id -> its component when only unblocked values link events (limits ignored)."""
    parent = list(range(len(stream)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    first: dict[tuple[str, str], int] = {}
    for n, idents in enumerate(stream):
        for ns, value in idents.items():
            if blocked(ns, value):
                continue
            key = (ns, "+14155550100" if ns == "phone" else value)
            if key in first:
                parent[find(n)] = find(first[key])
            else:
                first[key] = n
    return {f"e{n}": find(n) for n in range(len(stream))}


async def check(read: Callable[[Any], Awaitable[list[Any]]], stream: list[dict[str, str]]) -> None:
    live = {r.id for r in await read(sa.select(customers.c.id).where(customers.c.merged_into.is_(None)))}
    held: dict[tuple[str, str], int] = {}
    for r in await read(sa.select(identities.c.namespace, identities.c.value, identities.c.customer_id)):
        assert not blocked(r.namespace, r.value), r
        assert r.customer_id in live
        held[(r.customer_id, r.namespace)] = held.get((r.customer_id, r.namespace), 0) + 1
    for (_, ns), count in held.items():
        assert count <= LIMITS.get(ns, count), (ns, count)
    logged = await read(sa.select(events.c.event_id, events.c.customer_id))
    assert sorted(r.event_id for r in logged) == sorted(f"e{n}" for n in range(len(stream)))
    component = components(stream)
    by_customer: dict[str, set[int]] = {}
    for r in logged:
        assert r.customer_id in live
        by_customer.setdefault(r.customer_id, set()).add(component[r.event_id])
    # a customer's events are all linked by unblocked values: no placeholder joined anyone
    assert all(len(c) == 1 for c in by_customer.values()), by_customer


@PROPERTY
@given(
    stream=st.lists(identify, min_size=1, max_size=14),
    cuts=st.lists(st.booleans(), max_size=14),
    resend=st.lists(st.integers(min_value=0, max_value=13), max_size=4),
)
def test_limits_and_placeholders_hold_for_any_stream(stream, cuts, resend):
    bodies = [body(n, idents) for n, idents in enumerate(stream)]
    bodies += [bodies[i] for i in resend if i < len(bodies)]  # duplicates: recorded once
    batches: list[list[dict[str, Any]]] = [[]]
    for i, b in enumerate(bodies):
        batches[-1].append(b)
        if i < len(cuts) and cuts[i]:
            batches.append([])

    async def main(directory: str) -> None:
        config = Config(database_url=f"sqlite:///{Path(directory) / 'prm.db'}", raw={"identity": {"rules": RULES}})
        async with Hub.open(config, autoload=True) as hub:
            for batch in filter(None, batches):
                await hub.record(hub.parse_events({"events": batch}, "web"))

            async def read(q: Any) -> list[Any]:
                return await hub.store.read(lambda conn: list(conn.execute(q)))

            await check(read, stream)

    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(main(directory))


async def test_limits_and_placeholders_hold_through_several_hubs_at_once(hub_config):
    rng = random.Random(27)
    config = evolve(hub_config, raw={"identity": {"rules": RULES}})
    stream = [{ns: rng.choice(VALUES[ns]) for ns in rng.sample(sorted(VALUES), rng.randint(1, 3))} for _ in range(150)]
    async with AsyncExitStack() as stack:
        # opened one after another: the first migrates, the others find the schema in place
        hubs = [await stack.enter_async_context(Hub.open(config, autoload=True)) for _ in range(3)]

        async def send(n: int, idents: dict[str, str]) -> None:
            hub = hubs[rng.randrange(len(hubs))]
            await hub.record(hub.parse_events({"events": [body(n, idents)]}, "web"))

        sends = [send(n, idents) for n, idents in enumerate(stream)]
        sends += [send(n, stream[n]) for n in rng.sample(range(len(stream)), 20)]  # resent: recorded once
        rng.shuffle(sends)
        await asyncio.gather(*sends)

        async def read(q: Any) -> list[Any]:
            return await hubs[0].store.read(lambda conn: list(conn.execute(q)))

        await check(read, stream)
