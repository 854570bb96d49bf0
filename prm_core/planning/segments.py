"""Segments: saved rules whose members are the customers they match now.

Membership is evaluated when asked, on the facts kept current on ingest, so it changes as
customers change with nothing to refresh. Listing members is paged by customer id: each
page scans at most :data:`MAX_SCAN` customers (three bounded queries per 400) and hands back
a cursor to go on from, so a request costs the same whatever the size of the store, even
for a segment that matches few.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from attrs import frozen
from sqlalchemy.engine import Connection

from ..errors import InvalidInput, NotFound
from ..store.tables import customers, segments
from .rules import Rule, compile_rule

if TYPE_CHECKING:
    from .planner import Planner

__all__ = ["MAX_SCAN", "Segment", "delete_segment", "get_segment", "list_segments", "members", "save_segment"]

MAX_SCAN = 2000
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


@frozen
class Segment:
    name: str
    rule: Rule
    description: str
    created_at: datetime
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rule": self.rule.text,
            "description": self.description,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _segment(row: Any) -> Segment:
    return Segment(
        row.name,
        compile_rule(row.name, row.rule, where=f"segment {row.name}"),
        row.description,
        row.created_at,
        row.updated_at,
    )


def check_name(name: Any, field: str = "name") -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput(
            f"{field} must be lower-case letters, digits, '-' or '_' starting with a letter (at most 63)", field
        )
    return name


def parse_segment(body: Mapping[str, Any]) -> tuple[str, Rule, str]:
    """Validate a ``POST /v1/segments`` body: ``name``, ``rule``, optional ``description``."""
    unknown = set(body) - {"name", "rule", "description"}
    if unknown:
        raise InvalidInput(f"unknown field {sorted(unknown)[0]!r}", sorted(unknown)[0])
    name = check_name(body.get("name"))
    rule = compile_rule(name, body.get("rule"), where="rule", config=False)
    description = body.get("description", "")
    if not isinstance(description, str) or len(description) > 500:
        raise InvalidInput("description must be a string of at most 500 characters", "description")
    return name, rule, description


def save_segment(conn: Connection, name: str, rule: Rule, description: str, now: datetime) -> tuple[Segment, bool]:
    """Create or replace; returns the segment and whether it is new."""
    existing = conn.execute(sa.select(segments.c.created_at).where(segments.c.name == name)).scalar_one_or_none()
    if existing is None:
        conn.execute(
            segments.insert().values(name=name, rule=rule.text, description=description, created_at=now, updated_at=now)
        )
        return Segment(name, rule, description, now, now), True
    conn.execute(
        segments.update().where(segments.c.name == name).values(rule=rule.text, description=description, updated_at=now)
    )
    return Segment(name, rule, description, existing, now), False


def get_segment(conn: Connection, name: str) -> Segment:
    row = conn.execute(sa.select(segments).where(segments.c.name == name)).one_or_none()
    if row is None:
        raise NotFound(f"no segment {name!r}")
    return _segment(row)


def list_segments(conn: Connection, limit: int = 500) -> list[Segment]:
    return [_segment(r) for r in conn.execute(sa.select(segments).order_by(segments.c.name).limit(limit))]


def delete_segment(conn: Connection, name: str) -> None:
    if not conn.execute(segments.delete().where(segments.c.name == name)).rowcount:
        raise NotFound(f"no segment {name!r}")


def members(
    conn: Connection, planner: Planner, segment: Segment, *, after: str, limit: int, now: datetime
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of members after customer id ``after``; the cursor is ``None`` at the end."""
    found: list[dict[str, Any]] = []
    scanned = 0
    c = customers.c
    while scanned < MAX_SCAN and len(found) < limit:
        q = (
            sa.select(c.id)
            .where(c.id > after, c.merged_into.is_(None))
            .order_by(c.id)
            .limit(min(400, MAX_SCAN - scanned))
        )
        ids = list(conn.execute(q).scalars())
        if not ids:
            return found, None
        facts = planner.facts_of(conn, ids, now)
        for cid in ids:
            after = cid
            scanned += 1
            f = facts.get(cid)
            if f is not None and segment.rule.matches(f):
                found.append(
                    {
                        "id": cid,
                        "kind": f["kind"],
                        "tier": f["tier"],
                        # in the reporting currency; null, with the currencies, when one has no rate
                        "lifetime_revenue": f["lifetime_revenue"],
                        "currency": planner.money.currency,
                        "mixed_currencies": f["mixed_currencies"],
                        "purchases": f["purchases"],
                    }
                )
                if len(found) == limit:
                    break
    more = conn.execute(sa.select(c.id).where(c.id > after, c.merged_into.is_(None)).limit(1)).first()
    return found, after if more is not None else None
