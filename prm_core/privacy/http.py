"""The privacy routes: consents by an admin, erasure, export."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.engine import Connection

from ..errors import InvalidInput, NotFound
from ..identity import parse_ref
from ..server.auth import require
from ..server.routes import AUTH_ERRORS, api, read_json
from ..server.state import HUB
from ..store.tables import utcnow
from ..view import resolve_ref
from .consents import load_consents, parse_consent_changes, write_consents
from .erasure import erase_customer, lock_customer
from .export import export_chunks
from .tombstones import lift_tombstone

__all__ = ["privacy_routes"]

routes = web.RouteTableDef()


@routes.put("/v1/customers/{ref}/consents")
@api(
    "Record consent decisions for a customer (source defaults to admin); answers the current consents",
    scope="admin",
    body={
        "type": "object",
        "required": ["consents"],
        "properties": {
            "consents": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["purpose", "granted"],
                    "properties": {
                        "purpose": {"enum": ["personalization", "marketing", "partner_sharing"]},
                        "channel": {"type": "string"},
                        "granted": {"type": "boolean"},
                        "source": {"type": "string"},
                    },
                },
            }
        },
    },
    responses={
        200: '{"consents": [...]}',
        400: "Malformed JSON",
        404: "No such customer",
        422: "Invalid consent; `field` names it",
        **AUTH_ERRORS,
    },
)
async def put_consents(request: web.Request) -> web.Response:
    await require(request, "admin")
    changes = parse_consent_changes(await read_json(request))
    hub = request.app[HUB]
    namespaces = hub.registrations.namespaces.items
    ref, now = request.match_info["ref"], utcnow()

    def write(conn: Connection) -> list[dict[str, object]]:
        cid = lock_customer(conn, resolve_ref(conn, ref, namespaces, hub.config.default_region))
        write_consents(conn, cid, changes, now)
        return list(load_consents(conn, cid))

    return web.json_response({"consents": await hub.store.write(write)})


@routes.delete("/v1/customers/{ref}")
@api(
    "Erase a customer: personal data removed, identities tombstoned, aggregates kept anonymous",
    scope="admin",
    responses={
        200: '{"customer_id", "erased_ids", "identities", "events", "incomplete"}',
        404: "No such customer",
        422: "Bad ref",
        **AUTH_ERRORS,
    },
)
async def delete_customer(request: web.Request) -> web.Response:
    key = await require(request, "admin")
    erasure = await erase_customer(request.app[HUB], request.match_info["ref"], erased_by=key.id)
    return web.json_response(erasure.to_json())


@routes.get("/v1/customers/{ref}/export")
@api(
    "Everything held about a customer as one JSON document (streamed)",
    scope="admin",
    responses={
        200: '{"customer", "identities", "consents", "memberships", "merges", "metrics", "events", "dialogues", ...}',
        404: "No such customer",
        422: "Bad ref",
        **AUTH_ERRORS,
    },
)
async def get_export(request: web.Request) -> web.StreamResponse:
    await require(request, "admin")
    chunks = await export_chunks(request.app[HUB], request.match_info["ref"])
    response = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
    await response.prepare(request)
    async for chunk in chunks:
        await response.write(chunk)
    await response.write_eof()
    return response


@routes.delete("/v1/tombstones/{ref}")
@api(
    "Lift the tombstone of an erased identity (namespace:value), so it may be recorded again",
    scope="admin",
    responses={200: '{"lifted": true}', 404: "No tombstone for that identity", 422: "Bad ref", **AUTH_ERRORS},
)
async def delete_tombstone(request: web.Request) -> web.Response:
    await require(request, "admin")
    hub = request.app[HUB]
    ref = request.match_info["ref"]
    if ":" not in ref:
        raise InvalidInput("ref must be namespace:value", "ref")
    ident = parse_ref(ref, hub.registrations.namespaces.items, hub.config.default_region)
    key = hub.ingestor.rules.tombstone_key or b""
    found = await hub.store.write(lambda conn: lift_tombstone(conn, key, ident))
    if not found:
        raise NotFound("no tombstone for that identity")
    return web.json_response({"lifted": True})


def privacy_routes() -> web.RouteTableDef:
    return routes
