"""schemathesis against /openapi.json: every operation the hub describes, with generated
parameters and bodies, answered without a 5xx and with a body that matches the schema the hub
describes for that status (every JSON error, the events, requests and customer answers). A
real server on a real SQLite database, with an admin key, so requests get past
authentication into the handlers."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from prm_core.config import Config
from prm_core.keys import create_key
from prm_core.server.app import create_app
from prm_core.server.state import HUB

EXAMPLES = int(os.environ.get("PRM_FUZZ_EXAMPLES", "15"))


class LiveHub:
    """The hub's app on a port of its own, in a thread with its own event loop."""

    def __init__(self, database_url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(database_url,), daemon=True)
        self.thread.start()
        if not self.ready.wait(30):
            raise RuntimeError("the hub did not start")

    def _run(self, database_url: str) -> None:
        asyncio.set_event_loop(self.loop)
        # examples come faster than a tracker's calls: no keyless limit, so they reach the parser
        raw = {"touchpoints": {"web": {"snowplow_app_ids": ["shop"]}}, "server": {"rate_limit_keyless": "off"}}
        config = Config(database_url=database_url, raw=raw)
        self.runner = web.AppRunner(create_app(config))
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # the port the OS chose
        self.url = f"http://127.0.0.1:{port}"
        hub = self.runner.app[HUB]
        self.admin = self.loop.run_until_complete(create_key(hub.store, "admin"))[0]
        self.ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


@pytest.fixture
def live(tmp_path: Any) -> Iterator[LiveHub]:
    hub = LiveHub(f"sqlite:///{tmp_path}/prm.db")
    seed = {"id": "s1", "type": "page", "occurred_at": "2026-11-23T08:00:00Z", "identities": {"user_id": "u-1"}}
    requests.post(f"{hub.url}/v1/touchpoints/web/events", json=seed, headers={"Authorization": f"Bearer {hub.admin}"})
    yield hub
    hub.close()


def test_no_operation_answers_a_server_error(live: LiveHub) -> None:
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    headers = {"Authorization": f"Bearer {live.admin}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    statuses: dict[str, set[int]] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: Any) -> None:
            response = case.call(base_url=live.url, headers=headers)
            statuses.setdefault(case.operation.label, set()).add(response.status_code)
            # no 5xx, and every answer (errors included) matches the schema the hub describes
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

        check()
    # every operation was called, and generated input got into the handlers' own checks
    assert set(statuses) == {op.label for op in operations}
    assert any(code in (400, 404, 422) for codes in statuses.values() for code in codes)
