"""Money in its currency: the reporting currency, conversion rates, and sums that never add currencies.

Every revenue figure of planning (a customer's revenue and value, the tiers' and the
scorecard's revenue, the lifetime value) is kept per ISO 4217 currency where it is recorded,
and converted only when it is read, with the rates of ``[money.rates]``::

    [money]
    reporting_currency = "EUR"   # figures are reported in euros
    [money.rates]
    USD = 0.92                   # 1 USD = 0.92 EUR
    GBP = 1.17                   # 1 GBP = 1.17 EUR

or, as a finance system exports them, ``rates_file = "rates.csv"`` (beside the config file):
a ``currency,rate`` header, then one currency a line.

A figure whose amounts are all in the reporting currency, or in currencies with a rate, is
one amount in the reporting currency. A figure with an amount in a currency without a rate is
never added up: its amount is null, its amounts stay apart per currency, and its
``mixed_currencies`` names the currencies it holds. Revenue an event carries without a
currency (ISO 4217's ``XXX``) counts in the reporting currency. ``[planning] currency`` is
the older name of ``reporting_currency`` and is still read.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from attrs import field, frozen

from ..config import Config
from ..errors import ConfigError, InvalidInput
from ..merging import NO_CURRENCY

__all__ = [
    "DEFAULT_CURRENCY",
    "Money",
    "add_amounts",
    "cents",
    "check_currency",
    "event_currency",
    "is_iso_currency",
    "mixed_of",
]

DEFAULT_CURRENCY = "USD"
_CODE = re.compile(r"^[A-Z]{3}$")
_CENTS = Decimal("0.01")


@functools.cache
def _iso_codes() -> frozenset[str]:
    from babel.numbers import list_currencies

    # XXX (no currency) and XTS (for testing) are codes, not currencies one reports or converts
    return frozenset(list_currencies()) - {NO_CURRENCY, "XTS"}


def is_iso_currency(code: Any) -> bool:
    """Whether ``code`` is an ISO 4217 currency code (upper case) that Babel knows."""
    return isinstance(code, str) and bool(_CODE.match(code)) and code in _iso_codes()


def check_currency(code: Any, field: str) -> str:
    """``code`` when it is an ISO 4217 currency code, else :class:`InvalidInput` naming ``field``."""
    if not is_iso_currency(code):
        raise InvalidInput(f"{field} must be an ISO 4217 currency code such as USD or EUR, not {code!r}", field)
    return str(code)


def add_amounts(into: dict[str, Decimal], amounts: Mapping[str, Any]) -> dict[str, Decimal]:
    """Add ``amounts`` (per currency; decimal strings or numbers) into ``into``, per currency."""
    for code, amount in amounts.items():
        into[code] = into.get(code, Decimal(0)) + Decimal(str(amount))
    return into


def _rate(raw: Any, where: str) -> Decimal:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise ConfigError(f"{where} must be a positive number (units of the reporting currency per unit), not {raw!r}")
    try:
        rate = Decimal(str(raw))
    except InvalidOperation:
        raise ConfigError(f"{where} must be a positive number, not {raw!r}") from None
    if not rate.is_finite() or rate <= 0 or (isinstance(raw, float) and not math.isfinite(raw)):
        raise ConfigError(f"{where} must be a positive number, not {raw!r}")
    return rate


@frozen
class Money:
    """The reporting currency and the rates into it: ``rates[code]`` units of ``currency`` per unit of ``code``."""

    currency: str = DEFAULT_CURRENCY
    rates: Mapping[str, Decimal] = field(factory=dict)

    @classmethod
    def from_config(cls, config: Config) -> Money:
        """``[money]`` (and ``[planning] currency``, its older name); anything invalid raises
        :class:`ConfigError` naming the key."""
        if not isinstance(config.raw.get("money", {}), Mapping):
            raise ConfigError("[money] must be a table (reporting_currency, and rates in [money.rates])")
        section = config.section("money")
        unknown = set(section) - {"reporting_currency", "rates", "rates_file"}
        if unknown:
            raise ConfigError(
                f"[money].{sorted(unknown)[0]} is not a money setting (reporting_currency, rates, rates_file)"
            )
        older = config.section("planning").get("currency")
        if older is not None and not is_iso_currency(older):
            raise ConfigError(f"[planning].currency must be an ISO 4217 code such as USD or EUR, not {older!r}")
        currency = section.get("reporting_currency", older if older is not None else DEFAULT_CURRENCY)
        if not is_iso_currency(currency):
            raise ConfigError(
                f"[money].reporting_currency must be an ISO 4217 code such as USD or EUR, not {currency!r}"
            )
        if older is not None and older != currency:
            raise ConfigError(
                f"[planning].currency ({older}) differs from [money].reporting_currency ({currency}); keep one"
            )
        raw_rates = section.get("rates", {})
        if not isinstance(raw_rates, Mapping):
            raise ConfigError("[money].rates must be a table ([money.rates]) of currency = rate")
        listed = [(f"[money.rates].{code}", code, raw) for code, raw in raw_rates.items()]
        if "rates_file" in section:
            listed += _rates_file(section["rates_file"], config.source)
        rates: dict[str, Decimal] = {}
        for where, code, raw in listed:
            if not is_iso_currency(code):
                raise ConfigError(f"{where}: {code!r} is not an ISO 4217 currency code")
            if code in rates:
                raise ConfigError(f"{where}: {code} has a rate already; give each currency one")
            rate = _rate(raw, where)
            if code == currency and rate != 1:
                raise ConfigError(f"{where} is the reporting currency itself: its rate is 1")
            rates[code] = rate
        return cls(currency, rates)

    def rate(self, code: str) -> Decimal | None:
        """Units of the reporting currency per unit of ``code``; ``None`` without a rate."""
        if code in (self.currency, NO_CURRENCY):
            return Decimal(1)
        return self.rates.get(code)

    def unconverted(self, amounts: Mapping[str, Any]) -> list[str]:
        """The currencies of ``amounts`` (non-zero) that have no rate."""
        return sorted(c for c, a in amounts.items() if Decimal(str(a)) != 0 and self.rate(c) is None)

    def total(self, amounts: Mapping[str, Any]) -> Decimal | None:
        """The sum of ``amounts`` in the reporting currency, or ``None`` when one has no rate."""
        total = Decimal(0)
        for code, amount in amounts.items():
            value = Decimal(str(amount))
            if value == 0:
                continue
            rate = self.rate(code)
            if rate is None:
                return None
            total += value * rate
        return total

    def mixed(self, amounts: Mapping[str, Any]) -> list[str]:
        """The currencies kept apart in a figure that cannot be added (empty when it can)."""
        if not self.unconverted(amounts):
            return []
        return sorted(c for c, a in amounts.items() if Decimal(str(a)) != 0)

    def figure(self, amounts: Mapping[str, Any]) -> dict[str, Any]:
        """A figure as the API shows it: ``amount`` in ``currency`` (null when currencies without
        a rate are in it), its amounts ``by_currency`` and the ``mixed_currencies`` kept apart."""
        total = self.total(amounts)
        return {
            "amount": cents(total),
            "currency": self.currency,
            "by_currency": {c: cents(Decimal(str(a))) for c, a in sorted(amounts.items())},
            "mixed_currencies": self.mixed(amounts),
        }

    def to_json(self) -> dict[str, Any]:
        return {"reporting_currency": self.currency, "rates": {c: str(r) for c, r in sorted(self.rates.items())}}


def _rates_file(name: Any, source: Path | None) -> list[tuple[str, str, str]]:
    """``[money].rates_file``: a CSV table with a ``currency,rate`` header (as a finance system
    exports one), relative to the config file; each row as (where, code, rate)."""
    if not isinstance(name, str) or not name:
        raise ConfigError("[money].rates_file must be the path of a CSV file (currency,rate)")
    path = Path(name) if source is None else source.parent / name
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"[money].rates_file: cannot read {path} ({exc.strerror or exc})") from None
    rows = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(rows, [])]
    if header != ["currency", "rate"]:
        raise ConfigError(f"[money].rates_file {path}: the first line must be the header currency,rate")
    found = []
    for n, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"[money].rates_file {path} line {n}"
        if len(row) != 2:
            raise ConfigError(f"{where}: two columns, currency and rate, not {len(row)}")
        found.append((where, row[0].strip(), row[1].strip()))
    return found


def cents(amount: Decimal | None) -> str | None:
    """A decimal string with two places (``None`` stays ``None``)."""
    return None if amount is None else str(amount.quantize(_CENTS))


def mixed_of(figures: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every currency kept apart in any of ``figures`` (each with ``mixed_currencies``)."""
    return sorted({c for f in figures for c in f.get("mixed_currencies", ())})


def event_currency(data: Mapping[str, Any]) -> str:
    """The ISO 4217 code of the revenue an event carries (``data.currency``), ``XXX`` without
    one: the same reading as the core's purchase metrics (:func:`prm_core.merging.event_purchase`)."""
    code = data.get("currency")
    return code if isinstance(code, str) and _CODE.match(code) else NO_CURRENCY
