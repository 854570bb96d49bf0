"""Plugin loading: entry points, switches, conflicts, load errors, wrappers, each plugin's caller, tracing."""

from __future__ import annotations

import importlib.metadata

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


class Watcher:
    """Hears an event's path through the hub: the customer, the dialogue, the event, the answer."""

    __name__ = "watcher"

    @hookimpl
    def prm_customer_created(self, customer, event):
        pass

    @hookimpl
    def prm_dialogue_opened(self, dialogue, event):
        pass

    @hookimpl
    def prm_event_recorded(self, recorded):
        pass

    @hookimpl
    def prm_propose_offers(self, request):
        raise RuntimeError("no offers today")  # traced as failed, named in degraded

    @hookimpl(tryfirst=True)
    def prm_render_delivery(self, delivery, touchpoint):
        return None


async def test_trace_follows_an_event_through_a_running_hub(monkeypatch, aiohttp_client, tmp_path):
    """``PRM_TRACE_PLUGINS=1`` on a served hub with the installed plugins: one ``hook call`` line
    for every call into a plugin along a request's path, run-time registered plugins included."""
    from prm_core.keys import create_key
    from prm_core.server.app import create_app
    from prm_core.server.state import HUB
    from prm_core.testing import HookRecorder

    monkeypatch.setenv("PRM_TRACE_PLUGINS", "1")
    recorder = HookRecorder()
    recorder.__name__ = "recorder"  # type: ignore[attr-defined]
    with structlog.testing.capture_logs() as logs:
        app = create_app(Config(database_url=f"sqlite:///{tmp_path}/trace.db"), plugins=[Watcher(), recorder])
        client = await aiohttp_client(app)
        hub = client.app[HUB]
        key, _ = await create_key(hub.store, "touchpoint:web")
        body = {
            "id": "r1",
            "type": "service.request",
            "occurred_at": "2026-12-05T08:00:00Z",
            "identities": {"email": "ann@example.com"},
        }
        resp = await client.post("/v1/touchpoints/web/requests", json=body, headers={"Authorization": f"Bearer {key}"})
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["degraded"] == ["offers:watcher"]
    traced = [entry for entry in logs if entry["event"] == "hook call"]
    assert {entry["log_level"] for entry in traced} == {"debug"}
    calls = [(entry["hook"], tuple(entry["plugins"]), entry["failed"]) for entry in traced]
    # the event's path: the request and its answer recorded, the value hooks in between
    assert calls.count(("prm_event_recorded", ("watcher",), False)) == 2
    for hook in ("prm_customer_created", "prm_dialogue_opened"):
        assert (hook, ("watcher",), False) in calls
    assert ("prm_propose_offers", ("watcher",), True) in calls
    # the one firstresult hook is one pluggy call of every implementation, until one answers
    (rendered,) = [plugins for hook, plugins, _ in calls if hook == "prm_render_delivery"]
    assert {"watcher", "pos"} <= set(rendered)
    # installed plugins are traced too: the call center's start, and its broker, registered then
    assert ("prm_hub_started", ("callcenter",), False) in calls
    assert ("prm_event_recorded", ("prm_callcenter.screenpops",), False) in calls
    assert ("prm_plan_fulfillment", ("partner",), False) in calls
    # every hook the recorder heard (it was registered before the hub started) was traced for it
    heard = {call.name for call in recorder.calls}
    assert {"prm_touchpoints", "prm_hub_started", "prm_event_recorded", "prm_render_delivery"} <= heard
    assert heard == {hook for hook, plugins, _ in calls if "recorder" in plugins}


class Wrapping:
    __name__ = "wrapping"

    @hookimpl(wrapper=True)
    def prm_event_recorded(self, recorded):
        return (yield)


class OldWrapping:
    __name__ = "old-wrapping"

    @hookimpl(hookwrapper=True)
    def prm_render_delivery(self, delivery, touchpoint):
        yield


@pytest.mark.parametrize("plugin", [Wrapping(), OldWrapping()], ids=["wrapper", "hookwrapper"])
def test_a_wrapper_implementation_is_refused_naming_the_plugin(plugin):
    from pluggy import PluginValidationError

    with pytest.raises(PluginValidationError) as info:
        make_plugin_manager([plugin], autoload=False)
    hook = "prm_event_recorded" if isinstance(plugin, Wrapping) else "prm_render_delivery"
    assert f"plugin {plugin.__name__!r}: its {hook} is a wrapper implementation" in str(info.value)


def test_each_plugin_has_a_caller_of_its_own_in_pluggys_order():
    class First:
        __name__ = "first"

        @hookimpl(tryfirst=True)
        def prm_event_recorded(self, recorded):
            return "first"

    class Plain:
        def __init__(self, name):
            self.__name__ = name

        @hookimpl
        def prm_event_recorded(self, recorded):
            return self.__name__

    pm = make_plugin_manager([First(), Plain("early"), Plain("late")], autoload=False)
    callers = pm.callers("prm_event_recorded")
    assert [name for name, _ in callers] == ["first", "late", "early"]  # as pluggy calls them
    assert [caller(recorded=None) for _, caller in callers] == [["first"], ["late"], ["early"]]
    # a plugin registered later has a caller too, and no other caller calls it
    pm.register(Plain("later"))
    assert [caller(recorded=None) for _, caller in pm.callers("prm_event_recorded")] == [
        ["first"],
        ["later"],
        ["late"],
        ["early"],
    ]
    pm.unregister(name="first")
    assert [name for name, _ in pm.callers("prm_event_recorded")] == ["later", "late", "early"]


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
