"""Prometheus metrics, one registry per application (so embedded hubs and tests don't collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["HubMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_RATIO_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.5, 2.0)


class HubMetrics:
    """The hub's counters and histograms, in their own registry."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.events = Counter("prm_events", "Events recorded, by touch point", ["touchpoint"], registry=r)
        self.duplicates = Counter(
            "prm_event_duplicates", "Replayed events acknowledged unchanged", ["touchpoint"], registry=r
        )
        self.request_seconds = Histogram(
            "prm_request_seconds", "Time to answer a request, by touch point", ["touchpoint"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.budget_ratio = Histogram(
            "prm_request_budget_ratio", "Answer time as a share of the touch point's budget", ["touchpoint"],
            buckets=_RATIO_BUCKETS, registry=r,
        )  # fmt: skip
        self.degraded = Counter(
            "prm_degraded", "Parts left out of an answer for lateness or failure", ["touchpoint", "part"], registry=r
        )
        self.http = Histogram(
            "prm_http_request_seconds", "HTTP requests by route and status", ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.rate_limited = Counter(
            "prm_rate_limited", "Requests refused with 429, by route (logged a line per key per interval)", ["route"],
            registry=r,
        )  # fmt: skip
        self.pending = Gauge("prm_ingest_pending_events", "Events waiting for the group commit", registry=r)
        self.journal_depth = Gauge(
            "prm_journal_depth", "Events journaled and not yet processed ([ingest] journal = true)", registry=r
        )
        self.journal_lag = Gauge(
            "prm_journal_lag_seconds", "Age of the oldest journaled event not yet processed", registry=r
        )
        self.journal_rejected = Gauge(
            "prm_journal_rejected_events", "Journaled events the processor could not record (logged)", registry=r
        )
