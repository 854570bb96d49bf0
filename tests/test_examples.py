"""examples/: the production-like config loads, and a hub starts with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from prm_core.config import load_config
from prm_core.errors import PrmError
from prm_core.hub import Hub
from prm_core.plugins import collect_registrations, make_plugin_manager

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SECRETS = ("TWILIO_AUTH_TOKEN", "SHOPIFY_SECRET", "SQUARE_KEY", "FIELDSERVICE_SECRET", "SUPPLIER_SECRET")


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SECRETS:
        monkeypatch.setenv(name, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" if "SECRET" in name else "token")


def test_every_secret_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SECRETS:
        monkeypatch.delenv(name, raising=False)
    # secrets are read when used: loading the file needs none, starting the hub needs them all
    config = load_config(EXAMPLES / "prm.toml")
    with pytest.raises(PrmError, match=r"refers to environment variable [A-Z_]+, which is not set"):
        collect_registrations(make_plugin_manager(), config)


async def test_a_hub_starts_with_the_example_config(secrets: None, database_url: str) -> None:
    config = load_config(EXAMPLES / "prm.toml", database_url=database_url)
    assert config.public_url == "https://hub.example.com"
    async with Hub.open(config, autoload=True) as hub:
        budgets = {tp.name: tp.budget_ms for tp in hub.registrations.touchpoints.items.values()}
        assert {"web": 250, "callcenter": 1000, "ivr": 1500, "pos": 300}.items() <= budgets.items()
