"""docs/planning.md against the code: its configuration starts a planner, its rules compile,
its rule names are the ones the language knows."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from prm_core.config import Config
from prm_core.planning import NAMES, Planner, compile_rule

DOC = (Path(__file__).parent.parent / "docs" / "planning.md").read_text()


def test_the_documented_configuration_builds_a_planner():
    raw: dict = {}
    for block in re.findall(r"```toml\n(.*?)```", DOC, flags=re.S):
        raw |= tomllib.loads(block)
    planner = Planner.from_config(Config(raw=raw))
    assert [rule.name for rule in planner.tiers] == ["platinum", "gold", "silver"]
    assert planner.catalog.items["wm-300"].accessories == ("hose-kit", "pedestal")
    assert planner.offers.cap("ivr") == 1 and planner.offers.cap("web") == 5
    assert planner.entitlements == {"platinum": 1, "gold": 2, "default": 5}


def test_the_documented_rule_examples_compile():
    block = re.search(r"```text\n(.*?)```", DOC, flags=re.S).group(1)
    for i, line in enumerate(block.strip().splitlines()):
        compile_rule(f"example{i}", line, where=f"docs example {i}")


def test_the_documented_names_are_the_languages():
    table = DOC.split("| name | type | what |")[1].split("\n\n")[0]
    documented = set()
    for cell in re.findall(r"^\| ([^|]+) \|", table, flags=re.M):
        documented |= set(re.findall(r"`(\w+)`", cell))
    assert documented == set(NAMES)


def test_on_ingest_must_be_a_boolean():
    import pytest

    from prm_core.errors import ConfigError

    assert Planner.from_config(Config(raw={"planning": {"on_ingest": False}})).on_ingest is False
    assert Planner.from_config(Config()).on_ingest is True
    with pytest.raises(ConfigError, match=r"^\[planning\]\.on_ingest must be true or false, not 'no'$"):
        Planner.from_config(Config(raw={"planning": {"on_ingest": "no"}}))
