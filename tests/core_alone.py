"""The core used alone: what a platform team embedding the hub runs after installing only
``requirements/core.txt`` and the distribution without its dependencies (README.md)::

    pip install -r requirements/core.txt && pip install --no-deps .
    python tests/core_alone.py

It imports ``prm_core``, opens a hub on a throw-away SQLite file with a touch point of its own and no entry-point
plugin, records an event and reads the customer's view back, then loads every installed
plugin (those whose vendor SDK is missing are skipped, one line each). It exits non-zero,
saying why, when anything fails or when the core imported a package of
``requirements/plugins.txt``.

``tox -e core`` runs it in an environment holding the core's dependencies only;
``tests/test_packaging.py`` runs it with those packages made unimportable.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from datetime import UTC, datetime

# the importable names of requirements/plugins.txt: none may be needed by the core
NOT_CORE = ("twilio", "panoramisk", "lxml", "cloudevents", "aiosmtplib", "jinja2", "numpy", "scipy")


async def main() -> None:
    import prm_core
    from prm_core import hookimpl
    from prm_core.config import Config
    from prm_core.hub import Hub
    from prm_core.model import TouchPoint
    from prm_core.plugins import make_plugin_manager

    class Kiosk:
        __name__ = "kiosk"

        @hookimpl
        def prm_touchpoints(self) -> list[TouchPoint]:
            return [TouchPoint(name="kiosk", channel="kiosk", budget_ms=400)]

    with tempfile.TemporaryDirectory() as tmp:
        config = Config(database_url=f"sqlite:///{tmp}/core.db")
        # the core alone: no entry-point plugin, a touch point given in code
        async with Hub.open(config, plugins=[Kiosk()], autoload=False) as hub:
            body = {
                "id": "core-alone-1",
                "type": "visit",
                "occurred_at": datetime.now(UTC).isoformat(),
                "identities": {"email": "someone@example.com"},
            }
            events = hub.parse_events(body, "kiosk")
            (recorded,) = await hub.record(events)
            view = await hub.view(recorded.customer_id)
    if view.metrics["event_count"] != 1:
        raise SystemExit(f"the view does not show the event recorded: {view.metrics}")
    imported = sorted(name for name in NOT_CORE if sys.modules.get(name) is not None)
    if imported:
        raise SystemExit(f"the core imported {', '.join(imported)}, which requirements/core.txt does not hold")
    # then every installed plugin: those whose package is missing are skipped, one line each
    skipped = sorted(make_plugin_manager().skipped)
    print(f"prm_core {prm_core.__version__}: a hub opened, recorded and answered the view; skipped: {skipped}")


if __name__ == "__main__":
    asyncio.run(main())
