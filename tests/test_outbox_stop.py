"""The outbox worker's share of partner calls: at most 64 at once, every one of them used;
stopping the hub cancels the calls in flight, leaving their requests to be sent again; and
what a failed call leaves in the row and the log."""

from __future__ import annotations

import asyncio
import gc
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from prm_core import hookimpl
from prm_core.config import Config
from prm_core.model import FulfillmentRequest, FulfillmentResult, Partner
from prm_core.outbox import Claim, Outbox, RetryLater
from prm_core.store.tables import outbox

# the bound the worker keeps on partner calls in flight in one hub process (docs/partners.md)
AT_ONCE = 64


class Held:
    """Partner ``held``: every call waits until :meth:`release` lets it through; counts the calls running."""

    __name__ = "held"

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}  # a call's own way through, by request id
        self.open = False
        self.running = self.most = self.calls = self.cancelled = 0
        self.error: Exception | None = None  # raised by every call instead of waiting, when set
        self.cleanup_s = 0.0
        self.wound_down = 0

    @hookimpl
    def prm_partners(self, config):
        yield Partner(name="held", role="notification")

    @hookimpl
    def prm_fulfill(self, request):
        if request.partner == "held":
            return self.call(request)
        return None

    async def call(self, request: FulfillmentRequest) -> FulfillmentResult:
        self.calls += 1
        if self.error is not None:
            raise self.error
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            gate = self.gates.setdefault(request.id, asyncio.Event())
            if self.open:
                gate.set()
            await gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            await asyncio.sleep(self.cleanup_s)  # winding down, as a client closing its connection
            self.wound_down += 1
            raise
        finally:
            self.running -= 1
        return FulfillmentResult(request.id, "held", "confirmed", {})

    def release(self, request_id: str | None = None) -> None:
        """Let one call through, or (no id) every call, now and later."""
        if request_id is None:
            self.open = True
        for rid, gate in self.gates.items():
            if request_id in (None, rid):
                gate.set()


@pytest.fixture
def held() -> Held:
    return Held()


@pytest.fixture
def hub_config(database_url) -> Config:
    # a failed call is tried again 30-60 s later: never within a test
    return Config(database_url=database_url, raw={"outbox": {"poll_ms": 20, "retry_base_ms": 60_000}})


@pytest.fixture
def hub_plugins(held):
    return [held]


async def eventually(check: Any, within_s: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def due_requests(hub, count: int) -> None:
    """Requests due now, as a hub that stopped before sending them leaves them (their touch
    point no longer configured, so their outcome goes to the row and the hook only)."""
    now = datetime.now(tz=UTC)
    rows = [
        {
            "id": f"ob-{n:03}",
            "request_id": f"r-{n:03}",
            "idempotency_key": f"r-{n:03}",
            "partner": "held",
            "role": "notification",
            "action": "notify",
            "customer_id": f"cus-{n:03}",
            "touchpoint": "retired-kiosk",
            "dialogue_id": f"dlg-{n:03}",
            "cause_event_id": f"turn-{n:03}",
            "payload": {},
            "status": "pending",
            "result": {},
            "partner_ref": None,
            "attempts": 0,
            "last_error": None,
            "next_attempt_at": now,
            "requested_at": now,
            "updated_at": now,
        }
        for n in range(count)
    ]
    await hub.store.write(lambda c: c.execute(outbox.insert(), rows))
    hub.outbox.wake()


async def rows(hub) -> list[Any]:
    return await hub.store.read(lambda c: list(c.execute(sa.select(outbox).order_by(outbox.c.id))))


async def test_the_worker_calls_partners_64_at_a_time_and_the_rest_when_calls_end(hub, held, log_capture):
    await due_requests(hub, AT_ONCE + 16)
    await eventually(lambda: held.running == AT_ONCE)
    await asyncio.sleep(0.3)  # many polls: a worker with room would claim more by now
    assert (held.running, held.calls, held.most) == (AT_ONCE, AT_ONCE, AT_ONCE)
    claimed = [r for r in await rows(hub) if r.attempts == 1]
    assert len(claimed) == AT_ONCE  # the others stay unclaimed, free for another hub process
    held.release(claimed[0].request_id)  # one call ends: its room goes to the next due request
    await eventually(lambda: held.calls == AT_ONCE + 1, within_s=5)
    await asyncio.sleep(0.3)
    assert (held.running, held.calls) == (AT_ONCE, AT_ONCE + 1)
    held.release()
    done = await eventually(lambda: _all_confirmed(hub))
    assert len(done) == AT_ONCE + 16 and {r.attempts for r in done} == {1}
    assert held.most == AT_ONCE and held.calls == AT_ONCE + 16
    assert lines(log_capture, "fulfillment attempt failed") == []  # every call answered: no warning


async def _all_confirmed(hub) -> list[Any]:
    found = await rows(hub)
    return found if all(r.status == "confirmed" for r in found) else []


async def test_stopping_cancels_the_calls_in_flight_and_leaves_their_requests_to_be_sent_again(hub, held, log_capture):
    held.cleanup_s = 0.1
    await due_requests(hub, 3)
    await eventually(lambda: held.running == 3)
    await asyncio.wait_for(hub.outbox.stop(), 5)  # a call waiting for its partner does not hold the stop
    # but the stop waits for the calls to wind down: the hub closes its store next
    assert (held.cancelled, held.wound_down, held.running) == (3, 3, 0)
    # and the worker itself has ended, not only been asked to: nothing of the outbox runs on
    assert [t for t in asyncio.all_tasks() if t.get_name() == "prm-outbox" and not t.done()] == []
    held.release()
    await asyncio.sleep(0.2)
    assert held.calls == 3  # stopped: nothing claimed or sent any more
    left = await rows(hub)
    # still pending, under the stopped attempt's lease: another dispatcher sends them once it runs out
    assert [(r.status, r.attempts, r.result) for r in left] == [("pending", 1, {})] * 3
    assert all(r.next_attempt_at is not None for r in left)
    assert lines(log_capture, "fulfillment attempt failed") == []  # a call cut short by a stop is no failure


async def test_waking_the_worker_sends_due_requests_before_the_next_poll(database_url, held):
    from prm_core.hub import Hub

    config = Config(database_url=database_url, raw={"outbox": {"poll_ms": 600_000}})
    async with Hub.open(config, plugins=[held]) as hub:
        await asyncio.sleep(0.1)  # the worker has looked once, found nothing, and waits for its next poll
        await due_requests(hub, 3)  # wakes it
        await eventually(lambda: held.running == 3, within_s=5)
        held.release()
        await eventually(lambda: _all_confirmed(hub), within_s=5)


async def test_a_worker_woken_once_claims_once_and_then_waits_for_its_next_poll(database_url, held, monkeypatch):
    from prm_core.hub import Hub

    claim = Outbox.claim
    rounds: list[int] = []

    async def counted(self: Outbox, limit: int) -> Any:
        rounds.append(limit)
        return await claim(self, limit)

    monkeypatch.setattr(Outbox, "claim", counted)
    held.release()
    config = Config(database_url=database_url, raw={"outbox": {"poll_ms": 600_000}})
    async with Hub.open(config, plugins=[held]) as hub:
        await eventually(lambda: rounds)  # the worker has looked once and waits for its next poll
        await due_requests(hub, 1)  # wakes it
        await eventually(lambda: _all_confirmed(hub), within_s=5)
        await asyncio.sleep(0.2)
        # the look as it started and the one its waking asked for: a worker that went on looking
        # (its wake left set, or no wait at all) claims again and again
        assert len(rounds) == 2


async def test_a_request_due_while_the_worker_looks_is_sent_at_once_not_at_the_next_poll(
    database_url, held, monkeypatch
):
    from prm_core.hub import Hub

    claim = Outbox.claim
    looked, go_on = asyncio.Event(), asyncio.Event()
    rounds: list[int] = []

    async def held_back(self: Outbox, limit: int) -> Any:
        found = await claim(self, limit)
        rounds.append(len(found))
        if len(rounds) == 1:  # the worker's first look has found nothing: hold it before it waits
            looked.set()
            await go_on.wait()
        return found

    monkeypatch.setattr(Outbox, "claim", held_back)
    held.release()
    config = Config(database_url=database_url, raw={"outbox": {"poll_ms": 600_000}})
    async with Hub.open(config, plugins=[held]) as hub:
        await asyncio.wait_for(looked.wait(), 5)
        await due_requests(hub, 1)  # due, and the worker woken, while its look is still under way
        go_on.set()
        # the wake is kept for the wait that follows the look: the worker looks again at once
        await eventually(lambda: _all_confirmed(hub), within_s=5)
        assert rounds == [0, 1]


async def test_a_backlog_is_claimed_round_after_round_without_a_pause(database_url, held, monkeypatch):
    from prm_core.hub import Hub

    # what the worker sleeps between rounds: only a yield to the loop (0 s), never a pause
    paused: list[float] = []
    sleep = asyncio.sleep

    async def worker_sleep(delay: float, *args: Any, **kwargs: Any) -> Any:
        task = asyncio.current_task()
        if task is not None and task.get_name() == "prm-outbox":
            paused.append(delay)
        return await sleep(delay, *args, **kwargs)

    monkeypatch.setattr(asyncio, "sleep", worker_sleep)
    # three full rounds of claims (16 each); the worker polls only every 10 minutes, so
    # whatever it claims it claims by going on at once after a full round
    config = Config(database_url=database_url, raw={"outbox": {"poll_ms": 600_000}})
    async with Hub.open(config, plugins=[held]) as hub:
        await sleep(0.1)  # the worker has looked once and waits for its next poll
        await due_requests(hub, 3 * hub.outbox.batch)  # wakes it
        await eventually(lambda: held.calls == 3 * hub.outbox.batch, within_s=10)
        assert len(paused) >= 2 and set(paused) == {0}, paused
        held.release()
        await eventually(lambda: _all_confirmed(hub), within_s=5)


async def test_stopping_an_idle_outbox_ends_its_worker_before_returning(hub):
    assert [t for t in asyncio.all_tasks() if t.get_name() == "prm-outbox"]  # started with the hub
    await asyncio.sleep(0.05)  # waiting for its next poll
    await hub.outbox.stop()
    assert [t for t in asyncio.all_tasks() if t.get_name() == "prm-outbox" and not t.done()] == []


def lines(log_capture, message: str) -> list[dict[str, Any]]:
    return [e for e in log_capture.entries if e.get("event") == message]


async def test_a_call_that_raises_is_tried_again_and_logged_by_its_kind_never_its_message(hub, held, log_capture):
    held.error = RuntimeError("ann@example.com is unknown to us")
    before = datetime.now(tz=UTC)
    await due_requests(hub, 1)
    (row,) = await eventually(lambda: _failed_once(hub))
    assert (row.status, row.last_error, row.result) == ("pending", "RuntimeError", {})
    assert row.next_attempt_at > before + timedelta(seconds=29)  # tried again later, not at once

    def kinds() -> set[tuple[Any, ...]]:
        return {(e["level"], e.get("error"), e.get("reason")) for e in lines(log_capture, "fulfillment attempt failed")}

    # the row is saved before the failure is logged: wait for the log lines, then compare them whole
    await eventually(lambda: len(kinds()) >= 2)
    assert kinds() == {("warning", "RuntimeError", None), ("info", None, "RuntimeError")}
    (info,) = [e for e in lines(log_capture, "fulfillment attempt failed") if e["level"] == "info"]
    assert (info["partner"], info["attempt"]) == ("held", 1) and 30 <= info["retry_in_s"] <= 60
    assert "ann@example.com" not in log_capture.stream.getvalue()


async def test_a_partners_retry_later_keeps_its_reason_cut_and_its_delay(hub, held, log_capture):
    reason = "queue full " + "x" * 600
    held.error = RetryLater(reason, 3600)
    await due_requests(hub, 1)
    (row,) = await eventually(lambda: _failed_once(hub))
    assert row.last_error == reason[:500]
    wait_s = (row.next_attempt_at - datetime.now(tz=UTC)).total_seconds()
    assert 3500 < wait_s <= 3600
    # a retry planned is no new status: nothing in the change feed
    assert (await hub.feed.read(None, 1000, {"fulfillment.updated"})).changes == []
    (info,) = lines(log_capture, "fulfillment attempt failed")  # a partner asking to wait is no warning
    assert (info["level"], info["reason"], info["retry_in_s"]) == ("info", reason[:200], 3600.0)


async def test_a_retrys_delay_is_logged_to_the_millisecond(hub, held, log_capture):
    held.error = RetryLater("queue full", 1234.56789)  # later than any backoff of this hub (30-60 s)
    await due_requests(hub, 1)
    await eventually(lambda: _failed_once(hub))
    await eventually(lambda: lines(log_capture, "fulfillment attempt failed"))
    (info,) = lines(log_capture, "fulfillment attempt failed")
    assert info["retry_in_s"] == 1234.568


async def test_the_last_attempt_fails_the_request_with_the_reason(database_url, held, log_capture):
    from prm_core.hub import Hub

    reason = "gone for good " + "y" * 300
    held.error = RetryLater(reason)
    config = Config(database_url=database_url, raw={"outbox": {"poll_ms": 20, "max_attempts": 1}})
    async with Hub.open(config, plugins=[held]) as hub:
        await due_requests(hub, 1)
        (row,) = await eventually(lambda: _failed_once(hub, "failed"))
        assert (row.last_error, row.result, row.next_attempt_at) == (reason, {"error": reason[:200]}, None)
        (info,) = lines(log_capture, "fulfillment attempt failed")
        assert info["retry_in_s"] is None
        # the change feed tells it, once: the request failed
        updated = (await hub.feed.read(None, 1000, {"fulfillment.updated"})).changes
        assert [(c.data["fulfillment_id"], c.data["status"]) for c in updated] == [(row.request_id, "failed")]
        await asyncio.sleep(0.2)
        assert held.calls == 1


class Told:
    """Collects what ``prm_fulfillment_updated`` tells."""

    def __init__(self) -> None:
        self.updates: list[Any] = []

    @hookimpl
    def prm_fulfillment_updated(self, fulfillment):
        self.updates.append(fulfillment)


async def test_a_request_given_up_is_told_to_plugins_even_when_its_dialogue_event_fails(
    database_url, held, log_capture, monkeypatch
):
    from prm_core.hub import Hub

    async def broken(self: Outbox, fulfillment: Any) -> None:
        raise RuntimeError("the dialogue's event for ann@example.com")

    monkeypatch.setattr(Outbox, "_record", broken)
    held.error = RetryLater("gone")
    told = Told()
    config = Config(database_url=database_url, raw={"outbox": {"poll_ms": 20, "max_attempts": 1}})
    async with Hub.open(config, plugins=[held, told]) as hub:
        await due_requests(hub, 1)
        await eventually(lambda: told.updates)
        (row,) = await rows(hub)
    assert [(f.id, f.status) for f in told.updates] == [(row.request_id, "failed")]  # the row holds the truth
    (warning,) = lines(log_capture, "fulfillment event not recorded")
    assert (warning["level"], warning["partner"], warning["error"]) == ("warning", "held", "RuntimeError")
    assert "ann@example.com" not in log_capture.stream.getvalue()


async def test_a_failed_call_nobody_waited_for_is_not_reported_as_never_retrieved(hub, held, log_capture):
    """A customer who gave up does not await the dispatched call: its failure still counts as seen."""
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context["message"]))
    try:
        held.error = RuntimeError("partner down")
        request = FulfillmentRequest("r-gone", "held", "notify", "cus-1", idempotency_key="r-gone")
        hub.outbox.dispatch(Claim("ob-gone", 1, request))  # the future is dropped at once
        await eventually(lambda: lines(log_capture, "fulfillment claim was taken over"))  # no such row
        await asyncio.sleep(0.05)
        held.error = None  # nothing holds the failure but the dropped future
        gc.collect()
        await asyncio.sleep(0)
        assert held.calls == 1
        assert reported == []
    finally:
        loop.set_exception_handler(None)


async def test_stopping_ends_the_wait_of_a_customer_for_a_call_in_flight(hub, held, log_capture):
    request = FulfillmentRequest("r-wait", "held", "notify", "cus-1", idempotency_key="r-wait")
    answered = hub.outbox.dispatch(Claim("ob-wait", 1, request))
    await eventually(lambda: held.running == 1)
    await asyncio.wait_for(hub.outbox.stop(), 5)
    assert answered.cancelled()  # the turn waiting on it ends with the hub instead of never
    await asyncio.sleep(0.05)  # the ended call's done callback has run
    assert lines(log_capture, "fulfillment attempt failed") == []  # a call cut short by a stop is no failure


async def test_a_dispatched_answer_is_recorded_once_its_turn_lets_it(hub, held):
    """The customer's turn gets the partner's answer at once; the row records it when the turn,
    having queued its own answer, releases the hold."""
    await hub.outbox.stop()  # this test dispatches, not the worker
    await due_requests(hub, 1)
    await hub.store.write(lambda c: c.execute(outbox.update().values(attempts=1)))  # born claimed
    request = FulfillmentRequest("r-000", "held", "notify", "cus-000", idempotency_key="r-000")
    hold = asyncio.Event()
    held.release()
    answered = hub.outbox.dispatch(Claim("ob-000", 1, request, "retired-kiosk", "dlg-000", "notification"), hold)
    assert (await asyncio.wait_for(answered, 5)).status == "confirmed"
    await asyncio.sleep(0.2)
    assert [r.status for r in await rows(hub)] == ["pending"], "recorded before the turn let it"
    hold.set()
    await eventually(lambda: _all_confirmed(hub), within_s=5)


async def test_a_retry_due_at_once_is_sent_at_once_not_at_the_next_poll(database_url, held):
    from prm_core.hub import Hub

    # no backoff: a failed call's retry is due as soon as it is scheduled; the worker polls only
    # every 10 minutes, so the retry is sent at once only because scheduling it wakes the worker
    config = Config(
        database_url=database_url, raw={"outbox": {"poll_ms": 600_000, "retry_base_ms": 0, "max_attempts": 10_000}}
    )
    async with Hub.open(config, plugins=[held]) as hub:
        await asyncio.sleep(0.1)  # the worker has looked once and waits for its next poll
        held.error = RuntimeError("a blip")
        await due_requests(hub, 1)
        await eventually(lambda: held.calls >= 1, within_s=5)
        held.error = None
        held.release()
        (row,) = await eventually(lambda: _all_confirmed(hub), within_s=5)
        assert row.attempts >= 2


async def test_an_answer_for_a_retired_touch_point_is_kept_in_the_row_and_told_to_plugins(database_url, held):
    from prm_core.hub import Hub

    told = Told()
    config = Config(database_url=database_url, raw={"outbox": {"poll_ms": 20}})
    async with Hub.open(config, plugins=[held, told]) as hub:
        held.release()
        await due_requests(hub, 1)  # its touch point, retired-kiosk, is no longer configured
        (row,) = await eventually(lambda: _all_confirmed(hub))
        await eventually(lambda: told.updates)
    assert [(f.id, f.status) for f in told.updates] == [(row.request_id, "confirmed")]


async def _failed_once(hub, status: str = "pending") -> list[Any]:
    found = await rows(hub)
    return found if all(r.last_error and r.status == status for r in found) else []


async def test_a_stopped_outbox_starts_again(hub, held):
    await hub.outbox.stop()
    hub.outbox.start()
    await due_requests(hub, 2)
    await eventually(lambda: held.running == 2, within_s=5)
    held.release()
    await eventually(lambda: _all_confirmed(hub), within_s=5)


async def test_a_claim_that_fails_is_logged_and_the_worker_goes_on(hub, held, log_capture, monkeypatch):
    claim = Outbox.claim
    failures = []

    async def flaky_claim(self: Outbox, limit: int) -> Any:
        if not failures:
            failures.append(limit)
            raise OSError("database away")
        return await claim(self, limit)

    monkeypatch.setattr(Outbox, "claim", flaky_claim)
    held.release()
    await due_requests(hub, 2)
    await eventually(lambda: _all_confirmed(hub), within_s=5)
    assert failures and held.calls == 2
    (warning,) = lines(log_capture, "outbox claim failed")
    assert (warning["level"], warning["error"]) == ("warning", "OSError")
