"""The core HTTP routes of the public API.

Each handler carries its API description (``@api``), from which ``/openapi.json`` is
built, so the description cannot drift from what is mounted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from attrs import evolve
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..delivery import Answer
from ..errors import InvalidInput
from ..feed.changes import parse_position
from ..feed.feed import MAX_WAIT_S
from ..feed.reading import FellBehind
from ..journal import Accepted
from ..labels import summarize
from ..model import CustomerView, Event, Merge, RecordedEvent
from .auth import as_claims, authenticate, grants, require
from .errors import ApiError
from .jsonbody import MAX_DEPTH, loads, too_deep
from .state import HUB, HUB_METRICS

log = structlog.get_logger(__name__)

__all__ = [
    "MAX_DEPTH",
    "PAGE_HEADERS",
    "POSITION_HEADER",
    "accept",
    "answer_request",
    "api",
    "core_routes",
    "ingest",
    "parse_json_body",
    "read_json",
    "too_deep",
]

# the journal position a read waits for, as a header (the same as ?after= on a customer)
POSITION_HEADER = "PRM-After-Position"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
routes = web.RouteTableDef()


def api(
    summary: str,
    *,
    scope: str | None,
    body: dict[str, Any] | None = None,
    responses: dict[int, str] | None = None,
    params: dict[str, str] | None = None,
    shapes: dict[int, str] | None = None,
    public: bool = False,
) -> Callable[[Handler], Handler]:
    """Attach the API description of a handler (read by :mod:`prm_core.server.openapi`).

    ``shapes`` names, per success status, the schema of the JSON answered (a name from
    ``prm_core.server.openapi.SCHEMAS``): what clients may rely on, and schemathesis checks.
    ``public``: the route takes public (browser) keys of a touch point that has them; any
    other route answers 403 to a public key (see :func:`prm_core.server.auth.require`).
    """

    def mark(handler: Handler) -> Handler:
        handler.__prm_api__ = {  # type: ignore[attr-defined]
            "summary": summary,
            "scope": scope,
            "body": body,
            "responses": responses or {200: "OK"},
            "params": params or {},
            "shapes": shapes or {},
            "public": public,
        }
        return handler

    return mark


async def read_json(request: web.Request) -> Any:
    """The body as JSON: 413 past the size limit, 400 when malformed, 422 naming the field
    for what the hub cannot keep (see :mod:`prm_core.server.jsonbody`)."""
    return parse_json_body(await request.read())


def parse_json_body(raw: bytes | str, *, field: str | None = None, decimals: bool = False) -> Any:
    """Parse a request body, or JSON text inside one named ``field``, with the hub's one JSON
    loader (:func:`prm_core.server.jsonbody.loads`): malformed JSON, NaN and Infinity are 400;
    numbers past a double or past 4,300 digits, lone surrogates, NUL characters and nesting
    deeper than :data:`MAX_DEPTH` are 422 naming the field. ``decimals`` reads every
    non-integer number as a :class:`~decimal.Decimal` (money)."""
    return loads(raw, field=field, decimals=decimals)


EVENT_SCHEMA = {"$ref": "#/components/schemas/Event"}
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the token is in the address: never sent on
    "X-Robots-Tag": "noindex",
}
"""The headers of an HTML page a customer opens from a link that carries a token (a survey,
an unsubscribe page): no script, no outside resource, forms posting back to the hub only, no
framing; never cached, never indexed, and the address (the token) never sent on as a referrer."""

AUTH_ERRORS = {401: "No key, or an invalid one", 403: "The key's scope does not grant this"}
WRITE_ERRORS = {
    **AUTH_ERRORS,
    400: "Malformed JSON",
    404: "Unknown touch point",
    413: "Body or batch too large",
    422: "Invalid event; `field` names it",
    503: "Overloaded or database unavailable; nothing written; see Retry-After",
}


async def ingest(request: web.Request, events: list[Event], *, verified: bool | None = None) -> list[RecordedEvent]:
    """Record events for a route of the hub or of a plugin, and count them in the metrics.

    Identities from an unverified source are recorded as claims only (see :func:`as_claims`):
    ``verified=None`` judges by the request's key (a public key is unverified); a route whose
    callers carry no secret at all (a Snowplow tracker) passes ``verified=False``.
    """
    recorded = await request.app[HUB].record(as_claims(request, events, verified=verified))
    metrics = request.app[HUB_METRICS]
    counts = Counter((r.event.touchpoint, r.duplicate) for r in recorded)
    for (tp, duplicate), n in counts.items():
        (metrics.duplicates if duplicate else metrics.events).labels(tp).inc(n)
    return recorded


async def accept(request: web.Request, events: list[Event], *, verified: bool | None = None) -> Accepted:
    """Take fire-and-forget events for a route of the hub or of a plugin (journaled when
    ``[ingest] journal`` is on, else recorded: :meth:`prm_core.hub.Hub.accept`), and count
    them in the metrics. A route whose caller waits for an answer uses :func:`ingest`."""
    claimed = as_claims(request, events, verified=verified)
    accepted = await request.app[HUB].accept(claimed)
    metrics = request.app[HUB_METRICS]
    touchpoints = {ev.touchpoint for ev in claimed}
    if len(touchpoints) == 1:  # a route's events are its touch point's: the answer's counts are theirs
        (tp,) = touchpoints
        counts = Counter({(tp, False): accepted.accepted, (tp, True): accepted.duplicates})
    else:
        counts = Counter((ev.touchpoint, dup) for ev, dup in zip(claimed, accepted.flags, strict=True))
    for (tp, duplicate), n in counts.items():
        if n:
            (metrics.duplicates if duplicate else metrics.events).labels(tp).inc(n)
    return accepted


def accepted_json(request: web.Request, accepted: Accepted) -> dict[str, Any]:
    """``{"accepted", "duplicates"}``, and ``position`` when the journal is on."""
    body: dict[str, Any] = {"accepted": accepted.accepted, "duplicates": accepted.duplicates}
    if request.app[HUB].journal is not None:
        body["position"] = str(accepted.position)
    return body


async def answer_request(request: web.Request, event: Event) -> Answer:
    """Record a request event and deliver value in answer (:meth:`prm_core.hub.Hub.request`)
    for a route of the hub or of a plugin, and count it in the metrics: recorded or duplicate,
    time taken against the touch point's budget, degraded parts."""
    answer = await request.app[HUB].request(event)
    tp = event.touchpoint
    metrics = request.app[HUB_METRICS]
    (metrics.duplicates if answer.recorded.duplicate else metrics.events).labels(tp).inc()
    metrics.request_seconds.labels(tp).observe(answer.elapsed_ms / 1000)
    metrics.budget_ratio.labels(tp).observe(answer.elapsed_ms / answer.budget_ms)
    for part in answer.delivery.degraded:
        metrics.degraded.labels(tp, part.split("#")[0]).inc()
    return answer


async def _touchpoint_write(request: web.Request) -> str:
    record = await authenticate(request)  # 401 before 404: no probing touch point names without a key
    name = request.match_info["tp"]
    request.app[HUB].touchpoint(name)  # 404 for an unknown touch point
    grants(request, record, f"touchpoint:{name}")
    return name


@routes.post("/v1/touchpoints/{tp}/events")
@api(
    "Record events; answers once they are durable (journaled, with [ingest] journal = true)",
    scope="touchpoint:{tp}",
    body={
        "oneOf": [{"type": "object", "properties": {"events": {"type": "array", "items": EVENT_SCHEMA}}}, EVENT_SCHEMA]
    },
    responses={200: '{"accepted": n, "duplicates": m, "position": "<journal position>"}', **WRITE_ERRORS},
    shapes={200: "Accepted"},
    public=True,
)
async def post_events(request: web.Request) -> web.Response:
    tp = await _touchpoint_write(request)
    hub = request.app[HUB]
    accepted = await accept(request, hub.parse_events(await read_json(request), tp))
    return web.json_response(accepted_json(request, accepted))


@routes.post("/v1/touchpoints/{tp}/requests")
@api(
    "One dialogue turn awaiting a personalized answer within the touch point's budget",
    scope="touchpoint:{tp}",
    body=EVENT_SCHEMA,
    responses={
        200: '{"customer_id", "dialogue_id", "delivery", "elapsed_ms", "budget_ms", "degraded"}',
        **WRITE_ERRORS,
    },
    shapes={200: "Answer"},
    public=True,
)
async def post_request(request: web.Request) -> web.Response:
    tp = await _touchpoint_write(request)
    hub = request.app[HUB]
    body = await read_json(request)
    if isinstance(body, dict) and "events" in body:
        raise InvalidInput("a request is one Event, not a batch", "events")
    (event,) = as_claims(request, hub.parse_events(body, tp))
    if not event.verified and not event.identities and event.dialogue:
        # an answer is read by whoever asked: an unverified caller naming nobody gets a
        # stranger's answer, not that of whoever owns the dialogue key it sent
        event = evolve(event, dialogue=None)
    answer = await answer_request(request, event)
    return web.json_response(answer.to_json())


async def _read_after(request: web.Request, *, query: bool = True) -> None:
    """Read-your-writes: wait until the journal is processed up to the position the request
    names (``?after=`` or the PRM-After-Position header; the header alone where ``after`` is
    the route's own, as on the feed); 503 with Retry-After if it is not within
    ``[ingest].read_wait_ms``. Without the journal every acknowledged event is recorded."""
    raw = request.headers.get(POSITION_HEADER)
    if query:
        raw = request.query.get("after", raw)
    if raw is None:
        return
    if not raw.isdigit() or len(raw) > 18:
        where = "after" if query and "after" in request.query else POSITION_HEADER
        raise InvalidInput("after must be a journal position (the position of an events answer)", where)
    hub = request.app[HUB]
    if not await hub.processed_after(int(raw)):
        retry = str(hub.journal.settings.retry_after_s) if hub.journal is not None else "1"
        raise ApiError(
            503, "not_processed_yet", f"events up to position {raw} are accepted, not yet processed; retry", "after",
            **{"Retry-After": retry},
        )  # fmt: skip


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "20")
    if not raw.isdigit():
        raise InvalidInput("limit must be a whole number", "limit")
    return int(raw)


def _view_json(view: CustomerView) -> dict[str, Any]:
    return view.to_json()


@routes.get("/v1/customers/{ref}")
@api(
    "The 360-degree view; ref is a customer id or namespace:value",
    scope="read",
    params={
        "cursor": "next page of the timeline (next_cursor)",
        "limit": "timeline page size, 1-200 (20)",
        "after": "a journal position (an events answer's): wait until it is processed (or PRM-After-Position)",
    },
    responses={
        200: "CustomerView",
        404: "No such customer",
        422: "Bad ref, cursor, limit or after",
        503: "The journal is not processed up to after within [ingest].read_wait_ms; see Retry-After",
        **AUTH_ERRORS,
    },
    shapes={200: "CustomerView"},
)
async def get_customer(request: web.Request) -> web.Response:
    await require(request, "read")
    hub = request.app[HUB]
    await _read_after(request)
    view = await hub.view(request.match_info["ref"], cursor=request.query.get("cursor"), limit=_limit(request))
    body = _view_json(view)
    for item in body["timeline"]:  # each event in words, for the pages people read (prm_core.labels)
        item["summary"] = summarize(item, hub.event_labels)
    return web.json_response(body)


@routes.patch("/v1/customers/{ref}")
@api(
    "Set traits, a tier by hand, kind, memberships",
    scope="admin",
    body={
        "type": "object",
        "properties": {
            "traits": {"type": "object"},
            "tier": {"type": ["string", "null"]},
            "kind": {"enum": ["person", "organization", "group"]},
            "memberships": {"type": "object", "properties": {"add": {"type": "array"}, "remove": {"type": "array"}}},
        },
    },
    responses={
        200: "CustomerView",
        400: "Malformed JSON",
        404: "No such customer",
        422: "Invalid field",
        **AUTH_ERRORS,
    },
    shapes={200: "CustomerView"},
)
async def patch_customer(request: web.Request) -> web.Response:
    await require(request, "admin")
    body = await read_json(request)
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object", None)
    view = await request.app[HUB].update_customer(request.match_info["ref"], body)
    return web.json_response(_view_json(view))


@routes.post("/v1/customers")
@api(
    "Create a customer by hand: an organization, a household or another group",
    scope="admin",
    body={"type": "object", "properties": {"kind": {"enum": ["person", "organization", "group"]}, "traits": {}}},
    responses={201: "CustomerView", 400: "Malformed JSON", 422: "Invalid field", **AUTH_ERRORS},
)
async def post_customer(request: web.Request) -> web.Response:
    await require(request, "admin")
    body = await read_json(request)
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object", None)
    traits = body.get("traits")
    if traits is not None and not isinstance(traits, dict):
        raise InvalidInput("traits must be an object", "traits")
    hub = request.app[HUB]
    customer = await hub.create_customer(body.get("kind", "person"), traits)
    return web.json_response(_view_json(await hub.view(customer.id)), status=201)


def _merge_json(m: Merge) -> dict[str, Any]:
    return {
        "id": m.id,
        "survivor_id": m.survivor_id,
        "merged_id": m.merged_id,
        "reason": m.reason,
        "cause": {"touchpoint": m.cause_touchpoint, "event_id": m.cause_event_id} if m.cause_event_id else None,
        "merged_at": m.merged_at.isoformat().replace("+00:00", "Z"),
        "undone_at": m.undone_at.isoformat().replace("+00:00", "Z") if m.undone_at else None,
    }


@routes.get("/v1/customers/{ref}/merges")
@api(
    "The merge audit of a customer, newest first",
    scope="read",
    responses={200: '{"merges": [...]}', 404: "No such customer", **AUTH_ERRORS},
)
async def get_merges(request: web.Request) -> web.Response:
    await require(request, "read")
    merges = await request.app[HUB].merges(request.match_info["ref"])
    return web.json_response({"merges": [_merge_json(m) for m in merges]})


@routes.post("/v1/merges/{merge_id}/undo")
@api(
    "Undo a merge: the merged customer gets back its identities, dialogues and events",
    scope="admin",
    responses={200: "Merge", 404: "No such merge", 422: "Already undone", **AUTH_ERRORS},
)
async def undo_merge(request: web.Request) -> web.Response:
    await require(request, "admin")
    merge = await request.app[HUB].unmerge(request.match_info["merge_id"])
    return web.json_response(_merge_json(merge))


@routes.put("/v1/identities/{ref}")
@api(
    "Mark an identity value shared (a household phone, a kiosk device) or not; ref is namespace:value",
    scope="admin",
    body={"type": "object", "required": ["shared"], "properties": {"shared": {"type": "boolean"}}},
    responses={
        200: '{"namespace", "value", "shared", "customer_id"}',
        400: "Malformed JSON",
        422: "Bad ref or body",
        **AUTH_ERRORS,
    },
)
async def put_identity(request: web.Request) -> web.Response:
    await require(request, "admin")
    body = await read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("shared"), bool):
        raise InvalidInput("shared must be true or false", "shared")
    ref = request.match_info["ref"]
    if ":" not in ref:
        raise InvalidInput("ref must be namespace:value", "ref")
    return web.json_response(await request.app[HUB].set_shared(ref, body["shared"]))


@routes.get("/v1/touchpoints")
@api("Registered touch points with their latency budgets", scope="read", responses={200: "OK", **AUTH_ERRORS})
async def get_touchpoints(request: web.Request) -> web.Response:
    await require(request, "read")
    hub = request.app[HUB]
    regs = hub.registrations.touchpoints
    return web.json_response(
        {
            "touchpoints": [
                {
                    "name": tp.name,
                    "channel": tp.channel,
                    "budget_ms": tp.budget_ms,
                    "dialogue_timeout_s": tp.dialogue_timeout.total_seconds() if tp.dialogue_timeout else None,
                    "description": tp.description,
                    "plugin": regs.providers[tp.name],
                }
                for tp in sorted(regs, key=lambda t: t.name)
            ]
        }
    )


@routes.get("/healthz")
@api("Liveness and database reachability", scope=None, responses={200: '{"status": "ok"}', 503: "Database down"})
async def healthz(request: web.Request) -> web.Response:
    import sqlalchemy as sa

    hub = request.app[HUB]
    try:
        await hub.store.read(lambda conn: conn.execute(sa.text("SELECT 1")).scalar())
    except Exception as exc:
        return web.json_response({"status": "unavailable", "database": type(exc).__name__}, status=503)
    body: dict[str, Any] = {"status": "ok", "pending_events": hub.ingestor.pending}
    if hub.journal is not None:
        try:
            await hub.journal.refresh()  # every hub process's appends, and the processor's place now
        except Exception as exc:  # the database answered a moment ago: report what this process knows
            log.warning("journal not read for health", error=type(exc).__name__)
        body["journal"] = {
            "depth": hub.journal.depth,
            "lag_s": round(await hub.journal.lag_s(), 3),
            "head": str(hub.journal.head),
            "processed": str(hub.journal.processed),
        }
    return web.json_response(body)


@routes.get("/metrics")
@api("Prometheus metrics", scope=None, responses={200: "text/plain; version=0.0.4"})
async def metrics(request: web.Request) -> web.Response:
    m = request.app[HUB_METRICS]
    hub = request.app[HUB]
    m.pending.set(hub.ingestor.pending)
    if hub.journal is not None:
        try:
            await hub.journal.refresh()
        except Exception as exc:
            log.warning("journal not read for metrics", error=type(exc).__name__)
        m.journal_depth.set(hub.journal.depth)
        m.journal_lag.set(await hub.journal.lag_s())
        m.journal_rejected.set(hub.processor.rejected if hub.processor is not None else 0)
    body = generate_latest(m.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@routes.get("/v1/changes")
@api(
    "The change feed: every change the hub made after a position, oldest first",
    scope="read",
    params={
        "after": "the position to read after (a change's position, or next); absent: from the oldest kept",
        "limit": "changes per page, 1-1000 (100)",
        "types": "comma-separated change types to keep (all when absent)",
        "wait": "seconds to wait for a first change when there is none yet, 0-30 (0)",
    },
    responses={
        200: '{"changes": [...], "next": "<position>"}',
        503: "PRM-After-Position names a journal position not processed within [ingest].read_wait_ms",
        410: "The position is older than the oldest change kept (retention)",
        422: "Bad after, limit, types or wait",
        **AUTH_ERRORS,
    },
)
async def get_changes(request: web.Request) -> web.Response:
    await require(request, "read")
    await _read_after(request, query=False)  # the journal position in the header: ?after= is the feed's
    q = request.query
    after = parse_position(q["after"]) if "after" in q else None
    raw_limit = q.get("limit", "100")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 1000:
        raise InvalidInput("limit must be a whole number from 1 to 1000", "limit")
    types = None
    if "types" in q:
        types = {t.strip() for t in q["types"].split(",") if t.strip()}
        if not types or any(len(t) > 64 for t in types):
            raise InvalidInput("types must be a comma-separated list of change types", "types")
    try:
        wait = float(q.get("wait", "0"))
    except ValueError:
        wait = -1.0
    if not 0 <= wait <= MAX_WAIT_S:  # also refuses NaN
        raise InvalidInput(f"wait must be a number of seconds from 0 to {MAX_WAIT_S:g}", "wait")
    try:
        page = await request.app[HUB].feed.read(after, int(raw_limit), types, wait)
    except FellBehind as exc:
        raise ApiError(410, "fell_behind", str(exc), "after") from None
    return web.json_response({"changes": [c.to_json() for c in page.changes], "next": str(page.next)})


def core_routes() -> web.RouteTableDef:
    return routes
