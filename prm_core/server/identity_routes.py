"""The identity review routes: conflicts between identity rules and events, and the preview."""

from __future__ import annotations

from aiohttp import web

from ..errors import InvalidInput
from ..identity_review import RESOLUTIONS, list_conflicts, preview, resolve_conflict
from .auth import require
from .routes import AUTH_ERRORS, api, read_json
from .state import HUB

__all__ = ["identity_routes"]

routes = web.RouteTableDef()


@routes.get("/v1/identity/conflicts")
@api(
    "Events that would have broken an identity limit, oldest first (?status=open|merged|split|dismissed,"
    " ?limit=1..1000, default 100)",
    scope="admin",
    responses={200: '{"conflicts": [...]}', 422: "Unknown status or bad limit", **AUTH_ERRORS},
)
async def get_conflicts(request: web.Request) -> web.Response:
    await require(request, "admin")
    status = request.query.get("status", "open")
    raw = request.query.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise InvalidInput("limit must be a whole number from 1 to 1000", "limit")
    conflicts = await list_conflicts(request.app[HUB], status=status, limit=int(raw))
    return web.json_response({"conflicts": conflicts})


@routes.post("/v1/identity/conflicts/{conflict_id}")
@api(
    "Resolve an identity conflict: merge the customers, split the identities left out off, or dismiss it",
    scope="admin",
    body={"type": "object", "required": ["resolution"], "properties": {"resolution": {"enum": list(RESOLUTIONS)}}},
    responses={
        200: "The conflict, resolved",
        400: "Malformed JSON",
        404: "No such conflict",
        422: "Unknown resolution, or the conflict is resolved already",
        **AUTH_ERRORS,
    },
)
async def post_conflict(request: web.Request) -> web.Response:
    await require(request, "admin")
    body = await read_json(request)
    if not isinstance(body, dict):
        raise InvalidInput(f"resolution must be one of {', '.join(RESOLUTIONS)}", "resolution")
    hub = request.app[HUB]
    return web.json_response(await resolve_conflict(hub, request.match_info["conflict_id"], body.get("resolution")))


@routes.post("/v1/identity/preview")
@api(
    "What an event naming these identities would do (customers, merges, the rule that fires); writes nothing",
    scope="admin",
    body={"type": "object", "required": ["identities"], "properties": {"identities": {"type": "object"}}},
    responses={200: "The preview", 400: "Malformed JSON", 422: "Invalid identities; `field` names it", **AUTH_ERRORS},
)
async def post_preview(request: web.Request) -> web.Response:
    await require(request, "admin")
    body = await read_json(request)
    if not isinstance(body, dict):
        raise InvalidInput("identities must be a non-empty object of namespace: value", "identities")
    return web.json_response(await preview(request.app[HUB], body.get("identities")))


def identity_routes() -> web.RouteTableDef:
    """The routes above, for :func:`prm_core.server.app.create_app`."""
    return routes
