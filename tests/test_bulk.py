"""prm_core.store.bulk writes exactly what SQLAlchemy's own executemany writes."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa

from prm_core.planning.planner import _INSERT_VISITS_SQLITE, _SET_BOUGHT
from prm_core.recording import (
    _INSERT_CUSTOMERS,
    _INSERT_DIALOGUES,
    _INSERT_EVENTS,
    _INSERT_IDENTITIES,
    _INSERT_METRICS,
    _UPDATE_DIALOGUES,
    _UPDATE_DIALOGUES_SEEN,
    _UPDATE_METRICS,
)
from prm_core.store.bulk import execute_many, sqlite_utc_text
from prm_core.store.tables import metadata

T0 = datetime(2026, 11, 23, 8, 0, 0, tzinfo=UTC)
TIMES = [
    T0,
    T0.replace(microsecond=123456),
    T0.replace(microsecond=1),
    datetime(2026, 11, 23, 9, 30, 0, 500, tzinfo=timezone(timedelta(hours=2))),  # not UTC: converted
    datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC),  # a year of three digits is padded
]


def _rows(n: int) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    out["customers"] = [
        {"id": f"cus_{i}", "kind": "person", "tier": None, "tier_source": None,
         "traits": {} if i % 2 else {"a": [1, "é"]}, "merged_into": None,
         "created_at": TIMES[i % len(TIMES)], "updated_at": TIMES[(i + 1) % len(TIMES)]}
        for i in range(n)
    ]  # fmt: skip
    out["identities"] = [
        {"namespace": "email", "value": f"u{i}@example.com", "customer_id": f"cus_{i}", "shared": bool(i % 2),
         "first_seen_at": TIMES[i % len(TIMES)]}
        for i in range(n)
    ]  # fmt: skip
    out["events"] = [
        {"touchpoint": "web", "event_id": f"e{i}", "type": "page", "occurred_at": TIMES[i % len(TIMES)],
         "received_at": TIMES[(i + 2) % len(TIMES)], "customer_id": f"cus_{i}", "ingest_customer_id": f"cus_{i}",
         "dialogue_id": f"dlg_{i}", "direction": "inbound", "identities": [f"email:u{i}@example.com"],
         "data": {"url": "/", "revenue": 12.5, "nested": {"x": None}} if i % 3 else {}}
        for i in range(n)
    ]  # fmt: skip
    out["dialogues"] = [
        {"id": f"dlg_{i}", "touchpoint": "web", "ref": f"dlg_{i}", "customer_id": f"cus_{i}", "status": "open",
         "intent": None if i % 2 else "service", "outcome": None, "opened_at": TIMES[i % len(TIMES)],
         "last_event_at": TIMES[(i + 1) % len(TIMES)], "closed_at": None if i % 2 else TIMES[0]}
        for i in range(n)
    ]  # fmt: skip
    out["customer_metrics"] = [
        {"customer_id": f"cus_{i}", "event_count": i, "order_count": i % 3, "lifetime_revenue": Decimal("12.3456") * i,
         "return_count": 0, "revenue_by_currency": {"USD": "1.50"} if i % 2 else {}, "categories": {},
         "last_purchase_at": None if i % 2 else TIMES[i % len(TIMES)], "first_seen_at": TIMES[0],
         "last_seen_at": TIMES[i % len(TIMES)], "touchpoints": ["pos", "web"]}
        for i in range(n)
    ]  # fmt: skip
    return out


def _dump(path: str) -> dict[str, list[tuple]]:
    raw = sqlite3.connect(path)
    try:
        out = {}
        for table in ("customers", "identities", "events", "dialogues", "customer_metrics", "touchpoint_customers"):
            cols = [r[1] for r in raw.execute(f"PRAGMA table_info({table})")]
            select = ", ".join(f"{c}, typeof({c})" for c in cols)
            out[table] = raw.execute(f"SELECT {select} FROM {table} ORDER BY rowid").fetchall()
        return out
    finally:
        raw.close()


def _write(path: str, bulk: bool) -> None:
    engine = sa.create_engine(f"sqlite:///{path}")
    metadata.create_all(engine)
    rows = _rows(7)
    inserts = {
        "customers": _INSERT_CUSTOMERS,
        "identities": _INSERT_IDENTITIES,
        "events": _INSERT_EVENTS,
        "dialogues": _INSERT_DIALOGUES,
        "customer_metrics": _INSERT_METRICS,
    }
    dialogue_updates = [
        {"_id": r["id"], **{k: v for k, v in r.items() if k not in ("id", "touchpoint", "ref")}, "status": "closed",
         "closed_at": TIMES[3]}
        for r in rows["dialogues"]
    ]  # fmt: skip
    dialogues_seen = [
        {"_id": r["id"], "intent": "sale", "outcome": "bought ü" if i % 2 else None, "last_event_at": TIMES[i % 5]}
        for i, r in enumerate(rows["dialogues"][:4])
    ]  # fmt: skip
    metric_updates = [
        {"_cid": r["customer_id"], **{k: v for k, v in r.items() if k != "customer_id"}, "event_count": 99,
         "lifetime_revenue": Decimal("0.0001"), "last_seen_at": TIMES[1]}
        for r in rows["customer_metrics"]
    ]  # fmt: skip
    with engine.begin() as conn:
        for table, stmt in inserts.items():
            execute_many(conn, stmt, rows[table]) if bulk else conn.execute(stmt, rows[table])
        visits = [{"touchpoint": "web", "day": f"2026-11-{i % 3 + 1:02d}", "customer_id": f"cus_{i % 4}",
                   "bought": i % 5 == 0} for i in range(12)]  # fmt: skip
        bought = [{"_tp": "web", "_day": "2026-11-02", "_cid": f"cus_{i}"} for i in range(4)]
        for stmt, updates in (
            (_UPDATE_DIALOGUES, dialogue_updates),
            (_UPDATE_DIALOGUES_SEEN, dialogues_seen),
            (_UPDATE_METRICS, metric_updates),
            (_INSERT_VISITS_SQLITE, visits),  # ON CONFLICT DO NOTHING: repeated keys
            (_SET_BOUGHT, bought),
        ):
            execute_many(conn, stmt, updates) if bulk else conn.execute(stmt, updates)
    engine.dispose()


def test_bulk_writes_what_sqlalchemy_writes(tmp_path):
    _write(str(tmp_path / "a.db"), bulk=False)
    _write(str(tmp_path / "b.db"), bulk=True)
    a, b = _dump(str(tmp_path / "a.db")), _dump(str(tmp_path / "b.db"))
    assert all(a[t] for t in a)
    assert a == b
    # and the fast path was taken for every statement, not SQLAlchemy's fallback
    from prm_core.store import bulk

    planned = [plan for (stmt, _, _), plan in bulk._cache.items()]
    assert len(planned) >= 8 and all(plan is not None for plan in planned)


def test_utc_text_matches_sqlalchemy():
    dialect = sa.create_engine("sqlite://").dialect
    from prm_core.store.tables import UTCDateTime

    process = UTCDateTime()._cached_bind_processor(dialect)
    assert process is not None
    for t in TIMES:
        assert sqlite_utc_text(t) == process(t)
    assert sqlite_utc_text(None) is None
    with pytest.raises(ValueError):
        sqlite_utc_text(datetime(2026, 1, 1))


def test_bulk_keeps_integrity_errors_sqlalchemys(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    metadata.create_all(engine)
    rows = _rows(2)["customers"]
    with pytest.raises(sa.exc.IntegrityError):
        with engine.begin() as conn:
            execute_many(conn, _INSERT_CUSTOMERS, [rows[0], rows[1], rows[0]])
    engine.dispose()


@pytest.mark.parametrize(
    "value",
    [
        {"url": "/", "revenue": 12.5, "nested": {"x": None, "ok": True, "l": [1, -0.0, 1e300, 2**70]}},
        {"é": "naïve \u2028 ✓", "q": 'a "quoted" \\ back'},
        {1: "an integer key", "f": float("nan"), "g": float("inf")},
        [],
        {},
        "text",
        None,
        3,
    ],
)
def test_json_is_what_json_dumps_writes(value):
    import json

    from prm_core.store import bulk

    assert bulk._dumps(value) == json.dumps(value)


def test_json_fails_as_json_dumps_fails():
    import json

    from prm_core.store import bulk

    looped: list = []
    looped.append(looped)
    for bad in (looped, {"amount": Decimal("1.5")}, {("a", "b"): 1}):
        with pytest.raises(Exception) as ours:
            bulk._dumps(bad)
        with pytest.raises(Exception) as theirs:
            json.dumps(bad)
        assert (type(ours.value), str(ours.value)) == (type(theirs.value), str(theirs.value))


def test_times_read_back_as_sqlalchemy_reads_them():
    from sqlalchemy.engine import processors

    from prm_core.store.tables import UTCDateTime

    process = UTCDateTime()._cached_result_processor(sa.create_engine("sqlite://").dialect, None)
    for text in [None, *(sqlite_utc_text(t) for t in TIMES), "2026-11-23 08:00:00", "2026-11-23T10:00:00+02:00"]:
        parsed = processors.str_to_datetime(text)
        expected = parsed.replace(tzinfo=UTC) if parsed is not None else None
        assert process(text) == expected
        assert text is None or process(text).tzinfo is UTC
