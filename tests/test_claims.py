"""Identity claims from public sources: a public (browser) key or a keyless tracker may not
attach its browsing to someone else's profile, by an email typed into a form or by someone's
session id, and so can never read that profile's personalized answers. A verified source
(a secret key: the customer logging in) links the claims by the ordinary merge."""

from __future__ import annotations

from typing import Any

import pytest
from positions import after, settled

from prm_core import hookimpl
from prm_core.config import Config
from prm_core.model import Offer, ValueProvider
from prm_core.server.app import HUB

ANN = "ann@example.com"
TP2 = "/com.snowplowanalytics.snowplow/tp2"
PAYLOAD = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def ev(event_id: str, minute: int, identities: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {"id": event_id, "type": "page", "occurred_at": f"2026-11-23T08:{minute:02d}:00Z",
            "identities": identities, **extra}  # fmt: skip


class Personal:
    """What a personalized answer reveals: the customer's name, purchases, a tailored offer."""

    __name__ = "personal-answers"

    @hookimpl
    def prm_value_providers(self, config):
        async def purchases(request):
            return {"owner": request.view.customer.traits.get("first_name"), "events": len(request.view.timeline)}

        yield ValueProvider(name="purchases", about="customer", provide=purchases)

    @hookimpl
    def prm_propose_offers(self, request):
        if request.view.customer.tier == "platinum":
            yield Offer(code="platinum-upgrade", title="For our platinum customers", score=0.9)


@pytest.fixture
def hub_plugins():
    return [Personal()]


@pytest.fixture
def hub_config(database_url: str) -> Config:
    raw = {"touchpoints": {"web": {"snowplow_app_ids": ["shop"]}}}
    return Config(database_url=database_url, public_url="http://hub.test", raw=raw)


@pytest.fixture
async def keys(hub_client, make_key) -> dict[str, str]:
    k = {
        "secret": await make_key("touchpoint:web"),
        "public": await make_key("touchpoint:web", public=True),
        "admin": await make_key("admin"),
        "read": await make_key("read"),
    }
    # Ann, known to the company: a verified event, a name, a tier, a web session in progress
    first = ev("ann-1", 0, {"email": ANN, "anonymous_id": "dev-ann"}, dialogue="sess-ann")
    posted = await send(hub_client, k["secret"], first)
    assert (await hub_client.get(f"/v1/customers/email:{ANN}{posted}", headers=bearer(k["read"]))).ok
    patch = {"traits": {"first_name": "Ann"}, "tier": "platinum"}
    await hub_client.patch(f"/v1/customers/email:{ANN}", json=patch, headers=bearer(k["admin"]))
    return k


async def view(client: Any, keys: dict[str, str], ref: str) -> dict[str, Any]:
    resp = await client.get(f"/v1/customers/{ref}", headers=bearer(keys["read"]))
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def send(client: Any, key: str, body: Any) -> str:
    """Post events; the query a read that must see them adds (``?after=POSITION``)."""
    resp = await client.post("/v1/touchpoints/web/events", json=body, headers=bearer(key))
    assert resp.status == 200, await resp.text()
    return after(await resp.json())


async def ask(client: Any, key: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = await client.post("/v1/touchpoints/web/requests", json=body, headers=bearer(key))
    assert resp.status == 200, await resp.text()
    return await resp.json()


def assert_not_anns(answer: dict[str, Any], ann_id: str) -> None:
    assert answer["customer_id"] != ann_id
    delivery = answer["delivery"]
    assert delivery["customer"]["name"] is None and delivery["customer"]["tier"] is None
    assert delivery["knowledge"]["purchases"]["owner"] is None
    assert delivery["offers"] == []
    assert "Ann" not in str(answer)


async def test_a_typed_email_under_a_public_key_is_only_a_claim(hub_client, keys):
    ann = await view(hub_client, keys, f"email:{ANN}")
    typed = ev("evil-1", 5, {"anonymous_id": "dev-evil", "email": ANN}, data={"form": "newsletter"})
    posted = await send(hub_client, keys["public"], typed)
    evil = await view(hub_client, keys, f"anonymous_id:dev-evil{posted}")
    assert evil["id"] != ann["id"]
    assert evil["identities"] == [{"namespace": "anonymous_id", "value": "dev-evil"}]
    assert evil["timeline"][0]["data"]["claimed_identities"] == {"email": ANN}
    assert [t["event_id"] for t in (await view(hub_client, keys, f"email:{ANN}"))["timeline"]] == ["ann-1"]
    # and what the attacker reads back is a stranger's answer
    answer = await ask(hub_client, keys["public"], ev("evil-r", 6, {"anonymous_id": "dev-evil", "email": ANN}))
    assert_not_anns(answer, ann["id"])
    # whereas Ann's own device, with the secret key of the site's server, gets hers
    mine = await ask(hub_client, keys["secret"], ev("ann-r", 7, {"anonymous_id": "dev-ann"}))
    assert mine["customer_id"] == ann["id"] and mine["delivery"]["customer"]["name"] == "Ann"


async def test_someone_elses_session_id_attaches_nothing(hub_client, keys):
    ann = await view(hub_client, keys, f"email:{ANN}")
    hijack = ev("evil-2", 1, {"anonymous_id": "dev-evil"}, dialogue="sess-ann")
    posted = await send(hub_client, keys["public"], hijack)
    evil = await view(hub_client, keys, f"anonymous_id:dev-evil{posted}")
    assert evil["id"] != ann["id"]
    merges = await (await hub_client.get(f"/v1/customers/{ann['id']}/merges", headers=bearer(keys["read"]))).json()
    assert merges == {"merges": []}
    after = await view(hub_client, keys, f"email:{ANN}")
    assert {i["value"] for i in after["identities"]} == {ANN, "dev-ann"}
    assert [t["event_id"] for t in after["timeline"]] == ["ann-1"]
    # a request with the session id, with or without a device id of its own, is not answered as Ann
    for n, identities in enumerate(({"anonymous_id": "dev-evil"}, {"anonymous_id": "dev-new"}, {})):
        answer = await ask(hub_client, keys["public"], ev(f"evil-r{n}", 2, identities, dialogue="sess-ann"))
        assert_not_anns(answer, ann["id"])


async def test_a_keyless_tracker_cannot_join_someone_elses_session(hub_client, keys):
    ann = await view(hub_client, keys, f"email:{ANN}")
    own = {"e": "pv", "eid": "sp-ann", "aid": "shop", "duid": "dev-ann", "sid": "sp-sess-ann", "url": "https://s/"}
    body = {"schema": PAYLOAD, "data": [own]}
    assert (await hub_client.post(TP2, json=body, headers=bearer(keys["secret"]))).status == 200
    forged = {**own, "eid": "sp-evil", "duid": "dev-evil", "uid": ANN}
    assert (await hub_client.post(TP2, json={"schema": PAYLOAD, "data": [forged]})).status == 200
    await settled(hub_client.app[HUB])  # Snowplow's answer carries no position
    evil = await view(hub_client, keys, "anonymous_id:dev-evil")
    assert evil["id"] != ann["id"]
    assert "sp-evil" not in [t["event_id"] for t in (await view(hub_client, keys, f"email:{ANN}"))["timeline"]]


async def test_a_verified_source_confirms_the_claim_and_links(hub_client, keys):
    # browsing with a public key, then typing an email: a claim only
    browse = [ev("b-1", 10, {"anonymous_id": "dev-2"}), ev("b-2", 11, {"anonymous_id": "dev-2", "email": ANN})]
    resp = await hub_client.post("/v1/touchpoints/web/events", json={"events": browse}, headers=bearer(keys["public"]))
    assert resp.status == 200
    ann = await view(hub_client, keys, f"email:{ANN}{after(await resp.json())}")
    assert "dev-2" not in {i["value"] for i in ann["identities"]}
    # Ann logs in: the site's server (secret key) says this device is hers
    login = {**ev("login-1", 12, {"anonymous_id": "dev-2", "email": ANN}), "type": "login"}
    posted = await send(hub_client, keys["secret"], login)
    ann = await view(hub_client, keys, f"email:{ANN}{posted}")
    assert "dev-2" in {i["value"] for i in ann["identities"]}
    assert {"b-1", "b-2", "login-1", "ann-1"} <= {t["event_id"] for t in ann["timeline"]}
    # from now on the device gets Ann's answers
    answer = await ask(hub_client, keys["public"], ev("b-r", 13, {"anonymous_id": "dev-2"}))
    assert answer["customer_id"] == ann["id"] and answer["delivery"]["customer"]["name"] == "Ann"
