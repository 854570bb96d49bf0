"""Reading warehouse rows out of the hub's own tables.

Two ways in, one set of columns (:mod:`.schema`): the *history* pages a new warehouse starts
from (every row the hub holds, in primary-key order, as of a snapshot of the feed), and the
*current* rows of the keys a batch of changes names. Rows come back column by column
(``{"event_id": [...], ...}``), with timestamps as the database gives them (SQLite: text,
PostgreSQL: naive UTC datetimes) and JSON as text: the Parquet writer hands whole columns to
Arrow, which converts them far faster than Python would row by row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from attrs import frozen
from sqlalchemy.engine import Connection

from ..feed.changes import CORE_TYPES
from ..store.tables import (
    changes,
    customer_value,
    customers,
    dialogues,
    erasures,
    events,
    identities,
    merges,
    metrics,
    offers_made,
    outbox,
    utcnow,
)
from .schema import JSON, TABLES, TIME

__all__ = [
    "Columns",
    "Snapshot",
    "as_json",
    "as_money",
    "as_time",
    "current_rows",
    "history_page",
    "history_size",
    "take_snapshot",
]

Columns = dict[str, list[Any]]


@frozen
class Snapshot:
    """Where a warehouse's history ends and its feed begins: every change up to ``position``
    is in the history; ``events_through`` is the last event ``seq`` it holds."""

    position: int
    events_through: int
    at: datetime


_SNAPSHOT = sa.select(
    sa.select(sa.func.coalesce(sa.func.max(changes.c.position), 0)).scalar_subquery(),
    sa.select(sa.func.coalesce(sa.func.max(events.c.seq), 0)).scalar_subquery(),
)


def take_snapshot(conn: Connection) -> Snapshot:
    """The feed's last position and the log's last event, read in one statement: the hub
    writes a change in the transaction of what it changed, so the two agree. (On PostgreSQL
    each statement of a read sees what committed before it: read by two statements, an
    event committed in between would be in the history and in the changes after it too.)"""
    position, through = conn.execute(_SNAPSHOT).one()
    return Snapshot(int(position), int(through), utcnow())


def _recorded_after(position: int) -> Any:
    """Whether an event's ``event.recorded`` change comes after ``position`` (PostgreSQL)."""
    h, e = changes.c, events.c
    return sa.exists().where(
        h.position > position,
        h.type == "event.recorded",
        h.data["event_id"].as_string() == e.event_id,
        h.data["touchpoint"].as_string() == e.touchpoint,
    )


def _plain(column: Any, kind: str, pg: bool) -> Any:
    """The column as the driver gives it, without SQLAlchemy's per-value conversions."""
    if kind == TIME:
        return sa.type_coerce(column, sa.DateTime() if pg else sa.String())
    if kind == JSON:
        return sa.cast(column, sa.Text()) if pg else sa.type_coerce(column, sa.String())
    return column


def _select(table: str, sources: Mapping[str, Any], pg: bool) -> list[Any]:
    kinds = {c.name: c.type for c in TABLES[table].columns}
    return [_plain(expr, kinds[name], pg).label(name) for name, expr in sources.items()]


def _sources(table: str) -> tuple[dict[str, Any], Any, Any]:
    """(warehouse column -> expression, the FROM clause, the column the history pages by)."""
    cols: dict[str, Any]
    if table == "events":
        e = events.c
        cols = {
            "event_id": e.event_id,
            "touchpoint": e.touchpoint,
            "type": e.type,
            "occurred_at": e.occurred_at,
            "received_at": e.received_at,
            # the customer it was recorded for: a merge later moves e.customer_id, not this
            "customer_id": e.ingest_customer_id,
            "dialogue_id": e.dialogue_id,
            "direction": e.direction,
            "data": e.data,
        }
        return cols, events, e.seq
    if table == "customers":
        c, m, v = customers.c, metrics.c, customer_value.c
        erased = sa.exists().where(erasures.c.customer_id.in_([c.id, sa.func.coalesce(c.merged_into, c.id)]))
        cols = {
            "customer_id": c.id,
            "kind": c.kind,
            "tier": c.tier,
            "tier_source": c.tier_source,
            "traits": c.traits,
            "merged_into": c.merged_into,
            "erased": erased,
            "created_at": c.created_at,
            "updated_at": c.updated_at,
            "event_count": m.event_count,
            "order_count": m.order_count,
            "return_count": m.return_count,
            "lifetime_revenue": m.lifetime_revenue,
            "purchases": v.purchases,
            "first_seen_at": m.first_seen_at,
            "last_seen_at": m.last_seen_at,
            "last_purchase_at": m.last_purchase_at,
        }
        joined = customers.outerjoin(metrics, m.customer_id == c.id).outerjoin(customer_value, v.customer_id == c.id)
        return cols, joined, c.id
    if table == "dialogues":
        d = dialogues.c
        cols = {
            "dialogue_id": d.id,
            "touchpoint": d.touchpoint,
            "customer_id": d.customer_id,
            "status": d.status,
            "intent": d.intent,
            "outcome": d.outcome,
            "opened_at": d.opened_at,
            "last_event_at": d.last_event_at,
            "closed_at": d.closed_at,
        }
        return cols, dialogues, d.id
    if table == "offers":
        o = offers_made.c
        cols = {
            "offer_id": o.id,
            "customer_id": o.customer_id,
            "touchpoint": o.touchpoint,
            "dialogue_id": o.dialogue_id,
            "code": o.code,
            "source": o.source,
            "campaign": o.campaign,
            "made_at": o.made_at,
            "response": o.response,
            "responded_at": o.responded_at,
        }
        return cols, offers_made, o.id
    if table == "fulfillments":
        f = outbox.c
        cols = {
            "fulfillment_id": f.id,
            "request_id": f.request_id,
            "partner": f.partner,
            "role": f.role,
            "action": f.action,
            "customer_id": f.customer_id,
            "touchpoint": f.touchpoint,
            "dialogue_id": f.dialogue_id,
            "cause_event_id": f.cause_event_id,
            "status": f.status,
            "attempts": f.attempts,
            "requested_at": f.requested_at,
            "updated_at": f.updated_at,
        }
        return cols, outbox, f.id
    if table == "merges":
        g = merges.c
        cols = {
            "merge_id": g.id,
            "survivor_id": g.survivor_id,
            "merged_id": g.merged_id,
            "reason": g.reason,
            "merged_at": g.merged_at,
            "undone_at": g.undone_at,
        }
        return cols, merges, g.id
    if table == "changes":
        h = changes.c
        cols = {"type": h.type, "at": h.at, "customer_id": h.customer_id, "data": h.data}
        return cols, changes, h.position
    raise KeyError(table)


def _columns(table: str, rows: Sequence[Sequence[Any]], names: Sequence[str]) -> Columns:
    out: Columns = {name: [] for name in names}
    if rows:
        out = {name: list(values) for name, values in zip(names, zip(*rows, strict=True), strict=True)}
    if table == "customers":
        out["erased"] = [bool(v) for v in out["erased"]]
    return out


def _with_identities(conn: Connection, cols: Columns) -> Columns:
    """Add each customer's current identities (``namespace:value``, sorted)."""
    ids = cols["customer_id"]
    found: dict[str, list[str]] = {i: [] for i in ids}
    c = identities.c
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        query = sa.select(c.customer_id, c.namespace, c.value).where(c.customer_id.in_(chunk))
        for row in conn.execute(query):
            found[row.customer_id].append(f"{row.namespace}:{row.value}")
    cols["identities"] = [sorted(found[i]) for i in ids]
    return cols


def _fetch(conn: Connection, query: Any) -> list[Sequence[Any]]:
    """All rows of ``query`` as the driver's own tuples: a history page is tens of thousands
    of rows, and building SQLAlchemy's row objects cost as much as reading them. The query's
    parameters are plain numbers and strings (no conversions to skip)."""
    compiled = query.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    params = compiled.params
    names = compiled.positiontup or []
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]  # connected: not None
    try:
        cursor.execute(str(compiled), tuple(params[n] for n in names))
        return list(cursor.fetchall())
    finally:
        cursor.close()


def history_page(
    conn: Connection, *, table: str, after: Any, limit: int, snapshot: Snapshot
) -> tuple[Columns, Any, Any]:
    """Up to ``limit`` rows of ``table`` after the key ``after`` (``None``: from the start), the
    page's first key (``None`` for no rows), and the key to continue after (``None`` when this
    was the last page). Events stop at the snapshot's last event; the feed delivers the rest.
    Rows have no ``position`` yet. Each event is in the history or in the changes after the
    snapshot, never both."""
    pg = conn.dialect.name == "postgresql"
    sources, source, order = _sources(table)
    query = sa.select(*_select(table, sources, pg), order.label("_key")).select_from(source).order_by(order)
    if after is not None:
        query = query.where(order > after)
    if table == "events":
        query = query.where(order <= snapshot.events_through)
        if pg:
            # PostgreSQL numbers events as they are inserted, and positions their changes as
            # they commit: an event numbered below the snapshot's last one may commit after the
            # snapshot, before this page is read. Its change comes after the snapshot: the feed
            # writes it, not the history (one statement sees the event and its change alike)
            query = query.where(~_recorded_after(snapshot.position))
    if table == "changes":
        # the core's own changes are in the other tables already
        query = query.where(order <= snapshot.position, changes.c.type.not_in(sorted(CORE_TYPES)))
    rows = _fetch(conn, query.limit(limit))
    cols = _columns(table, rows, [*sources, "_key"])
    keys = cols.pop("_key")
    if table == "changes":  # each keeps its own position
        cols["position"] = list(keys)
    if table == "customers":
        cols = _with_identities(conn, cols)
    return cols, (keys[0] if keys else None), (keys[-1] if len(keys) == limit else None)


def current_rows(conn: Connection, table: str, keys: Iterable[Any]) -> Columns:
    """The rows of ``table`` with these keys as they are now (keys no longer there are left
    out). ``events`` are keyed by ``(touchpoint, event_id)``, the others by their id."""
    pg = conn.dialect.name == "postgresql"
    sources, source, order = _sources(table)
    wanted = list(keys)
    rows: list[Sequence[Any]] = []
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        if table == "events":
            where = sa.tuple_(events.c.touchpoint, events.c.event_id).in_([tuple(k) for k in chunk])
        else:
            where = order.in_(chunk)
        rows.extend(conn.execute(sa.select(*_select(table, sources, pg)).select_from(source).where(where)).all())
    cols = _columns(table, rows, list(sources))
    if table == "customers":
        cols = _with_identities(conn, cols)
    return cols


def history_size(conn: Connection, snapshot: Snapshot | None) -> int:
    """How many rows a history holds, about (for a progress bar)."""
    total = 0
    for table in TABLES:
        _, source, order = _sources(table)
        query = sa.select(sa.func.count()).select_from(source)
        if table == "events" and snapshot is not None:
            query = query.where(order <= snapshot.events_through)
        if table == "changes":
            query = query.where(changes.c.type.not_in(sorted(CORE_TYPES)))
        total += int(conn.execute(query).scalar_one())
    return total


# ---- the columns as Python values (for the PostgreSQL writer) -----------------------------


def as_time(value: Any) -> datetime | None:
    """A timestamp from either database as an aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def as_json(value: Any) -> Any:
    import json

    return json.loads(value) if isinstance(value, str) else value


def as_money(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value)).quantize(Decimal("0.0001"))
