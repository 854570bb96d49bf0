"""The ``prm`` command: keys, plugins, db upgrade, import (resumable), serve."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from prm_core.cli import main
from prm_core.config import Config
from prm_core.hub import Hub


def test_keys_create_prints_the_key_alone_on_the_last_line(database_url):
    runner = CliRunner()
    result = runner.invoke(main, ["keys", "create", "--scope", "touchpoint:web", "--database", database_url])
    assert result.exit_code == 0, result.output
    key = result.stdout.strip().splitlines()[-1]
    assert key.startswith("prm_") and " " not in key
    bad = runner.invoke(main, ["keys", "create", "--scope", "everything", "--database", database_url])
    assert bad.exit_code == 2
    assert "scope must be" in bad.output


def test_db_upgrade_is_idempotent(database_url):
    runner = CliRunner()
    first = runner.invoke(main, ["db", "upgrade", "--database", database_url])
    assert first.exit_code == 0, first.output
    assert "applied 0001" in first.output
    again = runner.invoke(main, ["db", "upgrade", "--database", database_url])
    assert "up to date" in again.output


def test_plugins_lists_first_party_touchpoints():
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0, result.output
    assert "web  prm-hub 0.1.0" in result.output
    assert "touch points: web (250 ms)" in result.output
    assert "hooks: prm_touchpoints" in result.output
    assert "  webhook  from prm_core: POST batches signed with Standard Webhooks" in result.output
    assert "  nats  from prm_core:" in result.output


def test_config_errors_are_clear(tmp_path, monkeypatch):
    monkeypatch.delenv("PRM_SECRET_THAT_IS_NOT_SET", raising=False)
    cfg = tmp_path / "prm.toml"
    cfg.write_text('[database]\nurl = "env:PRM_SECRET_THAT_IS_NOT_SET"\n')
    result = CliRunner().invoke(main, ["db", "upgrade", "--config", str(cfg)])
    assert result.exit_code == 1
    assert "config.database.url refers to environment variable PRM_SECRET_THAT_IS_NOT_SET" in result.output
    missing = CliRunner().invoke(main, ["db", "upgrade", "--config", str(tmp_path / "nope.toml")])
    assert "does not exist" in missing.output


def _lines(n: int, start: int = 0) -> str:
    return "".join(
        json.dumps(
            {
                "id": f"past-{i}",
                "type": "order.completed",
                "occurred_at": f"2025-01-01T00:{i % 60:02d}:00Z",
                "identities": {"email": f"c{i % 7}@example.com"},
                "data": {"revenue": "10.00"},
            }
        )
        + "\n"
        for i in range(start, start + n)
    )


async def _metrics(database_url: str) -> tuple[int, int]:
    async with Hub.open(Config(database_url=database_url), autoload=True) as hub:
        total = 0
        for i in range(7):
            view = await hub.view(f"email:c{i}@example.com")
            total += view.metrics["event_count"]
        return total, 7


def test_import_is_idempotent_and_resumes(database_url, tmp_path):
    runner = CliRunner()
    file = tmp_path / "past.jsonl"
    file.write_text(_lines(30) + "{not json\n" + _lines(20, start=30))
    first = runner.invoke(
        main, ["import", str(file), "--touchpoint", "pos", "--database", database_url, "--batch-size", "8"]
    )
    assert first.exit_code == 1
    assert "line 31: not valid JSON" in first.output
    assert "30 imported" in first.output
    # fix the bad line; the rerun resumes at line 31 and reads nothing twice
    file.write_text(_lines(30) + "\n" + _lines(20, start=30))
    second = runner.invoke(main, ["import", str(file), "--touchpoint", "pos", "--database", database_url])
    assert second.exit_code == 0, second.output
    assert "20 imported, 0 already there" in second.output
    assert "30 lines skipped" in second.output
    # from the start again: everything is a duplicate, nothing changes
    third = runner.invoke(main, ["import", str(file), "--touchpoint", "pos", "--database", database_url, "--restart"])
    assert "0 imported, 50 already there" in third.output
    total, _ = asyncio.run(_metrics(database_url))
    assert total == 50


def test_import_names_a_line_with_a_nul_character_and_imports_the_others_twice_as_duplicates(database_url, tmp_path):
    # the HTTP API refuses NUL (422); an import must too, and a replay must still find every
    # imported id (a NUL cut short in a lookup would turn the replay into a failed batch)
    file = tmp_path / "nul.jsonl"
    at = "2025-01-01T00:00:00Z"
    nul_id = json.dumps({"id": "past-x\u0000y", "type": "order.completed", "occurred_at": at})
    nul_data = json.dumps({"id": "past-y", "type": "page", "occurred_at": at, "data": {"q": "\u0000"}})
    file.write_text(_lines(3) + nul_id + "\n" + nul_data + "\n" + _lines(2, start=3))
    args = ["import", str(file), "--touchpoint", "pos", "--database", database_url, "--skip-invalid"]
    first = CliRunner().invoke(main, args)
    assert "line 4:" in first.output and "line 5:" in first.output
    assert "NUL" in first.output
    assert "5 imported" in first.output
    again = CliRunner().invoke(main, [*args, "--restart"])
    assert again.exit_code == first.exit_code
    assert "0 imported, 5 already there" in again.output


def test_import_refuses_an_unknown_touchpoint(database_url, tmp_path):
    file = tmp_path / "x.jsonl"
    file.write_text(_lines(1))
    result = CliRunner().invoke(main, ["import", str(file), "--touchpoint", "nope", "--database", database_url])
    assert result.exit_code == 1
    assert "no touch point 'nope'" in result.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_serve_starts_migrates_and_stops_cleanly(database_url, tmp_path):
    port = _free_port()
    env = {**os.environ, "PRM_DATABASE_URL": database_url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "prm_core.cli", "serve", "--port", str(port), "--log-level", "debug"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        import urllib.request

        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                    assert json.load(resp)["status"] == "ok"
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError(
                        proc.stderr.read().decode() if proc.poll() is not None else "no answer"
                    ) from None
                time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert not Path(tmp_path, "prm-data").exists()  # the database came from PRM_DATABASE_URL
    # the process is the hub's own: it freezes the started heap ([server] freeze_heap unset)
    assert '"event": "heap frozen"' in err.decode()


def test_the_documented_config_loads(tmp_path):
    import re

    from prm_core.config import load_config

    doc = (Path(__file__).parent.parent / "docs" / "cli.md").read_text()
    block = re.search(r"```toml\n(.*?)```", doc, flags=re.S).group(1)
    (tmp_path / "prm.toml").write_text(block)
    config = load_config(tmp_path / "prm.toml")
    assert config.default_region == "US"
    assert config.touchpoint("web")["snowplow_app_ids"] == ["shop"]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ('[server]\nfreeze_heap = "yes"\n', "Error: [server].freeze_heap must be true or false, not 'yes'"),
        ('[planning]\non_ingest = "yes"\n', "Error: [planning].on_ingest must be true or false, not 'yes'"),
        (
            '[destinations.crm]\nkind = "webhook"\nurl = "https://crm.example.com/"\nsecret = "hunter2"\n',
            "Error: [destinations.crm].secret must be a Standard Webhooks secret (whsec_...), or env:VARIABLE",
        ),
        ("[feed]\nretention_days = 0\n", "Error: [feed].retention_days must be a number of days above 0, not 0"),
    ],
)
def test_serve_with_a_bad_setting_stops_naming_it_without_a_traceback(tmp_path, setting, message):
    (tmp_path / "prm.toml").write_text(setting)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRM_")}
    done = subprocess.run(
        [sys.executable, "-m", "prm_core.cli", "serve", "--port", str(_free_port())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    if "freeze_heap" in setting or "destinations" in setting:  # refused before the database is touched
        assert not (tmp_path / "prm-data").exists()


@pytest.mark.skipif(sys.platform != "linux", reason="the kernel's signal at a parent's death is Linux's")
def test_a_processor_whose_server_died_as_it_started_ends_at_once():
    """A server killed between starting its journal processor and the processor's asking to
    die with it would leave the processor running on, unwatched: it ends at once instead."""
    import functools

    from prm_core.cli import _die_with_parent

    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    orphan = subprocess.Popen(sleeper, preexec_fn=functools.partial(_die_with_parent, os.getpid() + 1_000_000))
    assert orphan.wait(timeout=30) == 1
    watched = subprocess.Popen(sleeper, preexec_fn=functools.partial(_die_with_parent, os.getpid()))
    try:
        with pytest.raises(subprocess.TimeoutExpired):  # its parent lives: it runs
            watched.wait(timeout=1)
    finally:
        watched.kill()
        watched.wait()
