"""HTTP routes of relationship planning: segments, campaigns, knowledge, the scorecard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy.engine import Connection

from ..errors import InvalidInput
from ..server.auth import require
from ..server.routes import AUTH_ERRORS, api, read_json
from ..server.state import HUB
from ..store.tables import utcnow
from .campaigns import campaign_results, get_campaign, parse_campaign, parse_cost, save_campaign
from .knowledge import knowledge_registry
from .scorecard import scorecard
from .segments import delete_segment, get_segment, list_segments, members, parse_segment, save_segment

__all__ = ["planning_routes"]

routes = web.RouteTableDef()
WRITE = {400: "Malformed JSON", 422: "Invalid field; `field` names it", **AUTH_ERRORS}


async def _object(request: web.Request) -> dict[str, Any]:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object", None)
    return body


def _int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name, str(default))
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise InvalidInput(f"{name} must be a whole number from {low} to {high}", name)
    return int(raw)


@routes.post("/v1/segments")
@api(
    "Save a segment: a rule in the planning rules language (docs/planning.md); replaces one of the same name",
    scope="admin",
    body={"type": "object", "required": ["name", "rule"], "properties": {"name": {}, "rule": {}, "description": {}}},
    responses={201: "Segment (new)", 200: "Segment (replaced)", **WRITE},
)
async def post_segment(request: web.Request) -> web.Response:
    await require(request, "admin")
    name, rule, description = parse_segment(await _object(request))
    hub = request.app[HUB]
    segment, new = await hub.store.write(lambda conn: save_segment(conn, name, rule, description, utcnow()))
    hub.planner.forget_campaigns()
    return web.json_response(segment.to_json(), status=201 if new else 200)


@routes.get("/v1/segments")
@api("Saved segments", scope="read", responses={200: '{"segments": [...]}', **AUTH_ERRORS})
async def get_segments(request: web.Request) -> web.Response:
    await require(request, "read")
    found = await request.app[HUB].store.read(list_segments)
    return web.json_response({"segments": [s.to_json() for s in found]})


@routes.get("/v1/segments/{name}")
@api("One segment", scope="read", responses={200: "Segment", 404: "No such segment", **AUTH_ERRORS})
async def get_one_segment(request: web.Request) -> web.Response:
    await require(request, "read")
    name = request.match_info["name"]
    segment = await request.app[HUB].store.read(lambda conn: get_segment(conn, name))
    return web.json_response(segment.to_json())


@routes.delete("/v1/segments/{name}")
@api("Delete a segment", scope="admin", responses={204: "Deleted", 404: "No such segment", **AUTH_ERRORS})
async def delete_one_segment(request: web.Request) -> web.Response:
    await require(request, "admin")
    name = request.match_info["name"]
    hub = request.app[HUB]
    await hub.store.write(lambda conn: delete_segment(conn, name))
    hub.planner.forget_campaigns()
    return web.Response(status=204)


@routes.get("/v1/segments/{name}/members")
@api(
    "The customers a segment matches now, paged by customer id",
    scope="read",
    params={"cursor": "next_cursor of the previous page", "limit": "page size, 1-200 (50)"},
    responses={200: '{"members": [...], "next_cursor"}', 404: "No such segment", **AUTH_ERRORS},
)
async def get_members(request: web.Request) -> web.Response:
    await require(request, "read")
    name = request.match_info["name"]
    limit = _int(request, "limit", 50, 1, 200)
    after = request.query.get("cursor", "")
    hub = request.app[HUB]

    def read(conn: Connection) -> tuple[list[dict[str, Any]], str | None]:
        segment = get_segment(conn, name)
        return members(conn, hub.planner, segment, after=after, limit=limit, now=utcnow())

    found, cursor = await hub.store.read(read)
    return web.json_response({"segment": name, "members": found, "next_cursor": cursor})


@routes.post("/v1/campaigns")
@api(
    "Save a campaign: segment, offer, touch points, start and end, control group percent",
    scope="admin",
    body={
        "type": "object",
        "required": ["name", "segment", "offer", "starts_at", "ends_at"],
        "properties": {
            "name": {},
            "segment": {},
            "offer": {"type": "object"},
            "touchpoints": {"type": "array"},
            "starts_at": {},
            "ends_at": {},
            "control_percent": {"type": "integer"},
        },
    },
    responses={201: "Campaign (new)", 200: "Campaign (replaced)", 404: "No such segment", **WRITE},
)
async def post_campaign(request: web.Request) -> web.Response:
    await require(request, "admin")
    campaign = parse_campaign(await _object(request))
    hub = request.app[HUB]
    unknown = [t for t in campaign.touchpoints if t not in hub.registrations.touchpoints]
    if unknown:
        raise InvalidInput(f"no touch point {unknown[0]!r}", "touchpoints")
    new = await hub.store.write(lambda conn: save_campaign(conn, campaign, utcnow()))
    hub.planner.forget_campaigns()
    return web.json_response(campaign.to_json(), status=201 if new else 200)


@routes.get("/v1/campaigns/{name}")
@api(
    "A campaign with its results: offers made, responses, conversions of treated and control, lift with its"
    " 95% interval, revenue per customer; ?cost=&currency= adds the return on that cost",
    scope="read",
    responses={200: "Campaign with results", 404: "No such campaign", 422: "Bad cost or currency", **AUTH_ERRORS},
)
async def get_one_campaign(request: web.Request) -> web.Response:
    await require(request, "read")
    name = request.match_info["name"]
    cost = parse_cost(request.query.get("cost"), request.query.get("currency"))

    def read(conn: Connection) -> dict[str, Any]:
        return get_campaign(conn, name).to_json() | {"results": campaign_results(conn, name, cost, hub.planner.money)}

    hub = request.app[HUB]
    return web.json_response(await hub.store.read(read))


@routes.get("/v1/knowledge")
@api(
    "Knowledge artifacts: every value provider, what it is about and the touch points using it",
    scope="read",
    responses={200: '{"knowledge": [...]}', **AUTH_ERRORS},
)
async def get_knowledge(request: web.Request) -> web.Response:
    await require(request, "read")
    hub = request.app[HUB]
    return web.json_response({"knowledge": knowledge_registry(hub.config, hub.registrations)})


@routes.get("/v1/scorecard")
@api(
    "Touch point value scorecard and balanced-scorecard figures",
    scope="read",
    params={"days": "period in days ending today, 1-366 (30)"},
    responses={
        200: "Scorecard; revenue figures are in `currency` ([money] reporting_currency), null with their"
        " amounts per currency when some are in a currency without a rate (listed in `mixed_currencies`)",
        **AUTH_ERRORS,
    },
)
async def get_scorecard(request: web.Request) -> web.Response:
    await require(request, "read")
    days = _int(request, "days", 30, 1, 366)
    hub = request.app[HUB]
    names = hub.registrations.touchpoints.names()
    money = hub.planner.money
    card = await hub.store.read(lambda conn: scorecard(conn, names, utcnow(), days=days, money=money))
    return web.json_response(card)


CONSOLE = Path(__file__).with_name("console.html")


@routes.get("/console")
@api(
    "The console page: scorecards and a customer's 360 view; it asks for a read key and sends it as a Bearer header",
    scope=None,
    responses={200: "text/html"},
)
async def get_console(request: web.Request) -> web.Response:
    # the page holds no data: everything it shows comes from the read-scoped API with the key typed in
    return web.Response(
        body=CONSOLE.read_bytes(),
        content_type="text/html",
        headers={
            "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
        },
    )


def planning_routes() -> web.RouteTableDef:
    return routes
