"""The ``prm`` command never surprises: one-line start failures, misspelled settings named,
secrets read only when used, ``-h``, ``keys list``, ``--dry-run``, ``--json``, unknown scopes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from prm_core.cli import main
from prm_core.config import load_config
from prm_core.config_check import config_warnings
from prm_core.errors import ConfigError

TOUCHPOINTS = ["web", "callcenter", "ivr", "pos", "partners", "sms", "email"]


def _prm(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRM_")}
    return subprocess.run(
        [sys.executable, "-m", "prm_core.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_serve_on_a_port_in_use_says_so_in_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _prm("serve", "--port", str(port), cwd=tmp_path)
    assert done.returncode == 1
    assert f"Error: port {port} on 127.0.0.1 is in use by another program" in done.stderr
    assert "Traceback" not in done.stderr
    assert "hub started" not in done.stderr + done.stdout
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_serve_on_an_unknown_host_says_so_in_one_line(tmp_path):
    done = _prm("serve", "--host", "no-such-host.invalid", "--port", "8799", cwd=tmp_path)
    assert done.returncode == 1
    assert "Error: --host no-such-host.invalid" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("toml", "warning"),
    [
        ('[partner.fs]\nurl = "http://fs.test"\n', "[partner] is not a table the hub reads; did you mean partners?"),
        ("[touchpoint.web]\nretention_days = 3\n",
         "[touchpoint] is not a table the hub reads; did you mean touchpoints?"),
        ("[touchpoints.wbe]\nbudget_ms = 10\n", "[touchpoints.wbe] is not a registered touch point; did you mean web?"),
        ("[server]\nprot = 1\n", "[server].prot is not a setting the hub reads"),
        ("[database]\nbusy_timeout = 10\n",
         "[database].busy_timeout is not a setting the hub reads; did you mean busy_timeout_ms?"),
    ],
)  # fmt: skip
def test_misspelled_tables_and_keys_are_named_with_the_nearest_name(tmp_path, toml, warning):
    (tmp_path / "prm.toml").write_text(toml)
    found = config_warnings(load_config(tmp_path / "prm.toml"), TOUCHPOINTS)
    assert len(found) == 1
    assert found[0].startswith(warning)


def test_tables_plugins_own_are_not_warned_about(tmp_path):
    (tmp_path / "prm.toml").write_text(
        "[touchpoints.web]\nretention_days = 3\n[touchpoints.ivr.fastagi]\nport = 4573\n"
        '[partners.fs]\nurl = "http://fs.test"\n[destinations.lake]\nkind = "s3"\n'
        '[server]\npublic_url = "https://hub.example"\n[tiers.rules]\ngold = "x"\n'
    )
    assert config_warnings(load_config(tmp_path / "prm.toml"), TOUCHPOINTS) == []


def test_serve_strict_refuses_a_misspelled_table_and_plain_serve_names_it(tmp_path):
    (tmp_path / "prm.toml").write_text('[touchpoints.wbe]\nbudget_ms = 10\n[partner.fs]\nurl = "http://fs.test"\n')
    done = _prm("serve", "--strict", "--port", "8799", cwd=tmp_path)
    assert done.returncode == 1
    assert "prm.toml: [partner] is not a table the hub reads; did you mean partners? (and 1 more)" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "prm-data").exists()  # refused before the database is touched


def test_plain_serve_warns_about_each_misspelling(tmp_path, capsys):
    from prm_core.cli import _check_config

    (tmp_path / "prm.toml").write_text("[touchpoints.wbe]\nbudget_ms = 10\n[server]\nbody_timeout = 5\n")
    _check_config(load_config(tmp_path / "prm.toml"), strict=False)
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"Warning: {tmp_path / 'prm.toml'}: [server].body_timeout is not a setting the hub reads; "
        "did you mean body_timeout_s?",
        f"Warning: {tmp_path / 'prm.toml'}: [touchpoints.wbe] is not a registered touch point; did you mean web? "
        "(registered: " + ", ".join(sorted(_registered())) + ")",
    ]


def _registered() -> list[str]:
    from prm_core.plugins import collect_registrations, make_plugin_manager

    return collect_registrations(make_plugin_manager(), load_config(None)).touchpoints.names()


def test_an_unset_secret_of_an_unused_setting_does_not_stop_keys_create(tmp_path, monkeypatch):
    monkeypatch.delenv("PRM_UNSET_TWILIO_TOKEN", raising=False)
    cfg = tmp_path / "prm.toml"
    cfg.write_text('[touchpoints.ivr]\ntwilio_auth_token = "env:PRM_UNSET_TWILIO_TOKEN"\n')
    db = f"sqlite:///{tmp_path}/prm.db"
    for scope in ("admin", "touchpoint:web"):
        result = CliRunner().invoke(main, ["keys", "create", "--scope", scope, "--config", str(cfg), "--database", db])
        assert result.exit_code == 0, result.output
    # the hub, which uses the token, still stops naming it
    config = load_config(cfg)
    assert config == load_config(cfg)  # comparing configs reads no secret
    assert "PRM_UNSET" not in repr(config.raw)  # nor does printing one
    with pytest.raises(ConfigError, match=r"config\.touchpoints\.ivr\.twilio_auth_token refers to"):
        config.touchpoint("ivr").get("twilio_auth_token")


def test_dash_h_is_help_everywhere():
    for args in (["-h"], ["keys", "-h"], ["keys", "list", "-h"], ["serve", "-h"], ["retention", "run", "-h"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, (args, result.output)
        assert "Usage: " in result.output


def test_keys_list_shows_what_exists_and_never_a_secret(tmp_path):
    db = f"sqlite:///{tmp_path}/prm.db"
    runner = CliRunner()
    empty = runner.invoke(main, ["keys", "list", "--database", db])
    assert empty.exit_code == 0 and "no keys yet" in empty.output
    made = [
        runner.invoke(main, ["keys", "create", "--scope", scope, "--name", name, "--database", db]).output
        for scope, name in (("admin", "ops"), ("read", "dashboards"))
    ]
    keys = [out.strip().splitlines()[-1] for out in made]
    ids = [k.split("_")[1] for k in keys]
    assert runner.invoke(main, ["keys", "revoke", ids[1], "--database", db]).exit_code == 0

    table = runner.invoke(main, ["keys", "list", "--database", db])
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].split() == ["id", "scope", "name", "public", "created", "revoked"]
    assert lines[1].startswith(ids[0]) and " admin " in lines[1] and " ops " in lines[1]
    assert lines[2].startswith(ids[1]) and " read " in lines[2] and lines[2].split()[-1] != "-"
    as_json = json.loads(runner.invoke(main, ["keys", "list", "--json", "--database", db]).output)
    assert [k["id"] for k in as_json] == ids
    assert set(as_json[0]) == {"id", "scope", "name", "public", "created_at", "revoked_at"}
    assert as_json[0]["revoked_at"] is None and as_json[1]["revoked_at"]
    active = runner.invoke(main, ["keys", "list", "--active", "--json", "--database", db]).output
    assert [k["id"] for k in json.loads(active)] == ids[:1]
    for key in keys:
        secret = key.split("_", 2)[2]
        for out in (table.output, json.dumps(as_json)):
            assert secret not in out
    import hashlib

    digests = [hashlib.sha256(k.split("_", 2)[2].encode()).hexdigest() for k in keys]
    assert not any(d in table.output or d in json.dumps(as_json) for d in digests)


@pytest.mark.parametrize(
    ("scope", "message"),
    [
        ("touchpoint:nosuch", "'nosuch' is not a registered touch point"),
        ("partner:acme", "'acme' is not a configured partner"),
    ],
)
def test_a_scope_naming_nothing_is_refused(tmp_path, scope, message):
    db = f"sqlite:///{tmp_path}/prm.db"
    result = CliRunner().invoke(main, ["keys", "create", "--scope", scope, "--database", db])
    assert result.exit_code == 2
    assert message in result.output
    listed = CliRunner().invoke(main, ["keys", "list", "--json", "--database", db])
    assert json.loads(listed.output) == []  # nothing was created


def test_a_configured_partner_gets_a_key(tmp_path, monkeypatch):
    monkeypatch.setenv("PRM_UNSET_ACME", "whsec_" + "A" * 32)  # the partner's own secret: its plugin checks it
    cfg = tmp_path / "prm.toml"
    cfg.write_text('[partners.acme]\nrole = "field_service"\nurl = "http://acme.test"\nsecret = "env:PRM_UNSET_ACME"\n')
    db = f"sqlite:///{tmp_path}/prm.db"
    result = CliRunner().invoke(
        main, ["keys", "create", "--scope", "partner:acme", "--config", str(cfg), "--database", db]
    )
    assert result.exit_code == 0, result.output


def test_retention_run_dry_run_counts_and_deletes_nothing(tmp_path):
    import asyncio

    from prm_core.config import Config
    from prm_core.hub import Hub

    db = f"sqlite:///{tmp_path}/prm.db"
    cfg = tmp_path / "prm.toml"
    cfg.write_text("[touchpoints.web]\nretention_days = 1\n")
    old = [
        {"id": f"old-{i}", "type": "page", "occurred_at": "2020-01-01T00:00:00Z", "identities": {"email": "a@x.test"}}
        for i in range(3)
    ]

    async def seed() -> None:
        async with Hub.open(Config(database_url=db), autoload=True) as hub:
            await hub.record(hub.parse_events({"events": old}, "web"))

    asyncio.run(seed())
    args = ["retention", "run", "--config", str(cfg), "--database", db]
    for _ in range(2):  # a dry run is repeatable: it changed nothing
        dry = CliRunner().invoke(main, [*args, "--dry-run"])
        assert dry.exit_code == 0, dry.output
        assert "web: 3 events, 1 dialogues would be purged (dry run)" in dry.output
    real = CliRunner().invoke(main, args)
    assert "web: 3 events, 1 dialogues purged" in real.output


def test_plugins_and_scorecard_speak_json(tmp_path):
    plugins = CliRunner().invoke(main, ["plugins", "--json"])
    assert plugins.exit_code == 0, plugins.output
    doc = json.loads(plugins.output)
    web = next(p for p in doc["plugins"] if p["name"] == "web")
    assert web["touch_points"] == ["web"] and "prm_touchpoints" in web["hooks"]
    db = f"sqlite:///{tmp_path}/prm.db"
    card = CliRunner().invoke(main, ["scorecard", "--json", "--days", "7", "--database", db])
    assert card.exit_code == 0, card.output
    parsed = json.loads(card.output)
    assert {t["touchpoint"] for t in parsed["touchpoints"]} >= {"web", "callcenter"}
    assert "balanced" in parsed


def test_skips_are_summarised_one_line_per_reason(pytester):
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("n", range(30))
        def test_needs_a_server(n):
            pytest.skip("PRM_TEST_POSTGRES_URL is not set: PostgreSQL tests need a server")

        def test_needs_npm():
            pytest.skip("npm is absent")

        def test_runs():
            assert True
        """
    )
    result = pytester.runpytest("-p", "prm_core.testing.skips", "-rfE")
    result.assert_outcomes(passed=1, skipped=31)
    out = result.stdout.str()
    assert "SKIPPED 30 x PRM_TEST_POSTGRES_URL is not set: PostgreSQL tests need a server" in out
    assert "SKIPPED 1 x npm is absent" in out
    assert out.count("SKIPPED") == 2  # not one line per skipped test


def test_the_documented_configs_draw_no_warning(tmp_path):
    import re

    root = Path(__file__).resolve().parent.parent
    cli_doc = (root / "docs" / "cli.md").read_text()
    (tmp_path / "cli.toml").write_text(re.search(r"```toml\n(.*?)```", cli_doc, flags=re.S).group(1))
    files = [root / "examples" / "prm.toml", tmp_path / "cli.toml"]
    for page in ("destinations", "planning", "partners", "privacy", "messaging"):
        for i, block in enumerate(re.findall(r"```toml\n(.*?)```", (root / "docs" / f"{page}.md").read_text(), re.S)):
            files.append(tmp_path / f"{page}-{i}.toml")
            files[-1].write_text(block)
    for file in files:
        config = load_config(file)
        assert config_warnings(config, TOUCHPOINTS) == [], file
