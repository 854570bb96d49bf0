"""JSON errors: ``{"error": {"code", "message", "field"}}``, whatever went wrong."""

from __future__ import annotations

import json
from typing import Any

import structlog
from aiohttp import web

from ..errors import InvalidInput, NotFound, Overloaded, StoreUnavailable, TooLarge

__all__ = ["MAX_BODY_BYTES", "ApiError", "BodyTimeout", "error_middleware", "error_response"]

# the largest request body the hub reads (a batch of 1000 small events fits)
MAX_BODY_BYTES = 1024 * 1024

log = structlog.get_logger(__name__)


class ApiError(Exception):
    """An HTTP error with its JSON body's code, message and field."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None, **headers: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field, self.headers = status, code, message, field, headers


def error_response(status: int, code: str, message: str, field: str | None = None, **headers: str) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message, "field": field}
    return web.json_response({"error": body}, status=status, headers=headers or None)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


# the status of an answer nobody reads because the client closed the connection first
CLIENT_CLOSED = 499


def _route(request: web.Request) -> str:
    # the route's template, not the path: a path can name a customer (/v1/customers/email:...)
    return request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"


class BodyTimeout(TimeoutError):
    """The request body did not arrive within ``timeout_s`` (``[server] body_timeout_s``, see
    :mod:`prm_core.server.deadlines`). A ``TimeoutError``, so aiohttp's own read of what is
    left of an unread body (after the answer) stops on it and closes the connection."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(timeout_s)
        self.timeout_s = timeout_s


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except BodyTimeout as exc:
        # here, so that a handler turning its errors into answers itself (a browser route
        # adding CORS headers, through this middleware) answers it alike
        message = f"the request body did not arrive within {exc.timeout_s:g} s ([server] body_timeout_s)"
        response = error_response(408, "timeout", message)
        response.force_close()  # the rest of the body may still come: nothing more is read
        return response
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.field, **exc.headers)
    except json.JSONDecodeError as exc:
        return error_response(400, "malformed_json", f"the body is not valid JSON: {exc.msg} at position {exc.pos}")
    except InvalidInput as exc:
        return error_response(422, exc.code, exc.message, exc.field)
    except NotFound as exc:
        return error_response(404, exc.code, exc.message)
    except TooLarge as exc:
        return error_response(413, exc.code, exc.message, exc.field)
    except (Overloaded, StoreUnavailable) as exc:
        return error_response(
            503, "unavailable", f"{exc}; nothing was written, retry later", None, **{"Retry-After": "1"}
        )
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, "too_large", f"the body is larger than the limit of {MAX_BODY_BYTES} bytes")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, _HTTP_CODES.get(exc.status, "http_error"), exc.reason)
    except ConnectionResetError as exc:
        if request.transport is not None and not request.transport.is_closing():
            return _unhandled(request, exc)  # another connection reset (a database's): a fault
        # the client hung up (a stream it stopped following): nothing went wrong here, and the
        # answer reaches nobody; 499 as proxies write it ("client closed request")
        log.debug("client closed the connection", route=_route(request))
        return web.Response(status=CLIENT_CLOSED)
    except Exception as exc:
        return _unhandled(request, exc)


def _unhandled(request: web.Request, exc: Exception) -> web.Response:
    log.error("unhandled error", route=_route(request), error=type(exc).__name__, exc_info=exc)
    return error_response(500, "internal", "an internal error occurred; see the hub's log by X-Request-Id")
