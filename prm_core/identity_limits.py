"""Identity limits inside a recording batch (:mod:`prm_core.recording`).

Knows what each customer the batch touches holds of the limited namespaces (read from
the database the first time a limit is at stake for it, then kept up to date as the batch
attaches identities and merges), narrows an event's customers to those it may link
(:func:`prm_core.identity_rules.decide`), and writes a conflict record for each event that
would have broken a limit. On PostgreSQL the batch holds the lock of every customer it
reads here (``_Batch._lock_customers``), so what it reads is still true when it writes.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .identity_rules import IdentityRules, decide
from .ids import new_id
from .model import Event, Identity
from .store.bulk import execute_many
from .store.tables import identities, identity_conflicts

if TYPE_CHECKING:
    from .recording import _Batch

__all__ = ["Limits"]

_INSERT_CONFLICTS = identity_conflicts.insert()


class Limits:
    """The limited namespaces' values per customer, for one batch."""

    def __init__(self, batch: _Batch) -> None:
        assert batch.rules.identity is not None
        self.batch = batch
        self.rules: IdentityRules = batch.rules.identity
        self.limited = self.rules.limited
        self.loaded: dict[str, dict[str, set[str]]] = {}  # from the database
        self.added: dict[str, dict[str, set[str]]] = defaultdict(dict)  # by this batch, not yet read back
        self.left_out: frozenset[Identity] = frozenset()
        self.rows: list[dict[str, Any]] = []

    def held(self, cid: str) -> dict[str, set[str]]:
        """What customer ``cid`` (after merges) holds of the limited namespaces."""
        cid = self.batch.find(cid)
        if cid not in self.loaded:
            if cid in self.batch.created_seq:  # created by this batch: nothing in the database yet
                self.loaded[cid] = {}
            else:
                c = identities.c
                found: dict[str, set[str]] = {}
                q = sa.select(c.namespace, c.value).where(
                    c.customer_id == cid, c.namespace.in_(sorted(self.limited)), c.shared.is_(False)
                )
                for ns, value in self.batch.conn.execute(q):
                    found.setdefault(ns, set()).add(value)
                self.loaded[cid] = found
        held = {ns: set(vs) for ns, vs in self.loaded[cid].items()}
        for ns, vs in self.added.get(cid, {}).items():
            held.setdefault(ns, set()).update(vs)
        return held

    def within(self, ev: Event, pool: set[str]) -> set[str]:
        """The customers of ``pool`` the event may link, or a new customer: see the module docstring."""
        batch = self.batch
        mine = [i for i in ev.identities if not batch.shared(i)]
        fresh = [i for i in mine if i.namespace in self.limited and i not in batch.owner]
        if len(pool) == 1 and not fresh:
            return pool  # nothing new to hold: no limit at stake, no query
        total: dict[str, set[str]] = {}
        for cid in pool:
            for ns, vs in self.held(cid).items():
                total.setdefault(ns, set()).update(vs)
        for ident in fresh:
            total.setdefault(ident.namespace, set()).add(ident.value)
        if all(len(vs) <= (self.rules.rule(ns).limit or len(vs)) for ns, vs in total.items()):
            return pool
        links: list[tuple[Identity, str | None]] = []
        reached: set[str] = set()
        for ident in mine:
            owner = batch.owner.get(ident)
            holder = batch.find(owner) if owner is not None else None
            if holder is None or holder in pool:
                links.append((ident, holder))
                if holder is not None:
                    reached.add(holder)
        extra = sorted(pool - reached, key=lambda c: (batch.created_at[c], c))
        decision = decide(self.rules, links, self.held, extra)
        target = decision.target if decision.target is not None else batch._new_customer(ev)
        self.left_out = frozenset(decision.left_out)
        self.rows.append(
            {
                "id": new_id("idc"),
                "touchpoint": ev.touchpoint,
                "event_id": ev.id,
                "customer_id": target,
                "apart": decision.apart,
                "namespaces": sorted(decision.broken),
                "left_out": sorted({i.namespace for i in decision.left_out}),
                "status": "open",
                "created_at": batch.now,
                "resolved_at": None,
            }
        )
        return {target, *decision.merged}

    def taken_left_out(self) -> frozenset[Identity]:
        """The identities the event just resolved must not be given (then forgotten)."""
        left, self.left_out = self.left_out, frozenset()
        return left

    def attached(self, cid: str, ident: Identity) -> None:
        if ident.namespace in self.limited:
            self.added[self.batch.find(cid)].setdefault(ident.namespace, set()).add(ident.value)

    def merged(self, survivor: str, other: str) -> None:
        # the merge moved the rows in the database: read the survivor again when next needed
        self.loaded.pop(survivor, None)
        self.loaded.pop(other, None)
        for ns, vs in self.added.pop(other, {}).items():
            self.added[survivor].setdefault(ns, set()).update(vs)

    def flush(self) -> None:
        if not self.rows:
            return
        find = self.batch.find
        for row in self.rows:
            row["customer_id"] = find(row["customer_id"])
            row["apart"] = sorted({find(c) for c in row["apart"]})
        execute_many(self.batch.conn, _INSERT_CONFLICTS, self.rows)
        self.rows = []
