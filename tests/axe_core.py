"""axe-core from npm, for the accessibility checks of the browser tests.

``tests/axe`` pins it (``package.json`` and ``package-lock.json``); :func:`axe_source` runs
``npm ci`` in a temp dir once per content of those files and caches ``axe.min.js`` under the
system temp dir. Without npm the tests skip, except in CI, where they fail.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from browsing import missing

AXE_DIR = Path(__file__).parent / "axe"
INPUTS = ("package.json", "package-lock.json")


def axe_source() -> str:
    """The text of the pinned ``axe.min.js``."""
    digest = hashlib.sha256()
    for name in INPUTS:
        digest.update(name.encode() + b"\0" + (AXE_DIR / name).read_bytes() + b"\0")
    cached = Path(tempfile.gettempdir()) / f"prm-axe-{digest.hexdigest()[:16]}.js"
    if cached.is_file() and cached.stat().st_size > 0:
        return cached.read_text(encoding="utf-8")
    if shutil.which("npm") is None:
        missing("npm is absent (apt-get install npm)")
    work = Path(tempfile.mkdtemp(prefix="prm-axe-build-"))
    try:
        for name in INPUTS:
            shutil.copyfile(AXE_DIR / name, work / name)
        env = {**os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false"}
        done = subprocess.run(
            ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--prefer-offline"],
            cwd=work, env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            pytest.fail(f"npm ci for axe-core failed:\n{done.stdout}\n{done.stderr}")
        built = work / "node_modules" / "axe-core" / "axe.min.js"
        partial = cached.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(built, partial)
        partial.replace(cached)  # atomic: a parallel run never reads half a file
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return cached.read_text(encoding="utf-8")


async def serious_violations(page: Any) -> list[str]:
    """axe-core's serious and critical violations on the page as it stands (WCAG 2.1 AA rules),
    one line each naming the rule and the first offending element."""
    # evaluated, not injected as a <script>: the pages' Content-Security-Policy allows only their own
    await page.evaluate(axe_source())
    result = await page.evaluate(
        "async () => (await axe.run(document, {runOnly: {type: 'tag', values: "
        "['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}})).violations"
    )
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {v['nodes'][0]['target'] if v['nodes'] else '?'}"
        for v in result
        if v.get("impact") in ("serious", "critical")
    ]
