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


ELSEWHERE = '''
from aiohttp import web

from prm_core import hookimpl
from prm_core.model import Adapter, TouchPoint


async def hook(request):
    """A third-party route."""
    return web.json_response({})


@hookimpl
def prm_touchpoints():
    yield TouchPoint(name="elsewhere", channel="kiosk", budget_ms=400)


@hookimpl
def prm_adapters():
    yield Adapter(name="elsewhere", touchpoint="elsewhere", routes=[web.post("/elsewhere/hook", hook)])
'''


async def test_the_api_page_describes_the_built_in_plugins_whatever_else_is_installed(tmp_path, monkeypatch) -> None:
    from third_party import installed

    from prm_core.plugins import make_plugin_manager

    monkeypatch.syspath_prepend(str(DOCS / "_ext"))
    from openapi_page import fetch_spec

    with installed(
        tmp_path,
        monkeypatch,
        name="prm-elsewhere",
        modules={"prm_elsewhere_docs.py": ELSEWHERE},
        entry_points={"prm": {"elsewhere": "prm_elsewhere_docs"}},
    ):
        assert make_plugin_manager().has_plugin("elsewhere")  # installed: a hub autoloading takes it
        spec = await fetch_spec()
    assert "/elsewhere/hook" not in spec["paths"]
    assert "/v1/touchpoints/{tp}/events" in spec["paths"] and "/v1/batch" in spec["paths"]
