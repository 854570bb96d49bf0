"""Migrations build exactly the tables the code declares, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from prm_core.store import Store
from prm_core.store.tables import metadata


async def test_migrations_match_the_models(database_url):
    store = Store.open(database_url)
    try:
        assert await store.migrate() == [
            "0001",
            "0002_pos",
            "0003_partner",
            "0004_planning",
            "0005_privacy",
            "0006_change_feed",
            "0007_identity_conflicts",
            "0008_money",
            "0009_triggers",
            "0010_surveys",
            "0011_journal",
        ]
        assert await store.migrate() == []

        def diff(conn):
            return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)

        async with store.writer.connect() as conn:
            assert await conn.run_sync(diff) == []
    finally:
        await store.dispose()
