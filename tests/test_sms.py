"""The SMS touch point (prm_sms) against a local double of Twilio's Messages API
(tests/twilio_fake.py), with webhooks signed by the ``twilio`` package as Twilio signs them;
and the samples of docs/messaging.md's SMS section."""

from __future__ import annotations

import json
import re
import time
import tomllib
import xml.etree.ElementTree as etree
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import pytest
import sqlalchemy as sa
from attrs import evolve
from polling import until
from prm_sms import SmsSettings, TwilioUnavailable, keyword, sender_of
from twilio.request_validator import RequestValidator
from twilio_fake import MESSAGES, FakeTwilio

from prm_core.clock import utcnow
from prm_core.config import Config, load_config
from prm_core.consent import allows
from prm_core.errors import ConfigError
from prm_core.hub import Hub
from prm_core.server.app import create_app
from prm_core.server.state import HUB
from prm_core.store.tables import events, trigger_runs, webhook_receipts
from prm_core.triggers import Message
from prm_core.triggers.guards import suppressed

ACCOUNT = "AC" + "0123456789abcdef" * 2
TOKEN = "sms-auth-token-0123456789abcdef"
PUBLIC = "https://hub.example.com"
SENDER = "+14155550100"
ANN = "+14155550123"
BASE = "/v1/touchpoints/sms/twilio"
DOC = Path(__file__).resolve().parent.parent / "docs" / "messaging.md"
signer = RequestValidator(TOKEN)

THANKS = {
    "on": "event.recorded",
    "when": "change['type'] == 'store.visit'",
    "purpose": "transactional",
    "action": {"kind": "message", "channel": "sms", "template": "Thanks for your visit. Reply to tell us how it went."},
}


def sms_config(database_url: str, api_base: str, **sms: Any) -> Config:
    raw = {
        "touchpoints": {
            "sms": {"account_sid": ACCOUNT, "auth_token": TOKEN, "from": SENDER, "api_base": api_base, **sms}
        },
        "triggers": {"poll_s": 0.02, "quiet_hours": "none", "thanks": THANKS},
    }
    return Config(database_url=database_url, public_url=PUBLIC, raw=raw)


@pytest.fixture
def twilio() -> FakeTwilio:
    return FakeTwilio(ACCOUNT, TOKEN)


@pytest.fixture
async def twilio_url(twilio: FakeTwilio, aiohttp_server: Any) -> str:
    server = await aiohttp_server(twilio.app())
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
def hub_config(database_url: str, twilio_url: str) -> Config:
    return sms_config(database_url, twilio_url, help_text="Acme: reply STOP to opt out. Help: acme.example/help")


def hub_of(client: Any) -> Hub:
    hub: Hub = client.server.app[HUB]
    return hub


async def post(client: Any, path_qs: str, params: dict[str, str], *, token: str = TOKEN) -> Any:
    """POST form parameters signed as Twilio signs them: the full public URL and the form."""
    signature = RequestValidator(token).compute_signature(PUBLIC + path_qs, params)
    return await client.post(path_qs, data=params, headers={"X-Twilio-Signature": signature})


def inbound(sid: str, body: str, sender: str = ANN) -> dict[str, str]:
    """What Twilio posts for an incoming SMS (the fields the hub reads, and some it does not)."""
    return {
        "ToCountry": "US",
        "SmsMessageSid": sid,
        "NumMedia": "0",
        "SmsSid": sid,
        "SmsStatus": "received",
        "Body": body,
        "To": SENDER,
        "NumSegments": "1",
        "MessageSid": sid,
        "AccountSid": ACCOUNT,
        "From": sender,
        "ApiVersion": "2010-04-01",
    }


def status_params(sid: str, status: str, error_code: str | None = None, to: str = ANN) -> dict[str, str]:
    params = {
        "SmsSid": sid,
        "SmsStatus": status,
        "MessageStatus": status,
        "To": to,
        "MessageSid": sid,
        "AccountSid": ACCOUNT,
        "From": SENDER,
        "ApiVersion": "2010-04-01",
    }
    if error_code is not None:
        params["ErrorCode"] = error_code
    return params


async def sms_events(hub: Hub, type_: str | None = None) -> list[Any]:
    e = events.c
    q = sa.select(events).where(e.touchpoint == "sms").order_by(e.seq)
    if type_ is not None:
        q = q.where(e.type == type_)
    return await hub.store.read(lambda conn: list(conn.execute(q)))


async def counts(hub: Hub) -> tuple[int, int]:
    """Every event and every remembered webhook delivery: what a refused request must not add."""

    def read(conn: Any) -> tuple[int, int]:
        n_events = conn.execute(sa.select(sa.func.count()).select_from(events)).scalar()
        n_receipts = conn.execute(sa.select(sa.func.count()).select_from(webhook_receipts)).scalar()
        return int(n_events), int(n_receipts)

    return await hub.store.read(read)


async def known_customer(hub: Hub, phone: str = "(415) 555-0123", event_id: str = "w1") -> Any:
    """Ann, known on the web by her phone number in a national spelling."""
    body = {"id": event_id, "type": "page", "occurred_at": utcnow().isoformat(), "identities": {"phone": phone}}
    (recorded,) = await hub.record(hub.parse_events({"events": [body]}, "web"))
    return recorded


async def traits_of(hub: Hub, customer_id: str) -> dict[str, Any]:
    return dict((await hub.view(customer_id, limit=1)).customer.traits)


def message(
    message_id: str = "act_" + "1" * 40, to: str | None = ANN, text: str = "Your technician is on the way."
) -> Message:
    return Message(
        id=message_id, channel="sms", customer_id="x", text=text, purpose="transactional", trigger="visit", to=to
    )


async def texted(hub: Hub, phone: str = ANN, visit_id: str = "v1") -> Any:
    """A visit of the customer of ``phone``: the trigger texts them; its ``message.sent`` row."""
    visit = {"id": visit_id, "type": "store.visit", "occurred_at": utcnow().isoformat(), "identities": {"phone": phone}}
    (recorded,) = await hub.record(hub.parse_events({"events": [visit]}, "web"))

    async def sent() -> Any:
        e = events.c
        q = sa.select(events).where(
            e.touchpoint == "sms", e.type == "message.sent", e.customer_id == recorded.customer_id
        )
        return await hub.store.read(lambda conn: conn.execute(q).first())

    return await until(sent)


def twiml_messages(text: str) -> list[str]:
    root = etree.fromstring(text.encode())
    assert root.tag == "Response"
    return [m.text or "" for m in root.iter("Message")]


# ---- end to end ----------------------------------------------------------------------------


async def test_a_trigger_texts_through_twilio_and_the_answer_joins_its_dialogue(hub_client, twilio):
    hub = hub_of(hub_client)
    ann = await known_customer(hub)
    visit = {"id": "v1", "type": "store.visit", "occurred_at": utcnow().isoformat(), "identities": {"phone": ANN}}
    await hub.record(hub.parse_events({"events": [visit]}, "web"))

    async def fired() -> Any:
        runs = await hub.store.read(lambda conn: list(conn.execute(sa.select(trigger_runs))))
        return runs if runs and runs[0].status != "scheduled" else None

    (run,) = await until(fired)
    assert (run.status, run.reason) == ("fired", None)
    # Twilio got one message, as its API documents the fields, authenticated (the double checks)
    (sent,) = twilio.messages
    (message_sent,) = await sms_events(hub, "message.sent")
    message_id = message_sent.data["message_id"]
    assert sent == {
        "To": ANN,
        "From": SENDER,
        "Body": "Thanks for your visit. Reply to tell us how it went.",
        "StatusCallback": f"{PUBLIC}{BASE}/status?message={message_id}",
    }
    (accepted,) = await sms_events(hub, "message.status")
    assert accepted.data["sid"] == message_sent.data["ref"] and accepted.data["status"] == "queued"
    assert accepted.customer_id == ann.customer_id == message_sent.customer_id
    assert accepted.dialogue_id == message_sent.dialogue_id

    # Twilio's status callback, to the URL the hub gave, signed with its query
    callback = urlsplit(sent["StatusCallback"])
    sid = accepted.data["sid"]
    resp = await post(hub_client, f"{callback.path}?{callback.query}", status_params(sid, "delivered"))
    assert resp.status == 200 and twiml_messages(await resp.text()) == []
    delivered = [e for e in await sms_events(hub, "message.status") if e.data["status"] == "delivered"]
    assert [(e.data["message_id"], e.data["sid"], e.dialogue_id) for e in delivered] == [
        (message_id, sid, message_sent.dialogue_id)
    ]

    # Ann answers: the event colleagues read (survey answers) and the same dialogue
    resp = await post(hub_client, f"{BASE}/inbound", inbound("SM" + "a" * 32, "It was great, 5"))
    assert resp.status == 200 and twiml_messages(await resp.text()) == []
    (received,) = await sms_events(hub, "message.received")
    assert received.data == {"channel": "sms", "text": "It was great, 5", "in_reply_to": message_id}
    assert received.identities == [f"phone:{ANN}"]
    assert (received.customer_id, received.dialogue_id, received.direction) == (
        ann.customer_id,
        message_sent.dialogue_id,
        "inbound",
    )


async def test_an_answer_joins_the_latest_message_however_long_the_timeline_since(hub_client):
    """The message an answer replies to is found by one query, however many events the
    customer has had since it was sent; a message to another customer is not it."""
    hub = hub_of(hub_client)
    ann = await known_customer(hub)
    sent = await texted(hub)
    await texted(hub, "+14155550177", "v2")  # Bob's, later
    pages = [
        {"id": f"p{n}", "type": "page", "occurred_at": utcnow().isoformat(), "identities": {"phone": ANN}}
        for n in range(320)
    ]
    await hub.record(hub.parse_events({"events": pages}, "web"))
    resp = await post(hub_client, f"{BASE}/inbound", inbound("SM" + "9" * 32, "Still thinking about it"))
    assert resp.status == 200
    (received,) = await sms_events(hub, "message.received")
    assert received.data["in_reply_to"] == sent.data["message_id"]
    assert (received.customer_id, received.dialogue_id) == (ann.customer_id, sent.dialogue_id)
    # a number the hub never texted: no thread
    resp = await post(hub_client, f"{BASE}/inbound", inbound("SM" + "8" * 32, "Who is this?", sender="+14155550188"))
    assert resp.status == 200
    stranger = [e for e in await sms_events(hub, "message.received") if e.event_id.endswith("8" * 32)]
    assert [e.data["in_reply_to"] for e in stranger] == [None]


async def test_through_the_trigger_engine_twilio_down_is_retried_and_a_refusal_fails_the_run(hub_client, twilio):
    hub = hub_of(hub_client)

    async def visit(event_id: str, phone: str) -> Any:
        body = {
            "id": event_id,
            "type": "store.visit",
            "occurred_at": utcnow().isoformat(),
            "identities": {"phone": phone},
        }
        (recorded,) = await hub.record(hub.parse_events({"events": [body]}, "web"))

        async def settled() -> Any:
            q = sa.select(trigger_runs).where(trigger_runs.c.customer_id == recorded.customer_id)
            runs = await hub.store.read(lambda conn: list(conn.execute(q)))
            return runs[0] if runs and runs[0].status not in ("scheduled", "running") else None

        return await until(settled)

    twilio.fail_next = [(503, 20503, "Service Unavailable")]
    run = await visit("v1", ANN)
    assert (run.status, run.attempts) == ("fired", 2) and twilio.requests == 2 and len(twilio.messages) == 1
    twilio.fail_next = [(400, 21211, "The 'To' number +14155550124 is not a valid phone number.")]
    run = await visit("v2", "+14155550124")
    assert (run.status, run.reason) == (
        "failed",
        "the sms sender refused it: Twilio refused it: error 21211: the 'To' number is not a valid phone number",
    )
    assert len(twilio.messages) == 1


async def test_a_message_handed_over_again_is_not_sent_again(hub, twilio):
    sender = sender_of(hub)
    assert sender is not None
    first = await hub.pm.hook.prm_send_message(message=message())
    again = await hub.pm.hook.prm_send_message(message=message())
    assert first.status == again.status == "sent" and first.ref == again.ref and first.ref.startswith("SM")
    assert len(twilio.messages) == 1 and twilio.requests == 1


async def test_accepted_but_not_recorded_is_recorded_on_the_retry_without_a_second_send(hub, twilio, monkeypatch):
    async def store_away(self: Hub, batch: Any) -> Any:
        raise ConnectionError("the database is away")

    with monkeypatch.context() as patched:
        patched.setattr(Hub, "record", store_away)
        with pytest.raises(ConnectionError):
            await hub.pm.hook.prm_send_message(message=message())
    result = await hub.pm.hook.prm_send_message(message=message())
    assert result.status == "sent" and len(twilio.messages) == 1
    (accepted,) = await sms_events(hub, "message.status")
    assert accepted.data["sid"] == result.ref


async def test_what_twilio_accepted_is_kept_unrecorded_for_a_while_and_a_few_messages(hub, twilio, monkeypatch):
    """The SIDs kept while the database is away are bounded: the oldest goes beyond
    MAX_UNRECORDED, any older than UNRECORDED_TTL_S goes; a retry records what is kept even
    when the customer's number is gone meanwhile (the message is sent: the run must not fail)."""
    import prm_sms.sender

    sender = sender_of(hub)
    assert sender is not None

    async def store_away(self: Hub, batch: Any) -> Any:
        raise ConnectionError("the database is away")

    ids = [f"act_{n}" + "3" * 40 for n in range(4)]
    monkeypatch.setattr(prm_sms.sender, "MAX_UNRECORDED", 3)
    with monkeypatch.context() as patched:
        patched.setattr(Hub, "record", store_away)
        for message_id in ids:
            with pytest.raises(ConnectionError):
                await hub.pm.hook.prm_send_message(message=message(message_id))
    assert list(sender.unrecorded) == ids[1:] and len(twilio.messages) == 4
    # the number is gone by the retry: what Twilio accepted is recorded, not failed, not sent again
    result = await hub.pm.hook.prm_send_message(message=message(ids[1], to=None))
    assert result.status == "sent" and result.ref.startswith("SM")
    assert list(sender.unrecorded) == ids[2:] and len(twilio.messages) == 4
    (accepted,) = await sms_events(hub, "message.status")
    assert (accepted.data["message_id"], accepted.data["sid"]) == (ids[1], result.ref)
    assert accepted.identities == [f"phone:{ANN}"]
    monkeypatch.setattr(prm_sms.sender, "UNRECORDED_TTL_S", 0.0)
    await hub.pm.hook.prm_send_message(message=message("act_" + "4" * 40))
    assert sender.unrecorded == {}


async def test_twilio_down_or_busy_is_retried_and_a_refusal_is_final(hub, twilio):
    twilio.fail_next = [(500, 20500, "Internal Server Error"), (503, 20503, "Service Unavailable"),
                        (429, 20429, "Too Many Requests")]  # fmt: skip
    for _ in range(3):
        with pytest.raises(TwilioUnavailable):
            await hub.pm.hook.prm_send_message(message=message())
    assert twilio.messages == [] and twilio.requests == 3
    twilio.fail_next = [(400, 21211, f"The 'To' number {ANN} is not a valid phone number.")]
    refused = await hub.pm.hook.prm_send_message(message=message())
    assert refused.status == "failed"
    assert refused.reason == "Twilio refused it: error 21211: the 'To' number is not a valid phone number"
    assert ANN not in refused.reason  # Twilio's own text names the number: the run's reason does not
    (failed,) = await sms_events(hub, "message.status")
    assert (failed.data["status"], failed.data["error_code"]) == ("failed", 21211)


async def test_the_recipient_unsubscribed_at_twilio_fails_the_message_and_suppresses_sms(hub, twilio):
    ann = await known_customer(hub)
    twilio.fail_next = [(400, 21610, "Attempt to send to unsubscribed recipient")]
    refused = await hub.pm.hook.prm_send_message(message=message())
    assert (refused.status, refused.reason) == (
        "failed",
        "Twilio refused it: error 21610: the recipient has unsubscribed (replied STOP)",
    )
    traits = await traits_of(hub, ann.customer_id)
    assert traits["suppressed"] == ["sms"] and traits["sms_undeliverable"]["error_code"] == 21610
    assert suppressed(traits, "sms") and not suppressed(traits, "email")
    (bounced,) = await sms_events(hub, "message.bounced")
    assert bounced.data == {"channel": "sms", "status": "failed", "in_reply_to": message().id, "error_code": 21610}
    assert (bounced.customer_id, bounced.direction) == (ann.customer_id, "inbound")
    # a refusal retrying cannot fix, but not a permanent code: no bounce
    twilio.fail_next = [(400, 21617, "The concatenated message body exceeds the 1600 character limit.")]
    assert (await hub.pm.hook.prm_send_message(message=message("act_" + "2" * 40))).status == "failed"
    assert len(await sms_events(hub, "message.bounced")) == 1


async def test_an_answer_reads_as_the_cores_replied(hub):
    assert hub.event_labels["message.received"] == "replied"
    assert hub.event_labels["message.status"] == "message status"


async def test_a_message_due_before_the_sender_started_is_retried_not_lost(hub):
    """The trigger engine starts before the plugins' prm_hub_started: an SMS handed over in
    between meets the plugin's module-level implementation, which fails it for now."""
    import prm_sms

    assert sender_of(hub) is not None  # started: the hub's own sender answers first
    with pytest.raises(TwilioUnavailable, match="starting"):
        prm_sms.prm_send_message(message())
    assert prm_sms.prm_send_message(evolve(message(), channel="email")) is None


async def test_twilio_not_answering_in_time_is_a_failure_for_now(database_url, twilio, twilio_url):
    twilio.delay_s = 2.0
    async with Hub.open(sms_config(database_url, twilio_url, timeout_s=0.2), autoload=True) as hub:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await hub.pm.hook.prm_send_message(message=message())
        assert time.monotonic() - started < 1.5


async def test_wrong_credentials_are_a_failure_for_now_and_nothing_is_sent(database_url, twilio, twilio_url):
    config = sms_config(database_url, twilio_url, auth_token="not-the-token")
    async with Hub.open(config, autoload=True) as hub:
        with pytest.raises(TwilioUnavailable, match="20003"):
            await hub.pm.hook.prm_send_message(message=message())
    assert twilio.messages == [] and twilio.requests == 1


async def test_no_number_or_no_phone_number_fails_without_calling_twilio(hub, twilio):
    assert (await hub.pm.hook.prm_send_message(message=message(to=None))).reason == "the customer has no phone number"
    bad = await hub.pm.hook.prm_send_message(message=message(to="call me maybe"))
    assert bad.status == "failed" and twilio.requests == 0


async def test_a_messaging_service_sends_without_a_from_number(database_url, twilio, twilio_url):
    service = "MG" + "0123456789abcdef" * 2
    config = sms_config(database_url, twilio_url, messaging_service_sid=service)
    config.raw["touchpoints"]["sms"].pop("from")
    async with Hub.open(config, autoload=True) as hub:
        result = await hub.pm.hook.prm_send_message(message=message())
        assert result.status == "sent"
        (accepted,) = await sms_events(hub, "message.status")
        assert accepted.data["status"] == "accepted"
    (sent,) = twilio.messages
    assert sent["MessagingServiceSid"] == service and "From" not in sent


async def test_the_twilio_double_refuses_what_twilio_refuses(twilio, twilio_url):
    """The double is as strict as Twilio: what the hub sends passes only if it is right."""
    url = twilio_url + MESSAGES.format(account=ACCOUNT)
    good = {"To": ANN, "From": SENDER, "Body": "hi"}
    auth = aiohttp.BasicAuth(ACCOUNT, TOKEN)
    async with aiohttp.ClientSession() as session:
        for form, login, status, code in [
            (good, aiohttp.BasicAuth(ACCOUNT, "wrong"), 401, 20003),
            (good, None, 401, 20003),
            ({"From": SENDER, "Body": "hi"}, auth, 400, 21604),
            ({**good, "To": "415 555 0123"}, auth, 400, 21211),
            ({"To": ANN, "Body": "hi"}, auth, 400, 21603),
            ({"To": ANN, "From": SENDER}, auth, 400, 21602),
            ({**good, "StatusCallback": "not a url"}, auth, 400, 21609),
        ]:
            async with session.post(url, data=form, auth=login) as resp:
                body = await resp.json()
                assert (resp.status, body["code"], body["status"]) == (status, code, status), form
                assert set(body) == {"code", "message", "more_info", "status"}
        other = twilio_url + MESSAGES.format(account="AC" + "f" * 32)
        async with session.post(other, data=good, auth=auth) as resp:
            assert resp.status == 404
        async with session.post(url, data=good, auth=auth) as resp:
            created = await resp.json()
            assert resp.status == 201 and re.match(r"^SM[0-9a-f]{32}$", created["sid"])
            assert (created["status"], created["to"], created["from"]) == ("queued", ANN, SENDER)
    assert len(twilio.messages) == 1


# ---- webhooks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "how",
    ["missing", "wrong token", "tampered body", "other url", "not a form"],
)
async def test_a_forged_webhook_is_401_and_writes_nothing(hub_client, how):
    hub = hub_of(hub_client)
    await known_customer(hub)
    before = await counts(hub)
    params = inbound("SM" + "b" * 32, "STOP")
    path = f"{BASE}/inbound"
    headers = {"X-Twilio-Signature": signer.compute_signature(PUBLIC + path, params)}
    if how == "missing":
        resp = await hub_client.post(path, data=params)
    elif how == "wrong token":
        resp = await post(hub_client, path, params, token="guessed-token")
    elif how == "tampered body":
        resp = await hub_client.post(path, data={**params, "From": "+14155550199"}, headers=headers)
    elif how == "other url":
        signature = signer.compute_signature(PUBLIC + f"{BASE}/status", params)
        resp = await hub_client.post(path, data=params, headers={"X-Twilio-Signature": signature})
    else:
        resp = await hub_client.post(path, json=params, headers=headers)
    assert resp.status == (415 if how == "not a form" else 401)
    body = await resp.json()
    assert body["error"]["code"] == ("unsupported_media_type" if how == "not a form" else "unauthorized")
    assert await counts(hub) == before


async def test_a_webhook_signed_with_hmac_sha256_is_taken(hub_client):
    """An account whose webhooks are signed with HMAC-SHA256 (named in the signature settings
    header) is checked with that algorithm; an algorithm the library cannot verify is a 401."""
    hub = hub_of(hub_client)
    ann = await known_customer(hub)
    settings = "key=webhooks_sharedkey_0123,algorithm=HMAC_SHA256"

    async def signed(path: str, params: dict[str, str], algorithm: str, header: str) -> Any:
        signature = signer.compute_signature(PUBLIC + path, params, algorithm)
        headers = {"X-Twilio-Signature": signature, "X-Twilio-Webhooks-Signature-Settings": header}
        return await hub_client.post(path, data=params, headers=headers)

    params = inbound("SM" + "5" * 32, "Thanks, 5")
    # signed with SHA-1 while the header names SHA-256: forged
    assert (await signed(f"{BASE}/inbound", params, "HMAC_SHA1", settings)).status == 401
    before = await counts(hub)
    refused = await signed(f"{BASE}/inbound", params, "HMAC_SHA1", "key=k,algorithm=HMAC_MD5")
    assert refused.status == 401
    assert (await refused.json())["error"]["field"] == "X-Twilio-Webhooks-Signature-Settings"
    assert await counts(hub) == before
    resp = await signed(f"{BASE}/inbound", params, "HMAC_SHA256", settings)
    assert resp.status == 200, await resp.text()
    (received,) = await sms_events(hub, "message.received")
    assert (received.customer_id, received.data["text"]) == (ann.customer_id, "Thanks, 5")
    resp = await signed(f"{BASE}/status", status_params("SM" + "6" * 32, "delivered"), "HMAC_SHA256", settings)
    assert resp.status == 200, await resp.text()
    (status,) = await sms_events(hub, "message.status")
    assert status.data["status"] == "delivered"


async def test_stop_start_and_help_keywords(hub_client):
    hub = hub_of(hub_client)
    ann = await known_customer(hub)
    await hub.update_customer(ann.customer_id, {"traits": {"suppressed": ["email"]}})

    async def say(n: int, body: str) -> list[str]:
        resp = await post(hub_client, f"{BASE}/inbound", inbound(f"SM{n:032x}", body))
        assert resp.status == 200 and resp.content_type == "text/xml"
        return twiml_messages(await resp.text())

    async def state() -> tuple[bool, Any]:
        view = await hub.view(ann.customer_id)
        return allows(view.consents, "marketing", "sms"), view.customer.traits.get("suppressed")

    assert await say(1, "START") == []
    assert await state() == (True, ["email"])
    assert await say(2, "  Stop \n") == []  # Twilio's Advanced Opt-Out answers STOP itself
    assert await state() == (False, ["email", "sms"])
    assert "sms_opted_out" in await traits_of(hub, ann.customer_id)
    assert await say(3, "stop texting me about visits") == []  # not a keyword: a message
    assert await state() == (False, ["email", "sms"])
    assert await say(4, "unstop") == []
    assert await state() == (True, ["email"])
    assert "sms_opted_out" not in await traits_of(hub, ann.customer_id)
    assert await say(5, "Help") == ["Acme: reply STOP to opt out. Help: acme.example/help"]
    for n, word in enumerate(["STOPALL", "unsubscribe", "Cancel", "END", "quit"], start=10):
        await say(n, word)
        assert await state() == (False, ["email", "sms"]), word
        await say(n + 100, "yes")
        assert await state() == (True, ["email"]), word
    types = [e.type for e in await sms_events(hub)]
    assert types.count("message.received") == 15 and types.count("consent.revoked") == 6
    assert types.count("consent.granted") == 7
    revoked = (await sms_events(hub, "consent.revoked"))[0]
    assert revoked.data == {"purpose": "marketing", "channel": "sms", "source": "sms"}


def test_keywords_are_the_whole_trimmed_body_in_any_case():
    assert [keyword(w) for w in ["stop", " STOP ", "Stop.", "info", "INFO ", "yes please", "Unsubscribe"]] == [
        "stop", "stop", None, "help", "help", None, "stop",
    ]  # fmt: skip


async def test_a_redelivered_message_is_answered_again_and_recorded_once(hub_client):
    hub = hub_of(hub_client)
    params = inbound("SM" + "c" * 32, "HELP")
    first = await post(hub_client, f"{BASE}/inbound", params)
    again = await post(hub_client, f"{BASE}/inbound", params)
    assert await first.text() == await again.text()
    assert len(await sms_events(hub, "message.received")) == 1


@pytest.mark.parametrize(
    ("status", "code", "suppress"),
    [("undelivered", "30005", True), ("failed", "30003", True), ("failed", "30006", True),
     ("undelivered", "30008", False), ("delivered", None, False)],
)  # fmt: skip
async def test_a_permanent_delivery_failure_suppresses_sms(hub_client, status, code, suppress):
    hub = hub_of(hub_client)
    ann = await known_customer(hub)
    resp = await post(hub_client, f"{BASE}/status", status_params("SM" + "d" * 32, status, code))
    assert resp.status == 200
    (recorded,) = await sms_events(hub, "message.status")
    assert recorded.customer_id == ann.customer_id
    assert (recorded.data["status"], recorded.data["error_code"]) == (status, int(code) if code else None)
    traits = await traits_of(hub, ann.customer_id)
    assert suppressed(traits, "sms") is suppress
    if suppress:
        assert traits["sms_undeliverable"]["error_code"] == int(code or 0)
    bounced = await sms_events(hub, "message.bounced")
    assert [(b.event_id, b.data) for b in bounced] == (
        [
            (
                f"sms:bounced:SM{'d' * 32}",
                {"channel": "sms", "status": status, "in_reply_to": None, "error_code": int(code or 0)},
            )
        ]
        if suppress
        else []
    )


async def test_a_permanent_failure_is_a_bounce_once_per_message(hub_client):
    """A permanent failure of a message the hub sent is a ``message.bounced`` in its dialogue,
    as the email touch point records one, recorded once however many statuses tell of it."""
    hub = hub_of(hub_client)
    ann = await known_customer(hub)
    sent = await texted(hub)
    message_id, sid = sent.data["message_id"], sent.data["ref"]
    path = f"{BASE}/status?{urlencode({'message': message_id})}"
    for status in ("sent", "undelivered", "failed"):
        resp = await post(hub_client, path, status_params(sid, status, None if status == "sent" else "30005"))
        assert resp.status == 200
    (bounced,) = await sms_events(hub, "message.bounced")
    (shown,) = doc_blocks("test_a_permanent_failure_is_a_bounce_once_per_message")
    shown = json.loads(shown)
    assert (bounced.type, bounced.direction) == (shown["type"], shown["direction"])
    assert set(bounced.data) == set(shown["data"])
    assert bounced.data == {"channel": "sms", "status": "undelivered", "in_reply_to": message_id, "error_code": 30005}
    assert bounced.event_id == f"sms:bounced:{message_id}"
    assert (bounced.customer_id, bounced.dialogue_id) == (ann.customer_id, sent.dialogue_id)
    assert bounced.identities == [f"phone:{ANN}"]
    assert suppressed(await traits_of(hub, ann.customer_id), "sms")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (status_params("SM" + "e" * 32, "exploded"), "MessageStatus"),
        (status_params("SM" + "e" * 32, "failed", "thirty"), "ErrorCode"),
        (status_params("SM/../x", "sent"), "MessageSid"),
        ({**status_params("SM" + "e" * 32, "sent"), "Body": "a\x00b"}, "Body"),
        ({**status_params("SM" + "e" * 32, "sent"), "message": "act_1\x00"}, "message"),
    ],
)
async def test_a_bad_status_callback_is_422_naming_the_field_and_writes_nothing(hub_client, params, field):
    hub = hub_of(hub_client)
    before = await counts(hub)
    params = dict(params)  # the same dict for every database: pop from a copy
    query = params.pop("message", None)
    path = f"{BASE}/status" + (f"?{urlencode({'message': query})}" if query else "")
    resp = await post(hub_client, path, params)
    assert resp.status == 422 and (await resp.json())["error"]["field"] == field
    assert await counts(hub) == before


def test_the_settings_name_what_is_wrong(database_url):
    def settings(drop: str = "", **sms: Any) -> Any:
        raw = {"account_sid": ACCOUNT, "auth_token": TOKEN, "from": SENDER, **sms}
        raw.pop(drop, None)
        return SmsSettings.from_config(Config(database_url=database_url, raw={"touchpoints": {"sms": raw}}))

    assert SmsSettings.from_config(Config(database_url=database_url)) is None
    with pytest.raises(ConfigError, match="callback_url"):
        settings()
    for drop, bad, key in [
        ("", {"auth_token": ""}, "auth_token"),
        ("", {"account_sid": "x"}, "account_sid"),
        ("from", {}, "messaging_service_sid"),
        ("", {"messaging_service_sid": "MGx"}, "messaging_service_sid"),
        ("", {"api_base": "ftp://x"}, "api_base"),
        ("from", {"frm": SENDER}, "frm"),
        ("", {"permanent_error_codes": ["30005"]}, "permanent_error_codes"),
    ]:
        with pytest.raises(ConfigError, match=key):
            settings(drop, callback_url=PUBLIC, **bad)
    got = settings(callback_url=PUBLIC + "/")
    assert (got.callback_url, got.api_base) == (PUBLIC, "https://api.twilio.com")


# ---- docs/messaging.md ----------------------------------------------------------------------


def doc_blocks(test: str) -> list[str]:
    """The fenced blocks of docs/messaging.md marked ``<!-- sample: tested-by tests/test_sms.py::test -->``."""
    text = DOC.read_text(encoding="utf-8")
    pattern = rf"<!-- sample: tested-by tests/test_sms.py::{test} -->\n```[a-z]*\n(.*?)```"
    found = re.findall(pattern, text, flags=re.S)
    assert found, f"docs/messaging.md has no block tested by {test}"
    return found


async def test_the_documented_configuration_sends_and_answers(tmp_path, aiohttp_client, aiohttp_server, monkeypatch):
    """The configuration docs/messaging.md shows sends through Twilio (a double of it here) and
    answers HELP with the TwiML it shows."""
    config_text, help_answer = doc_blocks("test_the_documented_configuration_sends_and_answers")
    documented = tomllib.loads(config_text)["touchpoints"]["sms"]
    twilio = FakeTwilio(documented["account_sid"], TOKEN)
    server = await aiohttp_server(twilio.app())
    file = tmp_path / "prm.toml"
    file.write_text(f'{config_text}api_base = "{str(server.make_url("")).rstrip("/")}"\n', encoding="utf-8")
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", TOKEN)
    config = load_config(file, database_url=f"sqlite:///{tmp_path}/prm.db")
    client = await aiohttp_client(create_app(config))
    hub = hub_of(client)
    result = await hub.pm.hook.prm_send_message(message=message(to="(415) 555-0123"))
    assert result.status == "sent"
    assert twilio.messages[0]["From"] == documented["from"] and twilio.messages[0]["To"] == ANN
    assert twilio.messages[0]["StatusCallback"].startswith(documented["callback_url"] + BASE + "/status?message=")
    resp = await post(client, f"{BASE}/inbound", inbound("SM" + "7" * 32, "help"))
    assert resp.status == 200
    assert await resp.text() == help_answer.strip()
    assert twiml_messages(help_answer) == [documented["help_text"]]


async def test_the_documented_sms_samples(hub_client, twilio):
    """The routes, the events docs/messaging.md shows are the hub's."""
    hub = hub_of(hub_client)
    routes, received_shown, status_shown = doc_blocks("test_the_documented_sms_samples")
    mounted = {(r.method, r.resource.canonical) for r in hub_client.server.app.router.routes() if r.resource}
    for line in routes.strip().splitlines():
        method, path = line.split()[:2]
        assert (method, path.split("?")[0]) in mounted, line
    await known_customer(hub)
    sent = await texted(hub)
    message_id, sid = sent.data["message_id"], sent.data["ref"]
    (accepted,) = await sms_events(hub, "message.status")
    resp = await post(hub_client, f"{BASE}/inbound", inbound("SM" + "f" * 32, "5, he was great"))
    assert resp.status == 200
    (received,) = await sms_events(hub, "message.received")
    shown = json.loads(received_shown)
    assert (shown["type"], shown["touchpoint"], shown["direction"]) == (received.type, "sms", received.direction)
    assert set(shown["data"]) == set(received.data) and received.data["in_reply_to"] == message_id
    assert (
        received.identities == [f"phone:{shown['identities']['phone']}"]
        and received.dialogue_id == accepted.dialogue_id == sent.dialogue_id
    )
    path = f"{BASE}/status?message={message_id}"
    resp = await post(hub_client, path, status_params(sid, "undelivered", "30005"))
    assert resp.status == 200
    (status,) = [e for e in await sms_events(hub, "message.status") if e.data["status"] == "undelivered"]
    shown = json.loads(status_shown)
    assert shown["type"] == status.type and set(shown["data"]) == set(status.data)
    assert status.data == {**shown["data"], "message_id": message_id, "sid": sid}
    assert status.dialogue_id == accepted.dialogue_id
