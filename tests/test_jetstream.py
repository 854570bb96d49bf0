"""The NATS JetStream sink's settings (``kind = "nats"``), checked as the hub starts: its
documented defaults, the edges it accepts and what it refuses, naming the key; then, against
the JetStream server at 127.0.0.1:4222, its connection: shared, closed, lost and found again,
given up, and a batch's failures."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from nats.js.errors import NoStreamResponseError

from prm_core.config import Config
from prm_core.errors import ConfigError
from prm_core.feed import Change
from prm_core.feed.destinations import DestinationSettings
from prm_core.feed.jetstream import NatsSink


def sink(**raw: Any) -> NatsSink:
    return NatsSink(DestinationSettings(name="bus", kind="nats", raw={"kind": "nats", **raw}, config=Config()))


def test_the_defaults_are_the_documented_ones() -> None:
    bus = sink()
    assert (bus.servers, bus.stream, bus.subject, bus.timeout_s) == (
        ["nats://127.0.0.1:4222"],
        "PRM_CHANGES",
        "prm.changes",
        10.0,
    )


def test_the_edges_of_each_setting_are_accepted() -> None:
    servers = ["nats://a:4222", "tls://b:4222", "ws://c:80", "wss://d:443"]
    bus = sink(servers=servers, stream="Prm-changes_2", subject="a", timeout_s=0.1)
    assert (bus.servers, bus.stream, bus.subject, bus.timeout_s) == (servers, "Prm-changes_2", "a", 0.1)
    assert sink(subject="prm.changes.eu", timeout_s=300).timeout_s == 300.0


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"servers": ["nats://a:4222", "http://b"]}, "[destinations.bus].servers must list nats:// (or tls://, ws://"),
        ({"servers": "127.0.0.1:4222"}, "[destinations.bus].servers must list nats://"),
        ({"stream": "PRM.CHANGES"}, "[destinations.bus].stream must be a stream name (letters, digits, - and _)"),
        ({"stream": "PRM CHANGES"}, "[destinations.bus].stream must be a stream name"),
        ({"subject": "prm changes"}, "[destinations.bus].subject must be a subject prefix without spaces or wildcards"),
        ({"subject": "prm.*"}, "[destinations.bus].subject must be a subject prefix"),
        ({"subject": "prm.>"}, "[destinations.bus].subject must be a subject prefix"),
        ({"subject": ".prm"}, "[destinations.bus].subject must be a subject prefix"),
        ({"subject": "prm."}, "[destinations.bus].subject must be a subject prefix"),
        ({"timeout_s": 0.09}, "[destinations.bus].timeout_s must be at least 0.1 and at most 300"),
        ({"timeout_s": 300.5}, "[destinations.bus].timeout_s must be at least 0.1 and at most 300"),
    ],
)
def test_a_bad_setting_is_refused_naming_the_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        sink(**raw)
    assert str(refused.value).startswith(message)


async def test_deliveries_share_one_connection_and_create_the_stream_once() -> None:
    """Against the JetStream server at 127.0.0.1:4222: the stream is created on first use,
    capturing the subject's tree; later deliveries reuse the connection; a closed sink
    connects again."""
    import nats

    stream = f"PRM_TEST_{uuid.uuid4().hex[:12].upper()}"
    subject = f"prmtest.{uuid.uuid4().hex[:12]}"
    bus = sink(stream=stream, subject=subject)
    nc = await nats.connect("nats://127.0.0.1:4222")
    js = nc.jetstream()
    try:
        await bus.deliver([])
        first = bus._nc
        assert first is not None and first.is_connected
        assert (await js.stream_info(stream)).config.subjects == [f"{subject}.>"]
        await bus.deliver([])
        assert bus._nc is first
        await bus.close()
        assert bus._nc is None and first.is_closed
        await bus.deliver([])  # the stream is there: found, not created again
        assert bus._nc is not None and bus._nc is not first and bus._nc.is_connected
        await bus.close()
    finally:
        try:
            await js.delete_stream(stream)
        finally:
            await nc.close()


async def test_a_stream_that_cannot_be_created_fails_the_delivery_and_closes_the_connection() -> None:
    """Another stream already captures the subjects: the delivery fails with the server's
    refusal (retried later), and the connection is closed, made again next time."""
    import nats
    from nats.js.errors import APIError

    subject = f"prmtest.{uuid.uuid4().hex[:12]}"
    taken = f"PRM_TEST_{uuid.uuid4().hex[:12].upper()}"
    bus = sink(stream=f"PRM_TEST_{uuid.uuid4().hex[:12].upper()}", subject=subject, timeout_s=2)
    nc = await nats.connect("nats://127.0.0.1:4222")
    js = nc.jetstream()
    try:
        await js.add_stream(name=taken, subjects=[f"{subject}.>"])
        with pytest.raises(APIError):
            await bus.deliver([])
        assert bus._nc is None
    finally:
        try:
            await js.delete_stream(taken)
        finally:
            await nc.close()


async def test_a_change_no_stream_acknowledges_fails_the_delivery() -> None:
    """The stream exists but does not capture the subject (made by hand): nothing acknowledges
    the change, so the batch is not delivered."""
    import nats

    stream = f"PRM_TEST_{uuid.uuid4().hex[:12].upper()}"
    bus = sink(stream=stream, subject=f"prmtest.{uuid.uuid4().hex[:12]}", timeout_s=1)
    nc = await nats.connect("nats://127.0.0.1:4222")
    js = nc.jetstream()
    try:
        await js.add_stream(name=stream, subjects=[f"prmother.{uuid.uuid4().hex[:12]}.>"])
        change = Change(1, "customer.created", datetime.now(UTC), None)
        with pytest.raises(NoStreamResponseError):
            await bus.deliver([change])
        assert (await js.stream_info(stream)).state.messages == 0
        await bus.close()
    finally:
        try:
            await js.delete_stream(stream)
        finally:
            await nc.close()


async def test_a_sink_never_connected_closes() -> None:
    await sink().close()


# --- a server lost and found again, a batch with one failure, a close while reconnecting


class Proxy:
    """A TCP relay to the JetStream server at 127.0.0.1:4222 on a port of its own: ``cut()``
    drops every connection through it; ``refusing`` connections after that are accepted and
    closed at once (each counted in ``refused``) before it relays again."""

    def __init__(self) -> None:
        self.refusing: float = 0
        self.refused = 0
        self._links: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"nats://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        await self._server.wait_closed()

    def cut(self) -> None:
        for link in self._links:
            link.transport.abort()
        self._links.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing > 0:
            self.refusing -= 1
            self.refused += 1
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 4222)
        self._links |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


class Watched:
    """``nats.connect`` as the sink calls it (its own arguments passed through), with callbacks
    telling the test when a connection is lost and when it is closed; ``wait_s`` shortens the
    client's wait between two attempts on one server (2 s by default) so the tests are quick."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, wait_s: float | None = 0.02) -> None:
        import nats

        self.lost = asyncio.Event()
        self.closed = asyncio.Event()
        connect = nats.connect

        async def lost() -> None:
            self.lost.set()

        async def closed() -> None:
            self.closed.set()

        async def watched(**options: Any) -> Any:
            if wait_s is not None:
                options["reconnect_time_wait"] = wait_s
            return await connect(**options, disconnected_cb=lost, closed_cb=closed)

        monkeypatch.setattr(nats, "connect", watched)


@pytest.fixture
async def js() -> AsyncIterator[Any]:
    """A client of its own on the JetStream server, deleting the streams named ``PRM_TEST_*``
    that the test made."""
    import nats

    nc = await nats.connect("nats://127.0.0.1:4222")
    made: list[str] = []
    js = nc.jetstream()
    add_stream = js.add_stream

    async def add(**config: Any) -> Any:
        made.append(config["name"])
        return await add_stream(**config)

    js.add_stream = add
    try:
        yield js
    finally:
        try:
            for name in made:
                await js.delete_stream(name)
        finally:
            await nc.close()


def names() -> tuple[str, str]:
    return f"PRM_TEST_{uuid.uuid4().hex[:12].upper()}", f"prmtest.{uuid.uuid4().hex[:12]}"


async def test_a_server_lost_for_a_moment_is_found_again_and_the_batch_delivered(
    monkeypatch: pytest.MonkeyPatch, js: Any
) -> None:
    """The connection drops and the server refuses the next two attempts: the client keeps
    trying on the same connection, and a batch delivered meanwhile reaches the stream once
    the server is back."""
    watched = Watched(monkeypatch)
    stream, subject = names()
    await js.add_stream(name=stream, subjects=[f"{subject}.>"])
    async with Proxy() as proxy:
        bus = sink(servers=[proxy.url], stream=stream, subject=subject, timeout_s=5)
        await bus.deliver([])
        first = bus._nc
        proxy.refusing = 2
        proxy.cut()
        await asyncio.wait_for(watched.lost.wait(), 5)
        await bus.deliver([Change(1, "customer.created", datetime.now(UTC), "c1")])
        assert (await js.stream_info(stream)).state.messages == 1
        assert proxy.refused == 2
        assert bus._nc is first and first.is_connected
        await bus.close()


async def test_a_server_gone_for_good_is_given_up_after_three_attempts_and_connected_afresh(
    monkeypatch: pytest.MonkeyPatch, js: Any
) -> None:
    """The connection drops and the server refuses every attempt: the client gives up after
    the third (its connection closed, rather than retrying behind the relay's back); once the
    server is back, the next delivery makes a new connection and delivers."""
    watched = Watched(monkeypatch)
    stream, subject = names()
    await js.add_stream(name=stream, subjects=[f"{subject}.>"])
    async with Proxy() as proxy:
        bus = sink(servers=[proxy.url], stream=stream, subject=subject, timeout_s=5)
        await bus.deliver([])
        first = bus._nc
        proxy.refusing = math.inf
        proxy.cut()
        await asyncio.wait_for(watched.closed.wait(), 10)
        assert first.is_closed
        assert proxy.refused == 3
        proxy.refusing = 0
        await bus.deliver([Change(1, "customer.created", datetime.now(UTC), "c1")])
        assert bus._nc is not first and bus._nc.is_connected
        assert (await js.stream_info(stream)).state.messages == 1
        await bus.close()


async def test_closing_a_sink_whose_connection_is_reconnecting_closes_it(
    monkeypatch: pytest.MonkeyPatch, js: Any
) -> None:
    """A connection that lost its server cannot be drained: closing the sink closes it
    instead, so nothing keeps reconnecting after the hub stopped."""
    watched = Watched(monkeypatch, wait_s=None)  # the client's own 2 s between attempts
    stream, subject = names()
    await js.add_stream(name=stream, subjects=[f"{subject}.>"])
    async with Proxy() as proxy:
        bus = sink(servers=[proxy.url], stream=stream, subject=subject)
        await bus.deliver([])
        first = bus._nc
        try:
            proxy.refusing = math.inf
            proxy.cut()
            await asyncio.wait_for(watched.lost.wait(), 5)
            assert first.is_reconnecting
            await bus.close()
            assert first.is_closed and bus._nc is None
        finally:
            await first.close()


async def test_a_batch_awaits_every_acknowledgement_and_reports_the_first_failure_in_feed_order(js: Any) -> None:
    """Three changes: the first goes to a subscriber that never answers (times out), the second
    to the stream (acknowledged), the third to no one (refused at once). The delivery waits for
    every answer and fails with the first change's timeout, the second one stored."""
    import nats

    stream, subject = names()
    await js.add_stream(name=stream, subjects=[f"{subject}.customer.updated"])
    silent = await nats.connect("nats://127.0.0.1:4222")
    try:
        await silent.subscribe(f"{subject}.customer.created")  # takes the request, never answers
        await silent.flush()
        bus = sink(stream=stream, subject=subject, timeout_s=0.5)
        now = datetime.now(UTC)
        batch = [Change(1, "customer.created", now, "c1"), Change(2, "customer.updated", now, "c1")]
        with pytest.raises(nats.errors.TimeoutError):
            await bus.deliver([*batch, Change(3, "customer.merged", now, "c1")])
        assert (await js.stream_info(stream)).state.messages == 1
        await bus.close()
    finally:
        await silent.close()
