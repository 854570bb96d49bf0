"""Retention: ``[touchpoints.<tp>] retention_days`` purges a touch point's old events.

Events that occurred before the horizon are deleted in small transactions (so ingest is
never held up for long), then the touch point's dialogues whose last event is before it.
What aggregates need stays: metrics rows are kept current on ingest and are not recounted,
and consent decisions stay in force after their evidence event is purged.

It runs on a schedule inside ``prm serve`` (every ``[privacy] retention_interval_s``
seconds, an hour by default) and on demand as ``prm retention run``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection

from ..errors import ConfigError
from ..store.tables import dialogues, events, utcnow

if TYPE_CHECKING:
    from ..config import Config
    from ..hub import Hub

__all__ = ["retention_days", "retention_task", "run_retention"]

log = structlog.get_logger(__name__)
CHUNK = 1000
DEFAULT_INTERVAL_S = 3600.0


def retention_days(config: Config, touchpoints: list[str]) -> dict[str, int]:
    """``{touch point: days}`` for every registered touch point with a retention policy."""
    policy: dict[str, int] = {}
    for name in touchpoints:
        days = config.touchpoint(name).get("retention_days")
        if days is None:
            continue
        if isinstance(days, bool) or not isinstance(days, int) or days < 1:
            raise ConfigError(f"[touchpoints.{name}].retention_days must be a whole number of days >= 1, got {days!r}")
        policy[name] = days
    return policy


def _purge_events(conn: Connection, touchpoint: str, horizon: datetime) -> int:
    e = events.c
    seqs = sa.select(e.seq).where(e.touchpoint == touchpoint, e.occurred_at < horizon).limit(CHUNK)
    doomed = [r.seq for r in conn.execute(seqs)]
    if doomed:
        conn.execute(events.delete().where(e.seq.in_(doomed)))
    return len(doomed)


def _purge_dialogues(conn: Connection, touchpoint: str, horizon: datetime) -> int:
    d = dialogues.c
    q = sa.select(d.id).where(d.touchpoint == touchpoint, d.last_event_at < horizon).limit(CHUNK)
    ids = [r.id for r in conn.execute(q)]
    if ids:
        conn.execute(dialogues.delete().where(d.id.in_(ids)))
    return len(ids)


def _count_doomed(conn: Connection, touchpoint: str, horizon: datetime) -> dict[str, int]:
    e, d = events.c, dialogues.c
    return {
        "events": conn.scalar(sa.select(sa.func.count()).where(e.touchpoint == touchpoint, e.occurred_at < horizon))
        or 0,
        "dialogues": conn.scalar(
            sa.select(sa.func.count()).where(d.touchpoint == touchpoint, d.last_event_at < horizon)
        )
        or 0,
    }


async def run_retention(
    hub: Hub, *, now: datetime | None = None, dry_run: bool = False
) -> Mapping[str, dict[str, int]]:
    """Purge what every touch point's policy says is too old; returns what went, per touch point.

    With ``dry_run`` nothing is deleted: the counts are what a run now would purge."""
    now = now or utcnow()
    policy = retention_days(hub.config, hub.registrations.touchpoints.names())
    report: dict[str, dict[str, int]] = {}
    for tp, days in sorted(policy.items()):
        horizon = now - timedelta(days=days)
        if dry_run:
            report[tp] = await hub.store.read(partial(_count_doomed, touchpoint=tp, horizon=horizon))
            continue
        counts = {"events": 0, "dialogues": 0}
        for kind, purge in (("events", _purge_events), ("dialogues", _purge_dialogues)):
            while True:
                n = await hub.store.write(partial(purge, touchpoint=tp, horizon=horizon))
                counts[kind] += n
                if n < CHUNK:
                    break
        report[tp] = counts
        if any(counts.values()):
            log.info("retention purged", touchpoint=tp, days=days, **counts)
    return report


@contextlib.asynccontextmanager
async def retention_task(hub: Hub) -> AsyncIterator[asyncio.Task[None] | None]:
    """Run :func:`run_retention` every interval while inside; nothing when no policy is set."""
    if not retention_days(hub.config, hub.registrations.touchpoints.names()):
        yield None
        return
    interval = float(hub.config.section("privacy").get("retention_interval_s", DEFAULT_INTERVAL_S))
    if interval <= 0:
        raise ConfigError("[privacy].retention_interval_s must be positive")

    async def loop() -> None:
        while True:
            try:
                await run_retention(hub)
            except Exception as exc:  # a failed run is retried at the next interval, never fatal
                log.error("retention run failed", error=type(exc).__name__)
            await asyncio.sleep(interval)

    task = asyncio.create_task(loop(), name="prm-retention")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
