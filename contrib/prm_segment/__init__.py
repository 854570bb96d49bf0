"""Segment / RudderStack tracking API on the web touch point.

Speaks the HTTP tracking API their SDKs send to (``POST /v1/batch`` and the single-call
paths ``/v1/track``, ``/v1/identify``, ``/v1/page``, ``/v1/screen``, ``/v1/group``,
``/v1/alias``), so an existing instrumentation only changes its host. Authentication is the
write key: HTTP Basic with a ``touchpoint:web`` key as user name, or ``writeKey`` in the
body.

Mapping to the hub's Event:

- ``messageId`` is the event id (so SDK retries are duplicates); a message without one gets
  a digest of its content, which a retry repeats;
- ``userId`` -> ``user_id``, ``anonymousId`` -> ``anonymous_id``, ``traits.email`` (identify)
  or ``context.traits.email`` -> ``email``, ``phone`` likewise; an email or phone that does
  not normalize is left out, not refused (a tracker's trait is no reason to lose the event);
- ``track`` events keep their name as the type (``Order Completed``), ``properties.revenue``
  counts as revenue; ``page``, ``screen``, ``identify``, ``group``, ``alias`` are types too;
- ``identify`` traits (``traits``, or ``context.traits`` as RudderStack sends them) are merged
  into the customer's profile traits;
- ``group`` makes the customer a member of the organization owning ``account_id:<groupId>``;
- ``alias`` links ``previousId`` (as ``anonymous_id``) and ``userId``;
- ``timestamp`` (else ``originalTimestamp``) is when it happened, corrected for the client's
  clock with ``sentAt`` as Segment does.

Answers: exactly 200 ``{"success": true}`` once durable; 400 for invalid JSON, a message
without ``userId`` and ``anonymousId``, or one over 32 KB; 413 for a batch over 500 KB.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import structlog
from aiohttp import web

from prm_core import hookimpl
from prm_core.clock import utcnow
from prm_core.config import Config
from prm_core.errors import InvalidInput
from prm_core.events import parse_time
from prm_core.hub import Hub
from prm_core.model import Adapter, Event, Identity
from prm_core.server.auth import presented_key, require
from prm_core.server.errors import ApiError
from prm_core.server.routes import ingest, parse_json_body
from prm_core.server.state import HUB

__all__ = ["MAX_BATCH_BYTES", "MAX_MESSAGE_BYTES", "prm_adapters", "to_event"]

MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
TYPES = ("track", "identify", "page", "screen", "group", "alias")
TOUCHPOINT = "web"
log = structlog.get_logger(__name__)


def _bad(message: str, field: str | None = None) -> ApiError:
    return ApiError(400, "invalid", message, field)


def _text(message: Mapping[str, Any], key: str) -> str | None:
    value = message.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value if isinstance(value, str) else None


def _object(message: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``message[key]`` when it is an object, else an empty one (Segment's libraries omit
    or null what they do not know)."""
    value = message.get(key)
    return value if isinstance(value, Mapping) else {}


def _identities(message: Mapping[str, Any], hub: Hub) -> tuple[Identity, ...]:
    found: dict[str, str] = {}
    user_id, anonymous_id = _text(message, "userId"), _text(message, "anonymousId")
    if user_id:
        found["user_id"] = user_id
    if anonymous_id:
        found["anonymous_id"] = anonymous_id
    previous_id = _text(message, "previousId")
    if message.get("type") == "alias" and previous_id:
        found["anonymous_id"] = previous_id
    traits = dict(_object(_object(message, "context"), "traits"))
    if message.get("type") == "identify":
        traits.update(_object(message, "traits"))
    namespaces = hub.registrations.namespaces
    result = []
    for namespace, raw in found.items():
        ns = namespaces[namespace]
        try:
            result.append(Identity(namespace, ns.normalize(raw, hub.config.default_region)))
        except ValueError:
            raise _bad(f"{namespace} is not usable", namespace) from None
    for namespace in ("email", "phone"):
        trait = traits.get(namespace)
        if isinstance(trait, str) and trait.strip():
            try:
                result.append(Identity(namespace, namespaces[namespace].normalize(trait, hub.config.default_region)))
            except ValueError:
                continue  # a bad trait costs the identity, never the event
    return tuple(sorted(set(result), key=lambda i: (i.namespace, i.value)))


def _message_id(message: Mapping[str, Any]) -> str:
    given = _text(message, "messageId")
    if given and len(given) <= 200:
        return given
    if given:  # too long to store: a digest keeps distinct ids distinct
        return "sha256:" + hashlib.sha256(given.encode()).hexdigest()
    canonical = json.dumps(message, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def to_event(message: Any, hub: Hub, *, where: str, received_at: datetime, sent_at: datetime | None) -> Event:
    """One Segment message as a hub Event; raises a 400 ``ApiError`` naming the field."""
    if not isinstance(message, Mapping):
        raise _bad(f"{where} must be an object", where)
    kind = message.get("type")
    if kind not in TYPES:
        raise _bad(f"{where}.type must be one of {', '.join(TYPES)}", f"{where}.type")
    if not (_text(message, "userId") or _text(message, "anonymousId")):
        raise _bad(f"{where} needs a userId or an anonymousId", f"{where}.userId")
    if len(json.dumps(message, default=str)) > MAX_MESSAGE_BYTES:
        raise _bad(f"{where} is larger than {MAX_MESSAGE_BYTES} bytes", where)
    try:
        raw_time = message.get("timestamp") or message.get("originalTimestamp")
        occurred_at = parse_time(raw_time, f"{where}.timestamp") if raw_time else received_at
        if message.get("sentAt"):
            sent_at = parse_time(message["sentAt"], f"{where}.sentAt")
    except InvalidInput as exc:
        raise _bad(exc.message, exc.field) from None
    if sent_at is not None:
        occurred_at += received_at - sent_at

    data: dict[str, Any] = {"source": "segment"}
    if kind == "track":
        name = _text(message, "event")
        if not name:
            raise _bad(f"{where}.event is required for a track call", f"{where}.event")
        event_type = name[:100]
        properties = _object(message, "properties")
        data["properties"] = properties
        if "revenue" in properties:
            data["revenue"] = properties["revenue"]
    else:
        event_type = kind
        if kind in ("page", "screen"):
            data["name"] = _text(message, "name")
            data["properties"] = _object(message, "properties")
        elif kind == "identify":
            # RudderStack's SDKs send identify traits in context.traits only
            traits = message.get("traits")
            if not isinstance(traits, Mapping):
                traits = _object(_object(message, "context"), "traits")
            data["traits"] = dict(traits)
        elif kind == "group":
            group_id = _text(message, "groupId")
            if not group_id:
                raise _bad(f"{where}.groupId is required for a group call", f"{where}.groupId")
            data["group_id"] = group_id
            data["traits"] = _object(message, "traits")
        elif kind == "alias":
            if not _text(message, "previousId"):
                raise _bad(f"{where}.previousId is required for an alias call", f"{where}.previousId")
            data["previous_id"] = _text(message, "previousId")
    return Event(
        id=_message_id(message),
        type=event_type,
        occurred_at=occurred_at,
        touchpoint=TOUCHPOINT,
        identities=_identities(message, hub),
        data=data,
        received_at=received_at,
    )


async def _read(request: web.Request) -> Any:
    raw = await request.read()
    if len(raw) > MAX_BATCH_BYTES:
        raise ApiError(413, "too_large", f"a batch is at most {MAX_BATCH_BYTES} bytes")
    try:
        return parse_json_body(raw)
    except InvalidInput as exc:  # as an ApiError, the answer carries the CORS headers
        raise ApiError(422, exc.code, exc.message, exc.field) from None


async def _handle(request: web.Request, single: str | None) -> web.Response:
    # the write key: the Basic user name (what the SDKs send), checked before reading the
    # body; else writeKey in the body
    basic = presented_key(request)
    if basic:
        await require(request, f"touchpoint:{TOUCHPOINT}", key=basic)
    body = await _read(request)
    if not isinstance(body, Mapping):
        raise _bad("the body must be a JSON object")
    if not basic:
        key = body.get("writeKey") if isinstance(body.get("writeKey"), str) else None
        await require(request, f"touchpoint:{TOUCHPOINT}", key=key)
    hub = request.app[HUB]
    received_at = utcnow()
    if single is None:
        messages = body.get("batch")
        if not isinstance(messages, list):
            raise _bad("batch must be an array of messages", "batch")
        where = "batch"
    else:
        messages = [{**body, "type": single}]
        where = ""
    try:
        sent_at = parse_time(body["sentAt"], "sentAt") if body.get("sentAt") and single is None else None
    except InvalidInput as exc:
        raise _bad(exc.message, exc.field) from None
    context = _object(body, "context")

    def with_context(m: Any) -> Any:
        if not context or not isinstance(m, Mapping):
            return m
        own = _object(m, "context")
        return {**m, "context": {**context, **own}}

    events = [
        to_event(
            with_context(m),
            hub,
            where=f"{where}[{i}]" if where else "message",
            received_at=received_at,
            sent_at=sent_at,
        )
        for i, m in enumerate(messages)
    ]
    if events:
        recorded = await ingest(request, events)
        await _after(hub, recorded)
    return web.json_response({"success": True})


async def _after(hub: Hub, recorded: list[Any]) -> None:
    """What identify and group calls teach beyond the event: profile traits, memberships."""
    traits: dict[str, dict[str, Any]] = {}
    for r in recorded:
        if r.duplicate:
            continue
        if r.event.type == "identify" and r.event.data.get("traits"):
            traits.setdefault(r.customer_id, {}).update(r.event.data["traits"])
        elif r.event.type == "group":
            try:
                await hub.join_group(
                    r.customer_id, Identity("account_id", r.event.data["group_id"]), traits=r.event.data.get("traits")
                )
            except InvalidInput as exc:
                # the event is recorded and the answer must stay 200; the membership waits for a fix
                log.warning("group call not applied", reason=exc.message, event_id=r.event.id)
    await hub.add_traits(traits)


# browsers (prm.js) post cross-origin with the key in the body: let them read the answer,
# errors included, so a refused batch is not mistaken for a delivered one
CORS = {"Access-Control-Allow-Origin": "*"}


def _route(single: str | None) -> Any:
    async def handler(request: web.Request) -> web.Response:
        try:
            response = await _handle(request, single)
        except ApiError as exc:
            exc.headers.update(CORS)
            raise
        response.headers.update(CORS)
        return response

    handler.__doc__ = (
        'Segment/RudderStack batch: {"batch": [messages], "sentAt"?, "writeKey"?}'
        if single is None
        else f"Segment/RudderStack {single} call"
    )
    handler.__name__ = f"segment_{single or 'batch'}"
    return handler


@hookimpl
def prm_adapters(config: Config) -> list[Adapter]:
    return [
        Adapter(
            name="segment",
            touchpoint=TOUCHPOINT,
            routes=[web.post("/v1/batch", _route(None))] + [web.post(f"/v1/{t}", _route(t)) for t in TYPES],
            description="Segment / RudderStack tracking API",
        )
    ]
