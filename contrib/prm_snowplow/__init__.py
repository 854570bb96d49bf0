"""Snowplow tracker protocol on the web touch point.

Speaks what Snowplow trackers send to a collector, so a site already instrumented with
Snowplow only changes its collector host:

- ``POST /com.snowplowanalytics.snowplow/tp2``: a ``payload_data`` envelope,
  ``{"schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-x",
  "data": [event, ...]}``; answers 200 ``ok``;
- ``GET /i``: one event in the query string; answers 200 with a 1x1 transparent GIF;
- ``OPTIONS /com.snowplowanalytics.snowplow/tp2``: the CORS preflight of browser trackers.

Authentication: trackers carry no secret, so only the app ids (``aid``) listed in
``[touchpoints.web] snowplow_app_ids`` are accepted. A batch holding any event whose app id
is missing or not listed is refused whole with 401, and nothing is written. Since anyone can
read an app id in a page's source, a tracker's ``uid`` is only a claim (kept in
``data.claimed_identities``, linking nobody) unless the call carries a ``touchpoint:web`` key
that is not public (``Authorization: Bearer``, what a server-side tracker can send); a wrong
key is refused (401/403). A call without a key is counted per client address
(``[server] rate_limit_keyless``, default ``"20/second;600/minute"``, both routes together):
past it, 429 with ``Retry-After``.

Mapping to the hub's Event:

- ``eid`` is the event id (required; a tracker's retry is a duplicate);
- ``e`` is the kind: ``pv`` -> ``page_view``, ``pp`` -> ``page_ping``, ``se`` -> the
  structured event's action (``se_ac``), ``ue`` -> the self-describing event's schema name
  (``link_click``), ``tr`` -> ``transaction`` (``tr_tt`` counts as revenue), ``ti`` ->
  ``transaction_item``; any other kind is refused with 400;
- ``uid`` -> ``user_id`` (a claim without a key, above), ``duid`` -> ``anonymous_id`` (else ``nuid`` / ``tnuid``, the
  network user id); ``sid`` (the tracker's session id) is the dialogue key, so one Snowplow
  session is one dialogue;
- ``ttm`` (true timestamp) is when it happened; else ``dtm`` (the device's clock) corrected
  for skew with ``stm`` (the device's clock when it sent): ``dtm + (received - stm)``; else
  when it was received;
- ``data``: ``{"source": "snowplow", "app_id", "event", "url", "page", "referrer",
  "platform", "contexts", ...}`` plus the fields of the kind (``category``, ``action``,
  ``label``, ``property``, ``value`` for ``se``; ``schema`` and ``properties`` for ``ue``).
  Self-describing JSON (``ue_px`` / ``cx`` in base64url, ``ue_pr`` / ``co`` plain) is decoded.

Bad input (malformed JSON, a missing ``eid``, bad base64, a time before 1900 or more than a day
ahead) is answered 400 naming the field (``data[2].eid``, or ``eid`` for ``GET /i``); what no
store can keep (a number past a double, a lone surrogate, NUL, nesting past 32 levels), 422
naming it, and nothing is written. Errors carry the CORS headers too, so a browser tracker can
read them.
Pages of an origin not in ``[touchpoints.web] allowed_origins`` (any, by default) get no
CORS grant, and what they send anyway is refused with 403.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from aiohttp import web
from prm_web.cors import BrowserOrigins

from prm_core.plugin import (
    HUB,
    MAX_BODY_BYTES,
    MAX_EVENTS_PER_CALL,
    Adapter,
    ApiError,
    Config,
    Event,
    Hub,
    Identity,
    InvalidInput,
    accept,
    api,
    hookimpl,
    in_window,
    limit_keyless,
    parse_json_body,
    presented_key,
    require,
    utcnow,
)

__all__ = ["GET_PATH", "GIF", "KINDS", "POST_PATH", "app_ids", "decode_base64", "prm_adapters", "to_event"]

TOUCHPOINT = "web"
POST_PATH = "/com.snowplowanalytics.snowplow/tp2"
GET_PATH = "/i"
PAYLOAD_DATA_SCHEMA = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-"
KINDS = {
    "pv": "page_view",
    "pp": "page_ping",
    "se": "structured",
    "ue": "self_describing",
    "tr": "transaction",
    "ti": "transaction_item",
}
# a 1x1 transparent GIF, what collectors answer to GET /i (trackers load it as an image)
GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
_MAX_ID = 200
_MAX_TYPE = 100
# milliseconds since 1970 this far from now are a broken clock, not a time
_MAX_SKEW = timedelta(days=365 * 50)
log = structlog.get_logger(__name__)


def _bad(message: str, field: str | None) -> ApiError:
    return ApiError(400, "invalid", message, field)


# ---- reading the protocol ------------------------------------------------------------------


def _text(event: Mapping[str, Any], key: str) -> str | None:
    """A string field, or ``None`` when absent or empty (trackers send every value as text)."""
    value = event.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    if not isinstance(value, str):
        return None
    return value


def _limited(event: Mapping[str, Any], key: str, where: str, limit: int = _MAX_ID) -> str | None:
    value = event.get(key)
    if value is not None and value != "" and not isinstance(value, str | int | float):
        raise _bad(f"{where}{key} must be a string", f"{where}{key}")
    text = _text(event, key)
    if text is not None and len(text) > limit:
        raise _bad(f"{where}{key} is longer than {limit} characters", f"{where}{key}")
    return text


def _number(event: Mapping[str, Any], key: str, where: str) -> float | None:
    raw = _text(event, key)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise _bad(f"{where}{key} must be a number", f"{where}{key}") from None
    if not math.isfinite(value):
        raise _bad(f"{where}{key} must be a finite number", f"{where}{key}")
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


def _millis(event: Mapping[str, Any], key: str, where: str, received_at: datetime) -> datetime | None:
    value = _number(event, key, where)
    if value is None:
        return None
    try:
        at = datetime.fromtimestamp(value / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        at = None
    if at is None or abs(at - received_at) > _MAX_SKEW:
        raise _bad(f"{where}{key} must be milliseconds since 1970 (UTC)", f"{where}{key}")
    return at


def decode_base64(raw: str) -> bytes:
    """base64url or standard base64, padded or not (trackers omit the padding); ``ValueError`` if neither."""
    text = raw.strip("\r\n\t").replace(" ", "+")  # a '+' in a query string arrives as a space
    text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None


def _json_field(event: Mapping[str, Any], encoded: str, plain: str, where: str) -> tuple[str, Any] | None:
    """The JSON of ``encoded`` (base64) or ``plain``; ``(field name, value)``, or ``None`` if neither is set."""
    for key, is_encoded in ((encoded, True), (plain, False)):
        raw = event.get(key)
        if raw is None or raw == "":
            continue
        field = f"{where}{key}"
        if isinstance(raw, Mapping | list) and not is_encoded:
            return field, raw  # a POST body may carry it as JSON rather than text
        if not isinstance(raw, str):
            raise _bad(f"{field} must be a string", field)
        try:
            text = decode_base64(raw).decode("utf-8") if is_encoded else raw
        except ValueError:
            raise _bad(f"{field} is not valid base64url", field) from None
        return field, _loads(text, field)
    return None


def _loads(text: str, field: str) -> Any:
    """JSON as the store can keep it, through the hub's JSON loader: malformed is 400; a
    number past a double, a lone surrogate, NUL or nesting past the limit is 422 naming the
    field inside (``data[0].ue_pr.data.n``)."""
    try:
        return parse_json_body(text, field=field)
    except InvalidInput as exc:
        raise ApiError(422, exc.code, exc.message, exc.field) from None


def _self_describing(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not isinstance(value.get("schema"), str) or "data" not in value:
        raise _bad(f"{field} must be self-describing JSON: {{'schema': 'iglu:...', 'data': ...}}", field)
    if not value["schema"].startswith("iglu:"):
        raise _bad(f"{field}'s schema must be an iglu: URI", field)
    return {"schema": value["schema"], "data": value["data"]}


def _contexts(event: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    found = _json_field(event, "cx", "co", where)
    if found is None:
        return []
    field, envelope = found
    envelope = _self_describing(envelope, field)
    if not isinstance(envelope["data"], list):
        raise _bad(f"{field} must hold an array of contexts in data", field)
    return [_self_describing(c, f"{field}.data[{i}]") for i, c in enumerate(envelope["data"])]


def _schema_name(schema: str) -> str:
    """``iglu:com.acme/link_click/jsonschema/1-0-0`` -> ``link_click``."""
    parts = schema[len("iglu:") :].split("/")
    return parts[1] if len(parts) >= 2 and parts[1] else schema


# ---- one event -----------------------------------------------------------------------------


def _identities(event: Mapping[str, Any], hub: Hub, where: str) -> tuple[Identity, ...]:
    wanted: list[tuple[str, str, str]] = []
    uid = _limited(event, "uid", where)
    if uid:
        wanted.append(("user_id", uid, "uid"))
    for key in ("duid", "nuid", "tnuid"):  # the domain user id, else the network user id
        anonymous = _limited(event, key, where)
        if anonymous:
            wanted.append(("anonymous_id", anonymous, key))
            break
    namespaces = hub.registrations.namespaces
    result = []
    for namespace, raw, key in wanted:
        try:
            result.append(Identity(namespace, namespaces[namespace].normalize(raw, hub.config.default_region)))
        except ValueError:
            raise _bad(f"{where}{key} is not a usable {namespace}", f"{where}{key}") from None
    return tuple(result)


def _occurred_at(event: Mapping[str, Any], where: str, received_at: datetime) -> datetime:
    """When it happened, inside the hub's window of event times (``prm_core.events.in_window``)."""
    true_time = _millis(event, "ttm", where, received_at)
    if true_time is not None:
        at, key = true_time, "ttm"
    else:
        device = _millis(event, "dtm", where, received_at)
        sent = _millis(event, "stm", where, received_at)
        if device is None:
            return received_at
        at, key = (device + (received_at - sent), "stm") if sent is not None else (device, "dtm")
    if not in_window(at):
        raise _bad(f"{where}{key} dates the event before 1900 or more than a day ahead of the hub", f"{where}{key}")
    return at


def _kind_data(event: Mapping[str, Any], kind: str, where: str) -> tuple[str, dict[str, Any]]:
    """The event type and the fields particular to this kind of event."""
    data: dict[str, Any] = {}
    if kind == "pv":
        return "page_view", data
    if kind == "pp":
        for key, name in (("pp_mix", "x_min"), ("pp_max", "x_max"), ("pp_miy", "y_min"), ("pp_may", "y_max")):
            value = _number(event, key, where)
            if value is not None:
                data.setdefault("scroll", {})[name] = value
        return "page_ping", data
    if kind == "se":
        category = _limited(event, "se_ca", where, 1000)
        action = _limited(event, "se_ac", where, 1000)
        if not category:
            raise _bad(f"{where}se_ca (category) is required for a structured event", f"{where}se_ca")
        if not action:
            raise _bad(f"{where}se_ac (action) is required for a structured event", f"{where}se_ac")
        data.update(category=category, action=action)
        for key, name in (("se_la", "label"), ("se_pr", "property")):
            text = _limited(event, key, where, 1000)
            if text is not None:
                data[name] = text
        amount = _number(event, "se_va", where)
        if amount is not None:
            data["value"] = amount
        return action[:_MAX_TYPE], data
    if kind == "ue":
        found = _json_field(event, "ue_px", "ue_pr", where)
        if found is None:
            raise _bad(f"{where}ue_px or ue_pr is required for a self-describing event", f"{where}ue_pr")
        field, envelope = found
        inner = _self_describing(_self_describing(envelope, field)["data"], f"{field}.data")
        data.update(schema=inner["schema"], properties=inner["data"])
        return _schema_name(inner["schema"])[:_MAX_TYPE], data
    if kind == "tr":
        order_id = _limited(event, "tr_id", where, 1000)
        if not order_id:
            raise _bad(f"{where}tr_id (order id) is required for a transaction", f"{where}tr_id")
        total = _number(event, "tr_tt", where)
        if total is None:
            raise _bad(f"{where}tr_tt (total) is required for a transaction", f"{where}tr_tt")
        data.update(order_id=order_id, revenue=total)
        for key, name in (("tr_tx", "tax"), ("tr_sh", "shipping")):
            value = _number(event, key, where)
            if value is not None:
                data[name] = value
        for key, name in (("tr_cu", "currency"), ("tr_af", "affiliation")):
            text = _limited(event, key, where, 1000)
            if text is not None:
                data[name] = text
        return "transaction", data
    # ti: an item of a transaction; its revenue is counted once, on the transaction
    order_id = _limited(event, "ti_id", where, 1000)
    sku = _limited(event, "ti_sk", where, 1000)
    if not order_id or not sku:
        field = f"{where}ti_id" if not order_id else f"{where}ti_sk"
        raise _bad(f"{field} is required for a transaction item", field)
    data.update(order_id=order_id, sku=sku)
    for key, name in (("ti_pr", "price"), ("ti_qu", "quantity")):
        value = _number(event, key, where)
        if value is not None:
            data[name] = value
    for key, name in (("ti_nm", "name"), ("ti_ca", "category"), ("ti_cu", "currency")):
        text = _limited(event, key, where, 1000)
        if text is not None:
            data[name] = text
    return "transaction_item", data


def to_event(event: Any, hub: Hub, *, where: str, received_at: datetime) -> Event:
    """One tracker event (its name-value pairs) as a hub Event; raises a 400 ``ApiError`` naming the field.

    The app id is checked by the caller, before any event of the batch is converted.
    """
    if not isinstance(event, Mapping):
        raise _bad(f"{where.rstrip('.') or 'the event'} must be an object of name-value pairs", where.rstrip("."))
    for key, value in event.items():
        if isinstance(value, str) and "\x00" in value:
            raise _bad(f"{where}{key} holds a NUL character", f"{where}{key}")
    kind = _text(event, "e")
    if kind is None:
        raise _bad(f"{where}e (the kind of event) is required", f"{where}e")
    if kind not in KINDS:
        raise _bad(f"{where}e must be one of {', '.join(KINDS)}, got {kind[:20]!r}", f"{where}e")
    event_id = _limited(event, "eid", where)
    if not event_id or not event_id.strip():
        raise _bad(f"{where}eid (the event id) is required", f"{where}eid")
    session = _limited(event, "sid", where)
    identities = _identities(event, hub, where)
    if not identities and not session:
        raise _bad(f"{where} needs a uid, duid, nuid or sid to tell whose event it is", f"{where}duid")
    event_type, particular = _kind_data(event, kind, where)
    data: dict[str, Any] = {"source": "snowplow", "app_id": _text(event, "aid"), "event": KINDS[kind]}
    for key, name in (("url", "url"), ("page", "page"), ("refr", "referrer"), ("p", "platform"), ("tv", "tracker")):
        value = _limited(event, key, where, 8192)
        if value is not None:
            data[name] = value
    data.update(particular)
    contexts = _contexts(event, where)
    if contexts:
        data["contexts"] = contexts
    return Event(
        id=event_id,
        type=event_type,
        occurred_at=_occurred_at(event, where, received_at),
        touchpoint=TOUCHPOINT,
        identities=identities,
        dialogue=session,
        data=data,
        received_at=received_at,
    )


# ---- HTTP ----------------------------------------------------------------------------------


def _cors(request: web.Request, origins: BrowserOrigins) -> dict[str, str]:
    """Browser trackers send credentials (cookies): echo an allowed Origin, never ``*``."""
    headers = {"Vary": "Origin"}
    origin = request.headers.get("Origin")
    if origin and origins.allows(request):
        headers["Access-Control-Allow-Origin"] = origin
        headers["Access-Control-Allow-Credentials"] = "true"
    return headers


def _check_origin(request: web.Request, origins: BrowserOrigins) -> None:
    if not origins.allows(request):
        message = "this page's origin is not in [touchpoints.web] allowed_origins; nothing was stored"
        raise ApiError(403, "origin_not_allowed", message)


def _check_app_ids(events: Sequence[Any], allowed: frozenset[str], where: str) -> None:
    """401 for the whole call if any event's app id is missing or not listed; nothing is written."""
    for i, event in enumerate(events):
        if not isinstance(event, Mapping):
            continue  # not an event at all: a 400 when it is read
        aid = _text(event, "aid")
        if aid is None or aid not in allowed:
            field = f"{where}[{i}].aid" if where else "aid"
            log.info("snowplow call refused", reason="app id missing or not listed", events=len(events))
            raise ApiError(
                401,
                "unauthorized",
                "the app id (aid) is missing or not listed in [touchpoints.web] snowplow_app_ids",
                field,
            )


async def _verified(request: web.Request) -> bool | None:
    """Whether the events' identities are verified, for :func:`prm_core.server.routes.accept`.

    A tracker carries no secret, and anyone can read an app id in a page's source: its ``uid``
    is only a claim (kept in ``data.claimed_identities``), and only the tracker's own device
    id (``duid``) links. A server-side tracker that sends a ``touchpoint:web`` key
    (``Authorization: Bearer``) vouches for its ``uid``; under a public key it stays a claim.
    """
    if presented_key(request) is None:
        return False
    await require(request, f"touchpoint:{TOUCHPOINT}")
    return None  # judged by the key: a public key's identities stay claims


async def _record(request: web.Request, raw_events: Sequence[Any], where: str, allowed: frozenset[str]) -> int:
    verified = await _verified(request)
    _check_app_ids(raw_events, allowed, where)
    hub: Hub = request.app[HUB]
    received_at = utcnow()
    events = [
        to_event(e, hub, where=f"{where}[{i}]." if where else "", received_at=received_at)
        for i, e in enumerate(raw_events)
    ]
    if events:
        await accept(request, events, verified=verified)  # journaled when [ingest] journal is on
    return len(events)


async def _post_body(request: web.Request) -> list[Any]:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "too_large", f"the body is larger than the limit of {MAX_BODY_BYTES} bytes") from None
    try:
        body = parse_json_body(raw)  # malformed, NaN, Infinity: 400; what the store cannot keep: 422
    except InvalidInput as exc:
        raise ApiError(422, exc.code, exc.message, exc.field) from None  # an ApiError carries the CORS headers
    if not isinstance(body, Mapping):
        raise _bad("the body must be a payload_data object: {'schema': 'iglu:...', 'data': [events]}", None)
    schema = body.get("schema")
    if not isinstance(schema, str) or not schema.startswith(PAYLOAD_DATA_SCHEMA):
        raise _bad(f"schema must be {PAYLOAD_DATA_SCHEMA}x-y", "schema")
    events = body.get("data")
    if not isinstance(events, list):
        raise _bad("data must be an array of events", "data")
    if len(events) > MAX_EVENTS_PER_CALL:
        raise ApiError(413, "too_large", f"at most {MAX_EVENTS_PER_CALL} events per call, got {len(events)}", "data")
    return events


def _admit(request: web.Request) -> None:
    """Count a keyless call against its client address (a call with a key counts against its key)."""
    if presented_key(request) is None:
        limit_keyless(request, "snowplow")


def _handlers(allowed: frozenset[str], origins: BrowserOrigins) -> tuple[Any, Any, Any]:
    @api(
        "Snowplow tracker protocol: a payload_data batch of events (app id must be listed in config)",
        scope=None,
        body={"type": "object", "properties": {"schema": {"type": "string"}, "data": {"type": "array"}}},
        responses={
            200: "ok, once durable",
            400: "Malformed JSON or an invalid event; `field` names it",
            401: "An app id (aid) missing or not listed",
            413: "Body too large",
            429: "Too many calls from this address ([server] rate_limit_keyless)",
        },
        public=True,
    )
    async def snowplow_tp2(request: web.Request) -> web.Response:
        cors = _cors(request, origins)
        try:
            _admit(request)
            _check_origin(request, origins)
            events = await _post_body(request)
            await _record(request, events, "data", allowed)
        except ApiError as exc:
            exc.headers.update(cors)
            raise
        return web.Response(text="ok", headers=cors)

    @api(
        "Snowplow tracker protocol: one event in the query string (app id must be listed in config)",
        scope=None,
        responses={
            200: "a 1x1 transparent GIF, once durable",
            400: "An invalid event; `field` names it",
            401: "The app id (aid) missing or not listed",
            429: "Too many calls from this address ([server] rate_limit_keyless)",
        },
        public=True,
    )
    async def snowplow_pixel(request: web.Request) -> web.Response:
        cors = _cors(request, origins)
        try:
            _admit(request)
            _check_origin(request, origins)
            await _record(request, [dict(request.query)], "", allowed)
        except ApiError as exc:
            exc.headers.update(cors)
            raise
        return web.Response(
            body=GIF,
            content_type="image/gif",
            headers={**cors, "Cache-Control": "no-cache, no-store, must-revalidate", "Pragma": "no-cache"},
        )

    @api("CORS preflight for browser trackers", scope=None, responses={204: "the allowed method and headers"})
    async def snowplow_preflight(request: web.Request) -> web.Response:
        headers = _cors(request, origins)
        if "Access-Control-Allow-Origin" in headers:  # no grant for a page of another origin
            headers.update(
                {
                    "Access-Control-Allow-Methods": "POST, OPTIONS",
                    "Access-Control-Allow-Headers": "Content-Type, SP-Anonymous",
                    "Access-Control-Max-Age": "86400",
                }
            )
        return web.Response(status=204, headers=headers)

    return snowplow_tp2, snowplow_pixel, snowplow_preflight


def app_ids(config: Config) -> frozenset[str]:
    """The accepted app ids, ``[touchpoints.web] snowplow_app_ids``; ``ValueError`` if malformed."""
    listed = config.touchpoint(TOUCHPOINT).get("snowplow_app_ids", [])
    if isinstance(listed, str) or not isinstance(listed, list) or not all(isinstance(a, str) and a for a in listed):
        raise ValueError("[touchpoints.web] snowplow_app_ids must be a list of app id strings")
    return frozenset(listed)


@hookimpl
def prm_adapters(config: Config) -> list[Adapter]:
    # with no app id listed the routes are mounted but refuse every call (401)
    origins = BrowserOrigins.from_setting(config.touchpoint(TOUCHPOINT).get("allowed_origins"), config.public_url)
    post, pixel, preflight = _handlers(app_ids(config), origins)
    return [
        Adapter(
            name="snowplow",
            touchpoint=TOUCHPOINT,
            routes=[
                web.post(POST_PATH, post),
                web.options(POST_PATH, preflight),
                web.get(GET_PATH, pixel, allow_head=False),
            ],
            description="Snowplow tracker protocol (tp2 POST, GET /i pixel)",
        )
    ]
