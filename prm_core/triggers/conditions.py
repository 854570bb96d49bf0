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
from decimal import Decimal
from typing import Any

import rule_engine

from ..planning.rules import NAMES, Rule

__all__ = [
    "TRIGGER_NAMES",
    "Shortcut",
    "compile_condition",
    "granted",
    "items_read",
    "prefilter",
    "reads_facts",
    "shortcut",
]

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


_ORDER = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
}
_FLIP = {"gt": "lt", "ge": "le", "lt": "gt", "le": "ge", "eq": "eq", "ne": "ne"}


class _Fails(Exception):
    """The rules engine raises on this term (a missing key, null ordered against a number): the
    rule does not match."""


class _Defer(Exception):
    """A case the plain evaluation does not decide (a fact not of its declared type): the rules
    engine does."""


# a condition's tree: ("and" | "or", left, right), or a term ("term", name, key, op, literal)
_Node = tuple[Any, ...]


class Shortcut:
    """A condition made only of comparisons of a name (``tier``, ``lifetime_revenue``,
    ``traits['vip']``, ``change['type']``) with a literal, joined by ``and`` and ``or``,
    decided in plain Python: the same answer as the rules engine, at a fraction of its cost per
    change. Like the rules engine, ``and`` and ``or`` look at their right side only when the
    left one does not decide, and a term the rules engine cannot evaluate (null ordered
    against a number, a missing key) makes the whole rule not match; the rare case it is not
    sure of (a fact not of its declared type) is left to the rules engine itself."""

    def __init__(self, tree: _Node, rule: Rule) -> None:
        self.tree = tree
        self.rule = rule

    def matches(self, facts: Mapping[str, Any]) -> bool:
        try:
            return _decide(self.tree, facts)
        except _Fails:
            return False
        except _Defer:
            return self.rule.matches(facts)


def _decide(node: _Node, facts: Mapping[str, Any]) -> bool:
    kind = node[0]
    if kind == "and":
        return _decide(node[1], facts) and _decide(node[2], facts)
    if kind == "or":
        return _decide(node[1], facts) or _decide(node[2], facts)
    _, name, key, op, literal = node
    value = facts.get(name)
    if key is not None:
        if not isinstance(value, Mapping):
            raise _Defer
        if key not in value:
            raise _Fails  # the rules engine's lookup fails
        value = value[key]
    elif value is not None and isinstance(literal, str) != isinstance(value, str):
        raise _Defer  # a fact not of its declared type
    if op in ("eq", "ne"):
        if isinstance(literal, bool) != isinstance(value, bool) and value is not None:
            value = object()  # true == 1 in Python, never in the rules
        return bool(_ORDER[op](value, literal))
    if value is None or isinstance(value, bool):
        raise _Fails  # the rules engine refuses to order null or a boolean
    if not isinstance(value, int | float | Decimal):
        raise _Defer
    return bool(_ORDER[op](value, literal))


def shortcut(rule: Rule) -> Shortcut | None:
    """The condition as a :class:`Shortcut`, when every term of it is one (else ``None``)."""
    tree = _tree(rule.compiled.statement.expression)
    return Shortcut(tree, rule) if tree is not None else None


def _tree(node: Any) -> _Node | None:
    kind = type(node).__name__
    if kind == "LogicExpression" and node.type in ("and", "or"):
        left, right = _tree(node.left), _tree(node.right)
        return (node.type, left, right) if left is not None and right is not None else None
    if kind not in ("ComparisonExpression", "ArithmeticComparisonExpression") or node.type not in _ORDER:
        return None
    term = _term(node.left, node.right, node.type) or _term(node.right, node.left, _FLIP[node.type])
    return ("term", *term) if term is not None else None


def _term(name: Any, literal: Any, op: str) -> tuple[str, str | None, str, Any] | None:
    kinds = {"StringExpression", "BooleanExpression", "FloatExpression"}
    if type(literal).__name__ not in kinds:
        return None
    value = literal.value
    if op not in ("eq", "ne") and not isinstance(value, Decimal):
        return None
    if type(name).__name__ == "SymbolExpression" and name.name in TRIGGER_NAMES:
        if name.name in ("change", "traits", "touchpoints", "consents"):
            return None  # containers: compared whole, the rules engine has its own ways
        return (name.name, None, op, value)
    if type(name).__name__ == "GetItemExpression":
        container, item = getattr(name, "container", None), getattr(name, "item", None)
        key = getattr(item, "value", None)
        holder = getattr(container, "name", None)
        if (
            type(container).__name__ == "SymbolExpression"
            and holder in ("change", "traits")
            and type(item).__name__ == "StringExpression"
            and isinstance(key, str)
        ):
            return (str(holder), key, op, value)
    return None


_ITEM = re.compile(r"""\[\s*(?:'([^'\\]*)'|"([^"\\]*)")\s*\]""")


def items_read(rule: Rule, name: str) -> frozenset[str] | None:
    """The keys the condition reads of the mapping ``name`` (``change['type']``: ``type``),
    when it reads it only that way; else ``None``. The engine then hands the rules engine only
    those keys, which it would otherwise check the type of, one by one, at every evaluation."""
    keys: set[str] = set()
    for found in re.finditer(rf"\b{name}\b", rule.text):
        item = _ITEM.match(rule.text, found.end())
        if item is None:
            return None
        keys.add(item.group(1) if item.group(1) is not None else item.group(2))
    return frozenset(keys)
