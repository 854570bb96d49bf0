"""The web portal and site: page views, tracked actions, portal requests.

Registers the ``web`` touch point; its budget is ``[touchpoints.web] budget_ms``
(default 250 ms). A visit ends after ``session_timeout_minutes`` (default 30) of
inactivity; each visit is one dialogue. ``GET /prm.js`` serves the browser tracking
snippet (see docs/web.md), which sends to the Segment tracking API at ``/v1/batch``.
``[touchpoints.web] allowed_origins`` names the sites whose pages may send to the tracking
routes (see :mod:`prm_web.cors`).
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from importlib import resources
from typing import Any

from aiohttp import web

from prm_core.plugin import Config, TouchPoint, hookimpl

__all__ = ["prm_touchpoints", "snippet_route"]

SNIPPET_HEADERS = {
    "Cache-Control": "public, max-age=300",
    # public static code: lets a page load it with crossorigin="anonymous" (and SRI)
    "Access-Control-Allow-Origin": "*",
    "X-Content-Type-Options": "nosniff",
}


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or etag in (t.removeprefix("W/") for t in tags)


def snippet_route() -> Any:
    """``GET /prm.js``: the snippet, read from the package once, with an ETag for revalidation."""
    body = resources.files(__package__).joinpath("prm.js").read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {**SNIPPET_HEADERS, "ETag": etag}

    async def prm_js(request: web.Request) -> web.Response:
        """The browser tracking snippet (public: no key)

        Configure it with data-key (a public touchpoint:web key) and data-host on its script tag.
        Answers 304 to a matching If-None-Match.
        """
        if _etag_matches(request.headers.get("If-None-Match"), etag):
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, headers=headers, content_type="application/javascript", charset="utf-8")

    return web.get("/prm.js", prm_js)


@hookimpl
def prm_touchpoints(config: Config) -> list[TouchPoint]:
    settings = config.touchpoint("web")
    minutes = settings.get("session_timeout_minutes", 30)
    return [
        TouchPoint(
            name="web",
            channel="web",
            budget_ms=int(settings.get("budget_ms", 250)),
            dialogue_timeout=timedelta(minutes=minutes),
            routes=[snippet_route()],
            description=__doc__.split("\n", 1)[0],
            public_keys=True,  # prm.js and browser trackers send with a key every visitor can read
        )
    ]
