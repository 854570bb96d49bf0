"""The change feed: written in the same transaction as each change, in commit order, read
through GET /v1/changes (long polls, filters, retention), scrubbed by erasure."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from prm_core import hookimpl
from prm_core.feed import NewChange
from prm_core.feed.reading import FellBehind
from prm_core.feed.writing import emit
from prm_core.hub import Hub
from prm_core.privacy.erasure import erase_customer
from prm_core.server.state import HUB
from prm_core.store.tables import changes, customers, utcnow
from prm_core.testing import POSTGRES_ENV, postgres_database

EVENTS_DAY = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def ev(event_id: str, minute: int, **identities: str) -> dict[str, Any]:
    return {
        "id": event_id,
        "type": "page",
        "occurred_at": f"2026-11-23T08:{minute:02d}:00Z",
        "identities": identities,
    }


async def send(hub: Hub, *bodies: dict[str, Any]) -> list[Any]:
    return await hub.record(hub.parse_events({"events": list(bodies)}, "web"))


async def everything(hub: Hub) -> list[dict[str, Any]]:
    page = await hub.feed.read(None, 1000)
    return [c.to_json() for c in page.changes]


async def test_recording_writes_its_changes_in_order(hub):
    (first,) = await send(hub, ev("e1", 0, email="ann@example.com"))
    await send(hub, ev("e1", 0, email="ann@example.com"))  # a duplicate changes nothing
    (second,) = await send(hub, ev("e2", 1, email="bob@example.com"))
    (third,) = await send(hub, ev("e3", 2, email="bob@example.com", phone="+14155550100"))
    (linking,) = await send(hub, ev("e4", 3, email="ann@example.com", phone="+14155550100"))

    feed = await everything(hub)
    positions = [int(c["position"]) for c in feed]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    kinds = [(c["type"], c["customer_id"]) for c in feed]
    ann, bob = first.customer_id, second.customer_id
    assert kinds[:3] == [("customer.created", ann), ("dialogue.opened", ann), ("event.recorded", ann)]
    recorded = [c for c in feed if c["type"] == "event.recorded"]
    assert [c["data"]["event_id"] for c in recorded] == ["e1", "e2", "e3", "e4"]
    assert recorded[0]["data"] == {
        "event_id": "e1",
        "touchpoint": "web",
        "type": "page",
        "occurred_at": "2026-11-23T08:00:00Z",
        "dialogue_id": first.dialogue_id,
    }
    (merged,) = [c for c in feed if c["type"] == "customers.merged"]
    assert merged["customer_id"] == linking.customer_id
    assert {merged["data"]["survivor_id"], merged["data"]["merged_id"]} == {ann, bob}
    assert merged["data"]["event_id"] == "e4" and merged["data"]["touchpoint"] == "web"
    # the merge comes before the event that caused it, which is recorded for the survivor
    assert feed.index(merged) < feed.index(recorded[-1])
    assert recorded[-1]["customer_id"] == linking.customer_id
    assert third.customer_id == bob


async def test_a_rolled_back_transaction_leaves_no_change(hub):
    class Boom(Exception):
        pass

    def write(conn: Any) -> None:
        emit(conn, NewChange("test.happened", None, {"n": 1}))
        raise Boom

    with pytest.raises(Boom):
        await hub.store.write(write)
    await hub.store.write(lambda conn: emit(conn, NewChange("test.happened", None, {"n": 2})))
    assert [c["data"] for c in await everything(hub)] == [{"n": 2}]


async def test_customer_changes_through_the_api(hub):
    group = await hub.create_customer("organization", {"name": "Acme"})
    await hub.update_customer(group.id, {"traits": {"size": 10}, "tier": "gold"})
    feed = await everything(hub)
    assert [c["type"] for c in feed] == ["customer.created", "customer.updated"]
    assert feed[0]["data"] == {"kind": "organization", "traits": {"name": "Acme"}, "touchpoint": None, "event_id": None}
    assert feed[1]["data"] == {"traits": {"name": "Acme", "size": 10}, "tier": "gold", "tier_source": "manual"}


async def test_unmerge_is_a_change(hub):
    await send(hub, ev("e1", 0, email="ann@example.com"), ev("e2", 1, phone="+14155550100"))
    (linking,) = await send(hub, ev("e3", 2, email="ann@example.com", phone="+14155550100"))
    (merge,) = await hub.merges(linking.customer_id)
    await hub.unmerge(merge.id)
    last = (await everything(hub))[-1]
    assert last["type"] == "customers.unmerged"
    assert last["data"] == {"merge_id": merge.id, "survivor_id": merge.survivor_id, "merged_id": merge.merged_id}
    assert last["customer_id"] == merge.survivor_id


async def test_erasure_scrubs_the_persons_changes(hub):
    (ann,) = await send(hub, ev("e1", 0, email="ann@example.com"))
    (bob,) = await send(hub, ev("e2", 1, email="bob@example.com"))
    await hub.add_traits({ann.customer_id: {"first_name": "Ann"}})
    await erase_customer(hub, ann.customer_id)

    feed = await everything(hub)
    of_ann = [c for c in feed if c["customer_id"] == ann.customer_id]
    assert [c["type"] for c in of_ann] == [
        "customer.created",
        "dialogue.opened",
        "event.recorded",
        "customer.updated",
        "customer.erased",
    ]
    assert all(c["data"] == {} for c in of_ann[:-1])
    assert of_ann[-1]["data"] == {"merged_ids": []}
    assert "Ann" not in str(feed) and "ann@example.com" not in str(feed)
    of_bob = [c for c in feed if c["customer_id"] == bob.customer_id]
    assert all(c["data"] for c in of_bob)


class Loyalty:
    @hookimpl
    def prm_event_changes(self, recorded):
        for r in recorded:
            yield NewChange("loyalty.earned", r.customer_id, {"points": 10, "event_id": r.event.id})


class Broken:
    @hookimpl
    def prm_event_changes(self, recorded):
        yield NewChange("event.recorded", None, {})  # a core type is not a plugin's to emit


@pytest.mark.parametrize("hub_plugins", [[Loyalty(), Broken()]])
async def test_plugins_add_changes_in_the_recording_transaction(hub, log_capture):
    (r,) = await send(hub, ev("e1", 0, email="ann@example.com"))
    await send(hub, ev("e1", 0, email="ann@example.com"))
    feed = await everything(hub)
    earned = [c for c in feed if c["type"] == "loyalty.earned"]
    assert [(c["customer_id"], c["data"]) for c in earned] == [(r.customer_id, {"points": 10, "event_id": "e1"})]
    assert sum(c["type"] == "event.recorded" for c in feed) == 1
    assert any(e.get("hook") == "prm_event_changes" for e in log_capture.entries)


async def test_the_feed_can_be_switched_off(database_url):
    from prm_core.config import Config

    async with Hub.open(Config(database_url=database_url, raw={"feed": {"enabled": False}}), autoload=True) as hub:
        await send(hub, ev("e1", 0, email="ann@example.com"))
        assert await everything(hub) == []


async def test_positions_follow_commit_order_with_concurrent_writers(hub):
    """Many transactions emit at once while a reader follows the feed: it never passes a
    position that is filled in later (on PostgreSQL the feed's lock orders them)."""
    total = 40
    done = asyncio.Event()
    seen: list[int] = []

    async def reader() -> None:
        after = 0
        while True:
            finished = done.is_set()
            page = await hub.feed.read(after, 1000)
            seen.extend(c.seq for c in page.changes)
            after = page.next
            if finished and not page.changes:
                return
            await asyncio.sleep(0)

    def write(n: int) -> Any:
        def run(conn: Any) -> None:
            emit(conn, NewChange("test.happened", None, {"n": n}))
            # hold the transaction open a little, as a batch's other work would
            conn.execute(sa.select(sa.func.count()).select_from(customers))

        return run

    follower = asyncio.create_task(reader())
    await asyncio.gather(*(hub.store.write(write(n)) for n in range(total)))
    done.set()
    await follower
    stored = await hub.store.read(lambda conn: list(conn.execute(sa.select(changes.c.position)).scalars()))
    assert sorted(seen) == seen and sorted(seen) == sorted(stored) and len(stored) == total


async def test_retention_prunes_and_tells_readers_who_fell_behind(hub, frozen_clock):
    frozen_clock.now = EVENTS_DAY  # the events are of that morning: not ahead of the hub's clock
    await send(hub, ev("e1", 0, email="ann@example.com"))
    first = await everything(hub)
    frozen_clock.advance(days=40)
    await send(hub, ev("e2", 1, email="bob@example.com"))
    assert await hub.feed.prune_once() == len(first)
    with pytest.raises(FellBehind):
        await hub.feed.read(0, 10)
    kept = await everything(hub)  # from the oldest kept
    assert kept and int(kept[0]["position"]) == int(first[-1]["position"]) + 1
    assert (await hub.feed.read(int(first[-1]["position"]), 10)).changes[0].to_json() == kept[0]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_get_changes_pages_filters_and_refuses_bad_positions(hub_client, make_key):
    key = await make_key("read")
    hub = hub_client.app[HUB]
    await send(hub, ev("e1", 0, email="ann@example.com"), ev("e2", 1, email="bob@example.com"))

    resp = await hub_client.get("/v1/changes?limit=2", headers=bearer(key))
    assert resp.status == 200
    body = await resp.json()
    assert len(body["changes"]) == 2 and body["next"] == body["changes"][-1]["position"]
    assert set(body["changes"][0]) == {"position", "type", "at", "customer_id", "data"}
    rest = await (await hub_client.get(f"/v1/changes?after={body['next']}", headers=bearer(key))).json()
    assert [c["position"] for c in rest["changes"]] == [str(int(body["next"]) + i) for i in (1, 2, 3, 4)]

    only = await (await hub_client.get("/v1/changes?types=event.recorded", headers=bearer(key))).json()
    assert [c["data"]["event_id"] for c in only["changes"]] == ["e1", "e2"]
    assert only["next"] == rest["next"]  # what the filter skipped is not read again

    for query, field in [
        ("after=abc", "after"),
        ("after=-1", "after"),
        ("after=999999", "after"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("wait=31", "wait"),
        ("wait=nan", "wait"),
        ("types=,", "types"),
    ]:
        resp = await hub_client.get(f"/v1/changes?{query}", headers=bearer(key))
        assert resp.status == 422, query
        assert (await resp.json())["error"]["field"] == field
    assert (await hub_client.get("/v1/changes")).status == 401
    touchpoint_key = await make_key("touchpoint:web")
    assert (await hub_client.get("/v1/changes", headers=bearer(touchpoint_key))).status == 403


async def test_get_changes_waits_for_the_next_commit(hub_client, make_key):
    key = await make_key("read")
    hub = hub_client.app[HUB]
    await send(hub, ev("e1", 0, email="ann@example.com"))
    head = (await (await hub_client.get("/v1/changes", headers=bearer(key))).json())["next"]

    waiting = asyncio.create_task(hub_client.get(f"/v1/changes?after={head}&wait=30", headers=bearer(key)))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await send(hub, ev("e2", 1, email="ann@example.com"))
    body = await (await waiting).json()
    assert [c["data"]["event_id"] for c in body["changes"] if c["type"] == "event.recorded"] == ["e2"]


async def test_get_changes_answers_410_past_retention(hub_client, make_key, frozen_clock):
    key = await make_key("read")
    hub = hub_client.app[HUB]
    frozen_clock.now = EVENTS_DAY
    await send(hub, ev("e1", 0, email="ann@example.com"))
    frozen_clock.advance(days=40)
    await send(hub, ev("e2", 1, email="ann@example.com"))
    await hub.feed.prune_once()
    resp = await hub_client.get("/v1/changes?after=0", headers=bearer(key))
    assert resp.status == 410
    assert (await resp.json())["error"]["code"] == "fell_behind"
    assert (await hub_client.get("/v1/changes", headers=bearer(key))).status == 200


async def test_old_changes_keep_their_time(hub):
    await send(hub, ev("e1", 0, email="ann@example.com"))
    (change,) = (await hub.feed.read(None, 1, {"event.recorded"})).changes
    assert abs(change.at - utcnow()) < timedelta(minutes=5)


async def test_a_later_transaction_is_not_seen_before_an_earlier_one_commits(hub):
    """Transaction A takes a position and is still open when B takes the next one and tries
    to commit: a reader must not see B's change while A's may still appear before it."""
    from prm_core.feed import writing

    async with hub.store.writer.connect() as first:
        await first.begin()

        def take_position(conn: Any) -> None:
            writing.begin(conn)
            emit(conn, NewChange("test.happened", None, {"n": 1}))
            writing.flush(conn)

        await first.run_sync(take_position)
        second = asyncio.create_task(
            hub.store.write(lambda conn: emit(conn, NewChange("test.happened", None, {"n": 2})))
        )
        await asyncio.sleep(0.3)
        assert (await hub.feed.read(0, 10)).changes == []
        await first.commit()
    await second
    assert [c.data["n"] for c in (await hub.feed.read(0, 10)).changes] == [1, 2]


@pytest.fixture
def shared_postgres() -> Iterator[str]:
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set: two hubs share a PostgreSQL server")
    yield from postgres_database(base)


@pytest.mark.postgres
async def test_another_hub_process_commit_wakes_a_waiting_reader(shared_postgres):
    """On PostgreSQL a commit's NOTIFY wakes the waits of every hub on the database."""
    from prm_core.config import Config

    config = Config(database_url=shared_postgres)
    async with Hub.open(config, autoload=True) as reader, Hub.open(config, autoload=True) as writer:
        woken = asyncio.create_task(reader.feed.signal.wait(30))
        await asyncio.sleep(0)  # the wait has begun
        await send(writer, ev("e1", 0, email="ann@example.com"))
        assert await woken, "the reader's hub never heard the other hub's commit"
        assert [c.type for c in (await reader.feed.read(None, 10, {"event.recorded"})).changes] == ["event.recorded"]
