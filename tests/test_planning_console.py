"""The console page in headless Chromium: a read key opens the scorecards with their charts and a
customer's 360 view; without a valid key it shows nothing but the refusal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from prm_core.config import Config

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def hub_config(database_url: str) -> Config:
    raw = {
        "tiers": {"rules": {"platinum": "lifetime_revenue >= 5000", "gold": "lifetime_revenue >= 1000"}},
        "catalog": {"items": {"wm-300": {"title": "WM-300", "accessories": ["hose"]}, "hose": {"title": "Hose"}}},
        "touchpoints": {"web": {"budget_ms": 5000}},
    }
    return Config(database_url=database_url, public_url="http://hub.test", raw=raw)


async def fill_the_hub(hub_client, make_key) -> None:
    tp = {"Authorization": f"Bearer {await make_key('touchpoint:web')}"}
    sales = [
        ("ann@example.com", "6200", 3),
        ("bo@example.com", "1500", 2),
        ("cy@example.com", "90", 1),
    ]
    events = [
        {
            "id": f"sale-{who}",
            "type": "order.completed",
            "occurred_at": (NOW - timedelta(days=days)).isoformat(),
            "identities": {"email": who},
            "data": {"revenue": revenue},
        }
        for who, revenue, days in sales
    ]
    events.append(
        {
            "id": "name-ann",
            "type": "identify",
            "occurred_at": (NOW - timedelta(days=3)).isoformat(),
            "identities": {"email": "ann@example.com"},
        }
    )
    assert (await hub_client.post("/v1/touchpoints/web/events", json={"events": events}, headers=tp)).status == 200
    await hub_client.patch(
        "/v1/customers/email:ann@example.com",
        json={"traits": {"first_name": "Ann", "last_name": "Lee"}},
        headers={"Authorization": f"Bearer {await make_key('admin')}"},
    )
    for i, day in enumerate((2, 1, 0)):
        body = {
            "id": f"visit-{i}",
            "type": "product.viewed",
            "occurred_at": (NOW - timedelta(days=day)).isoformat(),
            "identities": {"email": "ann@example.com"},
            "data": {"product_id": "wm-300"},
        }
        assert (await hub_client.post("/v1/touchpoints/web/requests", json=body, headers=tp)).status == 200


async def test_the_console_shows_scorecards_and_a_customer_with_a_read_key(
    hub_client, make_key, browser, tmp_path: Path
):
    await fill_the_hub(hub_client, make_key)
    read = await make_key("read")
    url = str(hub_client.make_url("/console"))
    page = await (await browser.new_context(viewport={"width": 1100, "height": 900})).new_page()
    response = await page.goto(url)
    assert response.status == 200
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert await page.locator("#content").is_hidden()

    await page.fill("#key", read)
    await page.click("#login button")
    row = page.locator('#touchpoints tr[data-touchpoint="web"]')
    await row.wait_for()
    cells = await row.locator("td").all_inner_texts()
    # three customers at the web in 30 days, all of whom bought there; three requests, all in budget
    assert cells[:6] == ["web", "3", "100.0%", "3", "100.0%", "0.0%"]
    assert await page.locator("#budget-chart circle").count() >= 1  # one point per day answered
    assert await page.locator("#tier-chart rect").count() >= 3  # shares of customers and of revenue
    assert "3 customers" in await page.inner_text("#balanced")
    assert read not in page.url

    await page.fill("#ref", "email:ann@example.com")
    await page.click("#lookup button")
    await page.locator("#customer-name").wait_for()
    assert await page.inner_text("#customer-tier") == "platinum"
    assert "Ann Lee" in await page.inner_text("#customer-name")
    assert "6200.00" in await page.inner_text("#customer")
    await page.screenshot(path=str(tmp_path / "console.png"), full_page=True)
    assert (tmp_path / "console.png").stat().st_size > 10_000


async def test_the_console_without_a_valid_key_shows_only_the_refusal(hub_client, make_key, browser):
    await fill_the_hub(hub_client, make_key)
    page = await (await browser.new_context()).new_page()
    await page.goto(str(hub_client.make_url("/console")))
    await page.fill("#key", "prm_not_a_key")
    await page.click("#login button")
    await page.locator("#error:not(:empty)").wait_for()
    assert "not valid" in await page.inner_text("#error")
    assert await page.locator("#content").is_hidden()
    # a touch point's key cannot read through the console either
    await page.fill("#key", await make_key("touchpoint:web"))
    await page.click("#login button")
    await page.locator("#error:has-text('does not grant')").wait_for()
    assert await page.locator("#content").is_hidden()
