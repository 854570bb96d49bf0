"""Consent per purpose and channel, recorded as events and kept in a bounded table.

A touch point records a decision as an ordinary event::

    {"id": "c-1", "type": "consent.granted", "occurred_at": "...",
     "identities": {"email": "ann@example.com"},
     "data": {"purpose": "marketing", "channel": "email", "source": "signup-form"}}

(``consent.revoked`` withdraws it; ``channel`` defaults to ``"*"``, every channel; ``source``
to the touch point). The event stays in the log as the evidence; the ``consents`` table
keeps only the latest decision per customer, purpose and channel, so the 360 view reads
them with one indexed query. An admin may set them through
``PUT /v1/customers/{ref}/consents``. :func:`prm_core.consent.allows` is the one rule that
reads them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..consent import PERSONALIZATION, PURPOSES, allows
from ..errors import InvalidInput
from ..feed.changes import NewChange
from ..feed.writing import emit
from ..model import Customer, CustomerView, RecordedEvent, TouchPoint
from ..store.tables import consents, customers

__all__ = [
    "CONSENT_TYPES",
    "check_consent_data",
    "consent_json",
    "impersonal_view",
    "load_consents",
    "parse_consent_changes",
    "personalization_allowed",
    "record_consents",
    "write_consents",
]

GRANTED: Final = "consent.granted"
REVOKED: Final = "consent.revoked"
CONSENT_TYPES: Final = frozenset({GRANTED, REVOKED})
_CHANNEL = re.compile(r"^(\*|[a-z][a-z0-9_-]{0,62})$")
_MAX_SOURCE = 64


def check_consent_data(data: Mapping[str, Any], prefix: str = "data.") -> None:
    """Refuse (422, naming the field: ``{prefix}purpose``) a consent without a known purpose,
    or with a malformed channel or source."""
    purpose = data.get("purpose")
    if purpose not in PURPOSES:
        raise InvalidInput(f"{prefix}purpose must be one of {', '.join(PURPOSES)}", f"{prefix}purpose")
    channel = data.get("channel", "*")
    if not isinstance(channel, str) or not _CHANNEL.match(channel):
        raise InvalidInput(f"{prefix}channel must be '*' or a channel or touch point name", f"{prefix}channel")
    source = data.get("source")
    if source is not None and not (isinstance(source, str) and 0 < len(source) <= _MAX_SOURCE):
        raise InvalidInput(f"{prefix}source must be a string of at most {_MAX_SOURCE} characters", f"{prefix}source")


def record_consents(conn: Connection, recorded: Iterable[RecordedEvent]) -> None:
    """Keep the latest decision of each consent event just recorded (inside its transaction).

    Later decisions (by ``occurred_at``) win, whatever order they arrive in, so a replayed or
    late event never overturns a newer one.
    """
    for r in recorded:
        ev = r.event
        if r.duplicate or ev.type not in CONSENT_TYPES or ev.data.get("purpose") not in PURPOSES:
            continue
        source = ev.data.get("source")
        _upsert(
            conn,
            r.customer_id,
            str(ev.data["purpose"]),
            str(ev.data.get("channel") or "*"),
            granted=ev.type == GRANTED,
            source=source if isinstance(source, str) and source else ev.touchpoint,
            at=ev.occurred_at,
            event_id=ev.id,
        )


def _upsert(
    conn: Connection,
    customer_id: str,
    purpose: str,
    channel: str,
    *,
    granted: bool,
    source: str,
    at: datetime,
    event_id: str | None,
) -> None:
    c = consents.c
    key = (c.customer_id == customer_id, c.purpose == purpose, c.channel == channel)
    current = conn.execute(sa.select(c.recorded_at).where(*key)).scalar_one_or_none()
    values = {"granted": granted, "source": source[:_MAX_SOURCE], "recorded_at": at, "event_id": event_id}
    if current is None:
        conn.execute(consents.insert().values(customer_id=customer_id, purpose=purpose, channel=channel, **values))
    elif current <= at:
        conn.execute(consents.update().where(*key).values(**values))
    else:
        return
    decision = {"purpose": purpose, "channel": channel, "granted": granted, "source": values["source"]}
    emit(conn, NewChange("customer.updated", customer_id, {"consents": [decision]}))


def parse_consent_changes(body: Any) -> list[dict[str, Any]]:
    """The body of ``PUT /v1/customers/{ref}/consents``:
    ``{"consents": [{"purpose", "channel"?, "granted", "source"?}, ...]}``."""
    if not isinstance(body, Mapping) or not isinstance(body.get("consents"), list) or not body["consents"]:
        raise InvalidInput('the body must be {"consents": [{"purpose", "channel", "granted"}, ...]}', "consents")
    if len(body["consents"]) > 50:
        raise InvalidInput("at most 50 consents per call", "consents")
    changes = []
    for i, item in enumerate(body["consents"]):
        where = f"consents[{i}]."
        if not isinstance(item, Mapping):
            raise InvalidInput(f"consents[{i}] must be an object", f"consents[{i}]")
        check_consent_data(item, where)
        if not isinstance(item.get("granted"), bool):
            raise InvalidInput(f"{where}granted must be true or false", f"{where}granted")
        changes.append(
            {
                "purpose": item["purpose"],
                "channel": item.get("channel") or "*",
                "granted": item["granted"],
                "source": item.get("source") or "admin",
            }
        )
    return changes


def write_consents(conn: Connection, customer_id: str, changes: Sequence[Mapping[str, Any]], at: datetime) -> None:
    """Apply an admin's consent changes for ``customer_id`` (already resolved and locked)."""
    for ch in changes:
        _upsert(
            conn,
            customer_id,
            ch["purpose"],
            ch["channel"],
            granted=ch["granted"],
            source=ch["source"],
            at=at,
            event_id=None,
        )


# built once with a bind parameter: building the statement and its cache key cost more than
# running it, on every view
_CID: sa.BindParameter[str] = sa.bindparam("customer_id")
_LOAD_Q = sa.select(
    consents.c.purpose, consents.c.channel, consents.c.granted, consents.c.source, consents.c.recorded_at
).where(
    consents.c.customer_id.in_(
        sa.select(customers.c.id).where(sa.or_(customers.c.id == _CID, customers.c.merged_into == _CID))
    )
)


def load_consents(conn: Connection, customer_id: str) -> tuple[dict[str, Any], ...]:
    """The view's ``consents``: the latest decision per purpose and channel of this customer
    and of every customer merged into it (merges keep redirects one hop long)."""
    rows = conn.execute(_LOAD_Q, {"customer_id": customer_id})
    latest: dict[tuple[str, str], Any] = {}
    for row in rows:
        key = (row.purpose, row.channel)
        if key not in latest or latest[key].recorded_at < row.recorded_at:
            latest[key] = row
    return tuple(consent_json(latest[k]) for k in sorted(latest))


def consent_json(row: Any) -> dict[str, Any]:
    return {
        "purpose": row.purpose,
        "channel": row.channel,
        "granted": bool(row.granted),
        "source": row.source,
        "recorded_at": row.recorded_at.isoformat().replace("+00:00", "Z"),
    }


def personalization_allowed(view: CustomerView, touchpoint: TouchPoint) -> bool:
    """Whether this customer lets this touch point personalize: a decision on the touch
    point's name or on its channel kind (``voice``) counts, and a refusal on either wins."""
    return allows(view.consents, PERSONALIZATION, touchpoint.name) and allows(
        view.consents, PERSONALIZATION, touchpoint.channel
    )


def impersonal_view(view: CustomerView) -> CustomerView:
    """What value providers and offers may see without personalization consent: who the
    customer is (the id, to answer at all) and their consents, nothing they did or are."""
    c = view.customer
    return CustomerView(customer=Customer(id=c.id, kind=c.kind, created_at=c.created_at), consents=view.consents)
