"""IVR menus as data: a TOML or JSON file, validated when the hub starts.

A menu is a graph of nodes. A *menu* node asks (``prompt``) and offers ``options``, each
chosen by a DTMF ``key`` or by one of its spoken ``words`` and leading to another node; a
*transfer* node hands the caller to a ``transfer`` queue; a *message* node says something
(``say``) and then goes on to ``next`` or, without one, ends the call self-served. See
docs/ivr.md for the format. Every error names the file and the node that is wrong.
"""

from __future__ import annotations

import json
import string
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from attrs import field, frozen

from prm_core.plugin import ConfigError

__all__ = ["DEFAULT_MENU", "Menu", "MenuError", "Node", "Option", "Priority", "load_menu", "parse_menu"]

DEFAULT_MENU = "default_menu.toml"
KEYS = frozenset("0123456789*#")
MESSAGES = {
    "welcome": "Thank you for calling.",
    "welcome_known": "Welcome back, {first_name}.",
    "appointment": "Your technician visit is scheduled {window}.",
    "not_understood": "Sorry, I did not understand that.",
    "no_input": "Sorry, I did not hear anything.",
    "transferring": "Please hold while I connect you.",
    "goodbye": "Thank you for calling. Goodbye.",
}
# the placeholders each message may use: anything else is a typo that would be spoken aloud
PLACEHOLDERS = {"welcome_known": {"first_name"}, "appointment": {"window"}}


class MenuError(ConfigError):
    """A menu file that cannot be used; the message names the file and the node."""


@frozen
class Option:
    """One choice of a menu node: a DTMF key and/or spoken words leading to ``next``."""

    key: str | None
    words: tuple[str, ...]
    next: str


@frozen
class Node:
    """A step of the menu. ``kind`` is ``menu``, ``transfer`` or ``message``."""

    id: str
    kind: Literal["menu", "transfer", "message"]
    prompt: str = ""
    options: tuple[Option, ...] = ()
    say: str = ""
    transfer: str | None = None
    next: str | None = None


@frozen
class Priority:
    """The priority line: offered first, on every menu node, to callers of these ``tiers``."""

    tiers: frozenset[str]
    queue: str
    key: str | None
    words: tuple[str, ...]
    prompt: str


@frozen
class Menu:
    """A validated menu."""

    start: str
    nodes: Mapping[str, Node]
    messages: Mapping[str, str]
    fallback_queue: str
    max_attempts: int = 3
    timeout_s: int = 5
    priority: Priority | None = None
    source: str = field(default="<menu>", eq=False)

    def node(self, node_id: str | None) -> Node:
        """The node ``node_id``, or the start node when it is unknown (a menu changed mid-call)."""
        return self.nodes.get(node_id or "", self.nodes[self.start])


def _fail(source: str, where: str, message: str) -> MenuError:
    return MenuError(f"menu {source}: {where}: {message}")


def _text(raw: Mapping[str, Any], key: str, source: str, where: str, *, required: bool = False) -> str:
    value = raw.get(key)
    if value is None:
        if required:
            raise _fail(source, where, f"'{key}' is required")
        return ""
    if not isinstance(value, str) or not value.strip():
        raise _fail(source, where, f"'{key}' must be a non-empty string")
    return value.strip()


def _words(raw: Any, source: str, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(w, str) and w.strip() for w in raw):
        raise _fail(source, where, "'words' must be a list of non-empty strings")
    return tuple(w.strip().lower() for w in raw)


def _key(raw: Any, source: str, where: str) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str) or raw not in KEYS:
        raise _fail(source, where, f"'key' must be one of 0-9, * or #, got {raw!r}")
    return raw


def _unknown(raw: Mapping[str, Any], allowed: set[str], source: str, where: str) -> None:
    extra = sorted(set(raw) - allowed)
    if extra:
        raise _fail(source, where, f"unknown field '{extra[0]}' (allowed: {', '.join(sorted(allowed))})")


def _node(node_id: str, raw: Any, source: str) -> Node:
    where = f"node '{node_id}'"
    if not isinstance(raw, Mapping):
        raise _fail(source, where, "must be a table")
    _unknown(raw, {"prompt", "options", "say", "transfer", "next"}, source, where)
    if "options" in raw:
        if "transfer" in raw or "say" in raw or "next" in raw:
            raise _fail(source, where, "a menu node (with 'options') has no 'say', 'transfer' or 'next'")
        options_raw = raw["options"]
        if not isinstance(options_raw, list) or not options_raw:
            raise _fail(source, where, "'options' must be a non-empty list")
        options = []
        for i, opt in enumerate(options_raw, start=1):
            at = f"{where}: option {i}"
            if not isinstance(opt, Mapping):
                raise _fail(source, at, "must be a table")
            _unknown(opt, {"key", "words", "next"}, source, at)
            option = Option(
                _key(opt.get("key"), source, at), _words(opt.get("words"), source, at), _text(opt, "next", source, at)
            )
            if not option.next:
                raise _fail(source, at, "'next' is required")
            if option.key is None and not option.words:
                raise _fail(source, at, "needs a 'key' or 'words' to be chosen by")
            options.append(option)
        keys = [o.key for o in options if o.key is not None]
        dup = next((k for k in keys if keys.count(k) > 1), None)
        if dup is not None:
            raise _fail(source, where, f"key {dup!r} is used by two options")
        words = [w for o in options for w in o.words]
        dup = next((w for w in words if words.count(w) > 1), None)
        if dup is not None:
            raise _fail(source, where, f"the word {dup!r} is used by two options")
        prompt = _text(raw, "prompt", source, where, required=True)
        return Node(node_id, "menu", prompt=prompt, options=tuple(options))
    if "transfer" in raw:
        if "next" in raw:
            raise _fail(source, where, "a transfer node ends the menu: it has no 'next'")
        queue = _text(raw, "transfer", source, where, required=True)
        return Node(node_id, "transfer", say=_text(raw, "say", source, where), transfer=queue)
    if "say" in raw:
        following = _text(raw, "next", source, where) or None
        return Node(node_id, "message", say=_text(raw, "say", source, where), next=following)
    raise _fail(source, where, "needs 'options' (a menu), 'transfer' (a queue) or 'say' (a message)")


def _check_template(name: str, text: str, source: str) -> None:
    allowed = PLACEHOLDERS.get(name, set())
    try:
        used = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as exc:
        raise _fail(source, f"message '{name}'", f"bad placeholder: {exc}") from None
    bad = sorted(used - allowed)
    if bad:
        allowed_text = ", ".join("{" + a + "}" for a in sorted(allowed)) or "none"
        raise _fail(source, f"message '{name}'", f"unknown placeholder {{{bad[0]}}} (allowed: {allowed_text})")


def parse_menu(raw: Any, source: str = "<menu>") -> Menu:
    """Validate a parsed menu document; raises :class:`MenuError` naming what is wrong."""
    if not isinstance(raw, Mapping):
        raise _fail(source, "the document", "must be a table / object")
    _unknown(
        raw,
        {"start", "fallback_queue", "max_attempts", "timeout", "messages", "priority", "nodes"},
        source,
        "top level",
    )
    nodes_raw = raw.get("nodes")
    if not isinstance(nodes_raw, Mapping) or not nodes_raw:
        raise _fail(source, "top level", "'nodes' must be a non-empty table of nodes")
    nodes = {str(node_id): _node(str(node_id), node, source) for node_id, node in nodes_raw.items()}
    start = _text(raw, "start", source, "top level", required=True)
    if start not in nodes:
        raise _fail(source, "top level", f"'start' names unknown node '{start}'")
    if nodes[start].kind != "menu":
        raise _fail(source, f"node '{start}'", "the start node must be a menu (with 'options')")
    for node in nodes.values():
        for i, option in enumerate(node.options, start=1):
            if option.next not in nodes:
                raise _fail(source, f"node '{node.id}': option {i}", f"goes to unknown node '{option.next}'")
        if node.next is not None and node.next not in nodes:
            raise _fail(source, f"node '{node.id}'", f"'next' names unknown node '{node.next}'")
    _check_message_loops(nodes, source)

    messages_raw = raw.get("messages", {})
    if not isinstance(messages_raw, Mapping):
        raise _fail(source, "messages", "must be a table")
    _unknown(messages_raw, set(MESSAGES), source, "messages")
    messages = dict(MESSAGES)
    for name in messages_raw:
        messages[name] = _text(messages_raw, name, source, "messages")
        _check_template(name, messages[name], source)

    for name, default in (("max_attempts", 3), ("timeout", 5)):
        value = raw.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 30:
            raise _fail(source, "top level", f"'{name}' must be a whole number from 1 to 30, got {value!r}")

    priority = None
    if "priority" in raw:
        p = raw["priority"]
        if not isinstance(p, Mapping):
            raise _fail(source, "priority", "must be a table")
        _unknown(p, {"tiers", "queue", "key", "words", "prompt"}, source, "priority")
        tiers = p.get("tiers", ["platinum"])
        if not isinstance(tiers, list) or not tiers or not all(isinstance(t, str) and t for t in tiers):
            raise _fail(source, "priority", "'tiers' must be a non-empty list of tier names")
        priority = Priority(
            tiers=frozenset(tiers),
            queue=_text(p, "queue", source, "priority", required=True),
            key=_key(p.get("key"), source, "priority"),
            words=_words(p.get("words"), source, "priority"),
            prompt=_text(p, "prompt", source, "priority", required=True),
        )
        if priority.key is None and not priority.words:
            raise _fail(source, "priority", "needs a 'key' or 'words' to be chosen by")
        for node in nodes.values():
            if priority.key is not None and any(o.key == priority.key for o in node.options):
                raise _fail(source, f"node '{node.id}'", f"key {priority.key!r} is the priority line's key")
            clash = next((w for o in node.options for w in o.words if w in priority.words), None)
            if clash is not None:
                raise _fail(source, f"node '{node.id}'", f"the word {clash!r} is the priority line's word")
    return Menu(
        start=start,
        nodes=nodes,
        messages=messages,
        fallback_queue=_text(raw, "fallback_queue", source, "top level", required=True),
        max_attempts=raw.get("max_attempts", 3),
        timeout_s=raw.get("timeout", 5),
        priority=priority,
        source=source,
    )


def _check_message_loops(nodes: Mapping[str, Node], source: str) -> None:
    """Messages chained by ``next`` must reach a menu, a transfer or an end: a loop of
    messages would talk to the caller forever without listening."""
    for node in nodes.values():
        seen: list[str] = []
        current: Node | None = node
        while current is not None and current.kind == "message":
            if current.id in seen:
                raise _fail(source, f"node '{node.id}'", f"messages loop through {' -> '.join([*seen, current.id])}")
            seen.append(current.id)
            current = nodes[current.next] if current.next else None


def load_menu(path: str | Path | None = None) -> Menu:
    """Load and validate a menu file (``.toml`` or ``.json``); ``None`` is the built-in menu."""
    if path is None:
        text = resources.files(__package__).joinpath(DEFAULT_MENU).read_text(encoding="utf-8")
        return parse_menu(tomllib.loads(text), f"(built-in {DEFAULT_MENU})")
    file = Path(path)
    if not file.is_file():
        raise MenuError(f"menu {file}: the file does not exist ([touchpoints.ivr].menu)")
    text = file.read_text(encoding="utf-8")
    try:
        raw = json.loads(text) if file.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise MenuError(
            f"menu {file}: not valid {'JSON' if file.suffix.lower() == '.json' else 'TOML'}: {exc}"
        ) from None
    return parse_menu(raw, str(file))
