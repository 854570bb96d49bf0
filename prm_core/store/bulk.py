"""Many-row writes without SQLAlchemy's per-row bookkeeping.

``conn.execute(table.insert(), rows)`` builds a dictionary of processed parameters per row
(``DefaultExecutionContext._init_compiled``) and calls each column type's bind processor
through several layers; at a few thousand rows per batch that is most of the ingest
writer's time on SQLite. :func:`execute_many` compiles the statement once per set of keys,
keeps each parameter's bind processor, and hands the driver a list of tuples through
``Connection.exec_driver_sql``: the same SQL, the same stored values (the processors are
SQLAlchemy's own, except :class:`~prm_core.store.tables.UTCDateTime` on SQLite, converted
here to the exact text SQLAlchemy's ``DATETIME`` writes, which ``tests/test_bulk.py``
checks), and the same engine events and exception wrapping (an ``IntegrityError`` is still
SQLAlchemy's, so the store's retries see it).

Only SQLite takes this path: PostgreSQL's asyncpg executemany already goes through
SQLAlchemy's ``insertmanyvalues`` batching, and its per-row cost is dwarfed by round trips.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from json import encoder as json_encoder
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .tables import UTCDateTime

__all__ = ["execute_many", "sqlite_utc_text"]

_Proc = Callable[[Any], Any] | None
_PER_ROW = object()  # the parameter comes from each row; anything else is the statement's constant
_Plan = tuple[str, tuple[tuple[str, _Proc, Any], ...]]
_cache: dict[tuple[Any, str, tuple[str, ...]], _Plan | None] = {}


@functools.lru_cache(maxsize=4096)  # a batch repeats its times (received_at, created_at, ...)
def _utc_text(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("naive datetime given to the store; use an aware UTC datetime")
    if value.utcoffset():
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(" ", "microseconds")


def _json_dumps() -> Callable[[Any], str]:
    """``json.dumps`` with its default arguments, as SQLAlchemy's ``JSON`` type calls it, minus
    the building of a new C encoder on every call (which costs more than encoding an event's
    small objects): the same C encoder with the same settings, built once. It checks no circular
    reference; whatever fails is handed to ``json.dumps`` itself, which raises its own error."""
    make = getattr(json_encoder, "c_make_encoder", None)  # not in typeshed
    if make is None:  # an interpreter without the C accelerator
        return json.dumps
    base = json.JSONEncoder()  # json.dumps's defaults
    encode = make(
        None,
        base.default,
        json_encoder.encode_basestring_ascii,
        base.indent,
        base.key_separator,
        base.item_separator,
        base.sort_keys,
        base.skipkeys,
        base.allow_nan,
    )
    join = "".join

    def dumps(value: Any) -> str:
        try:
            return join(encode(value, 0))
        except Exception:
            return json.dumps(value)

    return dumps


_dumps = _json_dumps()


def _bind_processor(typ: Any, dialect: Any) -> _Proc:
    """The column type's bind processor; for SQLAlchemy's own ``JSON`` serializing with
    ``json.dumps`` (no ``json_serializer`` given to the engine), the same one around
    :func:`_json_dumps`' equivalent."""
    if (
        isinstance(typ, sa.JSON)
        and type(typ).bind_processor is sa.JSON.bind_processor
        and type(typ)._make_bind_processor is sa.JSON._make_bind_processor
        and dialect._json_serializer is None
        and not dialect.supports_native_json_serialization
    ):
        proc: _Proc = typ._make_bind_processor(typ._str_impl.bind_processor(dialect), _dumps)
        return proc
    return typ._cached_bind_processor(dialect)  # type: ignore[no-any-return]


def sqlite_utc_text(value: datetime | None) -> str | None:
    """What ``UTCDateTime`` stores on SQLite: naive UTC as ``YYYY-MM-DD HH:MM:SS.ffffff``."""
    return None if value is None else _utc_text(value)


def _plan(conn: Connection, stmt: Any, keys: tuple[str, ...]) -> _Plan | None:
    dialect = conn.dialect
    compiled = stmt.compile(dialect=dialect, column_keys=list(keys))
    order = compiled.positiontup
    if order is None or not set(keys) <= set(order) or compiled.literal_execute_params or compiled.post_compile_params:
        return None  # an expanding IN, a key the statement does not take: let SQLAlchemy do it
    params: list[tuple[str, _Proc, Any]] = []
    for name in order:
        bind = compiled.binds[name]
        typ = bind.type
        proc: _Proc
        if isinstance(typ, UTCDateTime):
            proc = sqlite_utc_text
        else:
            proc = _bind_processor(typ, dialect)
        if name in keys:
            params.append((name, proc, _PER_ROW))
        elif bind.callable is None and not bind.required:
            params.append((name, None, proc(bind.value) if proc else bind.value))  # .values(bought=True)
        else:
            return None  # a default the rows do not carry
    return compiled.string, tuple(params)


def execute_many(conn: Connection, stmt: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """``conn.execute(stmt, rows)`` for an INSERT or UPDATE whose rows all have the same keys.

    ``stmt`` should be built once (a module constant): plans are cached by statement.
    """
    if not rows:
        return
    keys = tuple(rows[0])
    # one row too: SQLAlchemy's own path costs several times the plan's, and the writer's
    # transactions at one event per request hold a row or two per table
    if conn.dialect.name != "sqlite":
        conn.execute(stmt, list(rows))
        return
    cache_key = (stmt, conn.dialect.name, keys)
    if cache_key in _cache:
        plan = _cache[cache_key]
    else:
        plan = _plan(conn, stmt, keys)
        if len(_cache) < 256:
            _cache[cache_key] = plan
    if plan is None or any(len(r) != len(keys) for r in rows):
        conn.execute(stmt, list(rows))
        return
    sql, params = plan
    try:
        # column by column: map() and zip() loop in C
        columns = []
        for name, proc, constant in params:
            if constant is not _PER_ROW:
                columns.append([constant] * len(rows))
                continue
            column = [r[name] for r in rows]
            columns.append(column if proc is None else list(map(proc, column)))
    except KeyError:  # rows with other keys than the first: SQLAlchemy's way
        conn.execute(stmt, list(rows))
        return
    conn.exec_driver_sql(sql, list(zip(*columns, strict=True)))
