"""The everyday alternative: the events endpoint written by hand with FastAPI and SQLModel.

What a team writes when it builds the integration layer itself, as the FastAPI and SQLModel
tutorials show it: a pydantic body, a synchronous ``def`` endpoint (FastAPI runs it in its
thread pool), one SQLModel ``Session`` and one commit per request, an identity lookup per
identity, a customer created when none is found (no merging, no dialogues, no metrics), and an
API key looked up by its SHA-256. It is served by uvicorn, one worker, as ``uvicorn app:app``
would run it. SQLite gets WAL and ``synchronous=FULL``, as the hub has: the same durability
(a commit is on disk before the 200), the hand-written side's best case.

``bench/ingest.py --servers bare,hub,handwritten`` starts it with ``--role handwritten``; run
alone: ``python bench/handwritten.py DATABASE_URL PORT KEY``.
"""

from __future__ import annotations

import hashlib
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel, Field
from sqlmodel import JSON, Column, Session, SQLModel, create_engine, select
from sqlmodel import Field as SQLField

__all__ = ["make_app", "serve"]


class ApiKey(SQLModel, table=True):
    __tablename__ = "hw_api_keys"
    hash: str = SQLField(primary_key=True)
    scope: str


class Customer(SQLModel, table=True):
    __tablename__ = "hw_customers"
    id: str = SQLField(primary_key=True)
    created_at: datetime


class Identity(SQLModel, table=True):
    __tablename__ = "hw_identities"
    namespace: str = SQLField(primary_key=True)
    value: str = SQLField(primary_key=True)
    customer_id: str = SQLField(index=True)


class StoredEvent(SQLModel, table=True):
    __tablename__ = "hw_events"
    __table_args__ = (sa.UniqueConstraint("touchpoint", "event_id"),)
    seq: int | None = SQLField(default=None, primary_key=True)
    touchpoint: str
    event_id: str
    type: str
    occurred_at: datetime
    customer_id: str = SQLField(index=True)
    data: dict[str, Any] = SQLField(default_factory=dict, sa_column=Column(JSON))


class EventIn(BaseModel):
    id: str = Field(min_length=1, max_length=200)
    type: str = Field(min_length=1, max_length=100)
    occurred_at: datetime
    identities: dict[str, str] = {}
    data: dict[str, Any] = {}


class Batch(BaseModel):
    events: list[EventIn] = Field(max_length=1000)


def record(session: Session, tp: str, batch: Batch) -> dict[str, int]:
    """Store the batch's new events, each with a customer found by its first known identity."""
    accepted = duplicates = 0
    for ev in batch.events:
        seen = session.exec(
            select(StoredEvent.seq).where(StoredEvent.touchpoint == tp, StoredEvent.event_id == ev.id)
        ).first()
        if seen is not None:
            duplicates += 1
            continue
        idents = [(namespace, value.strip().lower()) for namespace, value in ev.identities.items()]
        customer_id = None
        for ident in idents:
            identity = session.get(Identity, ident)
            if identity is not None:
                customer_id = identity.customer_id
                break
        if customer_id is None:
            customer_id = uuid.uuid4().hex
            session.add(Customer(id=customer_id, created_at=datetime.now(UTC)))
        for namespace, value in idents:
            if session.get(Identity, (namespace, value)) is None:
                session.add(Identity(namespace=namespace, value=value, customer_id=customer_id))
        session.add(
            StoredEvent(
                touchpoint=tp,
                event_id=ev.id,
                type=ev.type,
                occurred_at=ev.occurred_at,
                customer_id=customer_id,
                data=ev.data,
            )
        )
        session.flush()
        accepted += 1
    return {"accepted": accepted, "duplicates": duplicates}


def make_app(database_url: str, key: str) -> FastAPI:
    connect_args = {"check_same_thread": False} if database_url.startswith("sqlite") else {}
    engine = create_engine(database_url, connect_args=connect_args, pool_size=8)
    if database_url.startswith("sqlite"):

        @sa.event.listens_for(engine, "connect")
        def durable(dbapi_conn: Any, record: Any) -> None:
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA synchronous=FULL")
            dbapi_conn.execute("PRAGMA busy_timeout=5000")

    tables = [t.__table__ for t in (ApiKey, Customer, Identity, StoredEvent)]  # type: ignore[union-attr]  # SQLModel sets it
    SQLModel.metadata.create_all(engine, tables=tables)
    with Session(engine) as session:
        session.merge(ApiKey(hash=hashlib.sha256(key.encode()).hexdigest(), scope="touchpoint:web"))
        session.commit()

    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/touchpoints/{tp}/events")
    def ingest(tp: str, batch: Batch, authorization: str = Header()) -> dict[str, int]:
        with Session(engine) as session:
            token = authorization.removeprefix("Bearer ")
            found = session.get(ApiKey, hashlib.sha256(token.encode()).hexdigest())
            if found is None or found.scope != f"touchpoint:{tp}":
                raise HTTPException(status_code=401, detail="invalid key")
        # two requests creating the same identity at once: the loser's commit fails; do it again
        for attempt in range(5):
            with Session(engine) as session:
                try:
                    counts = record(session, tp, batch)
                    session.commit()
                    return counts
                except (sa.exc.IntegrityError, sa.exc.OperationalError):
                    session.rollback()
                    if attempt == 4:
                        raise
        raise AssertionError("unreachable")

    return app


def serve(database_url: str, port: int, key: str) -> None:
    import uvicorn

    # the hub's URL scheme to SQLAlchemy's synchronous drivers
    url = database_url.replace("postgresql://", "postgresql+psycopg://", 1) if "+" not in database_url else database_url
    uvicorn.run(make_app(url, key), host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), sys.argv[3])
