"""Where each destination is: ``prm destinations`` reads it from the database, so it shows
what every hub process sharing the database did, whether a hub runs or not."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..model import _iso
from ..store.lists import one_of
from ..store.tables import changes, dead_letters, destination_cursors, utcnow
from .reading import bounds

__all__ = ["destination_status"]


def destination_status(conn: Connection, configured: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per destination configured or with a cursor: its kind, position, lag (in
    changes of its types and in seconds), last error and dead letters count."""
    rows = {r.name: r for r in conn.execute(sa.select(destination_cursors))}
    counts: dict[str, int] = dict(
        conn.execute(sa.select(dead_letters.c.destination, sa.func.count()).group_by(dead_letters.c.destination)).all()
    )
    _pruned, head = bounds(conn)
    now = utcnow()
    pg = conn.dialect.name == "postgresql"
    found = []
    for name in sorted(set(configured) | set(rows)):
        table = configured.get(name, {})
        row = rows.get(name)
        position = int(row.position) if row is not None else None
        kind = table.get("kind") or (row.kind if row is not None else None)
        types = table.get("types")
        types = [types] if isinstance(types, str) else types
        behind: dict[str, Any] = {"changes": None, "seconds": None}
        if position is not None:
            where = [changes.c.position > position]
            params: dict[str, Any] = {}
            if isinstance(types, list) and types:
                where.append(one_of(changes.c.type, "types", pg))
                params["types"] = list(types)
            waiting, oldest = conn.execute(
                sa.select(sa.func.count(), sa.func.min(changes.c.at)).where(*where), params
            ).one()
            behind = {
                "changes": int(waiting),
                "seconds": round((now - oldest).total_seconds(), 1) if oldest is not None else 0.0,
            }
        found.append(
            {
                "name": name,
                "kind": kind,
                "configured": name in configured,
                "position": str(position) if position is not None else None,
                "head": str(head),
                "lag": behind,
                "last_error": row.last_error if row is not None else None,
                "last_error_at": _iso(row.last_error_at) if row is not None else None,
                "delivered_at": _iso(row.delivered_at) if row is not None else None,
                "dead_letters": int(counts.get(name, 0)),
            }
        )
    return found
