"""The outbox's rules without partners or a database: when it tries again, by its
configuration; the rows a planned event adds; the statuses a request can have."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prm_partner.callbacks import parse_callback

from prm_core.config import Config
from prm_core.model import Event, FulfillmentRequest
from prm_core.outbox import Outbox, PlannedEvent, PlannedFulfillment, RetryLater, backoff_s, outbox_rows

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    random.seed(20261123)  # the jitter, reproducible


def delays(
    attempt: int, retry_after_s: float | None = None, *, base_s: float = 1.0, cap_s: float = 60.0
) -> list[float]:
    return [backoff_s(attempt, retry_after_s, base_s=base_s, cap_s=cap_s) for _ in range(300)]


@pytest.mark.parametrize(("attempt", "ceiling"), [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (30, 60.0)])
def test_a_retry_waits_between_half_and_all_of_the_doubling_delay_up_to_the_cap(attempt: int, ceiling: float) -> None:
    drawn = delays(attempt)
    assert all(ceiling / 2 <= d <= ceiling for d in drawn)
    # full jitter spreads the retries over the whole interval
    assert min(drawn) < ceiling * 0.55 and max(drawn) > ceiling * 0.95


def test_the_delay_follows_the_configured_base() -> None:
    assert all(0.25 <= d <= 0.5 for d in delays(1, base_s=0.5, cap_s=300.0))
    assert all(2.0 <= d <= 4.0 for d in delays(4, base_s=0.5, cap_s=300.0))
    assert all(150.0 <= d <= 300.0 for d in delays(20, base_s=0.5, cap_s=300.0))


def test_an_attempt_numbered_zero_waits_like_the_first() -> None:
    assert all(0.5 <= d <= 1.0 for d in delays(0))


def test_never_sooner_than_the_partners_retry_after() -> None:
    assert delays(1, 45.0) == [45.0] * 300
    assert all(d >= 3.0 for d in delays(3, 3.0))  # inside the interval [2, 4]: the floor lifts only the low draws
    assert any(d > 3.0 for d in delays(3, 3.0))
    assert all(0.5 <= d <= 1.0 for d in delays(1, 0.0))


class _Hub:
    def __init__(self, outbox: dict[str, Any] | None) -> None:
        self.config = Config(raw={"outbox": outbox} if outbox is not None else {})


def test_the_documented_defaults() -> None:
    box = Outbox.from_config(_Hub(None))  # type: ignore[arg-type]
    assert (box.poll_s, box.lease_s, box.base_s, box.cap_s, box.max_attempts) == (1.0, 30.0, 0.5, 300.0, 20)


def test_the_configured_values_in_their_units() -> None:
    cfg = {"poll_ms": 250, "lease_s": 12, "retry_base_ms": 40, "retry_cap_s": 9.5, "max_attempts": 3}
    box = Outbox.from_config(_Hub(cfg))  # type: ignore[arg-type]
    assert (box.poll_s, box.lease_s, box.base_s, box.cap_s, box.max_attempts) == (0.25, 12.0, 0.04, 9.5, 3)


def planned(claimed_until: datetime | None, *requests: FulfillmentRequest) -> PlannedEvent:
    return PlannedEvent(
        id="turn-1",
        type="service.requested",
        occurred_at=NOW,
        touchpoint="web",
        planned=tuple(PlannedFulfillment(r, role=f"role-of-{r.partner}") for r in requests),
        claimed_until=claimed_until,
    )


BOOK = FulfillmentRequest(id="r-1", partner="fieldservice", action="book", customer_id="", payload={"slot": "am"})
NOTE = FulfillmentRequest(id="r-2", partner="notes", action="notify", customer_id="", idempotency_key="k-2")


def test_a_planned_event_adds_one_pending_row_per_request() -> None:
    rows = outbox_rows(planned(None, BOOK, NOTE), "cus_1", "dlg_1", NOW)
    assert [(r["request_id"], r["partner"], r["role"], r["action"]) for r in rows] == [
        ("r-1", "fieldservice", "role-of-fieldservice", "book"),
        ("r-2", "notes", "role-of-notes", "notify"),
    ]
    for row in rows:
        assert (row["customer_id"], row["dialogue_id"], row["touchpoint"], row["cause_event_id"]) == (
            "cus_1", "dlg_1", "web", "turn-1",
        )  # fmt: skip
        assert (row["status"], row["result"], row["partner_ref"], row["last_error"]) == ("pending", {}, None, None)
        assert row["requested_at"] == row["updated_at"] == NOW
        assert row["id"].startswith("ful")
    # a partner sees the request id as the idempotency key unless the planner chose one
    assert [r["idempotency_key"] for r in rows] == ["r-1", "k-2"]
    assert rows[0]["payload"] == {"slot": "am"}
    assert rows[0]["id"] != rows[1]["id"]


def test_unclaimed_rows_are_due_now_for_the_worker() -> None:
    (row,) = outbox_rows(planned(None, BOOK), "cus_1", "dlg_1", NOW)
    assert (row["attempts"], row["next_attempt_at"]) == (0, NOW)


def test_rows_born_claimed_by_the_caller_count_its_attempt_and_wait_out_its_lease() -> None:
    lease = NOW + timedelta(seconds=30)
    (row,) = outbox_rows(planned(lease, BOOK), "cus_1", "dlg_1", NOW)
    assert (row["attempts"], row["next_attempt_at"]) == (1, lease)


def test_an_ordinary_event_adds_no_row() -> None:
    assert outbox_rows(Event(id="e1", type="page", occurred_at=NOW, touchpoint="web"), "cus_1", "dlg_1", NOW) == []
    assert outbox_rows(planned(None), "cus_1", "dlg_1", NOW) == []


@pytest.mark.parametrize("status", ["pending", "confirmed", "rejected", "failed", "completed"])
def test_a_partner_may_call_back_with_each_status_a_request_can_have(status: str) -> None:
    # a CloudEvents partner's callback is read against the outbox's statuses
    note = parse_callback("cloudevents", {"request_id": "r-1", "status": status, "data": {"technician": "T-9"}})
    assert note is not None
    assert (note.ref, note.status, dict(note.data)) == ("r-1", status, {"technician": "T-9"})


def test_a_callback_with_a_status_no_request_can_have_names_no_update() -> None:
    assert parse_callback("cloudevents", {"request_id": "r-1", "status": "done"}) is None


def test_a_retry_later_reads_as_its_reason() -> None:
    busy = RetryLater("partner busy (503)", 30.0)
    assert (str(busy), busy.reason, busy.retry_after_s) == ("partner busy (503)", "partner busy (503)", 30.0)
    assert RetryLater("timeout").retry_after_s is None
