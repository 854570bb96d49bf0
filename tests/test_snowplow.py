"""The Snowplow tracker protocol, driven by Snowplow's own Python tracker over loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
import requests
from limits import parse_many
from positions import after, settled
from prm_snowplow import GIF, decode_base64
from snowplow_tracker import Emitter, PageView, SelfDescribing, SelfDescribingJson, StructuredEvent, Subject, Tracker

from prm_core.config import Config
from prm_core.server.state import HUB
from prm_core.testing.conformance import TouchPointConformance

TP2 = "/com.snowplowanalytics.snowplow/tp2"
PAYLOAD = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"
UNSTRUCT = "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0"
CONTEXTS = "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-1"
SIGNUP = "iglu:com.acme/signup/jsonschema/1-0-0"
PRODUCT = "iglu:com.acme/product/jsonschema/1-0-0"
ORIGIN = "https://shop.example.com"


def _config(database_url: str) -> Config:
    return Config(
        database_url=database_url,
        public_url="http://hub.test",
        raw={"touchpoints": {"web": {"snowplow_app_ids": ["shop"]}}},
    )


@pytest.fixture
def hub_config(database_url):
    return _config(database_url)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def b64(value) -> str:
    """base64url without padding, as the JavaScript tracker sends it."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def payload(*events: dict) -> dict:
    return {"schema": PAYLOAD, "data": list(events)}


def sp_event(eid: str, /, **fields) -> dict:
    return {"e": "pv", "eid": eid, "aid": "shop", "duid": "d-raw", "url": "https://shop.example.com/", **fields}


async def stored_count(client) -> int:
    """Events recorded, once the hub has recorded what it accepted (Snowplow's answers carry
    no position)."""
    hub = client.app[HUB]
    await settled(hub)
    return await hub.store.read(lambda conn: conn.exec_driver_sql("SELECT count(*) FROM events").scalar())


@pytest.fixture
async def read_view(hub_client, make_key):
    read = await make_key("read")

    async def get(ref: str) -> dict:
        await settled(hub_client.app[HUB])  # what was sent is recorded: Snowplow's answers carry no position
        resp = await hub_client.get(f"/v1/customers/{ref}", headers=bearer(read))
        assert resp.status == 200, await resp.text()
        return await resp.json()

    return get


def tracker_send(host: str, method: str, encode_base64: bool, key: str) -> list:
    """Track with the Snowplow SDK (sync emitter, a server-side tracker sending a key) and collect its failures."""
    failures: list = []
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    emitter = Emitter(
        host,
        protocol="http",
        session=session,
        method=method,
        batch_size=50,
        on_failure=lambda n, failed: failures.extend(failed),
        custom_retry_codes={code: False for code in range(400, 600)},
    )
    subject = Subject().set_user_id("u-42").set_domain_user_id("d-42").set_domain_session_id("s-1")
    tracker = Tracker("test", emitter, subject=subject, app_id="shop", encode_base64=encode_base64)
    product = SelfDescribingJson(PRODUCT, {"sku": "wm-300"})
    tracker.track(PageView("https://shop.example.com/washers", "Washers", "https://search.example/"))
    tracker.track(StructuredEvent("shop", "add-to-basket", "wm-300", "washer", 2, context=[product]))
    tracker.track(SelfDescribing(SelfDescribingJson(SIGNUP, {"plan": "gold"}), context=[product]))
    # a second session of the same visitor
    second = Subject().set_user_id("u-42").set_domain_user_id("d-42").set_domain_session_id("s-2")
    tracker.track(PageView("https://shop.example.com/dryers", "Dryers", event_subject=second))
    tracker.flush()
    return failures


@pytest.mark.parametrize(
    ("method", "encode_base64"),
    [("post", True), ("post", False), ("get", True), ("get", False)],
    ids=["post-base64", "post-plain", "get-base64", "get-plain"],
)
async def test_tracker_events_land_on_one_customer_one_dialogue_per_session(
    hub_client, make_key, read_view, method, encode_base64
):
    host = str(hub_client.make_url("")).rstrip("/")
    key = await make_key("touchpoint:web")
    failures = await asyncio.to_thread(tracker_send, host, method, encode_base64, key)
    assert failures == []
    customer = await read_view("user_id:u-42")
    assert {(i["namespace"], i["value"]) for i in customer["identities"]} == {
        ("user_id", "u-42"),
        ("anonymous_id", "d-42"),
    }
    timeline = {t["type"]: t for t in customer["timeline"]}
    assert sorted(t["type"] for t in customer["timeline"]) == ["add-to-basket", "page_view", "page_view", "signup"]
    page = next(t for t in customer["timeline"] if t["data"].get("page") == "Washers")
    assert page["data"]["source"] == "snowplow"
    assert page["data"]["app_id"] == "shop"
    assert page["data"]["url"] == "https://shop.example.com/washers"
    assert page["data"]["referrer"] == "https://search.example/"
    se = timeline["add-to-basket"]["data"]
    assert (se["category"], se["action"], se["label"], se["property"], se["value"]) == (
        "shop",
        "add-to-basket",
        "wm-300",
        "washer",
        2,
    )
    assert se["contexts"] == [{"schema": PRODUCT, "data": {"sku": "wm-300"}}]
    ue = timeline["signup"]["data"]
    assert ue["schema"] == SIGNUP
    assert ue["properties"] == {"plan": "gold"}
    assert ue["contexts"] == [{"schema": PRODUCT, "data": {"sku": "wm-300"}}]
    # one dialogue per Snowplow session, keyed by the session id
    refs = {d["id"]: d["ref"] for d in customer["dialogues"]}
    assert sorted(refs.values()) == ["s-1", "s-2"]
    by_session: dict[str, set[str]] = {}
    for t in customer["timeline"]:
        by_session.setdefault(refs[t["dialogue"]], set()).add(t["type"])
    assert by_session == {"s-1": {"page_view", "add-to-basket", "signup"}, "s-2": {"page_view"}}


async def test_get_answers_a_transparent_gif(hub_client):
    resp = await hub_client.get("/i", params=sp_event("g-1"))
    assert resp.status == 200
    assert resp.content_type == "image/gif"
    assert await resp.read() == GIF
    assert GIF.startswith(b"GIF89a")


async def test_post_answers_ok(hub_client):
    resp = await hub_client.post(TP2, json=payload(sp_event("p-1")))
    assert resp.status == 200
    assert await resp.text() == "ok"


@pytest.mark.parametrize(
    "events",
    [
        [sp_event("x-1", aid="not-listed")],
        [{k: v for k, v in sp_event("x-1").items() if k != "aid"}],
        [sp_event("x-1"), sp_event("x-2", aid="not-listed")],
        [sp_event("x-1", aid="")],
    ],
    ids=["unlisted", "missing", "one-bad-in-a-batch", "empty"],
)
async def test_an_unlisted_app_id_is_refused_and_nothing_written(hub_client, events):
    resp = await hub_client.post(TP2, json=payload(*events), headers={"Origin": ORIGIN})
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "unauthorized"
    # the browser may read the refusal
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    pixel = await hub_client.get("/i", params=events[-1])
    assert pixel.status == 401
    assert (await pixel.json())["error"]["code"] == "unauthorized"
    assert await stored_count(hub_client) == 0


async def test_no_app_id_configured_refuses_everything(aiohttp_client, database_url):
    from prm_core.server.app import create_app

    client = await aiohttp_client(create_app(Config(database_url=database_url)))
    resp = await client.post(TP2, json=payload(sp_event("n-1")))
    assert resp.status == 401
    assert await stored_count(client) == 0


async def test_preflight_and_cors_headers_echo_the_origin(hub_client):
    pre = await hub_client.options(
        TP2,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert pre.status in (200, 204)
    assert pre.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert pre.headers["Access-Control-Allow-Credentials"] == "true"
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    assert "content-type" in pre.headers["Access-Control-Allow-Headers"].lower()
    assert "Origin" in pre.headers["Vary"]
    for resp in (
        await hub_client.post(TP2, json=payload(sp_event("c-1")), headers={"Origin": ORIGIN}),
        await hub_client.get("/i", params=sp_event("c-2"), headers={"Origin": ORIGIN}),
        await hub_client.post(TP2, data=b"{oops", headers={"Origin": ORIGIN}),
    ):
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert resp.headers["Access-Control-Allow-Origin"] != "*"
        assert resp.headers["Access-Control-Allow-Credentials"] == "true"
        assert "Origin" in resp.headers["Vary"]
    # no Origin (a server-side tracker): nothing to echo
    plain = await hub_client.post(TP2, json=payload(sp_event("c-3")))
    assert "Access-Control-Allow-Origin" not in plain.headers


async def test_allowed_origins_limit_which_pages_may_send(aiohttp_client, database_url):
    from prm_core.server.app import create_app

    web_settings = {"snowplow_app_ids": ["shop"], "allowed_origins": [ORIGIN]}
    config = Config(database_url=database_url, raw={"touchpoints": {"web": web_settings}})
    client = await aiohttp_client(create_app(config))
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    granted = await client.options(TP2, headers={"Origin": ORIGIN, **preflight})
    assert granted.headers["Access-Control-Allow-Origin"] == ORIGIN
    other = "https://evil.example.net"
    refused = await client.options(TP2, headers={"Origin": other, **preflight})
    assert "Access-Control-Allow-Origin" not in refused.headers
    assert "Access-Control-Allow-Methods" not in refused.headers
    # sent anyway (no-cors): refused, nothing written
    resp = await client.post(TP2, json=payload(sp_event("o-1")), headers={"Origin": other})
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "origin_not_allowed"
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert await stored_count(client) == 0
    ok = await client.post(TP2, json=payload(sp_event("o-2")), headers={"Origin": ORIGIN})
    assert ok.status == 200
    assert await stored_count(client) == 1


async def test_base64_ue_px_and_plain_ue_pr_and_contexts(hub_client, read_view):
    unstruct = {"schema": UNSTRUCT, "data": {"schema": SIGNUP, "data": {"plan": "platinum", "note": "ü?>"}}}
    contexts = {"schema": CONTEXTS, "data": [{"schema": PRODUCT, "data": {"sku": "dr-100"}}]}
    encoded = b64(unstruct)
    assert not encoded.endswith("=")
    events = [
        sp_event("u-1", e="ue", duid="d-ue", ue_px=encoded, cx=b64(contexts)),
        sp_event("u-2", e="ue", duid="d-ue", ue_pr=json.dumps(unstruct), co=json.dumps(contexts)),
        # the standard alphabet, padded, is accepted too
        sp_event("u-3", e="ue", duid="d-ue", ue_px=base64.b64encode(json.dumps(unstruct).encode()).decode()),
    ]
    resp = await hub_client.post(TP2, json=payload(*events))
    assert resp.status == 200, await resp.text()
    customer = await read_view("anonymous_id:d-ue")
    by_id = {t["event_id"]: t for t in customer["timeline"]}
    assert set(by_id) == {"u-1", "u-2", "u-3"}
    for eid in ("u-1", "u-2", "u-3"):
        assert by_id[eid]["type"] == "signup"
        assert by_id[eid]["data"]["properties"] == {"plan": "platinum", "note": "ü?>"}
        assert by_id[eid]["data"]["schema"] == SIGNUP
    for eid in ("u-1", "u-2"):
        assert by_id[eid]["data"]["contexts"] == [{"schema": PRODUCT, "data": {"sku": "dr-100"}}]


def test_decode_base64_variants():
    raw = b"\xfb\xff\xfe" + json.dumps({"a": "b?"}).encode()
    for text in (
        base64.urlsafe_b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        base64.b64encode(raw).decode(),
        base64.b64encode(raw).decode().replace("+", " "),
    ):
        assert decode_base64(text) == raw
    with pytest.raises(ValueError):
        decode_base64("!!not base64!!")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", None),
        (b"[1, 2, 3]", None),
        (json.dumps({"schema": "iglu:com.acme/other/jsonschema/1-0-0", "data": []}).encode(), "schema"),
        (json.dumps({"schema": PAYLOAD, "data": {"e": "pv"}}).encode(), "data"),
        (json.dumps(payload("pv")).encode(), "data[0]"),
        (json.dumps(payload({k: v for k, v in sp_event("m").items() if k != "eid"})).encode(), "data[0].eid"),
        (json.dumps(payload(sp_event("m-1"), sp_event("m-2", eid=""))).encode(), "data[1].eid"),
        (json.dumps(payload({k: v for k, v in sp_event("m").items() if k != "e"})).encode(), "data[0].e"),
        (json.dumps(payload(sp_event("m", e="zz"))).encode(), "data[0].e"),
        (json.dumps(payload(sp_event("m", e="ue"))).encode(), "data[0].ue_pr"),
        (json.dumps(payload(sp_event("m", e="ue", ue_px="!!!"))).encode(), "data[0].ue_px"),
        (json.dumps(payload(sp_event("m", e="ue", ue_px=b64("x")[:-1] + "%"))).encode(), "data[0].ue_px"),
        (
            json.dumps(payload(sp_event("m", e="ue", ue_px=base64.urlsafe_b64encode(b"{nope").decode()))).encode(),
            "data[0].ue_px",
        ),
        (json.dumps(payload(sp_event("m", e="ue", ue_pr="{nope"))).encode(), "data[0].ue_pr"),
        (json.dumps(payload(sp_event("m", e="ue", ue_pr=json.dumps({"data": {}})))).encode(), "data[0].ue_pr"),
        (
            json.dumps(
                payload(sp_event("m", e="ue", ue_pr=json.dumps({"schema": UNSTRUCT, "data": {"x": 1}})))
            ).encode(),
            "data[0].ue_pr.data",
        ),
        (json.dumps(payload(sp_event("m", cx="***"))).encode(), "data[0].cx"),
        (json.dumps(payload(sp_event("m", co=json.dumps({"schema": CONTEXTS, "data": {}})))).encode(), "data[0].co"),
        (json.dumps(payload(sp_event("m", e="se", se_ca="shop"))).encode(), "data[0].se_ac"),
        (json.dumps(payload(sp_event("m", e="se", se_ca="shop", se_ac="buy", se_va="lots"))).encode(), "data[0].se_va"),
        (json.dumps(payload(sp_event("m", dtm="yesterday"))).encode(), "data[0].dtm"),
        (json.dumps(payload(sp_event("m", dtm="1e30"))).encode(), "data[0].dtm"),
        (json.dumps(payload(sp_event("m", eid="x" * 201))).encode(), "data[0].eid"),
        (json.dumps(payload(sp_event("m", duid=None))).encode(), "data[0].duid"),
        (json.dumps(payload(sp_event("m", uid={"a": 1}))).encode(), "data[0].uid"),
    ],
)
async def test_malformed_input_is_a_400_naming_the_field(hub_client, body, field):
    resp = await hub_client.post(TP2, data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 400, await resp.text()
    error = (await resp.json())["error"]
    assert error.get("field") == field
    assert await stored_count(hub_client) == 0


async def test_malformed_get_names_the_field(hub_client):
    params = {k: v for k, v in sp_event("m").items() if k != "eid"}
    resp = await hub_client.get("/i", params=params)
    assert resp.status == 400
    assert (await resp.json())["error"]["field"] == "eid"
    resp = await hub_client.get("/i", params=sp_event("m", e="ue", ue_px="!!!"))
    assert resp.status == 400
    assert (await resp.json())["error"]["field"] == "ue_px"
    assert await stored_count(hub_client) == 0


async def test_a_body_over_the_limit_is_413(hub_client):
    body = json.dumps(payload(sp_event("big", page="x" * (1024 * 1024)))).encode()
    resp = await hub_client.post(TP2, data=body, headers={"Origin": ORIGIN})
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "too_large"
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert await stored_count(hub_client) == 0


async def test_duplicates_by_event_id_are_stored_once(hub_client, read_view):
    body = payload(sp_event("d-1", duid="d-dup"), sp_event("d-1", duid="d-dup"))
    for _ in range(2):
        assert (await hub_client.post(TP2, json=body)).status == 200
    assert (await hub_client.get("/i", params=sp_event("d-1", duid="d-dup"))).status == 200
    assert await stored_count(hub_client) == 1
    assert [t["event_id"] for t in (await read_view("anonymous_id:d-dup"))["timeline"]] == ["d-1"]


async def test_device_time_is_corrected_for_clock_skew(hub_client, read_view):
    now = datetime.now(UTC)
    skewed = now - timedelta(hours=2)  # the device's clock is two hours slow

    def ms(at: datetime) -> str:
        return str(int(at.timestamp() * 1000))

    events = [
        sp_event("t-1", duid="d-time", dtm=ms(skewed - timedelta(seconds=30)), stm=ms(skewed)),
        # no stm: the device's time as it is
        sp_event("t-2", duid="d-time", dtm=ms(skewed)),
        # a true timestamp wins over the device's
        sp_event("t-3", duid="d-time", dtm=ms(skewed), stm=ms(skewed), ttm=ms(now - timedelta(days=1))),
        # nothing: when it was received
        sp_event("t-4", duid="d-time"),
    ]
    assert (await hub_client.post(TP2, json=payload(*events))).status == 200
    times = {
        t["event_id"]: datetime.fromisoformat(t["occurred_at"])
        for t in (await read_view("anonymous_id:d-time"))["timeline"]
    }
    assert abs((times["t-1"] - (now - timedelta(seconds=30))).total_seconds()) < 10
    assert abs((times["t-2"] - skewed).total_seconds()) < 1
    assert abs((times["t-3"] - (now - timedelta(days=1))).total_seconds()) < 1
    assert abs((times["t-4"] - now).total_seconds()) < 10


async def test_page_pings_transactions_and_network_user_id(hub_client, read_view):
    events = [
        sp_event("k-1", e="pp", duid=None, nuid="n-1", pp_mix="0", pp_max="10", pp_miy="5", pp_may="900"),
        sp_event("k-2", e="tr", duid=None, nuid="n-1", tr_id="o-1", tr_tt="129.50", tr_cu="EUR"),
        sp_event("k-3", e="ti", duid=None, nuid="n-1", ti_id="o-1", ti_sk="wm-300", ti_pr="129.50", ti_qu="1"),
    ]
    assert (await hub_client.post(TP2, json=payload(*events))).status == 200
    customer = await read_view("anonymous_id:n-1")
    by_id = {t["event_id"]: t for t in customer["timeline"]}
    assert by_id["k-1"]["type"] == "page_ping"
    assert by_id["k-1"]["data"]["scroll"] == {"x_min": 0, "x_max": 10, "y_min": 5, "y_max": 900}
    assert by_id["k-2"]["type"] == "transaction"
    assert by_id["k-3"]["type"] == "transaction_item"
    assert customer["metrics"]["lifetime_revenue"] == "129.50"


async def test_a_session_id_alone_joins_its_dialogue(hub_client, read_view):
    first = sp_event("s-1", duid="d-sess", sid="sess-9")
    later = {k: v for k, v in sp_event("s-2", sid="sess-9").items() if k != "duid"}
    assert (await hub_client.post(TP2, json=payload(first))).status == 200
    assert (await hub_client.post(TP2, json=payload(later))).status == 200
    customer = await read_view("anonymous_id:d-sess")
    assert {t["event_id"] for t in customer["timeline"]} == {"s-1", "s-2"}
    assert len({t["dialogue"] for t in customer["timeline"]}) == 1


async def test_payloads_stay_out_of_the_logs(hub_client, log_capture):
    secret = "ann.secret@example.com"
    event = sp_event("l-1", uid=secret, e="ue", ue_pr=json.dumps({"schema": UNSTRUCT, "data": {"x": 1}}))
    await hub_client.post(TP2, json=payload(event))
    await hub_client.post(TP2, json=payload(sp_event("l-2", uid=secret, aid="nope")))
    await hub_client.get("/i", params=sp_event("l-3", uid=secret))
    assert log_capture.text
    assert secret not in log_capture.text
    assert "ann.secret" not in log_capture.text


class TestConformance(TouchPointConformance):
    """The web touch point through its Snowplow adapter."""

    touchpoint = "web"

    @pytest.fixture
    def hub_config(self, database_url):
        return _config(database_url)

    @staticmethod
    def _event(e: dict, aid: str | None) -> dict:
        at = datetime.fromisoformat(e["occurred_at"])
        event = {
            "e": "ue",
            "eid": e["id"],
            "uid": e["identities"]["email"],
            "dtm": str(int(at.timestamp() * 1000)),
            "stm": str(int(time.time() * 1000)),
            "ue_px": b64(
                {
                    "schema": UNSTRUCT,
                    "data": {"schema": f"iglu:com.acme/{e['type']}/jsonschema/1-0-0", "data": e.get("data", {})},
                }
            ),
        }
        if aid is not None:
            event["aid"] = aid
        return event

    async def send_events(self, client, key, batch):
        # trackers carry no secret: "credentials" are a listed app id (and a server-side tracker's key)
        events = payload(*(self._event(e, "shop" if key else None) for e in batch))
        return await client.post(TP2, json=events, headers=bearer(key) if key else {})

    async def send_raw(self, client, key, body):
        return await client.post(TP2, data=body, headers={"Content-Type": "application/json"})

    async def forge(self, client, batch):
        return await client.post(TP2, json=payload(*(self._event(e, "not-listed") for e in batch)))


async def test_without_a_key_the_user_id_is_only_a_claim(hub_client, make_key, read_view):
    """Anyone can read an app id in a page: a browser tracker's uid must not reach someone's profile."""
    browser = sp_event("b-1", uid="u-victim", duid="d-browser", sid="s-b")
    assert (await hub_client.post(TP2, json=payload(browser))).status == 200
    public = await make_key("touchpoint:web", public=True)
    event = sp_event("b-2", uid="u-victim", duid="d-browser", sid="s-b")
    assert (await hub_client.post(TP2, json=payload(event), headers=bearer(public))).status == 200
    customer = await read_view("anonymous_id:d-browser")
    assert {(i["namespace"], i["value"]) for i in customer["identities"]} == {("anonymous_id", "d-browser")}
    for t in customer["timeline"]:
        assert t["data"]["claimed_identities"] == {"user_id": "u-victim"}
    read = await make_key("read")
    assert (await hub_client.get("/v1/customers/user_id:u-victim", headers=bearer(read))).status == 404
    # a server-side tracker's key vouches for its uid
    server = await make_key("touchpoint:web")
    event = sp_event("b-3", uid="u-server", duid="d-server")
    assert (await hub_client.post(TP2, json=payload(event), headers=bearer(server))).status == 200
    assert {i["value"] for i in (await read_view("user_id:u-server"))["identities"]} == {"u-server", "d-server"}


async def test_a_bad_key_is_refused(hub_client, make_key):
    pos = await make_key("touchpoint:pos")
    assert (await hub_client.post(TP2, json=payload(sp_event("k-1")), headers=bearer(pos))).status == 403
    forged = await hub_client.get("/i", params=sp_event("k-2"), headers=bearer("prm_nope_" + "x" * 40))
    assert forged.status == 401
    assert await stored_count(hub_client) == 0


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b'{"schema": "%s", "data": [{"e": "pv", "eid": "n", "aid": "shop", "duid": "d", "se_va": NaN}]}', 400, None),
        (json.dumps(payload(sp_event("n", page="a\x00b"))).encode(), 422, "data[0].page"),
        (json.dumps(payload(sp_event("n", e="ue", ue_pr='{"schema": "iglu:a/b/c/1", "data": NaN}'))).encode(), 400,
         "data[0].ue_pr"),
        (json.dumps(payload(sp_event("n", e="ue", ue_px=b64({"schema": UNSTRUCT, "data": {"schema": SIGNUP,
         "data": {"x": "a\x00"}}})))).encode(), 422, "data[0].ue_px.data.data.x"),
        # a number past a double: json.loads reads it as inf, which SQLite would store as Infinity
        (json.dumps(payload(sp_event("n", e="ue", ue_pr=json.dumps({"schema": UNSTRUCT, "data": {"schema": SIGNUP,
         "data": {"n": 1}}}).replace("1}", "1e400}")))).encode(), 422, "data[0].ue_pr.data.data.n"),
        (json.dumps(payload(sp_event("n", e="ue", ue_px=base64.urlsafe_b64encode(json.dumps({"schema": UNSTRUCT,
         "data": {"schema": SIGNUP, "data": {"n": 1}}}).replace("1}", "1" * 5000 + "}").encode()).decode()))).encode(),
         422, "data[0].ue_px.data.data.n"),
        (json.dumps(payload(sp_event("n", e="ue", ue_pr='{"schema": "iglu:a/b/c/1", "data": {"k": "\\ud800"}}'))
         ).encode(), 422, "data[0].ue_pr.data.k"),
        (b'{"schema": "%s", "data": [{"e": "pv", "eid": "\\udc00", "aid": "shop", "duid": "d"}]}', 422,
         "data[0].eid"),
        (b'{"schema": "%s", "data": [{"e": "pv", "eid": "n", "aid": "shop", "duid": "d\\ud800"}]}', 422,
         "data[0].duid"),
    ],
)  # fmt: skip
async def test_what_the_store_cannot_keep_is_refused(hub_client, body, status, field):
    resp = await hub_client.post(TP2, data=body.replace(b"%s", PAYLOAD.encode()))
    assert resp.status == status, await resp.text()
    assert (await resp.json())["error"].get("field") == field
    nul = await hub_client.get("/i", params=sp_event("n", page="a\x00b"))
    assert nul.status == 400
    assert (await nul.json())["error"]["field"] == "page"
    assert await stored_count(hub_client) == 0


class TestKeylessRateLimit:
    """Trackers carry no secret: keyless calls are counted per client address, both routes together."""

    @pytest.fixture
    def hub_config(self, database_url):
        config = _config(database_url)
        return Config(
            database_url=config.database_url,
            public_url=config.public_url,
            raw={**config.raw, "server": {"rate_limit_keyless": "3/minute", "rate_limit": "off"}},
        )

    async def test_a_flood_of_keyless_calls_gets_429_with_retry_after_and_cors(self, hub_client, make_key):
        statuses = []
        for n in range(2):
            statuses.append((await hub_client.post(TP2, json=payload(sp_event(f"f-{n}")))).status)
        statuses.append((await hub_client.get("/i", params=sp_event("f-2"))).status)
        before = await stored_count(hub_client)
        flood = [
            await hub_client.post(TP2, json=payload(sp_event("f-3")), headers={"Origin": ORIGIN}),
            await hub_client.get("/i", params=sp_event("f-4"), headers={"Origin": ORIGIN}),
        ]
        assert statuses == [200, 200, 200]
        for resp in flood:
            assert resp.status == 429
            assert (await resp.json())["error"]["code"] == "rate_limited"
            assert 1 <= int(resp.headers["Retry-After"]) <= 60
            assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN  # a browser tracker can read it
        assert await stored_count(hub_client) == before
        # a server-side tracker with its key is counted against its key, not the address
        key = await make_key("touchpoint:web")
        resp = await hub_client.post(TP2, json=payload(sp_event("f-5")), headers=bearer(key))
        assert resp.status == 200

    def test_the_default_limits_keyless_calls_and_off_turns_it_off(self):
        from prm_core.server.app import create_app
        from prm_core.server.ratelimit import DEFAULT_KEYLESS_RATE_LIMIT, RATE_LIMITS

        assert RATE_LIMITS in create_app(Config(raw={"server": {"rate_limit_public": "off"}}))
        limits = create_app(Config())[RATE_LIMITS]
        assert [str(item) for item in limits.keyless] == [str(i) for i in parse_many(DEFAULT_KEYLESS_RATE_LIMIT)]
        off = {"server": {"rate_limit_public": "off", "rate_limit_keyless": "off"}}
        assert RATE_LIMITS not in create_app(Config(raw=off))


async def test_a_tracker_cannot_plant_a_value_that_blocks_every_erasure(hub_client, make_key):
    """``1e400`` reads as inf, which SQLite stored as ``Infinity`` and its JSON functions then
    refused, failing the erasure of every customer: refused at the door, erasure goes on."""
    web, admin = await make_key("touchpoint:web"), await make_key("admin")
    planted = json.dumps({"schema": UNSTRUCT, "data": {"schema": SIGNUP, "data": {"n": 1}}}).replace("1}", "1e400}")
    resp = await hub_client.post(
        TP2, json=payload(sp_event("plant", e="ue", ue_pr=planted)), headers={"Origin": ORIGIN}
    )
    assert resp.status == 422, await resp.text()
    assert (await resp.json())["error"]["field"] == "data[0].ue_pr.data.data.n"
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN  # a browser tracker reads why
    assert await stored_count(hub_client) == 0
    ann = {
        "id": "a1",
        "type": "page",
        "occurred_at": "2026-11-23T08:00:00Z",
        "identities": {"email": "ann@example.com"},
    }
    resp = await hub_client.post("/v1/touchpoints/web/events", json=ann, headers=bearer(web))
    assert resp.status == 200
    seen = await hub_client.get(f"/v1/customers/email:ann@example.com{after(await resp.json())}", headers=bearer(admin))
    assert seen.status == 200  # recorded: the erasure finds her
    erased = await hub_client.delete("/v1/customers/email:ann@example.com", headers=bearer(admin))
    assert erased.status == 200, await erased.text()
