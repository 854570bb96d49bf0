"""Alembic environment: runs on the connection the hub hands over (``Store.migrate``).

From the command line: ``prm db upgrade``; to write a new revision during development,
``alembic -c prm_core/store/migrations/alembic.ini revision --autogenerate -m "..."``.
"""

from __future__ import annotations

from alembic import context

from prm_core.store.tables import metadata

config = context.config
connection = config.attributes.get("connection")
on_revision = config.attributes.get("on_revision")


def _record(ctx, step, heads, run_args):  # type: ignore[no-untyped-def]
    if on_revision is not None:
        on_revision(step.up_revision_id)


if connection is None:
    from sqlalchemy import create_engine

    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    connection = engine.connect()

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,  # SQLite alters tables by copying them
    compare_type=True,
    on_version_apply=_record,
)
with context.begin_transaction():
    context.run_migrations()
