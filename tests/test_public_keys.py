"""Public (browser) keys: anyone can read them, so they send events to a touch point that
declares browser use and do nothing else, whatever their scope says and however they were made."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import WSServerHandshakeError
from click.testing import CliRunner

from prm_core import hookimpl
from prm_core.cli import main
from prm_core.errors import InvalidInput
from prm_core.keys import _digest, create_key
from prm_core.model import TouchPoint
from prm_core.server.state import HUB
from prm_core.store.tables import api_keys, utcnow

CTI = "/v1/touchpoints/callcenter/events"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def legacy_public_key(hub_client: Any, scope: str) -> str:
    """A public key as ``prm keys create --public`` made it before browser use was checked."""
    key, record = await create_key(hub_client.app[HUB].store, scope, public=True)
    assert record.public
    return key


async def test_a_public_call_center_key_gets_no_ticket_and_no_screen_pops(hub_client, make_key):
    public = await legacy_public_key(hub_client, "touchpoint:callcenter")
    resp = await hub_client.post("/v1/agents/a-1/screenpop/tickets", headers=bearer(public))
    assert resp.status == 403, await resp.text()
    assert "public key" in (await resp.json())["error"]["message"]
    with pytest.raises(WSServerHandshakeError) as refused:
        await hub_client.ws_connect("/v1/agents/a-1/screenpop?since=0", headers=bearer(public))
    assert refused.value.status == 403
    # the secret key of the same scope still works
    secret = await make_key("touchpoint:callcenter")
    assert (await hub_client.post("/v1/agents/a-1/screenpop/tickets", headers=bearer(secret))).status == 200


async def test_a_public_key_of_a_touch_point_without_browsers_sends_nothing(hub_client):
    public = await legacy_public_key(hub_client, "touchpoint:callcenter")
    call = {"id": "c1", "type": "call.offered", "occurred_at": "2026-11-23T09:00:00Z", "data": {"call_id": "c1"}}
    resp = await hub_client.post(CTI, json=call, headers=bearer(public))
    assert resp.status == 403, await resp.text()
    # the generic route that takes public keys, with a touch point that declares no browser use
    pos = await legacy_public_key(hub_client, "touchpoint:pos")
    page = {"id": "p1", "type": "page", "occurred_at": "2026-11-23T09:00:00Z", "identities": {"anonymous_id": "d"}}
    for tp, key in (("pos", pos), ("callcenter", public)):
        resp = await hub_client.post(f"/v1/touchpoints/{tp}/requests", json=page, headers=bearer(key))
        assert resp.status == 403 and "takes no public keys" in (await resp.json())["error"]["message"]


async def test_a_web_public_key_sends_events_and_reads_nothing(hub_client, make_key):
    public = await make_key("touchpoint:web", public=True)
    page = {"id": "p1", "type": "page", "occurred_at": "2026-11-23T09:00:00Z", "identities": {"anonymous_id": "d"}}
    assert (await hub_client.post("/v1/touchpoints/web/events", json=page, headers=bearer(public))).status == 200
    answer = await hub_client.post("/v1/touchpoints/web/requests", json={**page, "id": "p2"}, headers=bearer(public))
    assert answer.status == 200
    # the portal's stream of partner work is for its backend's secret key: the authorization
    # matrix (tests/test_authorization_matrix.py, with a partner, so the stream is mounted) shows the 403


async def test_public_keys_are_made_only_for_touch_points_browsers_send_to(hub_client, make_key):
    for scope in ("touchpoint:callcenter", "touchpoint:pos", "touchpoint:ivr"):
        with pytest.raises(InvalidInput, match="takes no public keys"):
            await make_key(scope, public=True)
    assert await make_key("touchpoint:web", public=True)


def test_prm_keys_create_refuses_a_public_key_without_browser_use(database_url):
    runner = CliRunner()
    args = ["keys", "create", "--database", database_url, "--public", "--scope"]
    refused = runner.invoke(main, [*args, "touchpoint:callcenter"])
    assert refused.exit_code != 0
    message = refused.output.strip().splitlines()
    assert message == [
        "Error: touchpoint:callcenter takes no public keys (browsers do not send to it); "
        "public keys are for touchpoint:web"
    ], refused.output
    made = runner.invoke(main, [*args, "touchpoint:web"])
    assert made.exit_code == 0, made.output
    assert made.output.strip().splitlines()[-1].startswith("prm_")


class AdminKiosk:
    """A touch point browsers send to whose name is also a scope's (``admin``)."""

    @hookimpl
    def prm_touchpoints(self, config: Any) -> list[TouchPoint]:
        return [TouchPoint(name="admin", channel="web", budget_ms=1000, public_keys=True)]


class TestAPublicKeyOfAnotherScope:
    """A public key whose scope names no touch point (planted in the database, as an older hub or
    a hand-made row left it) is refused, even where a touch point of the scope's name takes them."""

    @pytest.fixture
    def hub_plugins(self) -> list[Any]:
        return [AdminKiosk()]

    async def test_is_refused_even_by_a_touch_point_named_like_its_scope(self, hub_client, make_key):
        secret = "s" * 43

        def plant(conn: Any) -> None:
            conn.execute(
                api_keys.insert().values(
                    id="00000000000000ad", name="", scope="admin", public=True, secret_hash=_digest(secret),
                    created_at=utcnow(),
                )
            )  # fmt: skip

        await hub_client.app[HUB].store.write(plant)
        page = {"id": "p1", "type": "page", "occurred_at": "2026-11-23T09:00:00Z", "identities": {"anonymous_id": "d"}}
        resp = await hub_client.post(
            "/v1/touchpoints/admin/events", json=page, headers=bearer(f"prm_00000000000000ad_{secret}")
        )
        assert resp.status == 403, await resp.text()
        message = (await resp.json())["error"]["message"]
        assert message == "'admin' takes no public keys: only a touch point browsers send to does"
        # the touch point's own public key is taken there
        kiosk = await make_key("touchpoint:admin", public=True)
        assert (await hub_client.post("/v1/touchpoints/admin/events", json=page, headers=bearer(kiosk))).status == 200
