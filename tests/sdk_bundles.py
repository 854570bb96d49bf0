"""The vendors' browser SDKs from npm, bundled for the browser tests.

``tests/browser_sdk`` pins the SDKs and ``esbuild`` (``package.json`` and its
``package-lock.json``); each entry file there exposes one SDK on ``window``. :func:`build_bundles`
runs ``npm ci`` and ``npx esbuild --bundle --format=iife`` per entry in a temp dir, once per
content of those files: the bundles are cached under the system temp dir by the hash of the
inputs, and ``node_modules`` is never written into the repository. Without npm the tests
skip, except in CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from browsing import missing

SDK_DIR = Path(__file__).parent / "browser_sdk"
# entry file -> bundle name
ENTRIES = {"entry.js": "snowplow.js", "segment.js": "segment.js", "rudderstack.js": "rudderstack.js"}
SDK_INPUTS = ("package.json", "package-lock.json", *ENTRIES)
BUILD_TIMEOUT = 300  # seconds for npm ci (a cold npm cache downloads the packages) and esbuild


def _run(args: list[str], cwd: Path) -> None:
    env = {**os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false"}
    try:
        done = subprocess.run(
            args, cwd=cwd, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(args)} took longer than {BUILD_TIMEOUT}s")
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def build_bundles() -> Path:
    """The directory of the bundled SDKs (``ENTRIES``' values), built once per content of ``SDK_INPUTS``."""
    digest = hashlib.sha256()
    for name in SDK_INPUTS:
        digest.update(name.encode() + b"\0" + (SDK_DIR / name).read_bytes() + b"\0")
    cache = Path(tempfile.gettempdir()) / f"prm-browser-sdk-{digest.hexdigest()[:16]}"
    if all((cache / b).is_file() and (cache / b).stat().st_size > 0 for b in ENTRIES.values()):
        return cache
    if shutil.which("npm") is None or shutil.which("npx") is None:
        missing("npm is absent (apt-get install npm)")
    work = Path(tempfile.mkdtemp(prefix="prm-browser-sdk-build-"))
    try:
        for name in SDK_INPUTS:
            shutil.copyfile(SDK_DIR / name, work / name)
        # exactly the locked versions; no install scripts: esbuild's binary is its locked
        # optional dependency for this platform
        _run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--prefer-offline"], work)
        out = work / "out"
        out.mkdir()
        for entry, bundle in ENTRIES.items():
            _run(
                ["npx", "--no", "--", "esbuild", entry, "--bundle", "--format=iife", f"--outfile={out / bundle}"], work
            )
        try:
            out.rename(cache)  # atomic: a concurrent build's result is as good as this one
        except OSError:
            if not all((cache / b).is_file() for b in ENTRIES.values()):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return cache
