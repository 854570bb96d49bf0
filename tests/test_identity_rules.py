"""Identity rules: placeholder values link no one, a limited namespace never gets a second
value on one customer, conflicts are kept for review and resolved, the preview writes nothing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from attrs import evolve
from positions import after

from prm_core.errors import ConfigError
from prm_core.hub import Hub
from prm_core.identity_review import list_conflicts, preview, resolve_conflict
from prm_core.store.tables import customers, events, identities, identity_conflicts, merges

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


async def send(hub: Hub, event_id: str, minutes: float = 0, **idents: str) -> Any:
    body = {"events": [{"id": event_id, "type": "identify", "occurred_at": at(minutes), "identities": idents}]}
    (recorded,) = await hub.record(hub.parse_events(body, "web"))
    return recorded


async def rows(hub: Hub, query: Any) -> list[Any]:
    return await hub.store.read(lambda conn: list(conn.execute(query)))


async def holders(hub: Hub, namespace: str, value: str) -> list[str]:
    c = identities.c
    return [
        r.customer_id
        for r in await rows(hub, sa.select(c.customer_id).where(c.namespace == namespace, c.value == value))
    ]


@pytest.mark.parametrize("placeholder", ["undefined", "NULL", "0", "N/A", "anonymous", "0000000000"])
async def test_a_placeholder_user_id_links_no_one(hub, placeholder):
    ann = await send(hub, "e1", email="ann@example.com", user_id=placeholder)
    bob = await send(hub, "e2", 1, email="bob@example.com", user_id=placeholder)
    assert ann.customer_id != bob.customer_id
    assert await rows(hub, sa.select(merges)) == []
    assert await holders(hub, "user_id", placeholder) == []
    # recorded all the same, with what it said
    logged = await rows(hub, sa.select(events.c.event_id, events.c.identities).order_by(events.c.event_id))
    assert [r.event_id for r in logged] == ["e1", "e2"]
    assert f"user_id:{placeholder}" in logged[0].identities


async def test_placeholder_emails_and_phones_are_blocked_once_normalized(hub):
    ann = await send(hub, "e1", email="Test@Test.com ", phone="000-000-0000")
    bob = await send(hub, "e2", 1, email="test@test.com", phone="0000000000")
    assert ann.customer_id != bob.customer_id
    assert await rows(hub, sa.select(identities)) == []


@pytest.mark.parametrize("value", ["1000000", "25000000", "4400000000"])
async def test_a_real_id_ending_in_zeros_still_links(hub, value):
    first = await send(hub, "e1", email="ann@example.com", loyalty_card=value)
    second = await send(hub, "e2", 1, email="ann.other@example.com", loyalty_card=value)
    # not a placeholder: the card links both events to one customer, who holds it
    assert second.customer_id == first.customer_id
    assert await holders(hub, "loyalty_card", value) == [first.customer_id]


async def test_an_event_of_placeholders_alone_is_a_customer_of_its_own(hub):
    first = await send(hub, "e1", user_id="undefined")
    second = await send(hub, "e2", 1, user_id="undefined")
    assert first.customer_id != second.customer_id


async def test_a_second_user_id_through_an_email_is_a_conflict_not_a_merge(hub):
    ann = await send(hub, "e1", user_id="U-1", email="shared@example.com")
    other = await send(hub, "e2", 1, user_id="U-2", email="shared@example.com")
    # user_id is the stronger identity: the event goes to U-2's customer (a new one)
    assert other.customer_id != ann.customer_id
    assert await holders(hub, "user_id", "U-2") == [other.customer_id]
    assert await holders(hub, "email", "shared@example.com") == [ann.customer_id]
    (conflict,) = await list_conflicts(hub)
    assert conflict["customer_id"] == other.customer_id
    assert conflict["apart"] == [ann.customer_id]
    assert conflict["namespaces"] == ["user_id"]
    assert conflict["event_id"] == "e2"
    assert sorted(conflict["identities"]) == ["email:shared@example.com", "user_id:U-2"]
    # U-2 comes back alone: its own customer, no new conflict
    again = await send(hub, "e3", 2, user_id="U-2")
    assert again.customer_id == other.customer_id
    assert len(await list_conflicts(hub)) == 1


async def test_a_merge_that_would_join_two_user_ids_keeps_them_apart(hub):
    ann = await send(hub, "e1", user_id="U-1", email="ann@example.com")
    bob = await send(hub, "e2", 1, user_id="U-2", phone="+14155550100")
    both = await send(hub, "e3", 2, email="ann@example.com", phone="+14155550100")
    # email is stronger than phone: the event is Ann's
    assert both.customer_id == ann.customer_id
    assert await rows(hub, sa.select(merges)) == []
    (conflict,) = await list_conflicts(hub)
    assert (conflict["customer_id"], conflict["apart"], conflict["left_out"]) == (
        ann.customer_id,
        [bob.customer_id],
        ["phone"],
    )


async def test_a_merge_within_the_limit_still_happens(hub):
    ann = await send(hub, "e1", user_id="U-1", email="ann@example.com")
    anon = await send(hub, "e2", 1, anonymous_id="a-1", phone="+14155550100")
    both = await send(hub, "e3", 2, email="ann@example.com", anonymous_id="a-1")
    assert both.customer_id == ann.customer_id
    assert [(r.survivor_id, r.merged_id) for r in await rows(hub, sa.select(merges))] == [
        (ann.customer_id, anon.customer_id)
    ]
    assert await list_conflicts(hub) == []


async def test_conflicts_within_one_batch_hold_the_limit(hub):
    body = {
        "events": [
            {
                "id": "b1",
                "type": "identify",
                "occurred_at": at(0),
                "identities": {"anonymous_id": "a-1", "user_id": "U-1"},
            },
            {
                "id": "b2",
                "type": "identify",
                "occurred_at": at(1),
                "identities": {"anonymous_id": "a-1", "user_id": "U-2"},
            },
            {
                "id": "b3",
                "type": "identify",
                "occurred_at": at(2),
                "identities": {"anonymous_id": "a-1", "user_id": "U-1"},
            },
        ]
    }
    one, two, three = await hub.record(hub.parse_events(body, "web"))
    assert one.customer_id == three.customer_id != two.customer_id
    assert await holders(hub, "anonymous_id", "a-1") == [one.customer_id]
    assert len(await list_conflicts(hub)) == 1


async def test_resolving_by_merge_joins_them_and_gives_the_left_out_identity(hub):
    ann = await send(hub, "e1", user_id="U-1", email="ann@example.com")
    bob = await send(hub, "e2", 1, user_id="U-2", phone="+14155550100")
    await send(hub, "e3", 2, email="ann@example.com", phone="+14155550100")
    (conflict,) = await list_conflicts(hub)
    done = await resolve_conflict(hub, conflict["id"], "merge")
    assert done["status"] == "merged" and done["resolved_at"] is not None
    assert [(r.survivor_id, r.merged_id) for r in await rows(hub, sa.select(merges))] == [
        (ann.customer_id, bob.customer_id)
    ]
    assert await holders(hub, "user_id", "U-2") == [ann.customer_id]
    assert await list_conflicts(hub) == []
    assert [c["id"] for c in await list_conflicts(hub, status="merged")] == [conflict["id"]]


async def test_resolving_by_split_gives_left_out_identities_a_customer_of_their_own(hub):
    hub = evolve(hub)  # the same hub; rules read from its ingestor
    ann = await send(hub, "e1", user_id="U-1", email="ann@example.com")
    await send(hub, "e2", 1, user_id="U-2", email="ann@example.com")
    (conflict,) = await list_conflicts(hub)
    # the left-out email is Ann's already: a split has nothing to hand out, and merges nothing
    done = await resolve_conflict(hub, conflict["id"], "split")
    assert done["status"] == "split"
    assert await holders(hub, "email", "ann@example.com") == [ann.customer_id]
    assert await rows(hub, sa.select(merges)) == []


async def test_a_split_hands_out_an_identity_no_one_holds(hub_config, hub_plugins):
    config = evolve(hub_config, raw={"identity": {"rules": {"loyalty_card": {"limit": 1, "priority": 9}}}})
    async with Hub.open(config, plugins=hub_plugins, autoload=True) as hub:
        ann = await send(hub, "e1", user_id="U-1", loyalty_card="L-1")
        same = await send(hub, "e2", 1, user_id="U-1", loyalty_card="L-2")
        assert same.customer_id == ann.customer_id
        assert await holders(hub, "loyalty_card", "L-2") == []
        (conflict,) = await list_conflicts(hub)
        assert (conflict["left_out"], conflict["apart"]) == (["loyalty_card"], [])
        await resolve_conflict(hub, conflict["id"], "split")
        (owner,) = await holders(hub, "loyalty_card", "L-2")
        assert owner != ann.customer_id
        assert len(await rows(hub, sa.select(customers))) == 2


async def test_dismiss_changes_nothing_and_a_second_resolution_is_refused(hub):
    await send(hub, "e1", user_id="U-1", email="ann@example.com")
    await send(hub, "e2", 1, user_id="U-2", email="ann@example.com")
    (conflict,) = await list_conflicts(hub)
    before = await rows(hub, sa.select(identities).order_by(identities.c.namespace))
    assert (await resolve_conflict(hub, conflict["id"], "dismiss"))["status"] == "dismissed"
    assert await rows(hub, sa.select(identities).order_by(identities.c.namespace)) == before
    from prm_core.errors import InvalidInput, NotFound

    with pytest.raises(InvalidInput) as refused:
        await resolve_conflict(hub, conflict["id"], "merge")
    assert refused.value.field == "id"
    with pytest.raises(InvalidInput) as unknown:
        await resolve_conflict(hub, conflict["id"], "forget")
    assert unknown.value.field == "resolution"
    with pytest.raises(NotFound):
        await resolve_conflict(hub, "idc_nope", "dismiss")


async def test_the_preview_answers_and_writes_nothing(hub):
    ann = await send(hub, "e1", user_id="U-1", email="ann@example.com")
    anon = await send(hub, "e2", 1, anonymous_id="a-1")
    before = [await rows(hub, sa.select(t)) for t in (customers, identities, identity_conflicts, merges)]

    new = await preview(hub, {"email": "new@example.com", "user_id": "undefined"})
    assert (new["outcome"], new["customer_id"], new["blocked"], new["written"]) == (
        "new_customer",
        None,
        ["user_id"],
        False,
    )
    same = await preview(hub, {"email": "ANN@example.com"})
    assert (same["outcome"], same["customer_id"]) == ("existing_customer", ann.customer_id)
    merge = await preview(hub, {"email": "ann@example.com", "anonymous_id": "a-1"})
    assert (merge["outcome"], merge["customer_id"], merge["merges"]) == ("merge", ann.customer_id, [anon.customer_id])
    conflict = await preview(hub, {"email": "ann@example.com", "user_id": "U-2"})
    assert conflict["outcome"] == "conflict"
    assert conflict["customer_id"] is None and conflict["apart"] == [ann.customer_id]
    assert conflict["rules"] == [{"namespace": "user_id", "limit": 1, "priority": 1}]

    after = [await rows(hub, sa.select(t)) for t in (customers, identities, identity_conflicts, merges)]
    assert after == before


async def test_configured_blocked_values_and_patterns(hub_config, hub_plugins):
    rules = {"user_id": {"blocked": ["guest", "/^test-\\d+$/"]}, "email": {"blocked": ["noreply@shop.example"]}}
    config = evolve(hub_config, raw={"identity": {"rules": rules}})
    async with Hub.open(config, plugins=hub_plugins, autoload=True) as hub:
        a = await send(hub, "e1", user_id="Guest", email="a@example.com")
        b = await send(hub, "e2", 1, user_id="guest", email="b@example.com")
        c = await send(hub, "e3", 2, user_id="TEST-17", email="c@example.com")
        d = await send(hub, "e4", 3, user_id="test-17", email="d@example.com")
        e = await send(hub, "e5", 4, user_id="u-5", email="NoReply@shop.example")
        f = await send(hub, "e6", 5, user_id="u-6", email="noreply@shop.example")
        assert len({r.customer_id for r in (a, b, c, d, e, f)}) == 6
        assert sorted(
            r.value for r in await rows(hub, sa.select(identities.c.value).where(identities.c.namespace == "user_id"))
        ) == ["u-5", "u-6"]


async def test_a_raised_limit_lets_a_customer_hold_more(hub_config, hub_plugins):
    config = evolve(hub_config, raw={"identity": {"rules": {"user_id": {"limit": 2}}}})
    async with Hub.open(config, plugins=hub_plugins, autoload=True) as hub:
        one = await send(hub, "e1", user_id="U-1", email="ann@example.com")
        two = await send(hub, "e2", 1, user_id="U-2", email="ann@example.com")
        three = await send(hub, "e3", 2, user_id="U-3", email="ann@example.com")
        assert one.customer_id == two.customer_id != three.customer_id
        assert len(await list_conflicts(hub)) == 1


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"fax": {"limit": 1}}, "[identity.rules.fax] names unknown namespace 'fax'"),
        ({"user_id": {"blocked": ["/([a-z/"]}}, "[identity.rules.user_id].blocked[0] is not a valid pattern"),
        ({"user_id": {"limit": "one"}}, "[identity.rules.user_id].limit must be a whole number"),
        ({"email": {"priority": 0}}, "[identity.rules.email].priority must be a whole number of at least 1"),
        ({"email": {"blocked": "x"}}, "[identity.rules.email].blocked must be a list"),
        ({"email": {"limits": 1}}, "[identity.rules.email].limits is not a setting"),
    ],
)
async def test_a_bad_rule_stops_the_hub_naming_the_key(hub_config, hub_plugins, rules, message):
    config = evolve(hub_config, raw={"identity": {"rules": rules}})
    with pytest.raises(ConfigError) as stopped:
        async with Hub.open(config, plugins=hub_plugins, autoload=True):
            pass
    assert message in str(stopped.value)


def test_prm_serve_with_a_bad_rule_stops_with_one_line(tmp_path):
    (tmp_path / "prm.toml").write_text('[identity.rules.user_id]\nblocked = ["/(/"]\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRM_")}
    done = subprocess.run(
        [sys.executable, "-m", "prm_core.cli", "serve", "--port", "0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "Error: [identity.rules.user_id].blocked[0] is not a valid pattern" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "prm-data").exists()  # refused before the database is touched


# ---- over HTTP ------------------------------------------------------------------------------


async def test_the_routes_list_preview_and_resolve(hub_client, make_key):
    admin = await make_key("admin")
    ingest = await make_key("touchpoint:web")
    h = {"Authorization": f"Bearer {admin}"}
    for n, idents in enumerate(
        [{"user_id": "U-1", "email": "ann@example.com"}, {"user_id": "U-2", "email": "ann@example.com"}]
    ):
        body = {"events": [{"id": f"h{n}", "type": "identify", "occurred_at": at(n), "identities": idents}]}
        resp = await hub_client.post(
            "/v1/touchpoints/web/events", json=body, headers={"Authorization": f"Bearer {ingest}"}
        )
        assert resp.status < 300, await resp.text()
    # the conflict is found as the events are recorded: read after the last one's position
    assert (await hub_client.get(f"/v1/customers/user_id:U-1{after(await resp.json())}", headers=h)).ok
    resp = await hub_client.get("/v1/identity/conflicts", headers=h)
    assert resp.status == 200
    (conflict,) = (await resp.json())["conflicts"]

    resp = await hub_client.post("/v1/identity/preview", json={"identities": {"user_id": "U-1"}}, headers=h)
    assert resp.status == 200 and (await resp.json())["outcome"] == "existing_customer"
    resp = await hub_client.post("/v1/identity/preview", json={"identities": {"fax": "1"}}, headers=h)
    assert resp.status == 422 and (await resp.json())["error"]["field"] == "identities.fax"
    resp = await hub_client.post("/v1/identity/preview", json={"identities": {}}, headers=h)
    assert resp.status == 422 and (await resp.json())["error"]["field"] == "identities"

    resp = await hub_client.post(f"/v1/identity/conflicts/{conflict['id']}", json={"resolution": "maybe"}, headers=h)
    assert resp.status == 422 and (await resp.json())["error"]["field"] == "resolution"
    resp = await hub_client.post(f"/v1/identity/conflicts/{conflict['id']}", json={"resolution": "dismiss"}, headers=h)
    assert resp.status == 200 and (await resp.json())["status"] == "dismissed"
    resp = await hub_client.get("/v1/identity/conflicts?status=whatever", headers=h)
    assert resp.status == 422 and (await resp.json())["error"]["field"] == "status"
    # an ingest key reads no conflicts
    resp = await hub_client.get("/v1/identity/conflicts", headers={"Authorization": f"Bearer {ingest}"})
    assert resp.status == 403


def test_the_cli_lists_and_resolves_conflicts(database_url):
    from click.testing import CliRunner

    from prm_core.cli import main
    from prm_core.config import Config

    async def record() -> None:
        async with Hub.open(Config(database_url=database_url), autoload=True) as hub:
            await send(hub, "e1", user_id="U-1", email="ann@example.com")
            await send(hub, "e2", 1, user_id="U-2", email="ann@example.com")

    asyncio.run(record())
    runner = CliRunner()
    listed = runner.invoke(main, ["identity", "conflicts", "--database", database_url])
    assert listed.exit_code == 0, listed.output
    head, row = listed.output.splitlines()
    assert head.split()[:3] == ["id", "event", "customer"]
    conflict_id = row.split()[0]
    assert row.split()[1] == "web/e2" and "user_id" in row
    done = runner.invoke(main, ["identity", "resolve", conflict_id, "merge", "--database", database_url])
    assert done.exit_code == 0, done.output
    assert done.output.startswith(f"{conflict_id}: merged")
    assert (
        runner.invoke(main, ["identity", "conflicts", "--database", database_url]).output
        == "no open identity conflicts\n"
    )
    again = runner.invoke(main, ["identity", "resolve", conflict_id, "dismiss", "--database", database_url])
    assert again.exit_code == 1 and "already merged" in again.output
