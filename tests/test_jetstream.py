"""The NATS JetStream sink's settings (``kind = "nats"``), checked as the hub starts: its
documented defaults, the edges it accepts and what it refuses, naming the key."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from prm_core.config import Config
from prm_core.errors import ConfigError
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
