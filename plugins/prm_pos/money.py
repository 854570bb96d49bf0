"""Money as :class:`~decimal.Decimal` with its currency, never a float.

A JSON body is parsed with ``parse_float=Decimal`` (:func:`loads`), so ``19.99`` is read
from its text as ``Decimal("19.99")`` and no binary rounding ever happens: there is no
float to lose precision, so none is refused for it. Amounts may also be sent as decimal
strings (``"19.99"``), as Shopify and ARTS POSLog do. What is refused, naming the field:
booleans, ``NaN``/``Infinity``, anything that is not a number, and more than four decimal
places (what the metrics hold).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from babel.numbers import get_currency_precision, is_currency

from prm_core.plugin import InvalidInput, parse_json_body

__all__ = ["MAX_PLACES", "amount", "currency", "from_minor_units", "loads", "quantity", "text"]

MAX_PLACES = 4
MAX_AMOUNT = Decimal(10) ** 12
_CURRENCY = re.compile(r"^[A-Z]{3}$")


def loads(raw: bytes) -> Any:
    """Parse a JSON body with every non-integer number as a Decimal, through the hub's JSON
    loader (:func:`prm_core.server.routes.parse_json_body`'s rules: 400 when malformed, 422
    naming the field for a number past a double, a lone surrogate, NUL or too deep a body)."""
    return parse_json_body(raw, decimals=True)


def _decimal(raw: Any, field: str) -> Decimal:
    # a float (only a caller in code could pass one: loads() never makes one) is refused too
    if isinstance(raw, bool) or not isinstance(raw, int | str | Decimal):
        raise InvalidInput(f'{field} must be a decimal number (a JSON number or a string such as "19.99")', field)
    try:
        value = Decimal(raw.strip()) if isinstance(raw, str) else Decimal(raw)
    except InvalidOperation:
        raise InvalidInput(f"{field} is not a decimal number", field) from None
    if not value.is_finite() or abs(value) >= MAX_AMOUNT:
        raise InvalidInput(f"{field} is not a usable amount", field)
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MAX_PLACES and value != value.quantize(Decimal(1).scaleb(-MAX_PLACES)):
        raise InvalidInput(f"{field} has more than {MAX_PLACES} decimal places", field)
    return value


def amount(raw: Any, field: str, *, negative: bool = False) -> Decimal:
    """A money amount; negative only where ``negative`` allows it."""
    value = _decimal(raw, field)
    if value < 0 and not negative:
        raise InvalidInput(f"{field} must not be negative", field)
    return value


def quantity(raw: Any, field: str) -> Decimal:
    """A positive quantity (fractional for weighed goods)."""
    value = _decimal(raw, field)
    if value <= 0:
        raise InvalidInput(f"{field} must be more than zero", field)
    return value


def currency(raw: Any, field: str) -> str:
    """An ISO 4217 alphabetic code (``EUR``) that CLDR (through Babel) knows."""
    if not isinstance(raw, str) or not _CURRENCY.match(raw.strip().upper()) or not is_currency(raw.strip().upper()):
        raise InvalidInput(f"{field} must be an ISO 4217 currency code such as USD", field)
    return raw.strip().upper()


def from_minor_units(raw: Any, code: str, field: str) -> Decimal:
    """An amount in the currency's smallest unit (Square's ``{"amount": 1999, "currency":
    "USD"}``) as a Decimal: 19.99 USD, 1999 JPY, 1.999 KWD (ISO 4217 minor units)."""
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise InvalidInput(f"{field} must be a whole number of the currency's smallest unit", field)
    return amount(Decimal(raw).scaleb(-get_currency_precision(code)), field, negative=True)


def text(value: Decimal) -> str:
    """The canonical string of an amount, as stored in event data (``19.99``, ``-5.00``)."""
    return format(value, "f")
