"""The web portal and site: page views, tracked actions, portal requests.

Registers the ``web`` touch point; its budget is ``[touchpoints.web] budget_ms``
(default 250 ms). A visit ends after ``session_timeout_minutes`` (default 30) of
inactivity; each visit is one dialogue.
"""

from __future__ import annotations

from datetime import timedelta

from prm_core import hookimpl
from prm_core.config import Config
from prm_core.model import TouchPoint

__all__ = ["prm_touchpoints"]


@hookimpl
def prm_touchpoints(config: Config) -> list[TouchPoint]:
    settings = config.touchpoint("web")
    minutes = settings.get("session_timeout_minutes", 30)
    return [
        TouchPoint(
            name="web",
            channel="web",
            budget_ms=int(settings.get("budget_ms", 250)),
            dialogue_timeout=timedelta(minutes=minutes),
            description=__doc__.split("\n", 1)[0],
        )
    ]
