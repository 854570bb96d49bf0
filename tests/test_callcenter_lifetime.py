"""The call center's screen-pop broker lives as long as its hub: ``prm_hub_started`` starts and
registers it, ``prm_hub_stopping`` stops and unregisters it, with or without the HTTP server."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from browsing import eventually
from prm_callcenter import screen_pops
from prm_callcenter.screenpop import PLUGIN_NAME

from prm_core.config import Config
from prm_core.errors import ConfigError
from prm_core.hub import Hub
from prm_core.model import Event, Identity


def with_screenpop(database_url: str, **screenpop: Any) -> Config:
    return Config(database_url=database_url, raw={"touchpoints": {"callcenter": {"screenpop": screenpop}}})


def offered(call: str, agent: str) -> Event:
    return Event(
        id=f"{call}-offered",
        type="call.offered",
        occurred_at=datetime(2026, 11, 23, 9, 0, tzinfo=UTC),
        touchpoint="callcenter",
        identities=[Identity("phone", "+14155550100")],
        data={"call_id": call, "agent_id": agent, "queue": "priority"},
    )


async def test_the_broker_runs_with_a_hub_used_as_a_library(database_url):
    async with Hub.open(with_screenpop(database_url, bus="local"), autoload=True) as hub:
        pops = screen_pops(hub)
        assert pops is not None and hub.pm.get_plugin(PLUGIN_NAME) is pops
        agent = pops.connect("a-1", None)
        await hub.record([offered("c-1", "a-1")])

        async def popped() -> bool:
            return bool(agent.queue)

        await eventually(popped, "the pop of a call recorded through Hub.record")
        workers = list(pops._tasks)
        assert workers and not any(task.done() for task in workers)
    assert hub.pm.get_plugin(PLUGIN_NAME) is None
    assert all(task.done() for task in workers)


async def test_a_bad_bus_stops_the_hubs_start_naming_the_key_and_the_plugin(database_url):
    with pytest.raises(ConfigError, match=r"\[touchpoints.callcenter.screenpop\] bus must be") as caught:
        async with Hub.open(with_screenpop(database_url, bus="carrier-pigeon"), autoload=True):
            pytest.fail("the hub started")
    assert "raised by plugin 'callcenter' in prm_hub_started" in caught.value.__notes__


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_postgresql_bus_needs_the_hub_on_postgresql(database_url):
    with pytest.raises(ConfigError, match="bus = 'postgresql' needs the hub on PostgreSQL"):
        async with Hub.open(with_screenpop(database_url, bus="postgresql"), autoload=True):
            pytest.fail("the hub started")
