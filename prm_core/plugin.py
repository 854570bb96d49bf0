"""The plugin API: everything a plugin imports from the hub, in one module.

.. code-block:: python

    from prm_core.plugin import HUB, Config, Event, TouchPoint, api, hookimpl, ingest, read_json, require

A plugin (``plugins/``, ``contrib/`` or a distribution of its own) imports the hub through
this module only; the rest of :mod:`prm_core` (the HTTP server in ``prm_core.server``, the
tables in ``prm_core.store``) may change between releases without notice. The project's
import contracts (``[tool.importlinter]`` in ``pyproject.toml``, run by ``lint-imports``)
keep its own plugins to it.

What is here, by use:

- **Hooks**: :data:`hookimpl` marks a plugin's hook implementations (the hooks are
  listed in ``docs/hooks.md``).
- **Domain types**: what hooks receive and return (:class:`TouchPoint`, :class:`Event`,
  :class:`Identity`, :class:`CustomerView`, :class:`ValueProvider`, :class:`Partner`, ...),
  the :class:`Config`, and the errors a plugin raises (:class:`ConfigError` at start,
  :class:`InvalidInput` naming the field for bad input).
- **The hub**: :class:`Hub`, and in a route ``request.app[HUB]``. Besides recording
  (:meth:`Hub.record`), asking for value (:meth:`Hub.request`) and the 360 view
  (:meth:`Hub.view`), it reads back what a touch point recorded
  (:meth:`Hub.recorded`, :meth:`Hub.find_event_id`), the latest message the hub sent a
  customer from a touch point (:meth:`Hub.latest_sent_message`), which identities are shared
  (:meth:`Hub.shared_identities`), which webhook deliveries were processed
  (:meth:`Hub.delivery_processed`, :meth:`Hub.mark_delivery_processed`) and a dialogue's
  partner work (:meth:`Hub.dialogue_fulfillments`). A touch point that learns a customer
  cannot or will not be reached on a channel (a bounce, a STOP) calls :meth:`Hub.suppress`,
  which adds the channel to the customer's ``suppressed`` trait under the customer's lock, so
  two channels suppressed at once both stay.
- **HTTP routes** a touch point adds (``prm_routes``): :func:`api` describes a route for
  ``/openapi.json``; :func:`require` checks the caller's key for a scope;
  :func:`read_json` / :func:`parse_json_body` read a body with the hub's JSON rules;
  :func:`ingest` records events and counts them; :func:`answer_request` asks for value;
  :class:`ApiError` answers a JSON error. A page a customer opens from a link (no key) sends
  :data:`PAGE_HEADERS` and counts its calls with :func:`limit_keyless`.
- **The change feed**: :class:`Change` and :class:`NewChange` for the change types a plugin
  adds (``prm_event_changes``), and :class:`DestinationKind`, :class:`DestinationSettings`,
  :class:`Sink` and :class:`Refused` for a destination kind (``prm_destination_kinds``).
- **Messages** a trigger sends through a touch point (``prm_send_message``): :class:`Message`
  and :class:`MessageResult`; a survey's message carries its answer link in ``Message.data``,
  and :func:`score_links` makes one link per score of it (``docs/surveys.md``).
- **Commands** a plugin adds to ``prm`` (the ``prm.commands`` entry point) that run a hub
  in-process, as ``prm demo`` does: :func:`create_app`, :func:`create_key`,
  :func:`configure_logging`, and :func:`builtin_plugins` (the plugins that ship with the hub).
"""

from __future__ import annotations

from aiohttp import web

from .clock import utcnow
from .config import Config
from .consent import allows
from .delivery import Answer
from .errors import ConfigError, InvalidInput, NotFound, Overloaded, PrmError, StoreUnavailable, TooLarge
from .events import MAX_EVENTS_PER_CALL, in_window, parse_rfc3339, parse_time
from .feed import Change, DestinationKind, DestinationSettings, NewChange, Refused, Sink
from .formats import ImportContext, Importer
from .hookspecs import hookimpl
from .hub import Hub
from .identity import normalize_email, normalize_phone
from .ids import new_id
from .keys import create_key
from .labels import CORE_LABELS, summarize
from .logs import configure_logging
from .model import (
    CHANNELS,
    Adapter,
    Customer,
    CustomerView,
    Delivery,
    Dialogue,
    Direction,
    Event,
    FulfillmentRequest,
    FulfillmentResult,
    Identity,
    IdentityNamespace,
    Merge,
    Offer,
    Partner,
    RecordedEvent,
    TouchPoint,
    ValueProvider,
    ValueRequest,
    offer_json,
)
from .outbox import STATUSES, Fulfillment, FulfillmentStatus, RetryLater
from .planning.entitlements import add_business_days, parse_entitlements, service_days
from .plugins import builtin_plugins
from .server.app import WEBSOCKETS, create_app
from .server.auth import as_claims, limit_keyless, presented_key, require
from .server.errors import MAX_BODY_BYTES, ApiError, error_middleware
from .server.routes import (
    AUTH_ERRORS,
    EVENT_SCHEMA,
    PAGE_HEADERS,
    WRITE_ERRORS,
    accept,
    answer_request,
    api,
    ingest,
    parse_json_body,
    read_json,
)
from .server.state import HUB
from .surveys.links import score_links
from .triggers.messages import Message, MessageResult

__all__ = [
    "AUTH_ERRORS",
    "CHANNELS",
    "CORE_LABELS",
    "EVENT_SCHEMA",
    "HUB",
    "MAX_BODY_BYTES",
    "MAX_EVENTS_PER_CALL",
    "PAGE_HEADERS",
    "STATUSES",
    "WRITE_ERRORS",
    "Adapter",
    "Answer",
    "ApiError",
    "Change",
    "Config",
    "ConfigError",
    "Customer",
    "CustomerView",
    "Delivery",
    "DestinationKind",
    "DestinationSettings",
    "Dialogue",
    "Direction",
    "Event",
    "Fulfillment",
    "FulfillmentRequest",
    "FulfillmentResult",
    "FulfillmentStatus",
    "Hub",
    "Identity",
    "IdentityNamespace",
    "ImportContext",
    "Importer",
    "InvalidInput",
    "Merge",
    "Message",
    "MessageResult",
    "NewChange",
    "NotFound",
    "Offer",
    "Overloaded",
    "Partner",
    "PrmError",
    "RecordedEvent",
    "Refused",
    "RetryLater",
    "Sink",
    "StoreUnavailable",
    "TooLarge",
    "TouchPoint",
    "ValueProvider",
    "ValueRequest",
    "accept",
    "add_business_days",
    "allows",
    "answer_request",
    "api",
    "as_claims",
    "builtin_plugins",
    "close_on_stop",
    "configure_logging",
    "create_app",
    "create_key",
    "error_middleware",
    "hookimpl",
    "in_window",
    "ingest",
    "limit_keyless",
    "new_id",
    "normalize_email",
    "normalize_phone",
    "offer_json",
    "parse_entitlements",
    "parse_json_body",
    "parse_rfc3339",
    "parse_time",
    "presented_key",
    "read_json",
    "require",
    "score_links",
    "service_days",
    "summarize",
    "utcnow",
]


def close_on_stop(request: web.Request, ws: web.WebSocketResponse) -> None:
    """Have the server close this WebSocket (``1001 going away``) when it stops gracefully,
    so that a client reconnects to another hub rather than waiting on a dead one."""
    if WEBSOCKETS in request.app:
        request.app[WEBSOCKETS].add(ws)
