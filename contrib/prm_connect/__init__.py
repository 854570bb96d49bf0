"""Amazon Connect contact events on the call-center touch point.

Amazon Connect publishes contact events to Amazon EventBridge (``source`` ``aws.connect``,
``detail-type`` ``Amazon Connect Contact Event``). An EventBridge rule with an API destination
posts them to ``POST /v1/touchpoints/callcenter/connect/events``; the API destination's
connection sends a ``touchpoint:callcenter`` key (``Authorization: Bearer <key>`` as an API
key header, or HTTP Basic with the key as user name). The body is one EventBridge event as the
API destination sends it, or a JSON array of them.

Mapping (voice contacts; chats and tasks are acknowledged and left out):

- the call id (the dialogue) is ``detail.initialContactId`` or, for the first contact of a
  call, ``detail.contactId``: a transfer makes a new contact with the same initial contact;
- ``INITIATED`` -> ``call.started`` (``call.transferred`` when ``initiationMethod`` is
  ``TRANSFER`` or ``QUEUE_TRANSFER``); ``QUEUED`` -> ``call.queued``;
- ``CONNECTED_TO_AGENT`` -> ``call.offered`` then ``call.answered``: contact events do not
  tell when an agent's phone rings, so the screen pop comes as the agent is connected;
- ``DISCONNECTED`` -> ``call.ended`` (``disconnect_reason`` when Connect gives one);
- other types (``CONNECTED_TO_SYSTEM``, ``CONTACT_DATA_UPDATED``, ...) are acknowledged and
  left out;
- the agent id is the last part of ``agentInfo.agentArn`` (the agent's id in Connect), the
  queue the last part of ``queueInfo.queueArn``; the caller is ``detail.customerEndpoint``'s
  ``address`` when Connect includes it (a ``TELEPHONE_NUMBER``), else the call's customer is
  whoever its other events name;
- the event's time is the detail's own timestamp for its type, else the envelope's ``time``.

EventBridge delivers at least once: the event id is EventBridge's ``id``, so a redelivery is a
duplicate and changes nothing. Answers 200 ``{"accepted", "duplicates", "ignored"}``; a
malformed event is a 400/422 naming the field and nothing of the body is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from aiohttp import web
from prm_callcenter.cti import TOUCHPOINT, cti_event

from prm_core.plugin import (
    HUB,
    Adapter,
    Config,
    Event,
    InvalidInput,
    api,
    hookimpl,
    ingest,
    parse_time,
    read_json,
    require,
    utcnow,
)

__all__ = ["DETAIL_TYPE", "PATH", "prm_adapters", "to_cti"]

PATH = "/v1/touchpoints/callcenter/connect/events"
DETAIL_TYPE = "Amazon Connect Contact Event"
MAX_EVENTS = 100
TRANSFERS = frozenset({"TRANSFER", "QUEUE_TRANSFER"})


def _object(value: Any, field: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{field} must be an object", field)
    return value


def _text(obj: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
    value = obj.get(key)
    if value is None or value == "":
        if required:
            raise InvalidInput(f"{where}{key} is required", f"{where}{key}", code="missing")
        return None
    if not isinstance(value, str) or len(value) > 2048:
        raise InvalidInput(f"{where}{key} must be a string", f"{where}{key}")
    return value


def _last_part(arn: str | None) -> str | None:
    return arn.rsplit("/", 1)[-1] if arn else None


def _time(obj: Mapping[str, Any], key: str, where: str) -> datetime | None:
    raw = obj.get(key)
    return parse_time(raw, f"{where}{key}") if raw is not None else None


def to_cti(envelope: Any, *, where: str = "", received_at: datetime) -> list[Event]:
    """The CTI events one EventBridge contact event stands for (none for what is left out)."""
    if not isinstance(envelope, Mapping):
        raise InvalidInput(f"{where or 'the body'} must be an EventBridge event object", where.rstrip(".") or None)
    event_id = _text(envelope, "id", where, required=True)
    if envelope.get("detail-type") != DETAIL_TYPE or envelope.get("source") != "aws.connect":
        raise InvalidInput(f"{where}detail-type must be {DETAIL_TYPE!r} from source aws.connect", f"{where}detail-type")
    d = f"{where}detail."
    detail = _object(envelope.get("detail"), f"{where}detail")
    kind = _text(detail, "eventType", d, required=True)
    contact = _text(detail, "contactId", d, required=True)
    call_id = _text(detail, "initialContactId", d) or contact
    channel = (_text(detail, "channel", d) or "VOICE").upper()
    envelope_time = _time(envelope, "time", where) or received_at
    agent = _object(detail.get("agentInfo"), f"{d}agentInfo")
    queue = _object(detail.get("queueInfo"), f"{d}queueInfo")
    endpoint = _object(detail.get("customerEndpoint"), f"{d}customerEndpoint")
    if channel != "VOICE":
        return []

    data: dict[str, Any] = {"call_id": call_id, "contact_id": contact, "source": "amazon-connect"}
    queue_id = _last_part(_text(queue, "queueArn", f"{d}queueInfo."))
    if queue_id:
        data["queue"] = queue_id
    if endpoint.get("type") == "TELEPHONE_NUMBER":
        address = _text(endpoint, "address", f"{d}customerEndpoint.")
        if address:
            data["ani"] = address

    def event(suffix: str, event_type: str, at: datetime | None, **extra: Any) -> Event:
        return Event(
            id=f"{event_id}{suffix}",
            type=event_type,
            occurred_at=at or envelope_time,
            touchpoint=TOUCHPOINT,
            data={**data, **{k: v for k, v in extra.items() if v is not None}},
            received_at=received_at,
        )

    if kind == "INITIATED":
        method = _text(detail, "initiationMethod", d)
        at = _time(detail, "initiationTimestamp", d)
        transfer = method in TRANSFERS
        return [event("", "call.transferred" if transfer else "call.started", at, initiation_method=method)]
    if kind == "QUEUED":
        return [event("", "call.queued", _time(queue, "enqueueTimestamp", f"{d}queueInfo."))]
    if kind == "CONNECTED_TO_AGENT":
        agent_id = _last_part(_text(agent, "agentArn", f"{d}agentInfo.", required=True))
        at = _time(agent, "connectedToAgentTimestamp", f"{d}agentInfo.")
        return [
            event(":offered", "call.offered", at, agent_id=agent_id),
            event("", "call.answered", at, agent_id=agent_id),
        ]
    if kind == "DISCONNECTED":
        at = _time(detail, "disconnectTimestamp", d)
        return [event("", "call.ended", at, disconnect_reason=_text(detail, "disconnectReason", d))]
    return []


@api(
    "Amazon Connect contact events as EventBridge delivers them (one event or an array), mapped to CTI events",
    scope="touchpoint:callcenter",
    body={"oneOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}}]},
    responses={
        200: '{"accepted": n, "duplicates": m, "ignored": k}',
        400: "Malformed JSON",
        401: "No key, or an invalid one",
        403: "The key's scope does not grant this",
        422: "Not a contact event; `field` names what is wrong",
    },
)
async def connect_events(request: web.Request) -> web.Response:
    await require(request, f"touchpoint:{TOUCHPOINT}")
    hub = request.app[HUB]
    body = await read_json(request)
    batch = body if isinstance(body, list) else [body]
    if len(batch) > MAX_EVENTS:
        raise InvalidInput(f"at most {MAX_EVENTS} events per call", None)
    received_at = utcnow()
    events: list[Event] = []
    ignored = 0
    for i, envelope in enumerate(batch):
        where = f"[{i}]." if isinstance(body, list) else ""
        mapped = to_cti(envelope, where=where, received_at=received_at)
        ignored += not mapped
        for e in mapped:
            try:
                events.append(cti_event(e, hub.config.default_region))
            except InvalidInput as exc:  # name the field as Connect spells it
                field = f"{where}detail.customerEndpoint.address" if exc.field == "data.ani" else where.rstrip(".")
                raise InvalidInput(f"{field}: {exc.message}", field or None) from None
    recorded = await ingest(request, events) if events else []
    duplicates = sum(1 for r in recorded if r.duplicate)
    return web.json_response({"accepted": len(recorded) - duplicates, "duplicates": duplicates, "ignored": ignored})


@hookimpl
def prm_adapters(config: Config) -> list[Adapter]:
    return [
        Adapter(
            name="connect",
            touchpoint=TOUCHPOINT,
            routes=[web.post(PATH, connect_events)],
            description="Amazon Connect contact events (EventBridge)",
        )
    ]
