"""The call center: each call a dialogue, and the caller's story on the agent's screen.

Registers the ``callcenter`` touch point (budget ``[touchpoints.callcenter] budget_ms``,
default 1000 ms; it is also the time a screen pop may take to gather the view). CTI events
come in at ``POST /v1/touchpoints/callcenter/events`` (:mod:`prm_callcenter.cti`) and ``GET
/agent`` is the agent desktop. The ``screenpop`` adapter on the same touch point speaks the
screen-pop WebSocket: each ``call.offered`` to an agent pushes the caller's view to that
agent's sockets (:mod:`prm_callcenter.screenpop`); its broker runs as long as the hub, from
``prm_hub_started`` to ``prm_hub_stopping``. See docs/callcenter.md.
"""

from __future__ import annotations

from typing import Any

from prm_core.plugin import Adapter, Config, ConfigError, Hub, TouchPoint, hookimpl

from .cti import CALL_TYPES, TOUCHPOINT, cti_event
from .routes import agent_page_routes, cti_routes, screenpop_routes
from .screenpop import PLUGIN_NAME, ScreenPops, screenpop_settings

__all__ = [
    "CALL_TYPES",
    "TOUCHPOINT",
    "ScreenPops",
    "cti_event",
    "prm_adapters",
    "prm_event_labels",
    "prm_hub_started",
    "prm_hub_stopping",
    "prm_touchpoints",
    "screen_pops",
]


@hookimpl
def prm_touchpoints(config: Config) -> list[TouchPoint]:
    settings = config.touchpoint(TOUCHPOINT)
    screenpop_settings(settings)  # a bad value stops the hub now, naming it
    return [
        TouchPoint(
            name=TOUCHPOINT,
            channel="voice",
            budget_ms=int(settings.get("budget_ms", 1000)),
            closes_on=frozenset({"call.ended"}),
            routes=[*cti_routes(), *agent_page_routes()],
            description=__doc__.split("\n", 1)[0],
        )
    ]


def screen_pops(hub: Hub) -> ScreenPops | None:
    """The hub's screen-pop broker (registered on its plugin manager while the hub runs)."""
    found = hub.pm.get_plugin(PLUGIN_NAME)
    return found if isinstance(found, ScreenPops) else None


@hookimpl
async def prm_hub_started(hub: Hub) -> None:
    """Start the hub's screen-pop broker and register it on the hub's plugin manager, where
    it hears ``prm_event_recorded`` for this hub only. A bad ``bus`` stops the hub's start."""
    settings = hub.config.touchpoint(TOUCHPOINT)
    tuning: Any = settings.get("screenpop", {})
    numbers = screenpop_settings(settings)
    bus = str(tuning.get("bus", "auto"))
    if bus not in ("auto", "local", "postgresql"):
        raise ConfigError(f"[touchpoints.callcenter.screenpop] bus must be auto, local or postgresql, not {bus!r}")
    if bus == "postgresql" and hub.store.dialect != "postgresql":
        raise ConfigError("[touchpoints.callcenter.screenpop] bus = 'postgresql' needs the hub on PostgreSQL")
    pops = ScreenPops(
        hub,
        budget_ms=int(settings.get("budget_ms", 1000)),
        ring_size=numbers["ring_size"],
        connection_queue=numbers["connection_queue"],
        pending_calls=numbers["pending_calls"],
        workers=numbers["workers"],
        ticket_ttl_s=numbers["ticket_ttl_s"],
    )
    hub.pm.register(pops, name=PLUGIN_NAME)
    try:
        await pops.start(shared=None if bus == "auto" else bus == "postgresql")
    except BaseException:
        hub.pm.unregister(pops)
        raise


@hookimpl
async def prm_hub_stopping(hub: Hub) -> None:
    """Stop the hub's broker (the server has closed the agents' sockets by now)."""
    pops = screen_pops(hub)
    if pops is not None:
        hub.pm.unregister(pops)
        await pops.stop()


@hookimpl
def prm_event_labels(config: Config) -> dict[str, str]:
    """The call center's events in words, for the agent desktop and the console."""
    return {
        "call.offered": "called",
        "call.answered": "spoke with an agent",
        "call.transferred": "was transferred",
        "call.ended": "call ended",
        "agent.note": "agent's note",
        "call.outcome": "call outcome",
    }


@hookimpl
def prm_adapters(config: Config) -> list[Adapter]:
    return [
        Adapter(
            name="screenpop",
            touchpoint=TOUCHPOINT,
            routes=screenpop_routes(),
            description="Screen pops: the caller's view on the agent's WebSocket when a call is offered",
        )
    ]
