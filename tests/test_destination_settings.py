"""A ``[destinations.NAME]`` table as a sink reads it (``DestinationSettings``' getters): what
each one returns, its defaults, the edges it accepts, and the one-line message naming the key
for what it refuses (never echoing a string, which may be a secret); and ``Refused``."""

from __future__ import annotations

from typing import Any

import pytest

from prm_core.config import Config
from prm_core.errors import ConfigError
from prm_core.feed import DestinationSettings, Refused


def settings(**raw: Any) -> DestinationSettings:
    return DestinationSettings(name="d", kind="k", raw={"kind": "k", **raw}, config=Config())


def refusal(call: Any) -> str:
    with pytest.raises(ConfigError) as raised:
        call()
    return str(raised.value)


def test_made_by_hand_as_a_plugins_tests_do_it_takes_every_type_and_the_hubs_batch_size() -> None:
    made = settings()
    assert (made.types, made.batch_size, made.read) == (None, 1000, None)
    assert made.where("url") == "[destinations.d].url"
    assert str(made.invalid("url", "is wrong")) == "[destinations.d].url is wrong"


def test_text_returns_the_string_or_its_default() -> None:
    s = settings(path="out/", blank=" x ")
    assert s.text("path") == "out/"
    assert s.text("path", default="elsewhere") == "out/"
    assert s.text("blank") == " x "  # kept as written: only a string of nothing but blanks is empty
    assert s.text("absent", default="changes.log") == "changes.log"
    assert s.text("absent", default=None) is None  # a default of None stays None


@pytest.mark.parametrize(
    ("raw", "default", "message"),
    [
        ({}, "-", "[destinations.d].key is required"),
        ({"key": ""}, "-", "[destinations.d].key must be a non-empty string, not str"),
        ({"key": "  \t"}, "-", "[destinations.d].key must be a non-empty string, not str"),
        ({"key": " "}, "dflt", "[destinations.d].key must be a non-empty string, not str"),
        ({"key": 5}, "-", "[destinations.d].key must be a non-empty string, not 5"),
        # a value that is not a string is refused even where the default is None
        ({"key": 5}, None, "[destinations.d].key must be a non-empty string, not 5"),
        ({"key": ["a"]}, "dflt", "[destinations.d].key must be a non-empty string, not ['a']"),
        # a default that is a blank string is checked like a value
        ({}, " ", "[destinations.d].key must be a non-empty string, not str"),
    ],
)
def test_text_refuses_what_is_missing_empty_or_not_a_string(
    raw: dict[str, Any], default: str | None, message: str
) -> None:
    s = settings(**raw)
    assert refusal(lambda: s.text("key") if default == "-" else s.text("key", default=default)) == message


def test_a_refused_string_is_never_shown_and_other_values_at_most_40_characters() -> None:
    secret = "whsec_" + "A" * 60
    assert secret not in refusal(lambda: settings(key=secret).flag("key", default=False))
    assert refusal(lambda: settings(key=secret).number("key", default=1)).endswith("must be a number, not str")
    long = list(range(30))  # its repr: 110 characters
    assert refusal(lambda: settings(key=long).text("key")) == (
        f"[destinations.d].key must be a non-empty string, not {repr(long)[:40]}"
    )
    assert len(repr(long)[:40]) == 40


def test_texts_returns_a_list_a_string_being_a_list_of_one() -> None:
    s = settings(one="nats://a", many=["nats://a", " b "])
    assert s.texts("one") == ["nats://a"]
    assert s.texts("many") == ["nats://a", " b "]
    assert s.texts("absent", default=["x"]) == ["x"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "[destinations.d].key is required"),
        ({"key": []}, "[destinations.d].key must be a non-empty list of strings"),
        ({"key": ["a", ""]}, "[destinations.d].key must be a non-empty list of strings"),
        ({"key": ["a", "  "]}, "[destinations.d].key must be a non-empty list of strings"),
        ({"key": ["a", 5]}, "[destinations.d].key must be a non-empty list of strings"),
        ({"key": [5]}, "[destinations.d].key must be a non-empty list of strings"),
        ({"key": 5}, "[destinations.d].key must be a non-empty list of strings"),
        ({"key": ("a",)}, "[destinations.d].key must be a non-empty list of strings"),
    ],
)
def test_texts_refuses_what_is_missing_empty_or_not_strings(raw: dict[str, Any], message: str) -> None:
    assert refusal(lambda: settings(**raw).texts("key")) == message


def test_number_returns_a_float_within_its_bounds_edges_included() -> None:
    assert settings().number("t", default=10) == 10.0
    assert isinstance(settings().number("t", default=10), float)
    assert settings(t=0.1).number("t", default=10, minimum=0.1, maximum=300) == 0.1
    assert settings(t=300).number("t", default=10, minimum=0.1, maximum=300) == 300.0
    assert settings(t=0).number("t", default=10) == 0.0  # the minimum's default: 0
    assert settings(t=1e9).number("t", default=10) == 1e9  # no maximum unless one is given


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0.09, "must be at least 0.1 and at most 300, not 0.09"),
        (300.5, "must be at least 0.1 and at most 300, not 300.5"),
        (True, "must be a number, not True"),
        ("5", "must be a number, not str"),
        (None, "must be a number, not None"),
    ],
)
def test_number_refuses_what_is_out_of_bounds_or_not_a_number(value: Any, message: str) -> None:
    assert refusal(lambda: settings(t=value).number("t", default=10, minimum=0.1, maximum=300)) == (
        f"[destinations.d].t {message}"
    )


def test_number_without_a_maximum_names_only_its_minimum() -> None:
    assert refusal(lambda: settings(t=-1).number("t", default=10)) == "[destinations.d].t must be at least 0, not -1"


def test_integer_returns_an_int_within_its_bounds_edges_included() -> None:
    assert settings().integer("n", default=1000) == 1000
    assert isinstance(settings(n=1).integer("n", default=1000, minimum=1, maximum=1000), int)
    assert settings(n=1).integer("n", default=1000, minimum=1, maximum=1000) == 1
    assert settings(n=1000).integer("n", default=1000, minimum=1, maximum=1000) == 1000


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "must be at least 1 and at most 1000, not 0"),
        (1001, "must be at least 1 and at most 1000, not 1001"),
        (1.0, "must be a whole number, not 1.0"),
        (1.5, "must be a whole number, not 1.5"),
        (True, "must be a whole number, not True"),
        ("7", "must be a whole number, not str"),
    ],
)
def test_integer_refuses_what_is_out_of_bounds_or_not_whole(value: Any, message: str) -> None:
    assert refusal(lambda: settings(n=value).integer("n", default=1000, minimum=1, maximum=1000)) == (
        f"[destinations.d].n {message}"
    )


def test_flag_is_true_or_false_and_nothing_else() -> None:
    assert settings(h=False).flag("h", default=True) is False
    assert settings(h=True).flag("h", default=False) is True
    assert settings().flag("h", default=True) is True
    assert refusal(lambda: settings(h=1).flag("h", default=True)) == "[destinations.d].h must be true or false, not 1"
    assert refusal(lambda: settings(h="yes").flag("h", default=True)) == (
        "[destinations.d].h must be true or false, not str"
    )


def test_refused_carries_the_positions_as_a_tuple_and_the_reason_as_its_message() -> None:
    refused = Refused(["12", "14"], "type not wanted")
    assert (refused.positions, refused.reason, str(refused)) == (("12", "14"), "type not wanted", "type not wanted")
