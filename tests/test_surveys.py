"""Surveys: a trigger's survey message, answered by a reply (with or without the message it
answers) or by its signed link; the answer in the 360 view and in the scorecard's figures;
the settings checked at start and in the API."""

from __future__ import annotations

import asyncio
import re
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from polling import until

from prm_core import hookimpl
from prm_core.cli import main
from prm_core.clock import FrozenClock
from prm_core.config import Config, load_config
from prm_core.errors import ConfigError
from prm_core.feed.changes import NewChange
from prm_core.feed.reading import bounds
from prm_core.feed.writing import emit
from prm_core.hub import Hub
from prm_core.keys import create_key
from prm_core.model import Event, Identity, TouchPoint
from prm_core.planning.scorecard import scorecard
from prm_core.plugin import score_links
from prm_core.privacy.erasure import erase_customer
from prm_core.server.app import create_app
from prm_core.server.state import HUB
from prm_core.store.tables import events, survey_answers, trigger_cursor, utcnow
from prm_core.surveys import parse_score
from prm_core.surveys.answers import sent_event_id
from prm_core.surveys.links import make_token
from prm_core.triggers import MessageResult

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
ANN = {"email": "ann@example.com", "phone": "+15551230001"}
BOB = {"email": "bob@example.com", "phone": "+15551230002"}


class Texts:
    """A touch point plugin sending email and SMS into a list, as a real sender would get them."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    @hookimpl
    def prm_touchpoints(self, config: Any) -> list[TouchPoint]:
        return [
            TouchPoint(name="email", channel="email", budget_ms=1000),
            TouchPoint(name="sms", channel="sms", budget_ms=1000),
        ]

    @hookimpl
    def prm_send_message(self, message: Any) -> Any:
        if message.channel not in ("email", "sms"):
            return None
        self.sent.append(message)
        return MessageResult("sent", ref=f"ref-{len(self.sent)}")


VISIT = {
    "on": "event.recorded",
    "when": "change['type'] == 'visit.completed'",
    "purpose": "transactional",
    "action": {"kind": "message", "channel": "sms", "survey": "csat", "about": "field_service",
               "template": "How was your technician's visit? Reply 1 to 5."},
}  # fmt: skip
ORDER = {
    "on": "event.recorded",
    "when": "change['type'] == 'order.completed'",
    "purpose": "transactional",
    "action": {"kind": "message", "channel": "email", "survey": "nps", "subject": "A quick question",
               "template": "How likely are you to recommend us? Answer here: $survey_url"},
}  # fmt: skip
TECHNICIAN = {
    "on": "fulfillment.updated",
    "when": "change['role'] == 'field_service' and change['status'] == 'completed'",
    "purpose": "transactional",
    "action": {"kind": "message", "channel": "sms", "survey": "csat", "template": "Rate the visit 1 to 5."},
}


def config_of(database_url: str, **surveys: Any) -> Config:
    triggers = {"poll_s": 0.02, "quiet_hours": "none", "visit": VISIT, "order": ORDER, "technician": TECHNICIAN}
    return Config(
        database_url=database_url,
        public_url="http://hub.test",
        # the link tests call faster than a person would: no per-address limit in the way
        raw={"triggers": triggers, "surveys": {"poll_s": 0.02, **surveys}, "server": {"rate_limit_keyless": "off"}},
    )


@pytest.fixture
def texts() -> Texts:
    return Texts()


@pytest.fixture
def hub_plugins(texts: Texts) -> list[Any]:
    return [texts]


@pytest.fixture
def hub_config(database_url: str) -> Config:
    return config_of(database_url)


@pytest.fixture
def clock() -> Any:
    with FrozenClock(T0) as frozen:
        yield frozen


async def happened(hub: Hub, event_id: str, type_: str, who: dict[str, str], **data: Any) -> Any:
    body = {"id": event_id, "type": type_, "occurred_at": utcnow().isoformat(), "identities": who, "data": data}
    (recorded,) = await hub.record(hub.parse_events(body, "web"))
    return recorded


async def survey_sent(hub: Hub, texts: Texts, n: int = 1) -> Any:
    """The ``n``-th message sent, once the hub recorded it (its ``message.sent`` event)."""

    async def check() -> Any:
        if len(texts.sent) < n:
            return None
        message = texts.sent[n - 1]
        q = sa.select(events.c.seq).where(events.c.event_id == sent_event_id(message.id))
        return message if await hub.store.read(lambda conn: conn.execute(q).first()) else None

    return await until(check)


async def reply(hub: Hub, reply_id: str, who: dict[str, str], text: str, in_reply_to: str | None = None, *,
                channel: str = "sms", at: datetime | None = None) -> Any:  # fmt: skip
    """A customer's reply, recorded as the email and SMS touch points record one."""
    namespace = "phone" if channel == "sms" else "email"
    data: dict[str, Any] = {"channel": channel, "text": text}
    if in_reply_to is not None:
        data["in_reply_to"] = in_reply_to
    event = Event(
        id=reply_id,
        type="message.received",
        occurred_at=at or utcnow(),
        touchpoint=channel,
        identities=(Identity(namespace, who[namespace]),),
        data=data,
    )
    (recorded,) = await hub.record([event])
    return recorded


async def answers(hub: Hub) -> list[Any]:
    q = sa.select(survey_answers).order_by(survey_answers.c.answered_at)
    return await hub.store.read(lambda conn: list(conn.execute(q)))


async def answered_events(hub: Hub) -> list[Any]:
    q = sa.select(events).where(events.c.type == "survey.answered").order_by(events.c.seq)
    return await hub.store.read(lambda conn: list(conn.execute(q)))


async def quiet(hub: Hub, marker: str, who: dict[str, str]) -> None:
    """Wait until the survey reader is past everything recorded so far: a marker reply that is
    no answer makes it write its position past the marker."""
    await reply(hub, marker, who, "thanks")
    head = await hub.store.read(lambda conn: bounds(conn)[1])
    row = sa.select(trigger_cursor.c.position).where(trigger_cursor.c.name == "surveys")

    async def past() -> bool:
        return await hub.store.read(lambda conn: conn.execute(row).scalar()) >= head

    await until(past)


# ---- replies -----------------------------------------------------------------------------


async def test_a_reply_naming_the_survey_is_its_answer_once(hub, texts):
    ann = await happened(hub, "v1", "visit.completed", ANN)
    message = await survey_sent(hub, texts)
    assert message.channel == "sms" and message.to == "+15551230001"
    assert message.text == "How was your technician's visit? Reply 1 to 5."
    survey = message.data["survey"]
    assert (survey["kind"], survey["scale"], survey["about"]) == ("csat", [1, 5], "field_service")
    assert message.data["survey_url"].startswith("http://hub.test/v1/surveys/")
    # the message.sent event says what was asked, and not the link (which answers it)
    sent = [e for e in (await hub.view(ann.customer_id)).timeline if e.type == "message.sent"]
    assert sent[0].data["survey"] == {"kind": "csat", "scale": [1, 5], "about": "field_service", "question": None}

    first = await reply(hub, "r1", ANN, "4 - great, very quick", in_reply_to=message.id)
    await until(lambda: answers(hub))
    (event,) = await answered_events(hub)
    assert event.direction == "inbound" and event.touchpoint == "sms" and event.customer_id == ann.customer_id
    assert event.data == {
        "kind": "csat", "score": 4, "scale": [1, 5], "about": "field_service", "category": "satisfied",
        "satisfied": True, "answer": "CSAT 4/5 about field_service", "message_id": message.id,
        "trigger": "visit", "channel": "sms", "via": "reply", "reply_event_id": "r1",
    }  # fmt: skip
    assert event.dialogue_id == sent[0].dialogue  # in the survey's dialogue

    # the same reply again, a second reply, a link answer: the first answer counts
    again = await reply(hub, "r1", ANN, "4 - great, very quick", in_reply_to=message.id)
    assert again.duplicate and again.dialogue_id == first.dialogue_id
    await reply(hub, "r2", ANN, "2", in_reply_to=message.id)
    await quiet(hub, "after-r2", ANN)
    assert [(a.score, a.about, a.via, a.customer_id) for a in await answers(hub)] == [
        (4, "field_service", "reply", ann.customer_id)
    ]
    assert len(await answered_events(hub)) == 1

    # in the 360 view: on the timeline, summarized, and in the surveys section
    view = await hub.view(ann.customer_id)
    (shown,) = view.sections["surveys"]
    assert {k: shown[k] for k in ("kind", "score", "scale", "category", "about", "via", "trigger")} == {
        "kind": "csat", "score": 4, "scale": [1, 5], "category": "satisfied", "about": "field_service",
        "via": "reply", "trigger": "visit",
    }  # fmt: skip
    entry = next(e for e in view.timeline if e.type == "survey.answered")
    from prm_core.labels import summarize

    assert summarize(entry, hub.event_labels) == "answered a survey: CSAT 4/5 about field_service"
    assert view.to_json()["surveys"][0]["score"] == 4


async def test_an_email_naming_no_message_answers_no_survey(database_url, clock):
    """Anyone can write an email saying it comes from a customer's address: an email reply
    answers only the survey it names, never the latest one by default."""
    texts = Texts()
    async with Hub.open(config_of(database_url), plugins=[texts], autoload=True) as hub:
        await happened(hub, "o1", "order.completed", ANN)  # an NPS survey by email
        message = await survey_sent(hub, texts)
        clock.advance(hours=1)
        await reply(hub, "forged", ANN, "0", channel="email")
        await reply(hub, "named", ANN, "9", in_reply_to=message.id, channel="email")
        await until(lambda: answers(hub))
        await asyncio.sleep(0.3)  # the reader has passed both replies
        (answer,) = await answers(hub)
        assert (answer.message_id, answer.score) == (message.id, 9)


async def test_a_reply_naming_no_message_answers_the_latest_survey_on_its_channel_within_the_window(
    database_url, clock
):
    texts = Texts()
    async with Hub.open(config_of(database_url, reply_window="2d"), plugins=[texts], autoload=True) as hub:
        await happened(hub, "o1", "order.completed", ANN)  # an NPS survey by email
        await survey_sent(hub, texts)
        clock.advance(hours=1)
        await happened(hub, "v1", "visit.completed", ANN)  # then a CSAT survey by SMS
        sms = await survey_sent(hub, texts, 2)
        clock.advance(hours=1)
        await reply(hub, "r1", ANN, "Five!")  # by SMS, naming nothing: the SMS survey's
        await until(lambda: answers(hub))
        (answer,) = await answers(hub)
        assert (answer.message_id, answer.kind, answer.score) == (sms.id, "csat", 5)

        # bob's survey, replied to after the window: not an answer
        await happened(hub, "v2", "visit.completed", BOB)
        await survey_sent(hub, texts, 3)
        clock.advance(days=2, minutes=1)
        await reply(hub, "r2", BOB, "5")
        await quiet(hub, "after-r2", BOB)
        assert len(await answers(hub)) == 1


async def test_a_reply_off_the_scale_or_without_a_score_is_no_answer(hub, texts):
    await happened(hub, "v1", "visit.completed", ANN)
    message = await survey_sent(hub, texts)
    for n, text in enumerate(["7", "8/10", "4.5", "3 or 4", "call me back please", "one more thing"]):
        await reply(hub, f"r{n}", ANN, text, in_reply_to=message.id)
    await quiet(hub, "after-replies", ANN)
    assert await answers(hub) == [] and await answered_events(hub) == []
    # a reply still counts after those: the first answer is the first score on the scale
    await reply(hub, "r9", ANN, "3", in_reply_to=message.id)
    await until(lambda: answers(hub))
    assert [a.score for a in await answers(hub)] == [3]


async def test_a_reply_naming_another_customers_survey_is_no_answer(hub, texts):
    await happened(hub, "v1", "visit.completed", ANN)
    anns = await survey_sent(hub, texts)
    await happened(hub, "b0", "page", BOB)
    await reply(hub, "r1", BOB, "1", in_reply_to=anns.id)
    await quiet(hub, "after-r1", BOB)
    assert await answers(hub) == []


async def test_a_technicians_visit_is_rated_as_field_service_and_counted_in_the_scorecard(hub, texts):
    ann = await happened(hub, "s1", "service.request", ANN)
    visit = {"fulfillment_id": "f1", "partner": "fieldco", "role": "field_service", "action": "schedule",
             "status": "completed", "dialogue_id": ann.dialogue_id, "data": {}}  # fmt: skip
    await hub.store.write(lambda conn: emit(conn, NewChange("fulfillment.updated", ann.customer_id, visit)))
    message = await survey_sent(hub, texts)
    assert message.trigger == "technician" and message.data["survey"]["about"] == "field_service"
    await reply(hub, "r1", ANN, "2", in_reply_to=message.id)
    await until(lambda: answers(hub))
    card = await hub.store.read(lambda conn: scorecard(conn, ["sms", "web"], utcnow(), days=7))
    rows = {t["touchpoint"]: t for t in card["touchpoints"]}
    assert rows["field_service"]["surveys"] == {
        "answers": 1,
        "csat": {"answers": 1, "average": 2.0, "satisfied_rate": 0.0},
        "nps": None,
    }
    assert rows["web"]["surveys"] == {"answers": 0, "csat": None, "nps": None}

    # an erasure keeps the score in the figures, linked to no one
    await erase_customer(hub, ann.customer_id)
    (kept,) = await answers(hub)
    assert (kept.score, kept.customer_id) == (2, None)


def test_scores_read_from_replies():
    assert [parse_score(t, "csat") for t in ["4", "4 - great", "five", "Five stars!", "★★★★", "4/5", " (3) "]] == [
        4, 4, 5, 5, 4, 4, 3,
    ]  # fmt: skip
    assert [parse_score(t, "nps") for t in ["9/10", "10", "0", "9 out of 10, quick", "ten out of ten"]] == [
        9, 10, 0, 9, 10,
    ]  # fmt: skip
    nothing = ["6", "0", "8/10", "4.5", "10:30", "4-5", "3 or 4", "45", "one more thing", "great", "", "★★★★★★"]
    assert [parse_score(t, "csat") for t in nothing] == [None] * len(nothing)
    assert [parse_score(t, "nps") for t in ["11", "4/5", "★★★", "12:00"]] == [None] * 4


# ---- links -------------------------------------------------------------------------------


def token_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


async def test_a_survey_link_shows_the_scale_and_records_one_press(hub_client, texts):
    hub = hub_client.app[HUB]
    ann = await happened(hub, "o1", "order.completed", ANN)
    message = await survey_sent(hub, texts)
    url = message.data["survey_url"]
    assert message.text == f"How likely are you to recommend us? Answer here: {url}"
    assert [n for n, _ in score_links(message.data)] == list(range(11))
    path = "/v1/surveys/" + token_of(url)

    page = await hub_client.get(path)
    text = await page.text()
    assert page.status == 200 and page.content_type == "text/html"
    assert "script" not in page.headers["Content-Security-Policy"].replace("default-src 'none'", "")
    assert page.headers["Referrer-Policy"] == "no-referrer" and page.headers["Cache-Control"] == "no-store"
    assert '<html lang="en">' in text and "<legend>How likely are you to recommend us" in text
    assert re.findall(r'name="score" value="(\d+)"', text) == [str(n) for n in range(11)]
    # opening a score's link (as a mail scanner does) answers nothing: it asks for one press
    chosen = await (await hub_client.get(score_links(message.data)[9][1].replace("http://hub.test", ""))).text()
    assert "Send 9</button>" in chosen and await answered_events(hub) == []

    done = await hub_client.post(path, data={"score": "9"})
    assert done.status == 200 and "You answered 9 on a scale from 0 to 10." in await done.text()
    again = await hub_client.post(path, data={"score": "3"})
    assert "You answered 9" in (said := await again.text()) and "Only your first answer counts" in said
    as_json = await hub_client.post(path, json={"score": 3})
    assert as_json.status == 200 and await as_json.json() == {
        "kind": "nps", "score": 9, "category": "promoter", "about": "web", "first_answer": False,
    }  # fmt: skip
    after = await (await hub_client.get(path)).text()
    assert "You answered 9" in after and 'name="score"' not in after
    (event,) = await answered_events(hub)
    assert event.touchpoint == "email" and event.customer_id == ann.customer_id
    assert (event.data["via"], event.data["score"], event.data["category"]) == ("link", 9, "promoter")
    await until(lambda: answers(hub))
    assert [(a.kind, a.score, a.about, a.via) for a in await answers(hub)] == [("nps", 9, "web", "link")]


async def test_a_forged_expired_or_unknown_link_is_refused_and_writes_nothing(hub_client, texts):
    hub = hub_client.app[HUB]
    await happened(hub, "o1", "order.completed", ANN)
    message = await survey_sent(hub, texts)
    token = token_of(message.data["survey_url"])
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    other_kind = make_token(hub.surveys.key, message.id, "csat", T0 + timedelta(days=3650))
    expired = make_token(hub.surveys.key, message.id, "nps", utcnow() - timedelta(seconds=1))
    unknown = make_token(hub.surveys.key, "act_" + "0" * 40, "nps", utcnow() + timedelta(days=1))
    bad_key = make_token(b"not the hub's key at all", message.id, "nps", utcnow() + timedelta(days=1))
    for tok, status in [(forged, 401), (expired, 401), (bad_key, 401), ("x", 401), (unknown, 404), (other_kind, 404)]:
        got = await hub_client.get(f"/v1/surveys/{tok}")
        assert got.status == status, tok
        posted = await hub_client.post(f"/v1/surveys/{tok}", data={"score": "10"})
        assert posted.status == status, tok
        as_json = await hub_client.post(f"/v1/surveys/{tok}", json={"score": 10})
        assert as_json.status == status and (await as_json.json())["error"]["message"]
    path = "/v1/surveys/" + token
    for score in ("11", "-1", "nine", ""):
        refused = await hub_client.post(path, data={"score": score})
        assert refused.status == 422 and "Choose a score from 0 to 10." in await refused.text()
    wrong = await hub_client.post(path, json={"score": 11})
    assert wrong.status == 422 and (await wrong.json())["error"]["field"] == "score"
    assert await answered_events(hub) == []
    created = await hub_client.post(path, json={"score": 6})
    assert created.status == 201 and (await created.json())["category"] == "detractor"


# ---- the scorecard -----------------------------------------------------------------------


async def test_the_scorecard_shows_each_touch_points_answers_csat_and_nps(hub_client, make_key, database_url):
    hub = hub_client.app[HUB]
    now = utcnow()
    rows = [("field_service", "csat", s) for s in (5, 4, 3, 2, 5)]
    rows += [("web", "nps", s) for s in (10, 10, 9, 7, 3)]
    rows += [("web", "csat", 1)]
    old = now - timedelta(days=40)  # outside the period
    rows_old = [("web", "nps", 0)]

    def write(conn: Any) -> None:
        for i, (about, kind, score) in enumerate(rows + rows_old):
            at = old if i >= len(rows) else now
            conn.execute(
                survey_answers.insert().values(
                    message_id=f"act_{i:040d}", event_id=f"survey:{i}", touchpoint="email", customer_id=None,
                    kind=kind, score=score, about=about, trigger="t", via="link", answered_at=at,
                    day=at.date().isoformat(),
                )
            )  # fmt: skip

    await hub.store.write(write)
    read = {"Authorization": f"Bearer {await make_key('read')}"}
    card = await (await hub_client.get("/v1/scorecard?days=30", headers=read)).json()
    by = {t["touchpoint"]: t["surveys"] for t in card["touchpoints"]}
    assert by["field_service"] == {
        "answers": 5,
        "csat": {"answers": 5, "average": 3.8, "satisfied_rate": 0.6},
        "nps": None,
    }
    assert by["web"] == {
        "answers": 6,
        "csat": {"answers": 1, "average": 1.0, "satisfied_rate": 0.0},
        "nps": {"answers": 5, "promoters": 3, "passives": 1, "detractors": 1, "nps": 40.0},
    }
    assert by["sms"] == {"answers": 0, "csat": None, "nps": None}

    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["scorecard", "--database", database_url], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    lines = result.output.split("survey answers", 1)[1].splitlines()
    assert next(x for x in lines if x.startswith("field_service ")).split() == [
        "field_service", "5", "5", "3.80", "60.0%", "-", "-",
    ]  # fmt: skip
    assert next(x for x in lines if x.startswith("web ")).split() == ["web", "6", "1", "1.00", "0.0%", "5", "+40.0"]
    assert not any(x.startswith("sms ") for x in lines)  # no answers about it: not in the table


# ---- settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "field", "words"),
    [
        ({**VISIT["action"], "survey": "stars"}, "action.survey", "must be csat"),
        ({**ORDER["action"], "survey": None}, "action.template", "names $survey_url, which only"),
        ({"kind": "message", "channel": "sms", "template": "Hi", "about": "web"}, "action.about",
         "is a setting of a survey"),
        ({**VISIT["action"], "about": "Field Service!"}, "action.about", "must name what is rated"),
        ({**VISIT["action"], "question": ""}, "action.question", "must be a text"),
    ],
)  # fmt: skip
async def test_a_wrong_survey_setting_is_named_at_start_and_in_the_api(
    database_url, hub_client, make_key, action, field, words
):
    action = {k: v for k, v in action.items() if v is not None}
    config = config_of(database_url)
    raw = {**config.raw, "triggers": {**config.raw["triggers"], "visit": {**VISIT, "action": action}}}
    with pytest.raises(ConfigError) as caught:
        async with Hub.open(Config(database_url=database_url, raw=raw), plugins=[Texts()], autoload=True):
            pass
    assert str(caught.value).startswith(f"[triggers.visit].{field} {words}"), str(caught.value)

    admin = {"Authorization": f"Bearer {await make_key('admin')}"}
    answer = await hub_client.post("/v1/triggers", json={"name": "bad", **VISIT, "action": action}, headers=admin)
    assert answer.status == 422 and (await answer.json())["error"]["field"] == field
    listed = await (await hub_client.get("/v1/triggers", headers=admin)).json()
    assert "bad" not in [t["name"] for t in listed["triggers"]]


@pytest.mark.parametrize(
    ("surveys", "named"),
    [
        ({"cadence": 3}, "[surveys].cadence is not a setting of [surveys]"),
        ({"reply_window": "soon"}, "[surveys].reply_window must be a duration"),
        ({"reply_window": "40d"}, "[surveys].reply_window must not be longer than [surveys].expires"),
        ({"base_url": "hub.example.com"}, "[surveys].base_url must start with http"),
        ({"secret": "short"}, "[surveys].secret must be a text of at least 16 characters"),
    ],
)
async def test_a_wrong_surveys_setting_stops_the_hub_naming_it(database_url, surveys, named):
    with pytest.raises(ConfigError) as caught:
        async with Hub.open(config_of(database_url, **surveys), plugins=[Texts()], autoload=True):
            pass
    assert str(caught.value).startswith(named), str(caught.value)


async def test_without_a_base_url_a_survey_has_no_link_and_replies_still_answer(database_url):
    texts = Texts()
    raw = config_of(database_url).raw
    config = Config(database_url=database_url, raw=raw)  # no public_url, no base_url
    with pytest.raises(ConfigError) as caught:  # a template naming the link it cannot have
        async with Hub.open(config, plugins=[texts], autoload=True):
            pass
    assert str(caught.value) == (
        "[triggers.order].action.template names $survey_url, but no link can be made: set [surveys] base_url"
        " or [server] public_url"
    )
    order = {**ORDER, "action": {**ORDER["action"], "template": "Would you recommend us? Reply 0 to 10."}}
    config = Config(database_url=database_url, raw={**raw, "triggers": {**raw["triggers"], "order": order}})
    async with Hub.open(config, plugins=[texts], autoload=True) as hub:
        await happened(hub, "o1", "order.completed", ANN)
        message = await survey_sent(hub, texts)
        assert message.data["survey_url"] is None and score_links(message.data) == []
        await reply(hub, "r1", ANN, "10", in_reply_to=message.id, channel="email")
        await until(lambda: answers(hub))
        assert [(a.kind, a.score) for a in await answers(hub)] == [("nps", 10)]


# ---- the page's examples -------------------------------------------------------------------


def documented_config(tmp_path: Any, database_url: str) -> Config:
    """docs/surveys.md's first example, as written, with the tests' quick polling."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "surveys.md").read_text(encoding="utf-8")
    marker = "test_the_documented_surveys_are_answered -->\n```toml\n"
    text = page[page.index(marker) + len(marker) :].split("```", 1)[0]
    assert tomllib.loads(text)["triggers"].keys() == {"visit_survey", "order_nps"}
    text = text.replace("[server]\n", '[server]\nrate_limit_keyless = "off"\n', 1)
    text += '\n[triggers]\nquiet_hours = "none"\npoll_s = 0.02\n\n[surveys]\npoll_s = 0.02\n'
    path = tmp_path / "prm.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, database_url=database_url)


async def test_the_documented_surveys_are_answered(tmp_path, database_url, aiohttp_client, clock):
    """docs/surveys.md's example: a technician's visit rated by SMS reply, an order by the
    email's link, each after its delay."""
    texts = Texts()
    config = documented_config(tmp_path, database_url)
    client = await aiohttp_client(create_app(config, plugins=[texts]))
    hub = client.app[HUB]
    ann = await happened(hub, "s1", "service.request", ANN)
    visit = {"fulfillment_id": "f1", "partner": "fieldco", "role": "field_service", "action": "schedule",
             "status": "completed", "dialogue_id": ann.dialogue_id, "data": {}}  # fmt: skip
    await hub.store.write(lambda conn: emit(conn, NewChange("fulfillment.updated", ann.customer_id, visit)))
    await happened(hub, "o1", "order.completed", BOB, revenue="40", currency="USD")
    await asyncio.sleep(0.3)
    assert texts.sent == []  # not before the delays
    clock.advance(hours=2, minutes=1)
    sms = await survey_sent(hub, texts)
    assert (sms.trigger, sms.channel, sms.data["survey"]["about"]) == ("visit_survey", "sms", "field_service")
    await reply(hub, "r1", ANN, "4")
    clock.advance(days=1)
    email = await survey_sent(hub, texts, 2)
    url = email.data["survey_url"]
    assert url.startswith("https://hub.example.com/v1/surveys/") and email.subject == "One question"
    assert email.text == f"Would you recommend us? Answer with one click: {url}"
    page = await (await client.get(url.removeprefix("https://hub.example.com"))).text()
    assert "How likely are you to recommend our shop to a friend?" in page
    done = await client.post(url.removeprefix("https://hub.example.com"), data={"score": "9"})
    assert done.status == 200

    async def both() -> list[Any] | None:
        found = await answers(hub)
        return found if len(found) == 2 else None

    got = {(a.trigger, a.kind, a.score, a.about, a.via) for a in await until(both)}
    assert got == {("visit_survey", "csat", 4, "field_service", "reply"), ("order_nps", "nps", 9, "web", "link")}


async def test_a_reply_recorded_while_no_one_reads_for_surveys_is_answered_after_a_restart(database_url):
    """The reader's position is kept in the database and moves past a reply only with its
    answer: a reply recorded while the reader is gone (a crash) is answered by the next hub."""
    texts = Texts()
    async with Hub.open(config_of(database_url), plugins=[texts], autoload=True) as hub:
        await happened(hub, "v1", "visit.completed", ANN)
        message = await survey_sent(hub, texts)
        await hub.surveys.stop()  # as if the process died here: the position stays where it was
        await reply(hub, "r1", ANN, "2 - late and rude", in_reply_to=message.id)
        await asyncio.sleep(0.3)
        assert await answers(hub) == [] and await answered_events(hub) == []
    async with Hub.open(config_of(database_url), plugins=[Texts()], autoload=True) as hub:
        await until(lambda: answers(hub))
        assert [(a.score, a.message_id, a.via) for a in await answers(hub)] == [(2, message.id, "reply")]
        assert len(await answered_events(hub)) == 1


async def test_the_answer_page_works_without_javascript_by_keyboard_and_passes_axe(hub_client, texts, browser):
    """The page in headless Chromium: no serious accessibility violation (axe-core), and with
    JavaScript off, one key press on a score answers."""
    from axe_core import serious_violations

    hub = hub_client.app[HUB]
    await happened(hub, "v1", "visit.completed", ANN)
    message = await survey_sent(hub, texts)
    url = str(hub_client.make_url("/v1/surveys/" + token_of(message.data["survey_url"])))

    checking = await browser.new_context(viewport={"width": 390, "height": 844})  # a phone
    page = await checking.new_page()
    assert (await page.goto(url)).status == 200
    assert await page.locator("fieldset legend").inner_text() == "How satisfied are you with your recent experience?"
    assert await page.locator("button[name=score]").count() == 5
    assert await serious_violations(page) == []
    await page.goto(url + "?score=4")
    assert await page.locator("button.send").inner_text() == "Send 4"
    assert await serious_violations(page) == []

    plain = await browser.new_context(java_script_enabled=False)
    form = await plain.new_page()
    await form.goto(url)
    await form.locator('button[value="5"]').focus()
    async with form.expect_navigation():  # the form's POST answers with the thank-you page
        await form.keyboard.press("Enter")
    assert "You answered 5 on a scale from 1 to 5." in await form.inner_text("main")
    await plain.close()

    await page.goto(url)  # answered: the page says so
    assert await page.locator("[role=status]").inner_text() == "You answered 5 on a scale from 1 to 5."
    assert await serious_violations(page) == []
    await checking.close()
    await until(lambda: answers(hub))
    assert [(a.score, a.via) for a in await answers(hub)] == [(5, "link")]


async def test_a_journey_reminds_only_those_who_did_not_answer(database_url, clock):
    """docs/surveys.md: a wait with ``unless = ["survey.answered"]`` after the survey."""
    texts = Texts()
    journey = {
        "on": "event.recorded",
        "when": "change['type'] == 'visit.completed'",
        "purpose": "transactional",
        "steps": [
            {"act": {"kind": "message", "channel": "sms", "survey": "csat", "template": "Rate the visit 1 to 5."}},
            {"wait": "1d", "unless": ["survey.answered"]},
            {"act": {"kind": "message", "channel": "sms", "template": "A reminder: rate the visit 1 to 5."}},
        ],
    }
    config = config_of(database_url)
    raw = {**config.raw, "triggers": {"poll_s": 0.02, "quiet_hours": "none", "journey": journey}}
    async with Hub.open(Config(database_url=database_url, public_url="http://hub.test", raw=raw), plugins=[texts],
                        autoload=True) as hub:  # fmt: skip
        await happened(hub, "v1", "visit.completed", ANN)
        await happened(hub, "v2", "visit.completed", BOB)
        await survey_sent(hub, texts, 2)
        anns = next(m for m in texts.sent if m.to == ANN["phone"])
        await reply(hub, "r1", ANN, "5", in_reply_to=anns.id)
        await until(lambda: answers(hub))
        clock.advance(days=1, minutes=1)
        await survey_sent(hub, texts, 3)
        await asyncio.sleep(0.3)
        assert [(m.to, m.text) for m in texts.sent[2:]] == [(BOB["phone"], "A reminder: rate the visit 1 to 5.")]


async def test_the_planning_console_shows_each_touch_points_survey_figures(hub_client, make_key, browser):
    from axe_core import serious_violations

    hub = hub_client.app[HUB]
    now = utcnow()
    scored = [("web", "csat", s) for s in (5, 4, 2)] + [("web", "nps", s) for s in (10, 9, 3, 8)]

    def write(conn: Any) -> None:
        for i, (about, kind, score) in enumerate(scored):
            conn.execute(
                survey_answers.insert().values(
                    message_id=f"act_{i:040d}", event_id=f"survey:{i}", touchpoint="email", customer_id=None,
                    kind=kind, score=score, about=about, trigger="t", via="reply", answered_at=now,
                    day=now.date().isoformat(),
                )
            )  # fmt: skip

    await hub.store.write(write)
    read = await make_key("read")
    page = await (await browser.new_context(locale="en-US")).new_page()
    await page.goto(str(hub_client.make_url("/console")))
    await page.fill("#key", read)
    await page.keyboard.press("Enter")
    row = page.locator('#touchpoints tr[data-touchpoint="web"]')
    await row.wait_for()
    cells = await row.locator("th, td").all_inner_texts()
    # 7 answers; CSAT (5+4+2)/3 with 2 of 3 satisfied; NPS (2 promoters - 1 detractor) / 4
    assert cells[9:] == ["7", "3.7 (66.7%)", "+25"]
    idle = await page.locator('#touchpoints tr[data-touchpoint="sms"]').locator("td").all_inner_texts()
    assert idle[8:] == ["0", "\u2013", "\u2013"]  # en dashes: none
    assert await serious_violations(page) == []


async def test_a_survey_link_the_hub_cannot_make_is_a_422_in_the_api(database_url, aiohttp_client):
    raw = {"triggers": {"poll_s": 0.02, "quiet_hours": "none"}}
    client = await aiohttp_client(create_app(Config(database_url=database_url, raw=raw), plugins=[Texts()]))
    secret, _ = await create_key(client.app[HUB].store, "admin")
    admin = {"Authorization": f"Bearer {secret}"}
    answer = await client.post("/v1/triggers", json={"name": "order", **ORDER}, headers=admin)
    assert answer.status == 422
    error = (await answer.json())["error"]
    assert error["field"] == "action.template" and "no link can be made" in error["message"]
    replies_only = {**ORDER["action"], "template": "Would you recommend us? Reply 0 to 10."}
    created = await client.post("/v1/triggers", json={"name": "order", **ORDER, "action": replies_only}, headers=admin)
    assert created.status == 201
