"""A third-party distribution installed next to the hub, for tests: a real ``.dist-info``
directory and its modules on ``sys.path``, so ``importlib.metadata`` finds its entry points as
it finds any installed plugin's."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def installed(
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    name: str,
    modules: Mapping[str, str],
    entry_points: Mapping[str, Mapping[str, str]],
    requires: Sequence[str] = (),
) -> Iterator[None]:
    """Install distribution ``name`` (version 1.0) under ``root``: ``modules`` maps a module's
    file name to its source, ``entry_points`` a group to its ``name = target`` lines, and
    ``requires`` are its ``Requires-Dist`` lines. The modules are forgotten on exit."""
    for filename, source in modules.items():
        (root / filename).write_text(source)
    info = root / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    metadata = ["Metadata-Version: 2.1", f"Name: {name}", "Version: 1.0"]
    metadata += [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(metadata) + "\n")
    lines = []
    for group, targets in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{ep} = {target}" for ep, target in targets.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    monkeypatch.syspath_prepend(str(root))
    try:
        yield
    finally:
        for filename in modules:
            sys.modules.pop(filename.removesuffix(".py"), None)
