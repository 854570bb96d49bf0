"""The Twilio voice adapter, with requests signed by the ``twilio`` package as Twilio signs them."""

from __future__ import annotations

import asyncio
import hashlib
import json
import xml.etree.ElementTree as etree
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from multidict import MultiDict
from prm_ivr.engine import Appointment, speak_window
from test_ivr_support import ANN_PHONE, FieldService, count_all_events, dialogue_of, ivr_events, known_on_the_web
from twilio.request_validator import RequestValidator

from prm_core.config import Config
from prm_core.errors import ConfigError
from prm_core.server.state import HUB

TOKEN = "test-auth-token-0123456789abcdef"
PUBLIC = "https://hub.example.com"
BASE = "/v1/touchpoints/ivr/twilio"
signer = RequestValidator(TOKEN)


@pytest.fixture
def hub_config(database_url: str) -> Config:
    return Config(
        database_url=database_url,
        public_url=PUBLIC,
        raw={"touchpoints": {"ivr": {"twilio_auth_token": TOKEN}}},
    )


@pytest.fixture
def field_service() -> FieldService:
    return FieldService()


@pytest.fixture
def hub_plugins(field_service: FieldService) -> list[Any]:
    return [field_service]


def call_params(sid: str = "CA0001", caller: str = ANN_PHONE, **extra: str) -> dict[str, str]:
    """What Twilio posts for a call (the fields the adapter reads, and some it does not)."""
    return {
        "AccountSid": "AC0123",
        "ApiVersion": "2010-04-01",
        "CallSid": sid,
        "CallStatus": "in-progress",
        "Called": "+18005551212",
        "Caller": caller,
        "Direction": "inbound",
        "From": caller,
        "To": "+18005551212",
        **extra,
    }


async def post(
    client: Any, path_qs: str, params: dict[str, str], *, token: str | None = None, sign: bool = True
) -> Any:
    """POST form parameters to ``path_qs`` signed exactly as Twilio signs: the full public URL."""
    headers = {}
    if sign:
        headers["X-Twilio-Signature"] = signer.compute_signature(PUBLIC + path_qs, params)
    if token:
        headers["I-Twilio-Idempotency-Token"] = token
    return await client.post(path_qs, data=params, headers=headers)


def twiml(text: str) -> etree.Element:
    return etree.fromstring(text.encode())


def said(root: etree.Element) -> list[str]:
    return [s.text for s in root.iter("Say")]


def gather_path(root: etree.Element) -> str:
    """The Gather action Twilio will call, as a path and query on the hub."""
    (gather,) = root.iter("Gather")
    url = urlsplit(gather.get("action"))
    assert f"{url.scheme}://{url.netloc}" == PUBLIC
    return f"{url.path}?{url.query}"


def test_the_twilio_library_matches_the_golden_vector_of_twilios_security_docs():
    # Twilio's security page: auth token 12345, this URL and these POST fields
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+14158675309",
        "Digits": "1234",
        "From": "+14158675309",
        "To": "+18005551212",
    }
    validator = RequestValidator("12345")
    assert validator.compute_signature(url, params) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert validator.validate(url, params, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    assert not validator.validate(url, {**params, "Digits": "1235"}, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")


async def test_golden_vector_through_the_hub(database_url, aiohttp_client):
    """The documented request, re-addressed to the hub's voice URL, signed with token 12345."""
    from prm_core.server.app import create_app

    config = Config(
        database_url=database_url,
        public_url="https://mycompany.com",
        raw={"touchpoints": {"ivr": {"twilio_auth_token": "12345"}}},
    )
    client = await aiohttp_client(create_app(config))
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+14158675309", "From": "+14158675309", "To": "+18005551212"}
    good = RequestValidator("12345").compute_signature(f"https://mycompany.com{BASE}/voice?foo=1&bar=2", params)
    resp = await client.post(f"{BASE}/voice?foo=1&bar=2", data=params, headers={"X-Twilio-Signature": good})
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "text/xml"
    forged = RequestValidator("54321").compute_signature(f"https://mycompany.com{BASE}/voice?foo=1&bar=2", params)
    resp = await client.post(f"{BASE}/voice?foo=1&bar=2", data=params, headers={"X-Twilio-Signature": forged})
    assert resp.status == 401


async def test_a_known_platinum_caller_is_greeted_offered_priority_first_and_hears_the_window(
    hub_client, field_service
):
    hub = hub_client.app[HUB]
    customer = await known_on_the_web(hub)
    resp = await post(hub_client, f"{BASE}/voice", call_params(), token="tok-1")
    assert resp.status == 200
    root = twiml(await resp.text())
    window = speak_window(Appointment(field_service.start, field_service.end))
    lines = said(root)
    assert lines[:3] == [
        "Thank you for calling customer service.",
        "Welcome back, Ann.",
        f"Your technician visit is scheduled {window}.",
    ]
    (gather,) = root.iter("Gather")
    assert gather.get("input") == "dtmf speech"
    prompts = [s.text for s in gather.iter("Say")]
    assert prompts[0].startswith("As a platinum member, press 0")  # offered first
    assert root[-1].tag == "Redirect"  # silence comes back as "no input", never a dead line

    # the caller presses 0 at the Gather: the action URL the hub handed out, signed as Twilio does
    resp = await post(hub_client, gather_path(root), call_params(Digits="0"), token="tok-2")
    root = twiml(await resp.text())
    assert [e.tag for e in root] == ["Say", "Enqueue"]
    assert root.find("Enqueue").text == "priority"

    path = await ivr_events(hub, "CA0001")
    assert [t for _, t, _ in path] == [
        "ivr.call.started",
        "delivery",
        "ivr.menu",
        "ivr.input",
        "delivery",
        "ivr.menu",
        "ivr.transferred",
        "ivr.ended",
    ]
    data = {t: d for _, t, d in path}
    assert data["ivr.input"] == {"node": "main", "attempt": 1, "mode": "dtmf", "digits": "0"}
    assert data["ivr.transferred"]["queue"] == "priority"
    assert data["ivr.ended"]["outcome"] == "transferred"
    dialogue = await dialogue_of(hub, "CA0001")
    assert (dialogue.status, dialogue.outcome, dialogue.customer_id) == ("closed", "transferred", customer)

    # the agent after the transfer sees the path in the customer's view
    view = await hub.view(f"phone:{ANN_PHONE}")
    assert view.customer.id == customer
    assert {"ivr.call.started", "ivr.input", "ivr.transferred"} <= {t["type"] for t in view.timeline}

    # Twilio's status callback at the end of the (transferred) call writes nothing
    before = await count_all_events(hub)
    resp = await post(hub_client, f"{BASE}/status", call_params(CallStatus="completed"))
    assert resp.status == 200
    assert await count_all_events(hub) == before


async def test_an_unknown_caller_gets_the_standard_menu(hub_client):
    hub = hub_client.app[HUB]
    await known_on_the_web(hub)
    resp = await post(hub_client, f"{BASE}/voice", call_params("CA0002", "+14155550199"))
    root = twiml(await resp.text())
    lines = said(root)
    assert lines[0] == "Thank you for calling customer service."
    assert not any("Ann" in line or "platinum" in line or "technician visit is" in line for line in lines)
    (gather,) = root.iter("Gather")
    assert next(s.text for s in gather.iter("Say")).startswith("For repairs")
    menu = [d for _, t, d in await ivr_events(hub, "CA0002") if t == "ivr.menu"]
    assert menu[0]["personalized"] == []


async def test_a_withheld_number_is_an_unknown_caller(hub_client):
    resp = await post(hub_client, f"{BASE}/voice", call_params("CA0003", "anonymous"))
    assert resp.status == 200
    assert said(twiml(await resp.text()))[0] == "Thank you for calling customer service."


async def test_speech_and_no_input_and_self_service(hub_client):
    hub = hub_client.app[HUB]
    root = twiml(await (await post(hub_client, f"{BASE}/voice", call_params("CA0004"))).text())
    # nothing said: Twilio follows the Redirect to the same action without Digits
    (redirect,) = root.iter("Redirect")
    url = urlsplit(redirect.text)
    root = twiml(await (await post(hub_client, f"{url.path}?{url.query}", call_params("CA0004"))).text())
    assert said(root)[0] == "Sorry, I did not hear anything."
    assert parse_qs(urlsplit(root.find("Gather").get("action")).query)["attempt"] == ["2"]
    # "store hours, please" by speech: a message, then goodbye and hang up
    resp = await post(hub_client, gather_path(root), call_params("CA0004", SpeechResult="Store hours, please"))
    root = twiml(await resp.text())
    assert [e.tag for e in root][-1] == "Hangup"
    assert said(root)[-1] == "Thank you for calling. Goodbye."
    dialogue = await dialogue_of(hub, "CA0004")
    assert (dialogue.status, dialogue.outcome) == ("closed", "self_served")
    inputs = [d for _, t, d in await ivr_events(hub, "CA0004") if t == "ivr.input"]
    assert [i["mode"] for i in inputs] == ["none", "speech"]


async def test_a_hang_up_mid_menu_is_abandoned(hub_client):
    hub = hub_client.app[HUB]
    await post(hub_client, f"{BASE}/voice", call_params("CA0005"))
    resp = await post(hub_client, f"{BASE}/status", call_params("CA0005", CallStatus="completed"))
    assert resp.status == 200
    assert twiml(await resp.text()).tag == "Response"
    dialogue = await dialogue_of(hub, "CA0005")
    assert (dialogue.status, dialogue.outcome) == ("closed", "abandoned")
    ended = [d for _, t, d in await ivr_events(hub, "CA0005") if t == "ivr.ended"]
    assert ended == [{"outcome": "abandoned", "call_status": "completed"}]


async def test_a_retry_gets_the_same_twiml_and_writes_nothing(hub_client):
    hub = hub_client.app[HUB]
    await known_on_the_web(hub)
    first = await post(hub_client, f"{BASE}/voice", call_params("CA0006"), token="retry-me")
    before = await count_all_events(hub)
    again = await post(hub_client, f"{BASE}/voice", call_params("CA0006"), token="retry-me")
    assert again.status == 200
    assert await again.text() == await first.text()
    assert await count_all_events(hub) == before
    # a Gather retry too, even without the idempotency header (same request, same digest)
    root = twiml(await first.text())
    one = await post(hub_client, gather_path(root), call_params("CA0006", Digits="1"))
    before = await count_all_events(hub)
    two = await post(hub_client, gather_path(root), call_params("CA0006", Digits="1"))
    assert await two.text() == await one.text()
    assert await count_all_events(hub) == before


@pytest.mark.parametrize("how", ["missing", "forged", "other-url", "tampered"])
async def test_a_forged_or_missing_signature_is_401_and_writes_nothing(hub_client, how):
    hub = hub_client.app[HUB]
    before = await count_all_events(hub)
    params = call_params("CA0007")
    headers: dict[str, str] = {}
    if how == "forged":
        headers["X-Twilio-Signature"] = RequestValidator("not-the-token").compute_signature(
            PUBLIC + BASE + "/voice", params
        )
    elif how == "other-url":
        headers["X-Twilio-Signature"] = signer.compute_signature("https://evil.example.com" + BASE + "/voice", params)
    elif how == "tampered":
        headers["X-Twilio-Signature"] = signer.compute_signature(PUBLIC + BASE + "/voice", params)
        params = {**params, "From": "+14155550111"}
    for path in (f"{BASE}/voice", f"{BASE}/gather?node=main&attempt=1", f"{BASE}/status"):
        resp = await hub_client.post(path, data=params, headers=headers)
        assert resp.status == 401
        body = await resp.json()
        assert body["error"]["code"] == "unauthorized"
        assert body["error"]["field"] == "X-Twilio-Signature"
    assert await count_all_events(hub) == before


async def test_a_webhook_signed_with_hmac_sha256_is_answered(hub_client):
    """The algorithm X-Twilio-Webhooks-Signature-Settings names is the one checked."""
    hub = hub_client.app[HUB]
    params = call_params("CA0010")
    path = f"{BASE}/voice"
    settings = {"X-Twilio-Webhooks-Signature-Settings": "key=webhooks_sharedkey_0123,algorithm=HMAC_SHA256"}
    before = await count_all_events(hub)
    sha1 = {"X-Twilio-Signature": signer.compute_signature(PUBLIC + path, params), **settings}
    assert (await hub_client.post(path, data=params, headers=sha1)).status == 401
    assert await count_all_events(hub) == before
    sha256 = {"X-Twilio-Signature": signer.compute_signature(PUBLIC + path, params, "HMAC_SHA256"), **settings}
    resp = await hub_client.post(path, data=params, headers=sha256)
    assert resp.status == 200, await resp.text()
    assert said(twiml(await resp.text()))[0] == "Thank you for calling customer service."


async def test_json_bodies_are_checked_by_body_sha256(hub_client):
    hub = hub_client.app[HUB]
    body = json.dumps(call_params("CA0008"))
    digest = hashlib.sha256(body.encode()).hexdigest()
    path = f"{BASE}/voice?{urlencode({'bodySHA256': digest})}"
    signature = signer.compute_signature(PUBLIC + path, {})
    headers = {"X-Twilio-Signature": signature, "Content-Type": "application/json"}
    resp = await hub_client.post(path, data=body, headers=headers)
    assert resp.status == 200, await resp.text()
    assert said(twiml(await resp.text()))[0] == "Thank you for calling customer service."
    # the same signature on another body: the hash no longer matches
    before = await count_all_events(hub)
    other = json.dumps(call_params("CA0009"))
    resp = await hub_client.post(path, data=other, headers=headers)
    assert resp.status == 401
    assert await count_all_events(hub) == before


class TestLateValueDelivery:
    """A slow part of value delivery is left out; the menu plays on time, never silence."""

    @pytest.fixture
    def field_service(self) -> FieldService:
        return FieldService(delay_s=5)

    async def test_a_late_appointment_is_left_out_and_named_degraded(self, hub_client):
        hub = hub_client.app[HUB]
        await known_on_the_web(hub)
        root = twiml(await (await post(hub_client, f"{BASE}/voice", call_params("CA0010"))).text())
        lines = said(root)
        assert "Welcome back, Ann." in lines
        assert not any("technician visit is scheduled" in line for line in lines)
        assert root.find("Gather") is not None
        (menu,) = [d for _, t, d in await ivr_events(hub, "CA0010") if t == "ivr.menu"]
        assert any(part.startswith("view:") for part in menu["degraded"])


class TestLateHub:
    """A hub that cannot answer within the IVR budget at all: the standard menu plays."""

    @pytest.fixture
    def hub_config(self, database_url: str) -> Config:
        ivr = {"twilio_auth_token": TOKEN, "budget_ms": 1}
        return Config(database_url=database_url, public_url=PUBLIC, raw={"touchpoints": {"ivr": ivr}})

    async def test_the_standard_menu_plays_and_the_call_is_still_recorded(self, hub_client):
        hub = hub_client.app[HUB]
        await known_on_the_web(hub)
        root = twiml(await (await post(hub_client, f"{BASE}/voice", call_params("CA0011"))).text())
        assert "Welcome back, Ann." not in said(root)
        assert next(s.text for s in root.find("Gather").iter("Say")).startswith("For repairs")
        for _ in range(200):  # the request turn finishes recording after the answer
            types = [t for _, t, _ in await ivr_events(hub, "CA0011")]
            if "ivr.call.started" in types and "delivery" in types:
                break
            await asyncio.sleep(0.05)
        assert {"ivr.call.started", "ivr.menu"} <= set(types)
        (menu,) = [d for _, t, d in await ivr_events(hub, "CA0011") if t == "ivr.menu"]
        assert menu["degraded"] == ["ivr:late"]


async def test_dial_for_queues_with_a_number(database_url, aiohttp_client):
    from prm_core.server.app import create_app

    ivr = {"twilio_auth_token": TOKEN, "twilio": {"dial": {"billing": "+18005550123"}}}
    client = await aiohttp_client(create_app(Config(database_url=database_url, public_url=PUBLIC,
                                                    raw={"touchpoints": {"ivr": ivr}})))  # fmt: skip
    await post(client, f"{BASE}/voice", call_params("CA0012"))
    resp = await post(client, f"{BASE}/gather?node=main&attempt=1", call_params("CA0012", Digits="2"))
    root = twiml(await resp.text())
    assert root.find("Dial").text == "+18005550123"


def test_the_auth_token_needs_a_public_url(database_url):
    from prm_core.server.app import create_app

    config = Config(database_url=database_url, raw={"touchpoints": {"ivr": {"twilio_auth_token": TOKEN}}})
    with pytest.raises(ConfigError, match=r"public_url"):
        create_app(config)


async def test_without_a_token_no_twilio_routes_are_mounted(database_url, aiohttp_client):
    from prm_core.server.app import create_app

    client = await aiohttp_client(create_app(Config(database_url=database_url, public_url=PUBLIC)))
    resp = await client.post(f"{BASE}/voice", data=call_params())
    assert resp.status == 404


async def test_no_personal_data_reaches_the_logs(hub_client, log_capture):
    hub = hub_client.app[HUB]
    await known_on_the_web(hub)
    root = twiml(await (await post(hub_client, f"{BASE}/voice", call_params("CA0013"))).text())
    await post(hub_client, gather_path(root), call_params("CA0013", SpeechResult="billing for Ann Lee"))
    await post(hub_client, f"{BASE}/status", call_params("CA0013", CallStatus="completed"))
    text = log_capture.text
    assert "http" in text  # the capture did see the requests
    for personal in ("4155550100", "555-0100", "Ann", "Lee", "ann@example.com"):
        assert personal not in text


class TestHostileRequests:
    """What reaches a Twilio route without being Twilio: nothing is parsed before the signature
    is checked, nothing unstorable is stored, and a captured request replays as a duplicate."""

    @pytest.mark.parametrize(
        "content_type", ["multipart/form-data", "text/plain", "application/octet-stream", "application/xml"]
    )
    async def test_a_body_twilio_never_sends_is_a_4xx_json_error_and_writes_nothing(self, hub_client, content_type):
        import aiohttp

        hub = hub_client.app[HUB]
        params = call_params("CA0100")
        # signed as the form Twilio would have sent: the signature is right, the body's type is not
        headers = {"X-Twilio-Signature": signer.compute_signature(PUBLIC + BASE + "/voice", params)}
        for path in (f"{BASE}/voice", f"{BASE}/gather?node=main&attempt=1", f"{BASE}/status"):
            if content_type == "multipart/form-data":
                form = aiohttp.FormData(params)
                form.add_field("file", b"\x00" * 64, filename="x.bin", content_type="application/octet-stream")
                resp = await hub_client.post(path, data=form, headers=headers)
            else:
                body = urlencode(params).encode()
                resp = await hub_client.post(path, data=body, headers={**headers, "Content-Type": content_type})
            assert 400 <= resp.status < 500, (path, resp.status, await resp.text())
            assert "error" in await resp.json()
        assert await count_all_events(hub) == 0

    @pytest.mark.parametrize("field", ["CallSid", "Digits", "SpeechResult", "From", "Direction", "CallStatus"])
    async def test_a_nul_in_a_signed_parameter_is_a_422_naming_it_and_writes_nothing(self, hub_client, field):
        hub = hub_client.app[HUB]
        root = twiml(await (await post(hub_client, f"{BASE}/voice", call_params("CA0101"))).text())
        before = await count_all_events(hub)
        bad = call_params("CA0101", Digits="1")
        bad[field] = bad.get(field, "x") + "\x00"
        for path in (f"{BASE}/voice", gather_path(root), f"{BASE}/status"):
            resp = await post(hub_client, path, bad)
            assert resp.status == 422, (path, resp.status, await resp.text())
            assert (await resp.json())["error"]["field"] == field
        assert await count_all_events(hub) == before
        # the call goes on: the next (clean) request is answered
        resp = await post(hub_client, gather_path(root), call_params("CA0101", Digits="1"))
        assert resp.status == 200, await resp.text()

    async def test_a_parameter_repeated_with_other_values_is_refused(self, hub_client):
        """The signature covers each name's values as a set, so their order is the sender's
        choice: two values for one name would let a replay pick which one counts."""
        hub = hub_client.app[HUB]
        pairs = [*call_params("CA0105").items(), ("Digits", "1"), ("Digits", "2")]
        signature = signer.compute_signature(PUBLIC + BASE + "/voice", MultiDict(pairs))
        for order in (pairs, [*pairs[:-2], ("Digits", "2"), ("Digits", "1")]):
            resp = await hub_client.post(
                f"{BASE}/voice",
                data=urlencode(order),
                headers={"X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"},
            )
            assert resp.status == 422
            assert (await resp.json())["error"]["field"] == "Digits"
        # the same value twice is one value
        same = [*call_params("CA0105").items(), ("Digits", "1"), ("Digits", "1")]
        signature = signer.compute_signature(PUBLIC + BASE + "/voice", MultiDict(same))
        resp = await hub_client.post(
            f"{BASE}/voice",
            data=urlencode(same),
            headers={"X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"},
        )
        assert resp.status == 200
        assert await count_all_events(hub) > 0

    @pytest.mark.parametrize("sid", ["CA\x00", "CA 1", "CA/../1", "x" * 65, ""])
    async def test_a_call_sid_twilio_never_issues_is_refused(self, hub_client, sid):
        hub = hub_client.app[HUB]
        resp = await post(hub_client, f"{BASE}/voice", call_params(sid))
        assert resp.status == 422
        assert (await resp.json())["error"]["field"] == "CallSid"
        assert await count_all_events(hub) == 0

    @pytest.mark.parametrize("token", ["new-token-", None])
    async def test_a_replayed_request_is_a_duplicate_whatever_its_idempotency_token(self, hub_client, token):
        """Twilio signs no time: what bounds a replay is that the event's id comes from what the
        signature covers (the URL and every parameter), so a replay is the same event."""
        hub = hub_client.app[HUB]
        first = await post(hub_client, f"{BASE}/voice", call_params("CA0102"), token="tok-a")
        root = twiml(await first.text())
        gathered = await post(hub_client, gather_path(root), call_params("CA0102", Digits="1"), token="tok-b")
        before = await count_all_events(hub)
        for n in range(3):
            new_token = f"{token}{n}" if token else None
            again = await post(hub_client, f"{BASE}/voice", call_params("CA0102"), token=new_token)
            assert again.status == 200
            assert await again.text() == await first.text()
            replay = await post(hub_client, gather_path(root), call_params("CA0102", Digits="1"), token=new_token)
            assert replay.status == 200
            assert await replay.text() == await gathered.text()
        assert await count_all_events(hub) == before

    async def test_a_caller_who_comes_back_to_a_menu_is_recorded_each_time(self, hub_client):
        """Each menu hands out its own action URL (Twilio signs it with the rest), so the same
        key pressed at the same menu twice in one call is two inputs, not a replay."""
        hub = hub_client.app[HUB]
        root = twiml(await (await post(hub_client, f"{BASE}/voice", call_params("CA0103"))).text())
        paths = []
        for digits in ("1", "*", "1", "*", "1"):  # repairs, back, repairs, back, repairs
            paths.append(gather_path(root))
            resp = await post(hub_client, paths[-1], call_params("CA0103", Digits=digits))
            root = twiml(await resp.text())
        assert len(set(paths)) == len(paths)
        inputs = [d for _, t, d in await ivr_events(hub, "CA0103") if t == "ivr.input"]
        assert [(i["node"], i["digits"]) for i in inputs] == [
            ("main", "1"), ("repair", "*"), ("main", "1"), ("repair", "*"), ("main", "1"),
        ]  # fmt: skip
        menus = [d["node"] for _, t, d in await ivr_events(hub, "CA0103") if t == "ivr.menu"]
        assert menus == ["main", "repair", "main", "repair", "main", "repair"]

    async def test_a_call_that_ended_takes_no_more_menu_events(self, hub_client):
        hub = hub_client.app[HUB]
        root = twiml(await (await post(hub_client, f"{BASE}/voice", call_params("CA0104"))).text())
        menu = gather_path(root)
        resp = await post(hub_client, f"{BASE}/status", call_params("CA0104", CallStatus="completed"))
        assert resp.status == 200
        before = await count_all_events(hub)
        # a signed Gather of this call never sent before (captured elsewhere, or forged by
        # someone holding the token's old signatures): the call is over, nothing is recorded
        resp = await post(hub_client, menu, call_params("CA0104", Digits="2"))
        assert resp.status == 200
        root = twiml(await resp.text())
        assert [e.tag for e in root] == ["Hangup"]
        resp = await post(hub_client, f"{BASE}/voice", call_params("CA0104", Direction="inbound", ForwardedFrom="x"))
        assert [e.tag for e in twiml(await resp.text())] == ["Hangup"]
        assert await count_all_events(hub) == before
