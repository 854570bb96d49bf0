"""The started hub freezes its heap (``[server] freeze_heap``), and gives it back when it stops."""

from __future__ import annotations

import gc

import pytest

from prm_core.config import Config
from prm_core.errors import ConfigError
from prm_core.server.app import create_app


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path}/prm.db"


async def test_a_started_hub_freezes_the_heap_and_unfreezes_it_when_stopped(sqlite_url, aiohttp_client):
    gc.unfreeze()
    client = await aiohttp_client(create_app(Config(database_url=sqlite_url)))
    assert (await client.get("/healthz")).status == 200
    frozen = gc.get_freeze_count()
    # everything start-up left: modules, plugins, tables (well over 10,000 objects)
    assert frozen > 10_000
    assert not any(obj is client.app for obj in gc.get_objects())  # out of the collector's sight
    await client.close()
    assert gc.get_freeze_count() == 0


async def test_freeze_heap_false_leaves_the_collector_alone(sqlite_url, aiohttp_client):
    gc.unfreeze()
    client = await aiohttp_client(create_app(Config(database_url=sqlite_url, raw={"server": {"freeze_heap": False}})))
    assert (await client.get("/healthz")).status == 200
    assert gc.get_freeze_count() == 0


def test_freeze_heap_must_be_a_boolean(sqlite_url):
    with pytest.raises(ConfigError, match=r"\[server\]\.freeze_heap must be true or false"):
        create_app(Config(database_url=sqlite_url, raw={"server": {"freeze_heap": "yes"}}))
