"""``prm new-plugin`` generates a distribution that installs and passes its own tests."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from prm_core.cli import main
from prm_core.model import CHANNELS
from prm_core.scaffold import render

DOCS = Path(__file__).parent.parent / "docs" / "plugins.md"


def _installed(root: Path, site: Path) -> dict[str, str]:
    """Install the plugin at ``root`` (not editable, into ``site``, a folder of its own, so the
    test leaves this environment as it was); the environment that sees it."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, root],
        check=True,
        capture_output=True,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PRM_CONFIG", "PRM_DATABASE_URL")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return env


def test_generated_plugin_installs_and_passes_its_tests(tmp_path):
    result = CliRunner().invoke(main, ["new-plugin", "kiosk", "--directory", str(tmp_path)])
    assert result.exit_code == 0, result.output
    root = tmp_path / "prm-kiosk"
    env = _installed(root, tmp_path / "site")
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


def test_the_channel_comes_from_the_name_or_the_option(tmp_path):
    assert 'channel="kiosk"' in render("kiosk")["src/prm_kiosk/__init__.py"]
    assert 'channel="store"' in render("lobby", "store")["src/prm_lobby/__init__.py"]
    assert 'channel="web"' in render("web")["src/prm_web/__init__.py"]
    made = CliRunner().invoke(main, ["new-plugin", "lobby", "--channel", "store", "--directory", str(tmp_path)])
    assert made.exit_code == 0, made.output
    assert 'channel="store"' in (tmp_path / "prm-lobby" / "src" / "prm_lobby" / "__init__.py").read_text()
    for args in (["lobby_screens"], ["lobby_screens", "--channel", "tv"]):
        refused = CliRunner().invoke(main, ["new-plugin", *args, "--directory", str(tmp_path)])
        assert refused.exit_code == 2 and "--channel" in refused.output
        assert all(channel in refused.output for channel in CHANNELS), refused.output
        assert not (tmp_path / "prm-lobby_screens").exists()


GUIDE_LOOP = "<!-- sample: tested-by tests/test_scaffold.py::test_the_guide_loop_runs_as_written -->"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _shown(shown: Any, got: Any, where: str = "view") -> None:
    """What the guide shows of an answer is in the answer: the keys shown, with their values;
    a string ending in ``...`` is a prefix."""
    if isinstance(shown, dict):
        assert isinstance(got, dict), f"{where}: {got!r} is not an object"
        for key, value in shown.items():
            assert key in got, f"{where}: no {key!r} in {sorted(got)}"
            _shown(value, got[key], f"{where}.{key}")
    elif isinstance(shown, list):
        assert isinstance(got, list) and len(got) == len(shown), f"{where}: {got!r}"
        for i, (a, b) in enumerate(zip(shown, got, strict=True)):
            _shown(a, b, f"{where}[{i}]")
    elif isinstance(shown, str) and shown.endswith("..."):
        assert isinstance(got, str) and got.startswith(shown[:-3]), f"{where}: {got!r}"
    else:
        assert shown == got, f"{where}: the guide shows {shown!r}, the hub answers {got!r}"


def test_the_guide_loop_runs_as_written(tmp_path):
    """docs/plugins.md, "In a running hub": the config, install, restart, keys, curl and the view,
    run as a reader runs them (the plugin installed into a folder of its own rather than with
    ``pip install -e .``, and the hub on a free port rather than 8700)."""
    blocks = re.findall(re.escape(GUIDE_LOOP) + r"\n```(\w+)\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert [lang for lang, _ in blocks] == ["toml", "sh", "sh", "json"], "the guide's loop changed: update this test"
    (_, config), (_, start), (_, use), (_, view) = blocks
    commands = [line.split("#")[0].strip() for line in start.splitlines()]
    assert commands == ["pip install -e .", "prm plugins", "prm serve"]

    assert CliRunner().invoke(main, ["new-plugin", "kiosk", "--directory", str(tmp_path)]).exit_code == 0
    env = _installed(tmp_path / "prm-kiosk", tmp_path / "site")
    (tmp_path / "prm.toml").write_text(config, encoding="utf-8")
    listed = subprocess.run(["prm", "plugins"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    kiosk = r"^kiosk\s+prm-kiosk 0\.1\.0\n\s+touch points: kiosk \(300 ms\)"
    assert re.search(kiosk, listed.stdout, re.M), listed.stdout

    port = _free_port()
    server = subprocess.Popen(
        ["prm", "serve", "--port", str(port), "--log-level", "warning"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).close()
                break
            except OSError:
                assert server.poll() is None, server.communicate()[1]
                assert time.monotonic() < deadline, "prm serve did not start"
                time.sleep(0.3)
        script = "set -euo pipefail\n" + use.replace("localhost:8700", f"localhost:{port}")
        answers = []
        for _ in range(2):  # the second time, the visit is a duplicate
            ran = subprocess.run(
                ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
            )
            assert ran.returncode == 0, ran.stderr
            decoder, text, found = json.JSONDecoder(), ran.stdout.strip(), []
            while text:
                value, end = decoder.raw_decode(text)
                found.append(value)
                text = text[end:].strip()
            answers.append(found)
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    (first, first_view), (again, again_view) = answers
    assert first == {"accepted": 1, "duplicates": 0} and again == {"accepted": 0, "duplicates": 1}
    _shown(json.loads(view), first_view)
    _shown(json.loads(view), again_view)
