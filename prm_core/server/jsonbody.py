"""JSON as the hub accepts it from the wire: the one loader every route reads a body with.

JSON allows what no store can keep, and the hub refuses it here, before a handler sees it:

- malformed JSON, an empty body, text that is not UTF-8, ``NaN`` and ``Infinity``: 400
  ``malformed_json``;
- a number past a double's range (``1e400``, which Python reads as ``inf`` and SQLite then stores
  as the ``Infinity`` its own JSON functions refuse): 422 naming the field;
- an integer of more than 4,300 digits (past Python's conversion limit): 422 naming the field;
- a lone UTF-16 surrogate (``"\\ud800"``), which is not Unicode text and which neither database
  can encode: 422 naming the field (a key's container when the key holds it);
- a NUL character (``"\\u0000"``), which PostgreSQL refuses in text and SQLite's JSON functions
  cut a string short at: 422 naming the field;
- nesting deeper than :data:`MAX_DEPTH`: 422 ``too_deep``.

A field is named as the event formats name it: ``events[0].data.tags[2]``, after ``field``
when the JSON sits inside another (``data[1].ue_pr.data.n``).

The ordinary body pays a strict UTF-8 decode, one parse by a decoder built once (a number
hook checks each non-integer number) and two scans of the text: the walk over the parsed
value that names a field runs only when the text holds an escape it could concern or enough
containers to be that deep, or when the parser already refused a number.
"""

from __future__ import annotations

import codecs
import json
import math
import re
import sys
from decimal import Decimal
from typing import Any

from ..errors import InvalidInput
from .errors import ApiError

__all__ = ["MAX_DEPTH", "loads", "too_deep"]

MAX_DEPTH = 32

# escapes that may decode to NUL or to a UTF-16 surrogate, one of a pair or alone
_ESCAPES = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
_SURROGATES = re.compile("[\ud800-\udfff]")


class _Unrepresentable(ValueError):
    """Raised by the number hooks inside ``json.loads``; the walk then names the field."""


class _Marker:
    """Stands for a refused number in the second, naming parse."""

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what


_PAST_DOUBLE = "a number too large for a double"


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _Unrepresentable(text)
    return value


def _decimal(text: str) -> Decimal:
    # a Decimal holds 1e400 exactly, but nothing that reads the stored JSON as doubles can
    value = Decimal(text)
    if math.isinf(float(value)):
        raise _Unrepresentable(text)
    return value


def _mark_float(text: str) -> Any:
    value = float(text)
    return _Marker(_PAST_DOUBLE) if math.isinf(value) else value


def _mark_decimal(text: str) -> Any:
    value = Decimal(text)
    return _Marker(_PAST_DOUBLE) if math.isinf(float(value)) else value


def _mark_int(text: str) -> Any:
    limit = sys.get_int_max_str_digits()
    if limit and len(text.lstrip("-")) > limit:
        return _Marker(f"an integer of more than {limit} digits")
    return int(text)


class _Constant(Exception):
    """``NaN``, ``Infinity`` or ``-Infinity``: Python's json reads them, JSON has no such thing."""


def _no_constants(name: str) -> Any:
    raise _Constant(name)


def _name(prefix: str | None, path: tuple[str | int, ...]) -> str | None:
    """``events[0].data.n``: the field as the event formats name one (a key cut at 64 characters)."""
    out = prefix or ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part[:64]}" if out else part[:64])
    return out or None


def _unkeepable(text: str) -> str | None:
    if "\x00" in text:
        return "a NUL character (\\u0000)"
    if _SURROGATES.search(text):
        return "a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text"
    return None


def _problem(value: Any, field: str | None, max_depth: int, *, strings: bool) -> InvalidInput | None:
    """The first thing in ``value`` the store cannot keep, as the error naming its field;
    ``strings`` checks every string and key too. Iterative, in document order."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        node, path = stack.pop()
        where = _name(field, path)
        if isinstance(node, _Marker):
            return InvalidInput(f"{where or 'the body'} is {node.what}", where)
        if isinstance(node, str):
            found = _unkeepable(node) if strings else None
            if found:
                return InvalidInput(f"{where or 'the body'} holds {found}", where)
            continue
        items: Any = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else None
        if items is None:
            continue
        if len(path) >= max_depth:
            root = _name(field, ())
            return InvalidInput(f"{root or 'the body'} is nested deeper than {max_depth} levels", root, "too_deep")
        children = []
        for key, child in items:
            found = _unkeepable(key) if strings and isinstance(key, str) else None
            if found:  # named by the object holding it: the key itself cannot be printed
                return InvalidInput(f"a key in {where or 'the body'} holds {found}", where)
            children.append((child, (*path, key)))
        stack.extend(reversed(children))
    return None


# built once: json.loads with hooks builds a decoder per call, which costs more than a small body
_DECODERS = {
    (False, False): json.JSONDecoder(parse_constant=_no_constants, parse_float=_float),
    (True, False): json.JSONDecoder(parse_constant=_no_constants, parse_float=_decimal),
    (False, True): json.JSONDecoder(parse_constant=_no_constants, parse_float=_mark_float, parse_int=_mark_int),
    (True, True): json.JSONDecoder(parse_constant=_no_constants, parse_float=_mark_decimal, parse_int=_mark_int),
}


def _parse(text: str, what: str, field: str | None, max_depth: int, *, decimals: bool, marked: bool = False) -> Any:
    try:
        return _DECODERS[decimals, marked].decode(text)
    except RecursionError:
        raise InvalidInput(f"{what} is nested deeper than {max_depth} levels", field, code="too_deep") from None
    except json.JSONDecodeError as exc:
        message = f"{what} is not valid JSON: {exc.msg} at position {exc.pos}"
        raise ApiError(400, "malformed_json", message, field) from None
    except _Constant as exc:
        raise ApiError(400, "malformed_json", f"{what} holds {exc}, which is not valid JSON", field) from None


def loads(raw: bytes | str, *, field: str | None = None, decimals: bool = False, max_depth: int = MAX_DEPTH) -> Any:
    """Parse a JSON body (or JSON text inside one, named ``field``) as the hub accepts it.

    ``decimals`` reads every non-integer number as a :class:`~decimal.Decimal` (money).
    Raises :class:`~prm_core.server.errors.ApiError` (400) for what is not JSON and
    :class:`~prm_core.errors.InvalidInput` (422, naming the field) for what the hub cannot keep.
    """
    what = field or "the body"
    if isinstance(raw, str):
        text, strings = raw, True  # text from inside another value: always checked whole
    else:
        try:
            # strict UTF-8: json.loads would decode bytes with surrogatepass, letting the UTF-8
            # form of a lone surrogate through as one
            text = raw.removeprefix(codecs.BOM_UTF8).decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "malformed_json", f"{what} is not UTF-8 text", field) from None
        strings = "\\u" in text and _ESCAPES.search(text) is not None
    if not text or text.isspace():
        raise ApiError(400, "malformed_json", f"{what} is empty; a JSON object is expected", field)
    try:
        value = _parse(text, what, field, max_depth, decimals=decimals)
    except ValueError:  # _Unrepresentable, or an integer past the conversion limit: find which
        marked = _parse(text, what, field, max_depth, decimals=decimals, marked=True)
        # the strings too, when they may hold what the store cannot keep: the first problem is named
        problem = _problem(marked, field, max_depth, strings=strings)
        raise problem or InvalidInput(f"{what} holds a number the hub cannot keep", field) from None
    if strings:
        problem = _problem(value, field, max_depth, strings=True)
        if problem is not None:
            raise problem
    elif text.count("[") + text.count("{") > max_depth and too_deep(value, max_depth):
        raise InvalidInput(f"{what} is nested deeper than {max_depth} levels", field, code="too_deep")
    return value


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether parsed JSON nests lists and objects more than ``limit`` deep; iterative, so
    the check itself cannot overflow the stack that deep data would overflow later
    (rendering, logging, the database's own JSON functions). Level by level: each pass keeps
    the containers of the level below, so scalars cost one type test each."""
    level = [value] if isinstance(value, dict | list) else []
    depth = 1
    while level:
        if depth > limit:
            return True
        below: list[Any] = []
        for node in level:
            below += [c for c in (node.values() if isinstance(node, dict) else node) if isinstance(c, dict | list)]
        level = below
        depth += 1
    return False
