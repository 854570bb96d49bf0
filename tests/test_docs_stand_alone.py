"""The documentation stands alone: it cites no document that does not ship with the hub (nor
an issue tracker's numbers), and the user pages say what is, with no dated diary of how it got
there. Dated figures belong in bench/README.md and CHANGELOG.md, which this test leaves alone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# the pages users read: the site's pages and the READMEs beside the code
USER_PAGES = sorted(
    [
        ROOT / "README.md",
        ROOT / "contrib" / "README.md",
        ROOT / "examples" / "README.md",
        *(page for page in (ROOT / "docs").glob("*.md") if page.name != "api.md"),
    ]
)
# where the code says why: docstrings and comments of the hub, its plugins, benchmarks and tests
SOURCES = sorted(
    path
    for folder in ("prm_core", "plugins", "contrib", "bench", "tests", "examples")
    for pattern in ("*.py", "*.js", "*.html", "*.md", "*.toml")
    for path in (ROOT / folder).rglob(pattern)
    if ".venv" not in path.parts and "node_modules" not in path.parts and path.name != Path(__file__).name
)
# documents that do not ship, and numbers that point into an issue tracker
CITATION = re.compile(
    r"CONTRACT\.md|DESIGN\.md|STYLE\.md|\bthe brief\b|\bthe contract\b|\bissues? #?\d+\b|\(#\d+\)",
    flags=re.IGNORECASE,
)
DATE = re.compile(r"\b(?:19|20)\d\d-[01]\d-[0-3]\d\b(?!T)")
FENCE = re.compile(r"^(```+|~~~+)")


def prose(text: str) -> list[tuple[int, str]]:
    """The page's lines outside code blocks, inline code removed: what a reader reads as text."""
    lines: list[tuple[int, str]] = []
    fence: str | None = None
    for n, line in enumerate(text.splitlines(), start=1):
        opened = FENCE.match(line.strip())
        if opened and (fence is None or opened.group(1).startswith(fence)):
            fence = None if fence else opened.group(1)
            continue
        if fence is None:
            lines.append((n, re.sub(r"`[^`]*`", "", line)))
    return lines


@pytest.mark.parametrize("path", sorted({*SOURCES, *USER_PAGES}), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_citation_of_documents_that_do_not_ship(path: Path) -> None:
    text = path.read_text(encoding="utf-8", errors="replace")
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()[:120]}"
        for n, line in enumerate(text.splitlines(), start=1)
        if CITATION.search(line)
    ]
    assert not found, "say what the code does and why instead of citing:\n" + "\n".join(found)


@pytest.mark.parametrize("page", USER_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_user_pages_carry_no_dated_diary(page: Path) -> None:
    found = [
        f"{page.relative_to(ROOT)}:{n}: {line.strip()[:120]}"
        for n, line in prose(page.read_text(encoding="utf-8"))
        if DATE.search(line)
    ]
    assert not found, "dated figures go to bench/README.md or CHANGELOG.md:\n" + "\n".join(found)


def test_the_checks_see_what_they_look_for() -> None:
    assert CITATION.search("as DESIGN.md says") and CITATION.search("per the brief")
    assert CITATION.search("privacy (issue 13)") and not CITATION.search("the customer's issue")
    page = 'The work of 2026-12-03 went after the tail.\n```json\n{"day": "2026-12-03"}\n```\n`day=2026-12-05`\n'
    assert [n for n, line in prose(page) if DATE.search(line)] == [1]
    assert not DATE.search("occurred at 2026-11-23T08:00:00Z")
    assert len(USER_PAGES) > 15 and len(SOURCES) > 200
