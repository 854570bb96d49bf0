"""Trigger runs in the database: scheduled, claimed, advanced step by step, and finished.

A run is one change that matched one trigger, for one customer. Its ``key`` is derived from
the trigger and the change's position, and it is inserted in the transaction that moves the
engine's place in the feed past that change: so every (trigger, change) gets exactly one
run, however often the feed is read again after a crash. The run then keeps its journey's
position (``step``) and when its next step is due (``due_at``), so a restarted hub goes on
where the last one was. Each act of a run has its own key (``run key:step``), from which the
ids of everything it does are derived: a retried act is recognized as the same act.

Statuses: ``scheduled`` (a step is due at ``due_at``), ``fired`` (every step done),
``held_out`` (the control group: no action), ``cancelled`` (an ``unless`` event came, or the
trigger was removed), ``ended`` (a ``check`` step did not match), ``skipped`` (a guard said
no: ``reason``), ``failed`` (the action could not be carried out: ``reason``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..store.tables import customer_value, customers, trigger_offers, trigger_runs, utcnow

__all__ = [
    "STATUSES",
    "act_key",
    "claim_due",
    "forget_customers",
    "mark_offers_made",
    "queued_offers",
    "renew_leases",
    "results",
    "run_key",
    "save_run",
    "schedule",
]

STATUSES = ("scheduled", "fired", "held_out", "cancelled", "ended", "skipped", "failed")
_R = trigger_runs.c


def run_key(trigger: str, position: int) -> str:
    """The run of ``trigger`` for the change at ``position``: the same on every read."""
    return "trg_" + hashlib.sha256(f"{trigger}\x1f{position}".encode()).hexdigest()[:40]


def act_key(key: str, step: int) -> str:
    """The key of one act of a run: ids of what it does (event, message, partner request) derive from it."""
    return "act_" + hashlib.sha256(f"{key}\x1f{step}".encode()).hexdigest()[:40]


def schedule(conn: Connection, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Insert the runs not inserted before; returns those (a run read again is not new)."""
    if not rows:
        return []
    known = set(conn.execute(sa.select(_R.key).where(_R.key.in_([r["key"] for r in rows]))).scalars())
    fresh = [r for r in rows if r["key"] not in known]
    if fresh:
        conn.execute(trigger_runs.insert(), fresh)
    return fresh


def due_exists(conn: Connection, now: datetime) -> bool:
    q = sa.select(_R.key).where(_R.status == "scheduled", _R.due_at <= now).limit(1)
    return conn.execute(q).first() is not None


def next_due(conn: Connection) -> datetime | None:
    return conn.execute(sa.select(sa.func.min(_R.due_at)).where(_R.status == "scheduled")).scalar()


def claim_due(
    conn: Connection,
    owner: str,
    now: datetime,
    lease_s: float,
    limit: int,
    *,
    exclude: Sequence[str] = (),
    acting: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Claim up to ``limit`` runs whose step is due and that no live lease holds (not of the
    triggers in ``exclude``, nor the runs in ``acting``); each claim bumps ``attempts``, the
    fencing token of :func:`save_run`."""
    q = (
        sa.select(trigger_runs)
        .where(
            _R.status == "scheduled",
            _R.due_at <= now,
            sa.or_(_R.lease_until.is_(None), _R.lease_until < now),
        )
        .order_by(_R.due_at)
        .limit(limit)
    )
    if exclude:
        q = q.where(_R.trigger.not_in(list(exclude)))
    if acting:
        q = q.where(_R.key.not_in(list(acting)))
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    rows = conn.execute(q).all()
    claimed = []
    until = now + timedelta(seconds=lease_s)
    for row in rows:
        done = conn.execute(
            trigger_runs.update()
            .where(_R.key == row.key, _R.attempts == row.attempts)
            .values(lease_owner=owner, lease_until=until, attempts=row.attempts + 1)
        ).rowcount
        if done:
            claimed.append(
                dict(row._mapping) | {"attempts": row.attempts + 1, "lease_owner": owner, "lease_until": until}
            )
    return claimed


def renew_leases(conn: Connection, *, keys: Sequence[str], owner: str, lease_s: float) -> int:
    """Extend the leases ``owner`` still holds on these runs (not one taken over, nor one saved
    since: saving gives the lease back); returns how many."""
    until = utcnow() + timedelta(seconds=lease_s)
    done = conn.execute(
        trigger_runs.update()
        .where(_R.key.in_(list(keys)), _R.lease_owner == owner, _R.status == "scheduled")
        .values(lease_until=until)
    ).rowcount
    return int(done)


def save_run(conn: Connection, key: str, owner: str, attempt: int, values: dict[str, Any]) -> bool:
    """Write a claimed run's new state, only if the claim still holds (nobody took it over);
    the lease is given back."""
    done = conn.execute(
        trigger_runs.update()
        .where(_R.key == key, _R.lease_owner == owner, _R.attempts == attempt)
        .values(**values, lease_owner=None, lease_until=None)
    ).rowcount
    return bool(done)


_O = trigger_offers.c


def _owners(customer_id: str) -> Any:
    c = customers.c
    return sa.select(c.id).where(sa.or_(c.id == customer_id, c.merged_into == customer_id))


def queued_offers(conn: Connection, customer_id: str, now: datetime) -> list[Any]:
    """The offers triggers queued for this customer (and those merged into it), not yet made."""
    q = (
        sa.select(trigger_offers)
        .where(_O.customer_id.in_(_owners(customer_id)), _O.made_at.is_(None), _O.expires_at > now)
        .order_by(_O.queued_at)
        .limit(20)
    )
    return list(conn.execute(q))


def mark_offers_made(conn: Connection, made: Sequence[tuple[str, str, str, datetime]]) -> None:
    """``(customer, trigger, code, at)``: the queued offer was made at a contact: it is done."""
    for customer_id, trigger, code, at in made:
        conn.execute(
            trigger_offers.update()
            .where(
                _O.customer_id.in_(_owners(customer_id)),
                _O.trigger == trigger,
                _O.code == code,
                _O.made_at.is_(None),
            )
            .values(made_at=at)
        )


def forget_customers(conn: Connection, ids: Sequence[str], now: datetime) -> None:
    """Erasure: the customers' runs stop and lose what their change said; queued offers go."""
    if not ids:
        return
    conn.execute(trigger_offers.delete().where(_O.customer_id.in_(list(ids))))
    conn.execute(
        trigger_runs.update()
        .where(_R.customer_id.in_(list(ids)), _R.status == "scheduled")
        .values(status="cancelled", reason="customer erased", due_at=None, updated_at=now)
    )
    conn.execute(trigger_runs.update().where(_R.customer_id.in_(list(ids))).values(change={}))


def results(conn: Connection, name: str) -> dict[str, Any]:
    """Runs by status, and each side's conversion like a campaign's: the share of customers
    who bought after the trigger fired for them (or held them out)."""
    counts: dict[str, int] = dict(
        conn.execute(sa.select(_R.status, sa.func.count()).where(_R.trigger == name).group_by(_R.status)).all()
    )
    v = customer_value.c
    sides = {}
    for control in (False, True):
        acted = sa.select(_R.customer_id, sa.func.min(_R.fired_at).label("at")).where(
            _R.trigger == name, _R.control.is_(control), _R.fired_at.is_not(None)
        )
        first = acted.group_by(_R.customer_id).subquery()
        customers_n = conn.execute(sa.select(sa.func.count()).select_from(first)).scalar() or 0
        converted = (
            conn.execute(
                sa.select(sa.func.count())
                .select_from(first.join(customer_value, v.customer_id == first.c.customer_id))
                .where(v.last_purchase_at >= first.c.at)
            ).scalar()
            or 0
        )
        sides["control" if control else "treated"] = {
            "customers": int(customers_n),
            "converted": int(converted),
            "conversion_rate": round(converted / customers_n, 4) if customers_n else None,
        }
    return {"runs": {s: int(counts.get(s, 0)) for s in STATUSES}, **sides}
