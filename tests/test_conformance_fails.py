"""The conformance suite fails, saying what to fix, for plugins that get things wrong."""

from __future__ import annotations

BROKEN = """
import structlog
from aiohttp import web

from prm_core import hookimpl
from prm_core.model import TouchPoint
from prm_core.server.state import HUB
from prm_core.testing.conformance import TouchPointConformance

log = structlog.get_logger()


async def open_door(request):
    body = await request.json()
    # wrong twice over: no key is checked, and the payload is logged
    log.info("door opened", payload=str(body))
    hub = request.app[HUB]
    await hub.record(hub.parse_events(body, "door"))
    return web.json_response({"ok": True})


class Door:
    @hookimpl
    def prm_touchpoints(self, config):
        yield TouchPoint(name="door", channel="kiosk", budget_ms=200, description="a door",
                         routes=[web.post("/v1/touchpoints/door/open", open_door)])


class TestDoor(TouchPointConformance):
    touchpoint = "door"
    plugins = (Door(),)

    async def send_events(self, client, key, batch):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return await client.post("/v1/touchpoints/door/open", json={"events": batch}, headers=headers)
"""


def test_a_broken_plugin_fails_with_messages_that_say_what_to_fix(pytester):
    pytester.makeconftest('pytest_plugins = ["prm_core.testing"]')
    pytester.makepyfile(test_door=BROKEN)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-k", "sqlite", "-o", "asyncio_mode=auto")
    result.assert_outcomes(passed=4, failed=3)
    result.stdout.fnmatch_lines(
        [
            "*answered 200 without credentials: every route that writes must check a scoped key*",
            "*without credentials the touch point answered 200, not 401*",
            "*personal data (first_name, last_name) appeared in the logs*",
        ]
    )
