"""What an erasure reaches and what it leaves: a household phone the person shared, a group
and its members, other customers' events that merely mention the person, a second erasure."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from attrs import evolve
from sqlalchemy.engine import make_url

from prm_core import hookimpl
from prm_core.config import Config
from prm_core.hub import Hub
from prm_core.model import FulfillmentRequest, FulfillmentResult
from prm_core.outbox import Claim, PlannedEvent, PlannedFulfillment, outbox_rows
from prm_core.privacy.erasure import erase_customer
from prm_core.privacy.tombstones import digest
from prm_core.store.tables import erasures, events, identities, merges, outbox, tombstones, utcnow

PHONE = "+14155550100"


def ev(event_id: str, minute: int, data: dict[str, Any] | None = None, **identities: str) -> dict[str, Any]:
    return {
        "id": event_id,
        "type": "page",
        "occurred_at": f"2026-11-23T08:{minute:02d}:00Z",
        "identities": identities,
        "data": data or {},
    }


async def send(hub: Hub, *bodies: dict[str, Any]) -> list[Any]:
    return await hub.record(hub.parse_events({"events": list(bodies)}, "web"))


async def rows(hub: Hub, query: Any) -> list[Any]:
    return await hub.store.read(lambda conn: conn.execute(query).all())


async def test_a_shared_household_phone_outlives_the_person_who_first_used_it(hub):
    (ann,) = await send(hub, ev("a1", 0, email="ann@example.com", phone=PHONE))
    await hub.set_shared(f"phone:{PHONE}", True)
    (bob,) = await send(hub, ev("b1", 1, email="bob@example.com", phone=PHONE))
    assert ann.customer_id != bob.customer_id

    erasure = await erase_customer(hub, "email:ann@example.com")
    assert (erasure.customer_id, erasure.identities) == (ann.customer_id, 2)  # her email and the phone she held

    # the phone stays a shared value for the household, no longer anyone's; only her email is tombstoned
    c = identities.c
    kept = await rows(hub, sa.select(c.namespace, c.value, c.customer_id, c.shared).order_by(c.namespace))
    assert [tuple(r) for r in kept] == [
        ("email", "bob@example.com", bob.customer_id, False),
        ("phone", PHONE, None, True),
    ]
    assert len(await rows(hub, sa.select(tombstones.c.digest))) == 1
    shell = await hub.view(ann.customer_id)
    assert shell.identities == () and shell.shared_identities == ()
    assert (await hub.view(bob.customer_id)).shared_identities == (
        {"namespace": "phone", "value": PHONE, "shared": True},
    )

    # a call from the household phone alone goes to Bob, the one seen with it, payload and all
    await send(hub, ev("call-1", 5, {"reason": "billing"}, phone=PHONE))
    bob_view = await hub.view(bob.customer_id)
    assert next((t["event_id"], t["data"]) for t in bob_view.timeline) == ("call-1", {"reason": "billing"})


async def test_erasing_a_group_removes_its_memberships_and_leaves_its_members(hub):
    (ann,) = await send(hub, ev("a1", 0, {"page": "/shoes"}, email="ann@example.com"))
    club = await hub.create_customer("group", {"name": "The Quince Club"})
    await hub.update_customer(ann.customer_id, {"memberships": {"add": [club.id]}})
    assert [m["group_id"] for m in (await hub.view(ann.customer_id)).memberships] == [club.id]

    erasure = await erase_customer(hub, club.id)
    # a group holds no identity and no event of its own, and nobody claimed one
    assert (erasure.customer_id, erasure.erased_ids, erasure.identities, erasure.events, erasure.claims) == (
        club.id, (club.id,), 0, 0, 0,
    )  # fmt: skip
    group = await hub.view(club.id)
    assert group.customer.traits == {} and group.members == ()
    member = await hub.view(ann.customer_id)
    assert member.memberships == ()
    assert [i.value for i in member.identities] == ["ann@example.com"]
    assert [t["data"] for t in member.timeline] == [{"page": "/shoes"}]


async def test_other_customers_events_lose_their_payload_only_where_they_claim_the_person(hub):
    (ann,) = await send(hub, ev("a1", 0, email="ann@example.com"))
    (bob,) = await send(hub, ev("b1", 1, email="bob@example.com"))
    payloads = {
        # the person's email claimed, in any shape a source could send it
        "as-key": '{"claimed_identities": {"email": {"ann@example.com": true}}, "street": "12 Quince Lane"}',
        "in-list": '{"claimed_identities": [["email", "ann@example.com"]], "street": "12 Quince Lane"}',
        # named in the payload, but not as a claim: Bob's own data, kept
        "referral": '{"claimed_identities": {"email": "bob@example.com"}, "referred_by": "ann@example.com"}',
        "no-claims": '{"note": "met ann@example.com at the fair"}',
    }

    def plant(conn: Any) -> None:
        for event_id, data in payloads.items():
            conn.execute(
                sa.text(
                    "INSERT INTO events (touchpoint, event_id, type, occurred_at, received_at, customer_id,"
                    " ingest_customer_id, dialogue_id, direction, identities, data) VALUES ('web', :e, 'page',"
                    " :at, :at, :c, :c, 'd-planted', 'inbound', '[]', :d)"
                ).bindparams(sa.bindparam("at", type_=sa.DateTime())),
                {"e": event_id, "at": datetime(2026, 11, 23, 8, 30), "c": bob.customer_id, "d": data},
            )

    await hub.store.write(plant)
    erasure = await erase_customer(hub, ann.customer_id)
    assert erasure.claims == 2
    timeline = {t["event_id"]: t["data"] for t in (await hub.view(bob.customer_id)).timeline}
    assert timeline["as-key"] == timeline["in-list"] == {"erased": True}
    assert timeline["referral"]["referred_by"] == "ann@example.com"
    assert timeline["no-claims"] == {"note": "met ann@example.com at the fair"}
    assert timeline["b1"] == {}


async def test_a_second_erasure_records_who_erased_last(hub):
    (ann,) = await send(hub, ev("a1", 0, email="ann@example.com"))
    (other,) = await send(hub, ev("x1", 1, email="other@example.com"))
    first = await erase_customer(hub, ann.customer_id, erased_by="key-one")
    await erase_customer(hub, other.customer_id, erased_by="key-other")
    again = await erase_customer(hub, ann.customer_id, erased_by="key-two")
    assert again.erased_ids == first.erased_ids == (ann.customer_id,)
    assert (again.identities, again.events) == (0, 1)  # nothing left to delete; the bare event is scrubbed again
    e = erasures.c
    audit = await rows(hub, sa.select(e.customer_id, e.erased_by, e.merged_ids).order_by(e.erased_by))
    assert [tuple(r) for r in audit] == [(other.customer_id, "key-other", []), (ann.customer_id, "key-two", [])]


class Outage:
    """A plugin whose own purge fails, and one whose purge works."""

    __name__ = "outage"

    def __init__(self) -> None:
        self.purged: list[str] = []

    @hookimpl
    def prm_customer_erased(self, customer_id, merged_ids):
        return self._fail()

    async def _fail(self) -> None:
        raise ConnectionError("the plugin's store is down")


class Tidy:
    __name__ = "tidy"

    def __init__(self) -> None:
        self.purged: list[tuple[str, tuple[str, ...]]] = []

    @hookimpl
    def prm_customer_erased(self, customer_id, merged_ids):
        self.purged.append((customer_id, tuple(merged_ids)))


async def test_the_erasure_is_logged_by_id_never_by_what_it_erased(hub, register_plugin, log_capture):
    tidy = register_plugin(Tidy())
    register_plugin(Outage())
    await send(hub, ev("a1", 0, {"street": "12 Quince Lane"}, email="ann@example.com"))
    (merged,) = await send(hub, ev("a2", 1, phone=PHONE))
    await send(hub, ev("a3", 2, email="ann@example.com", phone=PHONE))  # merges the two

    erasure = await erase_customer(hub, "email:ann@example.com")
    assert erasure.incomplete == ("outage",)  # the failing plugin named; the others purged
    assert tidy.purged == [(erasure.customer_id, erasure.erased_ids[1:])]
    assert merged.customer_id in erasure.erased_ids
    entries = log_capture.entries
    done = [e for e in entries if e["event"] == "customer erased"]
    assert [(e["customer_id"], e["ids"], e["events"]) for e in done] == [(erasure.customer_id, 2, 3)]
    failed = [e for e in entries if e["event"] == "hook failed"]
    assert [(e["plugin"], e["hook"], e["error"], e["level"]) for e in failed] == [
        ("outage", "prm_customer_erased", "ConnectionError", "error")
    ]
    assert not [e for e in entries if "write-ahead log" in e["event"]]  # it was truncated
    for personal in ("ann@example.com", PHONE, "Quince"):
        assert personal not in log_capture.text


async def test_an_erasure_completes_when_a_value_it_erases_is_already_tombstoned(hub):
    # a tombstone and a live identity of the same value: a database put together by hand (a
    # partial restore); the erasure keeps the one tombstone and deletes the identity
    (ann,) = await send(hub, ev("a1", 0, email="ann@example.com", phone=PHONE))
    key = hub.ingestor.rules.tombstone_key
    early = digest(key, "email", "ann@example.com")
    await hub.store.write(lambda conn: conn.execute(tombstones.insert().values(digest=early, erased_at=utcnow())))

    erasure = await erase_customer(hub, ann.customer_id)
    assert erasure.identities == 2
    held = {r.digest for r in await rows(hub, sa.select(tombstones.c.digest))}
    assert held == {early, digest(key, "phone", PHONE)}
    assert await rows(hub, sa.select(identities.c.value)) == []


async def test_an_event_is_scrubbed_whichever_of_its_customers_is_the_person(hub):
    # an event names two customers: the one it was recorded for (ingest_customer_id) and the one
    # it belongs to now (customer_id); either being the erased person is enough
    (ann,) = await send(hub, ev("a1", 0, email="ann@example.com"))
    (bob,) = await send(hub, ev("b1", 1, {"page": "/bob"}, email="bob@example.com"))

    def plant(conn: Any) -> None:
        for event_id, owner, recorded_for in (("now-ann", ann, bob), ("was-ann", bob, ann)):
            conn.execute(
                sa.text(
                    "INSERT INTO events (touchpoint, event_id, type, occurred_at, received_at, customer_id,"
                    " ingest_customer_id, dialogue_id, direction, identities, data) VALUES ('web', :e, 'page',"
                    " :at, :at, :c, :i, 'd-planted', 'inbound', '[]', :d)"
                ).bindparams(sa.bindparam("at", type_=sa.DateTime())),
                {
                    "e": event_id,
                    "at": datetime(2026, 11, 23, 8, 30),
                    "c": owner.customer_id,
                    "i": recorded_for.customer_id,
                    "d": '{"street": "12 Quince Lane"}',
                },
            )

    await hub.store.write(plant)
    erasure = await erase_customer(hub, ann.customer_id)
    assert erasure.events == 3
    e = events.c
    datas = {r.event_id: r.data for r in await rows(hub, sa.select(e.event_id, e.data))}
    assert datas == {
        "a1": {"erased": True},
        "now-ann": {"erased": True},
        "was-ann": {"erased": True},
        "b1": {"page": "/bob"},
    }


@pytest.mark.parametrize("side", ["survivor", "merged"])
async def test_an_undone_merge_keeps_no_identity_of_the_erased_side(hub, side):
    await send(hub, ev("a1", 0, email="ann@example.com"), ev("a2", 1, phone=PHONE))
    (linking,) = await send(hub, ev("a3", 2, email="ann@example.com", phone=PHONE))
    (merge,) = await hub.merges(linking.customer_id)
    await hub.unmerge(merge.id)  # two customers again; the audit record stays, naming what moved
    m = merges.c
    (before,) = await rows(hub, sa.select(m.moved))
    assert before.moved["identities"]

    erased = merge.survivor_id if side == "survivor" else merge.merged_id
    kept = merge.merged_id if side == "survivor" else merge.survivor_id
    erasure = await erase_customer(hub, erased)
    assert erasure.erased_ids == (erased,)  # undone: the other is no longer part of it
    (after,) = await rows(hub, sa.select(m.survivor_id, m.merged_id, m.moved))
    assert (after.survivor_id, after.merged_id) == (merge.survivor_id, merge.merged_id)
    assert after.moved["identities"] == []
    assert {k: v for k, v in after.moved.items() if k != "identities"} == {
        k: v for k, v in before.moved.items() if k != "identities"
    }
    assert (await hub.view(kept)).identities  # the other customer keeps its own


async def test_a_merge_record_that_is_not_text_is_emptied_too(hub):
    await send(hub, ev("a1", 0, email="ann@example.com"), ev("a2", 1, phone=PHONE))
    await send(hub, ev("a3", 2, email="ann@example.com", phone=PHONE))
    if hub.store.dialect != "sqlite":
        pytest.skip("PostgreSQL's jsonb holds only valid JSON")
    # bytes that are not UTF-8 around the erased email: no text reader takes the record
    moved = b'{"identities": [["email", "ann@example.com"]], "note": "\xff\xfe"}'
    await hub.store.write(
        lambda conn: conn.execute(sa.text("UPDATE merges SET moved = CAST(:m AS TEXT)"), {"m": moved})
    )

    await erase_customer(hub, "email:ann@example.com")

    def raw(conn: Any) -> list[Any]:
        return [r[0] for r in conn.exec_driver_sql("SELECT CAST(moved AS BLOB) FROM merges")]

    (held,) = await hub.store.read(raw)
    assert b"ann@example.com" not in held


async def test_a_hub_recording_without_tombstones_refuses_to_erase(hub, monkeypatch):
    # without tombstones, the next event naming the person would bring them back: refuse, write nothing
    (ann,) = await send(hub, ev("a1", 0, {"street": "12 Quince Lane"}, email="ann@example.com"))
    monkeypatch.setattr(hub.ingestor, "rules", evolve(hub.ingestor.rules, tombstone_key=None))
    with pytest.raises(RuntimeError, match="without tombstones"):
        await erase_customer(hub, ann.customer_id)
    assert [t["data"] for t in (await hub.view(ann.customer_id)).timeline] == [{"street": "12 Quince Lane"}]


async def test_partner_work_is_called_off_for_the_person_only_and_a_late_answer_is_not_told(hub, hook_recorder):
    (ann,) = await send(hub, ev("a1", 0, email="ann@example.com"))
    (bob,) = await send(hub, ev("b1", 1, email="bob@example.com"))
    now = utcnow()

    def work(who: Any, request_id: str) -> dict[str, Any]:
        request = FulfillmentRequest(request_id, "fieldservice", "book", "", payload={"address": f"{request_id} Lane"})
        turn = PlannedEvent(
            id=f"turn-{request_id}", type="service.requested", occurred_at=now, touchpoint="web",
            planned=(PlannedFulfillment(request),), claimed_until=now + timedelta(seconds=30),
        )  # fmt: skip
        (row,) = outbox_rows(turn, who.customer_id, who.dialogue_id, now)
        return row

    ann_row, bob_row = work(ann, "r-ann"), work(bob, "r-bob")
    await hub.store.write(lambda conn: conn.execute(outbox.insert(), [ann_row, bob_row]))
    # a dispatcher holds Ann's request (attempt 1) when she is erased
    held = Claim(ann_row["id"], 1, FulfillmentRequest("r-ann", "fieldservice", "book", ann.customer_id), "web",
                 ann.dialogue_id)  # fmt: skip
    await erase_customer(hub, ann.customer_id)

    o = outbox.c
    after = {r.request_id: r for r in await rows(hub, sa.select(outbox))}
    assert (after["r-ann"].status, after["r-ann"].payload, after["r-ann"].next_attempt_at) == ("failed", {}, None)
    assert (after["r-bob"].status, after["r-bob"].payload) == ("pending", {"address": "r-bob Lane"})
    assert after["r-bob"].attempts == 1 and after["r-bob"].last_error is None

    # the partner's answer arrives for the held claim: Ann's row stays as the erasure left it, and
    # plugins are not told of it
    hook_recorder.clear()
    await hub.outbox._settle(held, FulfillmentResult("r-ann", "fieldservice", "failed", {"reason": "no slot"}))
    (row,) = await rows(hub, sa.select(o.status, o.result).where(o.request_id == "r-ann"))
    assert (row.status, row.result) == ("failed", {})
    assert hook_recorder.getcalls("prm_fulfillment_updated") == []


async def test_claims_are_found_in_any_bytes_a_payload_holds(hub):
    (ann,) = await send(hub, ev("a1", 0, email="ann@example.com", user_id="jöhn-7"))
    (bob,) = await send(hub, ev("b1", 1, email="bob@example.com"))
    if hub.store.dialect != "sqlite":
        pytest.skip("PostgreSQL's jsonb holds only valid JSON")
    payloads = {
        # the store writes JSON ASCII-escaped: the claim of a value that is not ASCII
        "escaped": b'{"claimed_identities": {"user_id": "j\\u00f6hn-7"}}',
        # not JSON: starting with the erased value itself, or holding it escaped
        "bare": b"ann@example.com typed at the kiosk",
        "bare-escaped": b"j\\u00f6hn-7 at the kiosk",
        # not UTF-8: no text reader takes it
        "not-utf8": b'{"claimed_identities": {"email": "ann@example.com"}, "n": "\xff"}',
        # names neither erased value; text that is not JSON is scrubbed only when it holds one whole
        "other": b'{"claimed_identities": {"user_id": "john-7"}}',
        "near-start": b"nn@example.com",
        "near-end": b"mail to ann@example.co",
    }

    def plant(conn: Any) -> None:
        for event_id, data in payloads.items():
            conn.execute(
                sa.text(
                    "INSERT INTO events (touchpoint, event_id, type, occurred_at, received_at, customer_id,"
                    " ingest_customer_id, dialogue_id, direction, identities, data) VALUES ('web', :e, 'page',"
                    " :at, :at, :c, :c, 'd-planted', 'inbound', '[]', CAST(:d AS TEXT))"
                ).bindparams(sa.bindparam("at", type_=sa.DateTime())),
                {"e": event_id, "at": datetime(2026, 11, 23, 8, 30), "c": bob.customer_id, "d": data},
            )

    await hub.store.write(plant)
    erasure = await erase_customer(hub, ann.customer_id)
    assert erasure.claims == 4

    def raw(conn: Any) -> dict[str, bytes]:
        query = "SELECT event_id, CAST(data AS BLOB) FROM events WHERE customer_id = ?"
        return dict(conn.exec_driver_sql(query, (bob.customer_id,)).all())

    held = await hub.store.read(raw)
    assert {k: v for k, v in held.items() if k in payloads} == {
        "escaped": b'{"erased": true}', "bare": b'{"erased": true}', "not-utf8": b'{"erased": true}',
        "bare-escaped": b'{"erased": true}',
        "other": payloads["other"], "near-start": b"nn@example.com", "near-end": b"mail to ann@example.co",
    }  # fmt: skip


async def test_an_erasure_says_when_the_write_ahead_log_may_still_hold_the_person(database_url, log_capture):
    if not database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL keeps no write-ahead log in the hub's files")
    config = Config(database_url=database_url, raw={"database": {"busy_timeout_ms": 200}})
    async with Hub.open(config, autoload=True) as hub:
        (ann,) = await send(hub, ev("a1", 0, {"street": "12 Quince Lane"}, email="ann@example.com"))
        # another process reading in a long transaction holds the log's older pages
        reader = sqlite3.connect(make_url(database_url).database or "")
        try:
            reader.execute("BEGIN")
            assert reader.execute("SELECT count(*) FROM events").fetchone() == (1,)
            erasure = await erase_customer(hub, ann.customer_id)
        finally:
            reader.rollback()
            reader.close()
        assert erasure.events == 1
        (warning,) = [e for e in log_capture.entries if "write-ahead log" in e["event"]]
        assert warning["level"] == "warning" and "later checkpoint" in warning["event"]
        assert await hub.store.checkpoint()  # the reader gone, the next checkpoint clears it
