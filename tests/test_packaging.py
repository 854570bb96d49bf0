"""Packaging: the core's dependencies, the extras, a plugin whose package is missing, the
version, and ``prm --help`` importing no plugin command."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import structlog
from click.testing import CliRunner
from third_party import installed

import prm_core
from prm_core.cli import main
from prm_core.errors import PluginLoadError
from prm_core.plugins import builtin_plugins, make_plugin_manager

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
PER_PART = ("twilio", "asterisk", "pos", "partner", "email", "planning")


def _requirements(name: str) -> list[str]:
    lines = (ROOT / "requirements" / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _name(requirement: str) -> str:
    found = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert found is not None, requirement
    return re.sub(r"[-_.]+", "-", found.group(0)).lower()


def test_each_line_of_plugins_txt_is_in_exactly_one_extra_and_all_takes_every_part():
    parts = [req for extra in PER_PART for req in EXTRAS[extra]]
    assert sorted(parts) == sorted(_requirements("plugins.txt"))
    assert EXTRAS["all"] == [f"prm-hub[{','.join(PER_PART)},warehouse]"]


def test_the_core_requires_no_vendor_sdk_nor_scientific_library():
    core = {_name(r) for r in _requirements("core.txt")}
    assert not core & {_name(r) for r in _requirements("plugins.txt")}
    assert not core & {"twilio", "panoramisk", "lxml", "cloudevents", "numpy", "scipy"}


def test_the_installed_distribution_requires_the_core_and_the_plugins_parts():
    requires = importlib.metadata.requires("prm-hub") or []
    plain = sorted(r for r in requires if "extra ==" not in r)
    assert plain == sorted(_requirements("core.txt") + _requirements("plugins.txt"))


def test_every_package_of_the_core_is_in_the_distribution():
    # a package missing from the list works in an editable install and nowhere else
    packages = set(PYPROJECT["tool"]["setuptools"]["packages"])
    on_disk = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "prm_core").rglob("__init__.py")}
    assert on_disk <= packages, sorted(on_disk - packages)


def test_the_plugin_test_extra_is_what_prm_core_testing_needs_and_the_test_extra_includes_it():
    assert sorted(_name(r) for r in EXTRAS["plugin-test"]) == ["pytest", "pytest-aiohttp", "pytest-asyncio"]
    assert "prm-hub[plugin-test]" in EXTRAS["test"]
    assert not {"playwright", "sphinx", "squareup"} & {_name(r) for r in EXTRAS["plugin-test"]}


def test_one_version_everywhere():
    result = CliRunner().invoke(main, ["--version"])
    assert result.output.strip() == f"prm, version {prm_core.__version__}"
    assert importlib.metadata.version("prm-hub") == prm_core.__version__
    assert "version" in PYPROJECT["project"]["dynamic"] and "version" not in PYPROJECT["project"]


def test_a_plugin_whose_package_is_missing_is_skipped_with_one_line(tmp_path, monkeypatch):
    source = "import prm_test_absent_sdk.client\n"
    with (
        installed(
            tmp_path,
            monkeypatch,
            name="prm-vendorx",
            modules={"prm_vendorx.py": source},
            entry_points={"prm": {"vendorx": "prm_vendorx"}},
            requires=['prm-test-absent-sdk>=2; extra == "vendorx"'],
        ),
        structlog.testing.capture_logs() as logs,
    ):
        pm = make_plugin_manager()
    assert not pm.has_plugin("vendorx") and pm.has_plugin("web")
    install = "pip install 'prm-vendorx[vendorx]'"
    assert pm.skipped == {"vendorx": f"needs 'prm_test_absent_sdk', not installed ({install})"}
    (line,) = [entry for entry in logs if entry.get("plugin") == "vendorx"]
    assert line["log_level"] == "warning"
    assert line["missing"] == "prm_test_absent_sdk" and line["install"] == install
    assert line["distribution"] == "prm-vendorx 1.0"
    assert "exc_info" not in line


def test_a_plugin_whose_own_module_is_missing_is_a_load_error_not_a_skip(tmp_path, monkeypatch):
    with (
        installed(
            tmp_path,
            monkeypatch,
            name="prm-broken",
            modules={"prm_broken.py": "from prm_broken_internals import thing\n"},
            entry_points={"prm": {"broken": "prm_broken_gone"}},
        ),
        pytest.raises(PluginLoadError) as info,
    ):
        make_plugin_manager()
    assert "prm_broken_gone" in str(info.value) and "prm-broken 1.0" in str(info.value)


def test_without_the_vendor_sdks_and_scipy_the_core_runs_and_the_plugins_needing_them_are_skipped():
    # what `tox -e core` checks in an environment holding requirements/core.txt alone,
    # here with the packages of requirements/plugins.txt made unimportable
    absent = {"twilio", "panoramisk", "lxml", "cloudevents", "aiosmtplib", "jinja2", "numpy", "scipy"}
    prelude = textwrap.dedent(
        f"""
        import runpy, sys

        for name in {sorted(absent)!r}:
            sys.modules[name] = None  # what Python does with a package that is not installed
        runpy.run_path({str(ROOT / "tests" / "core_alone.py")!r}, run_name="__main__")
        """
    )
    done = subprocess.run([sys.executable, "-c", prelude], capture_output=True, text=True, timeout=120, cwd=ROOT)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Traceback" not in output
    skipped = ["asterisk_ami", "email", "partner", "pos", "shopify", "sms", "square", "twilio"]
    assert f"a hub opened, recorded and answered the view; skipped: {skipped}" in output
    lines = [line for line in output.splitlines() if "plugin skipped" in line]
    assert len(lines) == len(skipped), output
    for plugin, package, extra in [
        ("twilio", "twilio", "twilio"),
        ("sms", "twilio", "twilio"),
        ("asterisk_ami", "panoramisk", "asterisk"),
        ("pos", "lxml", "pos"),
        ("partner", "cloudevents", "partner"),
        ("email", "jinja2", "email"),
    ]:
        # the hub's own log setup (Hub.open's protect_logs) writes one JSON object a line
        (entry,) = [json.loads(ln) for ln in lines if f'"plugin": "{plugin}"' in ln]
        assert entry["missing"] == package and entry["install"] == f"pip install 'prm-hub[{extra}]'"


def test_prm_plan_fit_without_numpy_says_what_to_install(tmp_path):
    prelude = textwrap.dedent(
        f"""
        import sys

        sys.modules["numpy"] = sys.modules["scipy"] = None  # not installed, as Python sees it
        from prm_core.cli import main
        main(["plan", "fit", "--database", "sqlite:///{tmp_path}/fit.db"])
        """
    )
    done = subprocess.run([sys.executable, "-c", prelude], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "Error: prm plan fit needs the value model's libraries: "
        "numpy and scipy are not installed (pip install 'prm-hub[planning]')"
    )


def test_prm_help_lists_the_installed_commands_without_importing_them():
    probe = textwrap.dedent(
        """
        import sys
        from prm_core.cli import main
        try:
            main(["--help"])
        except SystemExit:
            pass
        heavy = ["prm_demo", "prm_core.planning", "scipy", "numpy", "twilio", "rule_engine", "prm_core.hub"]
        print("imported:", sorted(m for m in heavy if m in sys.modules))
        """
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "imported: []" in done.stdout
    (demo,) = [line for line in done.stdout.splitlines() if line.strip().startswith("demo ")]
    assert "Play the flagship scenario" in demo  # the first line of its docstring, read from the source


def test_an_installed_command_whose_package_is_missing_is_one_line(tmp_path, monkeypatch):
    source = 'import click\nimport prm_test_absent_sdk\n\n@click.command()\ndef hello():\n    """Say hello."""\n'
    with installed(
        tmp_path,
        monkeypatch,
        name="prm-hello",
        modules={"prm_hello.py": source},
        entry_points={"prm.commands": {"hello": "prm_hello:hello"}},
    ):
        listing = CliRunner().invoke(main, ["--help"])
        run = CliRunner().invoke(main, ["hello"])
    assert "hello         Say hello." in listing.output
    assert run.exit_code == 1
    assert run.output.strip() == (
        "Error: prm hello needs the package 'prm_test_absent_sdk', which is not installed: "
        "pip install 'prm_test_absent_sdk'"
    )


def test_builtin_plugins_are_the_prm_hub_distributions_own(tmp_path, monkeypatch):
    with installed(
        tmp_path,
        monkeypatch,
        name="prm-extra",
        modules={"prm_extra_plugin.py": "from prm_core import hookimpl\n"},
        entry_points={"prm": {"extra": "prm_extra_plugin"}},
    ):
        assert make_plugin_manager().has_plugin("extra")  # installed: autoloading takes it
        names = sorted(plugin.__name__ for plugin in builtin_plugins())
    assert "prm_extra_plugin" not in names
    expected = {ep.value for ep in importlib.metadata.entry_points(group="prm") if ep.dist.name == "prm-hub"}
    assert set(names) == expected


def test_the_embedding_guide_installs_the_core_alone_as_tox_checks_it():
    readme = (ROOT / "docs" / "embedding.md").read_text()
    marker = "tests/test_packaging.py::test_the_embedding_guide_installs_the_core_alone_as_tox_checks_it -->\n```sh\n"
    command = readme.split(marker, 1)[1].split("\n```", 1)[0]
    assert command == "pip install -r requirements/core.txt && pip install --no-deps -e ."
    tox = (ROOT / "tox.ini").read_text().split("[testenv:core]", 1)[1]
    assert "deps = -r requirements/core.txt" in tox
    assert "pip install -q --no-deps {tox_root}" in tox
    assert "tests/core_alone.py" in tox


def test_science_installed_sees_numpy_and_scipy_missing_without_importing_them(monkeypatch):
    from prm_core.planning.clv import science_installed

    assert science_installed()
    monkeypatch.setitem(sys.modules, "scipy", None)  # what Python does with a package that is not installed
    assert not science_installed()


async def test_a_hub_without_numpy_and_scipy_says_so_where_the_fitted_lifetime_value_would_be(
    hub, frozen_clock, monkeypatch
):
    from test_planning_honesty import NOW, long_history, record

    from prm_core.planning import planner
    from prm_core.planning.clv import PLANNING_MISSING
    from prm_core.planning.fit import fit_value_model

    frozen_clock.now = NOW
    await record(hub, long_history())
    await fit_value_model(hub.store, NOW)  # fitted where numpy and scipy are installed
    hub.planner.forget_models()
    assert (await hub.view("user_id:u0")).sections["value"]["model"]["clv"]["model"] == "bgnbd+gammagamma"

    monkeypatch.setattr(planner, "science_installed", lambda: False)  # this hub has neither
    hub.planner.forget_models()
    value = (await hub.view("user_id:u0")).sections["value"]
    assert value["model"]["clv"] == {"model": None, "reason": PLANNING_MISSING, "currency": "USD", "capped": False}
    assert value["clv"] is None and value["rfm"]  # the rest of the value section stands
