"""Erasure: DELETE /v1/customers/{ref} removes personal data for good, keeps aggregates
anonymous, and leaves tombstones so that replayed events never bring the person back."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from positions import after as read_after
from positions import counts
from sqlalchemy.engine import make_url

from prm_core import hookimpl
from prm_core.server.state import HUB
from prm_core.store.tables import metadata

EMAIL, PHONE, NAME, STREET = "annabelle.quince@example.com", "+14155550123", "Annabelle", "12 Quince Lane"
PERSONAL = (EMAIL, PHONE, NAME, STREET, "anon-quince-7")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def event(event_id: str, minute: int, identities: dict[str, str], **data: Any) -> dict[str, Any]:
    return {
        "id": event_id,
        "type": "page",
        "occurred_at": f"2026-11-23T08:{minute:02d}:00Z",
        "identities": identities,
        "data": data,
    }


class Purger:
    """A plugin keeping rows of its own about customers, purged on erasure; can be made to fail."""

    __name__ = "purger"

    def __init__(self) -> None:
        self.rows: dict[str, str] = {}
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.fail = False

    @hookimpl
    def prm_customer_erased(self, customer_id, merged_ids):
        self.calls.append((customer_id, tuple(merged_ids)))
        return self._purge([customer_id, *merged_ids])

    async def _purge(self, ids: list[str]) -> None:
        if self.fail:
            raise RuntimeError("the outbox is down")
        for cid in ids:
            self.rows.pop(cid, None)


@pytest.fixture
def purger() -> Purger:
    return Purger()


@pytest.fixture
def hub_plugins(purger):
    return [purger]


async def dump(client: Any) -> str:
    """Every row of every table, as text: what a reader of the database could find."""

    def read(conn: Any) -> str:
        out = []
        for table in metadata.sorted_tables:
            for row in conn.execute(sa.select(table)):
                out.append(f"{table.name}: {json.dumps(dict(row._mapping), default=str)}")
        return "\n".join(out)

    return await client.app[HUB].store.read(read)


@pytest.fixture
async def ann(hub_client, make_key, purger) -> dict[str, Any]:
    web, admin, read = await make_key("touchpoint:web"), await make_key("admin"), await make_key("read")
    public = await make_key("touchpoint:web", public=True)
    # on another device, never logged in: the email typed into a form, only a claim
    typed = event("t1", 0, {"anonymous_id": "dev-other-7", "email": EMAIL}, street=STREET)
    resp = await hub_client.post("/v1/touchpoints/web/events", json=typed, headers=bearer(public))
    assert resp.status == 200
    posts = [
        event("e1", 1, {"anonymous_id": "anon-quince-7"}, path="/shoes"),
        event("e2", 2, {"email": EMAIL}, address=STREET),
        event("e3", 3, {"email": EMAIL, "anonymous_id": "anon-quince-7", "phone": PHONE}, note=f"hi {NAME}"),
        {**event("k1", 3, {"email": EMAIL}), "dialogue": f"call-from-{PHONE}"},
        {**event("c1", 4, {"email": EMAIL}, purpose="marketing"), "type": "consent.granted"},
    ]
    resp = await hub_client.post("/v1/touchpoints/web/events", json={"events": posts}, headers=bearer(web))
    assert resp.status == 200, await resp.text()
    seen = await hub_client.get(f"/v1/customers/email:{EMAIL}{read_after(await resp.json())}", headers=bearer(read))
    assert seen.status == 200  # recorded, the typed claim before them too: the patch names her
    group = await (await hub_client.post("/v1/customers", json={"kind": "group"}, headers=bearer(admin))).json()
    patch = {"traits": {"first_name": NAME, "address": STREET}, "tier": "gold", "memberships": {"add": [group["id"]]}}
    view = await (await hub_client.patch(f"/v1/customers/email:{EMAIL}", json=patch, headers=bearer(admin))).json()
    merges = await (await hub_client.get(f"/v1/customers/{view['id']}/merges", headers=bearer(read))).json()
    assert len(merges["merges"]) == 1, "the seed should merge two customers"
    purger.rows[view["id"]] = EMAIL
    purger.rows[merges["merges"][0]["merged_id"]] = EMAIL
    before = await dump(hub_client)
    assert all(p in before for p in PERSONAL)
    return {"id": view["id"], "merged_id": merges["merges"][0]["merged_id"], "web": web, "admin": admin, "read": read,
            "group": group["id"], "public": public}  # fmt: skip


async def test_erasure_removes_every_trace_of_personal_data(hub_client, ann, purger):
    resp = await hub_client.delete(f"/v1/customers/phone:{PHONE}", headers=bearer(ann["admin"]))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["customer_id"] == ann["id"]
    assert set(body["erased_ids"]) == {ann["id"], ann["merged_id"]}
    assert body["identities"] == 3 and body["events"] == 5 and body["claims"] == 1 and body["incomplete"] == []

    after = await dump(hub_client)
    for personal in PERSONAL:
        assert personal not in after, f"{personal!r} is still in the database"
    # tombstones are keyed, not a plain hash anyone could recompute from a guessed email
    assert hashlib.sha256(f"email:{EMAIL}".encode()).hexdigest() not in after

    for ref in (f"email:{EMAIL}", f"phone:{PHONE}", "anonymous_id:anon-quince-7"):
        assert (await hub_client.get(f"/v1/customers/{ref}", headers=bearer(ann["read"]))).status == 404
    shell = await (await hub_client.get(f"/v1/customers/{ann['id']}", headers=bearer(ann["read"]))).json()
    assert shell["traits"] == {} and shell["tier"] is None and shell["identities"] == []
    assert shell["consents"] == [] and shell["memberships"] == []
    # aggregates stay, anonymous: the metrics row and the bare events (touch point, type, time)
    assert shell["metrics"]["event_count"] == 5
    assert {t["type"] for t in shell["timeline"]} == {"page", "consent.granted"}
    assert all(t["data"] == {"erased": True} for t in shell["timeline"])
    group = await (await hub_client.get(f"/v1/customers/{ann['group']}", headers=bearer(ann["read"]))).json()
    assert group["members"] == []
    # the plugin purged its own rows, for the survivor and the merged id
    assert purger.calls == [(ann["id"], (ann["merged_id"],))]
    assert purger.rows == {}


async def test_replayed_events_do_not_bring_the_person_back(hub_client, ann):
    assert (await hub_client.delete(f"/v1/customers/{ann['id']}", headers=bearer(ann["admin"]))).status == 200
    # the same events again: duplicates, nothing changes
    again = event("e3", 3, {"email": EMAIL, "anonymous_id": "anon-quince-7", "phone": PHONE}, note=f"hi {NAME}")
    resp = await hub_client.post("/v1/touchpoints/web/events", json=again, headers=bearer(ann["web"]))
    assert counts(await resp.json()) == {"accepted": 1 - 1, "duplicates": 1}
    # older events never seen before (a late import, another touch point): acknowledged, scrubbed
    old = [
        event("old-1", 0, {"email": EMAIL}, address=STREET),
        event("old-2", 0, {"phone": PHONE, "anonymous_id": "anon-quince-7"}, name=NAME),
    ]
    resp = await hub_client.post("/v1/touchpoints/web/events", json={"events": old}, headers=bearer(ann["web"]))
    assert resp.status == 200 and (await resp.json())["accepted"] == 2
    recorded = read_after(await resp.json())  # and only then looked for: nothing of them waits unrecorded
    for ref in (f"email:{EMAIL}", f"phone:{PHONE}", "anonymous_id:anon-quince-7"):
        assert (await hub_client.get(f"/v1/customers/{ref}{recorded}", headers=bearer(ann["read"]))).status == 404
    after = await dump(hub_client)
    for personal in PERSONAL:
        assert personal not in after
    # a browser claiming the erased email (a public key): recorded for the device, without the claim
    claim = event("claim-1", 8, {"anonymous_id": "dev-other-8", "email": EMAIL}, street=STREET)
    resp = await hub_client.post("/v1/touchpoints/web/events", json=claim, headers=bearer(ann["public"]))
    assert resp.status == 200
    ref = f"anonymous_id:dev-other-8{read_after(await resp.json())}"
    device = await (await hub_client.get(f"/v1/customers/{ref}", headers=bearer(ann["read"]))).json()
    assert device["timeline"][0]["data"] == {"erased": True}
    after = await dump(hub_client)
    for personal in PERSONAL:
        assert personal not in after
    # an event that also names someone new records for them, without the erased identity
    mixed = event("new-1", 9, {"email": EMAIL, "user_id": "u-new"})
    resp = await hub_client.post("/v1/touchpoints/web/events", json=mixed, headers=bearer(ann["web"]))
    assert resp.status == 200
    ref = f"user_id:u-new{read_after(await resp.json())}"
    fresh = await (await hub_client.get(f"/v1/customers/{ref}", headers=bearer(ann["read"]))).json()
    assert fresh["identities"] == [{"namespace": "user_id", "value": "u-new"}]
    assert fresh["id"] != ann["id"]


async def test_a_failed_plugin_purge_is_named_and_a_second_erasure_retries_it(hub_client, ann, purger):
    purger.fail = True
    first = await (await hub_client.delete(f"/v1/customers/{ann['id']}", headers=bearer(ann["admin"]))).json()
    assert first["incomplete"] == ["purger"]
    assert purger.rows  # still there
    purger.fail = False
    # by the merged-away id too: it resolves to the (erased) survivor
    second = await hub_client.delete(f"/v1/customers/{ann['merged_id']}", headers=bearer(ann["admin"]))
    assert second.status == 200
    assert (await second.json())["incomplete"] == []
    assert purger.rows == {}


async def test_erasure_needs_the_admin_scope(hub_client, ann):
    url = f"/v1/customers/email:{EMAIL}"
    assert (await hub_client.delete(url)).status == 401
    for scope in ("read", "web"):
        resp = await hub_client.delete(url, headers=bearer(ann[scope]))
        assert resp.status == 403
    assert (await hub_client.get(url, headers=bearer(ann["read"]))).status == 200
    missing = await hub_client.delete("/v1/customers/email:nobody@example.com", headers=bearer(ann["admin"]))
    assert missing.status == 404


async def test_erasure_racing_ingest_never_leaves_the_identity_behind(hub):
    """Batches naming the person keep arriving while the erasure runs (on PostgreSQL, on other
    connections): whatever order they commit in, the identity and its data end up gone."""
    from prm_core.privacy.erasure import erase_customer

    def batch(n: int) -> list[Any]:
        body = {"events": [event(f"race-{n}-{k}", k % 60, {"email": EMAIL, "anonymous_id": f"dev-{n}"},
                                 street=STREET) for k in range(5)]}  # fmt: skip
        return hub.parse_events(body, "web")

    await hub.record(batch(0))
    writers = [asyncio.ensure_future(hub.record(batch(n))) for n in range(1, 30)]
    await asyncio.sleep(0)
    await erase_customer(hub, f"email:{EMAIL}")
    await asyncio.gather(*writers)

    def leftovers(conn: Any) -> list[Any]:
        rows = conn.execute(sa.select(sa.text("namespace, value")).select_from(sa.text("identities"))).all()
        datas = conn.execute(sa.select(sa.text("data")).select_from(sa.text("events"))).all()
        return [r for r in rows if r.value == EMAIL] + [d for d in datas if STREET in str(d)]

    # events that committed after the erasure met the tombstone; those before were scrubbed by it
    assert await hub.store.read(leftovers) == []


async def test_a_lifted_tombstone_lets_the_identity_be_recorded_again(hub_client, ann):
    assert (await hub_client.delete(f"/v1/customers/email:{EMAIL}", headers=bearer(ann["admin"]))).status == 200
    url = f"/v1/tombstones/email:{EMAIL.upper()}"  # normalized like any ref
    assert (await hub_client.delete(url, headers=bearer(ann["read"]))).status == 403
    assert (await hub_client.delete(url, headers=bearer(ann["admin"]))).status == 200
    assert (await hub_client.delete(url, headers=bearer(ann["admin"]))).status == 404
    back = event("back-1", 30, {"email": EMAIL})
    resp = await hub_client.post("/v1/touchpoints/web/events", json=back, headers=bearer(ann["web"]))
    assert resp.status == 200
    ref = f"email:{EMAIL}{read_after(await resp.json())}"
    view = await (await hub_client.get(f"/v1/customers/{ref}", headers=bearer(ann["read"]))).json()
    assert view["id"] != ann["id"]  # a new customer: the erased history stays erased
    # the phone was not lifted
    again = event("back-2", 31, {"phone": PHONE})
    resp = await hub_client.post("/v1/touchpoints/web/events", json=again, headers=bearer(ann["web"]))
    assert resp.status == 200
    ref = f"phone:{PHONE}{read_after(await resp.json())}"
    assert (await hub_client.get(f"/v1/customers/{ref}", headers=bearer(ann["read"]))).status == 404
    assert (await hub_client.delete("/v1/tombstones/nonsense", headers=bearer(ann["admin"]))).status == 422


# ---- a hostile database: whatever any row holds, erasure completes and leaves nothing behind ----

DEEP = "[" * 3000 + "]" * 3000  # past SQLite's JSON depth limit (1000)
CLAIM = f'"claimed_identities": {{"email": "{EMAIL}"}}'
# (JSON text as stored, whose event it is): every odd value a parser could once let through,
# with the erased person's email claimed in some of them. SQLite keeps any text; PostgreSQL's
# jsonb only well-formed JSON (no Infinity, lone surrogate, NUL or malformed text)
HOSTILE_ANY = [
    ('{"n": 1' + "0" * 5000 + "}", "other"),
    ("{" + CLAIM + ', "n": 1e400}', "other"),
    ('{"n": -1e400, "note": "' + NAME + '"}', "ann"),
    ('{"d": ' + "[" * 500 + "]" * 500 + ", " + CLAIM + "}", "other"),
    ("[1, 2, 3]", "other"),
    ('"' + EMAIL + '"', "other"),
    ("null", "other"),
    ('{"claimed_identities": "' + EMAIL + '"}', "other"),
    ('{"claimed_identities": {"email": ["' + EMAIL + '"]}}', "other"),
]
HOSTILE_SQLITE = [
    ('{"n": Infinity}', "other"),
    ("{" + CLAIM + ', "n": NaN, "m": -Infinity}', "other"),
    ('{"street": "' + STREET + '", "n": Infinity}', "ann"),
    ('{"s": "\\ud800", ' + CLAIM + "}", "other"),
    ('{"s": "\\udfff"}', "other"),
    ('{"s": "x\\u0000y", ' + CLAIM + "}", "other"),
    ('{"s": "x\x00y", ' + CLAIM + "}", "other"),  # a NUL character in the text itself
    ('{"d": ' + DEEP + ", " + CLAIM + "}", "other"),
    ("{" + CLAIM + ', "cut": ', "other"),  # malformed: cut short
    ("not JSON, but it names " + EMAIL, "other"),
    ("", "other"),
    ('{"n": 1' + "0" * 5000 + ", " + CLAIM + "}", "other"),
]
EDGES = ["0001-01-01 00:00:00", "9999-12-31 23:59:59"]
EARLIER = "correct-horse-7731"


async def raw_dump(hub) -> str:
    """Every row of every table as the database holds it: JSON as text, never parsed."""

    def read(conn: Any) -> str:
        out = []
        for table in metadata.sorted_tables:
            if conn.dialect.name == "postgresql":
                rows = conn.exec_driver_sql(f"SELECT CAST(row_to_json(t) AS text) FROM {table.name} AS t").scalars()
            else:
                rows = (repr(tuple(r)) for r in conn.exec_driver_sql(f"SELECT * FROM {table.name}"))
            out.extend(f"{table.name}: {r}" for r in rows)
        return "\n".join(out)

    return await hub.store.read(read)


def traces(text: str | bytes) -> list[str]:
    """The personal values found in ``text``, as written or JSON-escaped."""
    found = []
    for personal in PERSONAL:
        forms = {personal, json.dumps(personal)[1:-1]}
        if any((f.encode() if isinstance(text, bytes) else f) in text for f in forms):
            found.append(personal)
    return found


async def test_erasure_completes_over_a_hostile_database_and_leaves_no_trace(hub_client, ann):
    hub = hub_client.app[HUB]
    sqlite = hub.store.dialect == "sqlite"
    rows = HOSTILE_ANY + (HOSTILE_SQLITE if sqlite else [])

    def plant(conn: Any) -> None:
        other = conn.exec_driver_sql(
            "SELECT customer_id FROM identities WHERE value = 'dev-other-7'"
        ).scalar_one()  # the device on which Ann's email was only claimed
        json_value = ":d" if sqlite else "CAST(:d AS jsonb)"
        for i, (data, owner) in enumerate(rows):
            cid = ann["id"] if owner == "ann" else other
            conn.execute(
                sa.text(
                    "INSERT INTO events (touchpoint, event_id, type, occurred_at, received_at, customer_id,"
                    " ingest_customer_id, dialogue_id, direction, identities, data) VALUES ('web', :e, 'page',"
                    f" :at, :at, :c, :c, 'd-odd', 'inbound', '[]', {json_value})"
                ).bindparams(sa.bindparam("at", type_=sa.DateTime())),
                {"e": f"odd-{i}", "at": datetime.fromisoformat(EDGES[i % 2]), "c": cid, "d": data},
            )
        # Ann's own rows at the edges of time and with what no JSON reader takes
        conn.exec_driver_sql(f"UPDATE dialogues SET opened_at = '{EDGES[0]}', last_event_at = '{EDGES[1]}'")
        odd_traits = '{"first_name": "' + NAME + '", "n": ' + ("Infinity" if sqlite else "1e400") + "}"
        # an earlier version of the row, longer: SQLite frees its space when the row changes
        earlier = '{"first_name": "' + NAME + '", "pad": "' + "p" * 300 + '", "pin": "' + EARLIER + '"}'
        conn.execute(
            sa.text(f"UPDATE customers SET traits = {json_value} WHERE id = :c"), {"d": earlier, "c": ann["id"]}
        )
        conn.execute(
            sa.text(f"UPDATE customers SET traits = {json_value} WHERE id = :c"), {"d": odd_traits, "c": ann["id"]}
        )
        if sqlite:  # a merge audit record that no longer parses, naming Ann's email
            moved = '{"identities": [["email", "' + EMAIL + '"]], "events": ['
            conn.execute(sa.text("UPDATE merges SET moved = :m"), {"m": moved})

    await hub.store.write(plant)
    assert traces(await raw_dump(hub)) == list(PERSONAL)
    if sqlite:  # the rows in the database file itself, not only in its write-ahead log
        assert await hub.store.checkpoint()
        held = await asyncio.to_thread(Path(make_url(hub.config.database_url).database or "").read_bytes)
        assert traces(held) == list(PERSONAL)
        assert EARLIER.encode() not in held  # a freed old version is zeroed where it lay
        assert await hub.store.write(lambda conn: conn.exec_driver_sql("PRAGMA secure_delete").scalar()) == 1
    resp = await hub_client.delete(f"/v1/customers/email:{EMAIL}", headers=bearer(ann["admin"]))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["customer_id"] == ann["id"]
    assert traces(await raw_dump(hub)) == []
    # the rows that named nobody erased keep what they held
    odd = "SELECT count(*) FROM events WHERE event_id = 'odd-0' AND CAST(data AS TEXT) LIKE '%0000%'"
    kept = await hub.store.read(lambda conn: conn.exec_driver_sql(odd).scalar_one())
    assert kept == 1
    if sqlite:
        # nor in the files: freed space and the write-ahead log hold no old copy
        database = Path(make_url(hub.config.database_url).database or "")
        files = [p for p in database.parent.iterdir() if p.name.startswith(database.name)]
        assert database in files
        for path in files:
            assert traces(await asyncio.to_thread(path.read_bytes)) == [], f"{path.name} still holds personal data"
    # and the hub goes on: another customer's events and the erased shell read back fine
    resp = await hub_client.post("/v1/touchpoints/web/events", json=event("after", 9, {"email": "zed@example.com"}),
                                 headers=bearer(ann["web"]))  # fmt: skip
    assert resp.status == 200, await resp.text()
    assert (await hub_client.get(f"/v1/customers/{ann['id']}", headers=bearer(ann["read"]))).status == 200


async def test_erasing_one_customer_leaves_everyone_else_as_they_were(hub):
    from prm_core.privacy.erasure import erase_customer

    def batch(who: str, phone: str) -> list[Any]:
        ids = {"email": f"{who}@example.com", "phone": phone}
        body = {"events": [event(f"{who}-{k}", k, ids, street=f"{k} {who} Street") for k in range(3)]}
        return hub.parse_events(body, "web")

    (ann, *_), (bob, *_) = await hub.record(batch("ann", "4155550100")), await hub.record(batch("bob", "4155550199"))
    club = await hub.create_customer("group", {"name": "Club"})
    for member in (ann.customer_id, bob.customer_id):
        await hub.update_customer(member, {"memberships": {"add": [club.id]}})

    def everything(conn: Any) -> dict[str, Any]:
        tables = ("identities", "events", "memberships", "customers", "dialogues", "customer_metrics")
        return {t: sorted(map(str, conn.execute(sa.select(metadata.tables[t])).all())) for t in tables}

    def others(state: dict[str, Any]) -> dict[str, Any]:
        return {t: [r for r in rows if ann.customer_id not in r] for t, rows in state.items()}

    before = await hub.store.read(everything)
    await erase_customer(hub, "email:ann@example.com")
    after = await hub.store.read(everything)
    assert others(after) == others(before)
    assert any("bob@example.com" in r for r in after["identities"])
    assert not any("ann@example.com" in r or "ann Street" in r for t in after.values() for r in t)
