"""The call-center touch point: CTI events over HTTP, each call one dialogue, the caller by ANI."""

from __future__ import annotations

from typing import Any

import pytest

from prm_core.server.state import HUB
from prm_core.testing.conformance import TouchPointConformance

CTI = "/v1/touchpoints/callcenter/events"


def cti(event_id: str, event_type: str, minute: int = 0, **data: Any) -> dict[str, Any]:
    return {"id": event_id, "type": event_type, "occurred_at": f"2026-11-23T09:{minute:02d}:00Z", "data": data}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def post(client: Any, key: str, *events: dict[str, Any]) -> Any:
    return await client.post(CTI, json={"events": list(events)}, headers=bearer(key))


async def view(client: Any, read: str, ref: str) -> Any:
    resp = await client.get(f"/v1/customers/{ref}?limit=50", headers=bearer(read))
    return resp.status, await resp.json()


async def test_a_call_is_one_dialogue_of_the_caller_found_by_ani(hub_client, make_key):
    key, read = await make_key("touchpoint:callcenter"), await make_key("read")
    call = {"call_id": "c-100", "dnis": "+18005550199", "queue": "support"}
    resp = await post(
        hub_client,
        key,
        cti("e1", "call.offered", 0, ani="(415) 555-0100", agent_id="a-7", **call),  # national: default region US
        cti("e2", "call.answered", 1, agent_id="a-7", **call),
        cti("e3", "call.transferred", 3, agent_id="a-7", to_agent_id="a-9", **call),
        cti("e4", "call.ended", 6, **call),
    )
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"accepted": 4, "duplicates": 0}
    # the note comes after the hang-up, with nothing but the call id: it joins the same call
    note = cti("e5", "agent.note", 8, call_id="c-100", agent_id="a-9", text="wants a visit")
    note = await post(hub_client, key, note)
    assert note.status == 200, await note.text()

    status, body = await view(hub_client, read, "phone:+14155550100")
    assert status == 200
    (dialogue,) = body["dialogues"]
    assert (dialogue["touchpoint"], dialogue["ref"], dialogue["status"]) == ("callcenter", "c-100", "closed")
    types = [t["type"] for t in reversed(body["timeline"])]
    assert types == ["call.offered", "call.answered", "call.transferred", "call.ended", "agent.note"]
    assert {t["dialogue"] for t in body["timeline"]} == {dialogue["id"]}
    offered = body["timeline"][-1]["data"]
    assert (offered["agent_id"], offered["queue"], offered["dnis"]) == ("a-7", "support", "+18005550199")


async def test_the_outcome_the_agent_sets_closes_the_call_with_it(hub_client, make_key):
    key, read = await make_key("touchpoint:callcenter"), await make_key("read")
    resp = await post(
        hub_client,
        key,
        cti("o1", "call.offered", 0, call_id="c-2", ani="+14155550111", agent_id="a-1"),
        cti("o2", "call.outcome", 4, call_id="c-2", agent_id="a-1", outcome="resolved"),
    )
    assert resp.status == 200, await resp.text()
    _, body = await view(hub_client, read, "phone:+14155550111")
    (dialogue,) = body["dialogues"]
    assert (dialogue["status"], dialogue["outcome"]) == ("closed", "resolved")


async def test_the_outcome_set_after_the_hang_up_is_the_calls(hub_client, make_key):
    key, read = await make_key("touchpoint:callcenter"), await make_key("read")
    resp = await post(
        hub_client,
        key,
        cti("h1", "call.offered", 0, call_id="c-8", ani="+14155550118", agent_id="a-1"),
        cti("h2", "call.ended", 3, call_id="c-8"),
        cti("h3", "call.outcome", 5, call_id="c-8", agent_id="a-1", outcome="resolved"),
    )
    assert resp.status == 200, await resp.text()
    _, body = await view(hub_client, read, "phone:+14155550118")
    (dialogue,) = body["dialogues"]
    assert (dialogue["status"], dialogue["outcome"]) == ("closed", "resolved")


async def test_calls_are_idempotent_on_the_event_id(hub_client, make_key):
    key = await make_key("touchpoint:callcenter")
    event = cti("d1", "call.offered", 0, call_id="c-3", ani="+14155550112", agent_id="a-1")
    assert await (await post(hub_client, key, event)).json() == {"accepted": 1, "duplicates": 0}
    assert await (await post(hub_client, key, event)).json() == {"accepted": 0, "duplicates": 1}


async def test_a_withheld_caller_id_is_a_caller_without_a_phone(hub_client, make_key):
    key, read = await make_key("touchpoint:callcenter"), await make_key("read")
    resp = await post(hub_client, key, cti("w1", "call.offered", 0, call_id="c-4", ani="Anonymous", agent_id="a-1"))
    assert resp.status == 200, await resp.text()
    hub = hub_client.app[HUB]
    recorded = await hub.record(hub.parse_events(cti("w1", "call.offered", 0, call_id="c-4"), "callcenter"))
    status, body = await view(hub_client, read, recorded[0].customer_id)
    assert status == 200
    assert body["identities"] == []


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (cti("x", "call.offered", 0, ani="+14155550100"), "events[1].data.call_id"),
        (cti("x", "call.offered", 0, call_id="c-9", ani="not a number"), "events[1].data.ani"),
        (cti("x", "call.offered", 0, call_id="c-9", ani=14155550100), "events[1].data.ani"),
        (cti("x", "call.offered", 0, call_id={"id": 1}), "events[1].data.call_id"),
        (cti("x", "call.offered", 0, call_id="c-9", agent_id=""), None),  # empty is absent: accepted
        (cti("x", "agent.note", 0, call_id="c-9"), "events[1].data.text"),
        (cti("x", "call.outcome", 0, call_id="c-9"), "events[1].data.outcome"),
        (cti("x", "call.ended", 0, call_id="c-9", outcome="sold"), "events[1].data.outcome"),
        ({**cti("x", "call.ended", 0, call_id="c-9"), "dialogue": "c-8"}, "events[1].dialogue"),
        ({**cti("x", "call.ended", 0, call_id="c-9"), "occurred_at": "yesterday"}, "events[1].occurred_at"),
    ],
)
async def test_a_bad_cti_event_is_refused_naming_the_field_and_nothing_is_written(hub_client, make_key, event, field):
    key, read = await make_key("touchpoint:callcenter"), await make_key("read")
    good = cti("ok", "call.offered", 0, call_id="c-8", ani="+14155550133", agent_id="a-1")
    resp = await post(hub_client, key, good, event)
    if field is None:
        assert resp.status == 200, await resp.text()
        return
    assert resp.status == 422, await resp.text()
    error = (await resp.json())["error"]
    assert error["field"] == field, error
    assert field in error["message"]
    status, _ = await view(hub_client, read, "phone:+14155550133")
    assert status == 404  # the good event of the batch was not written either


async def test_a_single_event_body_names_fields_without_a_prefix(hub_client, make_key):
    key = await make_key("touchpoint:callcenter")
    resp = await hub_client.post(CTI, json=cti("s1", "call.offered", 0, ani="+14155550100"), headers=bearer(key))
    assert resp.status == 422
    assert (await resp.json())["error"]["field"] == "data.call_id"


async def test_other_scopes_cannot_write_calls(hub_client, make_key):
    web = await make_key("touchpoint:web")
    resp = await post(hub_client, web, cti("k1", "call.offered", 0, call_id="c-1"))
    assert resp.status == 403
    resp = await hub_client.post(CTI, json=cti("k1", "call.offered", 0, call_id="c-1"))
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "unauthorized"


async def test_plain_events_without_call_fields_are_the_core_event_api(hub_client, make_key):
    key, read = await make_key("touchpoint:callcenter"), await make_key("read")
    plain = {**cti("p1", "survey.answered", 0), "identities": {"email": "ann@example.com"}, "dialogue": "survey-1"}
    resp = await post(hub_client, key, plain)
    assert resp.status == 200, await resp.text()
    _, body = await view(hub_client, read, "email:ann@example.com")
    assert body["dialogues"][0]["ref"] == "survey-1"


class TestConformance(TouchPointConformance):
    """The conformance suite with CTI events (call ids and caller numbers in ``data``)."""

    touchpoint = "callcenter"

    @staticmethod
    def _cti(e: dict[str, Any]) -> dict[str, Any]:
        ids = e.get("identities", {})
        data = {**e.get("data", {}), "call_id": f"call-{e['id']}", "ani": ids.get("phone"), "agent_id": "a-1"}
        rest = {k: v for k, v in e.items() if k not in ("data", "type")}
        return {**rest, "type": "call.offered", "data": data}

    async def send_events(self, client, key, batch):
        return await super().send_events(client, key, [self._cti(e) for e in batch])


@pytest.mark.parametrize("bad", [{"heartbeat_s": "often"}, {"ring_size": 0}, {"workers": True}])
def test_a_bad_screen_pop_setting_stops_the_hub_at_start_naming_it(bad):
    from prm_core.config import Config
    from prm_core.errors import ConfigError
    from prm_core.plugins import collect_registrations, make_plugin_manager

    raw = {"touchpoints": {"callcenter": {"screenpop": bad}}}
    config = Config(database_url="sqlite:////tmp/unused.db", raw=raw)
    (key,) = bad
    with pytest.raises(ConfigError, match=rf"\[touchpoints.callcenter.screenpop\].{key} must be a positive number"):
        collect_registrations(make_plugin_manager([]), config)
