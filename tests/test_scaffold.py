"""``prm new-plugin`` generates a distribution that installs and passes its own tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from prm_core.cli import main
from prm_core.scaffold import render

DOCS = Path(__file__).parent.parent / "docs" / "plugins.md"


def test_generated_plugin_installs_and_passes_its_tests(tmp_path):
    result = CliRunner().invoke(main, ["new-plugin", "kiosk", "--directory", str(tmp_path)])
    assert result.exit_code == 0, result.output
    root = tmp_path / "prm-kiosk"
    site = tmp_path / "site"
    # install it (not editable, into a folder of its own) so the test leaves this environment as it was
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, root],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    env.pop("PRM_TEST_POSTGRES_URL", None)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"\b8 passed\b", run.stdout), run.stdout

    again = CliRunner().invoke(main, ["new-plugin", "kiosk", "--directory", str(tmp_path)])
    assert again.exit_code == 1 and "already exists" in again.output
    bad = CliRunner().invoke(main, ["new-plugin", "Kiosk!", "--directory", str(tmp_path)])
    assert bad.exit_code == 2


def test_the_guide_shows_the_scaffold_code():
    text = DOCS.read_text()
    blocks = dict(re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", text, flags=re.S))
    files = render("kiosk")
    assert set(blocks) == set(files), "docs/plugins.md must show every generated file"
    for path, content in files.items():
        assert blocks[path] == content, f"docs/plugins.md shows a different {path} than `prm new-plugin kiosk` writes"
