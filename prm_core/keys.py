"""API keys and scopes.

A key reads ``prm_<key id>_<secret>``. Only the SHA-256 of the secret is stored (the
secret is 256 random bits, so a slow hash would add nothing), and it is compared in
constant time. Verified keys are cached for a few seconds (``KeyRing.ttl``) so a revocation
takes effect quickly without a database read on every request; a revocation through
:meth:`KeyRing.revoke` takes effect at once in the process that made it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Collection
from datetime import datetime

import sqlalchemy as sa
from attrs import define, field, frozen
from sqlalchemy.engine import Connection

from .clock import monotonic
from .errors import InvalidInput
from .store import Store
from .store.tables import api_keys, utcnow

__all__ = [
    "ApiKey",
    "KeyListing",
    "KeyRing",
    "allows",
    "check_scope_target",
    "create_key",
    "list_keys",
    "revoke_key",
    "validate_scope",
]

_SCOPE = re.compile(r"^(admin|read|touchpoint:[a-z][a-z0-9_-]{0,62}|partner:[a-z][a-z0-9_-]{0,62})$")
_KEY = re.compile(r"^prm_([0-9a-f]{16})_([A-Za-z0-9_-]{20,100})$")


@frozen
class ApiKey:
    """A verified key: what it may do, and whether it is a public (browser) key."""

    id: str
    name: str
    scope: str
    public: bool
    created_at: datetime


def validate_scope(scope: str) -> str:
    if not _SCOPE.match(scope):
        raise InvalidInput(f"scope must be admin, read, touchpoint:<name> or partner:<name>; got {scope!r}", "scope")
    return scope


def allows(granted: str, needed: str) -> bool:
    """``admin`` may do anything; every other scope only exactly itself."""
    return granted == "admin" or hmac.compare_digest(granted, needed)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def create_key(
    store: Store,
    scope: str,
    *,
    name: str = "",
    public: bool = False,
    public_touchpoints: Collection[str] | None = None,
) -> tuple[str, ApiKey]:
    """Create a key; returns the full key (shown once, never stored) and its record.

    ``public_touchpoints``, when given, names the touch points that declare browser use
    (``TouchPoint.public_keys``): a public key of any other is refused here. The hub refuses
    such a key at every request anyway (a key made before, or without this check)."""
    validate_scope(scope)
    if public and not scope.startswith("touchpoint:"):
        # a public key is readable by anyone who opens the page: it may only send events
        raise InvalidInput(f"only a touchpoint:<name> key can be public; {scope!r} must stay secret", "scope")
    if public and public_touchpoints is not None and scope.removeprefix("touchpoint:") not in public_touchpoints:
        takes = ", ".join(f"touchpoint:{tp}" for tp in sorted(public_touchpoints)) or "none here"
        raise InvalidInput(
            f"{scope} takes no public keys (browsers do not send to it); public keys are for {takes}", "scope"
        )
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    record = ApiKey(key_id, name, scope, public, utcnow())

    def write(conn: Connection) -> None:
        conn.execute(
            api_keys.insert().values(
                id=key_id, name=name, scope=scope, public=public, secret_hash=_digest(secret),
                created_at=record.created_at,
            )
        )  # fmt: skip

    await store.write(write)
    return f"prm_{key_id}_{secret}", record


async def revoke_key(store: Store, key_id: str) -> bool:
    """Revoke a key by its id; ``False`` when there is no such key or it was already revoked.

    A :class:`KeyRing` in another process keeps honouring the key until its cached entry is
    ``ttl`` seconds old.
    """

    def write(conn: Connection) -> bool:
        done = conn.execute(
            api_keys.update()
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        return bool(done.rowcount)

    return await store.write(write)


@frozen
class KeyListing:
    """What ``prm keys list`` shows of a key: never its secret or the secret's hash."""

    id: str
    scope: str
    name: str
    public: bool
    created_at: datetime
    revoked_at: datetime | None

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "scope": self.scope,
            "name": self.name,
            "public": self.public,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


async def list_keys(store: Store, *, include_revoked: bool = True) -> list[KeyListing]:
    """Every key, oldest first (only the columns that are safe to show)."""
    c = api_keys.c
    query = sa.select(c.id, c.scope, c.name, c.public, c.created_at, c.revoked_at).order_by(c.created_at, c.id)
    if not include_revoked:
        query = query.where(c.revoked_at.is_(None))

    def read(conn: Connection) -> list[KeyListing]:
        return [
            KeyListing(r.id, r.scope, r.name, bool(r.public), r.created_at, r.revoked_at) for r in conn.execute(query)
        ]

    return await store.read(read)


def check_scope_target(scope: str, touchpoints: Collection[str], partners: Collection[str]) -> None:
    """A ``touchpoint:<name>`` scope must name a registered touch point and ``partner:<name>`` a
    configured partner: a key for a misspelled name would be refused at every request."""
    kind, _, name = validate_scope(scope).partition(":")
    known = {"touchpoint": touchpoints, "partner": partners}.get(kind)
    if known is None or name in known:
        return
    listed = ", ".join(f"{kind}:{n}" for n in sorted(known)) or "none"
    where = "registered touch point" if kind == "touchpoint" else "configured partner ([partners.<name>])"
    raise InvalidInput(f"{scope}: {name!r} is not a {where}; known: {listed}", "scope")


@define
class KeyRing:
    """Verifies presented keys against the store, with a short cache."""

    store: Store
    ttl: float = 10.0
    # made-up key ids remembered as misses, at most this many (then forgotten all at once)
    max_misses: int = 10_000
    _cache: dict[str, tuple[float, str, ApiKey]] = field(factory=dict)
    _misses: dict[str, float] = field(factory=dict)

    async def verify(self, presented: str) -> ApiKey | None:
        """The key's record when ``presented`` is a valid, unrevoked key; else ``None``."""
        match = _KEY.match(presented)
        if not match:
            return None
        key_id, secret = match.groups()
        now = monotonic()
        missed = self._misses.get(key_id)
        if missed is not None and now - missed <= self.ttl:
            return None
        cached = self._cache.get(key_id)
        if cached is None or now - cached[0] > self.ttl:
            loaded = await self._load(key_id)
            if loaded is None:
                # misses live apart, so made-up key ids cannot evict the real keys' entries
                if len(self._misses) >= self.max_misses:
                    self._misses.clear()
                self._misses[key_id] = now
                self._cache.pop(key_id, None)
                return None
            cached = (now, *loaded)
            self._cache[key_id] = cached
        _, stored_hash, record = cached
        return record if hmac.compare_digest(stored_hash, _digest(secret)) else None

    async def revoke(self, key_id: str) -> bool:
        """:func:`revoke_key`, and forget the key here at once (other processes within ``ttl``)."""
        revoked = await revoke_key(self.store, key_id)
        self._cache.pop(key_id, None)
        return revoked

    async def _load(self, key_id: str) -> tuple[str, ApiKey] | None:
        """The stored hash and record of an unrevoked key."""

        def read(conn: Connection) -> tuple[str, ApiKey] | None:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).one_or_none()
            if row is None or row.revoked_at is not None:
                return None
            return row.secret_hash, ApiKey(row.id, row.name, row.scope, row.public, row.created_at)

        return await self.store.read(read)
