"""The hub embedded in another service (docs/embedding.md): its logs redacted with no call
from the service, whatever logging the service set up; its pages under a path prefix of the
service's aiohttp application; FastAPI running it in its lifespan."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import textwrap
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from axe_core import serious_violations
from positions import after

from prm_core.config import Config
from prm_core.keys import create_key
from prm_core.server.app import app_options, create_app
from prm_core.server.state import HUB

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "embedding.md"
EMAIL, PHONE, NAME = "zelda.quartermaine@example.com", "+1 415 555 0199", "Quartermaine"
SECRETS = ("zelda.quartermaine", "4155550199", "555 0199", NAME)

# a service's script: a plugin whose hook fails with personal data in its locals and message
SERVICE = """
import asyncio, sys, tempfile

import prm_core.hub
from prm_core import hookimpl
from prm_core.config import Config
from prm_core.hub import Hub
from prm_core.model import TouchPoint

if "--unprotected" in sys.argv:  # the control: what would be logged without the hub's redaction
    prm_core.hub.protect_logs = lambda: None
{setup}

class Sync:
    __name__ = "sync"

    @hookimpl
    def prm_touchpoints(self, config):
        yield TouchPoint(name="kiosk", channel="kiosk", budget_ms=100)

    @hookimpl
    def prm_event_recorded(self, recorded):
        email, phone, person = {email!r}, {phone!r}, {{"last_name": {name!r}}}
        raise ValueError(f"cannot sync {{email}} {{phone}} {{person}}")


async def main():
    config = Config(database_url=f"sqlite:///{{tempfile.mkdtemp()}}/prm.db")
    async with Hub.open(config, plugins=[Sync()]) as hub:
        visit = {{"id": "v1", "type": "kiosk.visit", "occurred_at": "2026-11-23T08:00:00Z",
                  "identities": {{"email": {email!r}, "phone": {phone!r}}}}}
        await hub.record(hub.parse_events(visit, "kiosk"))
        await asyncio.sleep(0.3)  # the hook runs once the batch is committed
{after}

asyncio.run(main())
"""


def run_service(tmp_path: Path, *args: str, setup: str = "", after: str = "") -> str:
    script = tmp_path / "service.py"
    script.write_text(
        SERVICE.format(setup=setup, after=textwrap.indent(after, " " * 8), email=EMAIL, phone=PHONE, name=NAME)
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRM_")}
    done = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def test_a_script_that_sets_up_no_logging_logs_no_personal_data(tmp_path):
    unprotected = run_service(tmp_path, "--unprotected")
    assert EMAIL in unprotected  # without the hub's redaction, structlog's defaults print it
    logged = run_service(tmp_path)
    assert "hook failed" in logged and "prm_event_recorded" in logged and "ValueError" in logged
    assert "service.py" in logged  # the frames are there: where it failed
    for secret in SECRETS:
        assert secret not in logged


def test_a_service_with_its_own_structlog_set_up_gets_redaction_too(tmp_path):
    # dict_tracebacks renders each frame's local variables: the email, the phone, the person
    setup = """
import structlog
structlog.configure(processors=[
    structlog.processors.add_log_level,
    structlog.processors.dict_tracebacks,
    structlog.processors.JSONRenderer(),
])
"""
    after = f'structlog.get_logger("service").info("signed up", email={EMAIL!r}, note="call {PHONE}")'
    logged = run_service(tmp_path, setup=setup, after=after)
    assert "hook failed" in logged and '"signed up"' in logged
    for secret in SECRETS:
        assert secret not in logged


# ---- mounted under a prefix -----------------------------------------------------------------

PRM = web.AppKey("prm", web.Application)


async def home(request: web.Request) -> web.Response:
    return web.Response(text="the service")


@pytest.fixture
async def service(database_url: str) -> Any:
    """A service's aiohttp application with the hub mounted at /prm/: web, call center, console."""
    import prm_callcenter
    import prm_web

    raw = {"tiers": {"rules": {"gold": "lifetime_revenue >= 1000"}}}
    app = web.Application(**app_options())
    app.router.add_get("/", home)
    prm = create_app(
        Config(database_url=database_url, public_url="http://hub.test", raw=raw),
        plugins=[prm_web, prm_callcenter],
        autoload=False,
    )
    app.add_subapp("/prm", prm)
    app[PRM] = prm
    async with TestClient(TestServer(app)) as client:
        yield client


async def key(service: Any, scope: str) -> str:
    made, _ = await create_key(service.app[PRM][HUB].store, scope)
    return made


async def test_the_api_and_its_description_answer_under_the_prefix(service):
    assert (await (await service.get("/")).text()) == "the service"
    web_key = await key(service, "touchpoint:web")
    order = {
        "id": "o-1",
        "type": "order.completed",
        "occurred_at": datetime.now(UTC).isoformat(),
        "identities": {"email": "ann@example.com"},
        "data": {"revenue": "1200"},
    }
    sent = await service.post(
        "/prm/v1/touchpoints/web/events", json=order, headers={"Authorization": f"Bearer {web_key}"}
    )
    assert sent.status == 200, await sent.text()
    read = {"Authorization": f"Bearer {await key(service, 'read')}"}
    ann = f"/prm/v1/customers/email:ann@example.com{after(await sent.json())}"
    view = await (await service.get(ann, headers=read)).json()
    assert view["tier"] == "gold" and view["timeline"][0]["event_id"] == "o-1"
    assert (await service.get("/v1/customers/email:ann@example.com", headers=read)).status == 404  # only under /prm
    described = await (await service.get("/prm/openapi.json")).json()
    assert "/prm/v1/agents/{agent_id}/signin" in described["paths"]
    desktop = described["paths"]["/prm/agent"]["get"]
    assert desktop["tags"] == ["touchpoint:callcenter"]  # a touch point's routes keep their owner under the prefix


async def test_the_agent_desktop_works_under_the_prefix(service, browser):
    cti = {"Authorization": f"Bearer {await key(service, 'touchpoint:callcenter')}"}
    signin = await service.post("/prm/v1/agents/a-7/signin", headers=cti)
    assert signin.status == 200, await signin.text()
    link = (await signin.json())["link"]
    page = await browser.new_page()
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url))
    base = str(service.make_url("/prm/"))
    await page.goto(base + link)
    await page.wait_for_selector("#status.live")  # signed in, screen-pop socket open
    assert await page.locator("link[rel=stylesheet]").evaluate("l => l.sheet !== null")
    requests = [u for u in seen if u.startswith("http")]
    assert any("/prm/v1/agents/" in u for u in requests)
    assert all(u.startswith(base) for u in requests), requests
    assert await serious_violations(page) == []
    await page.close()


async def test_the_console_works_under_the_prefix(service, browser):
    web_key = await key(service, "touchpoint:web")
    visit = {
        "id": "r-1",
        "type": "product.viewed",
        "occurred_at": datetime.now(UTC).isoformat(),
        "identities": {"email": "ann@example.com"},
    }
    sent = await service.post(
        "/prm/v1/touchpoints/web/requests", json=visit, headers={"Authorization": f"Bearer {web_key}"}
    )
    assert sent.status == 200, await sent.text()
    page = await browser.new_page()
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url))
    base = str(service.make_url("/prm/"))
    assert (await page.goto(base + "console")).status == 200
    await page.fill("#key", await key(service, "read"))
    await page.keyboard.press("Enter")
    await page.locator('#touchpoints tr[data-touchpoint="web"]').wait_for()
    await page.fill("#ref", "email:ann@example.com")
    await page.click("#lookup button")
    await page.locator("#customer-name").wait_for()
    assert "web" in await page.inner_text("#customer tbody")  # the timeline read under the prefix
    assert "/prm/v1/scorecard" in " ".join(seen) and "/prm/v1/customers/" in " ".join(seen)
    assert all(u.startswith(base) for u in seen if u.startswith("http")), seen
    await page.close()


# ---- FastAPI --------------------------------------------------------------------------------


def _sample(marker: str) -> str:
    """The code block right below ``marker`` on the page."""
    text = PAGE.read_text(encoding="utf-8")
    found = re.search(re.escape(marker) + r".*?\n```python\n(.*?)\n```", text, flags=re.S)
    assert found, f"{PAGE.name}: no python block below {marker}"
    return found.group(1)


def test_the_fastapi_sample_runs_the_hub_in_its_lifespan():
    pytest.importorskip("fastapi", reason="FastAPI is not installed (pip install -e .[bench])")
    code = _sample("test_the_fastapi_sample_runs_the_hub_in_its_lifespan")
    module = types.ModuleType("embedding_fastapi_sample")
    exec(compile(code, f"{PAGE.name} (FastAPI)", "exec"), module.__dict__)  # the page's own sample

    async def recorded() -> list[str]:
        import prm_web

        from prm_core.hub import Hub

        # the lifespan has stopped the service's hub; what it recorded is in the database
        async with Hub.open(module.__dict__["config"], plugins=[prm_web]) as hub:
            return [entry.event_id for entry in (await hub.view("email:ann@example.com")).timeline]

    assert asyncio.run(recorded()) == ["signup:ann@example.com"]


# ---- the view's types -------------------------------------------------------------------------


async def test_the_view_holds_typed_values_and_answers_the_same_json(hub):
    from prm_core.model import Dialogue, TimelineEntry

    page = {
        "id": "p-1",
        "type": "page",
        "occurred_at": "2026-11-23T08:00:00Z",
        "identities": {"email": "ann@example.com"},
        "dialogue": "session-1",
        "data": {"url": "/washers"},
    }
    await hub.record(hub.parse_events(page, "web"))
    view = await hub.view("email:ann@example.com")
    (entry,) = view.timeline
    (dialogue,) = view.dialogues
    assert isinstance(entry, TimelineEntry) and isinstance(dialogue, Dialogue)
    assert entry.occurred_at == datetime(2026, 11, 23, 8, tzinfo=UTC) and entry.dialogue == dialogue.id
    # read as a mapping, an entry is its JSON shape, as plugins written against dicts read it
    assert entry["occurred_at"] == "2026-11-23T08:00:00Z" and entry.get("data") == {"url": "/washers"}
    assert dict(entry) == entry.to_json() == view.to_json()["timeline"][0]
    assert set(entry) == {"event_id", "touchpoint", "type", "occurred_at", "dialogue", "direction", "data"}
    with pytest.raises(KeyError):
        entry["summary"]


async def test_a_hub_whose_start_fails_leaves_nothing_running(database_url, monkeypatch):
    """A service embedding the hub goes on (or retries) after a failed start: the writers, the
    journal's processor, the relay and the outbox that had started are stopped again."""
    from prm_core.hub import Hub
    from prm_core.surveys import Surveys

    async def unreachable(self: Any) -> None:
        raise OSError("the database went away")

    monkeypatch.setattr(Surveys, "start", unreachable)
    before = asyncio.all_tasks()
    config = Config(database_url=database_url, raw={"ingest": {"journal": True}})
    with pytest.raises(OSError, match="went away"):
        async with Hub.open(config):
            pytest.fail("the hub started")
    await asyncio.sleep(0)
    left = [t.get_name() for t in asyncio.all_tasks() - before if not t.done()]
    assert left == []
