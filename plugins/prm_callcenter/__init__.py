"""The call center: each call a dialogue, and the caller's story on the agent's screen.

Registers the ``callcenter`` touch point (budget ``[touchpoints.callcenter] budget_ms``,
default 1000 ms; it is also the time a screen pop may take to gather the view). CTI events
come in at ``POST /v1/touchpoints/callcenter/events`` (:mod:`prm_callcenter.cti`); each
``call.offered`` to an agent pushes a screen pop to that agent's WebSocket
(:mod:`prm_callcenter.screenpop`); ``GET /agent`` is the agent desktop. See docs/callcenter.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prm_core import hookimpl
from prm_core.config import Config
from prm_core.hub import Hub
from prm_core.model import TouchPoint

from .cti import CALL_TYPES, TOUCHPOINT, cti_event
from .routes import callcenter_routes
from .screenpop import PLUGIN_NAME, ScreenPops

__all__ = ["CALL_TYPES", "TOUCHPOINT", "ScreenPops", "cti_event", "prm_hub_running", "prm_touchpoints", "screen_pops"]


@hookimpl
def prm_touchpoints(config: Config) -> list[TouchPoint]:
    settings = config.touchpoint(TOUCHPOINT)
    return [
        TouchPoint(
            name=TOUCHPOINT,
            channel="voice",
            budget_ms=int(settings.get("budget_ms", 1000)),
            closes_on=frozenset({"call.ended"}),
            routes=callcenter_routes(),
            description=__doc__.split("\n", 1)[0],
        )
    ]


def screen_pops(hub: Hub) -> ScreenPops | None:
    """The hub's screen-pop broker (registered on its plugin manager while it runs)."""
    found = hub.pm.get_plugin(PLUGIN_NAME)
    return found if isinstance(found, ScreenPops) else None


@asynccontextmanager
async def _screen_pops(hub: Hub) -> AsyncIterator[None]:
    settings = hub.config.touchpoint(TOUCHPOINT)
    tuning = settings.get("screenpop", {})
    pops = ScreenPops(
        hub,
        budget_ms=int(settings.get("budget_ms", 1000)),
        ring_size=int(tuning.get("ring_size", 50)),
        connection_queue=int(tuning.get("connection_queue", 20)),
        pending_calls=int(tuning.get("pending_calls", 1000)),
        workers=int(tuning.get("workers", 4)),
        ticket_ttl_s=float(tuning.get("ticket_ttl_s", 30)),
    )
    hub.pm.register(pops, name=PLUGIN_NAME)
    pops.start()
    try:
        yield
    finally:
        hub.pm.unregister(pops)
        await pops.stop()


@hookimpl
def prm_hub_running(hub: Hub) -> object:
    return _screen_pops(hub)
