"""Authentication: ``Authorization: Bearer <key>`` or HTTP Basic with the key as user name."""

from __future__ import annotations

import base64
import binascii

from aiohttp import web

from ..keys import ApiKey, allows
from .errors import ApiError
from .state import API_KEY, HUB_KEYS

__all__ = ["authenticate", "presented_key", "require"]


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
    request[API_KEY] = record
    return record


async def require(request: web.Request, scope: str, *, key: str | None = None) -> ApiKey:
    """Authenticate and check the key grants ``scope`` (403 naming the scope needed)."""
    record = await authenticate(request, key)
    if not allows(record.scope, scope):
        raise ApiError(403, "forbidden", f"this key's scope {record.scope!r} does not grant {scope!r}")
    return record
