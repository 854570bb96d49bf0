"""ARTS POSLog XML import: ``prm import --touchpoint pos FILE.xml``.

Streams the file with :func:`lxml.etree.iterparse` (each ``Transaction`` is converted, then
cleared, so a day's log of any size reads in constant memory) in the IXRetail namespace
``http://www.nrf-arts.org/IXRetail/namespace/``. Each ``Transaction`` becomes a canonical
transaction (:mod:`prm_pos.transaction`), checked like one sent by a till:

- key: ``RetailStoreID`` (or ``BusinessUnit/UnitID``), ``WorkstationID``,
  ``SequenceNumber``, ``BusinessDayDate``; time ``EndDateTime`` (a time without an offset is
  read in ``[touchpoints.pos] poslog_timezone``, default UTC); ``CurrencyCode`` (else
  ``[touchpoints.pos] currency``);
- ``RetailTransaction/LineItem``: ``Sale`` and ``Return`` lines (``ItemID``,
  ``Description``, ``MerchandiseHierarchy`` as the category, ``Quantity``,
  ``ActualSalesUnitPrice`` or ``RegularSalesUnitPrice``, ``DiscountAmount``,
  ``ExtendedDiscountAmount`` or ``ExtendedAmount``), ``Tax/Amount``, ``Tender`` (``TenderType``,
  ``Amount``, ``TenderChange/Amount``), ``LoyaltyMembership/LoyaltyAccountID`` as the
  customer's ``loyalty_card``; a line with ``VoidFlag="true"`` was voided at the till and
  is left out;
- ``Total[@TotalType="TransactionGrandAmount"]`` is the total (``TransactionTaxAmount``
  the tax when there are no tax lines);
- only ``Return`` lines: a return; ``TransactionLink`` names its original. A
  ``TransactionLink`` with ``ReasonCode="PostVoid"`` makes the transaction a void of the one
  it links to;
- skipped: ``CancelFlag="true"`` and ``TrainingModeFlag="true"`` transactions, and those
  without a ``RetailTransaction`` (sign-on, till counts).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from lxml import etree

from prm_core.plugin import ApiError, ConfigError, Event, ImportContext, Importer, InvalidInput

from .recording import transaction_event
from .transaction import parse_transaction

__all__ = ["NS", "importer", "read_poslog", "transaction_body"]

NS = "http://www.nrf-arts.org/IXRetail/namespace/"
_N = {"a": NS}


def _text(element: Any, path: str) -> str | None:
    value = element.findtext(path, namespaces=_N)
    return value.strip() if value is not None and value.strip() else None


def _flag(element: Any, name: str) -> bool:
    return str(element.get(name, "false")).strip().lower() in ("true", "1")


def _when(raw: str | None, zone: ZoneInfo) -> str | None:
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidInput(f"EndDateTime {raw!r} is not a timestamp", "EndDateTime") from None
    return (value if value.tzinfo else value.replace(tzinfo=zone)).isoformat()


def _key(element: Any) -> dict[str, Any]:
    return {
        "store_id": _text(element, "a:RetailStoreID") or _text(element, "a:BusinessUnit/a:UnitID"),
        "workstation_id": _text(element, "a:WorkstationID"),
        "sequence_number": _text(element, "a:SequenceNumber"),
        "business_day": _text(element, "a:BusinessDayDate"),
    }


def _item(line: Any) -> dict[str, Any]:
    hierarchy = line.findall("a:MerchandiseHierarchy", namespaces=_N)
    by_level = {h.get("Level"): (h.text or "").strip() for h in hierarchy}
    category = by_level.get("Department") or next((v for v in by_level.values() if v), None)
    return {
        "item_id": _text(line, "a:ItemID") or _text(line, "a:POSIdentity/a:POSItemID"),
        "description": _text(line, "a:Description"),
        "category": category,
        "quantity": _text(line, "a:Quantity") or "1",
        "unit_price": _text(line, "a:ActualSalesUnitPrice") or _text(line, "a:RegularSalesUnitPrice"),
        "discount": _text(line, "a:DiscountAmount") or "0",
        "extended_amount": _text(line, "a:ExtendedDiscountAmount") or _text(line, "a:ExtendedAmount"),
    }


def transaction_body(element: Any, *, zone: ZoneInfo, currency: str | None) -> dict[str, Any] | None:
    """A POSLog ``Transaction`` element as a canonical transaction body (``None`` to skip it)."""
    retail = element.find("a:RetailTransaction", namespaces=_N)
    if retail is None or _flag(element, "CancelFlag") or _flag(element, "TrainingModeFlag"):
        return None
    sales, returns, tenders, taxes = [], [], [], []
    loyalty = None
    for line in retail.iterfind("a:LineItem", namespaces=_N):
        if _flag(line, "VoidFlag"):
            continue
        if (sale := line.find("a:Sale", namespaces=_N)) is not None:
            sales.append(_item(sale))
        elif (returned := line.find("a:Return", namespaces=_N)) is not None:
            returns.append(_item(returned))
        elif (tax := line.find("a:Tax", namespaces=_N)) is not None:
            taxes.append(_text(tax, "a:Amount") or "0")
        elif (tender := line.find("a:Tender", namespaces=_N)) is not None:
            tenders.append(
                {
                    "type": (tender.get("TenderType") or "other")[:32],
                    "amount": _text(tender, "a:Amount"),
                    "change": _text(tender, "a:TenderChange/a:Amount") or "0",
                }
            )
        elif (member := line.find("a:LoyaltyMembership", namespaces=_N)) is not None:
            loyalty = _text(member, "a:LoyaltyAccountID") or loyalty
    loyalty = loyalty or _text(retail, "a:LoyaltyAccount/a:LoyaltyAccountID")
    totals = {t.get("TotalType"): (t.text or "").strip() for t in retail.iterfind("a:Total", namespaces=_N)}
    link = retail.find("a:TransactionLink", namespaces=_N)
    if sales and returns:
        raise InvalidInput("a transaction with both Sale and Return lines (an exchange) is not supported", "LineItem")
    kind = "return" if returns else "sale"
    if link is not None and (link.get("ReasonCode") or "").lower() in ("postvoid", "void"):
        kind = "void"
    tax = str(sum((_decimal(t) for t in taxes), Decimal(0))) if taxes else totals.get("TransactionTaxAmount", "0")
    body: dict[str, Any] = {
        "transaction_type": kind,
        **_key(element),
        "occurred_at": _when(_text(element, "a:EndDateTime"), zone),
        "currency": _text(element, "a:CurrencyCode") or currency,
        "line_items": returns or sales,
        "tax": "0" if kind == "void" else tax,
        "total": totals.get("TransactionGrandAmount"),
        "tenders": tenders,
    }
    if loyalty and kind != "void":
        body["customer_ref"] = {"loyalty_card": loyalty}
    if link is not None:
        body["original_transaction"] = {k: v for k, v in _key(link).items() if v is not None}
    return body


def _decimal(raw: str) -> Decimal:
    try:
        return Decimal(raw)
    except InvalidOperation:
        raise InvalidInput(f"Tax/Amount {raw!r} is not a number", "Tax") from None


def poslog_zone(settings: Mapping[str, Any]) -> ZoneInfo:
    """``[touchpoints.pos] poslog_timezone`` (default UTC); checked when the hub starts."""
    try:
        return ZoneInfo(str(settings.get("poslog_timezone", "UTC")))
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError("[touchpoints.pos].poslog_timezone must be an IANA time zone such as Europe/Paris") from None


async def read_poslog(path: Path, context: ImportContext) -> AsyncIterator[Event | InvalidInput]:
    """Stream the transactions of a POSLog file as POS events (see the module docstring)."""
    hub = context.hub
    settings = hub.config.touchpoint("pos")
    zone = poslog_zone(settings)
    currency = settings.get("currency")
    number = 0
    elements = etree.iterparse(str(path), events=("end",), tag=f"{{{NS}}}Transaction", huge_tree=False)
    while True:
        try:
            _, element = next(elements)
        except StopIteration:
            break
        except etree.XMLSyntaxError as exc:
            # the file itself is broken (cut short, not XML): what came before it is imported
            raise InvalidInput(
                f"{path.name} is not well-formed XML after transaction {number} (line {exc.lineno}): {exc.msg}",
                "file",
            ) from None
        number += 1
        where = f"transaction {number} ({_text(element, 'a:SequenceNumber') or 'no SequenceNumber'})"
        try:
            body = transaction_body(element, zone=zone, currency=currency)
            if body is not None:
                txn = parse_transaction(body, source="poslog")
                if txn.original is not None:
                    await context.flush()  # what it undoes must be recorded to be found
                yield await transaction_event(hub, txn)
        except InvalidInput as exc:
            yield InvalidInput(f"{where}: {exc.message}", exc.field)
        except ApiError as exc:
            yield InvalidInput(f"{where}: {exc.message}", exc.field)
        finally:
            # keep memory flat: drop the converted element and what precedes it
            element.clear()
            while element.getprevious() is not None:
                del element.getparent()[0]


def importer() -> Importer:
    return Importer(name="poslog", touchpoint="pos", suffixes=[".xml"], read=read_poslog, description="ARTS POSLog XML")
