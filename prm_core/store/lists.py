"""A list of values bound as one parameter: ``column IN (...)`` as one statement for any length.

SQLAlchemy's expanding ``IN`` renders a different statement for every length of the list: on
each execution it rewrites the compiled SQL and processes every value, and the driver then
prepares the new statement text afresh. That cost more than running the query in a recording
transaction of one event. Bound as one parameter instead, the statement never changes:

- SQLite: a JSON array, read back with ``json_each`` (``column IN (SELECT value FROM
  json_each(?))``); SQLite still searches the column's index once per value, and the list
  is not bounded by SQLite's limit on host parameters;
- PostgreSQL: an array, ``column = ANY(?)``: one statement, which asyncpg prepares once.

Build the statement once per database kind (``pg``) and bind a list (or any iterable) of
strings under the given name.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

__all__ = ["one_of", "pairs_in"]


class _JsonList(sa.types.TypeDecorator[Any]):
    """A list of strings bound as one JSON text (SQLite's ``json_each`` reads it)."""

    impl = sa.String
    cache_ok = True

    def process_bind_param(self, value: Iterable[Any] | None, dialect: Any) -> str | None:
        return None if value is None else json.dumps(list(value), separators=(",", ":"))


_TEXT_ARRAY = postgresql.ARRAY(sa.String())


def _json_each(name: str) -> Any:
    return sa.func.json_each(sa.bindparam(name, type_=_JsonList())).table_valued("value")


def one_of(column: Any, name: str, pg: bool) -> Any:
    """``column`` is one of the strings bound as ``name`` (see the module's docstring)."""
    if pg:
        return column == sa.any_(sa.bindparam(name, type_=_TEXT_ARRAY))
    return column.in_(sa.select(_json_each(name).c.value))


def pairs_in(first: Any, second: Any, name: str) -> Any:
    """On SQLite: ``(first, second)`` is one of the pairs bound as ``name`` (a list of
    two-item lists or tuples). PostgreSQL joins ``unnest`` of two arrays instead, which its
    planner treats as a table (see :func:`prm_core.recording`'s identity lookup)."""
    each = _json_each(name)
    # the paths written into the statement: constants, not two more parameters per execution
    first_half: Any = sa.literal_column("'$[0]'")
    second_half: Any = sa.literal_column("'$[1]'")
    wanted = sa.select(sa.func.json_extract(each.c.value, first_half), sa.func.json_extract(each.c.value, second_half))
    return sa.tuple_(first, second).in_(wanted)
