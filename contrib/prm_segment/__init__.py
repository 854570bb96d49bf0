"""Segment / RudderStack tracking API on the web touch point.

Speaks the HTTP tracking API their SDKs send to, so an existing instrumentation only changes
its host: ``POST /v1/batch`` and the single-call paths ``/v1/track``, ``/v1/identify``,
``/v1/page``, ``/v1/screen``, ``/v1/group``, ``/v1/alias`` (the server SDKs and RudderStack's
JavaScript SDK), their one-letter forms ``/v1/b``, ``/v1/t``, ``/v1/i``, ``/v1/p``, ``/v1/s``,
``/v1/g``, ``/v1/a`` (Segment's analytics-next) and ``/beacon/v1/batch`` (RudderStack's
beacon). Authentication is the write key: HTTP Basic with a ``touchpoint:web`` key as user
name, ``?writeKey=`` (the beacon), or ``writeKey`` in the body; the body is read as JSON
whatever its content type (the browser SDKs send ``text/plain``).

For the browser SDKs it also serves what they load at start, Segment's settings
(``GET /v1/projects/<writeKey>/settings``) and RudderStack's source configuration
(``GET /sourceConfig/``), and answers their CORS preflights for the origins of
``[touchpoints.web] allowed_origins`` (see :mod:`prm_web.cors`). A secret key sent from a web
page (with an ``Origin`` header) is refused: browsers get public keys only.

Mapping to the hub's Event:

- ``messageId`` is the event id (so SDK retries are duplicates); a message without one gets
  a digest of its content, which a retry repeats;
- ``userId`` -> ``user_id``, ``anonymousId`` -> ``anonymous_id``, ``traits.email`` (identify)
  or ``context.traits.email`` -> ``email``, ``phone`` likewise; an email or phone that does
  not normalize is left out, not refused (a tracker's trait is no reason to lose the event);
- ``track`` events keep their name as the type (``Order Completed``), ``properties.revenue``
  counts as revenue; ``page``, ``screen``, ``identify``, ``group``, ``alias`` are types too
  (a track named ``group`` or ``identify`` stays a track: only the calls act on a customer);
- ``identify`` traits (``traits``, or ``context.traits`` as RudderStack sends them) are merged
  into the customer's profile traits;
- ``group`` makes the customer a member of the organization owning ``account_id:<groupId>``;
- ``alias`` links ``previousId`` (as ``anonymous_id``) and ``userId``;
- ``timestamp`` (else ``originalTimestamp``) is when it happened, corrected for the client's
  clock with ``sentAt`` as Segment does.

A call whose messages include no ``identify`` with traits and no ``group`` is taken as
fire-and-forget: with ``[ingest] journal = true`` it is journaled and recorded behind the
answer. One that includes them is recorded while the sender waits, since the trait merge and
the membership act on each event's customer, known once the event is recorded.

Answers: exactly 200 ``{"success": true}`` once durable; 400 for invalid JSON, a message
without ``userId`` and ``anonymousId``, or one over 32 KB; 413 for a body over 512 KiB.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

import structlog
from aiohttp import web
from prm_web.cors import BrowserOrigins
from yarl import URL

from prm_core.plugin import (
    HUB,
    Adapter,
    ApiError,
    Config,
    Event,
    Hub,
    Identity,
    InvalidInput,
    accept,
    api,
    error_middleware,
    hookimpl,
    ingest,
    parse_json_body,
    parse_time,
    presented_key,
    require,
    utcnow,
)

__all__ = ["MAX_BATCH_BYTES", "MAX_MESSAGE_BYTES", "prm_adapters", "to_event"]

MAX_MESSAGE_BYTES = 32 * 1024
# RudderStack's JavaScript SDK fills a batch up to 512 KiB; Segment's stays under 450 KB
MAX_BATCH_BYTES = 512 * 1024
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
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "too_large", f"a batch is at most {MAX_BATCH_BYTES} bytes") from None
    if len(raw) > MAX_BATCH_BYTES:
        raise ApiError(413, "too_large", f"a batch is at most {MAX_BATCH_BYTES} bytes")
    try:
        return parse_json_body(raw)
    except InvalidInput as exc:  # as an ApiError, the answer carries the CORS headers
        raise ApiError(422, exc.code, exc.message, exc.field) from None


async def _require_key(request: web.Request, key: str | None) -> None:
    """The write key must be a ``touchpoint:web`` key; from a web page, a public one."""
    record = await require(request, f"touchpoint:{TOUCHPOINT}", key=key)
    if not record.public and "Origin" in request.headers:
        # a secret key in a page is readable by every visitor: refuse it before it is relied on
        raise ApiError(
            403,
            "secret_key_in_browser",
            "a web page must send with a public key (prm keys create --scope touchpoint:web --public); "
            "this key is secret and readable by every visitor of the page: revoke it",
        )


def _header_or_query_key(request: web.Request) -> str | None:
    """The write key as the SDKs send it outside the body: the Basic user name (Segment,
    RudderStack's XHR), or ``?writeKey=`` (RudderStack's beacon, which cannot set headers)."""
    return presented_key(request) or request.query.get("writeKey") or None


async def _handle(request: web.Request, single: str | None) -> web.Response:
    # the write key in a header or the query string is checked before reading the body;
    # else writeKey in the body
    outside = _header_or_query_key(request)
    if outside:
        await _require_key(request, outside)
    body = await _read(request)
    if not isinstance(body, Mapping):
        raise _bad("the body must be a JSON object")
    if not outside:
        key = body.get("writeKey") if isinstance(body.get("writeKey"), str) else None
        await _require_key(request, key)
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
    # each event's call: a track's name is its event's type, and may be "group" or "identify"
    calls = [m["type"] for m in messages]
    if any(_acts_on_customer(call, ev) for call, ev in zip(calls, events, strict=True)):
        # identify traits and group calls act on each event's customer: recorded while the
        # sender waits, whose customer is then known (see docs/architecture.md)
        recorded = await ingest(request, events)
        await _after(hub, calls, recorded)
    elif events:
        await accept(request, events)  # journaled when [ingest] journal is on
    return web.json_response({"success": True})


def _acts_on_customer(call: str, event: Event) -> bool:
    """Whether :func:`_after` acts on the customer of this event, of a ``call`` (the
    message's type), once it is recorded."""
    return call == "group" or (call == "identify" and bool(event.data.get("traits")))


async def _after(hub: Hub, calls: list[str], recorded: list[Any]) -> None:
    """What identify and group calls teach beyond the event: profile traits, memberships.
    ``calls``: each recorded event's call (the message's type), in order."""
    traits: dict[str, dict[str, Any]] = {}
    for call, r in zip(calls, recorded, strict=True):
        if r.duplicate or not _acts_on_customer(call, r.event):
            continue
        if call == "identify":
            traits.setdefault(r.customer_id, {}).update(r.event.data["traits"])
        else:
            try:
                await hub.join_group(
                    r.customer_id, Identity("account_id", r.event.data["group_id"]), traits=r.event.data.get("traits")
                )
            except InvalidInput as exc:
                # the event is recorded and the answer must stay 200; the membership waits for a fix
                log.warning("group call not applied", reason=exc.message, event_id=r.event.id)
    await hub.add_traits(traits)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _raising(exc: Exception) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise exc

    return handler


def _for_browsers(origins: BrowserOrigins, handler: Handler) -> Handler:
    """``handler`` answering pages of allowed origins with CORS headers on every answer,
    errors included (a page must tell a refusal from a delivery: without them a browser
    reports a network error, which the SDKs retry), and refusing pages of other origins."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            if not origins.allows(request):
                raise ApiError(
                    403,
                    "origin_not_allowed",
                    "this page's origin is not in [touchpoints.web] allowed_origins; nothing was stored",
                )
            response = await handler(request)
        except Exception as exc:
            # the hub's own JSON error for it, so that it can carry the CORS headers
            response = await error_middleware(request, _raising(exc))
        response.headers.update(origins.answer_headers(request))
        return response

    return wrapped


ANSWERS = {
    200: '{"success": true}, once durable',
    400: "Malformed JSON or an invalid message; `field` names it",
    401: "No write key, or not a valid touchpoint:web key",
    403: "A page of an origin not in allowed_origins, or a secret key sent from a web page",
    413: "A body over 512 KiB",
}


def _tracking(single: str | None, path: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await _handle(request, single)

    handler.__name__ = "segment_" + path.strip("/").replace("/", "_")
    if single is None:
        summary = 'Segment/RudderStack batch: {"batch": [messages], "sentAt"?, "writeKey"?}'
    else:
        summary = f"Segment/RudderStack {single} call"
    return api(summary, scope=f"touchpoint:{TOUCHPOINT}", responses=ANSWERS, public=True)(handler)


def _api_host(request: web.Request, config: Config) -> tuple[str, str]:
    """Where the hub's tracking API is, as Segment's settings name it: ``(protocol, host/v1)``."""
    base = URL(config.public_url) if config.public_url else request.url.origin()
    host = base.raw_authority + base.raw_path.rstrip("/")
    return base.scheme, f"{host}/v1"


def _segment_settings(config: Config) -> Handler:
    @api(
        "Segment analytics.js settings (cdnURL = the hub)",
        scope=f"touchpoint:{TOUCHPOINT}",
        responses={200: '{"integrations": {"Segment.io": {...}}, ...}', 401: ANSWERS[401], 403: ANSWERS[403]},
        public=True,
    )
    async def segment_settings(request: web.Request) -> web.StreamResponse:
        """Settings for Segment's analytics.js (analytics-next) loaded with ``cdnURL`` = the hub

        The write key in the path must be a touchpoint:web key (a public one, from a page).
        The settings send every call to this hub (the Segment.io integration), with no other
        destination, remote plugin or metrics.
        """
        write_key = request.match_info["write_key"]
        await _require_key(request, write_key)
        protocol, api_host = _api_host(request, config)
        settings = {
            "integrations": {"Segment.io": {"apiKey": write_key, "apiHost": api_host, "protocol": protocol}},
            "plan": {},
            "remotePlugins": [],
            "enabledMiddleware": {},
            "middlewareSettings": {},
            "legacyVideoPluginsEnabled": False,
            "metrics": {"sampleRate": 0},
        }
        return web.json_response(settings, headers={"Cache-Control": "private, max-age=300"})

    return segment_settings


@api(
    "RudderStack JavaScript SDK source configuration (configUrl = the hub)",
    scope=f"touchpoint:{TOUCHPOINT}",
    responses={200: '{"source": {...}}', 401: ANSWERS[401], 403: ANSWERS[403]},
    public=True,
)
async def rudderstack_source_config(request: web.Request) -> web.StreamResponse:
    """The source configuration of RudderStack's JavaScript SDK loaded with ``configUrl`` = the hub

    The write key (the Basic user name, or ``?writeKey=``) must be a touchpoint:web key (a
    public one, from a page). The source has no device-mode destination: events go to the
    data plane, the hub.
    """
    await _require_key(request, _header_or_query_key(request))
    source = {
        "id": "prm-hub",
        "name": "PRM hub",
        "workspaceId": "prm-hub",
        "enabled": True,
        "config": {},
        "destinations": [],
    }
    return web.json_response({"isHosted": False, "source": source}, headers={"Cache-Control": "private, max-age=300"})


def _preflight(origins: BrowserOrigins, methods: str) -> Handler:
    async def preflight(request: web.Request) -> web.StreamResponse:
        """CORS preflight of the browser SDKs: the grant for an allowed origin, none for another"""
        return origins.preflight_answer(request, methods)

    return preflight


# the paths the SDKs post to: Segment's analytics-next sends single calls to the first letter
# of their type (/v1/t, /v1/p, ...) and batches to /v1/b; RudderStack's JavaScript SDK sends
# single calls to /v1/<type>, batches to /v1/batch, beacons to /beacon/v1/batch?writeKey=
SHORT = {t[0]: t for t in TYPES}
POST_PATHS: dict[str, str | None] = {
    "/v1/batch": None,
    "/v1/b": None,
    "/beacon/v1/batch": None,
    **{f"/v1/{t}": t for t in TYPES},
    **{f"/v1/{letter}": t for letter, t in SHORT.items()},
}
SETTINGS_PATH = "/v1/projects/{write_key}/settings"
SOURCE_CONFIG_PATHS = ("/sourceConfig", "/sourceConfig/")


def routes(config: Config) -> list[web.RouteDef]:
    """The tracking routes, their preflights, and the SDKs' configuration documents."""
    origins = BrowserOrigins.from_setting(config.touchpoint(TOUCHPOINT).get("allowed_origins"), config.public_url)
    posting = _preflight(origins, "POST, OPTIONS")
    reading = _preflight(origins, "GET, HEAD, OPTIONS")
    result = []
    for path, single in POST_PATHS.items():
        result += [web.post(path, _for_browsers(origins, _tracking(single, path))), web.options(path, posting)]
    result.append(web.get(SETTINGS_PATH, _for_browsers(origins, _segment_settings(config))))
    result.append(web.options(SETTINGS_PATH, reading))
    for path in SOURCE_CONFIG_PATHS:
        result += [web.get(path, _for_browsers(origins, rudderstack_source_config)), web.options(path, reading)]
    return result


@hookimpl
def prm_adapters(config: Config) -> list[Adapter]:
    return [
        Adapter(
            name="segment",
            touchpoint=TOUCHPOINT,
            routes=routes(config),
            description="Segment / RudderStack tracking API",
        )
    ]
