"""Erasure: DELETE /v1/customers/{ref} removes personal data for good, keeps aggregates
anonymous, and leaves tombstones so that replayed events never bring the person back."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import pytest
import sqlalchemy as sa

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
    assert await resp.json() == {"accepted": 1 - 1, "duplicates": 1}
    # older events never seen before (a late import, another touch point): acknowledged, scrubbed
    old = [
        event("old-1", 0, {"email": EMAIL}, address=STREET),
        event("old-2", 0, {"phone": PHONE, "anonymous_id": "anon-quince-7"}, name=NAME),
    ]
    resp = await hub_client.post("/v1/touchpoints/web/events", json={"events": old}, headers=bearer(ann["web"]))
    assert resp.status == 200 and (await resp.json())["accepted"] == 2
    for ref in (f"email:{EMAIL}", f"phone:{PHONE}", "anonymous_id:anon-quince-7"):
        assert (await hub_client.get(f"/v1/customers/{ref}", headers=bearer(ann["read"]))).status == 404
    after = await dump(hub_client)
    for personal in PERSONAL:
        assert personal not in after
    # a browser claiming the erased email (a public key): recorded for the device, without the claim
    claim = event("claim-1", 8, {"anonymous_id": "dev-other-8", "email": EMAIL}, street=STREET)
    resp = await hub_client.post("/v1/touchpoints/web/events", json=claim, headers=bearer(ann["public"]))
    assert resp.status == 200
    device = await (await hub_client.get("/v1/customers/anonymous_id:dev-other-8", headers=bearer(ann["read"]))).json()
    assert device["timeline"][0]["data"] == {"erased": True}
    after = await dump(hub_client)
    for personal in PERSONAL:
        assert personal not in after
    # an event that also names someone new records for them, without the erased identity
    mixed = event("new-1", 9, {"email": EMAIL, "user_id": "u-new"})
    assert (await hub_client.post("/v1/touchpoints/web/events", json=mixed, headers=bearer(ann["web"]))).status == 200
    fresh = await (await hub_client.get("/v1/customers/user_id:u-new", headers=bearer(ann["read"]))).json()
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
    assert (await hub_client.post("/v1/touchpoints/web/events", json=back, headers=bearer(ann["web"]))).status == 200
    view = await (await hub_client.get(f"/v1/customers/email:{EMAIL}", headers=bearer(ann["read"]))).json()
    assert view["id"] != ann["id"]  # a new customer: the erased history stays erased
    # the phone was not lifted
    again = event("back-2", 31, {"phone": PHONE})
    assert (await hub_client.post("/v1/touchpoints/web/events", json=again, headers=bearer(ann["web"]))).status == 200
    assert (await hub_client.get(f"/v1/customers/phone:{PHONE}", headers=bearer(ann["read"]))).status == 404
    assert (await hub_client.delete("/v1/tombstones/nonsense", headers=bearer(ann["admin"]))).status == 422


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
