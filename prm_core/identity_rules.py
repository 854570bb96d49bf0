"""Identity rules: which identifier values may link customers, and how many a customer holds.

Configured per namespace as ``[identity.rules.<namespace>]``:

``limit``
    how many values of the namespace one customer may hold (``user_id``: 1 by default;
    other namespaces: no limit unless set; 0 is no limit). An event that would give a customer a second
    ``user_id``, or merge two customers holding different ones, is a *conflict*: it is
    recorded, for the customer its strongest identity points to, and kept for review.
``blocked``
    values that never link anyone (``"guest"``), or patterns between slashes
    (``"/^test-.*$/"``, matched against the whole normalized value, ignoring case). They
    add to :data:`PLACEHOLDERS`, the values real trackers send when they have none.
``priority``
    which identity wins when linking everything an event names would break a limit: 1 is
    the strongest. Defaults: ``user_id`` 1, ``account_id`` 2, ``email`` 3, ``phone`` 4,
    ``loyalty_card`` 5, ``anonymous_id`` 9, any other namespace 50.

The checks run on the ingest path for every identity, so the rules are compiled once
(:meth:`IdentityRules.from_config`): blocked values are a frozenset looked up with the
lower-cased value, patterns one compiled alternation per namespace.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from attrs import define, field, frozen

from .errors import ConfigError
from .model import Identity, IdentityNamespace

__all__ = ["PLACEHOLDERS", "Decision", "IdentityRules", "NamespaceRule", "decide"]

# What trackers and forms send when they have no value: a JavaScript ``undefined`` or
# ``null`` turned into a string, a zero, a dummy address or number. Compared lower-cased.
PLACEHOLDERS = frozenset(
    {
        "undefined",
        "null",
        "nil",
        "none",
        "nan",
        "0",
        "-1",
        "n/a",
        "na",
        "anonymous",
        "unknown",
        "[object object]",
        "test@test.com",
        "test@example.com",
        "0000000000",
    }
)
# zeros alone; a phone number of zeros after its country code once normalized (``+10000000000``),
# for phones only: elsewhere such a pattern would block real ids such as ``1000000``
_ZEROS = r"0+"
_PHONE_ZEROS = r"\+\d{1,3}0{6,}"

DEFAULT_LIMITS: Mapping[str, int] = {"user_id": 1}
DEFAULT_PRIORITIES: Mapping[str, int] = {
    "user_id": 1,
    "account_id": 2,
    "email": 3,
    "phone": 4,
    "loyalty_card": 5,
    "anonymous_id": 9,
}
OTHER_PRIORITY = 50


@frozen
class NamespaceRule:
    """The compiled rule of one namespace."""

    limit: int | None
    priority: int
    blocked: frozenset[str]
    pattern: re.Pattern[str] | None

    def blocks(self, value: str) -> bool:
        folded = value.lower()
        return folded in self.blocked or (self.pattern is not None and self.pattern.fullmatch(folded) is not None)


_UNRULED = NamespaceRule(None, OTHER_PRIORITY, PLACEHOLDERS, re.compile(_ZEROS))


@frozen
class IdentityRules:
    """Every namespace's rule; see the module docstring."""

    by_namespace: Mapping[str, NamespaceRule] = field(factory=dict)

    @property
    def limited(self) -> frozenset[str]:
        """The namespaces with a limit."""
        return frozenset(ns for ns, r in self.by_namespace.items() if r.limit is not None)

    def rule(self, namespace: str) -> NamespaceRule:
        return self.by_namespace.get(namespace, _UNRULED)

    def blocked(self, ident: Identity) -> bool:
        """Whether this value never links anyone."""
        return self.rule(ident.namespace).blocks(ident.value)

    def screen(self, idents: tuple[Identity, ...]) -> tuple[Identity, ...]:
        """``idents`` without the blocked ones (the same tuple when none is blocked)."""
        if not any(self.blocked(i) for i in idents):
            return idents
        return tuple(i for i in idents if not self.blocked(i))

    def strength(self, ident: Identity) -> tuple[int, str]:
        """Sort key: the strongest identity first."""
        return (self.rule(ident.namespace).priority, ident.namespace)

    @classmethod
    def from_config(
        cls, section: Mapping[str, Any], namespaces: Mapping[str, IdentityNamespace], region: str
    ) -> IdentityRules:
        """Compile ``[identity.rules]``; a :class:`ConfigError` names the first bad key."""
        if not isinstance(section, Mapping):
            raise ConfigError("[identity.rules] must be a table of [identity.rules.<namespace>] tables")
        for name in section:
            if name not in namespaces:
                raise ConfigError(
                    f"[identity.rules.{name}] names unknown namespace {name!r}; known: {', '.join(sorted(namespaces))}"
                )
        rules: dict[str, NamespaceRule] = {}
        for name, ns in namespaces.items():
            rules[name] = _compile(name, section.get(name, {}), ns, region)
        return cls(rules)


def _compile(name: str, raw: Any, ns: IdentityNamespace, region: str) -> NamespaceRule:
    where = f"[identity.rules.{name}]"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a table")
    unknown = sorted(set(raw) - {"limit", "blocked", "priority"})
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]} is not a setting; known: blocked, limit, priority")
    limit = raw.get("limit", DEFAULT_LIMITS.get(name))
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ConfigError(f"{where}.limit must be a whole number (0: no limit), not {limit!r}")
    priority = raw.get("priority", DEFAULT_PRIORITIES.get(name, OTHER_PRIORITY))
    if isinstance(priority, bool) or not isinstance(priority, int) or priority < 1:
        raise ConfigError(
            f"{where}.priority must be a whole number of at least 1 (1 is the strongest), not {priority!r}"
        )
    blocked_raw = raw.get("blocked", [])
    if not isinstance(blocked_raw, list) or not all(isinstance(b, str) for b in blocked_raw):
        raise ConfigError(f"{where}.blocked must be a list of values or /patterns/")
    values = set(PLACEHOLDERS)
    patterns = [_ZEROS, _PHONE_ZEROS] if name == "phone" else [_ZEROS]
    for i, item in enumerate(blocked_raw):
        if len(item) >= 2 and item.startswith("/") and item.endswith("/"):
            try:
                re.compile(item[1:-1])
            except re.error as exc:
                raise ConfigError(f"{where}.blocked[{i}] is not a valid pattern: {exc}") from None
            patterns.append(item[1:-1])
            continue
        values.add(item.strip().lower())
        try:  # block the value as it is stored, too (a phone number in E.164)
            values.add(ns.normalize(item, region).lower())
        except ValueError:
            pass
    pattern = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)
    return NamespaceRule(limit or None, priority, frozenset(values), pattern)


Held = Mapping[str, Collection[str]]


@define
class Decision:
    """What linking an event's identities does under the limits (see :func:`decide`).

    ``target`` is the customer the event is recorded for (None: a new customer), ``merged``
    the customers merged with it, ``attach`` the identities no one held that it now holds.
    ``left_out`` are identities that link nobody because of a limit, ``apart`` the customers
    kept apart, ``broken`` the limited namespaces that would have gone over.
    """

    target: str | None = None
    merged: list[str] = field(factory=list)
    attach: list[Identity] = field(factory=list)
    left_out: list[Identity] = field(factory=list)
    apart: list[str] = field(factory=list)
    broken: set[str] = field(factory=set)

    @property
    def conflict(self) -> bool:
        return bool(self.broken)


def decide(
    rules: IdentityRules,
    links: Sequence[tuple[Identity, str | None]],
    held: Callable[[str], Held],
    extra: Iterable[str] = (),
) -> Decision:
    """Link an event's identities strongest first, each only if no limit breaks.

    ``links`` pairs each (unblocked, unshared) identity with the customer holding it, or
    None; ``held(customer)`` is what that customer holds of the limited namespaces;
    ``extra`` are customers the event reaches otherwise (a dialogue key), weakest of all.
    Without any limit at stake every customer is linked, which is a plain merge.
    """
    decision = Decision()
    have: dict[str, set[str]] = {}

    def fits(values: Held) -> list[str]:
        over = []
        for ns, vs in values.items():
            limit = rules.rule(ns).limit
            if limit is not None and len(have.get(ns, set()) | set(vs)) > limit:
                over.append(ns)
        return over

    def take(cid: str) -> None:
        for ns, vs in held(cid).items():
            have.setdefault(ns, set()).update(vs)
        if decision.target is None:
            decision.target = cid
        else:
            decision.merged.append(cid)

    ordered = sorted(links, key=lambda link: rules.strength(link[0]))
    for ident, cid in [*ordered, *((None, c) for c in extra)]:
        if cid is None:
            assert ident is not None
            over = fits({ident.namespace: (ident.value,)})
            if over:
                decision.left_out.append(ident)
                decision.broken.update(over)
            else:
                if rules.rule(ident.namespace).limit is not None:
                    have.setdefault(ident.namespace, set()).add(ident.value)
                decision.attach.append(ident)
            continue
        if cid == decision.target or cid in decision.merged or cid in decision.apart:
            continue
        over = fits(held(cid))
        if over:
            decision.apart.append(cid)
            decision.broken.update(over)
            if ident is not None:
                decision.left_out.append(ident)
        else:
            take(cid)
    return decision
