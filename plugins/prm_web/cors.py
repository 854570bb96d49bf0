"""Which web pages may call the hub's tracking routes from a browser (CORS).

``[touchpoints.web] allowed_origins`` lists the sites whose pages send to the hub:
``["https://shop.example.com", "https://www.example.com"]``, or ``["*"]`` (the default) for
any site. A request from a listed origin (and the hub's own) gets the CORS answer browsers
need to send it and to read the hub's answer; a preflight from another origin gets none,
so the browser refuses the page's request, and a request that comes anyway (a beacon, a
``no-cors`` fetch) is refused with a 403 and stores nothing.

A grant never includes credentials (cookies): the browser SDKs keep their ids in the
page's own storage and authenticate with the write key, so no cookie of the hub's domain
is ever needed or read.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web
from attrs import frozen

__all__ = ["ALLOW_HEADERS", "BrowserOrigins", "origin_of"]

# what the browser SDKs send beyond the CORS-safelisted headers: the write key (Basic),
# a JSON content type (RudderStack), Segment's retry count, RudderStack's anonymous id,
# send time and retry headers
ALLOW_HEADERS = (
    "Authorization",
    "Content-Type",
    "X-Retry-Count",
    "AnonymousId",
    "SentAt",
    "Rsa-Recovered",
    "Rsa-Retry-Attempt",
    "Rsa-Since-Last-Attempt",
    "Rsa-Since-First-Attempt",
    "Rsa-Retry-Reason",
)
# the SDKs read Retry-After on a 429 to wait before their next try
EXPOSE_HEADERS = ("Retry-After",)
MAX_AGE_SECONDS = 7200  # Chromium's cap on caching a preflight


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of ``url``, lower-cased, default ports dropped;
    ``ValueError`` when it is not an http(s) URL with a host and nothing else."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) origin")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{url!r} is not an origin: only scheme://host[:port]")
    port = parts.port
    default = {"http": 80, "https": 443}[parts.scheme]
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


@frozen
class BrowserOrigins:
    """The origins allowed to call the tracking routes from a page, and the CORS answers."""

    any_origin: bool
    listed: frozenset[str]
    own: str | None = None  # the hub's public origin: its own pages may always send

    @classmethod
    def from_setting(cls, value: object, public_url: str | None = None) -> BrowserOrigins:
        """From ``[touchpoints.web] allowed_origins``; ``ValueError`` naming a bad entry."""
        where = "[touchpoints.web] allowed_origins"
        if value is None:
            value = ["*"]
        if not isinstance(value, list | tuple):
            raise ValueError(f'{where} must be a list of origins ("https://shop.example.com") or ["*"]')
        entries = list(value)
        if not all(isinstance(e, str) for e in entries):
            raise ValueError(f"{where} must be a list of strings")
        listed = set()
        for entry in entries:
            if entry == "*":
                continue
            try:
                listed.add(origin_of(entry))
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
        own = None
        if public_url:  # the hub's URL may carry a path (behind a proxy): its origin only
            parts = urlsplit(public_url)
            own = origin_of(f"{parts.scheme}://{parts.netloc}")
        return cls(any_origin="*" in entries, listed=frozenset(listed), own=own)

    def allows(self, request: web.Request) -> bool:
        """Whether the request's page may send: no ``Origin`` (not a browser page), the
        hub's own origin, or a listed one."""
        origin = request.headers.get("Origin")
        if origin is None:
            return True
        if self.any_origin:
            return True
        try:
            normal = origin_of(origin)
        except ValueError:
            return False  # "null" (a sandboxed frame, a file: page) and the like
        if normal in self.listed or normal == self.own:
            return True
        try:  # a page of the hub itself, however it was reached
            return normal == origin_of(f"{request.scheme}://{request.host}")
        except ValueError:
            return False

    def answer_headers(self, request: web.Request) -> dict[str, str]:
        """CORS headers for an answer (errors included, so a page can tell a refusal from
        a delivery): the page's origin echoed when it is allowed."""
        headers = {"Vary": "Origin"}
        origin = request.headers.get("Origin")
        if origin and self.allows(request):
            headers["Access-Control-Allow-Origin"] = origin
            headers["Access-Control-Expose-Headers"] = ", ".join(EXPOSE_HEADERS)
        return headers

    def preflight_answer(self, request: web.Request, methods: str) -> web.Response:
        """``204`` to a CORS preflight: the grant for an allowed origin, none for another."""
        headers = {"Vary": "Origin, Access-Control-Request-Headers"}
        origin = request.headers.get("Origin")
        if origin and self.allows(request):
            headers.update(
                {
                    "Access-Control-Allow-Origin": origin,
                    "Access-Control-Allow-Methods": methods,
                    "Access-Control-Allow-Headers": ", ".join(ALLOW_HEADERS),
                    "Access-Control-Max-Age": str(MAX_AGE_SECONDS),
                }
            )
        return web.Response(status=204, headers=headers)
