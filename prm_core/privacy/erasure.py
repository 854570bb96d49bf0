"""Erasure (``DELETE /v1/customers/{ref}``): a customer's personal data removed for good.

In one transaction, for the customer and every customer merged into it:

- each identity is deleted and leaves a tombstone (see :mod:`.tombstones`), so events
  replayed later are acknowledged but never link or create it again; a shared value (a
  household phone) is not the customer's alone: it loses its owner and its link to them;
- the profile keeps its id and kind only (traits and tier gone); memberships and consents go;
  its dialogues keep their own id as their key, not the touch point's (which may be anything);
- every event of the customer keeps what aggregates need (touch point, type, time, dialogue)
  and loses its payload (``data``) and identities; the metrics row stays, now anonymous;
- other customers' events in which a public key or tracker only *claimed* one of its
  identities lose their payload too;
- merge audit records lose the identities they list;
- survey answers stay in the scorecard's figures, no longer linked to the customer;
- partner work not yet sent is called off, and every partner request loses what was sent and
  answered (its partner, action and status stay, for the scorecard); a partner's answer or
  callback about one of them arriving later is dropped (:func:`prm_core.outbox.erased_requests`);
- an ``erasures`` row records which ids were erased, when, and by which key.

Then ``prm_customer_erased`` tells plugins to purge rows of their own (an outbox). Erasing
again is harmless and calls them again, which is how a plugin that failed catches up.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import structlog
from attrs import evolve, frozen
from sqlalchemy.engine import Connection

from ..feed.changes import NewChange
from ..feed.writing import emit, scrub_customers
from ..store.engine import advisory_locks, customer_lock_key, identity_lock_key
from ..store.tables import (
    consents,
    customers,
    dialogues,
    erasures,
    events,
    identities,
    memberships,
    merges,
    outbox,
    shared_links,
    survey_answers,
    tombstones,
    utcnow,
)
from ..view import resolve_ref
from .tombstones import SCRUBBED, digest

if TYPE_CHECKING:
    from ..hub import Hub

__all__ = ["Erasure", "erase_customer", "erase_in_transaction", "lock_customer"]

log = structlog.get_logger(__name__)


@frozen
class Erasure:
    """What an erasure did. ``incomplete`` names plugins that failed to purge their part."""

    customer_id: str
    erased_ids: tuple[str, ...]
    identities: int
    events: int
    claims: int
    incomplete: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id,
            "erased_ids": list(self.erased_ids),
            "identities": self.identities,
            "events": self.events,
            "claims": self.claims,
            "incomplete": list(self.incomplete),
        }


def lock_customer(conn: Connection, customer_id: str) -> str:
    """Take the customer's lock as ingest does (PostgreSQL), following merges."""
    while True:
        advisory_locks(conn, [customer_lock_key(customer_id)])
        row = conn.execute(sa.select(customers.c.merged_into).where(customers.c.id == customer_id)).one()
        if row.merged_into is None:
            return customer_id
        customer_id = row.merged_into


def _lock_identities(conn: Connection, customer_id: str) -> None:
    """PostgreSQL: hold the identity locks ingest takes first, for every identity about to be
    erased, so a batch naming one waits for the erasure and then meets its tombstone (else it
    could have read the identity before the erasure and write it back after)."""
    if conn.dialect.name != "postgresql":
        return
    held: set[str] = set()
    while True:
        row = conn.execute(sa.select(customers.c.merged_into).where(customers.c.id == customer_id)).one()
        cid = row.merged_into or customer_id
        owners = sa.select(customers.c.id).where(sa.or_(customers.c.id == cid, customers.c.merged_into == cid))
        c = identities.c
        keys = {
            identity_lock_key(r.namespace, r.value)
            for r in conn.execute(sa.select(c.namespace, c.value).where(c.customer_id.in_(owners)))
        }
        if keys <= held:
            return
        advisory_locks(conn, keys - held)
        held |= keys


def erase_in_transaction(
    conn: Connection, customer_id: str, *, key: bytes, now: datetime, erased_by: str | None = None
) -> Erasure:
    """Erase ``customer_id`` (resolved) inside the caller's write transaction.

    On SQLite what the erasure frees is overwritten with zeros (``secure_delete``, set on every
    connection by :mod:`prm_core.store.engine`); :func:`erase_customer` then checkpoints the
    write-ahead log, so no old copy of a row stays in either file."""
    _lock_identities(conn, customer_id)
    cid = lock_customer(conn, customer_id)
    merged = sorted(r.id for r in conn.execute(sa.select(customers.c.id).where(customers.c.merged_into == cid)))
    owners = [cid, *merged]
    c = identities.c
    owned = list(conn.execute(sa.select(c.namespace, c.value, c.shared).where(c.customer_id.in_(owners))))
    own = [r for r in owned if not r.shared]
    digests = sorted({digest(key, r.namespace, r.value) for r in own})
    known = {
        r.digest for r in conn.execute(sa.select(tombstones.c.digest).where(tombstones.c.digest.in_(digests or [""])))
    }
    fresh = [{"digest": d, "erased_at": now} for d in digests if d not in known]
    if fresh:
        conn.execute(tombstones.insert(), fresh)
    conn.execute(identities.delete().where(c.customer_id.in_(owners), c.shared.is_(False)))
    # a shared value stays a shared value for the others who use it, but is no longer anyone's
    conn.execute(identities.update().where(c.customer_id.in_(owners)).values(customer_id=None))
    conn.execute(shared_links.delete().where(shared_links.c.customer_id.in_(owners)))

    e = events.c
    scrubbed = (
        conn.execute(
            events.update()
            .where(sa.or_(e.customer_id.in_(owners), e.ingest_customer_id.in_(owners)))
            .values(data=dict(SCRUBBED), identities=[])
        ).rowcount
        or 0
    )
    claims = _scrub_claims(conn, [(r.namespace, r.value) for r in own])
    # a touch point's dialogue key may be anything it chose (a phone number as a call id):
    # the dialogue keeps its own id as its key
    conn.execute(dialogues.update().where(dialogues.c.customer_id.in_(owners)).values(ref=dialogues.c.id))
    blank: dict[str, Any] = {"traits": {}, "tier": None, "tier_source": None, "updated_at": now}
    conn.execute(customers.update().where(customers.c.id.in_(owners)).values(**blank))
    m = memberships.c
    conn.execute(memberships.delete().where(sa.or_(m.member_id.in_(owners), m.group_id.in_(owners))))
    conn.execute(consents.delete().where(consents.c.customer_id.in_(owners)))
    # read as text: an audit record no JSON reader takes still names identities; it keeps none
    moved_text = sa.cast(merges.c.moved, sa.LargeBinary if conn.dialect.name == "sqlite" else sa.Text)
    for row in conn.execute(
        sa.select(merges.c.id, moved_text.label("moved")).where(
            sa.or_(merges.c.survivor_id.in_(owners), merges.c.merged_id.in_(owners))
        )
    ).all():
        moved = _lenient_json(row.moved)
        if not isinstance(moved, dict):
            conn.execute(merges.update().where(merges.c.id == row.id).values(moved={"identities": []}))
        elif moved.get("identities"):
            conn.execute(merges.update().where(merges.c.id == row.id).values(moved={**moved, "identities": []}))

    # partner work (prm_core.outbox) names the person in what was sent and answered. Work not yet
    # sent is called off: bumping ``attempts`` also fences a dispatcher holding it right now, so
    # its partner's answer is not written back. Then every row loses its payload and result, and
    # its ``updated_at`` becomes the erasure's time, by which prm_core.outbox.erased_requests knows
    # the rows an erasure scrubbed (a partner's later word about them is dropped).
    o = outbox.c
    conn.execute(
        outbox.update()
        .where(o.customer_id.in_(owners), o.status == "pending")
        .values(status="failed", next_attempt_at=None, attempts=o.attempts + 1, last_error="customer erased")
    )
    conn.execute(outbox.update().where(o.customer_id.in_(owners)).values(payload={}, result={}, updated_at=now))

    # survey answers (prm_core.surveys) stay in the figures, no longer anyone's
    conn.execute(survey_answers.update().where(survey_answers.c.customer_id.in_(owners)).values(customer_id=None))

    # the change feed (prm_core.feed) keeps the person's earlier changes in order, without their data;
    # the erasure itself is a change, so destinations purge their copies too
    scrub_customers(conn, owners)
    emit(conn, NewChange("customer.erased", cid, {"merged_ids": merged}, at=now))

    done = conn.execute(sa.select(erasures.c.customer_id).where(erasures.c.customer_id == cid)).first()
    values = {"erased_at": now, "erased_by": erased_by, "merged_ids": merged}
    if done is None:
        conn.execute(erasures.insert().values(customer_id=cid, **values))
    else:
        conn.execute(erasures.update().where(erasures.c.customer_id == cid).values(**values))
    return Erasure(
        customer_id=cid, erased_ids=tuple(owners), identities=len(owned), events=int(scrubbed), claims=claims
    )


def _scrub_claims(conn: Connection, erased: list[tuple[str, str]]) -> int:
    """Scrub other customers' events in which an unverified source claimed an erased identity
    (``data.claimed_identities``): the person typing their email on a device they never
    logged in from.

    Whatever any one row holds (``Infinity`` or a lone surrogate stored before the loader
    refused them, a NUL, nesting past a JSON reader's limit, text that is not JSON at all),
    the scan reads it: the database only looks for the erased values in the payload's bytes
    (``instr`` over a BLOB on SQLite, ``strpos`` over jsonb's text on PostgreSQL), never with
    its JSON functions, and the few rows found are read here. A row whose payload no reader
    takes, or is not an object, and that holds an erased value is scrubbed whole. The scan
    goes over the whole log, which an erasure (rare, admin-paced) can afford."""
    values = sorted({value for _, value in erased})
    if not values:
        return 0
    sqlite = conn.dialect.name == "sqlite"
    # as the store writes a value into JSON (ASCII-escaped), as jsonb renders it, as it is
    needles = sorted(
        {form for v in values for form in (v, json.dumps(v)[1:-1], json.dumps(v, ensure_ascii=False)[1:-1])}
    )
    payload = sa.cast(events.c.data, sa.LargeBinary if sqlite else sa.Text)
    found = (
        [sa.func.instr(payload, sa.literal(n.encode(), sa.LargeBinary)) > 0 for n in needles]
        if sqlite
        else [sa.func.strpos(payload, n) > 0 for n in needles]
    )
    wanted = set(values)
    scrub = [
        row.seq
        for row in conn.execute(sa.select(events.c.seq, payload.label("data")).where(sa.or_(*found)))
        if _claims_any(_lenient_json(row.data), wanted)
    ]
    count = 0
    for start in range(0, len(scrub), _CHUNK):
        chunk = scrub[start : start + _CHUNK]
        count += conn.execute(events.update().where(events.c.seq.in_(chunk)).values(data=dict(SCRUBBED))).rowcount or 0
    return count


_UNREADABLE = object()
_CHUNK = 500  # rows updated per statement: an IN list of bound parameters stays small


def _lenient_json(raw: str | bytes) -> Any:
    """Stored JSON as Python's reader takes it (NaN and Infinity included), or ``_UNREADABLE``
    (the columns read are never NULL)."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # malformed, not UTF-8, a huge integer, too deep
        return _UNREADABLE


def _claims_any(data: Any, erased: set[str]) -> bool:
    """Whether an event payload claims one of ``erased`` (a string anywhere in its
    ``claimed_identities``); a payload that is unreadable or not an object counts as one."""
    if not isinstance(data, dict):
        return True
    stack = [data.get("claimed_identities")]
    while stack:
        node = stack.pop()
        if isinstance(node, str) and node in erased:
            return True
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


async def erase_customer(hub: Hub, ref: str, *, erased_by: str | None = None) -> Erasure:
    """Erase the customer ``ref`` names, then let plugins purge their own rows."""
    namespaces = hub.registrations.namespaces.items
    key = hub.ingestor.rules.tombstone_key
    if key is None:
        raise RuntimeError("this hub records without tombstones: erasure would not last")
    now = utcnow()

    def write(conn: Connection) -> Erasure:
        cid = resolve_ref(conn, ref, namespaces, hub.config.default_region)
        return erase_in_transaction(conn, cid, key=key, now=now, erased_by=erased_by)

    erasure = await hub.store.write(write)
    if not await hub.store.checkpoint():
        log.warning("write-ahead log not truncated after an erasure; a later checkpoint clears it")
    incomplete: list[str] = []
    purges = hub.hooks.customer_erased(erasure.customer_id, erasure.erased_ids[1:])
    if purges:
        results = await asyncio.gather(*(work for _, work in purges), return_exceptions=True)
        for (plugin, _), result in zip(purges, results, strict=True):
            if isinstance(result, BaseException):
                log.error("hook failed", hook="prm_customer_erased", plugin=plugin, error=type(result).__name__)
                incomplete.append(plugin)
    log.info("customer erased", customer_id=erasure.customer_id, ids=len(erasure.erased_ids), events=erasure.events)
    return evolve(erasure, incomplete=tuple(sorted(incomplete)))
