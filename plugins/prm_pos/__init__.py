"""The store's point of sale: each transaction a dialogue, answered with receipt offers.

Registers the ``pos`` touch point; its budget is ``[touchpoints.pos] budget_ms``
(default 300 ms).
"""

from __future__ import annotations

from prm_core import hookimpl
from prm_core.config import Config
from prm_core.model import TouchPoint

__all__ = ["prm_touchpoints"]


@hookimpl
def prm_touchpoints(config: Config) -> list[TouchPoint]:
    settings = config.touchpoint("pos")
    return [
        TouchPoint(
            name="pos",
            channel="store",
            budget_ms=int(settings.get("budget_ms", 300)),
            description=__doc__.split("\n", 1)[0],
        )
    ]
