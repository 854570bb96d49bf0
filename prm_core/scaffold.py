"""``prm new-plugin NAME [--channel C]``: a touch-point plugin distribution that passes its
tests as generated.

The touch point's channel is ``--channel``, or the name itself when it names a channel
(``prm new-plugin kiosk``); it must be one of :data:`prm_core.model.CHANNELS`, because consent
is recorded per purpose and channel and a touch point is held to the consents of its channel.
The files written here are the code of ``docs/plugins.md``; a test keeps the two the same.
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

from .model import CHANNELS

__all__ = ["TEMPLATES", "channel_for", "check_name", "render", "write_plugin"]

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}$")

TEMPLATES: dict[str, str] = {
    "pyproject.toml": """\
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "prm-$name"
version = "0.1.0"
description = "The $name touch point for the PRM hub"
requires-python = ">=3.11"
dependencies = ["prm-hub"]

[project.optional-dependencies]
test = ["prm-hub[plugin-test]"]

# the hub finds the plugin through this entry point, as it finds its own
[project.entry-points.prm]
$name = "$package"

[tool.setuptools.packages.find]
where = ["src"]

[tool.pytest.ini_options]
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "function"
""",
    "src/$package/__init__.py": '''\
"""The $name touch point: visits reported as ``{"visits": [{"visit_id", "email", "at"}]}``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from prm_core.plugin import HUB, Config, InvalidInput, TouchPoint, hookimpl, ingest, read_json, require

NAME = "$name"


def to_event(visit: Any) -> Any:
    """One visit in the hub's Event format (the hub validates it and names bad fields)."""
    if not isinstance(visit, dict):
        return visit
    return {
        "id": visit.get("visit_id"),
        "type": "$name.visit",
        "occurred_at": visit.get("at"),
        "identities": {"email": visit.get("email")},
    }


async def post_visits(request: web.Request) -> web.Response:
    """Record visits; answers once they are durable."""
    await require(request, f"touchpoint:{NAME}")
    body = await read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("visits"), list):
        raise InvalidInput('the body must be {"visits": [...]}', "visits")
    hub = request.app[HUB]
    events = hub.parse_events({"events": [to_event(v) for v in body["visits"]]}, NAME)
    recorded = await ingest(request, events)
    duplicates = sum(1 for r in recorded if r.duplicate)
    return web.json_response({"accepted": len(recorded) - duplicates, "duplicates": duplicates})


@hookimpl
def prm_touchpoints(config: Config) -> list[TouchPoint]:
    settings = config.touchpoint(NAME)
    return [
        TouchPoint(
            name=NAME,
            channel="$channel",
            budget_ms=int(settings.get("budget_ms", 400)),
            description="Visits reported by the $name",
            routes=[web.post(f"/v1/touchpoints/{NAME}/visits", post_visits)],
        )
    ]
''',
    "tests/conftest.py": """\
pytest_plugins = ["prm_core.testing"]
""",
    "tests/test_$name.py": """\
from __future__ import annotations

from prm_core.testing.conformance import TouchPointConformance

PATH = "/v1/touchpoints/$name/visits"


class TestConformance(TouchPointConformance):
    touchpoint = "$name"

    async def send_events(self, client, key, batch):
        visits = [{"visit_id": e["id"], "email": e["identities"]["email"], "at": e["occurred_at"]} for e in batch]
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return await client.post(PATH, json={"visits": visits}, headers=headers)

    async def send_raw(self, client, key, body):
        return await client.post(PATH, data=body, headers={"Authorization": f"Bearer {key}"})

    async def forge(self, client, batch):
        return await client.post(PATH, json={"visits": []}, headers={"Authorization": "Bearer prm_0_forged"})


async def test_a_visit_lands_on_the_customer(hub_client, make_key):
    key = await make_key("touchpoint:$name")
    visit = {"visit_id": "v1", "email": "Ann@Example.com", "at": "2026-11-23T09:00:00Z"}
    resp = await hub_client.post(PATH, json={"visits": [visit]}, headers={"Authorization": f"Bearer {key}"})
    assert await resp.json() == {"accepted": 1, "duplicates": 0}
    read = await make_key("read")
    view = await hub_client.get("/v1/customers/email:ann@example.com", headers={"Authorization": f"Bearer {read}"})
    assert [t["type"] for t in (await view.json())["timeline"]] == ["$name.visit"]
""",
    "README.md": """\
# prm-$name

The $name touch point for the PRM hub.

    pip install -e '.[test]' && pytest      # its tests, the hub's conformance suite included
    pip install -e . && prm plugins         # the hub now lists it
""",
}


def check_name(name: str) -> str:
    """``name`` when it can name a plugin (its package is ``prm_<name>``), else a :class:`ValueError`."""
    if not _NAME.match(name):
        raise ValueError("a plugin name is lower-case letters, digits and '_', starting with a letter")
    return name


def channel_for(name: str, channel: str | None = None) -> str:
    """The channel of plugin ``name``: ``channel`` when given, else the name when it is a
    channel; a :class:`ValueError` listing the channels otherwise."""
    allowed = ", ".join(sorted(CHANNELS))
    if channel is None:
        if name in CHANNELS:
            return name
        raise ValueError(f"{name!r} is not a channel: choose the touch point's channel with --channel ({allowed})")
    if channel not in CHANNELS:
        raise ValueError(f"the channel must be one of {allowed}, not {channel!r}")
    return channel


def render(name: str, channel: str | None = None) -> dict[str, str]:
    """The files of plugin ``name`` on ``channel`` (see :func:`channel_for`): relative path -> content."""
    values = {"name": check_name(name), "package": f"prm_{name}", "channel": channel_for(name, channel)}
    return {Template(path).substitute(values): Template(text).substitute(values) for path, text in TEMPLATES.items()}


def write_plugin(name: str, directory: Path, channel: str | None = None) -> Path:
    """Write plugin ``name`` into ``directory/prm-<name>``; refuses to overwrite anything."""
    files = render(name, channel)
    root = directory / f"prm-{name}"
    if root.exists():
        raise FileExistsError(f"{root} already exists")
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root
