"""``/openapi.json``, built from what is actually mounted.

Core handlers describe themselves with ``@api``; a touch point's own routes are listed
with their handler's docstring and the touch point that mounted them.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import __version__

__all__ = ["build_openapi"]

EVENT = {
    "type": "object",
    "required": ["id", "type", "occurred_at"],
    "properties": {
        "id": {"type": "string", "maxLength": 200, "description": "idempotency key, unique per touch point"},
        "type": {"type": "string", "maxLength": 100},
        "occurred_at": {"type": "string", "format": "date-time"},
        "sent_at": {"type": "string", "format": "date-time", "description": "client clock at send, for skew"},
        "identities": {"type": "object", "additionalProperties": {"type": "string"}},
        "dialogue": {"type": "string", "maxLength": 200},
        "direction": {"enum": ["inbound", "outbound"]},
        "data": {"type": "object"},
    },
}
ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": ["string", "null"], "description": "the field at fault, when there is one"},
            },
        }
    },
}
ACCEPTED = {
    "type": "object",
    "required": ["accepted", "duplicates"],
    "properties": {
        "accepted": {"type": "integer", "minimum": 0},
        "duplicates": {"type": "integer", "minimum": 0},
        # with [ingest] journal = true: the journal position to read after (GET /v1/customers/{ref}?after=)
        "position": {"type": "string", "pattern": "^[0-9]+$"},
    },
}
ANSWER = {
    "type": "object",
    "required": ["customer_id", "dialogue_id", "delivery", "elapsed_ms", "budget_ms", "degraded"],
    "properties": {
        "customer_id": {"type": "string"},
        "dialogue_id": {"type": "string"},
        "delivery": {"type": "object", "description": "rendered by the touch point (JSON by default)"},
        "elapsed_ms": {"type": "number", "minimum": 0},
        "budget_ms": {"type": "integer", "minimum": 1},
        "degraded": {"type": "array", "items": {"type": "string"}},
    },
}
CUSTOMER_VIEW = {
    "type": "object",
    "required": ["id", "kind", "tier", "traits", "identities", "timeline", "dialogues", "metrics", "memberships"],
    "properties": {
        "id": {"type": "string"},
        "kind": {"enum": ["person", "organization", "group"]},
        "tier": {"type": ["string", "null"]},
        "traits": {"type": "object"},
        "identities": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["namespace", "value"],
                "properties": {"namespace": {"type": "string"}, "value": {"type": "string"}},
            },
        },
        "timeline": {"type": "array", "items": {"type": "object"}},
        "next_cursor": {"type": ["string", "null"]},
        "dialogues": {"type": "array", "items": {"type": "object"}},
        "metrics": {"type": "object"},
        "memberships": {"type": "array"},
        "consents": {"type": "array"},
        "offers": {"type": "array"},
    },
}
SCHEMAS = {"Event": EVENT, "Error": ERROR, "Accepted": ACCEPTED, "Answer": ANSWER, "CustomerView": CUSTOMER_VIEW}


def _operation(route: web.AbstractRoute, owner: str | None) -> dict[str, Any]:
    handler = route.handler
    meta: dict[str, Any] | None = getattr(handler, "__prm_api__", None)
    if meta is None:
        doc = (handler.__doc__ or "").strip().split("\n", 1)[0] or handler.__name__
        op: dict[str, Any] = {"summary": doc, "responses": {"200": {"description": "OK"}}}
        if owner:
            op["tags"] = [f"touchpoint:{owner}"]
        if handler.__doc__ and "\n" in handler.__doc__.strip():
            op["description"] = handler.__doc__.strip().split("\n", 1)[1].strip()
        return op
    op = {"summary": meta["summary"], "responses": {}}
    shapes: dict[int, str] = meta.get("shapes") or {}
    for status, text in meta["responses"].items():
        response: dict[str, Any] = {"description": text}
        if status >= 400:
            response["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        elif status in shapes:
            response["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{shapes[status]}"}}}
        op["responses"][str(status)] = response
    if meta["scope"]:
        op["security"] = [{"bearer": []}, {"basic": []}]
        op["x-prm-scope"] = meta["scope"]
    if meta.get("public"):
        op["x-prm-public-keys"] = True  # a public (browser) key of a touch point that has them will do
    if meta["body"]:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": meta["body"]}}}
    params = [
        {"name": name, "in": "query", "required": False, "description": text, "schema": {"type": "string"}}
        for name, text in meta["params"].items()
    ]
    if params:
        op["parameters"] = params
    return op


def _param_schema(values: list[str] | None) -> dict[str, Any]:
    return {"type": "string", "enum": values} if values else {"type": "string"}


def build_openapi(
    app: web.Application, owners: dict[str, str], *, enums: dict[str, list[str]] | None = None
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route mounted on ``app``; ``enums`` lists the values a
    path parameter may take (``tp``: the registered touch points)."""
    enums = enums or {}
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        path = route.resource.canonical
        op = _operation(route, owners.get(path))
        path_params = [seg[1:-1].split(":")[0] for seg in path.split("/") if seg.startswith("{")]
        if path_params:
            # a handler's ``params`` may describe a path parameter too: one entry, in the path
            described = {p["name"]: p["description"] for p in op.get("parameters", []) if p["name"] in path_params}
            query = [p for p in op.get("parameters", []) if p["name"] not in path_params]
            op["parameters"] = [
                {
                    "name": p, "in": "path", "required": True, "schema": _param_schema(enums.get(p)),
                    **({"description": described[p]} if p in described else {}),
                }
                for p in path_params
            ] + query  # fmt: skip
        paths.setdefault(path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "PRM hub", "version": __version__},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic", "description": "the key as user name, empty password"},
            },
        },
    }
