"""The interactive voice response system: each call a dialogue of menu turns.

Registers the ``ivr`` touch point; its budget is ``[touchpoints.ivr] budget_ms``
(default 1500 ms).
"""

from __future__ import annotations

from prm_core import hookimpl
from prm_core.config import Config
from prm_core.model import TouchPoint

__all__ = ["prm_touchpoints"]


@hookimpl
def prm_touchpoints(config: Config) -> list[TouchPoint]:
    settings = config.touchpoint("ivr")
    return [
        TouchPoint(
            name="ivr",
            channel="ivr",
            budget_ms=int(settings.get("budget_ms", 1500)),
            description=__doc__.split("\n", 1)[0],
        )
    ]
