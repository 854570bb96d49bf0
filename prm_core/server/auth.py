"""Authentication: ``Authorization: Bearer <key>`` or HTTP Basic with the key as user name."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

from aiohttp import web
from attrs import evolve

from ..keys import ApiKey, allows
from ..model import Event
from .errors import ApiError
from .ratelimit import RATE_LIMITED, RATE_LIMITS
from .state import API_KEY, HUB, HUB_KEYS

__all__ = [
    "VERIFIABLE_FROM_BROWSERS",
    "as_claims",
    "authenticate",
    "grants",
    "limit_keyless",
    "presented_key",
    "public_refusal",
    "require",
]


def presented_key(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer" and credentials:
        return credentials
    if scheme.lower() == "basic" and credentials:
        try:
            user, _, _password = base64.b64decode(credentials, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise ApiError(401, "unauthorized", "the Basic credentials are not valid base64") from None
        return user or None
    return None


async def authenticate(request: web.Request, key: str | None = None) -> ApiKey:
    """The verified key of this request, or 401."""
    key = key or presented_key(request)
    if not key:
        raise ApiError(
            401, "unauthorized", "an API key is required: Authorization: Bearer <key>",
            **{"WWW-Authenticate": 'Bearer realm="prm"'},
        )  # fmt: skip
    record = await request.app[HUB_KEYS].verify(key)
    if record is None:
        raise ApiError(401, "unauthorized", "the API key is not valid or was revoked")
    limits = request.app.get(RATE_LIMITS)
    # a handler may authenticate more than once (then check the scope): count the request once
    counted = request.get(API_KEY) is not None and request[API_KEY].id == record.id
    if limits is not None and not counted:
        wait = limits.retry_after(record.id, public=record.public, client=request.remote)
    else:
        wait = None
    if wait is not None:
        request[RATE_LIMITED] = record.id
        raise ApiError(
            429, "rate_limited", f"this key is over its rate limit; retry in {wait} s", **{"Retry-After": str(wait)}
        )
    request[API_KEY] = record
    return record


def limit_keyless(request: web.Request, route: str) -> None:
    """Count a call of a route that takes no key (``[server] rate_limit_keyless``, per route and
    client address); 429 with ``Retry-After`` past the limit. A call that presents a key is
    counted against its key by :func:`authenticate` instead."""
    limits = request.app.get(RATE_LIMITS)
    wait = limits.retry_after_keyless(route, request.remote) if limits is not None else None
    if wait is not None:
        raise ApiError(
            429, "rate_limited", f"too many calls from this address; retry in {wait} s", **{"Retry-After": str(wait)}
        )


async def require(request: web.Request, scope: str, *others: str, key: str | None = None) -> ApiKey:
    """Authenticate and check the key grants ``scope`` (or one of ``others``): 403 naming
    what is needed. A public key also needs a route that takes public keys (``@api(public=True)``)
    and a touch point that declares them (``TouchPoint.public_keys``): see :func:`public_refusal`."""
    return grants(request, await authenticate(request, key), scope, *others)


def grants(request: web.Request, record: ApiKey, scope: str, *others: str) -> ApiKey:
    """``record`` (a key :func:`authenticate` verified for this request) when it grants
    ``scope`` (or one of ``others``) here; 403 naming what is needed, as :func:`require`."""
    needed = (scope, *others)
    if record.public and (refusal := public_refusal(request, record)):
        raise ApiError(403, "forbidden", refusal)
    if not any(allows(record.scope, s) for s in needed):
        verb = "grants neither" if others else "does not grant"
        wanted = " nor ".join(repr(s) for s in needed)
        raise ApiError(403, "forbidden", f"this key's scope {record.scope!r} {verb} {wanted}")
    return record


def public_refusal(request: web.Request, record: ApiKey) -> str | None:
    """Why this request may not be made with the public key ``record``; ``None`` when it may.

    A public key is in every visitor's browser, so anyone holds it: it is good only where a
    route declares that it takes public keys (sending events, a stranger's answer) and only
    for a touch point that declares browser use. Everything else, and a public key made
    before that rule for any other touch point, is refused whatever its scope."""
    meta = getattr(request.match_info.handler, "__prm_api__", None) or {}
    if not meta.get("public"):
        return "a public key only sends events; this route needs a secret key"
    name = record.scope.removeprefix("touchpoint:")
    hub = request.app.get(HUB)
    touchpoint = hub.registrations.touchpoints.get(name) if hub is not None and name != record.scope else None
    if touchpoint is None or not touchpoint.public_keys:
        return f"{record.scope!r} takes no public keys: only a touch point browsers send to does"
    return None


# the identities a browser can be trusted with: its own device id, which it made up itself
VERIFIABLE_FROM_BROWSERS = frozenset({"anonymous_id"})


def as_claims(request: web.Request, events: Sequence[Event], *, verified: bool | None = None) -> list[Event]:
    """Under a public key (code in browsers, where anyone can read the key), an identity
    other than the browser's own anonymous id is only a claim: it is kept in the event's
    ``data.claimed_identities`` and does not link the visitor to that customer, so nobody
    can reach someone else's profile by typing their email into a form. The events are
    marked unverified, so their dialogue key does not reach another customer either; a
    verified source (a secret key naming the same device id and the email, the customer
    logging in) links them, by the ordinary merge."""
    if verified is None:
        key = request.get(API_KEY)
        verified = key is None or not key.public
    if verified:
        return list(events)
    result = []
    for ev in events:
        claimed = {i.namespace: i.value for i in ev.identities if i.namespace not in VERIFIABLE_FROM_BROWSERS}
        if not claimed:
            result.append(evolve(ev, verified=False))
            continue
        kept = tuple(i for i in ev.identities if i.namespace in VERIFIABLE_FROM_BROWSERS)
        result.append(evolve(ev, identities=kept, data={**ev.data, "claimed_identities": claimed}, verified=False))
    return result
