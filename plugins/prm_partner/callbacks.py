"""Partners report late results and changes: the hub's listener.

Two paths take the same notifications:

- ``POST /v1/partners/{partner}/listener/{eventName}``: the TM Forum listener (the spec's
  ``/listener/appointmentStateChangeEvent`` and the like under the callback the hub registers
  with the partner's ``/hub``), answered ``201``;
- ``POST /v1/partners/{partner}/callbacks``: one path for every notification (the event
  named by its ``eventType``), answered ``200``; the only one for ``cloudevents`` partners.

A notification is authenticated by its Standard Webhooks signature with that partner's secret
(``webhook-id``, ``webhook-timestamp`` within five minutes, ``webhook-signature``); a missing,
forged or stale one gets ``401`` and nothing is written. A partner can only name its own
requests (by the hub's request id, the idempotency key, or its own reference such as a
TMF646 appointment id). A ``webhook-id`` seen before is answered with ``duplicate: true`` and
changes nothing.

Bodies: TM Forum v4 notifications for ``tmf646``/``tmf687`` partners (:func:`prm_tmf.parse_callback`);
for ``cloudevents`` partners a CloudEvent whose ``subject`` names the request and whose
``data`` is ``{"status", ...}``, or plain ``{"request_id", "status", "data"}``. A TM Forum
notification that breaks its specification is ``422`` naming the field, and the request it
names is marked for ``attention``; an event type the hub does not act on is logged and
answered, never taken as a confirmation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, cast

import prm_tmf
import structlog
from aiohttp import web
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from prm_core.plugin import HUB, STATUSES, ApiError, Fulfillment, FulfillmentStatus, api, parse_json_body

from .client import attention
from .settings import PartnerSettings

__all__ = ["callback_route", "listener_route", "parse_callback"]

log = structlog.get_logger(__name__)

_EVENT_NAME = re.compile(r"^[a-z][A-Za-z]{0,100}Event$")
_RESPONSES = {
    401: "Missing, forged or stale signature (every notification is signed: see docs/partners.md)",
    404: "Unknown partner, or no request of this partner by that reference",
    422: "Not a notification this partner's protocol defines; the error names the field",
}


def parse_callback(protocol: str, body: Any, listener: str | None = None) -> prm_tmf.Notification | None:
    """A callback body as a notification, or ``None`` when it names no status update.

    ``prm_tmf.InvalidMessage`` for a TM Forum notification that breaks its specification.
    """
    if protocol in ("tmf646", "tmf687"):
        return prm_tmf.parse_callback(protocol, body, listener)
    if not isinstance(body, Mapping):
        return None
    if "specversion" in body:
        ref, data = body.get("subject"), body.get("data")
    else:
        extra = body.get("data")
        ref, data = (
            body.get("request_id"),
            {"status": body.get("status"), **(extra if isinstance(extra, Mapping) else {})},
        )
    if not isinstance(ref, str) or not isinstance(data, Mapping):
        return None
    status = data.get("status")
    if status not in STATUSES:
        return None
    return prm_tmf.Notification("cloudevent", ref, str(status), {k: v for k, v in data.items() if k != "status"})


async def receive(
    request: web.Request, settings: Mapping[str, PartnerSettings], listener: str | None
) -> tuple[int, dict[str, Any]]:
    """Verify, parse and apply one notification: ``(HTTP status, answer)`` on success."""
    name = request.match_info["partner"]
    partner = settings.get(name)
    if partner is None:
        raise ApiError(404, "not_found", f"no partner {name!r}", "partner")
    if listener is not None and (partner.protocol == "cloudevents" or not _EVENT_NAME.match(listener)):
        raise ApiError(404, "not_found", f"no listener {listener!r} for a {partner.protocol} partner", "event")
    raw = await request.read()
    try:
        Webhook(partner.secret).verify(raw.decode("utf-8", "replace"), dict(request.headers), json_parse=False)
    except WebhookVerificationError:
        log.warning("partner callback refused", partner=name, reason="signature")
        raise ApiError(
            401,
            "unauthorized",
            "the webhook signature is missing, invalid or too old: every notification is signed "
            "with the partner's Standard Webhooks secret",
        ) from None
    body = parse_json_body(raw)
    hub = request.app[HUB]
    webhook_id = request.headers["webhook-id"]
    try:
        note = parse_callback(partner.protocol, body, listener)
    except prm_tmf.InvalidMessage as exc:
        log.warning("partner notification invalid", partner=name, field=exc.field)
        if exc.ref is not None:
            owner, found = await _owner(hub, settings, partner, exc.ref)
            if found is not None and found.data.get("firm") in (None, name):
                # not silently left as it was: someone has to look
                await hub.outbox.apply_callback(owner, f"{webhook_id}:invalid", exc.ref, found.status, attention(exc))
        raise ApiError(422, "invalid", exc.message, exc.field) from None
    if note is None:
        raise ApiError(422, "invalid", f"not a status update {partner.protocol} partners send", "body")
    if note.ignored or note.ref is None:
        log.info("partner notification ignored", partner=name, event_type=note.event_type[:100])
        return 200, {"id": webhook_id, "ignored": True, "event_type": note.event_type, "duplicate": False}
    owner, current = await _owner(hub, settings, partner, note.ref)
    if current is None:
        raise ApiError(404, "not_found", f"partner {name!r} has no request {note.ref!r}", "reference")
    if current.data.get("firm") not in (None, name):  # passed over: another firm took the job
        log.info("partner notification ignored", partner=name, reason="another firm took the job")
        return 200, {"id": webhook_id, "ignored": True, "event_type": note.event_type, "duplicate": False}
    # an attribute change without a status: the request keeps its own
    status = note.status or current.status
    found, applied = await hub.outbox.apply_callback(
        owner, webhook_id, note.ref, cast(FulfillmentStatus, status), note.data
    )
    if found is None:
        raise ApiError(404, "not_found", f"partner {name!r} has no request {note.ref!r}", "reference")
    return 200, {"id": found.id, "status": found.status, "duplicate": not applied}


async def _owner(
    hub: Any, settings: Mapping[str, PartnerSettings], partner: PartnerSettings, ref: str
) -> tuple[str, Fulfillment | None]:
    """The partner whose outbox row ``ref`` names, and the row: the notifying partner's own, or
    a request first planned with another firm of its role that this partner took over."""
    found = await hub.outbox.find(partner.name, ref)
    if found is not None:
        return partner.name, found
    for other in settings.values():
        if other.name != partner.name and other.role == partner.role:
            taken = await hub.outbox.find(other.name, ref)
            if taken is not None and taken.data.get("firm") == partner.name:
                return other.name, taken
    return partner.name, None


def callback_route(settings: Callable[[], Mapping[str, PartnerSettings]]) -> web.RouteDef:
    @api(
        "A partner's notification about its own fulfillment requests (Standard Webhooks signed)",
        scope=None,
        body={"type": "object"},
        responses={200: '{"id", "status", "duplicate"}, or {"id", "ignored": true, "event_type"}', **_RESPONSES},
        params={"partner": "the partner's name in [partners.<name>]"},
    )
    async def callbacks(request: web.Request) -> web.Response:
        status, answer = await receive(request, settings(), None)
        return web.json_response(answer, status=status)

    return web.post("/v1/partners/{partner}/callbacks", callbacks)


def listener_route(settings: Callable[[], Mapping[str, PartnerSettings]]) -> web.RouteDef:
    @api(
        "A TM Forum partner's notification at its listener path (Standard Webhooks signed)",
        scope=None,
        body={"type": "object"},
        responses={
            201: '{"id", "callback", "status", "duplicate"}, or {"id", "ignored": true, "event_type"}',
            **_RESPONSES,
        },
        params={
            "partner": "the partner's name in [partners.<name>]",
            "event": "the notification's name, e.g. appointmentStateChangeEvent",
        },
    )
    async def listener(request: web.Request) -> web.Response:
        _status, answer = await receive(request, settings(), request.match_info["event"])
        # the spec's listener answers 201 with an EventSubscription (its id and callback)
        return web.json_response({**answer, "callback": request.path}, status=201)

    return web.post("/v1/partners/{partner}/listener/{event}", listener)
