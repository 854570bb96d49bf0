"""Writes the hook reference of docs/hooks.md from the docstrings of ``prm_core.hookspecs``.

The docstrings are the one source: each hook's becomes its section, under a ``###``
heading that is the hook's signature as the source declares it, grouped under the ``##``
headings of the module's group banners, in the module's order. Sphinx's
``.. versionadded::``, ``.. versionchanged::`` and ``.. deprecated::`` notes become the MyST
directives the site renders. Everything on the page after :data:`MARKER` is replaced::

    python docs/_ext/hook_reference.py          # rewrite the page
    python docs/_ext/hook_reference.py --check  # exit 1 when the page is out of date

tests/test_hook_docs.py checks that the page is what this writes.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "hooks.md"
MARKER = (
    "<!-- The reference below is written from the docstrings of prm_core/hookspecs.py by "
    "python docs/_ext/hook_reference.py: edit those and run it. -->"
)
BANNER = re.compile(r"^# -{20,}\n# (?P<title>[^\n]+)\n# -{20,}$", re.MULTILINE)
NOTE = re.compile(r"^\.\. (?P<kind>versionadded|versionchanged|deprecated):: (?P<version>\S+)$")


class _AsWritten(str):
    """An annotation string that ``inspect`` prints as it is, not quoted."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str(self)


def spec_signature(fn: Callable[..., Any]) -> str:
    """``name(param: Annotation, ...) -> Return`` with the annotations as written in the source.

    ``from __future__ import annotations`` keeps them as strings, which ``str(signature)``
    would quote; they are printed as they are instead (markers and defaults as inspect does).
    """
    sig = inspect.signature(fn)
    params = [
        p if p.annotation is p.empty else p.replace(annotation=_AsWritten(p.annotation))
        for p in sig.parameters.values()
    ]
    returns = sig.return_annotation
    sig = sig.replace(parameters=params, return_annotation=returns if returns is sig.empty else _AsWritten(returns))
    return f"{fn.__name__}{sig}"


def groups() -> list[tuple[str, list[Callable[..., Any]]]]:
    """``[(group title, [hookspec, ...]), ...]`` in the order of ``prm_core.hookspecs``."""
    from prm_core import hookspecs

    source = inspect.getsource(hookspecs)
    banners = [(source[: m.start()].count("\n") + 1, m.group("title")) for m in BANNER.finditer(source)]
    specs = sorted(
        (inspect.getsourcelines(fn)[1], fn)
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("prm_") and hasattr(fn, "prm_spec")
    )
    found: list[tuple[str, list[Callable[..., Any]]]] = []
    for line, fn in specs:
        title = next((t for at, t in reversed(banners) if at < line), None)
        if title is None:
            raise ValueError(f"{fn.__name__} is above every group banner of prm_core/hookspecs.py")
        if not found or found[-1][0] != title:
            found.append((title, []))
        found[-1][1].append(fn)
    return found


def _markdown(doc: str) -> str:
    """A docstring as the page shows it: Sphinx's version notes as MyST directives."""
    out: list[str] = []
    lines = inspect.cleandoc(doc).splitlines()
    i = 0
    while i < len(lines):
        note = NOTE.match(lines[i])
        if note is None:
            out.append(lines[i])
            i += 1
            continue
        i += 1
        body = []
        while i < len(lines) and lines[i].startswith("   "):
            body.append(lines[i].strip())
            i += 1
        out += [f"```{{{note.group('kind')}}} {note.group('version')}", *body, "```"]
    return "\n".join(out)


def reference() -> str:
    """The page's reference, from :data:`MARKER` (excluded) to its end."""
    parts: list[str] = []
    for title, specs in groups():
        parts.append(f"## {title}")
        for fn in specs:
            parts.append(f"### `{spec_signature(fn)}`")
            parts.append(_markdown(fn.__doc__ or ""))
    return "\n\n".join(parts) + "\n"


def written(page: str) -> str:
    """``page`` with everything after :data:`MARKER` replaced by :func:`reference`."""
    head, found, _ = page.partition(MARKER + "\n")
    if not found:
        raise ValueError(f"{PAGE.name} has no line {MARKER!r}")
    return f"{head}{MARKER}\n\n{reference()}"


def main(argv: list[str]) -> int:
    page = PAGE.read_text(encoding="utf-8")
    wanted = written(page)
    if "--check" in argv:
        if page != wanted:
            print(f"{PAGE} is out of date: run python docs/_ext/hook_reference.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
