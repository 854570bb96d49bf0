"""Export (``GET /v1/customers/{ref}/export``): everything held about a customer, as JSON.

The profile, identities (own and shared), consents, memberships (as member and as group),
merges, metrics and any erasure come from one read; then every event and every dialogue
follow in pages, so a customer with a long history is streamed, never held in memory.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..model import dialogue_json
from ..store.tables import (
    consents,
    customers,
    dialogues,
    erasures,
    events,
    identities,
    memberships,
    merges,
    metrics,
    outbox,
    shared_links,
    utcnow,
)
from ..view import _dialogue, resolve_ref
from .consents import consent_json

if TYPE_CHECKING:
    from ..hub import Hub

__all__ = ["PAGE", "export_chunks"]

PAGE = 500


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, Decimal):
        return str(value)
    return value


def _row(row: Any) -> dict[str, Any]:
    return {k: _plain(v) for k, v in row._mapping.items()}


def _head(conn: Connection, cid: str) -> dict[str, Any]:
    owners = [cid, *(r.id for r in conn.execute(sa.select(customers.c.id).where(customers.c.merged_into == cid)))]
    profile = _row(conn.execute(sa.select(customers).where(customers.c.id == cid)).one())
    c = identities.c
    link = shared_links.c
    m = memberships.c
    erased = conn.execute(sa.select(erasures).where(erasures.c.customer_id == cid)).first()
    return {
        "exported_at": _iso(utcnow()),
        "customer": profile,
        "merged_ids": owners[1:],
        "identities": [
            _row(r)
            for r in conn.execute(
                sa.select(c.namespace, c.value, c.shared, c.first_seen_at)
                .where(c.customer_id == cid)
                .order_by(c.namespace, c.value)
            )
        ],
        "shared_identities": [
            _row(r)
            for r in conn.execute(
                sa.select(link.namespace, link.value, link.last_seen_at)
                .where(link.customer_id.in_(owners))
                .order_by(link.namespace, link.value)
            )
        ],
        "consents": [
            {**consent_json(r), "customer_id": r.customer_id, "event_id": r.event_id}
            for r in conn.execute(
                sa.select(consents)
                .where(consents.c.customer_id.in_(owners))
                .order_by(consents.c.purpose, consents.c.channel)
            )
        ],
        "memberships": [
            _row(r)
            for r in conn.execute(
                sa.select(m.group_id, m.member_id, m.role, m.created_at)
                .where(sa.or_(m.member_id == cid, m.group_id == cid))
                .order_by(m.created_at)
            )
        ],
        "merges": [
            _row(r)
            for r in conn.execute(
                sa.select(merges)
                .where(sa.or_(merges.c.survivor_id.in_(owners), merges.c.merged_id.in_(owners)))
                .order_by(merges.c.merged_at)
            )
        ],
        "metrics": [_row(r) for r in conn.execute(sa.select(metrics).where(metrics.c.customer_id.in_(owners)))],
        # what was asked of partners on the customer's behalf, with what was sent and answered
        "partner_requests": [
            _row(r)
            for r in conn.execute(
                sa.select(outbox).where(outbox.c.customer_id.in_(owners)).order_by(outbox.c.requested_at, outbox.c.id)
            )
        ],
        "erasure": _row(erased) if erased is not None else None,
    }


def _events_page(conn: Connection, cid: str, after: tuple[datetime, int] | None) -> list[Any]:
    e = events.c
    q = sa.select(events).where(e.customer_id == cid)
    if after is not None:
        q = q.where(sa.or_(e.occurred_at > after[0], sa.and_(e.occurred_at == after[0], e.seq > after[1])))
    return list(conn.execute(q.order_by(e.occurred_at, e.seq).limit(PAGE)))


def _dialogues_page(conn: Connection, cid: str, after: tuple[datetime, str] | None) -> list[Any]:
    d = dialogues.c
    q = sa.select(dialogues).where(d.customer_id == cid)
    if after is not None:
        q = q.where(sa.or_(d.last_event_at > after[0], sa.and_(d.last_event_at == after[0], d.id > after[1])))
    return list(conn.execute(q.order_by(d.last_event_at, d.id).limit(PAGE)))


def _event_json(r: Any) -> dict[str, Any]:
    return {
        "touchpoint": r.touchpoint,
        "id": r.event_id,
        "type": r.type,
        "occurred_at": _iso(r.occurred_at),
        "received_at": _iso(r.received_at),
        "dialogue_id": r.dialogue_id,
        "direction": r.direction,
        "identities": r.identities,
        "data": r.data,
    }


async def export_chunks(hub: Hub, ref: str) -> AsyncIterator[bytes]:
    """The export document in pieces. Resolving ``ref`` happens before the first piece, so
    a bad ref fails as a whole (404) rather than as a cut-off document."""
    namespaces = hub.registrations.namespaces.items

    def head(conn: Connection) -> tuple[str, dict[str, Any]]:
        cid = resolve_ref(conn, ref, namespaces, hub.config.default_region)
        return cid, _head(conn, cid)

    cid, document = await hub.store.read(head)
    return _stream(hub, cid, document)


async def _stream(hub: Hub, cid: str, document: dict[str, Any]) -> AsyncIterator[bytes]:
    yield json.dumps(document)[:-1].encode() + b', "events": ['
    after: Any = None
    first = True
    while True:
        page = await hub.store.read(partial(_events_page, cid=cid, after=after))
        for r in page:
            yield (b"" if first else b",") + json.dumps(_event_json(r)).encode()
            first = False
        if len(page) < PAGE:
            break
        after = (page[-1].occurred_at, page[-1].seq)
    yield b'], "dialogues": ['
    after, first = None, True
    while True:
        page = await hub.store.read(partial(_dialogues_page, cid=cid, after=after))
        for r in page:
            yield (b"" if first else b",") + json.dumps(dialogue_json(_dialogue(r))).encode()
            first = False
        if len(page) < PAGE:
            break
        after = (page[-1].last_event_at, page[-1].id)
    yield b"]}"
