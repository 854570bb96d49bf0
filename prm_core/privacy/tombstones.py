"""Tombstones: keyed hashes of erased identities, so that old events do not bring a person back.

Erasure leaves ``HMAC-SHA256(key, "namespace:value")`` for every identity it removes. The
key is the hub's own (``[privacy] tombstone_secret`` in the config, else a random one the
migration stored in the database), so a tombstone cannot be reversed by hashing guessed
emails or phone numbers without it.

Recording checks every event's identities, and the identities an unverified source only
claimed, against the tombstones (one indexed query per batch). An event naming an erased
identity is still acknowledged, so a replay does not
retry forever, but it is stored scrubbed: without that identity and without its ``data``,
which was the erased person's. A tombstoned identity is never linked or created again.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from attrs import evolve
from sqlalchemy.engine import Connection

from ..model import Event, Identity
from ..store.lists import one_of
from ..store.tables import privacy_keys, tombstones

__all__ = ["SCRUBBED", "digest", "lift_tombstone", "load_tombstone_key", "scrub_tombstoned", "tombstoned"]

# what a scrubbed event's data says instead of what it carried
SCRUBBED: Mapping[str, Any] = {"erased": True}
_CHUNK = 400


def digest(key: bytes, namespace: str, value: str) -> str:
    """The tombstone of one identity."""
    mac = _keyed(key).copy()
    mac.update(f"{namespace}:{value}".encode())
    return mac.hexdigest()


@functools.lru_cache(maxsize=8)
def _keyed(key: bytes) -> hmac.HMAC:
    """An HMAC that has taken ``key`` and nothing else, to copy: every batch checks its
    identities, and keying a new HMAC each time cost as much as hashing the identity."""
    return hmac.new(key, digestmod=hashlib.sha256)


# built once per database kind: building the statement cost more than running it, in every
# recording transaction; the digests are one parameter (prm_core.store.lists)
_TOMBSTONED = {
    pg: sa.select(tombstones.c.digest).where(one_of(tombstones.c.digest, "digests", pg)) for pg in (False, True)
}


def load_tombstone_key(conn: Connection, configured: Mapping[str, Any]) -> bytes:
    """``[privacy] tombstone_secret`` if the config sets one, else the database's own key."""
    secret = configured.get("tombstone_secret")
    if isinstance(secret, str) and secret:
        return secret.encode()
    value = conn.execute(sa.select(privacy_keys.c.value).where(privacy_keys.c.name == "tombstone")).scalar_one()
    return str(value).encode()


def tombstoned(conn: Connection, key: bytes, idents: Iterable[Identity]) -> set[Identity]:
    """Which of ``idents`` were erased."""
    by_digest = {digest(key, i.namespace, i.value): i for i in idents}
    found: set[Identity] = set()
    wanted = sorted(by_digest)
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        for (d,) in conn.execute(_TOMBSTONED[conn.dialect.name == "postgresql"], {"digests": chunk}):
            found.add(by_digest[d])
    return found


def _claims(ev: Event) -> set[Identity]:
    """What an unverified source claimed (``data.claimed_identities``, already normalized)."""
    claimed = ev.data.get("claimed_identities")
    if not isinstance(claimed, Mapping):
        return set()
    return {Identity(str(ns), v) for ns, v in claimed.items() if isinstance(v, str)}


def scrub_tombstoned(conn: Connection, key: bytes, batch: Sequence[Event], todo: Iterable[int]) -> list[Event]:
    """``batch`` with the events at ``todo`` (those about to be recorded) scrubbed where they
    name an erased identity, as an identity or as a claim: that identity and the event's
    data are dropped."""
    result = list(batch)
    named = {n: (*batch[n].identities, *_claims(batch[n])) for n in todo}
    erased = tombstoned(conn, key, {i for idents in named.values() for i in idents})
    if not erased:
        return result
    for n, idents in named.items():
        ev = batch[n]
        if any(i in erased for i in idents):
            kept = tuple(i for i in ev.identities if i not in erased)
            result[n] = evolve(ev, identities=kept, data=dict(SCRUBBED))
    return result


def lift_tombstone(conn: Connection, key: bytes, ident: Identity) -> bool:
    """Forget the tombstone of ``ident`` (the person came back and asked to be known again);
    whether there was one."""
    gone = conn.execute(tombstones.delete().where(tombstones.c.digest == digest(key, ident.namespace, ident.value)))
    return bool(gone.rowcount)
