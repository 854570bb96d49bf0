"""HTTP routes of triggers: list, create or replace, read with results, pause and resume (scope admin)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.engine import Connection

from ..errors import InvalidInput, NotFound
from ..server.auth import require
from ..server.errors import ApiError
from ..server.routes import AUTH_ERRORS, api, read_json
from ..server.state import HUB
from ..store.tables import triggers, utcnow
from ..surveys.links import check_survey_links
from .definitions import parse_trigger
from .registry import Conflict, check_touchpoints, save_trigger, set_paused
from .runs import results

__all__ = ["trigger_routes"]

routes = web.RouteTableDef()
WRITE = {400: "Malformed JSON", 422: "Invalid field; `field` names it", **AUTH_ERRORS}


def _shown(row: Any, runs: dict[str, Any] | None = None) -> dict[str, Any]:
    out = {"name": row.name, **row.definition, "source": row.source, "paused": bool(row.paused)}
    if runs is not None:
        out["results"] = runs
    return out


@routes.get("/v1/triggers")
@api(
    "Every trigger, configured or made through the API, with whether it is paused",
    scope="admin",
    responses={200: '{"triggers": [...]}', **AUTH_ERRORS},
)
async def get_triggers(request: web.Request) -> web.Response:
    await require(request, "admin")

    def read(conn: Connection) -> list[dict[str, Any]]:
        return [_shown(r) for r in conn.execute(sa.select(triggers).order_by(triggers.c.name))]

    return web.json_response({"triggers": await request.app[HUB].store.read(read)})


@routes.post("/v1/triggers")
@api(
    "Create or replace a trigger (docs/triggers.md); one configured in [triggers.NAME] is changed there",
    scope="admin",
    body={"type": "object", "required": ["name", "on"], "properties": {"name": {}, "on": {}}},
    responses={201: "Trigger (new)", 200: "Trigger (replaced)", 409: "Configured in the config file", **WRITE},
)
async def post_trigger(request: web.Request) -> web.Response:
    await require(request, "admin")
    body = await read_json(request)
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object", None)
    name = body.pop("name", None)
    if not isinstance(name, str):
        raise InvalidInput("name must be 1-64 lower-case letters, digits, - and _", "name")
    trigger = parse_trigger(name, body, config=False)
    hub = request.app[HUB]
    check_touchpoints(trigger, hub.triggers.settings, hub.registrations.touchpoints.names(), config=False)
    check_survey_links(trigger, hub.surveys.settings, config=False)
    try:
        new = await hub.store.write(lambda conn: save_trigger(conn, trigger, utcnow()))
    except Conflict as exc:
        raise ApiError(409, "conflict", str(exc), "name") from None
    await hub.triggers.reload()
    shown = {**trigger.to_json(), "source": "api", "paused": name in hub.triggers.paused}
    return web.json_response(shown, status=201 if new else 200)


@routes.get("/v1/triggers/{name}")
@api(
    "One trigger with its results: runs by status, and conversion of the customers it acted for and held out",
    scope="admin",
    responses={200: "Trigger", 404: "No such trigger", **AUTH_ERRORS},
)
async def get_trigger(request: web.Request) -> web.Response:
    await require(request, "admin")
    name = request.match_info["name"]

    def read(conn: Connection) -> dict[str, Any]:
        row = conn.execute(sa.select(triggers).where(triggers.c.name == name)).first()
        if row is None:
            raise NotFound(f"no trigger {name!r}")
        return _shown(row, results(conn, name))

    return web.json_response(await request.app[HUB].store.read(read))


async def _pause(request: web.Request, paused: bool) -> web.Response:
    await require(request, "admin")
    name = request.match_info["name"]
    hub = request.app[HUB]
    await hub.store.write(lambda conn: set_paused(conn, name, paused, utcnow()))
    await hub.triggers.reload()

    def read(conn: Connection) -> dict[str, Any]:
        return _shown(conn.execute(sa.select(triggers).where(triggers.c.name == name)).one())

    return web.json_response(await hub.store.read(read))


@routes.post("/v1/triggers/{name}/pause")
@api(
    "Pause a trigger: no new runs, and its pending runs wait",
    scope="admin",
    responses={200: "Trigger", 404: "No such trigger", **AUTH_ERRORS},
)
async def pause_trigger(request: web.Request) -> web.Response:
    return await _pause(request, True)


@routes.post("/v1/triggers/{name}/resume")
@api(
    "Resume a paused trigger: its pending runs go on, and new changes start runs again",
    scope="admin",
    responses={200: "Trigger", 404: "No such trigger", **AUTH_ERRORS},
)
async def resume_trigger(request: web.Request) -> web.Response:
    return await _pause(request, False)


def trigger_routes() -> web.RouteTableDef:
    return routes
