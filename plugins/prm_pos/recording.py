"""A transaction as the hub's Event: identities, its dialogue, and what it reverses.

- A sale or a return is a dialogue of its own, keyed by the transaction's key, and closes
  on being recorded (outcome ``sold`` / ``returned``).
- A return's revenue is negative. When it names its ``original_transaction`` and no
  customer, it is the original's customer's (the receipt says who bought).
- A void joins the dialogue of the transaction it voids (so it is that customer's, whoever
  the till thinks is at the counter), and carries the negative of the original's revenue
  and the original's lines: it undoes exactly what was recorded. Its event id is derived
  from the original (``<original id>/void``), so a transaction is voided at most once: a
  second, different void of it is a 409.
- A key reused with different content is a 409: the log keeps the first.
"""

from __future__ import annotations

import hashlib
from datetime import date, datetime
from decimal import Decimal

from prm_core.plugin import ApiError, Event, Hub, Identity, InvalidInput, Offer, utcnow

from .transaction import Transaction, TransactionKey

__all__ = ["TOUCHPOINT", "find_transaction", "offer_events", "transaction_event"]

TOUCHPOINT = "pos"
OUTCOMES = {"sale": "sold", "return": "returned"}


def _identities(hub: Hub, txn: Transaction) -> tuple[Identity, ...]:
    if txn.customer is None:
        return ()
    found = []
    namespaces = hub.registrations.namespaces
    for ns, raw in txn.customer.identities.items():
        try:
            found.append(Identity(ns, namespaces[ns].normalize(raw, hub.config.default_region)))
        except ValueError as exc:
            raise InvalidInput(f"customer_ref.{ns} {exc}", f"customer_ref.{ns}") from None
    return tuple(found)


async def transaction_event(hub: Hub, txn: Transaction, *, received_at: datetime | None = None) -> Event:
    """The Event recording ``txn``; raises 409/422 (see the module docstring)."""
    received_at = received_at or utcnow()
    identities = _identities(hub, txn)
    data = txn.data()
    data["digest"] = txn.digest()
    own_id = txn.key.event_id
    event_id = f"{txn.original.event_id}/void" if txn.transaction_type == "void" and txn.original else own_id
    wanted = [event_id] + ([txn.original.event_id] if txn.original else [])
    stored = await hub.recorded(TOUCHPOINT, wanted)
    previous = stored.get(event_id)
    if previous is not None and previous.event.data.get("digest") != data["digest"]:
        what = "voided by another transaction" if event_id != own_id else "recorded with different content"
        raise ApiError(409, "conflict", f"transaction {own_id} conflicts: {event_id} was {what}", "sequence_number")
    found = stored.get(txn.original.event_id) if txn.original else None
    original = found.event if found else None
    dialogue_id = None
    if txn.transaction_type == "void":
        if original is None:
            raise InvalidInput(
                f"original_transaction {txn.original.event_id if txn.original else ''} is not known to the hub",
                "original_transaction",
                code="not_found",
            )
        if original.data.get("transaction_type") != "sale":
            raise InvalidInput("only a sale can be voided", "original_transaction")
        if original.data.get("currency") != txn.currency:
            raise InvalidInput(f"currency differs from the original's {original.data.get('currency')}", "currency")
        if Decimal(original.data["total"]) != txn.total:
            raise InvalidInput(
                f"a void's total must be the original's ({original.data['total']})", "total", code="totals_mismatch"
            )
        data["revenue"] = str(-Decimal(original.data["revenue"]))
        data["voided_line_items"] = data.pop("line_items")
        data["line_items"] = original.data.get("line_items", [])
        dialogue_id = original.dialogue_id
        identities = ()  # the voided sale's customer, by its dialogue
    elif txn.transaction_type == "return" and original is not None and not identities:
        identities = original.identities
    if txn.transaction_type in OUTCOMES:
        data["outcome"] = OUTCOMES[txn.transaction_type]
    return Event(
        id=event_id,
        type=f"pos.{txn.transaction_type}",
        occurred_at=txn.occurred_at or received_at,
        touchpoint=TOUCHPOINT,
        identities=identities,
        dialogue=None if dialogue_id else own_id,
        dialogue_id=dialogue_id,
        data=data,
        received_at=received_at,
    )


def offer_events(transaction: Event, dialogue_id: str, offers: tuple[Offer, ...]) -> list[Event]:
    """One outbound ``offer.made`` event per offer printed on the receipt, in the
    transaction's dialogue, so planning can measure the response later. Ids are derived
    from the transaction and the offer, so a replay records nothing new."""
    now = utcnow()
    return [
        Event(
            id="offer:" + hashlib.sha256(f"{transaction.id}\x1f{offer.code}".encode()).hexdigest()[:40],
            type="offer.made",
            occurred_at=now,
            touchpoint=TOUCHPOINT,
            dialogue_id=dialogue_id,
            direction="outbound",
            data={
                "offer": offer.code,
                "title": offer.title,
                "score": offer.score,
                "source": offer.source,
                "position": position,
                "in_reply_to": transaction.id,
                "via": "receipt",
            },
        )
        for position, offer in enumerate(offers)
    ]


async def find_transaction(hub: Hub, store_id: str, workstation_id: str, sequence_number: str) -> TransactionKey | None:
    """The key of a recorded sale known by store, workstation and sequence number alone
    (a vendor's refund names its order, not the order's business day)."""
    prefix = f"pos/{store_id}/{workstation_id}/"
    found = await hub.find_event_id(TOUCHPOINT, type="pos.sale", prefix=prefix, suffix=f"/{sequence_number}")
    if found is None:
        return None
    day = found[len(prefix) :].split("/", 1)[0]
    return TransactionKey(store_id, workstation_id, date.fromisoformat(day), sequence_number)
