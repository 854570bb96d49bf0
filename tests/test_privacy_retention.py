"""Retention: [touchpoints.<tp>] retention_days purges a touch point's old events on a schedule."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner
from positions import after

from prm_core.cli import main
from prm_core.config import Config
from prm_core.errors import ConfigError
from prm_core.hub import Hub
from prm_core.privacy.retention import retention_days, run_retention
from prm_core.server.state import HUB

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def hub_config(database_url: str) -> Config:
    raw = {"touchpoints": {"web": {"retention_days": 30}}, "privacy": {"retention_interval_s": 0.05}}
    return Config(database_url=database_url, public_url="http://hub.test", raw=raw)


def events(identities: dict[str, str]) -> list[Any]:
    return [
        {"id": "old", "type": "page", "occurred_at": "2026-09-01T08:00:00Z", "identities": identities},
        {"id": "new", "type": "page", "occurred_at": "2026-11-20T08:00:00Z", "identities": identities},
    ]


async def test_old_events_of_a_touch_point_with_a_policy_are_purged(hub):
    ann = {"email": "ann@example.com"}
    await hub.record(hub.parse_events({"events": events(ann)}, "web"))
    await hub.record(hub.parse_events({"events": events(ann)}, "callcenter"))
    report = await run_retention(hub, now=NOW)
    assert report == {"web": {"events": 1, "dialogues": 1}}
    view = await hub.view("email:ann@example.com")
    assert sorted((t["touchpoint"], t["event_id"]) for t in view.timeline) == [
        ("callcenter", "new"), ("callcenter", "old"), ("web", "new"),
    ]  # fmt: skip
    assert view.metrics["event_count"] == 4  # aggregates are not recounted
    assert await run_retention(hub, now=NOW) == {"web": {"events": 0, "dialogues": 0}}


async def test_the_server_purges_on_a_schedule(hub_client, make_key):
    web, read = await make_key("touchpoint:web"), await make_key("read")
    body = {"events": events({"email": "bob@example.com"})}
    resp = await hub_client.post("/v1/touchpoints/web/events", json=body, headers=bearer(web))
    assert resp.status == 200
    bob = f"/v1/customers/email:bob@example.com{after(await resp.json())}"
    for _ in range(200):
        view = await (await hub_client.get(bob, headers=bearer(read))).json()
        if [t["event_id"] for t in view["timeline"]] == ["new"]:
            break
        await asyncio.sleep(0.05)
    assert [t["event_id"] for t in view["timeline"]] == ["new"]
    assert hub_client.app[HUB] is not None


def test_prm_retention_run(tmp_path):
    db = f"sqlite:///{tmp_path}/prm.db"
    config = tmp_path / "prm.toml"
    config.write_text("[touchpoints.web]\nretention_days = 1\n")

    async def seed() -> None:
        async with Hub.open(Config(database_url=db), autoload=True) as hub:
            await hub.record(hub.parse_events({"events": events({"email": "ann@example.com"})}, "web"))

    asyncio.run(seed())
    result = CliRunner().invoke(main, ["retention", "run", "--config", str(config), "--database", db])
    assert result.exit_code == 0, result.output
    assert "web: 2 events, 2 dialogues purged" in result.output


@pytest.mark.parametrize("days", [0, -3, "30", 1.5, True])
def test_a_bad_policy_is_a_config_error(days):
    config = Config(raw={"touchpoints": {"web": {"retention_days": days}}})
    with pytest.raises(ConfigError, match=r"\[touchpoints.web\].retention_days"):
        retention_days(config, ["web"])


def test_the_documented_privacy_config_is_valid(tmp_path):
    import re
    from pathlib import Path

    from prm_core.config import load_config
    from prm_core.server.app import create_app
    from prm_core.server.ratelimit import RATE_LIMITS

    doc = (Path(__file__).parent.parent / "docs" / "cli.md").read_text()
    (tmp_path / "prm.toml").write_text(re.search(r"```toml\n(.*?)```", doc, flags=re.S).group(1))
    config = load_config(tmp_path / "prm.toml")
    assert retention_days(config, ["web", "pos"]) == {"web": 400}
    app = create_app(config)
    assert app[RATE_LIMITS].secret == [] and app[RATE_LIMITS].public
