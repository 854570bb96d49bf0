"""The ingest path's group commit.

Every caller hands its events to one writer task and waits. The writer takes whatever
has queued up (up to ``max_batch`` events), records it all in one transaction, commits
(on SQLite, one fsync), and only then wakes each caller with its results. So an event is
durable before its 2xx, and a thousand concurrent one-event requests cost a few commits,
not a thousand.

The queue is bounded: past ``max_pending`` events waiting, callers get
:class:`~prm_core.errors.Overloaded` (503 with Retry-After) instead of memory growing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import structlog
from attrs import define, field

from .errors import InvalidInput, Overloaded, StoreUnavailable
from .model import Event, RecordedEvent
from .recording import BatchOutcome, IngestRules, record_batch
from .store import Store

__all__ = ["Ingestor", "group_commits"]

log = structlog.get_logger(__name__)


class _Batchable(Protocol):
    events: Sequence[Event]


async def group_commits(
    queue: asyncio.Queue[Any], max_batch: int, commit: Callable[[list[Any]], Awaitable[None]]
) -> None:
    """The writer task's loop: take what has queued up (up to ``max_batch`` events, a job
    at a time) and ``commit`` it together, until a ``None`` arrives; then commit what came in
    behind it one job at a time, so no caller is left waiting. Each job has ``events``."""
    stopping = False
    while not stopping:
        first: _Batchable | None = await queue.get()
        if first is None:
            break
        jobs = [first]
        size = len(first.events)
        while size < max_batch and not queue.empty():
            job = queue.get_nowait()
            if job is None:
                stopping = True
                break
            jobs.append(job)
            size += len(job.events)
        await commit(jobs)
    # drain whatever arrived while stopping so no caller is left waiting
    while not queue.empty():
        job = queue.get_nowait()
        if job is not None:
            await commit([job])


@define
class _Job:
    events: Sequence[Event]
    future: asyncio.Future[list[RecordedEvent]]


@define
class Ingestor:
    """One writer task per hub process; see the module docstring."""

    store: Store
    rules: IngestRules
    after_commit: Callable[[BatchOutcome], None]
    max_batch: int = 2000
    max_pending: int = 50_000
    _queue: asyncio.Queue[_Job | None] = field(init=False, factory=asyncio.Queue)
    _pending: int = field(init=False, default=0)
    _task: asyncio.Task[None] | None = field(init=False, default=None)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="prm-ingest-writer")

    async def stop(self) -> None:
        """Finish what is queued, then stop the writer."""
        if self._task is not None:
            self._queue.put_nowait(None)
            await self._task
            self._task = None

    @property
    def pending(self) -> int:
        return self._pending

    async def record(self, events: Sequence[Event]) -> list[RecordedEvent]:
        """Record ``events`` durably; returns one :class:`RecordedEvent` each, in order."""
        if not events:
            return []
        if self._task is None:
            raise RuntimeError("the ingestor is not started")
        if self._pending + len(events) > self.max_pending:
            raise Overloaded(f"{self._pending} events are waiting to be written")
        future: asyncio.Future[list[RecordedEvent]] = asyncio.get_running_loop().create_future()
        self._pending += len(events)
        self._queue.put_nowait(_Job(events, future))
        return await asyncio.shield(future)

    async def _run(self) -> None:
        await group_commits(self._queue, self.max_batch, self._commit)

    async def _commit(self, jobs: list[_Job]) -> None:
        batch = [ev for job in jobs for ev in job.events]
        try:
            outcome = await self.store.write(lambda conn: record_batch(conn, batch, self.rules))
        except StoreUnavailable as exc:
            self._fail(jobs, exc)
            return
        except Exception as exc:
            if len(jobs) > 1:
                # one request's bad event must not fail the others sharing its commit:
                # record each alone, so only the offender gets the error
                self._pending -= len(batch)
                for job in jobs:
                    self._pending += len(job.events)
                    await self._commit([job])
                return
            if not isinstance(exc, InvalidInput):  # a refused event is its sender's 4xx, not a failure
                log.error("ingest batch failed", events=len(batch), error=type(exc).__name__)
            self._fail(jobs, exc)
            return
        self._pending -= len(batch)
        start = 0
        for job in jobs:
            part = outcome.recorded[start : start + len(job.events)]
            start += len(job.events)
            if not job.future.done():
                job.future.set_result(part)
        try:
            self.after_commit(outcome)
        except Exception as exc:  # a plugin's bug must not stall the writer; the events are durable
            log.error("after-commit hooks failed", error=type(exc).__name__)

    def _fail(self, jobs: list[_Job], exc: Exception) -> None:
        self._pending -= sum(len(job.events) for job in jobs)
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(exc)
