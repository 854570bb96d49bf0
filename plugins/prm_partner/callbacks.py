"""``POST /v1/partners/{partner}/callbacks``: partners report late results and changes.

A callback is authenticated by its Standard Webhooks signature with that partner's secret
(``webhook-id``, ``webhook-timestamp`` within five minutes, ``webhook-signature``); a forged
or stale one gets ``401`` and nothing is written. A partner can only name its own requests
(by the hub's request id, the idempotency key, or its own reference such as a TMF646
appointment id). A ``webhook-id`` seen before is answered ``200`` with ``duplicate: true``
and changes nothing.

Bodies: TM Forum notifications for ``tmf646``/``tmf687`` partners
(``AppointmentStateChangeEvent``, ``CheckProductStockStateChangeEvent``); for ``cloudevents``
partners a CloudEvent whose ``subject`` names the request and whose ``data`` is
``{"status", ...}``, or plain ``{"request_id", "status", "data"}``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

import prm_tmf
import structlog
from aiohttp import web
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from prm_core.outbox import STATUSES, FulfillmentStatus
from prm_core.server.errors import ApiError
from prm_core.server.routes import api, parse_json_body
from prm_core.server.state import HUB

from .settings import PartnerSettings

__all__ = ["callback_route", "parse_callback"]

log = structlog.get_logger(__name__)


def parse_callback(protocol: str, body: Any) -> tuple[str, str, dict[str, Any]] | None:
    """``(reference, status, data)`` of a callback body, or ``None`` when it names none."""
    if protocol in ("tmf646", "tmf687"):
        return prm_tmf.parse_callback(protocol, body)
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
    return ref, str(status), {k: v for k, v in data.items() if k != "status"}


def callback_route(settings: Callable[[], Mapping[str, PartnerSettings]]) -> web.RouteDef:
    @api(
        "A partner's callback about its own fulfillment requests (Standard Webhooks signed)",
        scope=None,
        body={"type": "object"},
        responses={
            200: '{"id", "status", "duplicate"}',
            401: "Missing, forged or stale signature",
            404: "Unknown partner, or no request of this partner by that reference",
            422: "Not a status update this partner's protocol knows",
        },
        params={"partner": "the partner's name in [partners.<name>]"},
    )
    async def callbacks(request: web.Request) -> web.Response:
        name = request.match_info["partner"]
        partner = settings().get(name)
        if partner is None:
            raise ApiError(404, "not_found", f"no partner {name!r}", "partner")
        raw = await request.read()
        try:
            Webhook(partner.secret).verify(raw.decode("utf-8", "replace"), dict(request.headers), json_parse=False)
        except WebhookVerificationError:
            log.warning("partner callback refused", partner=name, reason="signature")
            raise ApiError(401, "unauthorized", "the webhook signature is missing, invalid or too old") from None
        body = parse_json_body(raw)
        parsed = parse_callback(partner.protocol, body)
        if parsed is None:
            raise ApiError(422, "invalid", f"not a status update {partner.protocol} partners send", "body")
        ref, status, data = parsed
        hub = request.app[HUB]
        found, applied = await hub.outbox.apply_callback(
            name, request.headers["webhook-id"], ref, cast(FulfillmentStatus, status), data
        )
        if found is None:
            raise ApiError(404, "not_found", f"partner {name!r} has no request {ref!r}", "reference")
        return web.json_response({"id": found.id, "status": found.status, "duplicate": not applied})

    return web.post("/v1/partners/{partner}/callbacks", callbacks)
