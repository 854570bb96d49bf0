"""prm_core.store.lists: a list bound as one parameter finds what an expanding IN finds."""

from __future__ import annotations

import re
from typing import Any

import pytest
import sqlalchemy as sa

from prm_core.errors import InvalidInput
from prm_core.store.lists import one_of, pairs_in
from prm_core.store.tables import identities, utcnow

T0 = "2026-11-23T08:00:00Z"
VALUES = [
    ("email", "ann@example.com"),
    ("email", "o'brien@example.com"),  # a quote
    ("email", 'say "hi"@example.com'),  # JSON's own quoting
    ("phone", "+14155550100"),
    ("user_id", "é-ü-漢字"),  # beyond ASCII
    ("user_id", "back\\slash"),
    ("anonymous_id", "[1,2]"),  # looks like JSON
]


async def seeded(hub: Any) -> None:
    rows = [{"namespace": ns, "value": v, "customer_id": f"cus_{i}", "shared": False, "first_seen_at": utcnow()}
            for i, (ns, v) in enumerate(VALUES)]  # fmt: skip
    await hub.store.write(lambda conn: conn.execute(identities.insert(), rows))


@pytest.mark.parametrize(
    "wanted",
    [[], ["ann@example.com"], [v for _, v in VALUES], ["o'brien@example.com", "nobody", "é-ü-漢字", "[1,2]"]],
    ids=["none", "one", "all", "some"],
)
async def test_one_of_finds_exactly_the_listed_values(hub, wanted):
    await seeded(hub)

    def read(conn: Any) -> set[str]:
        pg = conn.dialect.name == "postgresql"
        q = sa.select(identities.c.value).where(one_of(identities.c.value, "wanted", pg))
        return {v for (v,) in conn.execute(q, {"wanted": wanted})}

    assert await hub.store.read(read) == set(wanted) & {v for _, v in VALUES}


async def test_pairs_in_matches_both_halves_of_each_pair_on_sqlite(hub):
    if hub.store.dialect == "postgresql":
        pytest.skip("PostgreSQL joins unnest of two arrays instead (prm_core.recording)")
    await seeded(hub)
    wanted = [("email", "ann@example.com"), ("phone", "ann@example.com"), ("user_id", "é-ü-漢字"), ("email", "x")]

    def read(conn: Any) -> set[tuple[str, str]]:
        q = sa.select(identities.c.namespace, identities.c.value).where(
            pairs_in(identities.c.namespace, identities.c.value, "pairs")
        )
        return {(ns, v) for ns, v in conn.execute(q, {"pairs": wanted})}

    # ("phone", "ann@example.com") has a stored value and a stored namespace, never together
    assert await hub.store.read(read) == {("email", "ann@example.com"), ("user_id", "é-ü-漢字")}


def _list_statements() -> dict[str, Any]:
    """Every SQLite statement built with a bound list, by name."""
    from prm_core import outbox, recording, view
    from prm_core.planning import planner
    from prm_core.privacy import tombstones

    found = {f"recording: {name}": q for (name, pg), q in recording._STATEMENTS.items() if not pg}
    modules = {"outbox": outbox, "view": view, "planner": planner, "tombstones": tombstones}
    for module_name, module in modules.items():
        for name, value in vars(module).items():
            if isinstance(value, dict) and set(value) == {False, True} and "json_each" in str(value[False]):
                found[f"{module_name}.{name}"] = value[False]
    return found


async def test_sqlite_searches_the_index_of_the_listed_column_in_every_list_statement(hub):
    if hub.store.dialect == "postgresql":
        pytest.skip("a query plan of SQLite's")
    # a recording transaction with a merge builds the batch's statements (built on first use)
    web = "web"
    await hub.record(
        hub.parse_events({"id": "a1", "type": "page", "occurred_at": T0, "identities": {"anonymous_id": "a-1"}}, web)
    )
    await hub.record(
        hub.parse_events({"id": "e1", "type": "page", "occurred_at": T0, "identities": {"email": "ann@x.com"}}, web)
    )
    await hub.record(
        hub.parse_events(
            {"id": "l1", "type": "identify", "occurred_at": T0,
             "identities": {"anonymous_id": "a-1", "email": "ann@x.com"}},
            web,
        )
    )  # fmt: skip
    await hub.view("email:ann@x.com")
    statements = _list_statements()
    assert {"planner._CUSTOMERS_Q", "outbox._OF_CUSTOMERS_Q", "view._METRICS_Q", "tombstones._TOMBSTONED"} <= set(
        statements
    )
    assert sum(name.startswith("recording: ") for name in statements) >= 5

    def plans(conn: Any) -> dict[str, tuple[str, list[str]]]:
        out = {}
        for name, q in statements.items():
            sql = str(q.compile(conn))
            listed = re.findall(r"(\w+)\.(\w+) IN \(SELECT", sql) or [
                (t, c) for t, c, _ in re.findall(r"\((\w+)\.(\w+), \w+\.(\w+)\) IN \(SELECT", sql)
            ]
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, ('["x"]',) * sql.count("?"))
            out[name] = (listed, [str(r[-1]) for r in rows])
        return out

    for name, (listed, plan) in (await hub.store.read(plans)).items():
        assert listed, name
        for table, column in listed:
            searches = [step for step in plan if step.startswith(f"SEARCH {table} ")]
            # looked up by the listed values, never by walking another index or the table
            assert any(f"({column}=?" in s or f" {column}=?" in s for s in searches), (name, plan)
            assert not any(step.startswith(f"SCAN {table}") for step in plan), (name, plan)


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"id": "e1\x00x"}, "id"),
        ({"dialogue": "call\x00-1"}, "dialogue"),
        ({"identities": {"user_id": "u\x00x"}}, "identities.user_id"),
    ],
    ids=["id", "dialogue", "identity"],
)
async def test_a_nul_character_in_a_looked_up_string_is_refused_by_the_parser(hub, event, field):
    # SQLite's json_each reads "u\u0000x" back as "u" (and PostgreSQL refuses NUL in text): a
    # value holding one would miss its own row in every list lookup, so it is not accepted at all
    body = {"id": "e1", "type": "page", "occurred_at": T0, "identities": {"user_id": "u1"}, **event}
    with pytest.raises(InvalidInput) as info:
        hub.parse_events(body, "web")
    assert info.value.field == field
    assert "NUL" in info.value.message
