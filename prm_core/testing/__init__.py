"""pytest plugin for the hub and for plugin authors (opt in: ``pytest_plugins = ["prm_core.testing"]``).

Fixtures:

- ``database_url``: a fresh SQLite file; parametrized over PostgreSQL too when
  ``PRM_TEST_POSTGRES_URL`` is set (each test gets a database of its own there).
- ``hub_config``: a :class:`~prm_core.config.Config` on that database.
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

import asyncio
import io
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from ..clock import FrozenClock
from ..config import Config
from ..hub import Hub
from ..keys import create_key
from ..logs import configure_logging
from .recorder import HookCall, HookRecorder

__all__ = ["POSTGRES_ENV", "FrozenClock", "HookCall", "HookRecorder", "LogCapture", "postgres_database"]

POSTGRES_ENV = "PRM_TEST_POSTGRES_URL"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgres: runs on PostgreSQL (PRM_TEST_POSTGRES_URL)")


def _backends() -> list[Any]:
    return [
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgres),
    ]


def _admin(base_url: str, sql: str) -> None:
    import asyncpg

    dsn = sa.make_url(base_url).set(drivername="postgresql").render_as_string(hide_password=False)

    async def execute() -> None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(execute())


def postgres_database(base_url: str) -> Generator[str, None, None]:
    """Create a throw-away database on the server of ``base_url``; yield its URL; drop it."""
    name = f"prm_test_{uuid.uuid4().hex[:12]}"
    try:
        _admin(base_url, f'CREATE DATABASE "{name}"')
    except Exception as exc:  # set but unreachable: a failure, never a silent skip
        pytest.fail(f"{POSTGRES_ENV} is set but PostgreSQL is unreachable: {type(exc).__name__}: {exc}")
    try:
        yield sa.make_url(base_url).set(database=name, drivername="postgresql").render_as_string(hide_password=False)
    finally:
        _admin(base_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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


@pytest.fixture(params=_backends())
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """A fresh database: SQLite always, PostgreSQL when ``PRM_TEST_POSTGRES_URL`` is set."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/prm.db"
        return
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set: PostgreSQL tests need a server")
    yield from postgres_database(base)


@pytest.fixture
def hub_config(database_url: str) -> Config:
    """The ``Config`` every test hub opens with (``hub``, ``hub_client``, the conformance
    suite's): the test database and nothing else. Override it to give a plugin its settings,
    a vendor's webhook secret for one (``docs/plugins.md``)."""
    return Config(database_url=database_url, public_url="http://hub.test")


@pytest.fixture
def hub_plugins() -> list[Any]:
    """Plugins registered in code for ``hub`` and ``hub_client``; override to add some."""
    return []


@pytest.fixture
async def hub(hub_config: Config, hub_plugins: list[Any]) -> AsyncIterator[Hub]:
    async with Hub.open(hub_config, plugins=hub_plugins, autoload=True) as started:
        yield started


@pytest.fixture
async def hub_client(hub_config: Config, hub_plugins: list[Any], aiohttp_client: Any) -> Any:
    from ..server.app import create_app

    app = create_app(hub_config, plugins=hub_plugins)
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
