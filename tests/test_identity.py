"""Identity normalization, find-or-create, linking, and looking a customer up by any identity."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from attrs import evolve

from prm_core.errors import InvalidInput, NotFound
from prm_core.hub import Hub
from prm_core.identity import builtin_namespaces, normalize_email, normalize_identities, normalize_phone, parse_ref
from prm_core.model import Identity
from prm_core.store.tables import customers, identities

T0 = "2026-11-23T08:00:00Z"


def event(event_id: str, at: str = T0, type: str = "page", **idents: str) -> dict[str, Any]:
    return {"id": event_id, "type": type, "occurred_at": at, "identities": idents}


async def send(hub: Hub, touchpoint: str, *events: dict[str, Any]) -> list[Any]:
    return await hub.record(hub.parse_events({"events": list(events)}, touchpoint))


async def table(hub: Hub, query: Any) -> list[Any]:
    return await hub.store.read(lambda conn: list(conn.execute(query)))


def namespaces() -> dict[str, Any]:
    return {ns.name: ns for ns in builtin_namespaces()}


# ---- normalization ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (" Ann@Example.COM ", "ann@example.com"),
        ("ann@example.com", "ann@example.com"),
        ("\tBOB.Smith+tag@Mail.Example.org\n", "bob.smith+tag@mail.example.org"),
    ],
)
def test_email_is_trimmed_and_lower_cased(raw, expected):
    assert normalize_email(raw, "US") == expected


@pytest.mark.parametrize("raw", ["", "ann", "ann@", "@example.com", "ann@example", "ann smith@example.com"])
def test_bad_emails_are_refused(raw):
    with pytest.raises(ValueError):
        normalize_email(raw, "US")


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("(415) 555-0100", "US", "+14155550100"),
        ("415.555.0100", "US", "+14155550100"),
        ("+1 415 555 0100", "GB", "+14155550100"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("+44 20 7946 0958", "US", "+442079460958"),
        ("01 23 45 67 89", "FR", "+33123456789"),
    ],
)
def test_phone_becomes_e164_using_the_default_region(raw, region, expected):
    assert normalize_phone(raw, region) == expected


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"phone": "call me maybe"}, "identities.phone"),
        ({"phone": "12"}, "identities.phone"),
        ({"phone": "9" * 40}, "identities.phone"),
        ({"email": "ann-at-example.com"}, "identities.email"),
        ({"user_id": "   "}, "identities.user_id"),
        ({"user_id": ["u1"]}, "identities.user_id"),
        ({"user_id": "x" * 300}, "identities.user_id"),
        ({"shoe_size": "42"}, "identities.shoe_size"),
    ],
)
def test_invalid_identities_name_the_field_and_never_the_value(raw, field):
    with pytest.raises(InvalidInput) as info:
        normalize_identities(raw, namespaces(), "US")
    assert info.value.field == field
    (value,) = raw.values()
    text = str(info.value)
    if isinstance(value, str) and value.strip():
        assert value not in text
        assert value.strip() not in text


def test_identities_are_normalized_sorted_and_deduplicated():
    got = normalize_identities(
        {"phone": "(415) 555-0100", "email": " Ann@Example.com", "user_id": " u-1 ", "anonymous_id": None},
        namespaces(),
        "US",
    )
    assert got == (
        Identity("email", "ann@example.com"),
        Identity("phone", "+14155550100"),
        Identity("user_id", "u-1"),
    )


async def test_parse_events_normalizes_with_the_configured_region(hub_config):
    gb = evolve(hub_config, default_region="GB")
    async with Hub.open(gb, autoload=True) as hub:
        (ev,) = hub.parse_events(event("e1", phone="020 7946 0958", email=" Ann@Example.COM "), "web")
        assert set(ev.identities) == {Identity("phone", "+442079460958"), Identity("email", "ann@example.com")}
        await hub.record([ev])
        # the same number written nationally (GB), internationally, or looked up in either form
        view = await hub.view("phone:020 7946 0958")
        assert view.customer.id == (await hub.view("phone:+44 20 7946 0958")).customer.id
        assert Identity("phone", "+442079460958") in view.identities


async def test_us_region_is_the_default(hub):
    (ev,) = hub.parse_events(event("e1", phone="(415) 555-0100"), "web")
    assert ev.identities == (Identity("phone", "+14155550100"),)


async def test_an_invalid_phone_in_a_batch_names_its_position_and_writes_nothing(hub):
    body = {"events": [event("ok", email="ann@example.com"), event("bad", phone="555-CALL-NOW-PLEASE-123")]}
    with pytest.raises(InvalidInput) as info:
        hub.parse_events(body, "web")
    assert info.value.field == "events[1].identities.phone"
    assert "555-CALL-NOW" not in str(info.value)
    with pytest.raises(InvalidInput) as single:
        hub.parse_events(event("x", phone="call me maybe"), "web")
    assert single.value.field == "identities.phone"
    assert "call me maybe" not in str(single.value)
    assert await table(hub, sa.select(customers)) == []


async def test_a_lookup_with_an_invalid_value_is_invalid_input_without_the_value(hub):
    with pytest.raises(InvalidInput) as info:
        await hub.view("phone:hello there")
    assert "hello there" not in str(info.value)
    with pytest.raises(InvalidInput):
        await hub.view("shoe:42")


# ---- find or create, linking -------------------------------------------------------------


async def test_an_unknown_identity_creates_a_customer_and_a_known_one_finds_it(hub):
    (first,) = await send(hub, "web", event("e1", email="Ann@Example.com"))
    (second,) = await send(hub, "pos", event("p1", email="  ann@EXAMPLE.com "))
    (other,) = await send(hub, "web", event("e2", email="bob@example.com"))
    assert first.customer_id == second.customer_id
    assert other.customer_id != first.customer_id
    rows = await table(hub, sa.select(customers.c.id, customers.c.kind, customers.c.merged_into))
    assert sorted((r.id, r.kind, r.merged_into) for r in rows) == sorted(
        [(first.customer_id, "person", None), (other.customer_id, "person", None)]
    )
    idents = await table(hub, sa.select(identities.c.namespace, identities.c.value, identities.c.customer_id))
    assert sorted(tuple(r) for r in idents) == [
        ("email", "ann@example.com", first.customer_id),
        ("email", "bob@example.com", other.customer_id),
    ]


async def test_find_or_create_within_one_batch(hub):
    recorded = await send(
        hub,
        "web",
        event("e1", email="ann@example.com"),
        event("e2", email="ANN@example.com", at="2026-11-23T08:01:00Z"),
        event("e3", email="bob@example.com", at="2026-11-23T08:02:00Z"),
    )
    assert recorded[0].customer_id == recorded[1].customer_id != recorded[2].customer_id
    assert len(await table(hub, sa.select(customers))) == 2


async def test_an_event_without_identities_gets_a_customer_of_its_own(hub):
    a, b = await send(hub, "pos", event("p1"), event("p2"))
    assert a.customer_id != b.customer_id
    assert (await hub.view(a.customer_id)).identities == ()


async def test_identities_seen_together_belong_to_one_customer(hub):
    (a,) = await send(hub, "web", event("e1", email="ann@example.com"))
    (b,) = await send(hub, "callcenter", event("c1", email="ann@example.com", phone="(415) 555-0100"))
    (c,) = await send(hub, "ivr", event("i1", phone="+1 415-555-0100", user_id="u-42"))
    (d,) = await send(hub, "pos", event("p1", user_id="u-42"))
    assert a.customer_id == b.customer_id == c.customer_id == d.customer_id
    view = await hub.view("user_id:u-42")
    assert view.identities == (
        Identity("email", "ann@example.com"),
        Identity("phone", "+14155550100"),
        Identity("user_id", "u-42"),
    )
    assert {t["event_id"] for t in view.timeline} == {"e1", "c1", "i1", "p1"}
    assert view.metrics["event_count"] == 4
    assert view.metrics["touchpoints"] == ["callcenter", "ivr", "pos", "web"]
    assert await hub.merges(a.customer_id) == []


async def test_an_identity_keeps_the_first_seen_time(hub):
    await send(hub, "web", event("e1", at="2026-11-23T09:00:00Z", email="ann@example.com"))
    await send(hub, "web", event("e2", at="2026-11-23T07:00:00Z", email="ann@example.com", phone="4155550100"))
    rows = await table(hub, sa.select(identities.c.namespace, identities.c.first_seen_at))
    seen = {r.namespace: r.first_seen_at.isoformat() for r in rows}
    assert seen == {"email": "2026-11-23T09:00:00+00:00", "phone": "2026-11-23T07:00:00+00:00"}


async def test_a_customer_is_found_by_any_identity_and_by_id(hub):
    (rec,) = await send(
        hub,
        "web",
        event("e1", email="ann@example.com", phone="415 555 0100", user_id="u-1", loyalty_card=" L-77 "),
    )
    cid = rec.customer_id
    refs = [
        cid,
        "email:ann@example.com",
        "email: ANN@Example.com ",
        "phone:(415) 555-0100",
        "phone:+14155550100",
        "user_id:u-1",
        "loyalty_card:L-77",
    ]
    for ref in refs:
        view = await hub.view(ref)
        assert view.customer.id == cid, ref
        assert await hub.resolve(ref) == cid
    body = (await hub.view("email:ann@example.com")).to_json()
    assert body["id"] == cid
    assert body["kind"] == "person"
    assert {(i["namespace"], i["value"]) for i in body["identities"]} == {
        ("email", "ann@example.com"),
        ("phone", "+14155550100"),
        ("user_id", "u-1"),
        ("loyalty_card", "L-77"),
    }


async def test_unknown_customers_are_not_found(hub):
    await send(hub, "web", event("e1", email="ann@example.com"))
    for ref in ["email:nobody@example.com", "phone:4155550199", "cus_doesnotexist", "user_id:ann@example.com"]:
        with pytest.raises(NotFound) as info:
            await hub.view(ref)
        assert "nobody" not in str(info.value)


# ---- the edges of normalize_identities and parse_ref ------------------------------------


def test_a_null_identity_is_skipped_and_the_ones_after_it_are_kept():
    got = normalize_identities(
        {"anonymous_id": None, "email": "ann@example.com", "phone": None, "user_id": "u-1"}, namespaces(), "US"
    )
    assert got == (Identity("email", "ann@example.com"), Identity("user_id", "u-1"))
    assert normalize_identities({"email": None}, namespaces(), "US") == ()
    assert normalize_identities(None, namespaces(), "US") == ()


@pytest.mark.parametrize(("raw", "expected"), [(12345, "12345"), (7.5, "7.5"), (0, "0")])
def test_a_numeric_identity_is_taken_as_its_text(raw, expected):
    assert normalize_identities({"loyalty_card": raw}, namespaces(), "US") == (Identity("loyalty_card", expected),)


@pytest.mark.parametrize("raw", [True, False, {"n": 1}, b"u-1"])
def test_a_boolean_or_an_object_is_not_an_identity(raw):
    with pytest.raises(InvalidInput, match=r"identities\.user_id must be a string") as info:
        normalize_identities({"user_id": raw}, namespaces(), "US")
    assert info.value.field == "identities.user_id"


def test_an_identity_may_be_256_characters_long_and_no_longer():
    longest = "x" * 256
    assert normalize_identities({"user_id": longest}, namespaces(), "US") == (Identity("user_id", longest),)
    with pytest.raises(InvalidInput, match="longer than 256 characters") as info:
        normalize_identities({"user_id": longest + "x"}, namespaces(), "US")
    assert info.value.field == "identities.user_id"


@pytest.mark.parametrize("raw", ["u\x001", "\x00", "ann\x00@example.com"])
def test_an_identity_with_a_nul_character_is_refused(raw):
    namespace = "email" if "@" in raw else "user_id"
    with pytest.raises(InvalidInput, match="must not contain NUL characters") as info:
        normalize_identities({namespace: raw}, namespaces(), "US")
    assert info.value.field == f"identities.{namespace}"


def test_identities_must_be_an_object_named_by_its_field():
    for raw in (["email", "ann@example.com"], "ann@example.com", 5):
        with pytest.raises(InvalidInput, match="must be an object of namespace: value") as info:
            normalize_identities(raw, namespaces(), "US", field="data.identities")
        assert info.value.field == "data.identities"
    with pytest.raises(
        InvalidInput, match="unknown identity namespace 'shoe'; known: account_id, anonymous_id"
    ) as info:
        normalize_identities({"email": "ann@example.com", "shoe": "42"}, namespaces(), "US", field="data.identities")
    assert info.value.field == "data.identities.shoe"


@pytest.mark.parametrize("raw", ["ann@b@example.com", "ann@.example.com", "ann@example.com extra"])
def test_more_bad_emails_are_refused(raw):
    with pytest.raises(ValueError, match="is not an email address"):
        normalize_email(raw, "US")


def test_a_ref_is_a_namespace_and_a_value_normalized():
    assert parse_ref("email: Ann@Example.com", namespaces(), "US") == Identity("email", "ann@example.com")
    assert parse_ref("phone:(415) 555-0100", namespaces(), "US") == Identity("phone", "+14155550100")
    assert parse_ref("user_id:a:b", namespaces(), "US") == Identity("user_id", "a:b")


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("ann@example.com", "who must be namespace:value"),
        (":ann@example.com", "who must be namespace:value"),
        ("email:", "who must be namespace:value"),
        ("shoe:42", "unknown identity namespace 'shoe'; known: account_id"),
        ("email:ann-at-example", "who: email is not an email address"),
        ("user_id:   ", "who: user_id is empty"),
    ],
)
def test_a_bad_ref_is_invalid_input_naming_its_field(ref, message):
    with pytest.raises(InvalidInput) as info:
        parse_ref(ref, namespaces(), "US", field="who")
    assert info.value.field == "who"
    assert str(info.value).startswith(message)
    assert "ann-at-example" not in str(info.value)


def test_identities_may_come_as_any_mapping_not_only_a_dict():
    """A plugin may hand over a read-only mapping (``MappingProxyType``) or another Mapping."""
    from types import MappingProxyType

    from prm_core.identity import builtin_namespaces, normalize_identities

    namespaces = {ns.name: ns for ns in builtin_namespaces()}
    (ident,) = normalize_identities(MappingProxyType({"email": "Ann@Example.com"}), namespaces, "US")
    assert (ident.namespace, ident.value) == ("email", "ann@example.com")
