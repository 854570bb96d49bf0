"""The aiohttp application factory.

Plugins are loaded and their registrations collected when the app is built (so touch
points can mount routes); the database, the ingest writer and the key ring start in a
``cleanup_ctx`` and stop if and only if they started.
"""

from __future__ import annotations

import gc
import re
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal

import structlog
from aiohttp import WSCloseCode, web

from ..config import Config
from ..feed.relay import open_destinations
from ..hub import Hub
from ..identity_rules import IdentityRules
from ..ids import random_bytes
from ..keys import KeyRing
from ..logs import protect_logs
from ..planning.routes import planning_routes
from ..plugins import collect_registrations, make_plugin_manager
from ..privacy.http import privacy_routes
from ..privacy.retention import retention_task
from ..surveys.routes import survey_routes
from ..triggers.routes import trigger_routes
from .deadlines import body_deadline, body_timeout_s
from .errors import MAX_BODY_BYTES, error_middleware
from .identity_routes import identity_routes
from .metrics import HubMetrics
from .openapi import build_openapi
from .ratelimit import RATE_LIMITED, RATE_LIMITS, REFUSALS, KeyRateLimits, RefusalLog
from .routes import api, core_routes
from .state import HUB, HUB_CONFIG, HUB_KEYS, HUB_METRICS

__all__ = ["MAX_BODY_BYTES", "WEBSOCKETS", "app_options", "create_app"]

log = structlog.get_logger(__name__)
# WebSockets open on the hub (the call center's screen pops): a handler adds its socket here so
# that a graceful stop closes it (1001 going away) instead of waiting for the browser to hang up
WEBSOCKETS = web.AppKey("prm_websockets", weakref.WeakSet[web.WebSocketResponse])
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@web.middleware
async def request_context(request: web.Request, handler: Any) -> web.StreamResponse:
    """Request id, access log and HTTP metrics for every request."""
    incoming = request.headers.get("X-Request-Id", "")
    # as random as uuid4().hex, at a fraction of its cost
    request_id = incoming if _REQUEST_ID.match(incoming) else random_bytes(16).hex()
    started = time.perf_counter()
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    tp = request.match_info.get("tp")
    if tp is not None and request.app[HUB].registrations.touchpoints.get(tp) is None:
        tp = None  # an unknown name is whatever the caller typed (personal data, even): not logged
    with structlog.contextvars.bound_contextvars(request_id=request_id, **({"touchpoint": tp} if tp else {})):
        response = await handler(request)
        elapsed = time.perf_counter() - started
        response.headers["X-Request-Id"] = request_id
        request.app[HUB_METRICS].http.labels(request.method, route, str(response.status)).observe(elapsed)
        if response.status == 429:
            _refused(request, route)
            return response
        log.info(
            "http",
            method=request.method,
            route=route,
            status=response.status,
            elapsed_ms=round(elapsed * 1000, 2),
        )
        return response


def _refused(request: web.Request, route: str) -> None:
    """A 429: counted always, logged once per key (or route) per ``[server] rate_limit_log_s``."""
    request.app[HUB_METRICS].rate_limited.labels(route).inc()
    key_id = request.get(RATE_LIMITED)
    refused = request.app[REFUSALS].refused(key_id or f"route:{route}")
    if refused is not None:
        log.warning("rate limited", route=route, key_id=key_id, refused=refused)


def app_options() -> dict[str, Any]:
    """What the application serving the hub's requests is built with.

    aiohttp reads these from the outermost application only: a service mounting the hub
    (``add_subapp``) builds its own with them, ``web.Application(**app_options())``, for the
    hub's routes to accept what they accept when the hub serves alone.
    """
    return {
        "client_max_size": MAX_BODY_BYTES,
        # a Snowplow GET carries its event in the query string: allow long request lines
        "handler_args": {"max_field_size": 16 * 1024, "max_line_size": 32 * 1024},
    }


async def _close_websockets(app: web.Application) -> None:
    sockets = app[WEBSOCKETS]
    for ws in list(sockets):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


def create_app(
    config: Config,
    *,
    plugins: Sequence[Any] = (),
    autoload: bool | None = None,
    migrate: bool = True,
    owns_process: bool = False,
    journal_processor: Literal["here", "elsewhere"] = "here",
) -> web.Application:
    """Build the hub's web application for ``config`` with every installed plugin (the
    ``plugins`` given alone with ``autoload=False``).

    It serves on its own (``prm serve``) or mounted in a service's application under a
    prefix (``app.add_subapp("/prm", create_app(...))``, the service's application built with
    :func:`app_options`): every path it answers and every URL its pages use is relative to
    where it is mounted.

    ``owns_process``: the process runs this hub and nothing else (``prm serve``). Only then
    does ``[server] freeze_heap`` default to true (see :func:`_freeze_heap`): freezing costs one
    full collection of the whole heap and changes how the process collects its garbage from then
    on, a decision for whoever owns the process (a service embedding the hub, a test run
    starting one hub per test), which sets ``freeze_heap = true`` to have it.

    ``journal_processor``: with ``[ingest] journal = true``, ``"here"`` processes the journal
    in this process, ``"elsewhere"`` leaves it to ``prm process`` processes.
    """
    protect_logs()
    pm = make_plugin_manager(plugins, autoload=autoload)
    registrations = collect_registrations(pm, config)
    # a bad [identity.rules] stops the hub here, before the database is touched
    IdentityRules.from_config(
        config.section("identity").get("rules", {}), registrations.namespaces.items, config.default_region
    )
    # a bad [destinations.*] setting stops prm serve here, before the database is touched
    # (the sinks opened to check them hold nothing: the hub opens its own as it starts)
    open_destinations(config, registrations.destination_kinds)
    app = web.Application(
        # a stalled body is answered 408 within [server] body_timeout_s (prm_core.server.deadlines)
        middlewares=[request_context, error_middleware, body_deadline(body_timeout_s(config))],
        **app_options(),
    )
    app[HUB_CONFIG] = config
    app[HUB_METRICS] = HubMetrics()
    app[WEBSOCKETS] = weakref.WeakSet()
    app.on_shutdown.append(_close_websockets)
    app[REFUSALS] = RefusalLog.from_config(config)
    limits = KeyRateLimits.from_config(config)
    if limits is not None:
        app[RATE_LIMITS] = limits
    app.add_routes(core_routes())
    app.add_routes(planning_routes())
    app.add_routes(privacy_routes())
    app.add_routes(identity_routes())
    app.add_routes(trigger_routes())
    app.add_routes(survey_routes())
    # by resource: a resource's path gains the prefix the app is mounted under, later
    owners: dict[int, str] = {}
    mounted = [(tp.name, tp.routes) for tp in registrations.touchpoints]
    mounted += [(f"{a.touchpoint} ({a.name})", a.routes) for a in registrations.adapters]
    for owner, route_defs in mounted:
        if route_defs:
            before = {id(r.resource) for r in app.router.routes() if r.resource}
            app.add_routes(route_defs)
            for r in app.router.routes():
                if r.resource and id(r.resource) not in before:
                    owners[id(r.resource)] = owner

    @api("This API description", scope=None, responses={200: "OpenAPI 3.1 document"})
    async def openapi(request: web.Request) -> web.Response:
        # {tp} is one of the registered touch points: say so, so clients and fuzzers need not guess
        touchpoints = sorted(request.app[HUB].registrations.touchpoints.names())
        resources = [r.resource for r in app.router.routes() if r.resource is not None]
        paths = {r.canonical: owners[id(r)] for r in resources if id(r) in owners}
        return web.json_response(build_openapi(request.app, paths, enums={"tp": touchpoints}))

    app.router.add_get("/openapi.json", openapi)

    async def hub_context(app: web.Application) -> AsyncIterator[None]:
        async with Hub.open(
            config, pm=pm, registrations=registrations, migrate=migrate, journal_processor=journal_processor
        ) as hub:
            app[HUB] = hub
            app[HUB_KEYS] = KeyRing(hub.store)
            # each destination's lag and counts, read from the relay as Prometheus scrapes
            app[HUB_METRICS].registry.register(hub.relay.collector())
            log.info(
                "hub started",
                touchpoints=registrations.touchpoints.names(),
                database=hub.store.url.render_as_string(hide_password=True),
            )
            yield

    app.cleanup_ctx.append(hub_context)
    # adapters' non-HTTP servers (FastAGI) start once the hub has, and stop before it
    for adapter in registrations.adapters:
        app.cleanup_ctx.extend(adapter.services)

    async def retention_context(app: web.Application) -> AsyncIterator[None]:
        # [touchpoints.<tp>] retention_days, purged on a schedule (prm_core.privacy.retention)
        async with retention_task(app[HUB]):
            yield

    app.cleanup_ctx.append(retention_context)
    if config.flag("server", "freeze_heap", owns_process):
        # on_startup handlers added now run after every cleanup_ctx has started (aiohttp runs
        # cleanup_ctx first), so the heap frozen is the started hub's
        app.on_startup.append(_freeze_heap)
        app.on_cleanup.append(_unfreeze_heap)
    return app


async def _freeze_heap(app: web.Application) -> None:
    """Move every object alive once the hub has started out of the garbage collector's sight.

    What start-up leaves (modules, plugins, SQLAlchemy's tables, compiled rules) lives as long
    as the process, yet every full collection walks it again: about 170,000 objects, a pause
    of 100-150 ms on the 2-core machine, landing on whichever request is running. Frozen,
    those collections walk only what was allocated since. (As Instagram's and gunicorn's
    ``gc.freeze()`` advice; ``[server] freeze_heap = false`` turns it off.)
    """
    gc.collect()
    gc.freeze()
    log.debug("heap frozen", objects=gc.get_freeze_count())


async def _unfreeze_heap(app: web.Application) -> None:
    # a stopped hub gives the heap back: an embedding service (or a test run) that goes on
    # must be able to collect what the hub left
    gc.unfreeze()
