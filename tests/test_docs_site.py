"""The documentation site builds strictly: a broken link or a page left out of the tree fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_the_site_builds_without_a_warning(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(tmp_path / "html")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    api = (tmp_path / "html" / "api.html").read_text()
    # the HTTP API page is rendered from the hub's own /openapi.json
    for path in ("/v1/touchpoints/{tp}/events", "/v1/customers/{ref}", "/v1/batch"):
        assert path in api
    assert (tmp_path / "html" / "concepts.html").exists()
