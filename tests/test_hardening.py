"""Bad input gets a 4xx, never a 500; public keys only claim identities; replays redo nothing."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from positions import after, recorded, settled

from prm_core import hookimpl
from prm_core.model import FulfillmentRequest, FulfillmentResult
from prm_core.server.state import HUB
from prm_core.view import encode_cursor

EVENTS = "/v1/touchpoints/web/events"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


EVENT = {"id": "e1", "type": "page", "occurred_at": "2026-11-23T08:00:00Z", "identities": {"email": "ann@example.com"}}


@pytest.mark.parametrize(
    ("path", "status"),
    [("/v1/customers/email:", 422), ("/v1/customers/:abc", 422), ("/v1/customers/shoe:42", 422)],
)
async def test_bad_refs_and_cursors_are_4xx(hub_client, make_key, path, status):
    read = await make_key("read")
    resp = await hub_client.get(path, headers=bearer(read))
    assert resp.status == status
    assert (await resp.json())["error"]["field"] == "ref"


async def test_a_cursor_without_an_offset_is_refused(hub_client, make_key):
    web, read = await make_key("touchpoint:web"), await make_key("read")
    await recorded(hub_client.app[HUB], await (await hub_client.post(EVENTS, json=EVENT, headers=bearer(web))).json())
    naive = base64.urlsafe_b64encode(b"2026-11-23T08:00:00|5").decode().rstrip("=")
    resp = await hub_client.get(f"/v1/customers/email:ann@example.com?cursor={naive}", headers=bearer(read))
    assert resp.status == 422
    from datetime import UTC, datetime

    good = encode_cursor(datetime(2026, 11, 23, 9, tzinfo=UTC), 99)
    assert (
        await hub_client.get(f"/v1/customers/email:ann@example.com?cursor={good}", headers=bearer(read))
    ).status == 200


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"\xff\xfe{}", 400),
        (b'{"id": "x", "type": "p", "occurred_at": "2026-11-23T08:00:00Z", "data": {"n": NaN}}', 400),
        (b'{"id": "x\\u0000", "type": "p", "occurred_at": "2026-11-23T08:00:00Z"}', 422),
        (b'{"id": "x", "type": "p", "occurred_at": "9999-12-30T00:00:00Z", "sent_at": "0001-01-02T00:00:00Z"}', 422),
    ],
)
async def test_unstorable_input_is_refused(hub_client, make_key, body, status):
    web = await make_key("touchpoint:web")
    resp = await hub_client.post("/v1/touchpoints/web/events", data=body, headers=bearer(web))
    assert resp.status == status
    assert "error" in await resp.json()


async def test_a_huge_revenue_is_not_revenue_and_the_view_still_works(hub_client, make_key):
    web, read = await make_key("touchpoint:web"), await make_key("read")
    body = {**EVENT, "data": {"revenue": 1e30}}
    resp = await hub_client.post(EVENTS, json=body, headers=bearer(web))
    assert resp.status == 200
    view = await hub_client.get(f"/v1/customers/email:ann@example.com{after(await resp.json())}", headers=bearer(read))
    assert view.status == 200
    assert (await view.json())["metrics"]["lifetime_revenue"] == "0.00"


async def test_patch_role_is_validated(hub_client, make_key):
    web, admin = await make_key("touchpoint:web"), await make_key("admin")
    await recorded(hub_client.app[HUB], await (await hub_client.post(EVENTS, json=EVENT, headers=bearer(web))).json())
    group = await (await hub_client.post("/v1/customers", json={"kind": "group"}, headers=bearer(admin))).json()
    resp = await hub_client.patch(
        "/v1/customers/email:ann@example.com",
        json={"memberships": {"add": [{"group": group["id"], "role": 7}]}},
        headers=bearer(admin),
    )
    assert resp.status == 422
    assert (await resp.json())["error"]["field"] == "memberships.add[0].role"


async def test_a_public_key_only_claims_identities(hub_client, make_key):
    web, public, read = (
        await make_key("touchpoint:web"),
        await make_key("touchpoint:web", public=True),
        await make_key("read"),
    )
    # the victim, known through a verified source
    await recorded(hub_client.app[HUB], await (await hub_client.post(EVENTS, json=EVENT, headers=bearer(web))).json())
    claim = {
        "id": "attack",
        "type": "service.request",
        "occurred_at": "2026-11-23T08:05:00Z",
        "identities": {"anonymous_id": "attacker", "email": "ann@example.com"},
    }
    answer = await (await hub_client.post("/v1/touchpoints/web/requests", json=claim, headers=bearer(public))).json()
    victim = await (await hub_client.get("/v1/customers/email:ann@example.com", headers=bearer(read))).json()
    assert answer["customer_id"] != victim["id"]
    assert [t["event_id"] for t in victim["timeline"]] == ["e1"]
    visitor = await (await hub_client.get("/v1/customers/anonymous_id:attacker", headers=bearer(read))).json()
    assert visitor["identities"] == [{"namespace": "anonymous_id", "value": "attacker"}]
    request_event = next(t for t in visitor["timeline"] if t["event_id"] == "attack")
    assert request_event["data"]["claimed_identities"] == {"email": "ann@example.com"}


class Booking:
    """Plans one booking per service request and counts the partner calls."""

    __name__ = "booking"

    def __init__(self) -> None:
        self.calls: list[FulfillmentRequest] = []

    @hookimpl
    def prm_plan_fulfillment(self, request):
        yield FulfillmentRequest(id="f-1", partner="acme", action="schedule", customer_id=request.event.customer_id)

    @hookimpl
    def prm_fulfill(self, request):
        self.calls.append(request)

        async def done():
            return FulfillmentResult(request_id=request.id, partner="acme", status="confirmed")

        return done()


@pytest.fixture
def booking():
    return Booking()


@pytest.fixture
def hub_plugins(booking):
    return [booking]


async def test_a_replayed_request_does_not_ask_partners_again(hub_client, make_key, booking):
    web = await make_key("touchpoint:web")
    req = {**EVENT, "id": "r1", "type": "service.request"}
    first = await (await hub_client.post("/v1/touchpoints/web/requests", json=req, headers=bearer(web))).json()
    again = await (await hub_client.post("/v1/touchpoints/web/requests", json=req, headers=bearer(web))).json()
    assert len(booking.calls) == 1
    assert booking.calls[0].idempotency_key  # set by the core, stable per request turn
    assert first["delivery"]["fulfillments"][0]["status"] == "confirmed"
    assert again["customer_id"] == first["customer_id"]


async def test_one_bad_request_does_not_fail_others_sharing_its_commit(hub_client, make_key):
    web = await make_key("touchpoint:web")
    # too long for its column on PostgreSQL, fine on SQLite: either way the good ones pass
    bad = {**EVENT, "id": "b1", "type": "t" * 100, "dialogue": "d" * 200, "data": {"x": 1}}
    goods = [{**EVENT, "id": f"g{i}", "identities": {"email": f"p{i}@example.com"}} for i in range(20)]
    results = await asyncio.gather(
        *(hub_client.post("/v1/touchpoints/web/events", json=g, headers=bearer(web)) for g in goods),
        hub_client.post("/v1/touchpoints/web/events", data=json.dumps(bad), headers=bearer(web)),
    )
    assert [r.status for r in results[:-1]] == [200] * 20


# ---- slow clients ------------------------------------------------------------------------------

BODY_TIMEOUT_S = 0.5
SNOWPLOW = "/com.snowplowanalytics.snowplow/tp2"
# how long a test waits for the hub to close a stalled connection before failing: well past the
# configured deadline, and short of aiohttp's own 10 s wait for the rest of an unread body
CLOSE_GUARD_S = 8.0


async def stalled(
    client, method: str, path: str, headers: dict[str, str], *, sent: bytes = b'{"sche'
) -> tuple[int, bytes]:
    """Send a request whose body stops short of its Content-Length and stalls, over a real
    socket; the status and body of the answer, once the hub has closed the connection."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    lines = [f"{method} {path} HTTP/1.1", "Host: hub.test", f"Content-Length: {len(sent) + 100}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + sent)
    await writer.drain()
    try:
        answer = await asyncio.wait_for(reader.read(-1), CLOSE_GUARD_S)  # until the hub closes
    except TimeoutError:
        pytest.fail(f"{method} {path}: the connection with a stalled body was still open after {CLOSE_GUARD_S} s")
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


class TestSlowClients:
    """A body that stalls is answered 408 and its connection closed within [server] body_timeout_s."""

    @pytest.fixture
    def hub_config(self, database_url):
        from prm_core.config import Config

        raw = {
            "server": {"body_timeout_s": BODY_TIMEOUT_S},
            "touchpoints": {
                "web": {"snowplow_app_ids": ["shop"]},
                "ivr": {"twilio_auth_token": "slow-token"},
                "pos": {"shopify_secret": "slow-secret", "square_signature_key": "slow-key"},
            },
        }
        return Config(database_url=database_url, public_url="http://hub.test", raw=raw)

    async def test_a_stalled_body_on_the_keyless_snowplow_route_is_408_and_closed(self, hub_client):
        status, body = await stalled(hub_client, "POST", "/com.snowplowanalytics.snowplow/tp2", {})
        assert status == 408
        error = json.loads(body)["error"]
        assert error["code"] == "timeout"
        assert "body_timeout_s" in error["message"]

    async def test_every_route_closes_a_stalled_body(self, hub_client, make_key):
        """Every route that takes a body, with a key that may call it: the answer is a 4xx (408
        when the route reads the body) and the connection closes, whatever the route."""
        admin = await make_key("admin")
        routes = {
            (r.method, r.resource.canonical)
            for r in hub_client.app.router.routes()
            if r.method in ("POST", "PUT", "PATCH", "DELETE") and r.resource is not None
        }
        assert ("POST", "/com.snowplowanalytics.snowplow/tp2") in routes

        def concrete(path: str) -> str:
            return re.sub(r"\{[^}]+\}", lambda m: "web" if m.group(0) == "{tp}" else "x", path)

        headers = {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"}
        answers = await asyncio.gather(*(stalled(hub_client, m, concrete(p), headers) for m, p in sorted(routes)))
        got = {f"{m} {p}": status for (m, p), (status, _) in zip(sorted(routes), answers, strict=True)}
        assert all(s < 500 for s in got.values()), got  # and every connection was closed (stalled)
        for reads_its_body in ("POST /v1/touchpoints/{tp}/events", "POST /v1/touchpoints/pos/shopify/orders"):
            assert got[reads_its_body] == 408

    async def test_a_body_sent_in_pieces_within_the_deadline_is_read(self, hub_client):
        event = {"e": "pv", "eid": "slow-1", "aid": "shop", "duid": "d-1", "url": "https://shop.example.com/"}
        body = json.dumps(
            {"schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4", "data": [event]}
        )
        reader, writer = await asyncio.open_connection(hub_client.server.host, hub_client.server.port)
        head = f"POST {SNOWPLOW} HTTP/1.1\r\nHost: hub.test\r\nContent-Length: {len(body)}\r\n\r\n"
        writer.write(head.encode() + body[:10].encode())
        await writer.drain()
        await asyncio.sleep(BODY_TIMEOUT_S / 5)
        writer.write(body[10:].encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), CLOSE_GUARD_S)
        writer.close()
        assert status_line.startswith(b"HTTP/1.1 200")

    @pytest.mark.parametrize("value", [0, -1, "10", True, 86400])
    def test_a_bad_body_timeout_is_a_config_error(self, value):
        from prm_core.config import Config
        from prm_core.errors import ConfigError
        from prm_core.server.app import create_app

        with pytest.raises(ConfigError, match=r"\[server\].body_timeout_s"):
            create_app(Config(raw={"server": {"body_timeout_s": value}}))


# ---- pathological input: every JSON route, every class, a 422 naming the field ----------------

# raw JSON fragments no serializer writes: a number past a double (json.loads makes it inf), an
# integer past Python's 4,300-digit conversion limit, a lone UTF-16 surrogate, a NUL character
NON_FINITE, HUGE_INT = b"1e400", b"1" + b"0" * 5000
SURROGATE, NUL = b'"x\\ud800"', b'"x\\u0000"'
HOSTILE = {"non_finite": NON_FINITE, "negative_non_finite": b"-1e400", "huge_int": HUGE_INT,
           "surrogate": SURROGATE, "low_surrogate": b'"\\udc00x"', "nul": NUL}  # fmt: skip
OCCURRED = b'"occurred_at": "2026-11-23T08:00:00Z"'
CORE_EVENT = b'{"id": "h1", "type": "page", ' + OCCURRED + b', "identities": {"email": "ann@example.com"}, '
SALE = (
    b'{"transaction_type": "sale", "store_id": "S1", "workstation_id": "W1", "sequence_number": 1, '
    b'"business_day": "2026-11-23", ' + OCCURRED + b', "currency": "EUR", "line_items": [{"item_id": "A", '
    b'"description": @@, "quantity": 1, "unit_price": "5.00", "extended_amount": "5.00"}], "tax": "0", '
    b'"total": "5.00", "tenders": [{"type": "cash", "amount": "5.00"}], "customer_ref": {"loyalty_card": "L1"}}'
)
# (method, path, scope, body with @@ where the hostile value goes, the field the answer names)
ROUTES = [
    ("POST", "/v1/touchpoints/web/events", "touchpoint:web", CORE_EVENT + b'"data": {"n": @@}}', "data.n"),
    ("POST", "/v1/touchpoints/web/events", "touchpoint:web",
     b'{"events": [' + CORE_EVENT + b'"data": {"a": [1, @@]}}]}', "events[0].data.a[1]"),
    ("POST", "/v1/touchpoints/web/requests", "touchpoint:web", CORE_EVENT + b'"data": {"n": @@}}', "data.n"),
    ("POST", "/v1/touchpoints/callcenter/events", "touchpoint:callcenter",
     b'{"id": "c1", "type": "call.started", ' + OCCURRED + b', "data": {"call_id": "k", "queue": @@}}', "data.queue"),
    ("POST", "/v1/touchpoints/pos/transactions", "touchpoint:pos", SALE, "line_items[0].description"),
    ("PATCH", "/v1/customers/email:ann@example.com", "admin", b'{"traits": {"nick": @@}}', "traits.nick"),
    ("POST", "/v1/customers", "admin", b'{"kind": "group", "traits": {"name": @@}}', "traits.name"),
    ("PUT", "/v1/identities/email:ann@example.com", "admin", b'{"shared": true, "note": @@}', "note"),
    ("PUT", "/v1/customers/email:ann@example.com/consents", "admin",
     b'{"consents": [{"purpose": "marketing", "channel": "*", "granted": true, "source": @@}]}', "consents[0].source"),
    ("POST", "/v1/track", "segment", b'{"userId": "u1", "event": "Clicked", "properties": {"n": @@}}', "properties.n"),
]  # fmt: skip


async def _row_counts(client) -> dict[str, int]:
    import sqlalchemy as sa

    tables = ("events", "customers", "identities", "dialogues", "consents", "memberships")

    def read(conn):
        return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one() for t in tables}

    await settled(client.app[HUB])  # what was journaled is counted too: a refusal journals nothing
    return await client.app[HUB].store.read(read)


@pytest.fixture
async def route_keys(hub_client, make_key):
    keys = {s: await make_key(s) for s in ("touchpoint:web", "touchpoint:callcenter", "touchpoint:pos", "admin")}
    keys["segment"] = keys["touchpoint:web"]
    resp = await hub_client.post("/v1/touchpoints/web/events", json=EVENT, headers=bearer(keys["touchpoint:web"]))
    assert resp.status == 200
    await recorded(hub_client.app[HUB], await resp.json())
    return keys


def _auth(keys, scope):
    if scope == "segment":  # as the Segment SDKs send the write key: the Basic user name
        return {"Authorization": "Basic " + base64.b64encode(f"{keys[scope]}:".encode()).decode()}
    return bearer(keys[scope])


# one test per route, each class in turn: on PostgreSQL every test pays for a database of its own
@pytest.mark.parametrize(("method", "path", "scope", "body", "field"), ROUTES, ids=[f"{r[0]} {r[1]}" for r in ROUTES])
async def test_unstorable_values_anywhere_are_a_422_naming_the_field(
    hub_client, route_keys, method, path, scope, body, field
):
    before = await _row_counts(hub_client)
    headers = {**_auth(route_keys, scope), "Content-Type": "application/json"}
    for name, value in HOSTILE.items():
        resp = await hub_client.request(method, path, data=body.replace(b"@@", value), headers=headers)
        assert resp.status == 422, f"{name}: {await resp.text()}"
        error = (await resp.json())["error"]
        assert error["field"] == field, name
        assert "ann@example.com" not in error["message"]
        assert await _row_counts(hub_client) == before, name


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"id": "x\\ud800", "type": "page", ' + OCCURRED + b"}", "id"),
        (b'{"id": "x", "type": "\\udfff", ' + OCCURRED + b"}", "type"),
        (b'{"id": "x", "type": "p", ' + OCCURRED + b', "identities": {"email": "a\\ud800@example.com"}}',
         "identities.email"),
        (b'{"id": "x", "type": "p", ' + OCCURRED + b', "data": {"k\\ud800": 1}}', "data"),
        (b'{"id": "x", "type": "p", ' + OCCURRED + b', "dialogue": "\\ud83d"}', "dialogue"),
    ],
)  # fmt: skip
async def test_a_lone_surrogate_in_any_string_is_a_422_naming_the_field(hub_client, make_key, body, field):
    web = await make_key("touchpoint:web")
    resp = await hub_client.post("/v1/touchpoints/web/events", data=body, headers=bearer(web))
    assert resp.status == 422, await resp.text()
    assert (await resp.json())["error"]["field"] == field
    assert await _row_counts(hub_client) == dict.fromkeys(await _row_counts(hub_client), 0)


async def test_an_escaped_surrogate_pair_is_one_character_and_accepted(hub_client, make_key):
    web, read = await make_key("touchpoint:web"), await make_key("read")
    body = CORE_EVENT + b'"data": {"mood": "\\ud83d\\ude00"}}'
    resp = await hub_client.post("/v1/touchpoints/web/events", data=body, headers=bearer(web))
    assert resp.status == 200
    ref = f"/v1/customers/email:ann@example.com{after(await resp.json())}"
    view = await (await hub_client.get(ref, headers=bearer(read))).json()
    assert view["timeline"][0]["data"]["mood"] == "\U0001f600"


BAD_TIMES = [
    "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
    "9999-12-31T23:59:59-01:00",  # after year 9999 in UTC
    "0001-01-02T00:00:00Z",
    "1899-12-31T23:59:59Z",
    "9999-12-30T00:00:00Z",
    "2999-01-01T00:00:00Z",
    "20261123T080000Z",  # ISO 8601 basic format: not RFC 3339
    "2026-W48-1T08:00Z",  # ISO week date
    "2026-327T08:00:00Z",  # ISO ordinal date
    "2026-11-23T08:00Z",  # no seconds
    "2026-11-23T08:00:00",  # no offset
    "2026-11-23",
]


@pytest.mark.parametrize("key", ["occurred_at", "sent_at"])
async def test_a_time_outside_the_window_or_not_rfc3339_is_a_422_naming_it(hub_client, make_key, key):
    web = await make_key("touchpoint:web")
    for when in BAD_TIMES:
        body = {**EVENT, key: when}
        resp = await hub_client.post("/v1/touchpoints/web/events", json=body, headers=bearer(web))
        assert resp.status == 422, f"{when}: {await resp.text()}"
        assert (await resp.json())["error"]["field"] == key
        batch = {"events": [EVENT], key: when} if key == "sent_at" else {"events": [body]}
        resp = await hub_client.post("/v1/touchpoints/web/events", json=batch, headers=bearer(web))
        assert resp.status == 422, f"{when}: {await resp.text()}"
        assert (await resp.json())["error"]["field"] == (key if key == "sent_at" else f"events[0].{key}")
    assert await _row_counts(hub_client) == dict.fromkeys(await _row_counts(hub_client), 0)


async def test_rfc3339_times_inside_the_window_are_accepted(hub_client, make_key):
    web = await make_key("touchpoint:web")
    for i, when in enumerate(["1900-01-01T00:00:00Z", "2026-11-23T08:00:00.123456789Z", "2026-11-23t08:00:00z",
                              "2026-11-23 08:00:00+05:30", "2026-11-23T08:00:00-00:00"]):  # fmt: skip
        body = {**EVENT, "id": f"t{i}", "occurred_at": when}
        resp = await hub_client.post("/v1/touchpoints/web/events", json=body, headers=bearer(web))
        assert resp.status == 200, f"{when}: {await resp.text()}"


async def test_a_skew_correction_landing_outside_the_window_names_sent_at(hub_client, make_key):
    web = await make_key("touchpoint:web")
    # a device clock an hour ahead: the correction moves the event an hour before 1900
    ahead = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {**EVENT, "occurred_at": "1900-01-01T00:00:00Z", "sent_at": ahead}
    resp = await hub_client.post("/v1/touchpoints/web/events", json=body, headers=bearer(web))
    assert resp.status == 422, await resp.text()
    assert (await resp.json())["error"]["field"] == "sent_at"


async def test_an_event_at_the_start_of_the_window_does_not_break_the_next_one(hub_client, make_key):
    web = await make_key("touchpoint:web")
    first = {**EVENT, "occurred_at": "1900-01-01T00:00:00Z"}
    assert (await hub_client.post("/v1/touchpoints/web/events", json=first, headers=bearer(web))).status == 200
    for i in range(2):
        resp = await hub_client.post("/v1/touchpoints/web/events", json={**EVENT, "id": f"n{i}"}, headers=bearer(web))
        assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("depth", [33, 40, 100_000])
@pytest.mark.parametrize(
    ("path", "scope", "body"),
    [
        ("/v1/touchpoints/pos/transactions", "touchpoint:pos", SALE.replace(b"@@", b'"x"')[:-1] + b', "extra": @@}'),
        ("/v1/touchpoints/web/events", "touchpoint:web", CORE_EVENT + b'"data": {"n": @@}}'),
    ],
    ids=["pos", "core"],
)
async def test_nesting_past_the_limit_is_a_422_on_every_route(hub_client, route_keys, path, scope, body, depth):
    value = b"[" * (depth - 1) + b"]" * (depth - 1)  # the body itself is one more level
    before = await _row_counts(hub_client)
    resp = await hub_client.post(path, data=body.replace(b"@@", value), headers=bearer(route_keys[scope]))
    assert resp.status == 422, await resp.text()
    assert (await resp.json())["error"]["code"] == "too_deep"
    assert await _row_counts(hub_client) == before
