"""The parsers every touch point's input goes through, called directly: the JSON loader
(``prm_core.server.jsonbody``) and the Event wire format (``prm_core.events``).

The HTTP tests (test_hardening.py, test_api.py) show a route answers 4xx; these pin the
limits to their exact edges, name the field each refusal names, and check what is accepted
comes out as sent.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from prm_core.errors import InvalidInput, TooLarge
from prm_core.events import (
    EARLIEST,
    FUTURE_SKEW,
    MAX_EVENTS_PER_CALL,
    check_window,
    in_window,
    parse_event,
    parse_events,
    parse_rfc3339,
    parse_time,
)
from prm_core.identity import builtin_namespaces
from prm_core.server.errors import ApiError
from prm_core.server.jsonbody import MAX_DEPTH, loads, too_deep

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
NAMESPACES = {ns.name: ns for ns in builtin_namespaces()}


def nested(depth: int, *, kind: str = "list", leaf: str = "1") -> str:
    """JSON text nesting ``depth`` containers, the innermost holding ``leaf``."""
    opening, closing = ("[", "]") if kind == "list" else ('{"k":', "}")
    return opening * depth + leaf + closing * depth


def refused(raw: bytes | str, **kwargs: Any) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        loads(raw, **kwargs)
    return caught.value


def malformed(raw: bytes | str, **kwargs: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        loads(raw, **kwargs)
    assert (caught.value.status, caught.value.code) == (400, "malformed_json")
    return caught.value


# -- the JSON loader ----------------------------------------------------------------------


def test_ordinary_json_comes_out_as_sent() -> None:
    text = '{"a": [1, -2, 1.5, "x\\u00e9", true, null], "b": {"c": "d"}}'
    expected = {"a": [1, -2, 1.5, "xé", True, None], "b": {"c": "d"}}
    assert loads(text.encode()) == expected
    assert loads(text) == expected
    assert loads(b"\xef\xbb\xbf" + text.encode()) == expected  # a UTF-8 byte order mark is skipped


def test_decimals_read_money_exactly() -> None:
    assert loads(b'{"revenue": 19.99, "n": 2}', decimals=True) == {"revenue": Decimal("19.99"), "n": 2}
    assert loads(b'{"revenue": 19.99}') == {"revenue": 19.99}


@pytest.mark.parametrize("decimals", [False, True])
@pytest.mark.parametrize("raw", [b"", b"  \n ", b"{", b"NaN", b'{"a": Infinity}', b"[-Infinity]", b"\xff\xfe{}"])
def test_what_is_not_json_is_a_400(raw: bytes, decimals: bool) -> None:
    malformed(raw, decimals=decimals)


def test_the_400_says_why() -> None:
    assert "empty" in malformed(b"  \n ").message
    assert "empty" in malformed("", field="data[0].ue_pr").message
    assert malformed(b"{").message.startswith("the body is not valid JSON")
    assert "NaN" in malformed(b"[NaN]").message
    assert "UTF-8" in malformed(b'{"a": "\xff"}').message
    error = malformed("{", field="data[0].ue_pr")
    assert error.field == "data[0].ue_pr" and error.message.startswith("data[0].ue_pr is not valid JSON")


@pytest.mark.parametrize("kind", ["list", "object"])
def test_nesting_up_to_the_limit_is_accepted_and_one_more_is_a_422(kind: str) -> None:
    assert MAX_DEPTH == 32
    for escaped in (False, True):  # without an escape the depth is checked apart from the strings
        leaf = '"\\u00e9"' if escaped else "1"
        assert loads(nested(MAX_DEPTH, kind=kind, leaf=leaf).encode()) is not None
        error = refused(nested(MAX_DEPTH + 1, kind=kind, leaf=leaf).encode())
        assert (error.code, error.field, error.message) == (
            "too_deep",
            None,
            "the body is nested deeper than 32 levels",
        )
    assert loads(nested(MAX_DEPTH, kind=kind)) is not None  # text inside another value: checked whole
    error = refused(nested(MAX_DEPTH + 1, kind=kind), field="data[2].cx")
    assert (error.code, error.field) == ("too_deep", "data[2].cx")
    assert error.message == "data[2].cx is nested deeper than 32 levels"


def test_many_containers_side_by_side_are_not_deep() -> None:
    wide = "[" + ",".join(["[]", "{}", '{"a": [1]}'] * 40) + "]"
    assert len(loads(wide.encode())) == 120
    assert len(loads(wide)) == 120


def test_a_limit_of_the_callers_own() -> None:
    assert loads(nested(3).encode(), max_depth=3) == [[[1]]]
    assert refused(nested(4).encode(), max_depth=3).code == "too_deep"
    assert refused(nested(4), max_depth=3).code == "too_deep"


def test_nesting_too_deep_for_the_parser_itself_is_a_422_not_a_crash() -> None:
    depth = 200_000
    assert refused(b"[" * depth + b"]" * depth).code == "too_deep"


def test_too_deep() -> None:
    assert too_deep(json.loads(nested(32)), 32) is False
    assert too_deep(json.loads(nested(33)), 32) is True
    assert too_deep(json.loads(nested(33, kind="object")), 32) is True
    assert too_deep(json.loads(nested(3)), 2) is True
    assert too_deep({"a": [1, {"b": "text"}], "c": "x"}, 2) is True
    assert too_deep({"a": [1, {"b": "text"}], "c": "x"}, 3) is False
    assert too_deep("a string is not a container", 0) is False
    assert too_deep(12, 1) is False and too_deep(None) is False


@pytest.mark.parametrize("decimals", [False, True])
def test_a_number_past_a_double_is_a_422_naming_its_field(decimals: bool) -> None:
    body = b'{"events": [{"data": {"ok": 1.5, "n": 2, "big": 1e400}}]}'
    error = refused(body, decimals=decimals)
    assert (error.code, error.field) == ("invalid", "events[0].data.big")
    assert error.message == "events[0].data.big is a number too large for a double"
    error = refused(b"-1e400", decimals=decimals)
    assert (error.field, error.message) == (None, "the body is a number too large for a double")
    assert refused("[1, 2e999]", field="data[0].cx", decimals=decimals).field == "data[0].cx[1]"


def test_an_integer_past_the_conversion_limit_is_a_422_naming_its_field() -> None:
    limit = sys.get_int_max_str_digits()
    longest = "9" * limit
    assert loads(f'{{"n": -{longest}}}'.encode()) == {"n": -int(longest)}
    error = refused(f'{{"a": [1, 2.5], "n": -{longest}9}}'.encode())
    assert (error.field, error.message) == ("n", f"n is an integer of more than {limit} digits")
    # the longest integer the hub takes is not what a later number past a double is blamed on
    assert refused(f'{{"a": {longest}, "b": 1e400}}'.encode()).field == "b"


def test_the_first_thing_the_store_cannot_keep_is_named() -> None:
    # document order, whichever kind of problem comes first
    assert refused(b'{"a": "\\u0000", "b": 1e400}').field == "a"
    assert refused(b'{"a": 1e400, "b": "\\u0000"}').field == "a"
    assert refused(b'{"a": "fine", "b": 7, "c": [null, "\\u0000"], "d": "\\ud800"}').field == "c[1]"


@pytest.mark.parametrize(
    ("raw", "field", "holds"),
    [
        (b'{"name": "a\\u0000b"}', "name", "a NUL character"),
        (b'{"a": ["x", "\\udc00"]}', "a[1]", "a lone UTF-16 surrogate"),
        (b'{"a": {"b": "\\uD800 and more"}}', "a.b", "a lone UTF-16 surrogate"),
        (b'"\\u0000"', None, "a NUL character"),
    ],
)
def test_a_string_the_store_cannot_keep_is_a_422_naming_its_field(raw: bytes, field: str | None, holds: str) -> None:
    error = refused(raw)
    assert error.field == field
    assert error.message.startswith(f"{field or 'the body'} holds {holds}")
    assert refused(raw.decode()).field == field  # the same as text inside another value
    assert refused(raw.decode(), field="data[0].cx").field == ("data[0].cx" + (f".{field}" if field else ""))


def test_a_key_the_store_cannot_keep_is_named_by_the_object_holding_it() -> None:
    error = refused(b'{"a": {"b\\u0000": 1}}')
    assert (error.field, error.message) == ("a", "a key in a holds a NUL character (\\u0000)")
    error = refused(b'{"\\ud800": 1}')
    assert (error.field, error.message) == (
        None,
        "a key in the body holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text",
    )


def test_text_inside_another_value_is_always_checked() -> None:
    # a str (JSON inside a form field or another JSON string) has every string checked, escape or not
    assert refused('{"a": "x\\u0000"}', field="data[0].cx").field == "data[0].cx.a"
    assert loads('{"a": "fine"}', field="data[0].cx") == {"a": "fine"}


def test_an_escaped_pair_and_other_escapes_are_text() -> None:
    assert loads(b'{"a": "\\ud83d\\ude00", "b": "\\u00e9\\u0041"}') == {"a": "\U0001f600", "b": "éA"}


def test_long_keys_are_cut_at_64_characters_in_a_field_name() -> None:
    key = "k" * 100
    assert refused(f'{{"{key}": "\\u0000"}}'.encode()).field == "k" * 64
    assert refused(f'{{"a": {{"{key}": "\\u0000"}}}}'.encode()).field == "a." + "k" * 64
    assert refused(f'{{"{"j" * 64}": [1e400]}}'.encode()).field == "j" * 64 + "[0]"


# -- times ------------------------------------------------------------------------------


def test_the_window_is_1900_to_a_day_ahead() -> None:
    assert EARLIEST == datetime(1900, 1, 1, tzinfo=UTC)
    assert FUTURE_SKEW == timedelta(days=1)
    latest = NOW + timedelta(days=1)
    for value in (EARLIEST, latest, NOW):
        assert in_window(value, NOW) is True
        assert check_window(value, "t", NOW) == value
    for value in (EARLIEST - timedelta(microseconds=1), latest + timedelta(microseconds=1)):
        assert in_window(value, NOW) is False
        with pytest.raises(InvalidInput):
            check_window(value, "t", NOW)


def test_the_window_follows_the_clock_it_is_given() -> None:
    then = datetime(2001, 1, 1, tzinfo=UTC)
    assert in_window(then + timedelta(days=2), then) is False
    with pytest.raises(InvalidInput, match="more than a day ahead"):
        check_window(then + timedelta(days=2), "t", then)
    with pytest.raises(InvalidInput, match="more than a day ahead"):
        parse_time("2001-01-03T00:00:00Z", "t", then)
    # without one, the hub's clock
    assert in_window(datetime.now(UTC) + timedelta(hours=23)) is True
    assert in_window(datetime.now(UTC) + timedelta(hours=25)) is False
    assert check_window(datetime.now(UTC) - timedelta(days=30), "t") < datetime.now(UTC)


def test_check_window_names_the_end() -> None:
    with pytest.raises(InvalidInput) as caught:
        check_window(datetime(1899, 12, 31, tzinfo=UTC), "events[2].occurred_at", NOW)
    assert (caught.value.field, caught.value.message) == (
        "events[2].occurred_at",
        "events[2].occurred_at is before 1900",
    )
    with pytest.raises(InvalidInput) as caught:
        check_window(NOW + timedelta(days=2), "sent_at", NOW)
    assert (caught.value.field, caught.value.message) == (
        "sent_at",
        "sent_at is more than a day ahead of the hub's clock",
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-23T08:00:00Z", datetime(2026, 11, 23, 8, tzinfo=UTC)),
        ("2026-11-23t08:00:00z", datetime(2026, 11, 23, 8, tzinfo=UTC)),
        ("2026-11-23 08:00:00.250+01:00", datetime(2026, 11, 23, 7, 0, 0, 250000, tzinfo=UTC)),
        ("  2026-11-23T08:00:00-05:30 ", datetime(2026, 11, 23, 13, 30, tzinfo=UTC)),
        ("1900-01-01T00:00:00Z", EARLIEST),
        ("1900-01-01T01:00:00+01:00", EARLIEST),
        ("2026-11-24T12:00:00Z", NOW + FUTURE_SKEW),
    ],
)
def test_rfc3339_times_are_read_as_utc(text: str, expected: datetime) -> None:
    value = parse_time(text, "t", NOW)
    assert value == expected and value.utcoffset() == timedelta(0)
    assert parse_rfc3339(text, "t") == expected


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (1700000000, "must be an RFC 3339 timestamp string"),
        (None, "must be an RFC 3339 timestamp string"),
        ("2026-11-23", "is not an RFC 3339 timestamp"),
        ("2026-11-23T08:00:00", "is not an RFC 3339 timestamp"),  # no offset
        ("2026-W48-1T08:00:00Z", "is not an RFC 3339 timestamp"),
        ("20261123T080000Z", "is not an RFC 3339 timestamp"),
        ("2026-02-30T08:00:00Z", "is not a valid date and time"),
        ("2026-11-23T25:00:00Z", "is not a valid date and time"),
        ("1899-12-31T23:59:59Z", "is before 1900"),
        ("1900-01-01T00:30:00+01:00", "is before 1900"),
        ("2026-11-24T12:00:01Z", "more than a day ahead"),
        ("0001-01-01T00:00:00+01:00", "outside the times the hub takes"),
        ("9999-12-31T23:00:00-01:00", "outside the times the hub takes"),
    ],
)
def test_a_time_that_is_not_rfc3339_or_outside_the_window_is_a_422_naming_it(raw: Any, says: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_time(raw, "events[0].occurred_at", NOW)
    assert caught.value.field == "events[0].occurred_at"
    assert says in caught.value.message


# -- events -------------------------------------------------------------------------------


def event(**fields: Any) -> dict[str, Any]:
    return {"id": "e1", "type": "page.viewed", "occurred_at": "2026-11-23T08:00:00Z", **fields}


def parse(body: Any, **kwargs: Any) -> list[Any]:
    return parse_events(body, "web", NAMESPACES, "US", received_at=NOW, **kwargs)


def refusal(body: Any, **kwargs: Any) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        parse(body, **kwargs)
    return caught.value


def test_an_event_comes_out_as_sent() -> None:
    (ev,) = parse(
        event(identities={"email": " Ann@Example.com "}, dialogue="d-1", direction="outbound", data={"url": "/a"})
    )
    assert (ev.id, ev.type, ev.touchpoint, ev.dialogue, ev.direction) == ("e1", "page.viewed", "web", "d-1", "outbound")
    assert ev.occurred_at == datetime(2026, 11, 23, 8, tzinfo=UTC)
    assert ev.received_at == NOW
    assert ev.data == {"url": "/a"}
    assert [(i.namespace, i.value) for i in ev.identities] == [("email", "ann@example.com")]
    (bare,) = parse(event())
    assert (bare.dialogue, bare.direction, bare.data, bare.identities) == (None, "inbound", {}, ())
    (nulls,) = parse(event(data=None, dialogue=None))
    assert (nulls.data, nulls.dialogue) == ({}, None)


def test_a_batch_keeps_its_order() -> None:
    events = parse({"events": [event(id=f"e{i}") for i in range(3)]})
    assert [e.id for e in events] == ["e0", "e1", "e2"]


def test_received_at_defaults_to_the_hubs_clock() -> None:
    before = datetime.now(UTC)
    (ev,) = parse_events(event(occurred_at=before.isoformat()), "web", NAMESPACES, "US")
    assert before <= ev.received_at <= datetime.now(UTC)


def test_received_at_is_the_clock_the_window_is_read_on() -> None:
    then = datetime(2001, 5, 1, tzinfo=UTC)
    (ev,) = parse_events(event(occurred_at="2001-05-01T00:00:00Z"), "web", NAMESPACES, "US", received_at=then)
    assert ev.received_at == then
    with pytest.raises(InvalidInput):
        parse_events(event(occurred_at="2001-05-03T00:00:00Z"), "web", NAMESPACES, "US", received_at=then)


def test_a_batch_of_up_to_1000_events_is_accepted_and_1001_is_a_413() -> None:
    assert MAX_EVENTS_PER_CALL == 1000
    assert len(parse({"events": [event(id=f"e{i}") for i in range(1000)]})) == 1000
    with pytest.raises(TooLarge) as caught:
        parse({"events": [event(id=f"e{i}") for i in range(1001)]})
    assert caught.value.field == "events"
    assert caught.value.message == "at most 1000 events per call, got 1001"
    with pytest.raises(TooLarge):
        parse({"events": [event(), event(id="e2")]}, max_events=1)
    assert len(parse({"events": [event()]}, max_events=1)) == 1


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ([event()], None, "invalid"),
        ("text", None, "invalid"),
        ({"events": event()}, "events", "invalid"),
        ({"events": []}, "events", "invalid"),
        ({"events": [event(), "e2"]}, "events[1]", "invalid"),
        ({"type": "page.viewed", "occurred_at": "2026-11-23T08:00:00Z"}, "id", "missing"),
        ({"id": "e1", "occurred_at": "2026-11-23T08:00:00Z"}, "type", "missing"),
        ({"id": "e1", "type": "page.viewed"}, "occurred_at", "missing"),
        ({"events": [event(), {"id": "e2", "type": "x"}]}, "events[1].occurred_at", "missing"),
        (event(id=""), "id", "invalid"),
        (event(id="   "), "id", "invalid"),
        (event(id=7), "id", "invalid"),
        (event(type=["page"]), "type", "invalid"),
        (event(id="a\x00b"), "id", "invalid"),
        (event(dialogue="d\x00"), "dialogue", "invalid"),
        (event(dialogue=""), "dialogue", "invalid"),
        (event(direction="sideways"), "direction", "invalid"),
        (event(direction=None), "direction", "invalid"),
        (event(data=[1, 2]), "data", "invalid"),
        (event(data="text"), "data", "invalid"),
        (event(occurred_at=None), "occurred_at", "invalid"),
        (
            {"events": [event(), event(id="e2", identities={"email": "not an email"})]},
            "events[1].identities.email",
            "invalid",
        ),
        (event(type="consent.granted", data={"purpose": "spying"}), "data.purpose", "invalid"),
        ({"events": [event(type="consent.revoked", data={})]}, "events[0].data.purpose", "invalid"),
    ],
)
def test_a_bad_event_is_a_422_naming_the_field(body: Any, field: str | None, code: str) -> None:
    error = refusal(body)
    assert (error.field, error.code) == (field, code)
    assert error.message.startswith(field or "the body")


@pytest.mark.parametrize("body", [None, 7, "text", [event()], True])
def test_a_body_that_is_not_an_object_is_a_422_saying_what_is_taken(body: Any) -> None:
    error = refusal(body)
    assert (error.field, error.code) == (None, "invalid")
    assert error.message == 'the body must be a JSON object: {"events": [...]} or one Event'


def test_the_messages_say_what_is_wrong() -> None:
    assert refusal({"events": ["e"]}).message == "events[0] must be an Event object"
    assert refusal({"events": []}).message == "events is empty"
    assert refusal(event(id=" ")).message == "id must be a non-empty string"
    assert refusal(event(id="a\x00")).message == "id must not contain NUL characters"
    assert refusal({"events": [event(type="t" * 101)]}).message == "events[0].type is longer than 100 characters"
    # at the limit the length is right, and the message names what is wrong instead
    assert refusal(event(type="t" * 99 + "\x00")).message == "type must not contain NUL characters"


def test_an_event_may_come_as_any_mapping_not_only_a_dict() -> None:
    from types import MappingProxyType

    (ev,) = parse({"events": [MappingProxyType(event(id="m1", data=MappingProxyType({"page": "/"})))]})
    assert (ev.id, ev.data["page"]) == ("m1", "/")


def test_ids_and_dialogues_up_to_200_characters_and_types_up_to_100() -> None:
    (ev,) = parse(event(id="i" * 200, dialogue="d" * 200, type="t" * 100))
    assert (len(ev.id), len(ev.dialogue), len(ev.type)) == (200, 200, 100)
    for fields, field in (
        ({"id": "i" * 201}, "id"),
        ({"dialogue": "d" * 201}, "dialogue"),
        ({"type": "t" * 101}, "type"),
    ):
        assert refusal(event(**fields)).field == field


def test_the_consent_purposes_are_checked_on_consent_events_only() -> None:
    (granted,) = parse(event(type="consent.granted", data={"purpose": "marketing", "channel": "email"}))
    assert granted.data == {"purpose": "marketing", "channel": "email"}
    (other,) = parse(event(type="page.viewed", data={"purpose": "anything at all"}))
    assert other.data == {"purpose": "anything at all"}


def test_sent_at_corrects_occurred_at_for_the_clients_clock() -> None:
    # the client's clock runs 10 minutes behind: it sent at 11:50 by its clock, received at 12:00
    (ev,) = parse(event(sent_at="2026-11-23T11:50:00Z"))
    assert ev.occurred_at == datetime(2026, 11, 23, 8, 10, tzinfo=UTC)
    events = parse({"sent_at": "2026-11-23T12:30:00Z", "events": [event(), event(id="e2", sent_at=None)]})
    assert [e.occurred_at for e in events] == [datetime(2026, 11, 23, 7, 30, tzinfo=UTC)] * 2
    # an event's own sent_at wins over the batch's
    events = parse({"sent_at": "2026-11-23T12:30:00Z", "events": [event(sent_at="2026-11-23T12:00:00Z")]})
    assert events[0].occurred_at == datetime(2026, 11, 23, 8, tzinfo=UTC)
    (plain,) = parse({"events": [event()], "sent_at": None})
    assert plain.occurred_at == datetime(2026, 11, 23, 8, tzinfo=UTC)


def test_a_correction_landing_outside_the_window_names_the_sent_at_that_moved_it() -> None:
    # occurred today, but sent "in 1950": the correction would move it 76 years ahead
    error = refusal({"events": [event(), event(id="e2", sent_at="1950-01-01T00:00:00Z")]})
    assert error.field == "events[1].sent_at"
    assert "moves occurred_at" in error.message
    error = refusal({"sent_at": "1950-01-01T00:00:00Z", "events": [event()]})
    assert error.field == "sent_at"
    error = refusal({"sent_at": "2026-11-24T12:00:00Z", "events": [event(occurred_at="1900-01-01T12:00:00Z")]})
    assert error.field == "sent_at"
    assert refusal({"sent_at": "yesterday", "events": [event()]}).field == "sent_at"


def test_parse_event_alone() -> None:
    ev = parse_event(event(), "pos", NAMESPACES, "US", received_at=NOW, where="events[4].")
    assert (ev.touchpoint, ev.id) == ("pos", "e1")
    with pytest.raises(InvalidInput) as caught:
        parse_event(["x"], "pos", NAMESPACES, "US", received_at=NOW)
    assert (caught.value.field, caught.value.message) == (None, "the body must be an Event object")
    with pytest.raises(InvalidInput) as caught:
        parse_event(event(id=None), "pos", NAMESPACES, "US", received_at=NOW, where="events[4].")
    assert (caught.value.field, caught.value.message) == ("events[4].id", "events[4].id is required")
