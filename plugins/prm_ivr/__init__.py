"""The interactive voice response system: each call a dialogue of menu turns.

Registers the ``ivr`` touch point; its budget is ``[touchpoints.ivr] budget_ms`` (default
1500 ms). The menu is data: ``[touchpoints.ivr] menu = "path"`` (TOML or JSON, relative to
the config file), else the built-in ``default_menu.toml``; it is validated at start and a bad
file stops the hub naming the bad node. Vendor adapters (``prm_twilio``, ``prm_fastagi``)
speak to callers; this package decides what to say (:mod:`prm_ivr.engine`) and records each
step (:mod:`prm_ivr.calls`). See docs/ivr.md.

It also registers the ``ivr`` value provider: on an IVR request turn it reads the caller's
next technician window from the view's ``fulfillments`` section, so the menu can say it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prm_core.plugin import Config, TouchPoint, ValueProvider, ValueRequest, hookimpl, utcnow

from .calls import TOUCHPOINT, Call, IvrCalls, appointment_of
from .engine import STANDARD, Appointment, Caller, Engine, Gather, Turn
from .menu import Menu, MenuError, load_menu

__all__ = [
    "STANDARD",
    "Appointment",
    "Call",
    "Caller",
    "Engine",
    "Gather",
    "IvrCalls",
    "Menu",
    "MenuError",
    "Turn",
    "load_menu",
    "menu_for",
    "prm_touchpoints",
    "prm_value_providers",
]


def menu_for(config: Config) -> Menu:
    """The menu ``[touchpoints.ivr] menu`` names (relative to the config file), or the built-in one."""
    path = config.touchpoint(TOUCHPOINT).get("menu")
    if path is None:
        return load_menu()
    if not isinstance(path, str) or not path:
        raise MenuError("[touchpoints.ivr].menu must be the path of a TOML or JSON menu file")
    file = Path(path)
    if not file.is_absolute() and config.source is not None:
        file = config.source.parent / file
    return load_menu(file)


async def _appointment(request: ValueRequest) -> Mapping[str, Any]:
    if request.touchpoint.name != TOUCHPOINT:
        return {}
    found = appointment_of(request.view.sections.get("fulfillments", []), utcnow())
    if found is None:
        return {}
    return {"appointment": {"window_start": found.window_start.isoformat(), "window_end": found.window_end.isoformat()}}


@hookimpl
def prm_touchpoints(config: Config) -> list[TouchPoint]:
    settings = config.touchpoint(TOUCHPOINT)
    menu_for(config)  # a bad menu stops the hub here, naming the node
    return [
        TouchPoint(
            name=TOUCHPOINT,
            channel="ivr",
            budget_ms=int(settings.get("budget_ms", 1500)),
            description=__doc__.split("\n", 1)[0],
        )
    ]


@hookimpl
def prm_value_providers(config: Config) -> list[ValueProvider]:
    return [
        ValueProvider(
            name="ivr",
            about="customer",
            provide=_appointment,
            description="the caller's next technician window, for the IVR",
            touchpoints=frozenset({TOUCHPOINT}),
        )
    ]


@hookimpl
def prm_event_labels(config: Config) -> dict[str, str]:
    """The phone menu's events in words, for the agent who takes the call after it."""
    return {
        "ivr.call.started": "called the phone menu",
        "ivr.menu": "heard the menu",
        "ivr.input": "pressed",
        "ivr.transferred": "asked for an agent",
        "ivr.ended": "hung up in the phone menu",
    }
