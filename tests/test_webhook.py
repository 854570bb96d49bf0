"""The webhook destination's sink on its own: what it sends (verified here with
standardwebhooks, as a receiver would), which answers deliver a batch, refuse it or have it
retried, the limits of its settings, and its one kept-alive connection."""

from __future__ import annotations

import asyncio
import gc
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from polling import until
from standardwebhooks import Webhook

from prm_core.config import Config
from prm_core.errors import ConfigError
from prm_core.feed import Change, Refused
from prm_core.feed.destinations import DestinationSettings
from prm_core.feed.webhook import DeliveryFailed, WebhookSink

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
AT = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)


def batch(*seqs: int) -> list[Change]:
    return [Change(seq, "customer.updated", AT, f"cus_{seq}", {"tier": "gold"}) for seq in seqs]


class Receiver:
    """Verifies every delivery with standardwebhooks and answers ``status``; ``hang`` holds
    the answer back, ``drop`` closes the connection instead, ``reply`` is the answer's body."""

    def __init__(self) -> None:
        self.status = 204
        self.hang = False
        self.drop = False
        self.reply = b""
        self.deliveries: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.connections: list[asyncio.BaseTransport] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.text()
        payload = Webhook(SECRET).verify(body, dict(request.headers))  # raises on a bad signature
        self.deliveries.append((dict(request.headers), payload))
        assert request.transport is not None
        self.connections.append(request.transport)
        if self.drop:
            request.transport.close()
        if self.hang:
            await asyncio.sleep(30)
        return web.Response(status=self.status, body=self.reply)


@pytest.fixture
async def receiver(aiohttp_server: Any) -> Receiver:
    r = Receiver()
    app = web.Application()
    app.router.add_post("/changes", r.handle)
    server = await aiohttp_server(app)
    r.url = str(server.make_url("/changes"))
    return r


def settings(**raw: Any) -> DestinationSettings:
    return DestinationSettings("crm", "webhook", {"kind": "webhook", "secret": SECRET, **raw}, Config())


@pytest.fixture
async def sink(receiver: Receiver) -> Any:
    opened = WebhookSink(settings(url=receiver.url))
    yield opened
    await opened.close()


async def test_a_batch_is_posted_signed_with_its_first_and_last_positions_as_id(receiver, sink):
    await sink.deliver(batch(7, 8, 9))
    ((headers, payload),) = receiver.deliveries
    assert headers["webhook-id"] == "prm-changes-7-9"
    assert headers["Content-Type"] == "application/json"
    assert abs(int(headers["webhook-timestamp"]) - datetime.now(UTC).timestamp()) < 60
    assert payload == {"changes": [c.to_json() for c in batch(7, 8, 9)]}
    await sink.deliver(batch(10))
    assert receiver.deliveries[-1][0]["webhook-id"] == "prm-changes-10-10"


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
async def test_every_2xx_answer_delivers(receiver, sink, status):
    receiver.status = status
    await sink.deliver(batch(1, 2))  # returns: delivered
    assert len(receiver.deliveries) == 1


@pytest.mark.parametrize("status", [400, 413, 415, 422])
async def test_an_answer_refusing_the_content_dead_letters_the_whole_batch(receiver, sink, status):
    receiver.status = status
    with pytest.raises(Refused) as refused:
        await sink.deliver(batch(3, 4, 5))
    assert refused.value.positions == ("3", "4", "5")
    assert refused.value.reason == f"the receiver answered {status}"


@pytest.mark.parametrize("status", [300, 401, 403, 404, 408, 410, 412, 414, 416, 421, 423, 429, 500, 503])
async def test_any_other_answer_is_retried(receiver, sink, status):
    # the receiver's state (a rotated secret, a redeploy, a limit, an outage), not the changes'
    receiver.status = status
    with pytest.raises(DeliveryFailed, match=f"^the receiver answered {status}$"):
        await sink.deliver(batch(3))


async def test_a_receiver_slower_than_timeout_s_is_retried_naming_only_the_errors_type(receiver):
    receiver.hang = True
    slow = WebhookSink(settings(url=receiver.url, timeout_s=0.2))
    try:
        with pytest.raises(DeliveryFailed, match=r"^TimeoutError from the receiver$"):
            await slow.deliver(batch(1))
    finally:
        await slow.close()


async def test_a_dropped_or_refused_connection_is_retried_naming_only_the_errors_type(receiver, sink, unused_tcp_port):
    # the error's own message names the receiver's address (its URL may hold a token): not shown
    receiver.drop = True
    with pytest.raises(DeliveryFailed, match=r"^ServerDisconnectedError from the receiver$"):
        await sink.deliver(batch(1))
    nobody = WebhookSink(settings(url=f"http://127.0.0.1:{unused_tcp_port}/changes"))
    try:
        with pytest.raises(DeliveryFailed, match=r"^ClientConnectorError from the receiver$"):
            await nobody.deliver(batch(1))
    finally:
        await nobody.close()


async def test_deliveries_share_one_kept_alive_connection_which_close_closes(receiver, sink):
    receiver.status = 200  # a receiver that answers at length: read, so the connection stays usable
    receiver.reply = b"x" * 262_144
    for n in range(3):
        await sink.deliver(batch(n + 1))
    assert len(set(map(id, receiver.connections))) == 1
    (connection,) = set(receiver.connections)
    loop = asyncio.get_running_loop()
    reported: list[str] = []  # what asyncio reports: aiohttp's "Unclosed client session" at a stop
    loop.set_exception_handler(lambda loop, context: reported.append(context["message"]))
    try:
        await sink.close()
        gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert reported == []

    async def closed() -> bool:
        return connection.is_closing()

    await until(closed, within_s=5)
    await sink.close()  # a second close does nothing
    await sink.deliver(batch(4))  # delivering after a close opens a new connection
    assert receiver.connections[-1] is not connection


async def test_closing_a_sink_that_never_delivered_does_nothing():
    await WebhookSink(settings(url="https://crm.example.com/prm/changes")).close()


@pytest.mark.parametrize("url", ["http://crm.example.com/prm", "https://crm.example.com/prm"])
def test_the_url_is_http_or_https(url):
    assert WebhookSink(settings(url=url)).url == url


@pytest.mark.parametrize(
    "secret",
    [
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",  # the key without its whsec_ prefix
        "whsec_not base64!",
        "hunter2",
    ],
)
def test_a_secret_that_is_not_a_standard_webhooks_one_is_refused_unshown(secret):
    with pytest.raises(ConfigError) as refused:
        WebhookSink(settings(url="https://crm.example.com", secret=secret))
    assert str(refused.value) == (
        "[destinations.crm].secret must be a Standard Webhooks secret (whsec_...), or env:VARIABLE"
    )


@pytest.mark.parametrize(("raw", "seconds"), [({}, 10.0), ({"timeout_s": 0.1}, 0.1), ({"timeout_s": 300}, 300.0)])
def test_timeout_s_defaults_to_10_and_goes_from_a_tenth_to_300(raw, seconds):
    assert WebhookSink(settings(url="https://crm.example.com", **raw)).timeout_s == seconds


@pytest.mark.parametrize("seconds", [0.09, 0, -1, 300.5, 301])
def test_timeout_s_outside_its_range_is_refused(seconds):
    with pytest.raises(ConfigError, match=r"^\[destinations.crm\].timeout_s must be at least 0.1 and at most 300"):
        WebhookSink(settings(url="https://crm.example.com", timeout_s=seconds))
