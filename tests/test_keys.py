"""API keys: a key is only as good as its secret, a revoked key stops working within the
cache's lifetime (at once in the process that revoked it), and revoking twice says so."""

from __future__ import annotations

import secrets

import pytest
from click.testing import CliRunner

from prm_core.cli import main
from prm_core.errors import InvalidInput
from prm_core.keys import (
    KeyRing,
    _digest,
    allows,
    check_scope_target,
    create_key,
    list_keys,
    revoke_key,
    validate_scope,
)
from prm_core.server.state import HUB, HUB_KEYS
from prm_core.store.tables import api_keys, utcnow

CUSTOMER = "/v1/customers/user_id:u-1"


def key_id(key: str) -> str:
    return key.split("_")[1]


def other_secret(key: str) -> str:
    """The same key id with another (well-formed) secret."""
    prefix, kid, _secret = key.split("_", 2)
    return f"{prefix}_{kid}_{secrets.token_urlsafe(32)}"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def status(hub_client, key: str) -> int:
    resp = await hub_client.get(CUSTOMER, headers=bearer(key))
    body = await resp.json()
    if resp.status == 401:
        assert body["error"]["code"] == "unauthorized"
    return resp.status


async def test_a_wrong_secret_on_a_real_key_id_is_refused(hub):
    key, record = await create_key(hub.store, "read", name="reports")
    ring = KeyRing(hub.store)
    assert await ring.verify(other_secret(key)) is None  # before the key is cached
    verified = await ring.verify(key)
    assert verified == record
    assert (verified.name, verified.scope, verified.public) == ("reports", "read", False)
    assert await ring.verify(other_secret(key)) is None  # and from the cache
    assert await ring.verify(key) == record


async def test_a_wrong_secret_on_a_real_key_id_is_401_over_http(hub_client, make_key):
    key = await make_key("read")
    assert await status(hub_client, other_secret(key)) == 401
    assert await status(hub_client, key) == 404  # the key works: the customer is unknown
    assert await status(hub_client, other_secret(key)) == 401


@pytest.mark.parametrize(
    "presented",
    ["", "prm_", "prm_0123456789abcdef", "prm_0123456789ABCDEF_" + "x" * 40, "key_0123456789abcdef_" + "x" * 40],
)
async def test_a_malformed_key_is_refused(hub, presented):
    assert await KeyRing(hub.store).verify(presented) is None


async def test_a_revoked_key_is_refused_once_the_cache_lifetime_has_passed(hub, frozen_clock):
    key, record = await create_key(hub.store, "touchpoint:web")
    ring = KeyRing(hub.store, ttl=10)
    assert await ring.verify(key) == record
    # revoked elsewhere (`prm keys revoke` is another process): this ring learns it within ttl
    assert await revoke_key(hub.store, record.id)
    frozen_clock.advance(seconds=10)
    assert await ring.verify(key) == record, "an entry is fresh for ttl seconds"
    frozen_clock.advance(seconds=0.001)
    assert await ring.verify(key) is None
    assert await ring.verify(key) is None
    frozen_clock.advance(seconds=60)
    assert await ring.verify(key) is None
    assert await KeyRing(hub.store).verify(key) is None  # a ring that never saw it


async def test_a_revoked_key_is_refused_at_once_by_the_ring_that_revoked_it(hub, frozen_clock):
    key, record = await create_key(hub.store, "admin")
    kept, _ = await create_key(hub.store, "admin")
    ring = KeyRing(hub.store)
    assert await ring.verify(key) == record
    assert await ring.verify(kept) is not None
    assert await ring.revoke(record.id)
    assert await ring.verify(key) is None
    assert await ring.verify(kept) is not None, "revoking one key leaves the others"
    assert not await ring.revoke(record.id)


async def test_a_revoked_key_is_401_over_http_after_the_cache_lifetime(hub_client, make_key, frozen_clock):
    key = await make_key("read")
    ring = hub_client.app[HUB_KEYS]
    assert await status(hub_client, key) == 404
    assert await revoke_key(hub_client.app[HUB].store, key_id(key))
    frozen_clock.advance(seconds=ring.ttl + 1)
    assert await status(hub_client, key) == 401


async def test_a_key_is_an_id_and_a_256_bit_secret_of_which_only_the_hash_is_stored(hub):
    key, record = await create_key(hub.store, "read")
    prefix, kid, secret = key.split("_", 2)
    assert (prefix, kid) == ("prm", record.id)
    assert len(kid) == 16 and int(kid, 16) >= 0
    assert len(secret) == 43, "32 random bytes, base64url without padding"
    rows = await hub.store.read(lambda conn: conn.execute(api_keys.select()).all())
    assert [(r.id, r.secret_hash) for r in rows] == [(kid, _digest(secret))]
    assert secret not in str(rows[0])


async def test_the_default_ring_honours_a_revocation_within_10_seconds(hub, frozen_clock):
    key, record = await create_key(hub.store, "read")
    ring = KeyRing(hub.store)
    assert await ring.verify(key) == record
    assert await revoke_key(hub.store, record.id)
    frozen_clock.advance(seconds=10.001)
    assert await ring.verify(key) is None


async def test_revoking_twice_or_an_unknown_key_says_so(hub):
    _, record = await create_key(hub.store, "read")
    other, _ = await create_key(hub.store, "read")
    assert await revoke_key(hub.store, record.id) is True
    assert await revoke_key(hub.store, record.id) is False
    assert await revoke_key(hub.store, "0123456789abcdef") is False
    assert await KeyRing(hub.store).verify(other) is not None, "only the named key is revoked"


def test_the_cli_revokes_once_and_says_so_the_second_time(database_url):
    runner = CliRunner()
    created = runner.invoke(main, ["keys", "create", "--scope", "read", "--database", database_url])
    assert created.exit_code == 0, created.output
    kid = key_id(created.stdout.strip().splitlines()[-1])
    first = runner.invoke(main, ["keys", "revoke", kid, "--database", database_url])
    assert first.exit_code == 0, first.output
    assert f"revoked {kid}" in first.stdout
    second = runner.invoke(main, ["keys", "revoke", kid, "--database", database_url])
    assert second.exit_code == 1
    assert f"no active key {kid}" in second.output
    assert "revoked" not in second.stdout


async def test_an_unknown_key_id_is_remembered_as_unknown_for_the_cache_lifetime(hub, frozen_clock):
    kid, secret = "0123456789abcdef", secrets.token_urlsafe(32)
    presented = f"prm_{kid}_{secret}"
    ring = KeyRing(hub.store, ttl=10)
    assert await ring.verify(presented) is None

    def insert(conn):
        conn.execute(
            api_keys.insert().values(
                id=kid, name="", scope="read", public=False, secret_hash=_digest(secret), created_at=utcnow()
            )
        )

    await hub.store.write(insert)  # the id turns up after it was looked for
    assert await ring.verify(f"prm_{'f' * 16}_{secret}") is None  # another made-up id, remembered beside it
    frozen_clock.advance(seconds=10)
    assert await ring.verify(presented) is None, "a miss is remembered for ttl seconds"
    frozen_clock.advance(seconds=0.001)
    assert (await ring.verify(presented)).id == kid


async def test_made_up_key_ids_are_remembered_up_to_a_bound(hub):
    ring = KeyRing(hub.store, max_misses=3)
    for n in range(7):
        assert await ring.verify(f"prm_{n:016x}_{'x' * 40}") is None
        assert len(ring._misses) <= 3


async def test_public_keys_only_touchpoints_and_scopes_are_checked(hub):
    for scope in ("admin", "read", "touchpoint:web", "partner:fieldservice"):
        assert validate_scope(scope) == scope
    for scope in ("touchpoint:", "Admin", "touchpoint:Web", "write", "partner:"):
        with pytest.raises(InvalidInput):
            validate_scope(scope)
    with pytest.raises(InvalidInput, match="scope"):
        await create_key(hub.store, "writer")
    key, record = await create_key(hub.store, "touchpoint:web", public=True)
    assert record.public and (await KeyRing(hub.store).verify(key)).public
    with pytest.raises(InvalidInput, match="only a touchpoint"):
        await create_key(hub.store, "read", public=True)


def test_admin_allows_everything_and_other_scopes_only_themselves():
    assert allows("admin", "read") and allows("admin", "touchpoint:web")
    assert allows("read", "read") and allows("touchpoint:web", "touchpoint:web")
    assert not allows("read", "admin")
    assert not allows("touchpoint:web", "touchpoint:pos")
    assert not allows("touchpoint:web", "read")


async def test_a_public_key_is_made_only_for_a_touch_point_browsers_send_to(hub):
    browsers = ["web", "kiosk"]
    with pytest.raises(InvalidInput) as refused:
        await create_key(hub.store, "touchpoint:pos", public=True, public_touchpoints=browsers)
    assert refused.value.message == (
        "touchpoint:pos takes no public keys (browsers do not send to it); "
        "public keys are for touchpoint:kiosk, touchpoint:web"
    )
    assert refused.value.field == "scope"
    with pytest.raises(InvalidInput) as none_here:
        await create_key(hub.store, "touchpoint:web", public=True, public_touchpoints=[])
    assert none_here.value.message.endswith("; public keys are for none here")
    # a secret key of any touch point, and a public key of one that takes them, are made
    _, secret = await create_key(hub.store, "touchpoint:pos", public_touchpoints=browsers)
    _, public = await create_key(hub.store, "touchpoint:kiosk", public=True, public_touchpoints=browsers)
    assert (secret.public, public.public) == (False, True)
    assert [(k.scope, k.public) for k in await list_keys(hub.store)] == [
        ("touchpoint:pos", False),
        ("touchpoint:kiosk", True),
    ], "a refused key is never written"


def test_a_scope_must_name_a_registered_touch_point_or_a_configured_partner():
    for scope in ("admin", "read", "touchpoint:web", "partner:acme"):
        assert check_scope_target(scope, ["web", "pos"], ["acme"]) is None
    with pytest.raises(InvalidInput) as unknown_touchpoint:
        check_scope_target("touchpoint:kiosk", ["web", "pos"], ["acme"])
    assert unknown_touchpoint.value.message == (
        "touchpoint:kiosk: 'kiosk' is not a registered touch point; known: touchpoint:pos, touchpoint:web"
    )
    with pytest.raises(InvalidInput) as unknown_partner:
        check_scope_target("partner:fieldco", ["web"], [])
    assert unknown_partner.value.message == (
        "partner:fieldco: 'fieldco' is not a configured partner ([partners.<name>]); known: none"
    )
    assert unknown_partner.value.field == "scope"
    with pytest.raises(InvalidInput, match="scope must be"):
        check_scope_target("writer", ["web"], ["acme"])


async def test_keys_are_listed_oldest_first_with_when_they_were_revoked(hub, frozen_clock):
    _, kept = await create_key(hub.store, "read", name="dashboards")
    frozen_clock.advance(seconds=1)
    _, gone = await create_key(hub.store, "admin", name="ops")
    frozen_clock.advance(seconds=1)
    assert await revoke_key(hub.store, gone.id)
    listed = await list_keys(hub.store)
    assert [(k.id, k.scope, k.name, k.public) for k in listed] == [
        (kept.id, "read", "dashboards", False),
        (gone.id, "admin", "ops", False),
    ]
    shown = [k.to_json() for k in listed]
    assert shown[0]["revoked_at"] is None
    assert shown[1]["revoked_at"] == frozen_clock.now.isoformat()
    assert shown[0]["created_at"] == kept.created_at.isoformat()
    assert [k.id for k in await list_keys(hub.store, include_revoked=False)] == [kept.id]
