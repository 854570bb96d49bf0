"""Trigger conditions: the planning rules language over a change and the customer's facts.

A condition reads every name a segment rule reads (``tier``, ``traits['vip']``,
``lifetime_revenue``, ``churn_risk``, ``clv``, ``days_since_last_purchase``, ...; see
:data:`prm_core.planning.rules.NAMES`), and these:

- ``change``: the change's ``data`` (``change['tier']``, ``change['status']``, and for
  ``event.recorded`` the event's ``change['type']``);
- ``change_type``: the change's type;
- ``consents``: the consents granted, as ``'purpose:channel'`` (``'marketing:email'``,
  ``'marketing:*'``);
- ``days_since_last_contact``: days since the hub last reached out to the customer (its
  latest outbound event), null if it never did.

Like every rule, a condition is parsed and type-checked once; it is only evaluated after.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import rule_engine

from ..planning.rules import NAMES, Rule

__all__ = ["TRIGGER_NAMES", "compile_condition", "granted", "prefilter", "reads_facts"]

_T = rule_engine.DataType

TRIGGER_NAMES: Mapping[str, tuple[Any, str]] = {
    **NAMES,
    "change": (_T.MAPPING(_T.STRING), "the change's data: change['tier'], change['type'], change['status']"),
    "change_type": (_T.STRING, "the change's type"),
    "consents": (_T.ARRAY(_T.STRING), "consents granted, as 'purpose:channel' ('marketing:email', 'marketing:*')"),
    "days_since_last_contact": (_T.FLOAT, "days since the hub's latest outbound event to the customer"),
}

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONTEXT = rule_engine.Context(
    type_resolver=rule_engine.type_resolver_from_dict({k: t for k, (t, _) in TRIGGER_NAMES.items()}),
    default_value=None,
    mapping_attribute_lookup=False,
)


def compile_condition(text: Any, where: str) -> Rule:
    """Parse and type-check a condition; ``ValueError`` saying what is wrong otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("must be a non-empty rule")
    if len(text) > 2000:
        raise ValueError("is longer than 2000 characters")
    try:
        compiled = rule_engine.Rule(text, context=_CONTEXT)
    except rule_engine.SymbolResolutionError as exc:
        raise ValueError(f"names {exc.symbol_name!r}, which a condition does not know") from None
    except rule_engine.RuleSyntaxError as exc:
        token = getattr(exc.token, "value", None)
        raise ValueError(f"has a syntax error{f' near {token!r}' if token is not None else ''}") from None
    except rule_engine.EngineError as exc:
        raise ValueError(f"is wrong: {type(exc).__name__}: {getattr(exc, 'message', exc)}") from None
    return Rule(where, text, compiled)


def granted(consents: Iterable[Mapping[str, Any]]) -> list[str]:
    """The view's consents as ``consents`` reads them: only those granted."""
    return sorted(f"{c['purpose']}:{c.get('channel') or '*'}" for c in consents if c.get("granted"))


def prefilter(rule: Rule) -> tuple[tuple[str, str | bool], ...]:
    """The ``change['key'] == 'literal'`` terms the condition requires (those joined to the rest
    by ``and`` at its top): a change whose data lacks one cannot match, so the engine skips
    it before reading any fact or evaluating the rule (a rule evaluation costs far more than
    a dictionary lookup, and most changes of a type are not the ones a trigger is after)."""
    found: list[tuple[str, str | bool]] = []
    pending = [rule.compiled.statement.expression]
    while pending:
        node = pending.pop()
        kind = type(node).__name__
        if kind == "LogicExpression" and node.type == "and":
            pending += [node.left, node.right]
        elif kind == "ComparisonExpression" and node.type == "eq":
            for got, want in ((node.left, node.right), (node.right, node.left)):
                term = _change_item(got)
                if term is not None and type(want).__name__ in ("StringExpression", "BooleanExpression"):
                    found.append((term, want.value))
                    break
    return tuple(found)


def _change_item(node: Any) -> str | None:
    if type(node).__name__ != "GetItemExpression":
        return None
    container, item = getattr(node, "container", None), getattr(node, "item", None)
    value = getattr(item, "value", None)
    if type(container).__name__ == "SymbolExpression" and getattr(container, "name", None) == "change":
        if type(item).__name__ == "StringExpression" and isinstance(value, str):
            return value
    return None


_CHANGE_ONLY = frozenset({"change", "change_type"})


def reads_facts(rule: Rule) -> bool:
    """Whether the condition reads anything of the customer (else no fact is read for it)."""
    return bool(set(_WORD.findall(rule.text)) & (set(TRIGGER_NAMES) - _CHANGE_ONLY))
