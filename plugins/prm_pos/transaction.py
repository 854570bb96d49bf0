"""The canonical POS transaction, with names from ARTS POSLog, and its checks.

A transaction is keyed by ``(store_id, workstation_id, business_day, sequence_number)``,
which is what a store's systems already use to name it; the hub's event id and dialogue
key are derived from that key, so a till that sends a transaction twice (a retry, a
re-import of the day's POSLog) records it once.

The checks are those a till's own journal obeys, exactly in Decimal arithmetic:

- each line: ``extended_amount = quantity x unit_price - discount``, allowing only the
  rounding to the places ``extended_amount`` is written with (0.35 kg at 3.99 is 1.40);
- ``total = sum(line extended_amount) + tax``;
- ``sum(tender amount) - sum(tender change) = total``.

A transaction that fails one is refused whole (422) naming the field that does not add up.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

from attrs import frozen

from prm_core.plugin import InvalidInput, parse_time

from . import money

__all__ = [
    "CUSTOMER_NAMESPACES",
    "TRANSACTION_TYPES",
    "CustomerRef",
    "LineItem",
    "Tender",
    "Transaction",
    "TransactionKey",
    "parse_key",
    "parse_transaction",
]

TransactionType = Literal["sale", "return", "void"]
TRANSACTION_TYPES: tuple[TransactionType, ...] = ("sale", "return", "void")
CUSTOMER_NAMESPACES = ("loyalty_card", "email", "phone")
MAX_LINES = 500
MAX_TENDERS = 20
_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def _id(obj: Mapping[str, Any], key: str, where: str) -> str:
    raw = obj.get(key)
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str) or not _ID.match(raw.strip()):
        raise InvalidInput(
            f"{where}{key} is required: 1-64 letters, digits, '.', '_', ':' or '-'", f"{where}{key}", code="missing"
        )
    value = raw.strip()
    # a sequence number 0042 and 42 are the same transaction
    return str(int(value)) if value.isdigit() else value


def _text(obj: Mapping[str, Any], key: str, where: str, limit: int, *, required: bool = False) -> str | None:
    raw = obj.get(key)
    if raw is None or raw == "":
        if required:
            raise InvalidInput(f"{where}{key} is required", f"{where}{key}", code="missing")
        return None
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str):
        raise InvalidInput(f"{where}{key} must be a string", f"{where}{key}")
    return raw.strip()[:limit]


@frozen
class TransactionKey:
    """What names a transaction at the store: ARTS ``RetailStoreID``, ``WorkstationID``,
    ``BusinessDayDate`` and ``SequenceNumber``."""

    store_id: str
    workstation_id: str
    business_day: date
    sequence_number: str

    @property
    def event_id(self) -> str:
        """The hub's event id (and POS dialogue key) for this transaction."""
        return f"pos/{self.store_id}/{self.workstation_id}/{self.business_day.isoformat()}/{self.sequence_number}"

    def to_json(self) -> dict[str, str]:
        return {
            "store_id": self.store_id,
            "workstation_id": self.workstation_id,
            "business_day": self.business_day.isoformat(),
            "sequence_number": self.sequence_number,
        }


def parse_key(obj: Mapping[str, Any], where: str = "", *, defaults: TransactionKey | None = None) -> TransactionKey:
    """The key of a transaction object; ``defaults`` fill what a reference leaves out
    (a void names the original's sequence number, at its own store and day)."""

    def part(key: str) -> str:
        if defaults is not None and obj.get(key) in (None, ""):
            return str(getattr(defaults, key))
        return _id(obj, key, where)

    raw_day = obj.get("business_day")
    day: date | None = None
    if raw_day in (None, "") and defaults is not None:
        day = defaults.business_day
    elif isinstance(raw_day, str):
        try:
            day = date.fromisoformat(raw_day)
        except ValueError:
            day = None
    if day is None:
        raise InvalidInput(f"{where}business_day must be a date (YYYY-MM-DD)", f"{where}business_day")
    return TransactionKey(part("store_id"), part("workstation_id"), day, part("sequence_number"))


@frozen
class LineItem:
    item_id: str
    description: str | None
    category: str | None
    quantity: Decimal
    unit_price: Decimal
    extended_amount: Decimal
    discount: Decimal = Decimal(0)

    def to_json(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "description": self.description,
            "category": self.category,
            "quantity": money.text(self.quantity),
            "unit_price": money.text(self.unit_price),
            "extended_amount": money.text(self.extended_amount),
            "discount": money.text(self.discount),
        }


@frozen
class Tender:
    type: str
    amount: Decimal
    change: Decimal = Decimal(0)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "amount": money.text(self.amount), "change": money.text(self.change)}


@frozen
class CustomerRef:
    """Who bought: raw identities by namespace (normalized by the hub), and an address used
    only to find the household (never stored in the event)."""

    identities: Mapping[str, str]
    address: Mapping[str, str] | None = None


@frozen
class Transaction:
    """One POS transaction. Amounts are as the till printed them: positive for a return too;
    the sign is the transaction type's."""

    key: TransactionKey
    transaction_type: TransactionType
    currency: str
    total: Decimal
    tax: Decimal
    line_items: tuple[LineItem, ...]
    tenders: tuple[Tender, ...]
    occurred_at: datetime | None = None
    customer: CustomerRef | None = None
    original: TransactionKey | None = None
    source: str = "pos"

    @property
    def revenue(self) -> Decimal:
        """Net sales (total less tax), negative for a return. A void's revenue is the
        negative of its original's, found at ingest."""
        net = self.total - self.tax
        return -net if self.transaction_type != "sale" else net

    def digest(self) -> str:
        """A digest of what makes the sale: its type, key, currency, amounts and items, and
        what it undoes. A retry, or the same transaction arriving by another way (sent live by
        the till, then in the night's POSLog, with other tender names or descriptions), has
        the same digest; a different transaction under a reused key does not."""
        body = {
            "type": self.transaction_type,
            "key": self.key.event_id,
            "currency": self.currency,
            "total": _canon(self.total),
            "tax": _canon(self.tax),
            "lines": [[li.item_id, _canon(li.quantity), _canon(li.extended_amount)] for li in self.line_items],
            "original": self.original.event_id if self.original else None,
        }
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def data(self) -> dict[str, Any]:
        """The event's ``data``: the Purchases contract (``revenue``, ``currency``,
        ``line_items``) plus the ARTS names, amounts as decimal strings."""
        body: dict[str, Any] = {
            "transaction_type": self.transaction_type,
            **self.key.to_json(),
            "currency": self.currency,
            "revenue": money.text(self.revenue),
            "total": money.text(self.total),
            "tax": money.text(self.tax),
            "line_items": [li.to_json() for li in self.line_items],
            "tenders": [t.to_json() for t in self.tenders],
            "intent": "sale",
            "source": self.source,
        }
        if self.original is not None:
            body["original_transaction"] = self.original.event_id
        return body


def _canon(value: Decimal) -> str:
    """One spelling per amount (1, 1.0 and 1.00 are one), for digests."""
    return format(value.normalize(), "f")


def _line(obj: Any, where: str) -> LineItem:
    if not isinstance(obj, Mapping):
        raise InvalidInput(f"{where} must be an object", where)
    quantity = money.quantity(obj.get("quantity", 1), f"{where}.quantity")
    unit_price = money.amount(obj.get("unit_price"), f"{where}.unit_price")
    discount = money.amount(obj.get("discount", 0), f"{where}.discount")
    extended = money.amount(obj.get("extended_amount"), f"{where}.extended_amount")
    exact = quantity * unit_price - discount
    exponent = extended.as_tuple().exponent
    half_unit = Decimal(1).scaleb(exponent if isinstance(exponent, int) else 0) / 2
    # a till rounds an extended amount to the places it prints, and no further
    if abs(extended - exact) > half_unit:
        raise InvalidInput(
            f"{where}.extended_amount {extended} is not quantity x unit_price - discount ({exact})",
            f"{where}.extended_amount",
            code="totals_mismatch",
        )
    return LineItem(
        item_id=_text(obj, "item_id", f"{where}.", 64, required=True),  # type: ignore[arg-type]
        description=_text(obj, "description", f"{where}.", 200),
        category=_text(obj, "category", f"{where}.", 64),
        quantity=quantity,
        unit_price=unit_price,
        extended_amount=extended,
        discount=discount,
    )


def _tender(obj: Any, where: str) -> Tender:
    if not isinstance(obj, Mapping):
        raise InvalidInput(f"{where} must be an object", where)
    return Tender(
        type=_text(obj, "type", f"{where}.", 32, required=True),  # type: ignore[arg-type]
        amount=money.amount(obj.get("amount"), f"{where}.amount"),
        change=money.amount(obj.get("change", 0), f"{where}.change"),
    )


def _customer(raw: Any) -> CustomerRef | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise InvalidInput("customer_ref must be an object: loyalty_card, email or phone", "customer_ref")
    unknown = set(raw) - {*CUSTOMER_NAMESPACES, "address"}
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidInput(
            f"customer_ref.{name} is not known; use loyalty_card, email or phone", f"customer_ref.{name}"
        )
    found = {}
    for ns in CUSTOMER_NAMESPACES:
        value = _text(raw, ns, "customer_ref.", 256)
        if value:
            found[ns] = value
    address = raw.get("address")
    if address is not None and (
        not isinstance(address, Mapping) or not all(isinstance(v, str) for v in address.values())
    ):
        raise InvalidInput("customer_ref.address must be an object of strings", "customer_ref.address")
    if not found and not address:
        raise InvalidInput("customer_ref names nobody: give loyalty_card, email or phone", "customer_ref")
    return CustomerRef(found, dict(address) if address else None)


def _list(body: Mapping[str, Any], key: str, limit: int, *, required: bool) -> Sequence[Any]:
    raw = body.get(key)
    if raw is None and not required:
        return []
    if not isinstance(raw, list) or (required and not raw):
        raise InvalidInput(f"{key} must be a non-empty array", key, code="missing" if raw is None else "invalid")
    if len(raw) > limit:
        raise InvalidInput(f"{key} has more than {limit} entries", key)
    return raw


def parse_transaction(body: Any, *, source: str = "pos") -> Transaction:
    """Validate a canonical transaction (see the module docstring); raises
    :class:`~prm_core.errors.InvalidInput` naming the field."""
    if not isinstance(body, Mapping):
        raise InvalidInput("the body must be a transaction object", None)
    kind = body.get("transaction_type", "sale")
    if kind not in TRANSACTION_TYPES:
        raise InvalidInput("transaction_type must be sale, return or void", "transaction_type")
    key = parse_key(body)
    currency = money.currency(body.get("currency"), "currency")
    lines = tuple(
        _line(item, f"line_items[{i}]")
        for i, item in enumerate(_list(body, "line_items", MAX_LINES, required=kind != "void"))
    )
    tenders = tuple(
        _tender(t, f"tenders[{i}]") for i, t in enumerate(_list(body, "tenders", MAX_TENDERS, required=kind == "sale"))
    )
    total = money.amount(body.get("total"), "total")
    tax = money.amount(body.get("tax", 0), "tax")
    if lines and sum((li.extended_amount for li in lines), Decimal(0)) + tax != total:
        added = sum((li.extended_amount for li in lines), Decimal(0)) + tax
        raise InvalidInput(
            f"total {total} is not the sum of line_items' extended_amount plus tax ({added})",
            "total",
            code="totals_mismatch",
        )
    if tax > total:
        raise InvalidInput("tax is more than the total", "tax")
    if tenders:
        tendered = sum((t.amount - t.change for t in tenders), Decimal(0))
        if tendered != total:
            raise InvalidInput(
                f"tenders add up to {tendered} (amounts less change), not the total {total}",
                "tenders",
                code="totals_mismatch",
            )
    original = None
    raw_original = body.get("original_transaction")
    if raw_original is not None:
        if not isinstance(raw_original, Mapping):
            raise InvalidInput("original_transaction must be an object", "original_transaction")
        original = parse_key(raw_original, "original_transaction.", defaults=key)
        if original == key:
            raise InvalidInput("a transaction cannot undo itself", "original_transaction")
    elif kind == "void":
        raise InvalidInput("a void must name the original_transaction it voids", "original_transaction", code="missing")
    occurred_at = parse_time(body["occurred_at"], "occurred_at") if body.get("occurred_at") is not None else None
    return Transaction(
        key=key,
        transaction_type=kind,
        currency=currency,
        total=total,
        tax=tax,
        line_items=lines,
        tenders=tenders,
        occurred_at=occurred_at,
        customer=_customer(body.get("customer_ref")),
        original=original,
        source=source,
    )
