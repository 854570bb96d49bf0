"""Reviewing identity conflicts, and previewing what an event's identities would do.

A conflict (:mod:`prm_core.identity_limits`) is resolved by an admin:

``merge``
    the customers kept apart are the same person after all: they are merged into one (the
    older survives, as in ingest), and the identities left out are given to it when no one
    holds them yet. The limit is overridden for this customer, knowingly.
``split``
    they are different people: the identities left out (those no one holds) become a new
    customer of their own, so the next event naming them links there.
``dismiss``
    nothing changes; the record is closed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .errors import InvalidInput, NotFound
from .identity import normalize_identities
from .identity_rules import IdentityRules, decide
from .ids import new_id
from .merging import merge_customers
from .model import Identity, Merge
from .privacy.erasure import lock_customer
from .store.engine import advisory_locks, identity_lock_key
from .store.tables import customers, events, identities, identity_conflicts, utcnow

if TYPE_CHECKING:
    from .hub import Hub

__all__ = ["RESOLUTIONS", "STATUSES", "list_conflicts", "preview", "resolve_conflict"]

RESOLUTIONS = ("merge", "split", "dismiss")
STATUSES = ("open", "merged", "split", "dismissed")
_DONE = {"merge": "merged", "split": "split", "dismiss": "dismissed"}


def _rules(hub: Hub) -> IdentityRules:
    rules = hub.ingestor.rules.identity
    return rules if rules is not None else IdentityRules()


def _time(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _conflict_json(row: Any, idents: Sequence[str]) -> dict[str, Any]:
    return {
        "id": row.id,
        "status": row.status,
        "touchpoint": row.touchpoint,
        "event_id": row.event_id,
        "customer_id": row.customer_id,
        "apart": list(row.apart),
        "namespaces": list(row.namespaces),
        "left_out": list(row.left_out),
        "identities": list(idents),
        "created_at": _time(row.created_at),
        "resolved_at": _time(row.resolved_at),
    }


def _event_identities(conn: Connection, row: Any) -> list[str]:
    e = events.c
    found = conn.execute(
        sa.select(e.identities).where(e.touchpoint == row.touchpoint, e.event_id == row.event_id)
    ).scalar_one_or_none()
    return list(found or [])


async def list_conflicts(hub: Hub, *, status: str = "open", limit: int = 100) -> list[dict[str, Any]]:
    """Conflicts with this status, oldest first, each with the identities its event named."""
    if status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}", "status")

    def read(conn: Connection) -> list[dict[str, Any]]:
        c = identity_conflicts.c
        q = sa.select(identity_conflicts).where(c.status == status).order_by(c.created_at, c.id).limit(limit)
        return [_conflict_json(r, _event_identities(conn, r)) for r in conn.execute(q)]

    return await hub.store.read(read)


def _left_out(conn: Connection, row: Any, rules: IdentityRules) -> list[Identity]:
    """The identities of the conflict's event that link no one: left out, unblocked, unheld."""
    wanted = set(row.left_out)
    found = []
    for ref in _event_identities(conn, row):
        namespace, _, value = ref.partition(":")
        ident = Identity(namespace, value)
        if namespace in wanted and not rules.blocked(ident):
            found.append(ident)
    if found:
        advisory_locks(conn, [identity_lock_key(i.namespace, i.value) for i in found])
    c = identities.c
    return [
        i
        for i in found
        if conn.execute(sa.select(c.customer_id).where(c.namespace == i.namespace, c.value == i.value)).first() is None
    ]


def _give(conn: Connection, cid: str, idents: Sequence[Identity], now: Any) -> None:
    for ident in idents:
        conn.execute(
            identities.insert().values(
                namespace=ident.namespace, value=ident.value, customer_id=cid, shared=False, first_seen_at=now
            )
        )


async def resolve_conflict(hub: Hub, conflict_id: str, resolution: Any) -> dict[str, Any]:
    """Resolve an open conflict by ``merge``, ``split`` or ``dismiss`` (see the module docstring)."""
    if resolution not in RESOLUTIONS:
        raise InvalidInput(f"resolution must be one of {', '.join(RESOLUTIONS)}", "resolution")
    rules = _rules(hub)
    now = utcnow()
    made: list[Merge] = []

    def write(conn: Connection) -> dict[str, Any]:
        c = identity_conflicts.c
        row = conn.execute(sa.select(identity_conflicts).where(c.id == conflict_id)).one_or_none()
        if row is None:
            raise NotFound(f"no identity conflict {conflict_id}")
        if row.status != "open":
            raise InvalidInput(f"conflict {conflict_id} is already {row.status}", "id", code="already_resolved")
        if resolution == "merge":
            left = _left_out(conn, row, rules)
            people = sorted({lock_customer(conn, cid) for cid in [row.customer_id, *row.apart]})
            ages = {r.id: r.created_at for r in conn.execute(sa.select(customers).where(customers.c.id.in_(people)))}
            survivor, *others = sorted(people, key=lambda cid: (ages[cid], cid))
            for other in others:
                made.append(
                    merge_customers(
                        conn,
                        survivor,
                        other,
                        reason=f"identity conflict {conflict_id} resolved as one person",
                        cause=(row.touchpoint, row.event_id),
                        now=now,
                    )
                )
            _give(conn, survivor, left, now)
            hub.planner.rebuild_value(conn, [survivor])
        elif resolution == "split":
            left = _left_out(conn, row, rules)
            if left:
                cid = new_id("cus")
                conn.execute(
                    customers.insert().values(
                        id=cid, kind="person", traits={}, merged_into=None, created_at=now, updated_at=now
                    )
                )
                _give(conn, cid, left, now)
        conn.execute(
            identity_conflicts.update().where(c.id == conflict_id).values(status=_DONE[resolution], resolved_at=now)
        )
        done = conn.execute(sa.select(identity_conflicts).where(c.id == conflict_id)).one()
        return _conflict_json(done, _event_identities(conn, done))

    answer = await hub.store.write(write)
    for merge in made:
        hub.hooks.customers_merged(merge)
    return answer


async def preview(hub: Hub, raw: Any) -> dict[str, Any]:
    """What an event naming these identities would do now; writes nothing.

    Answers the blocked and shared namespaces, the customers the identities point to, the
    ``outcome`` (``new_customer``, ``existing_customer``, ``merge`` or ``conflict``), the
    customer the event would be recorded for (None: a new one), the customers merged with it
    or kept apart, and the limited namespaces that would go over. Dialogue keys and the rule
    that keeps organizations out of a person's merge are not part of the preview.
    """
    if not isinstance(raw, Mapping) or not raw:
        raise InvalidInput("identities must be a non-empty object of namespace: value", "identities")
    idents = normalize_identities(raw, hub.registrations.namespaces.items, hub.config.default_region)
    rules = _rules(hub)
    blocked = sorted({i.namespace for i in idents if rules.blocked(i)})
    shared_ns = hub.ingestor.rules.shared_namespaces
    limited = sorted(rules.limited)

    def read(conn: Connection) -> dict[str, Any]:
        c = identities.c
        links: list[tuple[Identity, str | None]] = []
        shared: list[str] = []
        for ident in rules.screen(idents):
            row = conn.execute(
                sa.select(c.customer_id, c.shared).where(c.namespace == ident.namespace, c.value == ident.value)
            ).first()
            if ident.namespace in shared_ns or (row is not None and row.shared):
                shared.append(ident.namespace)
                continue
            links.append((ident, row.customer_id if row is not None else None))

        def held(cid: str) -> dict[str, set[str]]:
            found: dict[str, set[str]] = {}
            q = sa.select(c.namespace, c.value).where(
                c.customer_id == cid, c.namespace.in_(limited), c.shared.is_(False)
            )
            for ns, value in conn.execute(q):
                found.setdefault(ns, set()).add(value)
            return found

        decision = decide(rules, links, held)
        owners = sorted({cid for _, cid in links if cid is not None})
        if decision.conflict:
            outcome = "conflict"
        elif decision.merged:
            outcome = "merge"
        elif decision.target is not None:
            outcome = "existing_customer"
        else:
            outcome = "new_customer"
        return {
            "outcome": outcome,
            "customer_id": decision.target,
            "customers": owners,
            "merges": decision.merged,
            "apart": decision.apart,
            "blocked": blocked,
            "shared": sorted(shared),
            "left_out": sorted({i.namespace for i in decision.left_out}),
            "rules": [
                {"namespace": ns, "limit": rules.rule(ns).limit, "priority": rules.rule(ns).priority}
                for ns in sorted(decision.broken)
            ],
            "written": False,
        }

    return await hub.store.read(read)
