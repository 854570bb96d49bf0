"""Render ``docs/api.md`` from the hub's own ``/openapi.json`` when the docs are built.

The hub is started in-process (``create_app`` on a throw-away SQLite file, the built-in
plugins only: a plugin installed alongside must not enter the project's own reference) and
asked for its API description, exactly what a client would fetch, so the page cannot drift
from the routes actually mounted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

METHODS = ("get", "post", "put", "patch", "delete", "options")


async def fetch_spec() -> dict[str, Any]:
    from aiohttp.test_utils import TestClient, TestServer

    from prm_core.config import Config
    from prm_core.plugins import builtin_plugins
    from prm_core.server.app import create_app

    with tempfile.TemporaryDirectory() as tmp:
        config = Config(database_url=f"sqlite:///{tmp}/docs.db", public_url="https://hub.example.com")
        app = create_app(config, plugins=builtin_plugins(), autoload=False)
        async with TestClient(TestServer(app)) as client:
            resp = await client.get("/openapi.json")
            return dict(await resp.json())


def render(spec: dict[str, Any]) -> str:
    """The Markdown page: one section per path, one subsection per method."""
    lines = [
        "# HTTP API",
        "",
        "Generated from the hub's `/openapi.json` (with every built-in plugin installed) when the",
        "documentation is built; a running hub serves the same description at `GET /openapi.json`.",
        "Authentication, scopes and the error format are described in [the architecture](architecture.md);",
        "rate limits, erasure and export in [privacy](privacy.md).",
        "",
    ]
    for path in sorted(spec.get("paths", {})):
        ops = spec["paths"][path]
        lines += [f"## `{path}`", ""]
        for method in METHODS:
            op = ops.get(method)
            if op is None:
                continue
            lines += [f"### {method.upper()} `{path}`", "", op.get("summary", "").strip() or "(no summary)", ""]
            scope = op.get("x-prm-scope")
            if scope:
                lines += [f"Scope: `{scope}`", ""]
            body = op.get("requestBody")
            if body:
                schema = next(iter(body.get("content", {}).values()), {}).get("schema")
                if schema:
                    lines += ["Request body schema:", "", "```json", json.dumps(schema, indent=2), "```", ""]
            responses = op.get("responses", {})
            if responses:
                lines += ["| status | meaning |", "| --- | --- |"]
                for status in sorted(responses):
                    text = str(responses[status].get("description", "")).replace("|", "\\|").replace("\n", " ")
                    lines.append(f"| {status} | {text} |")
                lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write_page(app: Any) -> None:
    target = Path(app.srcdir) / "api.md"
    logging.disable(logging.INFO)  # the hub's start-up and access lines are not the build's output
    try:
        page = render(asyncio.run(fetch_spec()))
    finally:
        logging.disable(logging.NOTSET)
    if not target.exists() or target.read_text() != page:
        target.write_text(page)


def setup(app: Any) -> dict[str, Any]:
    app.connect("builder-inited", write_page)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
