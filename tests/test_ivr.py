"""The IVR touch point: menu files, the engine's decisions, the hub refusing a bad menu."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prm_ivr import STANDARD, Appointment, Caller, Engine, MenuError, Turn, load_menu, menu_for
from prm_ivr.calls import appointment_of
from prm_ivr.menu import parse_menu

from prm_core.config import Config, load_config
from prm_core.hub import Hub
from prm_core.testing.conformance import TouchPointConformance

DOCS = Path(__file__).resolve().parent.parent / "docs" / "ivr.md"

MINIMAL: dict[str, Any] = {
    "start": "main",
    "fallback_queue": "general",
    "nodes": {
        "main": {"prompt": "Press 1 for sales.", "options": [{"key": "1", "words": ["sales"], "next": "sales"}]},
        "sales": {"transfer": "sales"},
    },
}


def with_changes(**changes: Any) -> dict[str, Any]:
    menu = json.loads(json.dumps(MINIMAL))
    for path, value in changes.items():
        node = menu
        *parents, last = path.split("__")
        for part in parents:
            node = node[part]
        node[last] = value
    return menu


def docs_menu() -> str:
    """The example menu of docs/ivr.md (the ```toml block after the marker comment)."""
    text = DOCS.read_text(encoding="utf-8")
    match = re.search(r"<!-- example menu -->\s*```toml\n(.*?)```", text, re.S)
    assert match, "docs/ivr.md has no example menu block"
    return match.group(1)


# ---- menu files ------------------------------------------------------------------------------


def test_the_built_in_menu_is_valid():
    menu = load_menu()
    assert menu.start == "main"
    assert menu.priority is not None and menu.priority.tiers == {"platinum"}


def test_the_documented_example_menu_loads(tmp_path):
    file = tmp_path / "menu.toml"
    file.write_text(docs_menu(), encoding="utf-8")
    menu = load_menu(file)
    turn = Engine(menu).start(STANDARD)
    assert turn.gather is not None and turn.node == menu.start


def test_a_json_menu_loads(tmp_path):
    file = tmp_path / "menu.json"
    file.write_text(json.dumps(MINIMAL), encoding="utf-8")
    assert load_menu(file).nodes["sales"].transfer == "sales"


@pytest.mark.parametrize(
    ("menu", "message"),
    [
        (with_changes(start="nowhere"), "top level: 'start' names unknown node 'nowhere'"),
        (
            with_changes(nodes__main__options=[{"key": "1", "next": "salez"}]),
            "node 'main': option 1: goes to unknown node 'salez'",
        ),
        (
            with_changes(nodes__main__options=[{"key": "1", "next": "sales"}, {"key": "1", "next": "sales"}]),
            "node 'main': key '1' is used by two options",
        ),
        (
            with_changes(nodes__main__options=[{"key": "12", "next": "sales"}]),
            "node 'main': option 1: 'key' must be one of 0-9, * or #",
        ),
        (with_changes(nodes__main__options=[{"next": "sales"}]), "node 'main': option 1: needs a 'key' or 'words'"),
        (with_changes(nodes__sales={"queue": "sales"}), "node 'sales': unknown field 'queue'"),
        (with_changes(nodes__sales={}), "node 'sales': needs 'options' (a menu), 'transfer' (a queue) or 'say'"),
        (with_changes(start="sales"), "node 'sales': the start node must be a menu"),
        (
            with_changes(nodes__a={"say": "A", "next": "b"}, nodes__b={"say": "B", "next": "a"}),
            "node 'a': messages loop through a -> b -> a",
        ),
        (with_changes(messages={"welcome_known": "Hi {name}"}), "message 'welcome_known': unknown placeholder {name}"),
        (with_changes(messages={"welcom": "Hi"}), "messages: unknown field 'welcom'"),
        (
            with_changes(priority={"queue": "vip", "key": "1", "prompt": "VIP"}),
            "node 'main': key '1' is the priority line's key",
        ),
        (with_changes(max_attempts=0), "'max_attempts' must be a whole number from 1 to 30"),
        ({"start": "main", "fallback_queue": "x", "nodes": {}}, "'nodes' must be a non-empty table"),
    ],
)
def test_a_bad_menu_is_refused_naming_the_node(menu, message):
    with pytest.raises(MenuError) as caught:
        parse_menu(menu, "menu.toml")
    assert str(caught.value).startswith("menu menu.toml: ")
    assert message in str(caught.value)


def test_a_missing_or_unparsable_menu_file_is_named(tmp_path):
    with pytest.raises(MenuError, match=r"does not exist"):
        load_menu(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("start = ", encoding="utf-8")
    with pytest.raises(MenuError, match=r"bad.toml: not valid TOML"):
        load_menu(bad)


def test_the_menu_path_is_relative_to_the_config_file(tmp_path):
    (tmp_path / "menus").mkdir()
    (tmp_path / "menus" / "ivr.json").write_text(json.dumps(MINIMAL), encoding="utf-8")
    (tmp_path / "prm.toml").write_text('[touchpoints.ivr]\nmenu = "menus/ivr.json"\n', encoding="utf-8")
    assert set(menu_for(load_config(tmp_path / "prm.toml")).nodes) == {"main", "sales"}


async def test_the_hub_does_not_start_with_a_bad_menu(tmp_path, database_url):
    file = tmp_path / "menu.toml"
    file.write_text(
        'start = "main"\nfallback_queue = "q"\n[nodes.main]\nprompt = "?"\noptions = []\n', encoding="utf-8"
    )
    config = Config(database_url=database_url, raw={"touchpoints": {"ivr": {"menu": str(file)}}})
    with pytest.raises(MenuError, match=r"node 'main': 'options' must be a non-empty list"):
        async with Hub.open(config, autoload=True):
            pass


# ---- the engine ------------------------------------------------------------------------------

ENGINE = Engine(load_menu())
WINDOW = Appointment(
    datetime.fromisoformat("2026-11-24T09:00:00-08:00"), datetime.fromisoformat("2026-11-24T11:00:00-08:00")
)


def test_a_known_platinum_caller_with_a_visit():
    turn = ENGINE.start(Caller(known=True, first_name="Ann", tier="platinum", appointment=WINDOW))
    assert turn.say[1:] == (
        "Welcome back, Ann.",
        "Your technician visit is scheduled between 9:00 AM and 11:00 AM on Tuesday, November 24.",
    )
    assert turn.prompt[0].startswith("As a platinum member")  # the priority line first
    assert turn.gather is not None and turn.gather.keys[0] == "0"
    assert turn.personalized == ("greeting", "appointment", "priority")


def test_the_standard_menu_offers_no_priority_and_refuses_its_key():
    turn = ENGINE.start(STANDARD)
    assert turn.say == ("Thank you for calling customer service.",)
    assert "0" not in turn.gather.keys
    again = ENGINE.answer("main", Caller(tier="gold"), digits="0")
    assert again.say == ("Sorry, I did not understand that.",) and again.gather.attempt == 2


def test_choices_by_key_and_by_word():
    assert ENGINE.answer("main", STANDARD, digits="2").transfer == "billing"
    assert ENGINE.answer("main", STANDARD, speech="I want to talk about my Payment").transfer == "billing"
    repair = ENGINE.answer("main", STANDARD, speech="repair")
    assert (repair.node, repair.chose) == ("repair", "1")
    assert ENGINE.answer("repair", STANDARD, digits="*").node == "main"
    assert ENGINE.answer("main", Caller(tier="platinum"), speech="priority please").transfer == "priority"


def test_the_fallback_queue_after_max_attempts():
    turn = ENGINE.answer("main", STANDARD, attempt=3)
    assert (turn.transfer, turn.outcome) == ("general", "transferred")


def test_an_unknown_node_restarts_at_the_top():
    assert ENGINE.answer("gone-since-the-last-deploy", STANDARD, digits="3").outcome == "self_served"


def test_a_turn_survives_its_event_data():
    turn = ENGINE.start(Caller(first_name="Ann", tier="platinum", appointment=WINDOW, degraded=("view:x",)))
    assert Turn.from_data(json.loads(json.dumps(turn.to_data()))) == turn


def test_the_next_appointment_window_from_fulfillments():
    now = datetime(2026, 11, 23, 12, tzinfo=UTC)

    def f(status: str, start: datetime, **data: Any) -> dict[str, Any]:
        end = start + timedelta(hours=2)
        return {"status": status, "data": {"window_start": start.isoformat(), "window_end": end.isoformat(), **data}}

    soon, later, past = now + timedelta(days=1), now + timedelta(days=3), now - timedelta(days=1)
    found = appointment_of([f("confirmed", later), f("pending", soon), f("rejected", now), f("confirmed", past)], now)
    assert found is not None and found.window_start == soon
    assert appointment_of([f("failed", soon), {"status": "confirmed", "data": {}}], now) is None
    assert appointment_of("not a list", now) is None


# ---- the touch point passes the hub's conformance suite (with Twilio mounted) ----------------


class TestConformance(TouchPointConformance):
    touchpoint = "ivr"

    @pytest.fixture
    def hub_config(self, database_url: str) -> Config:
        return Config(
            database_url=database_url,
            public_url="https://hub.example.com",
            raw={"touchpoints": {"ivr": {"twilio_auth_token": "conformance-token"}}},
        )


def test_the_documented_configuration_builds_a_hub(tmp_path, monkeypatch):
    """The config block of docs/ivr.md, with the example menu beside it: both adapters mount."""
    from prm_core.server.app import create_app

    text = DOCS.read_text(encoding="utf-8")
    config_toml = re.search(r"## Configuration\s*(?:<!--.*?-->\s*)*```toml\n(.*?)```", text, re.S).group(1)
    (tmp_path / "prm.toml").write_text(config_toml, encoding="utf-8")
    (tmp_path / "ivr-menu.toml").write_text(docs_menu(), encoding="utf-8")
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "documented-token")
    config = load_config(tmp_path / "prm.toml", database_url=f"sqlite:///{tmp_path}/prm.db")
    assert menu_for(config).fallback_queue == "front_desk"
    app = create_app(config)
    paths = {r.resource.canonical for r in app.router.routes() if r.resource}
    assert {"/v1/touchpoints/ivr/twilio/voice", "/v1/touchpoints/ivr/twilio/gather"} <= paths
    assert len(app.cleanup_ctx) >= 2  # the hub, then the FastAGI server
