"""What a trigger is: the change it listens for, its condition, and its steps.

A trigger is written as ``[triggers.NAME]`` in the config or posted to ``/v1/triggers``, in
one shape::

    on = "event.recorded"                 # a change type of the feed
    when = "change['type'] == 'cart'"     # a condition (the rules language), optional
    delay = "30m"                         # wait this long first, optional
    unless = ["purchase", "order"]        # ... and do nothing if one of these events came meanwhile
    purpose = "marketing"                 # or "transactional"
    holdout_percent = 10                  # a control group, kept out of the action
    cooldown = "30d"                      # at most once per customer in this time
    action = { kind = "message", channel = "email", template = "..." }

A message action may ask for a score (``survey = "csat"`` or ``"nps"``, optionally ``about``
what is rated and the answer page's ``question``; see :mod:`prm_core.surveys`); its template
may then say ``$survey_url``. Or, for a journey, ``steps`` instead of ``delay``/``unless``/``action``: a list of
``{wait = "2d", unless = [...]}``, ``{check = "rule"}`` and ``{act = {...}}`` tables, run in
order. A definition that is wrong raises :class:`~prm_core.errors.ConfigError` naming the
key (``[triggers.cart].action.template``) at start, or
:class:`~prm_core.errors.InvalidInput` naming the field (``action.template``) in the API.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Any, Literal

from attrs import field, frozen

from ..errors import ConfigError, InvalidInput
from ..feed.changes import CORE_TYPES, check_plugin_type
from ..planning.rules import Rule
from .conditions import Shortcut, compile_condition, items_read, prefilter, reads_facts, shortcut

__all__ = [
    "ACTION_KINDS",
    "SURVEY_KINDS",
    "TEMPLATE_NAMES",
    "Act",
    "Check",
    "Step",
    "Trigger",
    "Wait",
    "parse_duration",
    "parse_trigger",
]

ACTION_KINDS = ("offer", "partner", "message")
PURPOSES = ("marketing", "transactional")
# what a message's template may say: never more of the customer than a greeting needs
TEMPLATE_NAMES = frozenset({"first_name", "name", "tier", "trigger", "code"})
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_CHANNEL = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_MAX_S = 366 * 86400
_KEYS = {"on", "when", "delay", "unless", "action", "steps", "purpose", "holdout_percent", "cooldown", "description"}
_ACTION_KEYS = {
    "offer": {"kind", "code", "title", "description", "score", "expires", "touchpoint"},
    "partner": {"kind", "partner", "request", "template", "channel", "touchpoint"},
    "message": {"kind", "channel", "template", "subject", "touchpoint", "survey", "about", "question"},
}
SURVEY_KINDS = ("csat", "nps")
# what only a survey's message may say: the link to its answer page (prm_core.surveys)
SURVEY_TEMPLATE_NAMES = frozenset({"survey_url"})


class _Bad(Exception):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(message)
        self.where = where
        self.message = message


@frozen
class Wait:
    """Wait ``seconds``; the run is cancelled if the customer had an event of a type in
    ``unless`` meanwhile (an ``order`` after a ``cart``)."""

    seconds: float
    unless: tuple[str, ...] = ()


@frozen
class Check:
    """Go on only if ``rule`` matches the customer's facts now; else the journey ends."""

    rule: Rule


@frozen
class Act:
    """Do something for the customer: queue an ``offer``, ask a ``partner`` (role
    ``notification``, through the outbox), or send a ``message`` through a touch point."""

    kind: Literal["offer", "partner", "message"]
    channel: str | None = None  # the channel consent and the frequency cap are counted on
    template: str | None = None
    subject: str | None = None
    offer: Mapping[str, Any] | None = None
    partner: str | None = None
    request: str = "notify"
    touchpoint: str | None = None
    expires_s: float = 14 * 86400
    # a message asking for a score (prm_core.surveys): ``csat`` (1-5) or ``nps`` (0-10), what it
    # rates (None: what the change that started the run was about) and the answer page's question
    survey: Literal["csat", "nps"] | None = None
    about: str | None = None
    question: str | None = None

    def render(self, values: Mapping[str, Any]) -> str:
        """The template with ``$first_name`` and the other :data:`TEMPLATE_NAMES` filled in
        (a value the customer lacks becomes an empty string); a survey's also ``$survey_url``."""
        if self.template is None:
            return ""
        names = TEMPLATE_NAMES | SURVEY_TEMPLATE_NAMES if self.survey else TEMPLATE_NAMES
        known = {k: "" if values.get(k) is None else str(values[k]) for k in names}
        return string.Template(self.template).substitute(known)


Step = Wait | Check | Act


@frozen
class Trigger:
    """One trigger, compiled. ``definition`` is what was written (the API shows it back)."""

    name: str
    on: str
    steps: tuple[Step, ...]
    when: Rule | None = None
    purpose: Literal["marketing", "transactional"] = "marketing"
    holdout_percent: int = 0
    cooldown_s: float | None = None
    description: str = ""
    definition: Mapping[str, Any] = field(factory=dict)
    # what the engine checks before the condition itself (conditions.prefilter, reads_facts)
    requires: tuple[tuple[str, str | bool], ...] = field(init=False)
    needs_facts: bool = field(init=False)
    fast: Shortcut | None = field(init=False)
    thin: Mapping[str, frozenset[str]] = field(init=False)  # mappings the condition reads by key only
    contact: tuple[bool, bool] = field(init=False)  # whether it reads consents, days_since_last_contact

    def __attrs_post_init__(self) -> None:
        when = self.when
        set_ = object.__setattr__
        set_(self, "requires", prefilter(when) if when is not None else ())
        set_(self, "needs_facts", when is not None and reads_facts(when))
        set_(self, "fast", shortcut(when) if when is not None else None)
        thin = {n: items_read(when, n) for n in ("change", "traits")} if when is not None else {}
        set_(self, "thin", {n: keys for n, keys in thin.items() if keys is not None})
        text = when.text if when is not None else ""
        set_(self, "contact", ("consents" in text, "days_since_last_contact" in text))

    def matches(self, facts: Mapping[str, Any]) -> bool:
        """Whether the condition matches these facts (the change's among them)."""
        if self.when is None:
            return True
        if self.fast is not None:
            return self.fast.matches(facts)
        if self.thin:
            facts = {**facts}
            for name, keys in self.thin.items():
                whole = facts.get(name)
                if isinstance(whole, Mapping):
                    facts[name] = {k: whole[k] for k in keys if k in whole}
        return self.when.matches(facts)

    def may_match(self, data: Mapping[str, Any]) -> bool:
        """False when the change lacks a term the condition requires: it cannot match."""
        return all(data.get(key) == value for key, value in self.requires)

    @property
    def acts(self) -> tuple[Act, ...]:
        return tuple(s for s in self.steps if isinstance(s, Act))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, **self.definition}


def parse_duration(raw: Any, where: str) -> float:
    """``"30m"``, ``"2h"``, ``"1d"``, ``"45s"``, or a number of seconds; at most a year."""
    if isinstance(raw, bool):
        raise _Bad(where, "must be a duration like '30m', '2h' or '7d'")
    if isinstance(raw, int | float):
        seconds = float(raw)
    elif isinstance(raw, str) and (m := _DURATION.match(raw)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise _Bad(where, "must be a duration like '30m', '2h' or '7d'")
    if not 0 <= seconds <= _MAX_S:
        raise _Bad(where, "must be a duration from 0 to 366 days")
    return seconds


def _types(raw: Any, where: str) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw or not all(isinstance(t, str) and 0 < len(t) <= 100 for t in raw):
        raise _Bad(where, "must be an event type or a list of event types")
    return tuple(raw)


def _template(raw: Any, where: str, *, survey: bool = False) -> str:
    if not isinstance(raw, str) or not raw.strip() or len(raw) > 5000:
        raise _Bad(where, "must be a text of at most 5000 characters")
    tpl = string.Template(raw)
    if not tpl.is_valid():
        raise _Bad(where, "is not a valid template: write $name or ${name}, and $$ for a dollar sign")
    names = TEMPLATE_NAMES | SURVEY_TEMPLATE_NAMES if survey else TEMPLATE_NAMES
    unknown = sorted(set(tpl.get_identifiers()) - names)
    if unknown:
        if unknown[0] in SURVEY_TEMPLATE_NAMES:
            raise _Bad(where, f"names ${unknown[0]}, which only the message of a survey can use (set survey)")
        raise _Bad(where, f"names ${unknown[0]}, which a template cannot use; known: {', '.join(sorted(names))}")
    return raw


def _text(raw: Any, where: str, limit: int = 200, *, required: bool = False) -> str | None:
    if raw is None and not required:
        return None
    if not isinstance(raw, str) or not raw.strip() or len(raw) > limit:
        raise _Bad(where, f"must be a text of 1 to {limit} characters")
    return raw


def _act(raw: Any, where: str) -> Act:
    if not isinstance(raw, Mapping):
        raise _Bad(where, "must be a table with a kind (offer, partner or message)")
    kind = raw.get("kind")
    if kind not in ACTION_KINDS:
        raise _Bad(f"{where}.kind", "must be offer, partner or message")
    unknown = sorted(set(raw) - _ACTION_KEYS[kind])
    if unknown:
        raise _Bad(f"{where}.{unknown[0]}", f"is not a setting of a {kind} action")
    touchpoint = _text(raw.get("touchpoint"), f"{where}.touchpoint", 64)
    if kind == "offer":
        code = _text(raw.get("code"), f"{where}.code", required=True)
        score = raw.get("score", 0.7)
        if isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1:
            raise _Bad(f"{where}.score", "must be a number from 0 to 1")
        offer = {
            "code": code,
            "title": _text(raw.get("title"), f"{where}.title") or code,
            "description": _text(raw.get("description"), f"{where}.description", 500) or "",
            "score": float(score),
        }
        expires = parse_duration(raw.get("expires", "14d"), f"{where}.expires")
        if expires <= 0:
            raise _Bad(f"{where}.expires", "must be longer than 0")
        return Act("offer", offer=offer, touchpoint=touchpoint, expires_s=expires)
    if kind == "message":
        channel = raw.get("channel")
        if not isinstance(channel, str) or not _CHANNEL.match(channel):
            raise _Bad(f"{where}.channel", "must name a channel (email, sms, ...)")
        survey = raw.get("survey")
        if survey is not None and survey not in SURVEY_KINDS:
            raise _Bad(f"{where}.survey", "must be csat (a score from 1 to 5) or nps (a score from 0 to 10)")
        for key in ("about", "question"):
            if key in raw and survey is None:
                raise _Bad(f"{where}.{key}", "is a setting of a survey: set survey (csat or nps) too")
        about = raw.get("about")
        if about is not None and (not isinstance(about, str) or not _CHANNEL.match(about)):
            raise _Bad(f"{where}.about", "must name what is rated: a touch point or a partner's role (field_service)")
        return Act(
            "message",
            channel=channel,
            template=_template(raw.get("template"), f"{where}.template", survey=survey is not None),
            subject=_text(raw.get("subject"), f"{where}.subject"),
            touchpoint=touchpoint,
            survey=survey,
            about=about,
            question=_text(raw.get("question"), f"{where}.question"),
        )
    channel = raw.get("channel", "partner")
    if not isinstance(channel, str) or not _CHANNEL.match(channel):
        raise _Bad(f"{where}.channel", "must name a channel (the one the partner reaches the customer on)")
    request = raw.get("request", "notify")
    if not isinstance(request, str) or not _CHANNEL.match(request):
        raise _Bad(f"{where}.request", "must name the partner's action (notify, ...)")
    return Act(
        "partner",
        channel=channel,
        partner=_text(raw.get("partner"), f"{where}.partner", 64),
        request=request,
        template=_template(raw["template"], f"{where}.template") if "template" in raw else None,
        touchpoint=touchpoint,
    )


def _steps(raw: Any, where: str) -> tuple[Step, ...]:
    if not isinstance(raw, list) or not raw or len(raw) > 20:
        raise _Bad(where, "must be a list of 1 to 20 steps")
    steps: list[Step] = []
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            raise _Bad(at, "must be a table with one of wait, check or act")
        kinds = [k for k in ("wait", "check", "act") if k in item]
        if len(kinds) != 1:
            raise _Bad(at, "must have exactly one of wait, check or act")
        allowed = {"wait", "unless"} if kinds == ["wait"] else set(kinds)
        unknown = sorted(set(item) - allowed)
        if unknown:
            raise _Bad(f"{at}.{unknown[0]}", f"is not a setting of a {kinds[0]} step")
        if kinds == ["wait"]:
            unless = _types(item["unless"], f"{at}.unless") if "unless" in item else ()
            steps.append(Wait(parse_duration(item["wait"], f"{at}.wait"), unless))
        elif kinds == ["check"]:
            steps.append(Check(_condition(item["check"], f"{at}.check")))
        else:
            steps.append(_act(item["act"], f"{at}.act"))
    if not any(isinstance(s, Act) for s in steps):
        raise _Bad(where, "must have at least one act step")
    return tuple(steps)


def _condition(text: Any, where: str) -> Rule:
    try:
        return compile_condition(text, where)
    except ValueError as exc:
        raise _Bad(where, str(exc)) from None


def _parse(name: str, raw: Any) -> Trigger:
    if not isinstance(name, str) or not _NAME.match(name):
        raise _Bad("name", "must be 1-64 lower-case letters, digits, - and _")
    if not isinstance(raw, Mapping):
        raise _Bad("", "must be a table")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise _Bad(unknown[0], "is not a setting of a trigger")
    on = raw.get("on")
    if not isinstance(on, str) or not on:
        raise _Bad("on", "must name a change type of the feed (event.recorded, customer.updated, ...)")
    if on not in CORE_TYPES:
        try:
            check_plugin_type(on)
        except ValueError:
            raise _Bad("on", "must name a change type of the feed (event.recorded, customer.updated, ...)") from None
    when = _condition(raw["when"], "when") if "when" in raw else None
    if "steps" in raw:
        for key in ("action", "delay", "unless"):
            if key in raw:
                raise _Bad(key, "goes in a step when the trigger has steps")
        steps = _steps(raw["steps"], "steps")
    else:
        if "action" not in raw:
            raise _Bad("action", "is required (or steps)")
        steps_list: list[Step] = []
        if "delay" in raw:
            unless = _types(raw["unless"], "unless") if "unless" in raw else ()
            steps_list.append(Wait(parse_duration(raw["delay"], "delay"), unless))
        elif "unless" in raw:
            raise _Bad("unless", "needs a delay to watch for those events in")
        steps_list.append(_act(raw["action"], "action"))
        steps = tuple(steps_list)
    purpose = raw.get("purpose", "marketing")
    if purpose not in PURPOSES:
        raise _Bad("purpose", "must be marketing or transactional")
    holdout = raw.get("holdout_percent", 0)
    if isinstance(holdout, bool) or not isinstance(holdout, int) or not 0 <= holdout <= 90:
        raise _Bad("holdout_percent", "must be a whole number from 0 to 90")
    cooldown = parse_duration(raw["cooldown"], "cooldown") if "cooldown" in raw else None
    description = _text(raw.get("description"), "description", 500) or ""
    return Trigger(
        name=name,
        on=on,
        steps=steps,
        when=when,
        purpose=purpose,
        holdout_percent=holdout,
        cooldown_s=cooldown,
        description=description,
        definition=_plain(raw),
    )


def _plain(value: Any) -> Any:
    """The definition as plain JSON values (a TOML reader's own table types are not)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return str(value)


def parse_trigger(name: str, raw: Any, *, config: bool) -> Trigger:
    """Compile one trigger. ``config``: from ``[triggers.NAME]`` (a :class:`ConfigError`
    naming the key) or from the API (an :class:`InvalidInput` naming the field)."""
    try:
        return _parse(name, raw)
    except _Bad as bad:
        if config:
            key = f"[triggers.{name}]" + (f".{bad.where}" if bad.where else "")
            raise ConfigError(f"{key} {bad.message}") from None
        raise InvalidInput(f"{bad.where or 'trigger'} {bad.message}", bad.where or None) from None
