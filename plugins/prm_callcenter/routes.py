"""The call center's HTTP surface: CTI events in, screen pops out, the agent desktop page.

- ``POST /v1/touchpoints/callcenter/events``: CTI events (see :mod:`prm_callcenter.cti`), key
  scope ``touchpoint:callcenter``. This exact path is more specific than the core's
  ``/v1/touchpoints/{tp}/events``, so aiohttp routes calls here (its router looks a path up
  from the most specific prefix).
- ``POST /v1/agents/{agent_id}/signin``: a one-time sign-in code and link for an agent
  (scope ``touchpoint:callcenter``); ``POST /v1/agents/session`` trades it for the agent's
  session token (:mod:`prm_callcenter.signin`), ``DELETE`` ends it.
- ``POST /v1/agents/{agent_id}/events``: the signed-in agent's notes and call outcomes.
- ``POST /v1/agents/{agent_id}/screenpop/tickets``: a one-time ticket for the WebSocket.
- ``GET /v1/agents/{agent_id}/screenpop``: the WebSocket of screen pops.
- ``GET /v1/screenpops/stats``: the broker's counters (scope ``read``).
- ``GET /agent`` (+ ``/agent/agent.js``, ``/agent/agent.css``): the agent desktop page.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from importlib import resources
from typing import Any

from aiohttp import WSMsgType, web

from prm_core.plugin import (
    EVENT_SCHEMA,
    HUB,
    ApiError,
    InvalidInput,
    api,
    close_on_stop,
    ingest,
    limit_keyless,
    read_json,
    require,
    utcnow,
)

from .cti import TOUCHPOINT, cti_event
from .screenpop import PLUGIN_NAME, ScreenPops, screenpop_settings

__all__ = ["agent_page_routes", "cti_routes", "screenpop_routes"]

SCOPE = f"touchpoint:{TOUCHPOINT}"
AGENT_SCOPES = (SCOPE, "read")
# a browser offers this subprotocol; the server answers with it (see docs/callcenter.md)
SUBPROTOCOL = "prm.screenpop.v1"
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # the page's script comes from the hub only: a key typed into it cannot be read by another origin's code
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
}
ASSETS = {"agent.html": "text/html", "agent.js": "application/javascript", "agent.css": "text/css"}


def broker(request: web.Request) -> ScreenPops:
    pops = request.app[HUB].pm.get_plugin(PLUGIN_NAME)
    if not isinstance(pops, ScreenPops):
        raise ApiError(503, "unavailable", "screen pops are not running")
    return pops


def _session_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else ""
    return token if token.startswith("agent_") else None


def _signed_in_agent(request: web.Request) -> str:
    """The agent of the request's session token; 401 when it is unknown or ended, 403 when it
    is another agent's."""
    token = _session_token(request)
    agent = broker(request).sessions.agent_of(token) if token else None
    if agent is None:
        raise ApiError(401, "unauthorized", "the sign-in has ended; ask for a new sign-in link")
    if agent != request.match_info["agent_id"]:
        raise ApiError(403, "forbidden", "this session is another agent's")
    return agent


async def _require_agent_access(request: web.Request) -> None:
    # an agent's own session, or a key through require(), like every route: a public key reads
    # no screen pops whatever its scope
    if _session_token(request) is not None:
        _signed_in_agent(request)
        return
    await require(request, *AGENT_SCOPES)


AGENT_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,100}$")


@api(
    "A one-time sign-in code (10 minutes) for an agent, and the desktop link that carries it; "
    "issued by a supervisor's tool or the CTI",
    scope=SCOPE,
    responses={
        200: '{"agent_id", "code", "link", "expires_in"}',
        401: "No key, or an invalid one",
        403: "The key's scope does not grant this (a read key signs no agent in)",
        422: "agent_id is not 1 to 100 letters, digits or ._:@-",
    },
)
async def post_signin_code(request: web.Request) -> web.Response:
    await require(request, SCOPE)
    agent = request.match_info["agent_id"]
    if not AGENT_ID.match(agent):
        raise InvalidInput("agent_id must be 1 to 100 letters, digits or . _ : @ -", "agent_id")
    sessions = broker(request).sessions
    try:
        code = sessions.issue_code(agent)
    except OverflowError:
        raise ApiError(429, "too_many_requests", "too many sign-ins waiting", **{"Retry-After": "5"}) from None
    body = {"agent_id": agent, "code": code, "link": f"agent#code={code}", "expires_in": sessions.code_ttl_s}
    return web.json_response(body, headers={"Cache-Control": "no-store"})


@api(
    "Trade a sign-in code (once) for the agent's session token; DELETE with the token signs out",
    scope=None,
    body={"type": "object", "required": ["code"], "properties": {"code": {"type": "string", "maxLength": 200}}},
    responses={
        200: '{"agent_id", "token", "expires_in"}',
        401: "The code is unknown, used or expired",
        422: "No code",
    },
)
async def post_session(request: web.Request) -> web.Response:
    limit_keyless(request, "agent-session")
    body = await read_json(request)
    code = body.get("code") if isinstance(body, dict) else None
    if not isinstance(code, str) or not code or len(code) > 200:
        raise InvalidInput("code must be the sign-in code from the link", "code")
    sessions = broker(request).sessions
    try:
        found = sessions.redeem(code)
    except OverflowError:
        raise ApiError(429, "too_many_requests", "too many agents signed in", **{"Retry-After": "5"}) from None
    if found is None:
        raise ApiError(401, "unauthorized", "this sign-in code is unknown, used or expired; ask for a new link")
    token, agent = found
    body = {"agent_id": agent, "token": token, "expires_in": sessions.session_ttl_s}
    return web.json_response(body, headers={"Cache-Control": "no-store"})


@api(
    "Sign out: the agent's session token (Bearer agent_...) stops working at once; "
    "answers 204 whether or not the session was still open",
    scope=None,
    responses={204: "Signed out", 401: "No agent session token"},
)
async def delete_session(request: web.Request) -> web.Response:
    limit_keyless(request, "agent-session")
    token = _session_token(request)
    if token is None:
        raise ApiError(401, "unauthorized", "no agent session token (Bearer agent_...) to end")
    broker(request).sessions.end(token)
    return web.Response(status=204)


AGENT_EVENTS = {"agent.note": "text", "call.outcome": "outcome"}


@api(
    "The signed-in agent's note or call outcome: {id, type: agent.note|call.outcome, call_id, text|outcome}; "
    "recorded as a CTI event with the session's agent_id. Takes the agent's session token "
    "(Bearer agent_...) from POST /v1/agents/session, never an API key",
    scope=None,
    body={
        "type": "object",
        "required": ["id", "type", "call_id"],
        "properties": {
            "id": {"type": "string"},
            "type": {"enum": list(AGENT_EVENTS)},
            "call_id": {"type": "string"},
            "text": {"type": "string", "maxLength": 4000},
            "outcome": {"type": "string"},
        },
    },
    responses={
        200: '{"accepted": n, "duplicates": m}',
        401: "No session, or it ended",
        403: "Another agent's session",
        422: "Invalid; `field` names it",
    },
)
async def post_agent_event(request: web.Request) -> web.Response:
    agent = _signed_in_agent(request)
    hub = request.app[HUB]
    body = await read_json(request)
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object", "")
    kind = body.get("type")
    if kind not in AGENT_EVENTS:
        raise InvalidInput(f"type must be one of {', '.join(AGENT_EVENTS)}", "type")
    field_name = AGENT_EVENTS[kind]
    value = body.get(field_name)
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{field_name} is required", field_name)
    call_id = body.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidInput("call_id is required", "call_id")
    if not broker(request).was_offered(agent, call_id):
        # a session writes into the agent's own calls only, never another customer's
        raise ApiError(403, "forbidden", "this call was not offered to this agent", "call_id")
    event_id = body.get("id")
    if not isinstance(event_id, str) or not event_id:
        raise InvalidInput("id is required", "id")
    event = {
        # the agent's own namespace of ids: never one the CTI system sends later
        "id": f"agent:{agent}:{event_id}",
        "type": kind,
        "occurred_at": utcnow().isoformat().replace("+00:00", "Z"),
        "data": {"call_id": call_id, "agent_id": agent, field_name: value},
    }
    events = [cti_event(ev, hub.config.default_region) for ev in hub.parse_events(event, TOUCHPOINT)]
    recorded = await ingest(request, events)
    duplicates = sum(1 for r in recorded if r.duplicate)
    return web.json_response({"accepted": len(recorded) - duplicates, "duplicates": duplicates})


@api(
    "CTI events: call.offered, call.answered, call.transferred, call.ended, agent.note, call.outcome; "
    "Event objects whose data carries call_id (the dialogue), ani (the caller, E.164), dnis, queue, agent_id",
    scope=SCOPE,
    body={
        "oneOf": [
            {"type": "object", "properties": {"events": {"type": "array", "items": EVENT_SCHEMA}}},
            EVENT_SCHEMA,
        ]
    },
    responses={
        200: '{"accepted": n, "duplicates": m}',
        400: "Malformed JSON",
        401: "No key, or an invalid one",
        403: "The key's scope does not grant this",
        422: "Invalid CTI event; `field` names it (events[0].data.ani)",
    },
)
async def post_cti_events(request: web.Request) -> web.Response:
    await require(request, SCOPE)
    hub = request.app[HUB]
    body = await read_json(request)
    batched = isinstance(body, dict) and "events" in body
    events = [
        cti_event(ev, hub.config.default_region, where=f"events[{i}]." if batched else "")
        for i, ev in enumerate(hub.parse_events(body, TOUCHPOINT))
    ]
    recorded = await ingest(request, events)
    duplicates = sum(1 for r in recorded if r.duplicate)
    return web.json_response({"accepted": len(recorded) - duplicates, "duplicates": duplicates})


@api(
    "A one-time ticket (30 s) that opens the agent's screen-pop WebSocket: ?ticket=...",
    scope="touchpoint:callcenter or read",
    responses={200: '{"ticket", "expires_in"}', 401: "No key, or an invalid one", 403: "Wrong scope"},
)
async def post_ticket(request: web.Request) -> web.Response:
    await _require_agent_access(request)
    pops = broker(request)
    try:
        ticket = pops.issue_ticket(request.match_info["agent_id"])
    except OverflowError:
        raise ApiError(
            429, "too_many_requests", "too many unused tickets; try again shortly", **{"Retry-After": "5"}
        ) from None
    return web.json_response({"ticket": ticket, "expires_in": pops.ticket_ttl_s}, headers={"Cache-Control": "no-store"})


def _since(request: web.Request) -> int | None:
    raw = request.query.get("since")
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 20:
        raise InvalidInput("since must be the seq of the last screen pop received", "since")
    return int(raw)


@api(
    "WebSocket of screen pops for an agent: {type: hello|screen_pop|heartbeat, seq, ...}; "
    "?since=<seq> replays kept pops after seq; authenticate with a Bearer key or ?ticket=",
    scope="touchpoint:callcenter or read",
    params={"since": "resume after this seq", "ticket": "a ticket from POST .../screenpop/tickets"},
    responses={101: "Switching Protocols", 401: "No key or ticket, or an invalid one", 403: "Wrong scope"},
)
async def screenpop_socket(request: web.Request) -> web.StreamResponse:
    agent = request.match_info["agent_id"]
    pops = broker(request)
    ticket = request.query.get("ticket")
    if ticket:
        if not pops.redeem(ticket, agent):
            raise ApiError(401, "unauthorized", "the ticket is unknown, used, expired or for another agent")
    else:
        await _require_agent_access(request)
    since = _since(request)
    heartbeat = screenpop_settings(request.app[HUB].config.touchpoint(TOUCHPOINT))["heartbeat_s"]
    ws = web.WebSocketResponse(heartbeat=heartbeat, protocols=(SUBPROTOCOL,), max_msg_size=64 * 1024)
    await ws.prepare(request)
    close_on_stop(request, ws)
    conn = pops.connect(agent, since)
    try:
        await ws.send_json({"type": "hello", "agent_id": agent, "seq": pops.last_seq, "heartbeat_s": heartbeat})
        sender = asyncio.create_task(_send(ws, conn, pops, heartbeat))
        try:
            async for msg in ws:
                if msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
                # the protocol is one-way; anything the client says is ignored
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
    finally:
        pops.disconnect(agent, conn)
    return ws


async def _send(ws: web.WebSocketResponse, conn: Any, pops: ScreenPops, heartbeat: float) -> None:
    """Send queued pops as they come; a heartbeat message when nothing came for a while
    (a browser sees no WebSocket pings, so this is how its page tells a dead line)."""
    while not ws.closed:
        text = await conn.next(heartbeat)
        if ws.closed:
            return
        if text is None:
            await ws.send_str(json.dumps({"type": "heartbeat", "seq": pops.last_seq, "dropped": conn.dropped}))
        else:
            await ws.send_str(text)


@api(
    "Screen-pop counters: agents, open sockets, calls waiting, pops sent, calls and pops dropped",
    scope="read",
    responses={200: '{"agents", "connections", "pending_calls", "sent", "dropped_calls", "dropped_pops"}'},
)
async def screenpop_stats(request: web.Request) -> web.Response:
    await require(request, "read")
    return web.json_response(broker(request).stats())


def _asset(name: str) -> Any:
    body = resources.files(__package__).joinpath(name).read_bytes()
    content_type = ASSETS[name]

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type, charset="utf-8", headers=PAGE_HEADERS)

    serve.__doc__ = f"The agent desktop ({name}); public: it holds no data, and an agent signs in with a one-time code"
    return serve


def cti_routes() -> list[Any]:
    return [web.post(f"/v1/touchpoints/{TOUCHPOINT}/events", post_cti_events)]


def screenpop_routes() -> list[Any]:
    return [
        web.post("/v1/agents/session", post_session),
        web.delete("/v1/agents/session", delete_session),
        web.post("/v1/agents/{agent_id}/signin", post_signin_code),
        web.post("/v1/agents/{agent_id}/events", post_agent_event),
        web.post("/v1/agents/{agent_id}/screenpop/tickets", post_ticket),
        web.get("/v1/agents/{agent_id}/screenpop", screenpop_socket),
        web.get("/v1/screenpops/stats", screenpop_stats),
    ]


def agent_page_routes() -> list[Any]:
    return [
        web.get("/agent", _asset("agent.html")),
        web.get("/agent/agent.js", _asset("agent.js")),
        web.get("/agent/agent.css", _asset("agent.css")),
    ]
