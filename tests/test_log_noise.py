"""What the logs say about callers who leave, flood, or send odd headers: a client closing a
stream is a normal end (not an "unhandled error"), a flood of 429s is counted and logged a
line per key per interval (not a line each), and header text from a caller is not logged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from browsing import eventually
from prm_partner.push import sessions
from twilio.request_validator import RequestValidator

from prm_core import hookimpl
from prm_core.config import Config
from prm_core.errors import ConfigError
from prm_core.keys import create_key
from prm_core.model import TouchPoint
from prm_core.outbox import Fulfillment
from prm_core.server.app import create_app
from prm_core.server.auth import require
from prm_core.server.ratelimit import RefusalLog
from prm_core.server.state import HUB, HUB_METRICS

TOKEN = "twilio-auth-token-for-tests"
PUBLIC = "https://hub.example.com"


class Ticker:
    """A plugin's own stream that writes until its client goes, without catching that."""

    def __init__(self) -> None:
        self.ended = asyncio.Event()

    @hookimpl
    def prm_touchpoints(self, config: Config) -> Iterator[TouchPoint]:
        async def ticks(request: web.Request) -> web.StreamResponse:
            await require(request, "touchpoint:ticker")
            try:
                response = web.StreamResponse()
                await response.prepare(request)
                while True:
                    await response.write(b"tick\n")
                    await asyncio.sleep(0.02)
            finally:
                self.ended.set()

        yield TouchPoint(name="ticker", channel="other", budget_ms=100, routes=[web.get("/v1/ticks", ticks)])


@pytest.fixture
def ticker() -> Ticker:
    return Ticker()


@pytest.fixture
def hub_plugins(ticker: Ticker) -> list[Any]:
    return [ticker]


@pytest.fixture
def hub_config(database_url: str) -> Config:
    partner = {
        "role": "field_service",
        "protocol": "tmf646",
        "url": "http://127.0.0.1:9/never-called",
        "secret": "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=",
    }
    raw = {
        "partners": {"fieldservice": partner},
        "server": {"rate_limit": "3/minute", "rate_limit_log_s": 3600},
        "touchpoints": {"ivr": {"twilio_auth_token": TOKEN}},
    }
    return Config(database_url=database_url, public_url=PUBLIC, raw=raw)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def served(hub_config: Config, hub_plugins: list[Any]) -> AsyncIterator[tuple[web.Application, str]]:
    """The hub served as ``prm serve`` serves it: a handler goes on when its client leaves
    (aiohttp's test server cancels it instead, which would hide what the client's leaving does)."""
    app = create_app(hub_config, plugins=hub_plugins)
    runner = web.AppRunner(app, handler_cancellation=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield app, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def key_for(app: web.Application, scope: str) -> str:
    key, _ = await create_key(app[HUB].store, scope)
    return key


def problems(log_capture: Any, caplog: Any) -> list[str]:
    entries = [e for e in log_capture.entries if e.get("level") in ("error", "critical")]
    records = [r.getMessage() for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    return [str(e) for e in entries] + records


async def test_a_client_leaving_the_fulfillments_stream_is_a_normal_close(served, log_capture, caplog):
    app, url = served
    key = await key_for(app, "touchpoint:web")
    page = {"id": "p1", "type": "page", "occurred_at": "2026-11-23T09:00:00Z", "identities": {"anonymous_id": "d"}}
    async with aiohttp.ClientSession() as client:
        answer = await client.post(f"{url}/v1/touchpoints/web/requests", json=page, headers=bearer(key))
        body = await answer.json()
        dialogue, customer = body["dialogue_id"], body["customer_id"]
        resp = await client.get(f"{url}/v1/touchpoints/web/dialogues/{dialogue}/fulfillments", headers=bearer(key))
        assert resp.status == 200
        await eventually(lambda: _true(dialogue in sessions.open), "the stream to open")
        resp.close()  # the browser tab goes away
    now = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
    news = Fulfillment(
        id="ful-1", partner="fieldservice", role="field_service", action="schedule", status="confirmed",
        customer_id=customer, dialogue_id=dialogue, touchpoint="web", requested_at=now, updated_at=now,
    )  # fmt: skip

    async def stream_ended() -> bool:
        sessions.push(news)  # something to write to the gone client
        return dialogue not in sessions.open

    await eventually(stream_ended, "the stream's handler to end")
    assert problems(log_capture, caplog) == []
    assert "unhandled error" not in log_capture.text


async def test_a_client_leaving_any_stream_is_not_an_error(served, ticker, log_capture, caplog):
    app, url = served
    key = await key_for(app, "touchpoint:ticker")
    async with aiohttp.ClientSession() as client:
        resp = await client.get(f"{url}/v1/ticks", headers=bearer(key))
        assert resp.status == 200 and (await resp.content.readline()) == b"tick\n"
        resp.close()
    await asyncio.wait_for(ticker.ended.wait(), 10)

    async def logged() -> bool:
        return "client closed the connection" in log_capture.text

    await eventually(logged, "the handler's end to be logged")
    assert problems(log_capture, caplog) == []
    assert "unhandled error" not in log_capture.text


async def _true(value: bool) -> bool:
    return value


async def test_a_flood_of_429s_is_counted_and_logged_once_per_key(hub_client, make_key, log_capture):
    flooding, other = await make_key("read"), await make_key("read")
    statuses = [(await hub_client.get("/v1/touchpoints", headers=bearer(flooding))).status for _ in range(40)]
    assert statuses.count(200) == 3 and statuses.count(429) == 37
    assert (await hub_client.get("/v1/touchpoints", headers=bearer(other))).status == 200
    access = [e for e in log_capture.entries if e["event"] == "http" and e["route"] == "/v1/touchpoints"]
    assert [e["status"] for e in access] == [200, 200, 200, 200]  # no access line per 429
    (line,) = [e for e in log_capture.entries if e["event"] == "rate limited"]
    assert line["key_id"] == flooding.split("_")[1] and line["refused"] == 1
    counted = hub_client.app[HUB_METRICS].rate_limited.labels("/v1/touchpoints")._value.get()
    assert counted == 37


async def test_the_twilio_signature_settings_header_is_not_logged(hub_client, log_capture, caplog):
    params = {"CallSid": "CA1", "From": "+14155550100"}
    injected = "key=k1,algorithm=HMAC_MD5\r\nlevel=critical event=FORGED-LOG-LINE " + "x" * 500
    signature = RequestValidator(TOKEN).compute_signature(PUBLIC + "/v1/touchpoints/ivr/twilio/voice", params)
    headers = {"X-Twilio-Signature": signature, "X-Twilio-Webhooks-Signature-Settings": injected.replace("\r\n", " ")}
    resp = await hub_client.post("/v1/touchpoints/ivr/twilio/voice", data=params, headers=headers)
    assert resp.status == 401
    error = (await resp.json())["error"]
    assert error["field"] == "X-Twilio-Webhooks-Signature-Settings" and "FORGED" not in error["message"]
    logged = log_capture.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "FORGED-LOG-LINE" not in logged and "HMAC_MD5" not in logged


@pytest.mark.parametrize("value", ["soon", -1, True])
def test_a_bad_rate_limit_log_interval_is_a_config_error(value):
    with pytest.raises(ConfigError, match=r"\[server\]\.rate_limit_log_s"):
        RefusalLog.from_config(Config(raw={"server": {"rate_limit_log_s": value}}))
