"""The NATS JetStream sink's settings (``kind = "nats"``), checked as the hub starts: its
documented defaults, the edges it accepts and what it refuses, naming the key."""

from __future__ import annotations

import uuid
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
