"""Plugin loading: entry points, switches, conflicts, load errors, tracing."""

from __future__ import annotations

import importlib.metadata
import logging

import pytest
import structlog

from prm_core import hookimpl
from prm_core.config import Config
from prm_core.errors import ConflictingRegistration, PluginLoadError
from prm_core.model import TouchPoint
from prm_core.plugins import collect_registrations, make_plugin_manager


class Kiosk:
    @hookimpl
    def prm_touchpoints(self, config):
        yield TouchPoint(name="kiosk", channel="kiosk", budget_ms=400)


class AnotherWeb:
    @hookimpl
    def prm_touchpoints(self, config):
        yield TouchPoint(name="web", channel="web", budget_ms=100)


def test_first_party_plugins_load_through_entry_points():
    pm = make_plugin_manager()
    names = {name for name, _ in pm.list_name_plugin()}
    assert {"web", "callcenter", "ivr", "pos"} <= names
    regs = collect_registrations(pm, Config())
    assert regs.touchpoints.providers["web"] == "web (prm-hub 0.1.0)"


def test_disable_autoload_and_disabled_plugins(monkeypatch):
    monkeypatch.setenv("PRM_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert collect_registrations(make_plugin_manager([Kiosk()]), Config()).touchpoints.names() == ["kiosk"]
    monkeypatch.delenv("PRM_DISABLE_PLUGIN_AUTOLOAD")
    monkeypatch.setenv("PRM_DISABLED_PLUGINS", "ivr, pos, shopify, square")  # adapters need their touch point
    assert collect_registrations(make_plugin_manager(), Config()).touchpoints.names() == ["callcenter", "web"]


def test_a_duplicate_name_is_refused_naming_both_providers():
    pm = make_plugin_manager([AnotherWeb()])
    with pytest.raises(ConflictingRegistration) as info:
        collect_registrations(pm, Config())
    message = str(info.value)
    assert "touch point 'web'" in message
    assert "web (prm-hub 0.1.0)" in message
    assert "AnotherWeb" in message or "prm_core" in message or "registered by" in message


def test_invalid_registration_names_the_plugin():
    class Bad:
        @hookimpl
        def prm_touchpoints(self, config):
            yield TouchPoint(name="Bad Name", channel="web", budget_ms=10)

    with pytest.raises(PluginLoadError) as info:
        collect_registrations(make_plugin_manager([Bad()], autoload=False), Config())
    assert "prm_touchpoints" in str(info.value)
    assert "lower-case" in str(info.value)


def test_a_string_where_names_belong_is_refused_not_split_into_letters():
    class Closer:
        @hookimpl
        def prm_touchpoints(self, config):
            yield TouchPoint(name="kiosk", channel="kiosk", budget_ms=10, closes_on="call.ended")

    with pytest.raises(PluginLoadError) as info:
        collect_registrations(make_plugin_manager([Closer()], autoload=False), Config())
    assert "expected a collection of names, got the string 'call.ended'" in str(info.value)
    assert TouchPoint(name="kiosk", channel="kiosk", budget_ms=10, closes_on=["call.ended"]).closes_on == {"call.ended"}


def test_a_plugin_that_fails_to_import_is_named_with_its_distribution(monkeypatch):
    real = importlib.metadata.entry_points

    class Broken(importlib.metadata.EntryPoint):
        def load(self):
            raise ImportError("no module named vendor_sdk")

    dist = next(iter(importlib.metadata.distributions(name="prm-hub")))

    def fake(**kw):
        eps = list(real(**kw))
        if kw.get("group") == "prm":
            broken = Broken("broken", "prm_broken:plugin", "prm")
            object.__setattr__(broken, "dist", dist)
            eps.append(broken)
        return eps

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
    with pytest.raises(PluginLoadError) as info:
        make_plugin_manager()
    assert str(info.value) == (
        "plugin 'broken' from distribution prm-hub 0.1.0 failed to load: ImportError: no module named vendor_sdk"
    )


def test_a_misspelled_hook_fails_at_start():
    class Typo:
        @hookimpl
        def prm_touchpoint(self, config):  # missing the s
            return []

    from pluggy import PluginValidationError

    with pytest.raises(PluginValidationError):
        make_plugin_manager([Typo()], autoload=False)


def test_trace_switch_logs_every_hook_call(monkeypatch):
    monkeypatch.setenv("PRM_TRACE_PLUGINS", "1")
    with structlog.testing.capture_logs() as logs:
        pm = make_plugin_manager([Kiosk()], autoload=False)
        pm.hook.prm_touchpoints(config=Config())
    calls = [entry for entry in logs if entry["event"] == "hook call"]
    assert calls and calls[0]["hook"] == "prm_touchpoints"
    assert calls[0]["log_level"] == "debug"
    logging.getLogger().handlers  # noqa: B018  # the capture leaves global logging untouched


class Tracker:
    @hookimpl
    def prm_adapters(self, config):
        from aiohttp import web

        from prm_core.model import Adapter

        async def hello(request):
            """Say hello."""
            return web.json_response({"hello": True})

        yield Adapter(name="tracker", touchpoint="kiosk", routes=[web.get("/tracker/hello", hello)])


def test_an_adapter_needs_its_touchpoint():
    with pytest.raises(PluginLoadError) as info:
        collect_registrations(make_plugin_manager([Tracker()], autoload=False), Config())
    assert "needs touch point 'kiosk', which no plugin registers" in str(info.value)


async def test_an_adapter_mounts_its_routes(aiohttp_client, tmp_path):
    from prm_core.server.app import create_app

    app = create_app(Config(database_url=f"sqlite:///{tmp_path}/a.db"), plugins=[Kiosk(), Tracker()], autoload=False)
    client = await aiohttp_client(app)
    assert await (await client.get("/tracker/hello")).json() == {"hello": True}
    spec = await (await client.get("/openapi.json")).json()
    assert spec["paths"]["/tracker/hello"]["get"]["tags"] == ["touchpoint:kiosk (tracker)"]
