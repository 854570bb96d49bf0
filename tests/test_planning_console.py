"""The console page in headless Chromium: a read key opens the scorecards with their charts and a
customer's 360 view; without a valid key it shows nothing but the refusal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from axe_core import serious_violations
from browsing import screenshot_path
from playwright.async_api import expect
from positions import after

from prm_core.config import Config
from prm_core.server.state import HUB
from prm_core.store.tables import touchpoint_days

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
    resp = await hub_client.post("/v1/touchpoints/web/events", json={"events": events}, headers=tp)
    assert resp.status == 200
    admin = {"Authorization": f"Bearer {await make_key('admin')}"}
    # the patch names Ann: read her after the events' position first
    assert (await hub_client.get(f"/v1/customers/email:ann@example.com{after(await resp.json())}", headers=admin)).ok
    await hub_client.patch(
        "/v1/customers/email:ann@example.com", json={"traits": {"first_name": "Ann", "last_name": "Lee"}}, headers=admin
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


SIZES = {"desktop": {"width": 1280, "height": 900}, "narrow": {"width": 420, "height": 860}}


@pytest.mark.parametrize("size", sorted(SIZES))
async def test_the_console_shows_scorecards_and_a_customer_with_a_read_key(
    hub_client, make_key, browser, tmp_path: Path, size
):
    await fill_the_hub(hub_client, make_key)
    read = await make_key("read")
    url = str(hub_client.make_url("/console"))
    context = await browser.new_context(viewport=SIZES[size], locale="en-US", timezone_id="America/New_York")
    page = await context.new_page()
    response = await page.goto(url)
    assert response.status == 200
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert await page.locator("#content").is_hidden()
    # never a blank page: what to do, in words, and no command to type
    empty = await page.inner_text("#empty")
    assert "key with the read scope" in empty and "Connect" in empty
    assert await serious_violations(page) == []

    await page.fill("#key", read)
    await page.keyboard.press("Enter")
    row = page.locator('#touchpoints tr[data-touchpoint="web"]')
    await row.wait_for()
    cells = await row.locator("th, td").all_inner_texts()
    # three customers at the web in 30 days, all of whom bought there; three requests, all in budget
    assert cells[:6] == ["web", "3", "100%", "3", "100%", "0%"]
    assert cells[8] == "$7,790.00"  # the reporting currency ([money], USD unset) and grouping, in the browser's locale
    assert await page.locator("#budget-chart rect.bar").count() == 1  # a bar per day: all answered today
    assert await page.locator("#tier-chart rect").count() >= 3  # shares of customers and of revenue
    assert "platinum" in await page.inner_text("#tier-legend")  # names in the legend, never cut in a bar
    assert "3 customers" in await page.inner_text("#balanced")
    assert read not in page.url
    assert await serious_violations(page) == []

    await page.fill("#ref", "email:ann@example.com")
    await page.click("#lookup button")
    await page.locator("#customer-name").wait_for()
    assert await page.inner_text("#customer-tier") == "platinum"
    assert "Ann Lee" in await page.inner_text("#customer-name")
    panel = await page.inner_text("#customer")
    assert "$6,200.00" in panel
    assert "RFM" not in panel and "T0" not in panel  # scores in words, times formatted
    assert "recency" in panel
    assert "placed an order" in panel and "order.completed" not in panel  # events in words
    text = await page.inner_text("body")
    assert "prm " not in text  # no command names in the UI
    assert await serious_violations(page) == []
    if size == "desktop":
        shot = screenshot_path("console.png", tmp_path)
        await page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
    await context.close()


async def test_the_budget_chart_reads_with_one_day_and_with_a_year(hub_client, make_key, browser):
    tp = {"Authorization": f"Bearer {await make_key('touchpoint:web')}"}
    read = await make_key("read")

    async def request(i: int, days_ago: int) -> None:
        body = {
            "id": f"visit-{i}",
            "type": "product.viewed",
            "occurred_at": (NOW - timedelta(days=days_ago)).isoformat(),
            "identities": {"email": "dee@example.com"},
        }
        assert (await hub_client.post("/v1/touchpoints/web/requests", json=body, headers=tp)).status == 200

    await request(0, 0)
    page = await (await browser.new_context(viewport={"width": 1000, "height": 800})).new_page()
    await page.goto(str(hub_client.make_url("/console")))
    await page.fill("#key", read)
    await page.click("#login button")
    await page.locator('#touchpoints tr[data-touchpoint="web"]').wait_for()
    # one day: one readable bar of full height, its legend above the plot, not over it
    bar = page.locator("#budget-chart rect.bar")
    assert await bar.count() == 1
    assert float(await bar.get_attribute("height")) > 100
    assert await page.inner_text("#budget-legend") == "web"

    # a year of the aggregates the hub keeps per touch point and day (requests count on the day answered)
    rows = [
        {"touchpoint": "web", "day": (NOW - timedelta(days=d)).date().isoformat(), "requests": 10, "in_budget": 9}
        for d in range(1, 365)
    ]
    await hub_client.app[HUB].store.write(lambda conn: conn.execute(touchpoint_days.insert(), rows))
    await page.select_option("#days-select", "365")
    await expect(page.locator("#period-name")).to_have_text("last year")
    await page.locator("#budget-chart polyline").wait_for()
    assert await page.locator("#budget-chart rect.bar").count() == 0  # a year is a line
    labels = await page.locator("#budget-chart text[text-anchor=middle]").all_inner_texts()
    assert 2 <= len(labels) <= 7  # date labels thinned so they never overlap
    assert await serious_violations(page) == []


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


@pytest.mark.parametrize("rates", [False, True], ids=["no-rates", "rates"])
async def test_the_console_shows_money_in_its_currency(database_url, aiohttp_client, browser, rates):
    from prm_core.keys import create_key
    from prm_core.server.app import create_app

    money: dict = {"reporting_currency": "EUR"}
    if rates:
        money["rates"] = {"USD": 0.92}
    config = Config(database_url=database_url, public_url="http://hub.test", raw={"money": money})
    client = await aiohttp_client(create_app(config))
    hub = client.app[HUB]
    tp = {"Authorization": f"Bearer {(await create_key(hub.store, 'touchpoint:web'))[0]}"}
    sales = [("ann@example.com", "600", "EUR"), ("ann@example.com", "600", "USD"), ("dan@example.com", "1000", "USD")]
    events = [
        {
            "id": f"sale-{n}",
            "type": "order.completed",
            "occurred_at": (NOW - timedelta(days=1)).isoformat(),
            "identities": {"email": who},
            "data": {"revenue": revenue, "currency": currency},
        }
        for n, (who, revenue, currency) in enumerate(sales)
    ]
    assert (await client.post("/v1/touchpoints/web/events", json={"events": events}, headers=tp)).status == 200
    read, _ = await create_key(hub.store, "read")

    page = await (await browser.new_context(locale="en-US")).new_page()
    await page.goto(str(client.make_url("/console")))
    await page.fill("#key", read)
    await page.keyboard.press("Enter")
    row = page.locator('#touchpoints tr[data-touchpoint="web"]')
    await row.wait_for()
    assert "Revenue (EUR)" in await page.inner_text("#touchpoints thead")
    cells = await row.locator("th, td").all_inner_texts()
    if rates:
        assert cells[8] == "€2,072.00"  # 600 EUR + 1600 USD x 0.92
        assert await page.locator("#mixed").is_hidden()
    else:
        # side by side, each in its currency, never a sum
        assert cells[8] == "€600.00 and $1,600.00"
        note = await page.inner_text("#mixed")
        assert "EUR, USD" in note and "not added" in note
    assert await serious_violations(page) == []

    await page.fill("#ref", "email:ann@example.com")
    await page.click("#lookup button")
    await page.locator("#customer-name").wait_for()
    panel = await page.inner_text("#customer")
    if rates:
        assert "Lifetime revenue €1,152.00 (recorded as €600.00 and $600.00)" in panel
    else:
        assert "Lifetime revenue €600.00 and $600.00 (not added: no rate for EUR, USD)" in panel
    await page.fill("#ref", "email:dan@example.com")
    await page.click("#lookup button")
    # one currency: shown as recorded
    await expect(page.locator("#customer")).to_contain_text("Lifetime revenue $1,000.00 from 1 order")
    assert await serious_violations(page) == []
