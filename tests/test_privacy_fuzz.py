"""Hardening against bad input: hypothesis throws generated JSON at the public write endpoints
(the core event and request routes, consent events among them, Segment, Snowplow, the admin
consent and customer routes) and checks every answer is a success or a 4xx, never a 5xx,
and that a refused call wrote nothing (no half-writes). Then what no store can keep (a lone
surrogate, a NUL, a number past a double or 4,300 digits, a time out of bounds), planted
anywhere: a 4xx naming the field, and nothing written."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from not_json import CONTENT_TYPES, NOT_JSON
from positions import settled

from prm_core.config import Config
from prm_core.keys import create_key
from prm_core.server.app import create_app
from prm_core.server.state import HUB

TABLES = ("events", "customers", "identities", "dialogues", "consents", "memberships", "merges")
TP2 = "/com.snowplowanalytics.snowplow/tp2"

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=30)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
times = st.one_of(
    st.just("2026-11-23T08:00:00Z"), st.datetimes().map(lambda d: d.isoformat()), st.text(max_size=25), json_values
)
namespaces = st.sampled_from(["email", "phone", "user_id", "anonymous_id", "loyalty_card", "account_id", "shoe"])
identity_values = st.one_of(
    st.emails().map(str), st.from_regex(r"\+?[0-9 ()-]{3,18}", fullmatch=True), st.text(max_size=40), json_values
)
events = st.fixed_dictionaries(
    {
        "id": st.one_of(st.text(min_size=1, max_size=12), json_values),
        "type": st.one_of(st.sampled_from(["page", "consent.granted", "consent.revoked", "service.request"]), scalars),
        "occurred_at": times,
    },
    optional={
        "identities": st.one_of(st.dictionaries(namespaces, identity_values, max_size=3), json_values),
        "data": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "purpose": st.one_of(st.sampled_from(["personalization", "marketing", "partner_sharing"]), scalars),
                    "channel": st.one_of(st.sampled_from(["*", "web", "email"]), scalars),
                    "revenue": scalars,
                },
            ),
            json_values,
        ),
        "dialogue": st.one_of(st.text(max_size=10), json_values),
        "direction": st.one_of(st.sampled_from(["inbound", "outbound"]), scalars),
        "sent_at": times,
    },
)
bodies = st.one_of(events, st.fixed_dictionaries({"events": st.lists(events, max_size=4)}), json_values)
segment = st.fixed_dictionaries(
    {"type": st.sampled_from(["track", "identify", "page", "alias", "group"]) | scalars},
    optional={
        "userId": st.one_of(st.text(max_size=10), json_values),
        "anonymousId": st.one_of(st.text(max_size=10), json_values),
        "messageId": st.one_of(st.text(min_size=1, max_size=10), json_values),
        "event": scalars,
        "traits": json_values,
        "properties": json_values,
        "timestamp": times,
        "previousId": scalars,
        "groupId": scalars,
    },
)
snowplow = st.fixed_dictionaries(
    {"e": st.sampled_from(["pv", "ue", "se", "pp", "tr"]) | st.text(max_size=3), "aid": st.just("shop")},
    optional={
        "eid": st.text(max_size=10),
        "duid": st.text(max_size=10),
        "uid": st.text(max_size=20),
        "sid": st.text(max_size=10),
        "dtm": st.text(max_size=14),
        "ue_pr": st.text(max_size=30),
        "ue_px": st.text(max_size=30),
        "co": st.text(max_size=30),
        "tr_tt": st.text(max_size=8),
    },
)
consent_bodies = st.one_of(
    st.fixed_dictionaries(
        {
            "consents": st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "purpose": st.sampled_from(["personalization", "marketing", "x"]) | scalars,
                        "channel": st.sampled_from(["*", "sms"]) | scalars,
                        "granted": st.booleans() | scalars,
                        "source": scalars,
                    },
                ),
                max_size=3,
            )
        }
    ),
    json_values,
)


class Probe:
    """A real hub server on its own event loop, driven from hypothesis' synchronous examples."""

    def __init__(self, database_url: str) -> None:
        config = Config(
            database_url=database_url,
            public_url="http://hub.test",
            # examples come faster than a tracker's calls: no keyless limit, so they reach the parser
            raw={"touchpoints": {"web": {"snowplow_app_ids": ["shop"]}}, "server": {"rate_limit_keyless": "off"}},
        )
        self.loop = asyncio.new_event_loop()
        self.client = TestClient(TestServer(create_app(config), loop=self.loop), loop=self.loop)
        self.loop.run_until_complete(self.client.start_server())
        hub = self.client.app[HUB]
        self.keys = {
            scope: self.loop.run_until_complete(create_key(hub.store, scope))[0]
            for scope in ("touchpoint:web", "admin")
        }
        # one customer for the admin routes to change
        seed = {"id": "seed", "type": "page", "occurred_at": "2026-11-23T08:00:00Z", "identities": {"user_id": "u-1"}}
        self.call("POST", "/v1/touchpoints/web/events", seed, "touchpoint:web")

    def counts(self) -> dict[str, int]:
        """Rows per table, once the hub has recorded every event it accepted (a count taken
        before an accepted event is recorded would change under the next check)."""
        self.loop.run_until_complete(settled(self.client.app[HUB]))

        def read(conn: Any) -> dict[str, int]:
            return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES}

        return self.loop.run_until_complete(self.client.app[HUB].store.read(read))

    def call(self, method: str, path: str, body: Any, scope: str | None, *, basic: bool = False) -> int:
        headers = {}
        if scope is not None:
            key = self.keys[scope]
            headers["Authorization"] = (
                "Basic " + base64.b64encode(f"{key}:".encode()).decode() if basic else f"Bearer {key}"
            )

        async def go() -> int:
            resp = await self.client.request(method, path, json=body, headers=headers)
            await resp.read()
            return resp.status

        return self.loop.run_until_complete(go())

    def check(self, method: str, path: str, body: Any, scope: str | None, *, basic: bool = False) -> None:
        before = self.counts()
        status = self.call(method, path, body, scope, basic=basic)
        assert status < 500, f"{method} {path} answered {status} to {body!r}"
        if status >= 400:
            assert self.counts() == before, f"{method} {path} refused {body!r} ({status}) but wrote"

    def refuse(self, method: str, path: str, raw: bytes, scope: str | None, field: str, *, basic: bool = False) -> None:
        """``raw`` is refused with a 4xx JSON error naming ``field``, and nothing is written."""
        headers = {"Content-Type": "application/json"}
        if scope is not None:
            key = self.keys[scope]
            headers["Authorization"] = (
                "Basic " + base64.b64encode(f"{key}:".encode()).decode() if basic else f"Bearer {key}"
            )

        async def go() -> tuple[int, str]:
            resp = await self.client.request(method, path, data=raw, headers=headers)
            return resp.status, await resp.text()

        before = self.counts()
        status, text = self.loop.run_until_complete(go())
        assert 400 <= status < 500, f"{method} {path} answered {status} to {raw[:200]!r}: {text[:300]}"
        assert json.loads(text)["error"]["field"] == field, text
        assert self.counts() == before, f"{method} {path} refused {raw[:200]!r} ({status}) but wrote"

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


@pytest.fixture
def probe(database_url: str) -> Iterator[Probe]:
    p = Probe(database_url)
    yield p
    p.close()


# PRM_FUZZ_EXAMPLES=1000 for a longer run than CI's
FUZZ = settings(
    max_examples=int(os.environ.get("PRM_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@FUZZ
@given(body=bodies)
def test_core_events(probe, body):
    probe.check("POST", "/v1/touchpoints/web/events", body, "touchpoint:web")


@FUZZ
@given(body=bodies)
def test_core_requests(probe, body):
    probe.check("POST", "/v1/touchpoints/web/requests", body, "touchpoint:web")


@FUZZ
@given(body=st.one_of(segment, st.fixed_dictionaries({"batch": st.lists(segment, max_size=3)}), json_values))
def test_segment_batch(probe, body):
    path = "/v1/batch" if isinstance(body, dict) and "batch" in body else "/v1/track"
    probe.check("POST", path, body, "touchpoint:web", basic=True)


@FUZZ
@given(events=st.lists(snowplow, max_size=3), schema=st.sampled_from(["ok", "bad"]))
def test_snowplow(probe, events, schema):
    iglu = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4" if schema == "ok" else "x"
    probe.check("POST", TP2, {"schema": iglu, "data": events}, None)


@FUZZ
@given(body=consent_bodies)
def test_admin_consents(probe, body):
    probe.check("PUT", "/v1/customers/user_id:u-1/consents", body, "admin")


@FUZZ
@given(body=json_values)
def test_admin_patch(probe, body):
    probe.check("PATCH", "/v1/customers/user_id:u-1", body, "admin")


# ---- what no store can keep, anywhere a string or number goes: a 4xx naming the field ----------

# a lone surrogate or a NUL somewhere in otherwise ordinary text
poison_text = st.builds(
    lambda head, bad, tail: head + bad + tail,
    st.text(max_size=6),
    st.one_of(st.characters(categories=["Cs"]), st.just("\x00")),
    st.text(max_size=6),
)
# numbers Python reads as inf, or past its 4,300-digit conversion limit
poison_numbers = st.sampled_from([b"1e400", b"-1E+309", b"12.5e9999", b"1" + b"0" * 4301, b"-" + b"9" * 5000])
core_fields = st.sampled_from(["id", "type", "dialogue", "identities.email", "identities.user_id", "data.note", "data"])


def place(body: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    """``body`` with ``value`` at the dotted ``field`` (``data`` alone: as a key of data)."""
    body = json.loads(json.dumps(body))
    if field == "data":
        body["data"] = {value: 1}
        return body
    *parents, last = field.split(".")
    target = body
    for name in parents:
        target = target.setdefault(name, {})
    target[last] = value
    return body


def raw_with(body: dict[str, Any], field: str, number: bytes) -> bytes:
    return json.dumps(place(body, field, "@@")).encode().replace(b'"@@"', number)


BASE = {"id": "p1", "type": "page", "occurred_at": "2026-11-23T08:00:00Z", "identities": {"user_id": "u-p"}}
TRACK = {"userId": "u-p", "event": "Clicked", "messageId": "m-p", "properties": {"a": 1}}
SP = {"e": "pv", "eid": "sp-p", "aid": "shop", "duid": "dev-p", "url": "https://shop.example.com/"}
PAYLOAD = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"


@FUZZ
@given(field=core_fields, text=poison_text, batch=st.booleans())
def test_core_names_a_surrogate_or_nul_wherever_it_is(probe, field, text, batch):
    body = place(BASE, field, text)
    expected = "data" if field == "data" else field
    if batch:
        body, expected = {"events": [body]}, f"events[0].{expected}"
    probe.refuse("POST", "/v1/touchpoints/web/events", json.dumps(body).encode(), "touchpoint:web", expected)


@FUZZ
@given(field=st.sampled_from(["data.n", "data.list", "identities.x", "n"]), number=poison_numbers)
def test_core_names_a_number_past_a_double_or_too_long(probe, field, number):
    probe.refuse("POST", "/v1/touchpoints/web/requests", raw_with(BASE, field, number), "touchpoint:web", field)


@FUZZ
@given(field=st.sampled_from(["userId", "anonymousId", "messageId", "event", "properties.a", "context.ip"]),
       text=poison_text, number=poison_numbers, as_number=st.booleans())  # fmt: skip
def test_segment_names_what_no_store_keeps(probe, field, text, number, as_number):
    raw = raw_with(TRACK, field, number) if as_number else json.dumps(place(TRACK, field, text)).encode()
    probe.refuse("POST", "/v1/track", raw, "touchpoint:web", field, basic=True)


@FUZZ
@given(field=st.sampled_from(["eid", "duid", "uid", "sid", "url", "se_la"]), text=poison_text)
def test_snowplow_names_what_no_store_keeps(probe, field, text):
    body = {"schema": PAYLOAD, "data": [{**SP, field: text}]}
    probe.refuse("POST", TP2, json.dumps(body).encode(), None, f"data[0].{field}")


@FUZZ
@given(number=poison_numbers, encoded=st.booleans())
def test_snowplow_names_a_number_inside_a_self_describing_event(probe, number, encoded):
    inner = json.dumps({"schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
                        "data": {"schema": "iglu:com.acme/signup/jsonschema/1-0-0", "data": {"n": "@@"}}})  # fmt: skip
    inner = inner.replace('"@@"', number.decode())
    key = "ue_px" if encoded else "ue_pr"
    value = base64.urlsafe_b64encode(inner.encode()).decode().rstrip("=") if encoded else inner
    body = {"schema": PAYLOAD, "data": [{**SP, "e": "ue", key: value}]}
    probe.refuse("POST", TP2, json.dumps(body).encode(), None, f"data[0].{key}.data.data.n")


bad_times = st.one_of(
    st.datetimes(max_value=datetime(1899, 12, 31), timezones=st.just(UTC)).map(lambda d: d.isoformat()),
    st.datetimes(min_value=datetime(2100, 1, 1), timezones=st.just(UTC)).map(lambda d: d.isoformat()),
    st.sampled_from(["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "20261123T080000Z",
                     "2026-W48-1T08:00Z", "2026-11-23T08:00:00"]),
)  # fmt: skip


@FUZZ
@given(when=bad_times, key=st.sampled_from(["occurred_at", "sent_at"]), route=st.sampled_from(["events", "requests"]))
def test_core_names_a_time_out_of_bounds(probe, when, key, route):
    raw = json.dumps({**BASE, key: when}).encode()
    probe.refuse("POST", f"/v1/touchpoints/web/{route}", raw, "touchpoint:web", key)


@FUZZ
@given(when=bad_times, key=st.sampled_from(["timestamp", "sentAt"]))
def test_segment_names_a_time_out_of_bounds(probe, when, key):
    body = {"batch": [{**TRACK, "type": "track", "timestamp": "2026-11-23T08:00:00Z"}]}
    if key == "sentAt":
        body["sentAt"], field = when, "sentAt"
    else:
        body["batch"][0]["timestamp"], field = when, "batch[0].timestamp"
    probe.refuse("POST", "/v1/batch", json.dumps(body).encode(), "touchpoint:web", field, basic=True)


@FUZZ
@given(
    millis=st.one_of(st.integers(-(2**62), -2208988800001), st.integers(int(datetime(2100, 1, 1).timestamp() * 1000))),
    key=st.sampled_from(["ttm", "dtm"]),
)
def test_snowplow_names_a_time_out_of_bounds(probe, millis, key):
    body = {"schema": PAYLOAD, "data": [{**SP, key: str(millis)}]}
    probe.refuse("POST", TP2, json.dumps(body).encode(), None, f"data[0].{key}")


# bodies that are not JSON at all, under any content type: a 4xx, nothing written


routes = st.sampled_from(
    [("POST", "/v1/touchpoints/web/events", "touchpoint:web"),
     ("POST", "/v1/touchpoints/web/requests", "touchpoint:web"), ("POST", "/v1/batch", "segment"), ("POST", TP2, None),
     ("PUT", "/v1/customers/user_id:u-1/consents", "admin"), ("PATCH", "/v1/customers/user_id:u-1", "admin")]
)  # fmt: skip


@FUZZ
@given(raw=NOT_JSON, content_type=CONTENT_TYPES, route=routes)
def test_what_is_not_json_is_a_4xx_whatever_its_content_type(probe, raw, content_type, route):
    method, path, scope = route
    headers = {"Content-Type": content_type} if content_type else {}
    if scope == "segment":
        headers["Authorization"] = "Basic " + base64.b64encode(f"{probe.keys['touchpoint:web']}:".encode()).decode()
    elif scope is not None:
        headers["Authorization"] = f"Bearer {probe.keys[scope]}"

    async def go() -> tuple[int, str]:
        resp = await probe.client.request(method, path, data=raw, headers=headers)
        return resp.status, await resp.text()

    before = probe.counts()
    status, text = probe.loop.run_until_complete(go())
    assert 400 <= status < 500, f"{method} {path} answered {status} to {raw!r} ({content_type}): {text[:300]}"
    assert json.loads(text)["error"]["code"]
    assert probe.counts() == before
