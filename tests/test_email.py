"""The email touch point (prm_email) against a real SMTP server (aiosmtpd): what goes out
(parts, headers, one Message-ID per message, sent once), what fails and what is retried, replies
threaded into the message's dialogue, Mailgun's signed posts, bounces suppressing the address,
the unsubscribe link, and a trigger's welcome email end to end."""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import hmac
import json
import re
import secrets
import socket
import time
import tomllib
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from attrs import evolve
from polling import until
from prm_email import EmailSender, sender_of
from prm_email.inbound import strip_quoted
from prm_email.sending import TransportUnavailable, send_email
from prm_email.settings import email_settings
from prm_email.signing import message_id, unsubscribe_token

from prm_core.config import Config, Table
from prm_core.errors import ConfigError
from prm_core.privacy.consents import write_consents
from prm_core.server.state import HUB
from prm_core.store.tables import events, trigger_runs, utcnow
from prm_core.triggers import Message, MessageResult

SECRET = "s3cret-" + "x" * 40
MAILGUN_KEY = "key-mailgun-signing-0123456789"
DOMAIN = "shop.example"


class Inbox:
    """An SMTP server's handler: keeps what it accepts, refuses listed recipients with 550."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.refuse: set[str] = set()
        self.controller: Any = None

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.refuse:
            return "550 5.1.1 <" + address + ">: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.received.append(parsed)
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def inbox() -> Iterator[Inbox]:
    handler = Inbox(free_port())
    controller = Controller(handler, hostname="127.0.0.1", port=handler.port)
    handler.controller = controller
    controller.start()
    try:
        yield handler
    finally:
        handler.controller.stop()  # the one running: a test that stops the server starts another


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    root = tmp_path / "templates"
    (root / "en").mkdir(parents=True)
    (root / "fr").mkdir()
    (root / "en" / "promo.txt").write_text(
        "Hello {{ first_name }},\n\n{{ text }}\n\nUnsubscribe: {{ unsubscribe_url }}\n"
    )
    (root / "en" / "promo.html").write_text(
        '<p>Hello {{ first_name }},</p><p>{{ text }}</p><a href="{{ unsubscribe_url }}">Unsubscribe</a>'
    )
    (root / "fr" / "promo.txt").write_text("Bonjour {{ first_name }},\n\n{{ text }}\n")
    (root / "fr" / "promo.html").write_text("<p>Bonjour {{ first_name }},</p><p>{{ text }}</p>")
    (root / "fr" / "promo.subject").write_text("Une offre pour {{ first_name }}")
    return root


WELCOME = {
    "on": "event.recorded",
    "when": "change['type'] == 'signup'",
    "purpose": "transactional",
    "action": {"kind": "message", "channel": "email", "subject": "Welcome", "template": "Welcome, $first_name!"},
}
PROMO = {
    "on": "event.recorded",
    "when": "change['type'] == 'browse'",
    "action": {"kind": "message", "channel": "email", "subject": "A deal", "template": "20% off shoes today."},
}


def email_section(port: int, templates: Path | None = None, **extra: Any) -> dict[str, Any]:
    section = {
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "timeout_s": 5,
        "from": "Shop <hello@shop.example>",
        "reply_to": "replies@shop.example",
        "secret": SECRET,
        "mailgun_signing_key": MAILGUN_KEY,
        **extra,
    }
    if templates is not None:
        section["templates"] = str(templates)
    return section


@pytest.fixture
def hub_config(database_url: str, inbox: Inbox, templates: Path) -> Config:
    raw = {
        "touchpoints": {"email": email_section(inbox.port, templates, budget_ms=1500)},
        "triggers": {"poll_s": 0.02, "quiet_hours": "none", "welcome": WELCOME, "promo": PROMO},
    }
    return Config(database_url=database_url, public_url="https://hub.example.com", raw=raw)


def msg(**changes: Any) -> Message:
    base = Message(
        id="act_" + "a" * 40,
        channel="email",
        customer_id="cus_ann",
        text="20% off shoes today.",
        purpose="marketing",
        trigger="promo",
        to="ann@example.com",
        subject="A deal",
        locale="en-GB",
        first_name="Ann <b>",
    )
    return evolve(base, **changes)


def sender(hub: Any) -> EmailSender:
    """The hub's own email sender (registered while it runs)."""
    found = sender_of(hub)
    assert found is not None
    return found


async def hand_over(hub: Any, message: Message) -> MessageResult:
    answer = hub.pm.hook.prm_send_message(message=message)
    return await answer


def text_of(mail: EmailMessage, subtype: str) -> str:
    part = mail.get_body(preferencelist=(subtype,))
    assert part is not None and part.get_content_type() == f"text/{subtype}"
    return str(part.get_content()).replace("\r\n", "\n")  # as sent on the wire


async def signup(client: Any, event_id: str, address: str, type_: str = "signup", **traits: Any) -> Any:
    hub = client.app[HUB]
    body = {"id": event_id, "type": type_, "occurred_at": utcnow().isoformat(), "identities": {"email": address}}
    (recorded,) = await hub.record(hub.parse_events(body, "web"))
    if traits:
        await hub.add_traits({recorded.customer_id: traits})
    return recorded


async def runs_of(hub: Any, trigger: str) -> list[Any]:
    q = sa.select(trigger_runs).where(trigger_runs.c.trigger == trigger).order_by(trigger_runs.c.created_at)
    return await hub.store.read(lambda conn: list(conn.execute(q)))


async def settled(hub: Any, trigger: str, count: int = 1) -> list[Any]:
    async def check() -> list[Any] | None:
        found = [r for r in await runs_of(hub, trigger) if r.status != "scheduled"]
        return found if len(found) >= count else None

    return await until(check)


async def event_count(hub: Any) -> int:
    q = sa.select(sa.func.count()).select_from(events).where(events.c.touchpoint == "email")
    return int(await hub.store.read(lambda conn: conn.execute(q).scalar_one()))


# ---- sending -------------------------------------------------------------------------


async def test_a_marketing_email_has_its_parts_headers_and_unsubscribe_link(hub_client, inbox):
    hub = hub_client.app[HUB]
    result = await hand_over(hub, msg())
    (mail,) = inbox.received
    assert result == MessageResult("sent", ref=mail["Message-ID"])
    assert mail["Message-ID"] == message_id(SECRET.encode(), DOMAIN, "act_" + "a" * 40, "ann@example.com")
    assert mail["Message-ID"].startswith("<act_" + "a" * 40 + ".") and mail["Message-ID"].endswith("@shop.example>")
    assert (mail["From"], mail["To"], mail["Reply-To"]) == (
        "Shop <hello@shop.example>",
        "ann@example.com",
        "replies@shop.example",
    )
    assert inbox.envelopes == [("hello@shop.example", ["ann@example.com"])]
    assert mail["Subject"] == "A deal"
    assert mail.get_content_type() == "multipart/alternative"
    link = "https://hub.example.com/v1/touchpoints/email/unsubscribe/" + unsubscribe_token(SECRET.encode(), "cus_ann")
    assert mail["List-Unsubscribe"] == f"<{link}>"
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # en-GB falls back to en; the text part as written, the HTML part escaped
    assert text_of(mail, "plain") == f"Hello Ann <b>,\n\n20% off shoes today.\n\nUnsubscribe: {link}\n"
    html = text_of(mail, "html")
    assert "<p>Hello Ann &lt;b&gt;,</p>" in html and f'href="{link}"' in html


async def test_the_customer_locale_chooses_the_template_and_its_subject(hub_client, inbox):
    await hand_over(hub_client.app[HUB], msg(locale="fr-CA", first_name="Zoé"))
    (mail,) = inbox.received
    assert mail["Subject"] == "Une offre pour Zoé"
    assert text_of(mail, "plain") == "Bonjour Zoé,\n\n20% off shoes today.\n"


async def test_without_a_template_the_text_is_sent_and_its_html_escaped(hub_client, inbox):
    message = msg(trigger="receipt", purpose="transactional", text="Your order <42> ships today.\nThanks!")
    await hand_over(hub_client.app[HUB], message)
    (mail,) = inbox.received
    assert text_of(mail, "plain") == "Your order <42> ships today.\nThanks!\n"
    assert "<p>Your order &lt;42&gt; ships today.<br>\nThanks!</p>" in text_of(mail, "html")
    assert '<html lang="en-GB">' in text_of(mail, "html")
    assert mail["List-Unsubscribe"] is None  # transactional: no list to leave


async def test_a_message_handed_over_twice_is_sent_once_with_one_message_id(hub_client, inbox):
    hub = hub_client.app[HUB]
    first = await hand_over(hub, msg())
    again = await hand_over(hub, msg())
    assert first == again and first.status == "sent"
    assert len(inbox.received) == 1
    other = await hand_over(hub, msg(id="act_" + "b" * 40))
    assert other.ref != first.ref and len(inbox.received) == 2


async def test_other_channels_are_left_to_other_plugins(hub_client, inbox):
    assert sender(hub_client.app[HUB]).settings.port == inbox.port
    assert hub_client.app[HUB].pm.hook.prm_send_message(message=msg(channel="sms")) is None


async def test_each_hub_sends_with_its_own_settings_while_it_runs(hub_client, inbox, database_url, aiohttp_client):
    """Two hubs in one process, each with its own server and sender: neither borrows the other's
    settings, whichever started last, and one stopping leaves the other sending."""
    from prm_core.server.app import create_app

    first = hub_client.app[HUB]
    other_inbox = Inbox(free_port())
    other_inbox.controller = Controller(other_inbox, hostname="127.0.0.1", port=other_inbox.port)
    other_inbox.controller.start()
    try:
        section = email_section(other_inbox.port, **{"from": "Other <hi@other.example>"})
        config = Config(database_url=database_url, raw={"touchpoints": {"email": section}})
        other_client = await aiohttp_client(create_app(config))
        second = other_client.app[HUB]
        assert sender(first) is not sender(second) and sender(second).hub is second

        assert (await hand_over(first, msg(id="act_first"))).status == "sent"
        assert (await hand_over(second, msg(id="act_second"))).status == "sent"
        assert [m["From"] for m in inbox.received] == ["Shop <hello@shop.example>"]
        assert [m["From"] for m in other_inbox.received] == ["Other <hi@other.example>"]

        await other_client.close()  # the second hub stops
        assert sender_of(second) is None
        assert (await hand_over(first, msg(id="act_after"))).status == "sent" and len(inbox.received) == 2
    finally:
        other_inbox.controller.stop()


async def test_a_server_that_is_down_raises_so_the_engine_retries(hub_client, inbox):
    mine = sender(hub_client.app[HUB])
    down = evolve(mine.settings, port=free_port())
    with pytest.raises(TransportUnavailable):
        await send_email(msg(), down, mine.templates, hub_client.app[HUB])
    # and the message was not marked sent: the retry sends it
    result = await hand_over(hub_client.app[HUB], msg())
    assert result.status == "sent" and len(inbox.received) == 1


async def test_a_trigger_message_waits_for_the_server_to_come_back(hub_client, inbox):
    hub = hub_client.app[HUB]
    inbox.controller.stop()
    await signup(hub_client, "v-1", "ann@example.com", type_="visit", first_name="Ann")
    await signup(hub_client, "s-1", "ann@example.com")

    async def retrying() -> Any:
        found = await runs_of(hub, "welcome")
        return found if found and found[0].reason and "TransportUnavailable" in found[0].reason else None

    (run,) = await until(retrying)
    assert run.status == "scheduled" and run.attempts >= 1
    inbox.controller = Controller(inbox, hostname="127.0.0.1", port=inbox.port)  # back, on the same port
    inbox.controller.start()
    (run,) = await settled(hub, "welcome")
    assert run.status == "fired" and [m["To"] for m in inbox.received] == ["ann@example.com"]
    settings = sender(hub).settings
    assert repr(settings).count(SECRET) == 0 and MAILGUN_KEY not in repr(settings)


async def test_a_recipient_refused_for_good_fails_the_message(hub_client, inbox):
    inbox.refuse.add("gone@example.com")
    result = await hand_over(hub_client.app[HUB], msg(to="gone@example.com"))
    assert result.status == "failed" and "550" in result.reason
    assert "gone@example.com" not in result.reason  # no address in the run's reason
    assert inbox.received == []
    assert (await hand_over(hub_client.app[HUB], msg(to=None))).reason == "the customer has no email address"
    assert (await hand_over(hub_client.app[HUB], msg(to="not an address"))).status == "failed"


async def test_the_maildir_transport_writes_eml_files(hub_client, inbox, tmp_path):
    mine = sender(hub_client.app[HUB])
    settings = evolve(mine.settings, transport="maildir", maildir=tmp_path / "mail")
    result = await send_email(msg(), settings, mine.templates, hub_client.app[HUB])
    (written,) = (tmp_path / "mail" / "new").glob("*.eml")
    parsed = email.message_from_bytes(written.read_bytes(), policy=email.policy.default)
    assert parsed["Message-ID"] == result.ref and inbox.received == []


def test_settings_are_checked_naming_the_key(tmp_path):
    def check(**section: Any) -> None:
        raw = {"touchpoints": {"email": {"from": "hello@shop.example", "secret": SECRET, **section}}}
        email_settings(Config(raw=raw))

    check()
    for section, key in [
        ({"port": 0}, "[touchpoints.email].port"),
        ({"security": "ssl"}, "[touchpoints.email].security"),
        ({"secret": "short"}, "[touchpoints.email].secret"),
        ({"from": "nobody"}, "[touchpoints.email].from"),
        ({"transport": "maildir"}, "[touchpoints.email].maildir"),
        ({"templates": str(tmp_path / "none")}, "[touchpoints.email].templates"),
        ({"unsubscribe_url": "ftp://x"}, "[touchpoints.email].unsubscribe_url"),
        ({"colour": "red"}, "[touchpoints.email].colour"),
        ({"budget_ms": 0}, "[touchpoints.email].budget_ms"),
        ({"budget_ms": "fast"}, "[touchpoints.email].budget_ms"),
    ]:
        with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
            check(**section)
    assert email_settings(Config(raw={})) is None
    assert email_settings(Config(raw={"touchpoints": {"email": {}}})) is None
    # the settings are the touch point's: a top-level [email] table is not read (config check names it)
    assert email_settings(Config(raw={"email": {"from": "hello@shop.example", "secret": SECRET}})) is None
    assert email_settings(Config(raw={"touchpoints": {"email": {"from": "a@shop.example", "secret": SECRET}}}))
    # paths are relative to the config file
    (tmp_path / "tpl").mkdir()
    beside = Config(
        source=tmp_path / "prm.toml",
        raw={
            "touchpoints": {
                "email": {"from": "a@shop.example", "secret": SECRET, "templates": "tpl", "maildir": "mail"}
            }
        },
    )
    found = email_settings(beside)
    assert found is not None and (found.templates, found.maildir) == (tmp_path / "tpl", tmp_path / "mail")


async def test_the_settings_are_the_touch_points_table(hub_client):
    from prm_core.config_check import config_warnings

    assert hub_client.app[HUB].touchpoint("email").budget_ms == 1500  # [touchpoints.email] budget_ms
    assert config_warnings(hub_client.app[HUB].config, ["email"]) == []
    stray = Config(raw={"email": {"from": "hello@shop.example", "secret": SECRET}})
    assert config_warnings(stray, ["email"]) == ["[email] is not a table the hub reads"]


def test_a_reply_and_a_bounce_keep_the_cores_labels():
    """Email and SMS record the same message events: their words are the core's, whichever
    touch points are configured."""
    import prm_email
    import prm_sms

    from prm_core.labels import merge_labels

    config = Config(raw={"touchpoints": {"email": {"from": "hello@shop.example", "secret": SECRET}}})
    assert not hasattr(prm_email, "prm_event_labels")
    labels = merge_labels([prm_sms.prm_event_labels(config)])
    assert labels["message.received"] == "replied"
    assert labels["message.bounced"] == "a message to them bounced"


# ---- end to end: a trigger's message, a reply, a bounce, an unsubscribe -----------------


async def welcome_sent(hub_client: Any, inbox: Inbox, address: str = "ann@example.com") -> tuple[Any, Any, Any]:
    """Ann signs up; the welcome trigger's email reaches the SMTP server."""
    hub = hub_client.app[HUB]
    ann = await signup(hub_client, "v-" + address, address, type_="visit", first_name="Ann", locale="fr")
    await signup(hub_client, "s-" + address, address)
    (run,) = await settled(hub, "welcome")
    assert (run.status, run.reason) == ("fired", None)
    (mail,) = [m for m in inbox.received if m["To"] == address]
    view = await hub.view(ann.customer_id)
    (sent,) = [e for e in view.timeline if e["type"] == "message.sent"]
    return ann, mail, sent


async def test_a_trigger_sends_its_welcome_email_through_smtp(hub_client, inbox):
    _ann, mail, sent = await welcome_sent(hub_client, inbox)
    assert mail["Subject"] == "Welcome"
    assert text_of(mail, "plain") == "Welcome, Ann!\n"  # no "welcome" template: the trigger's text
    # the outbound event keeps the Message-ID
    assert sent["direction"] == "outbound" and sent["touchpoint"] == "email"
    assert sent["data"]["ref"] == mail["Message-ID"]
    assert mail["Message-ID"].startswith("<" + sent["data"]["message_id"] + ".")


REPLY = """\
From: Ann <Ann@Example.com>
To: replies@shop.example
Subject: Re: Welcome
Message-ID: <reply-1@mail.example.com>
In-Reply-To: {in_reply_to}
References: {in_reply_to}
Content-Type: text/plain; charset=utf-8

Thanks, can I change my delivery address?

On Sat, Dec 5, 2026 at 10:00 AM Shop <hello@shop.example> wrote:
> Welcome, Ann!
"""


async def post_mail(client: Any, raw: str, key: str) -> Any:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "message/rfc822"}
    return await client.post("/v1/touchpoints/email/inbound", data=raw.encode(), headers=headers)


async def test_a_reply_is_recorded_in_the_dialogue_of_the_message_it_answers(hub_client, inbox, make_key):
    ann, mail, sent = await welcome_sent(hub_client, inbox)
    key = await make_key("touchpoint:email")
    resp = await post_mail(hub_client, REPLY.format(in_reply_to=mail["Message-ID"]), key)
    assert resp.status == 200, await resp.text()
    (got,) = (await resp.json())["recorded"]
    message_id_ = sent["data"]["message_id"]
    assert got["type"] == "message.received" and got["in_reply_to"] == message_id_
    assert got["customer_id"] == ann.customer_id and got["dialogue_id"] == sent["dialogue"]
    view = await hub_client.app[HUB].view(ann.customer_id)
    (reply,) = [e for e in view.timeline if e["type"] == "message.received"]
    assert reply["data"] == {
        "channel": "email",
        "text": "Thanks, can I change my delivery address?",
        "in_reply_to": message_id_,
        "subject": "Re: Welcome",
    }
    assert reply["direction"] == "inbound" and reply["dialogue"] == sent["dialogue"]
    # the same email posted again is the same event
    again = await post_mail(hub_client, REPLY.format(in_reply_to=mail["Message-ID"]), key)
    assert (await again.json())["recorded"][0]["duplicate"] is True


async def test_a_reply_from_another_address_threads_nowhere(hub_client, inbox, make_key):
    ann, mail, sent = await welcome_sent(hub_client, inbox)
    forged = REPLY.format(in_reply_to=mail["Message-ID"]).replace("Ann <Ann@Example.com>", "bob@example.com")
    resp = await post_mail(hub_client, forged.replace("reply-1@", "reply-2@"), await make_key("touchpoint:email"))
    (got,) = (await resp.json())["recorded"]
    assert got["in_reply_to"] is None
    assert got["customer_id"] != ann.customer_id and got["dialogue_id"] != sent["dialogue"]


async def test_the_inbound_route_refuses_what_is_not_an_email(hub_client, make_key):
    key = await make_key("touchpoint:email")
    hub = hub_client.app[HUB]
    resp = await hub_client.post("/v1/touchpoints/email/inbound", json={}, headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 415
    resp = await post_mail(hub_client, "Subject: no sender\n\nhello\n", key)
    assert resp.status == 422 and (await resp.json())["error"]["field"] == "From"
    resp = await post_mail(hub_client, REPLY.format(in_reply_to="<x@y>"), await make_key("touchpoint:web"))
    assert resp.status == 403
    assert await event_count(hub) == 0


async def test_what_an_email_holds_that_the_hub_cannot_keep_is_left_out(hub_client, make_key):
    key = await make_key("touchpoint:email")
    raw = (
        b"From: ann@example.com\r\nSubject: a\x00b\xff\r\nMessage-ID: <odd-1@mail.example.com>\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nhello\x00 there \xed\xa0\x80\x07!\r\n"
    )
    resp = await hub_client.post(
        "/v1/touchpoints/email/inbound",
        data=raw,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "message/rfc822"},
    )
    assert resp.status == 200, await resp.text()
    (got,) = (await resp.json())["recorded"]
    view = await hub_client.app[HUB].view(got["customer_id"])
    (event,) = [e for e in view.timeline if e["type"] == "message.received"]
    assert event["data"]["text"].startswith("hello there ") and "\x00" not in event["data"]["text"]
    assert "\x00" not in event["data"]["subject"]


def mailgun_fields(timestamp: int | None = None, key: str = MAILGUN_KEY, **fields: str) -> dict[str, str]:
    """Fields as Mailgun signs each attempt: the timestamp, a new random token, their HMAC."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    token = secrets.token_hex(25)
    signature = hmac.new(key.encode(), (ts + token).encode(), hashlib.sha256).hexdigest()
    return {"timestamp": ts, "token": token, "signature": signature, **fields}


async def test_mailgun_posts_are_recorded_when_signed_and_refused_otherwise(hub_client, inbox):
    ann, mail, sent = await welcome_sent(hub_client, inbox)
    hub = hub_client.app[HUB]
    headers = f'[["Message-Id", "<mg-1@mail.example.com>"], ["In-Reply-To", "{mail["Message-ID"]}"]]'
    fields = {
        "from": "Ann <ann@example.com>",
        "subject": "Re: Welcome",
        "body-plain": "Yes please\n\n> Welcome, Ann!\n",
        "stripped-text": "Yes please",
        "message-headers": headers,
    }
    before = await event_count(hub)
    for bad in (
        mailgun_fields(key="key-someone-else", **fields),  # forged
        mailgun_fields(timestamp=int(time.time()) - 3600, **fields),  # stale: a replay
        {k: v for k, v in mailgun_fields(**fields).items() if k != "signature"},
    ):
        resp = await hub_client.post("/v1/touchpoints/email/mailgun", data=bad)
        assert resp.status == 401, await resp.text()
    assert await event_count(hub) == before
    resp = await hub_client.post("/v1/touchpoints/email/mailgun", data=mailgun_fields(**fields))
    assert resp.status == 200, await resp.text()
    (got,) = (await resp.json())["recorded"]
    assert got["in_reply_to"] == sent["data"]["message_id"] and got["dialogue_id"] == sent["dialogue"]
    view = await hub.view(ann.customer_id)
    (reply,) = [e for e in view.timeline if e["type"] == "message.received"]
    assert reply["data"]["text"] == "Yes please"
    resp = await hub_client.post("/v1/touchpoints/email/mailgun", data=mailgun_fields(subject="no sender"))
    assert resp.status == 406 and (await resp.json())["error"]["field"] == "From"


async def test_a_mailgun_signature_is_accepted_once(hub_client, inbox):
    """Mailgun signs the timestamp and token, not the body: a captured signature replayed, with
    another body or the same, is refused and writes nothing; Mailgun's own retry, signed anew,
    records nothing twice."""
    ann, mail, _sent = await welcome_sent(hub_client, inbox)
    hub = hub_client.app[HUB]
    route = "/v1/touchpoints/email/mailgun"
    fields = {"from": "ann@example.com", "subject": "Re: Welcome", "stripped-text": "Yes please"}
    first = mailgun_fields(**fields)
    resp = await hub_client.post(route, data=first)
    assert resp.status == 200 and len((await resp.json())["recorded"]) == 1
    after = await event_count(hub)
    forged = {**first, "from": "bob@example.com", "stripped-text": "Cancel everything"}
    for replayed in (forged, first):
        resp = await hub_client.post(route, data=replayed)
        assert resp.status == 401, await resp.text()
        assert "used already" in (await resp.json())["error"]["message"]
    assert await event_count(hub) == after
    retried = await hub_client.post(route, data=mailgun_fields(**fields))  # re-signed: a new token
    assert retried.status == 200 and (await retried.json())["recorded"][0]["duplicate"] is True
    assert await event_count(hub) == after

    # two posts racing with one token: one is recorded
    race = mailgun_fields(**{**fields, "stripped-text": "Race"})
    bodies = [race, {**race, "stripped-text": "Race, forged"}]
    answers = await asyncio.gather(*(hub_client.post(route, data=b) for b in bodies))
    assert sorted(r.status for r in answers) == [200, 401]
    assert await event_count(hub) == after + 1

    # the delivery webhooks too: a harmless event's signature does not carry a complaint
    complained = {
        "event": "complained",
        "recipient": "ann@example.com",
        "message": {"headers": {"message-id": mail["Message-ID"].strip("<>")}},
    }
    delivered = mailgun_event({"event": "delivered"})
    assert (await hub_client.post(route + "/events", json=delivered)).status == 200
    resp = await hub_client.post(route + "/events", json={**delivered, "event-data": complained})
    assert resp.status == 401, await resp.text()
    assert await event_count(hub) == after + 1
    assert [c for c in (await hub.view(ann.customer_id)).consents if c["channel"] == "email"] == []


DSN = """\
From: Mail Delivery System <MAILER-DAEMON@mx.example.net>
To: hello@shop.example
Subject: Undelivered Mail Returned to Sender
Message-ID: <dsn-{n}@mx.example.net>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="BOUNDARY"

--BOUNDARY
Content-Type: text/plain

Your message could not be delivered.

--BOUNDARY
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; {recipient}
Action: failed
Status: {status}
Diagnostic-Code: smtp; 550 5.1.1 User unknown

--BOUNDARY
Content-Type: text/rfc822-headers

From: Shop <hello@shop.example>
To: {recipient}
Subject: Welcome
Message-ID: {original}

--BOUNDARY--
"""


async def test_a_bounce_suppresses_email_for_the_customer(hub_client, inbox, make_key):
    ann, mail, sent = await welcome_sent(hub_client, inbox)
    hub = hub_client.app[HUB]
    key = await make_key("touchpoint:email")
    # a delay, and a report about a message the hub did not send to that address: nothing
    delayed = DSN.format(n=1, recipient="ann@example.com", status="4.4.1", original=mail["Message-ID"])
    assert (await (await post_mail(hub_client, delayed, key)).json())["recorded"] == []
    other = DSN.format(n=2, recipient="bob@example.com", status="5.1.1", original=mail["Message-ID"])
    assert (await (await post_mail(hub_client, other, key)).json())["recorded"] == []
    assert (await hub.view(ann.customer_id)).customer.traits.get("suppressed") is None

    bounce = DSN.format(n=3, recipient="ann@example.com", status="5.1.1", original=mail["Message-ID"])
    resp = await post_mail(hub_client, bounce, key)
    (got,) = (await resp.json())["recorded"]
    assert got["type"] == "message.bounced" and got["customer_id"] == ann.customer_id
    assert got["dialogue_id"] == sent["dialogue"]
    again = await (await post_mail(hub_client, bounce, key)).json()
    assert again["recorded"][0]["duplicate"] is True
    view = await hub.view(ann.customer_id)
    assert view.customer.traits["suppressed"] == ["email"]
    (bounced,) = [e for e in view.timeline if e["type"] == "message.bounced"]
    assert bounced["data"] == {"channel": "email", "status": "5.1.1", "in_reply_to": sent["data"]["message_id"]}
    # the trigger guards now skip email to her
    await signup(hub_client, "s-again", "ann@example.com")
    runs = await settled(hub, "welcome", 2)
    assert (runs[-1].status, runs[-1].reason) == ("skipped", "the customer is suppressed")
    assert len(inbox.received) == 1


def mailgun_event(event: dict[str, Any], key: str = MAILGUN_KEY, timestamp: int | None = None) -> dict[str, Any]:
    signed = mailgun_fields(timestamp=timestamp, key=key, subject=json.dumps(event))
    return {"signature": {k: signed[k] for k in ("timestamp", "token", "signature")}, "event-data": event}


async def test_mailgun_permanent_failures_suppress_email_and_other_events_are_acknowledged(hub_client, inbox):
    ann, mail, sent = await welcome_sent(hub_client, inbox)
    hub = hub_client.app[HUB]
    failed = {
        "event": "failed",
        "severity": "permanent",
        "reason": "bounce",
        "recipient": "ann@example.com",
        "message": {"headers": {"message-id": mail["Message-ID"].strip("<>")}},
        "delivery-status": {"code": 550, "enhanced-code": "5.1.1", "message": "No such user"},
    }
    route = "/v1/touchpoints/email/mailgun/events"
    before = await event_count(hub)
    for bad in (mailgun_event(failed, key="key-other"), mailgun_event(failed, timestamp=int(time.time()) - 900)):
        assert (await hub_client.post(route, json=bad)).status == 401
    temporary = await hub_client.post(route, json=mailgun_event({**failed, "severity": "temporary"}))
    assert (await temporary.json()) == {"recorded": [], "ignored": "neither a permanent failure nor a complaint"}
    other = await hub_client.post(route, json=mailgun_event({**failed, "recipient": "bob@example.com"}))
    assert (await other.json())["recorded"] == []
    assert await event_count(hub) == before

    resp = await hub_client.post(route, json=mailgun_event(failed))
    (got,) = (await resp.json())["recorded"]
    assert (got["type"], got["customer_id"], got["dialogue_id"]) == (
        "message.bounced",
        ann.customer_id,
        sent["dialogue"],
    )
    assert (await hub.view(ann.customer_id)).customer.traits["suppressed"] == ["email"]


async def test_a_spam_complaint_through_mailgun_withdraws_marketing_consent(hub_client, inbox):
    ann, mail, sent = await welcome_sent(hub_client, inbox)
    hub = hub_client.app[HUB]
    complained = {
        "event": "complained",
        "recipient": "ann@example.com",
        "message": {"headers": {"message-id": mail["Message-ID"].strip("<>")}},
    }
    route = "/v1/touchpoints/email/mailgun/events"
    other = await hub_client.post(route, json=mailgun_event({**complained, "recipient": "bob@example.com"}))
    assert (await other.json())["recorded"] == []
    resp = await hub_client.post(route, json=mailgun_event(complained))
    (got,) = (await resp.json())["recorded"]
    assert got["type"] == "consent.revoked" and got["dialogue_id"] == sent["dialogue"]
    view = await hub.view(ann.customer_id)
    (consent,) = [c for c in view.consents if c["channel"] == "email"]
    assert (consent["purpose"], consent["granted"], consent["source"]) == ("marketing", False, "email-complaint")
    again = await hub_client.post(route, json=mailgun_event(complained))  # Mailgun's retry: the same event
    assert (await again.json())["recorded"][0]["duplicate"] is True


async def test_unsubscribing_withdraws_marketing_consent_and_the_next_promo_is_skipped(hub_client, inbox):
    hub = hub_client.app[HUB]
    ann = await signup(hub_client, "s-1", "ann@example.com", type_="visit")
    change = {"purpose": "marketing", "channel": "email", "granted": True, "source": "signup-form"}
    await hub.store.write(lambda conn: write_consents(conn, ann.customer_id, [change], utcnow()))
    await signup(hub_client, "b-1", "ann@example.com", type_="browse")
    (run,) = await settled(hub, "promo")
    assert run.status == "fired"
    (mail,) = inbox.received
    link = mail["List-Unsubscribe"].strip("<>")
    path = link.removeprefix("https://hub.example.com")

    before = await event_count(hub)
    page = await hub_client.get(path, headers={"Accept": "text/html"})
    body = await page.text()
    assert page.status == 200 and '<form method="post">' in body and '<html lang="en">' in body
    assert await event_count(hub) == before  # a GET changes nothing (mail scanners open links)

    for forged in (path[:-3] + "AAA", path.rsplit("/", 1)[0] + "/cus_someone.x", path + "x"):
        resp = await hub_client.post(forged, data={"List-Unsubscribe": "One-Click"})
        assert resp.status == 404
        assert (await hub_client.get(forged, headers={"Accept": "text/html"})).status == 404
    assert await event_count(hub) == before

    # a mail client's one-click unsubscribe (RFC 8058)
    resp = await hub_client.post(path, data={"List-Unsubscribe": "One-Click"})
    assert resp.status == 200 and await resp.json() == {"unsubscribed": True}
    view = await hub.view(ann.customer_id)
    (consent,) = [c for c in view.consents if c["purpose"] == "marketing" and c["channel"] == "email"]
    assert consent["granted"] is False and consent["source"] == "email-unsubscribe"
    after = await event_count(hub)
    resp = await hub_client.post(path, data={"List-Unsubscribe": "One-Click"})  # pressed again
    assert resp.status == 200 and await event_count(hub) == after

    await signup(hub_client, "b-2", "ann@example.com", type_="browse")
    runs = await settled(hub, "promo", 2)
    assert (runs[-1].status, runs[-1].reason) == ("skipped", "no marketing consent on email")
    assert len(inbox.received) == 1


async def test_simultaneous_unsubscribes_record_one_withdrawal_and_a_new_grant_can_be_withdrawn(hub_client, inbox):
    hub = hub_client.app[HUB]
    ann = await signup(hub_client, "s-1", "ann@example.com", type_="visit")
    path = f"/v1/touchpoints/email/unsubscribe/{unsubscribe_token(SECRET.encode(), ann.customer_id)}"

    async def withdrawals() -> list[dict[str, Any]]:
        timeline = (await hub.view(ann.customer_id)).timeline
        return [e for e in timeline if e["type"] == "consent.revoked"]

    answers = await asyncio.gather(*(hub_client.post(path, data={"List-Unsubscribe": "One-Click"}) for _ in range(6)))
    assert [a.status for a in answers] == [200] * 6
    assert len(await withdrawals()) == 1
    change = {"purpose": "marketing", "channel": "email", "granted": True, "source": "preferences"}
    await hub.store.write(lambda conn: write_consents(conn, ann.customer_id, [change], utcnow()))
    assert (await hub_client.post(path, data={"List-Unsubscribe": "One-Click"})).status == 200
    assert len(await withdrawals()) == 2
    (consent,) = [c for c in (await hub.view(ann.customer_id)).consents if c["channel"] == "email"]
    assert consent["granted"] is False and consent["source"] == "email-unsubscribe"


async def test_the_unsubscribe_pages_send_the_page_headers_and_are_rate_limited(
    database_url, inbox, templates, aiohttp_client
):
    from prm_core.plugin import PAGE_HEADERS
    from prm_core.server.app import create_app

    raw = {
        "touchpoints": {"email": email_section(inbox.port, templates)},
        "server": {"rate_limit_keyless": "4/minute"},
    }
    client = await aiohttp_client(create_app(Config(database_url=database_url, raw=raw)))
    ann = await signup(client, "s-1", "ann@example.com", type_="visit")
    path = f"/v1/touchpoints/email/unsubscribe/{unsubscribe_token(SECRET.encode(), ann.customer_id)}"
    html = {"Accept": "text/html"}
    for resp in (
        await client.get(path, headers=html),
        await client.get(path + "x", headers=html),
        await client.post(path, headers=html, data={"List-Unsubscribe": "One-Click"}),
    ):
        assert resp.status in (200, 404)
        assert {k: resp.headers.get(k) for k in PAGE_HEADERS} == PAGE_HEADERS
        assert "script-src" not in resp.headers["Content-Security-Policy"]
    assert (await client.post(path, data={"List-Unsubscribe": "One-Click"})).status == 200
    for limited in (await client.get(path, headers=html), await client.post(path, data={})):
        assert limited.status == 429 and int(limited.headers["Retry-After"]) > 0
    assert len([c for c in (await client.app[HUB].view(ann.customer_id)).consents if c["channel"] == "email"]) == 1


async def test_a_template_that_cannot_be_rendered_fails_the_message_at_once(hub_client, inbox, templates):
    (templates / "en" / "broken.txt").write_text("Hello {{ last_name }}\n")
    (templates / "en" / "unclosed.html").write_text("<p>{% if first_name %}Hello</p>\n")
    for name in ("broken", "unclosed"):
        result = await hand_over(hub_client.app[HUB], msg(trigger=name, id=f"act_{name}"))
        assert result.status == "failed" and f"en/{name}." in result.reason
    assert "last_name" in (await hand_over(hub_client.app[HUB], msg(trigger="broken", id="act_x"))).reason
    assert inbox.received == []


async def test_the_unsubscribe_page_works_in_a_browser_without_script(hub_client, inbox, browser):
    from axe_core import serious_violations

    hub = hub_client.app[HUB]
    ann = await signup(hub_client, "s-1", "ann@example.com", type_="visit")
    token = unsubscribe_token(SECRET.encode(), ann.customer_id)
    context = await browser.new_context(java_script_enabled=False)
    page = await context.new_page()
    response = await page.goto(str(hub_client.make_url(f"/v1/touchpoints/email/unsubscribe/{token}")))
    assert response is not None and response.status == 200
    assert await page.title() == "Unsubscribe"
    await page.get_by_role("button", name="Unsubscribe").click()
    await page.get_by_role("heading", name="You are unsubscribed").wait_for()
    view = await hub.view(ann.customer_id)
    assert [c["granted"] for c in view.consents if c["channel"] == "email"] == [False]
    # the checker needs script; the pages themselves do not
    checked = await (await browser.new_context()).new_page()
    await checked.goto(str(hub_client.make_url(f"/v1/touchpoints/email/unsubscribe/{token}")))
    assert await serious_violations(checked) == []
    await checked.goto(str(hub_client.make_url("/v1/touchpoints/email/unsubscribe/nope")))
    assert await serious_violations(checked) == []


async def test_no_address_nor_text_of_an_email_in_the_logs(hub_client, inbox, make_key, log_capture, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.WARNING, logger="mail.log")  # the test's SMTP server (aiosmtpd), not the hub
    hub = hub_client.app[HUB]
    zelda = "zelda.quartermaine@example.com"
    inbox.refuse.add(zelda)
    assert (await hand_over(hub, msg(to=zelda, first_name="Quartermaine"))).status == "failed"
    mine = sender(hub)
    with pytest.raises(TransportUnavailable):
        await send_email(msg(id="act_down", to=zelda), evolve(mine.settings, port=free_port()), mine.templates, hub)
    key = await make_key("touchpoint:email")
    reply = f"From: Quartermaine <{zelda}>\nSubject: Quartermaine\n\nWallaby Way 42\n"
    assert (await post_mail(hub_client, reply, key)).status == 200
    assert (await post_mail(hub_client, "From: Quartermaine <zelda.quartermaine@>\n\nx\n", key)).status == 422
    forged = mailgun_fields(key="key-other", **{"from": zelda, "body-plain": "Wallaby"})
    assert (await hub_client.post("/v1/touchpoints/email/mailgun", data=forged)).status == 401
    logged = log_capture.text + "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    assert "email refused by the server" in logged and "mailgun post refused" in logged
    for secret in ("zelda.quartermaine", "Quartermaine", "Wallaby"):
        where = logged.find(secret)
        assert where < 0, logged[max(0, where - 400) : where + 100]


def test_the_quoted_message_is_left_out_of_a_reply():
    assert strip_quoted("Yes!\n\nOn Mon, 1 Dec 2026, Shop <\nhello@shop.example> wrote:\n> hi\n") == "Yes!"
    assert strip_quoted("Sure\r\n> quoted\r\nagain\r\n-- \r\nAnn\r\n") == "Sure\nagain"
    assert strip_quoted("Oui\n\nLe lun. 1 déc. 2026, Shop a écrit :\n> Bonjour\n") == "Oui"


# ---- docs/messaging.md: every sample, run --------------------------------------------

PAGE = Path(__file__).resolve().parent.parent / "docs" / "messaging.md"


def page_blocks() -> list[tuple[str, str]]:
    """The fenced blocks of the page's introduction and email section, in order: (language, code)."""
    page = PAGE.read_text(encoding="utf-8").split("\n## SMS\n")[0]
    return re.findall(r"^```(\w+)\n(.*?)^```$", page, flags=re.M | re.S)


def same_shape(shown: Any, got: Any, where: str) -> None:
    """What the page shows is what the hub answers: the same keys; values equal unless the
    page elides them (``...`` in a string)."""
    if isinstance(shown, dict):
        assert isinstance(got, dict) and set(shown) == set(got), f"{where}: {sorted(shown)} != {sorted(got)}"
        for k in shown:
            same_shape(shown[k], got[k], f"{where}.{k}")
    elif isinstance(shown, list):
        assert isinstance(got, list) and len(shown) == len(got), where
        for i, (a, b) in enumerate(zip(shown, got, strict=True)):
            same_shape(a, b, f"{where}[{i}]")
    elif isinstance(shown, str) and "..." in shown:
        assert isinstance(got, str) and got.startswith(shown.split("...")[0]), f"{where}: {got!r}"
    else:
        assert shown == got, f"{where}: {shown!r} != {got!r}"


async def test_the_messaging_page_samples(database_url, inbox, tmp_path, monkeypatch, aiohttp_client):
    from jinja2 import Environment

    from prm_core.keys import create_key
    from prm_core.server.app import create_app

    blocks = page_blocks()
    kinds = [lang for lang, _ in blocks]
    assert kinds == ["json", "toml", "text", "jinja", "toml", "text", "text", "json"], kinds
    (received, setup, tree, template, maildir, routes, reply, answer) = (code for _, code in blocks)
    monkeypatch.setenv("SMTP_PASSWORD", "unused")
    monkeypatch.setenv("EMAIL_SECRET", SECRET)
    monkeypatch.setenv("MAILGUN_SIGNING_KEY", MAILGUN_KEY)

    # the templates the listing names, the text one as the page shows it
    root = tmp_path / "email-templates"
    written = {"txt": template, "html": "<p>{{ text }}</p>", "subject": "Welcome, {{ first_name }}"}
    for line in tree.splitlines()[1:]:
        name = root / line.split()[0]
        name.parent.mkdir(parents=True, exist_ok=True)
        name.write_text(written[name.suffix[1:]])

    # the setup, against the test's SMTP server (no TLS, no login there)
    raw = tomllib.loads(setup)
    section = raw["touchpoints"]["email"]
    section |= {"host": "127.0.0.1", "port": inbox.port, "security": "none", "templates": str(root)}
    del section["username"], section["password"]
    raw["triggers"] |= {"poll_s": 0.02, "quiet_hours": "none"}
    config = Config(database_url=database_url, public_url="https://hub.example.com", raw=Table(raw))
    client = await aiohttp_client(create_app(config))
    hub = client.app[HUB]
    ann = await signup(client, "v-1", "ann@example.com", type_="visit", first_name="Ann", locale="en-US")
    await signup(client, "s-1", "ann@example.com")
    (run,) = await settled(hub, "welcome")
    assert run.status == "fired", run.reason
    (mail,) = inbox.received
    expected = Environment(keep_trailing_newline=True).from_string(template)
    assert text_of(mail, "plain") == expected.render(first_name="Ann", text="Welcome, Ann!", unsubscribe_url="")
    assert mail["Subject"] == "Welcome, Ann" and mail["Reply-To"] == "replies@shop.example"

    # the routes are the hub's
    document = await (await client.get("/openapi.json")).json()
    for line in routes.splitlines():
        method, path = line.split()[:2]
        assert method.lower() in document["paths"][path], line

    # the reply, to the message just sent, and the event and answer the page shows
    key, _ = await create_key(hub.store, "touchpoint:email")
    shown_id = re.search(r"In-Reply-To: (<.*>)", reply)
    assert shown_id is not None
    resp = await post_mail(client, reply.replace(shown_id.group(1), mail["Message-ID"]), key)
    assert resp.status == 200, await resp.text()
    same_shape(json.loads(answer), await resp.json(), "answer")
    view = await hub.view(ann.customer_id)
    (event,) = [e for e in view.timeline if e["type"] == "message.received"]
    same_shape(json.loads(received), event["data"], "message.received")

    # the development transport
    dev = tomllib.loads(maildir)
    dev["touchpoints"]["email"]["maildir"] = str(tmp_path / dev["touchpoints"]["email"]["maildir"])
    settings = email_settings(Config(raw=Table(dev)))
    assert settings is not None and settings.transport == "maildir"
    from prm_email.compose import Templates

    result = await send_email(msg(), settings, Templates(settings), hub)
    assert result.status == "sent" and len(list((tmp_path / "prm-data" / "mail" / "new").glob("*.eml"))) == 1
