"""The rules language of tiers, segments and campaigns: a small, safe expression language.

Rules are written in the expression language of the `rule-engine` library
(https://zerosteiner.github.io/rule-engine/): comparisons, ``and``/``or``/``not``, ``in``,
regular expressions (``=~``), arithmetic, and ``traits['name']`` to read a trait (a rule reading a missing
trait does not match). Nothing is ``eval``-ed: a rule is parsed once, type-checked against the
names below, and then only evaluated. A rule naming something unknown, or comparing a
number with a string, fails when the hub starts, with the rule named.

A value that is not known yet (``days_since_last_purchase`` of a customer who never bought)
is null; a rule that compares null with a number does not match.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import rule_engine
from attrs import frozen

from ..errors import ConfigError, InvalidInput

__all__ = ["EVENT_NAMES", "NAMES", "Rule", "compile_rule"]

_T = rule_engine.DataType

# name -> (type, what it is); the documented vocabulary of every rule
NAMES: Mapping[str, tuple[Any, str]] = {
    "kind": (_T.STRING, "person, organization or group"),
    "tier": (_T.STRING, "the customer's tier now (null without one); segments and campaigns only"),
    "traits": (_T.MAPPING(_T.STRING), "the customer's traits: traits['vip'], traits['city']"),
    "lifetime_revenue": (
        _T.FLOAT,
        "sum of revenue, returns subtracted, in the reporting currency ([money]; null when some of it is in"
        " a currency without a rate)",
    ),
    "revenue_by_currency": (
        _T.MAPPING(_T.STRING, _T.FLOAT),
        "the same per ISO 4217 code, unconverted: revenue_by_currency['USD'] (XXX: revenue without a currency)",
    ),
    "mixed_currencies": (
        _T.ARRAY(_T.STRING),
        "the currencies of the customer's revenue kept apart for want of a rate (empty when all convert)",
    ),
    "order_count": (_T.FLOAT, "events that carried revenue (sales and returns)"),
    "event_count": (_T.FLOAT, "every event recorded for the customer"),
    "average_sale": (_T.FLOAT, "lifetime_revenue / order_count, in the reporting currency (null without orders)"),
    "purchases": (_T.FLOAT, "sales (positive revenue)"),
    "touchpoints": (_T.ARRAY(_T.STRING), "touch points the customer used"),
    "touchpoint_count": (_T.FLOAT, "how many touch points the customer used"),
    "days_since_first_seen": (_T.FLOAT, "days since the first event"),
    "days_since_last_seen": (_T.FLOAT, "days since the latest event"),
    "days_since_last_purchase": (_T.FLOAT, "days since the latest sale (null without one)"),
    "r_score": (_T.FLOAT, "recency quintile 1-5 (5 = bought most recently; null without a sale)"),
    "f_score": (_T.FLOAT, "frequency quintile 1-5 (null without a sale)"),
    "m_score": (_T.FLOAT, "monetary quintile 1-5 (null without a sale, or spent in a currency without a rate)"),
    "rfm": (_T.STRING, "the three scores as a string, e.g. '545' (null without a sale)"),
    "clv": (
        _T.FLOAT,
        "predicted value of the next 12 months in the reporting currency (null before `prm plan fit`)",
    ),
    "p_alive": (_T.FLOAT, "probability the customer is still active (null before `prm plan fit`)"),
    "churn_risk": (_T.FLOAT, "1 - p_alive"),
}

_CONTEXT = rule_engine.Context(
    type_resolver=rule_engine.type_resolver_from_dict({k: t for k, (t, _) in NAMES.items()}),
    default_value=None,
    mapping_attribute_lookup=False,  # traits['vip'], the spelling rule-engine keeps in 6.0
)


# names whose value any event changes; the others change only with a sale or a return (or
# the clock), or outside ingest (traits, kind: the hub refreshes tiers when it writes those)
EVENT_NAMES = frozenset(
    {"event_count", "touchpoints", "touchpoint_count", "days_since_first_seen", "days_since_last_seen"}
)
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@frozen
class Rule:
    """A compiled rule with its name and text."""

    name: str
    text: str
    compiled: rule_engine.Rule

    @property
    def names(self) -> frozenset[str]:
        """The names of :data:`NAMES` the rule mentions (a word in a string literal counts too)."""
        return frozenset(w for w in _WORD.findall(self.text) if w in NAMES)

    def matches(self, facts: Mapping[str, Any]) -> bool:
        """Whether the facts of one customer match; a rule that cannot be evaluated on them
        (null compared with a number, a missing key) does not."""
        try:
            return bool(self.compiled.matches(facts))
        except (rule_engine.EngineError, LookupError, TypeError, ValueError):
            return False


def _check(name: str, text: Any, where: str) -> Rule:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: the rule must be a non-empty string")
    if len(text) > 2000:
        raise ValueError(f"{where}: the rule is longer than 2000 characters")
    try:
        compiled = rule_engine.Rule(text, context=_CONTEXT)
    except rule_engine.SymbolResolutionError as exc:
        raise ValueError(f"{where}: unknown name {exc.symbol_name!r}; known: {', '.join(sorted(NAMES))}") from None
    except rule_engine.RuleSyntaxError as exc:
        token = getattr(exc.token, "value", None)
        raise ValueError(
            f"{where}: syntax error{f' near {token!r}' if token is not None else ''} in {text!r}"
        ) from None
    except rule_engine.EngineError as exc:
        raise ValueError(f"{where}: {type(exc).__name__}: {getattr(exc, 'message', exc)}") from None
    return Rule(name, text, compiled)


def compile_rule(name: str, text: Any, *, where: str, config: bool = True) -> Rule:
    """Parse and type-check ``text``; ``where`` names it in errors (``[tiers.rules].gold``).

    Raises :class:`ConfigError` (``config``) or :class:`InvalidInput` naming ``where``.
    """
    try:
        return _check(name, text, where)
    except ValueError as exc:
        if config:
            raise ConfigError(str(exc)) from None
        raise InvalidInput(str(exc), "rule") from None
