"""Freezing the started hub's heap (``[server] freeze_heap``): ``prm serve`` does it by default
(tests/test_cli.py), an embedding caller only when asked; a stopped hub gives the heap back."""

from __future__ import annotations

import gc

import pytest

from prm_core.config import Config
from prm_core.errors import ConfigError
from prm_core.server.app import create_app


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path}/prm.db"


@pytest.fixture(autouse=True)
def unfrozen():
    gc.unfreeze()
    yield
    gc.unfreeze()


def _server(freeze: object) -> dict[str, dict[str, object]]:
    return {"server": {"freeze_heap": freeze}}


@pytest.mark.parametrize(
    ("raw", "owns_process"),
    [(_server(True), False), ({}, True), (_server(True), True)],
    ids=["setting", "process-owner", "both"],
)
async def test_a_hub_asked_to_freezes_the_heap_and_unfreezes_it_when_stopped(
    sqlite_url, aiohttp_client, raw, owns_process
):
    client = await aiohttp_client(create_app(Config(database_url=sqlite_url, raw=raw), owns_process=owns_process))
    assert (await client.get("/healthz")).status == 200
    frozen = gc.get_freeze_count()
    # everything start-up left: modules, plugins, tables (well over 10,000 objects)
    assert frozen > 10_000
    assert not any(obj is client.app for obj in gc.get_objects())  # out of the collector's sight
    await client.close()
    assert gc.get_freeze_count() == 0


@pytest.mark.parametrize(
    ("raw", "owns_process"),
    [({}, False), (_server(False), False), (_server(False), True)],
    ids=["embedded-default", "setting-false", "setting-false-wins-over-the-owner"],
)
async def test_otherwise_the_collector_is_left_alone(sqlite_url, aiohttp_client, raw, owns_process):
    client = await aiohttp_client(create_app(Config(database_url=sqlite_url, raw=raw), owns_process=owns_process))
    assert (await client.get("/healthz")).status == 200
    assert gc.get_freeze_count() == 0


def test_freeze_heap_must_be_a_boolean(sqlite_url):
    with pytest.raises(ConfigError, match=r"\[server\]\.freeze_heap must be true or false"):
        create_app(Config(database_url=sqlite_url, raw=_server("yes")))
