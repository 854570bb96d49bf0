"""An importer's file suffixes: lower-cased, each with its dot, at least one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from prm_core.formats import Importer


async def read(path: Path, context: Any) -> AsyncIterator[Any]:
    yield path.name  # never called: registration alone is under test


def test_suffixes_are_matched_in_lower_case() -> None:
    importer = Importer(name="kiosk-visits", touchpoint="kiosk", suffixes=[".TSV", ".Txt"], read=read)
    assert importer.suffixes == (".tsv", ".txt")


@pytest.mark.parametrize("suffixes", [[], ["tsv"], [".tsv", "txt"], ("csv", ".csv")])
def test_an_importer_without_suffixes_or_with_one_lacking_its_dot_is_refused(suffixes: list[str]) -> None:
    with pytest.raises(ValueError, match=r"suffixes must be like '\.xml'"):
        Importer(name="kiosk-visits", touchpoint="kiosk", suffixes=suffixes, read=read)
