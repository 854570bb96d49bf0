"""The call center: each call a dialogue, answered with what the agent should know.

Registers the ``callcenter`` touch point; its budget is ``[touchpoints.callcenter] budget_ms``
(default 1000 ms).
"""

from __future__ import annotations

from prm_core import hookimpl
from prm_core.config import Config
from prm_core.model import TouchPoint

__all__ = ["prm_touchpoints"]


@hookimpl
def prm_touchpoints(config: Config) -> list[TouchPoint]:
    settings = config.touchpoint("callcenter")
    return [
        TouchPoint(
            name="callcenter",
            channel="voice",
            budget_ms=int(settings.get("budget_ms", 1000)),
            description=__doc__.split("\n", 1)[0],
        )
    ]
