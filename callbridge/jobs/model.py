"""Jobs as stored, the errors a job handler raises, and the queue interface of the stores.

Times are timezone-aware UTC datetimes. The queue never reads a clock of its own: every
method that depends on "now" is given it, so a runner on a controlled clock is fully
deterministic.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


class JobStatus(enum.StrEnum):
    PENDING = "pending"  # waiting to be due, or due and not yet claimed
    RUNNING = "running"  # claimed by a runner under a lease (an expired lease is claimable)
    DONE = "done"  # the handler finished
    FAILED = "failed"  # final: a permanent error, or retries ran out


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to enqueue. One job per ``(kind, call_sid)``: enqueueing it again is a no-op."""

    kind: str
    call_sid: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    run_at: datetime | None = None  # not before this moment (default: at once)


@dataclass(frozen=True, slots=True)
class Job:
    """A job as the store has it; a claimed job is leased to ``lease_owner``."""

    job_id: int
    kind: str
    call_sid: str
    payload: Mapping[str, Any]
    status: JobStatus
    attempts: int  # claims so far, this one included for a claimed job
    next_attempt_at: datetime
    last_error: str | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    created_at: datetime
    finished_at: datetime | None


class RetryableJobError(Exception):
    """The attempt failed in a way that may pass (429, 5xx, a network error, a timeout).

    ``retry_after_s`` is the peer's own hint (e.g. ``Retry-After``); the runner waits at
    least that long before the next attempt."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class PermanentJobError(Exception):
    """The job cannot succeed by retrying (bad request, missing input): fail it now."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JobQueue(Protocol):
    """The store side of the job queue (SQLite and PostgreSQL implement it alike).

    Claims, renewals and outcomes are conditional on the lease: a runner that lost its
    lease (it expired and another runner claimed the job) gets False and must drop the job.
    """

    async def enqueue(self, jobs: Sequence[NewJob], now: datetime) -> int:
        """Add jobs (skipping any whose ``(kind, call_sid)`` exists); returns how many were new."""

    async def claim(
        self, kind: str, now: datetime, limit: int, owner: str, lease_s: float
    ) -> list[Job]:
        """Lease up to ``limit`` due jobs of ``kind`` (oldest due first) to ``owner``: pending
        jobs whose ``next_attempt_at`` has come, and running jobs whose lease has expired.
        Each claim counts an attempt."""

    async def renew(self, job_id: int, owner: str, now: datetime, lease_s: float) -> bool:
        """Extend ``owner``'s lease to ``now + lease_s``; False if it no longer holds it."""

    async def save_progress(self, job_id: int, owner: str, payload: Mapping[str, Any]) -> bool:
        """Replace the job's payload (e.g. a step already done), under the lease."""

    async def complete(self, job_id: int, owner: str, now: datetime) -> bool:
        """Mark the job done."""

    async def retry(self, job_id: int, owner: str, next_attempt_at: datetime, error: str) -> bool:
        """Give the lease back and make the job due again at ``next_attempt_at``."""

    async def fail(self, job_id: int, owner: str, now: datetime, error: str) -> bool:
        """Mark the job failed for good with ``error`` as the reason."""

    async def release(self, owner: str) -> int:
        """Give back every lease ``owner`` holds (a runner stopping with jobs in flight):
        the jobs are due again at once and the interrupted attempt is not counted."""

    async def get(self, kind: str, call_sid: str) -> Job | None: ...

    async def unfinished_for_call(self, call_sid: str) -> bool:
        """Whether any job of the call is pending or running (its events may follow)."""

    async def counts(self, kind: str | None = None) -> dict[JobStatus, int]:
        """Jobs per status (of one kind, or all)."""

    async def purge_finished(self, finished_before: datetime) -> int:
        """Delete done and failed jobs that finished before a moment."""
