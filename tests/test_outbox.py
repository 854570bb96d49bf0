"""The outbox's own rules: backoff and Retry-After, giving up, fencing of a taken-over claim,
and the per-partner circuit breaker, against real partner servers and both databases."""

from __future__ import annotations

import asyncio
import base64
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from prm_partner.client import PartnerClient, retry_after_s
from prm_partner.settings import PartnerSettings, partner_settings
from prm_tmf.simulators import StockSimulator

from prm_core import hookimpl
from prm_core.config import Config
from prm_core.errors import ConfigError
from prm_core.model import FulfillmentRequest, FulfillmentResult, Partner
from prm_core.outbox import Claim, RetryLater, backoff_s
from prm_core.store.tables import events, outbox

T0 = "2026-11-23T08:00:00Z"


def secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


async def eventually(check: Any, within_s: float = 15.0) -> Any:
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


# ---- the schedule -------------------------------------------------------------------------------


def test_backoff_grows_with_jitter_up_to_the_cap_and_never_before_retry_after():
    delays = [backoff_s(n, None, base_s=1.0, cap_s=60.0) for n in range(1, 9) for _ in range(20)]
    assert all(0.5 <= d <= 60.0 for d in delays)
    first = [backoff_s(1, None, base_s=1.0, cap_s=60.0) for _ in range(50)]
    sixth = [backoff_s(6, None, base_s=1.0, cap_s=60.0) for _ in range(50)]
    assert max(first) <= 1.0 < min(sixth)
    assert len(set(sixth)) > 1  # jittered: requests queued together do not come back together
    assert all(backoff_s(1, 30.0, base_s=1.0, cap_s=60.0) >= 30.0 for _ in range(20))


def test_retry_after_is_read_as_seconds_or_an_http_date():
    assert retry_after_s("7") == 7.0
    assert retry_after_s(None) is None and retry_after_s("soon") is None
    later = (datetime.now(tz=UTC) + timedelta(seconds=120)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 100 < (retry_after_s(later) or 0) <= 120


def test_partner_config_is_validated_naming_the_key():
    good = {"role": "inventory", "protocol": "tmf687", "url": "http://127.0.0.1:1/x", "secret": secret()}
    (settings,) = partner_settings(Config(raw={"partners": {"supplier": good}})).values()
    assert settings == PartnerSettings("supplier", "inventory", "tmf687", "http://127.0.0.1:1/x", good["secret"], 800)
    for key, bad in [("protocol", "soap"), ("url", "ftp://x"), ("secret", "hunter2"), ("timeout_ms", 0), ("role", "")]:
        with pytest.raises(ConfigError, match=rf"\[partners.supplier\].{key}"):
            partner_settings(Config(raw={"partners": {"supplier": {**good, key: bad}}}))
    with pytest.raises(ConfigError, match=r"shorter than \[outbox\].lease_s"):
        partner_settings(Config(raw={"partners": {"supplier": {**good, "timeout_ms": 5000}}, "outbox": {"lease_s": 5}}))


# ---- giving up, and the hook -----------------------------------------------------------------------


class Flaky:
    """Plans one notice per request for partner ``flaky``, which fails ``failures`` times."""

    __name__ = "flaky"

    def __init__(self, failures: int, retry_after_s: float | None = None) -> None:
        self.failures, self.retry_after_s = failures, retry_after_s
        self.keys: list[str] = []
        self.updates: list[Any] = []

    @hookimpl
    def prm_partners(self, config):
        yield Partner(name="flaky", role="notification")

    @hookimpl
    def prm_plan_fulfillment(self, request):
        if request.event.event.type == "notice":
            yield FulfillmentRequest(id="n-" + request.event.event.id, partner="flaky", action="notify", customer_id="")

    @hookimpl
    def prm_fulfill(self, request):
        if request.partner == "flaky":
            return self.call(request)
        return None

    async def call(self, request: FulfillmentRequest) -> FulfillmentResult:
        self.keys.append(request.idempotency_key)
        if len(self.keys) <= self.failures:
            raise RetryLater("partner busy", self.retry_after_s)
        return FulfillmentResult(request.id, "flaky", "confirmed", {"sent": True})

    @hookimpl
    def prm_fulfillment_updated(self, fulfillment):
        self.updates.append(fulfillment)


def config_for(database_url: str, **outbox_cfg: Any) -> Config:
    return Config(
        database_url=database_url,
        raw={"outbox": {"poll_ms": 30, "retry_base_ms": 20, "retry_cap_s": 0.1, **outbox_cfg}},
    )


@pytest.fixture
def flaky() -> Flaky:
    return Flaky(failures=2)


@pytest.fixture
def hub_config(database_url) -> Config:
    return config_for(database_url, max_attempts=10)


@pytest.fixture
def hub_plugins(flaky):
    return [flaky]


def notice(event_id: str = "n1") -> dict[str, Any]:
    return {"id": event_id, "type": "notice", "occurred_at": T0, "identities": {"email": "bo@example.com"}}


async def test_retries_keep_the_idempotency_key_and_end_confirmed(hub, flaky):
    (request,) = hub.parse_events(notice(), "web")
    answer = await hub.request(request)
    assert answer.delivery.degraded == ("partner:flaky",)
    (done,) = await eventually(lambda: [u for u in flaky.updates if u.status == "confirmed"])
    assert len(flaky.keys) == 3 and len(set(flaky.keys)) == 1
    assert done.data == {"sent": True} and done.role == "notification"
    (row,) = await hub.store.read(lambda c: list(c.execute(sa.select(outbox))))
    assert (row.status, row.attempts, row.last_error, row.next_attempt_at) == ("confirmed", 3, None, None)


async def test_after_max_attempts_the_request_fails_and_says_so_in_the_dialogue(database_url):
    from prm_core.hub import Hub

    flaky = Flaky(failures=100)
    async with Hub.open(config_for(database_url, max_attempts=3), plugins=[flaky], autoload=True) as hub:
        (request,) = hub.parse_events(notice(), "web")
        answer = await hub.request(request)
        (failed,) = await eventually(lambda: [u for u in flaky.updates if u.status == "failed"])
        assert len(flaky.keys) == 3
        assert failed.data == {"error": "partner busy"}
        recorded = await hub.store.read(
            lambda c: list(c.execute(sa.select(events.c.type, events.c.dialogue_id, events.c.data)))
        )
        (event,) = [e for e in recorded if e.type == "fulfillment.updated"]
        assert event.dialogue_id == answer.recorded.dialogue_id and event.data["status"] == "failed"
        await asyncio.sleep(0.2)
        assert len(flaky.keys) == 3  # given up: not tried again


async def test_retry_after_is_honoured(database_url):
    from prm_core.hub import Hub

    flaky = Flaky(failures=1, retry_after_s=3600)
    async with Hub.open(config_for(database_url), plugins=[flaky], autoload=True) as hub:
        (request,) = hub.parse_events(notice(), "web")
        await hub.request(request)
        (row,) = await eventually(lambda: hub.store.read(lambda c: list(c.execute(sa.select(outbox)))))
        await eventually(lambda: hub.store.read(lambda c: c.execute(sa.select(outbox.c.last_error)).scalar()))
        (row,) = await hub.store.read(lambda c: list(c.execute(sa.select(outbox))))
        assert row.next_attempt_at > datetime.now(tz=UTC) + timedelta(minutes=55)
        await asyncio.sleep(0.2)
        assert len(flaky.keys) == 1


async def test_a_claim_taken_over_cannot_overwrite_the_newer_attempt(hub, flaky):
    flaky.failures = 0
    await hub.outbox.stop()  # this test plays both dispatchers itself
    (request,) = hub.parse_events(notice(), "web")
    answer = await hub.request(request)
    assert answer.delivery.fulfillments  # the first attempt (claim 1) answered and is settling
    await eventually(lambda: hub.store.read(lambda c: c.execute(sa.select(outbox.c.status)).scalar() == "confirmed"))
    # the lease ran out before that hub wrote down its outcome: another dispatcher claims it
    await hub.store.write(
        lambda c: c.execute(outbox.update().values(status="pending", next_attempt_at=datetime.now(tz=UTC)))
    )
    (claim,) = await hub.outbox.claim(5)
    assert claim.attempt == 2
    stale = Claim(claim.row_id, 1, claim.request)
    assert await hub.outbox._update(stale, {"status": "failed"}) is None
    told = len(flaky.updates)
    assert (await hub.outbox.attempt(claim)).status == "confirmed"
    # the newer claim's outcome is told once, with the row as that claim left it
    (update,) = flaky.updates[told:]
    assert (update.status, update.outbox_id) == ("confirmed", claim.row_id)
    # the stale claim's late outcome is recorded in the dialogue but neither changes the row
    # nor reaches prm_fulfillment_updated
    await hub.outbox._settle(Claim(claim.row_id, 1, claim.request, "web", answer.recorded.dialogue_id),
                             FulfillmentResult(claim.request.id, claim.request.partner, "rejected"))  # fmt: skip
    row = await hub.store.read(lambda c: c.execute(sa.select(outbox)).one())
    assert (row.status, row.attempts) == ("confirmed", 2)
    assert len(flaky.updates) == told + 1
    stored = await hub.store.read(lambda c: c.execute(sa.select(events.c.event_id)).scalars().all())
    assert f"fulfillment:{claim.row_id}:rejected" in stored


# ---- the circuit breaker ---------------------------------------------------------------------------


async def test_the_breaker_opens_after_repeated_failures_and_spares_the_partner():
    sim = StockSimulator(secret(), stock={"p": 1})
    await sim.serve()
    try:
        sim.down, sim.retry_after_s = True, 0
        client = PartnerClient(
            PartnerSettings("supplier", "inventory", "tmf687", sim.url, sim.secret, 2000), fail_max=2
        )
        req = FulfillmentRequest(
            "r1", "supplier", "check_stock", "cus_1", payload={"parts": ["p"]}, idempotency_key="k1"
        )
        for _ in range(2):
            with pytest.raises(RetryLater):
                await client.fulfill(req)
        with pytest.raises(RetryLater, match="circuit open"):
            await client.fulfill(req)
        assert sim.outage_answers == 2  # the third was not sent
        sim.down = False
        client.breaker.half_open()  # what the reset timeout does after reset_s
        result = await client.fulfill(req)
        assert result.status == "confirmed" and sim.delivered == 1
    finally:
        await sim.stop()


async def test_a_partner_refusing_our_signature_rejects_without_retrying():
    sim = StockSimulator(secret(), stock={"p": 1})
    await sim.serve()
    try:
        client = PartnerClient(PartnerSettings("supplier", "inventory", "tmf687", sim.url, secret(), 2000))
        req = FulfillmentRequest(
            "r1", "supplier", "check_stock", "cus_1", payload={"parts": ["p"]}, idempotency_key="k1"
        )
        result = await client.fulfill(req)
        assert (result.status, result.data) == ("rejected", {"http_status": 401})
        assert sim.refused_signatures == 1 and sim.delivered == 0
    finally:
        await sim.stop()
