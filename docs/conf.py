"""Sphinx configuration for the PRM hub documentation (Markdown through MyST).

Build it strictly, as tox's ``docs`` environment does::

    sphinx-build -W --keep-going -b html docs docs/_build/html

``api.md`` is not written by hand: the ``openapi_page`` extension (``docs/_ext``) starts the hub
in-process with the built-in plugins only (whatever else is installed), reads its ``/openapi.json``
and renders the HTTP API page from it before the build reads the sources, so the page describes
what is mounted.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "PRM hub"
author = "The PRM hub authors"
copyright = "2026, the PRM hub authors"

extensions = ["myst_parser", "openapi_page"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "README.md"]
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]
html_theme = "furo"
html_title = "PRM hub"
# code fences name languages Pygments may not know (toml in old versions, text): never warn on them
suppress_warnings = ["misc.highlighting_failure"]
