"""The conformance suite every touch-point plugin runs.

In the plugin's tests (with ``pytest_plugins = ["prm_core.testing"]`` in its conftest):

.. code-block:: python

    from prm_core.testing.conformance import TouchPointConformance

    class TestConformance(TouchPointConformance):
        touchpoint = "kiosk"

That is all for a touch point whose clients use the hub's own Event API. A touch point
that speaks a vendor format overrides :meth:`~TouchPointConformance.send_events` (and
:meth:`~TouchPointConformance.send_request` if it answers requests on its own route) to
turn canonical events into its wire format, and :meth:`~TouchPointConformance.forge` to
send a request with a bad signature. Each failing check says what to fix.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from .. import hookimpl
from ..hub import Hub
from ..model import TouchPoint, ValueProvider
from ..server.errors import MAX_BODY_BYTES
from ..server.state import HUB
from ..store.tables import events

__all__ = ["PERSONAL_DATA", "SlowValueProvider", "TouchPointConformance"]

# personal data the suite sends through the touch point and then looks for in the logs
PERSONAL_DATA = {
    "email": "conformance.person@example.com",
    "phone": "+14155550123",
    "first_name": "Philippa",
    "last_name": "Conformance-Smith",
}
SLOW_PROVIDER = "conformance-slow"
_WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


class SlowValueProvider:
    """A value provider far slower than any budget, to check answers degrade instead of waiting."""

    @hookimpl
    def prm_value_providers(self, config: Any) -> list[ValueProvider]:
        async def provide(request: Any) -> Mapping[str, Any]:
            await asyncio.sleep(30)
            return {}

        return [ValueProvider(name=SLOW_PROVIDER, about="business", provide=provide)]


def _error_body(body: Any) -> bool:
    return isinstance(body, dict) and isinstance(body.get("error"), dict) and "code" in body["error"]


class TouchPointConformance:
    """Checks every touch point must pass; subclass it as ``Test...`` and set ``touchpoint``."""

    #: the touch point's registered name
    touchpoint: str = ""
    #: plugin objects to register in code (leave empty when the plugin is installed)
    plugins: tuple[Any, ...] = ()
    #: the touch point answers requests (``POST /v1/touchpoints/{tp}/requests`` or its own route)
    answers_requests: bool = True
    #: how late past the budget an answer may arrive. The slow provider sleeps 30 s, so this
    #: catches a touch point that waits for it, while a busy test machine's fsync and GC
    #: pauses do not fail the check (a test run's full collections took up to 0.6 s, and the
    #: first request of a fresh hub pays its own warm-up); exact latency is measured by
    #: benchmarks, not tests.
    budget_slack_ms: int = 3000

    # ---- what a vendor-format plugin overrides -------------------------------------------

    async def send_events(self, client: TestClient, key: str | None, batch: list[dict[str, Any]]) -> ClientResponse:
        """Send canonical Event dicts the way this touch point's clients do.

        ``key`` is a ``touchpoint:<name>`` key, or ``None`` to send without credentials.
        The default posts to the hub's Event API.
        """
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return await client.post(f"/v1/touchpoints/{self.touchpoint}/events", json={"events": batch}, headers=headers)

    async def send_request(self, client: TestClient, key: str, event: dict[str, Any]) -> ClientResponse:
        """Send one request turn and return the answer. The default uses the hub's request API."""
        return await client.post(
            f"/v1/touchpoints/{self.touchpoint}/requests", json=event, headers={"Authorization": f"Bearer {key}"}
        )

    async def send_raw(self, client: TestClient, key: str, body: bytes) -> ClientResponse:
        """Send raw bytes where :meth:`send_events` sends its batches (for malformed input)."""
        return await client.post(
            f"/v1/touchpoints/{self.touchpoint}/events", data=body, headers={"Authorization": f"Bearer {key}"}
        )

    async def forge(self, client: TestClient, batch: list[dict[str, Any]]) -> ClientResponse:
        """Send a batch with credentials that look right but are not (a forged signature)."""
        forged = "prm_0123456789abcdef_" + "forged" * 8
        return await client.post(
            f"/v1/touchpoints/{self.touchpoint}/events",
            json={"events": batch},
            headers={"Authorization": f"Bearer {forged}"},
        )

    def event(self, n: int, **overrides: Any) -> dict[str, Any]:
        """A canonical event carrying :data:`PERSONAL_DATA`."""
        base: dict[str, Any] = {
            "id": f"conformance-{n}",
            "type": "conformance.check",
            "occurred_at": "2026-01-01T09:00:00Z",
            "identities": {"email": PERSONAL_DATA["email"], "phone": PERSONAL_DATA["phone"]},
            "data": {"first_name": PERSONAL_DATA["first_name"], "last_name": PERSONAL_DATA["last_name"]},
        }
        return {**base, **overrides}

    # ---- fixtures --------------------------------------------------------------------------

    @pytest.fixture
    def hub_plugins(self) -> list[Any]:
        return [*self.plugins, SlowValueProvider()]

    @pytest.fixture
    def hub_config(self, database_url: str) -> Any:
        from ..config import Config

        # the plugin may need its own settings; subclasses override this fixture to add them
        return Config(database_url=database_url, public_url="http://hub.test")

    async def _stored(self, client: TestClient) -> int:
        """Events of the touch point recorded, once everything the hub journaled is (a plugin's
        route may acknowledge events before they are recorded, through ``accept``)."""
        hub: Hub = client.app[HUB]
        if hub.journal is not None:
            assert await hub.processed_after(hub.journal.head, 30.0), "the journal was not processed within 30 s"
        return int(
            await hub.store.read(
                lambda conn: conn.execute(
                    sa.select(sa.func.count()).select_from(events).where(events.c.touchpoint == self.touchpoint)
                ).scalar_one()
            )
        )

    async def _key(self, make_key: Any) -> str:
        return str(await make_key(f"touchpoint:{self.touchpoint}"))

    def _registration(self, client: TestClient) -> TouchPoint:
        tp = client.app[HUB].registrations.touchpoints.get(self.touchpoint)
        assert tp is not None, (
            f"no touch point {self.touchpoint!r} is registered: implement prm_touchpoints and yield "
            f"TouchPoint(name={self.touchpoint!r}, ...), and register the plugin through the 'prm' entry point "
            "group (or list it in `plugins`)"
        )
        return tp

    # ---- the checks ------------------------------------------------------------------------

    async def test_registration_is_valid(self, hub_client: TestClient) -> None:
        assert self.touchpoint, "set `touchpoint = '<name>'` on the conformance class"
        tp = self._registration(hub_client)
        assert tp.description, "give the TouchPoint a description: operators read it in GET /v1/touchpoints"
        for route in tp.routes:
            assert getattr(route, "path", "").startswith("/"), f"route {route!r} needs an absolute path"

    async def test_own_routes_refuse_requests_without_credentials(self, hub_client: TestClient) -> None:
        tp = self._registration(hub_client)
        before = await self._stored(hub_client)
        adapters = [a for a in hub_client.app[HUB].registrations.adapters if a.touchpoint == self.touchpoint]
        for route in [*tp.routes, *(r for a in adapters for r in a.routes)]:
            method = getattr(route, "method", "GET")
            if method not in _WRITE_METHODS:
                continue
            path = route.path.replace("{", "").replace("}", "")
            resp = await hub_client.request(method, path, json={"events": [self.event(1)]})
            assert resp.status >= 400, (
                f"{method} {route.path} answered {resp.status} without credentials: every route that writes must "
                "check a scoped key (prm_core.plugin.require) or the vendor's signature, and answer 401"
            )
            assert _error_body(await resp.json(content_type=None)), (
                f"{method} {route.path} must answer errors as JSON "
                '{"error": {"code", "message"}} (raise prm_core.plugin.ApiError)'
            )
        assert await self._stored(hub_client) == before, "a refused request wrote events: check before writing"

    async def test_refuses_missing_and_forged_credentials(self, hub_client: TestClient) -> None:
        before = await self._stored(hub_client)
        missing = await self.send_events(hub_client, None, [self.event(1)])
        assert missing.status == 401, f"without credentials the touch point answered {missing.status}, not 401"
        forged = await self.forge(hub_client, [self.event(2)])
        assert forged.status == 401, (
            f"with a forged key or signature the touch point answered {forged.status}, not 401: "
            "verify signatures with the vendor's library, in constant time"
        )
        assert await self._stored(hub_client) == before, "a refused request wrote events: check before writing"

    async def test_ingest_is_idempotent_on_the_event_id(self, hub_client: TestClient, make_key: Any) -> None:
        key = await self._key(make_key)
        before = await self._stored(hub_client)
        first = await self.send_events(hub_client, key, [self.event(1), self.event(2)])
        assert first.status == 200, f"a valid batch was answered {first.status}: {await first.text()}"
        replay = await self.send_events(hub_client, key, [self.event(1), self.event(2)])
        assert replay.status == 200, f"a replayed batch was answered {replay.status}: a replay must be acknowledged"
        assert await self._stored(hub_client) == before + 2, (
            "replaying the same event ids stored them again: derive each event's id from the vendor's own "
            "message id so retries carry the same id"
        )

    async def test_malformed_input_gets_a_4xx_json_error_and_writes_nothing(
        self, hub_client: TestClient, make_key: Any
    ) -> None:
        key = await self._key(make_key)
        before = await self._stored(hub_client)
        for label, body in (
            ("malformed JSON", b"{this is not json"),
            ("a JSON array", b"[1, 2, 3]"),
            ("an event without an id", json.dumps({"events": [{"type": "x"}]}).encode()),
        ):
            resp = await self.send_raw(hub_client, key, body)
            assert 400 <= resp.status < 500, f"{label} was answered {resp.status}; answer 400 or 422"
            assert _error_body(await resp.json(content_type=None)), f"{label}: the error must be a JSON error body"
        oversize = await self.send_raw(hub_client, key, b'{"events": [' + b" " * MAX_BODY_BYTES + b"]}")
        assert oversize.status == 413, f"a body over {MAX_BODY_BYTES} bytes was answered {oversize.status}, not 413"
        assert await self._stored(hub_client) == before, "invalid input wrote events: validate everything first"

    async def test_a_request_is_answered_within_budget_when_a_provider_is_slow(
        self, hub_client: TestClient, make_key: Any
    ) -> None:
        if not self.answers_requests:
            pytest.skip("this touch point declares answers_requests = False")
        tp = self._registration(hub_client)
        key = await self._key(make_key)
        started = time.monotonic()
        resp = await self.send_request(hub_client, key, self.event(3, type="info.request"))
        elapsed_ms = (time.monotonic() - started) * 1000
        assert resp.status == 200, f"a request was answered {resp.status}: {await resp.text()}"
        assert elapsed_ms <= tp.budget_ms + self.budget_slack_ms, (
            f"the answer took {elapsed_ms:.0f} ms against a budget of {tp.budget_ms} ms: never await value "
            "delivery beyond the deadline; use Hub.request, which degrades"
        )
        body = await resp.json(content_type=None)
        if isinstance(body, dict) and "degraded" in body:
            assert f"value:{SLOW_PROVIDER}" in body["degraded"], (
                "the slow value provider is not named in `degraded`: pass the answer's degraded list through"
            )

    async def test_no_personal_data_in_the_logs(self, hub_client: TestClient, make_key: Any, log_capture: Any) -> None:
        key = await self._key(make_key)
        await self.send_events(hub_client, key, [self.event(4)])
        await self.send_raw(hub_client, key, json.dumps({"events": [{"id": PERSONAL_DATA["email"]}]}).encode())
        if self.answers_requests:
            await self.send_request(hub_client, key, self.event(5, type="info.request"))
        text = log_capture.text
        assert text, "nothing was logged at debug level: the check cannot see the logs"
        leaked = [name for name, value in PERSONAL_DATA.items() if value in text or value.lstrip("+") in text]
        assert not leaked, (
            f"personal data ({', '.join(leaked)}) appeared in the logs: log identifiers and counts, never payloads, "
            "and name personal fields so prm_core.logs redacts them"
        )
