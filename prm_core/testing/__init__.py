"""pytest plugin for the hub and for plugin authors (opt in: ``pytest_plugins = ["prm_core.testing"]``).

Fixtures:

- ``database_url``: a fresh SQLite file; parametrized over PostgreSQL too when
  ``PRM_TEST_POSTGRES_URL`` is set (each test gets a database of its own there).
- ``hub_config``: a :class:`~prm_core.config.Config` on that database, which then already has
  the hub's schema: a copy of a template migrated once per test run
  (:mod:`prm_core.testing.databases`), so starting the hub migrates nothing.
- ``hub``: a started :class:`~prm_core.hub.Hub` with every installed plugin.
- ``hub_client``: an aiohttp test client on the full server; ``make_key(scope)`` gives keys.
- ``register_plugin``: register a plugin object for one test (unregistered after).
- ``hook_recorder``: a :class:`HookRecorder` registered on ``hub`` (every hook call after start).
- ``log_capture``: the hub's logs as the configured processors render them (redaction
  included): ``log_capture.text`` and ``log_capture.entries``.
- ``frozen_clock``: a :class:`~prm_core.clock.FrozenClock`; ``frozen_clock.advance(minutes=31)``.

This plugin is opt-in, not registered through a ``pytest11`` entry point: that would import
the hub into every pytest run of every project installed beside it, and clash with projects
that also name it in ``pytest_plugins``.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import attrs
import pytest

from ..clock import FrozenClock
from ..config import Config
from ..hub import Hub
from ..keys import create_key
from ..logs import configure_logging
from .databases import POSTGRES_ENV, Databases, postgres_database
from .recorder import HookCall, HookRecorder

__all__ = [
    "POSTGRES_ENV",
    "TEST_INGEST",
    "FrozenClock",
    "HookCall",
    "HookRecorder",
    "LogCapture",
    "postgres_database",
    "with_test_ingest",
]

# [ingest] for test hubs: the journal as in production, with reads by position and synchronous
# writes waiting up to 30 s for the processor, where a server waits 2 s and 5 s. A test machine
# running many hubs at once can fall seconds behind, and a test reading its own writes must see
# them, not a 503; a hub that truly stalls still fails the test, later.
TEST_INGEST = {"read_wait_ms": 30_000, "sync_wait_ms": 30_000}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgres: runs on PostgreSQL (PRM_TEST_POSTGRES_URL)")


def _backends() -> list[Any]:
    return [
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgres),
    ]


@pytest.fixture(autouse=True)
def _forget_stopped_apps() -> Iterator[None]:
    """After each test, let the applications it stopped be collected.

    aiohttp caches each route's middleware chain per (handler, application) in a module-level
    ``lru_cache`` of 1,024 entries, which keeps stopped applications (a hub each, with its
    plugins and tables) alive. A test run starting one hub per test then grows by a few
    thousand objects a test, and the collector's full passes over that heap get slow enough
    to break a test's latency budget. A server builds one application, so this is a test
    run's problem only.
    """
    yield
    from aiohttp import web_app

    cache = getattr(web_app, "_cached_build_middleware", None)  # a private name: absent, nothing to do
    if cache is not None and hasattr(cache, "cache_clear"):
        cache.cache_clear()


@pytest.fixture(scope="session")
def _databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Databases]:
    databases = Databases(tmp_path_factory.mktemp("schema-template"))
    yield databases
    databases.close()


@pytest.fixture(params=_backends())
def database_url(request: pytest.FixtureRequest, tmp_path: Any, _databases: Databases) -> Iterator[str]:
    """A fresh database: SQLite always, PostgreSQL when ``PRM_TEST_POSTGRES_URL`` is set.

    Empty, unless the test uses ``hub_config``: then it already has the hub's schema at the
    newest revision (a copy of a template migrated once per test run), and the hub's start
    has nothing to migrate.
    """
    migrated = "hub_config" in request.fixturenames
    if request.param == "sqlite":
        path = tmp_path / "prm.db"
        yield _databases.sqlite_copy(path) if migrated else f"sqlite:///{path}"
        return
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set: PostgreSQL tests need a server")
    yield from _databases.postgres(base, migrated=migrated)


@pytest.fixture
def hub_config(database_url: str) -> Config:
    """The ``Config`` every test hub opens with (``hub``, ``hub_client``, the conformance
    suite's): ``database_url`` (a fresh database with the hub's schema) and nothing else.
    Override it to give a plugin its settings, a vendor's webhook secret for one
    (``docs/plugins.md``). The hubs open with ``TEST_INGEST`` under what it sets in ``[ingest]``."""
    return Config(database_url=database_url, public_url="http://hub.test")


def with_test_ingest(config: Config) -> Config:
    """``config`` with ``TEST_INGEST``'s waits where its ``[ingest]`` sets none."""
    ingest = {**TEST_INGEST, **config.section("ingest")}
    return attrs.evolve(config, raw={**config.raw, "ingest": ingest})


@pytest.fixture
def hub_plugins() -> list[Any]:
    """Plugins registered in code for ``hub`` and ``hub_client``; override to add some."""
    return []


@pytest.fixture
async def hub(hub_config: Config, hub_plugins: list[Any]) -> AsyncIterator[Hub]:
    async with Hub.open(with_test_ingest(hub_config), plugins=hub_plugins, autoload=True) as started:
        yield started


@pytest.fixture
async def hub_client(hub_config: Config, hub_plugins: list[Any], aiohttp_client: Any) -> Any:
    from ..server.app import create_app

    app = create_app(with_test_ingest(hub_config), plugins=hub_plugins)
    return await aiohttp_client(app)


@pytest.fixture
def make_key(hub_client: Any) -> Callable[..., Awaitable[str]]:
    """``await make_key("touchpoint:web")`` -> a key valid on ``hub_client``'s hub."""
    from ..server.state import HUB

    async def make(scope: str, *, public: bool = False) -> str:
        hub = hub_client.app[HUB]
        browsers = {tp.name for tp in hub.registrations.touchpoints if tp.public_keys}
        key, _ = await create_key(hub.store, scope, public=public, public_touchpoints=browsers)
        return key

    return make


@pytest.fixture
def register_plugin(hub: Hub) -> Iterator[Callable[[Any], Any]]:
    """Register a plugin object on the running ``hub`` for this test only."""
    added: list[Any] = []

    def register(plugin: Any) -> Any:
        hub.pm.register(plugin)
        added.append(plugin)
        return plugin

    yield register
    for plugin in added:
        hub.pm.unregister(plugin)


@pytest.fixture
def hook_recorder(hub: Hub) -> Iterator[HookRecorder]:
    recorder = HookRecorder()
    hub.pm.register(recorder)
    yield recorder
    hub.pm.unregister(recorder)


class LogCapture:
    """What the hub logged, rendered as JSON by the hub's own processors."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    @property
    def entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line.startswith("{")]


@pytest.fixture
def log_capture() -> Iterator[LogCapture]:
    """Capture every log line at debug level, through the redaction processor."""
    import logging

    import structlog

    capture = LogCapture()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("debug", json=True, stream=capture.stream)
    yield capture
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def frozen_clock() -> Iterator[FrozenClock]:
    with FrozenClock() as clock:
        yield clock
