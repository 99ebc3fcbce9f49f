"""Durable background jobs: a queue in the store and a runner in the server process.

Work that must happen after a call, survive a crash and not block anything live (the
post-call batch pass, the AI summary, …) is a *job*: a row in the store's ``jobs`` table
with a ``kind``, the ``call_sid`` it is about and a small JSON ``payload``. At most one job
of a kind exists per call, so enqueueing is idempotent. A :class:`~callbridge.jobs.runner.JobRunner`
in every server process claims due jobs under a lease (so several processes and instances
share one queue and a crashed process's jobs are taken again once its lease runs out),
runs each kind's handler with bounded concurrency, retries failures with capped
exponential backoff and jitter (honouring a ``Retry-After`` the handler reports) for a
bounded total time, and then fails the job with the reason.

* :mod:`callbridge.jobs.model`: jobs, their statuses, the errors a handler raises, and the
  :class:`~callbridge.jobs.model.JobQueue` interface the stores implement.
* :mod:`callbridge.jobs.runner`: the runner, job kinds and retry policies.
* :mod:`callbridge.jobs.clock`: the clock the runner reads and sleeps on (injectable).
"""

from callbridge.jobs.model import (
    Job,
    JobQueue,
    JobStatus,
    NewJob,
    PermanentJobError,
    RetryableJobError,
)
from callbridge.jobs.runner import JobContext, JobKind, JobRunner, RetryPolicy

__all__ = [
    "Job",
    "JobContext",
    "JobKind",
    "JobQueue",
    "JobRunner",
    "JobStatus",
    "NewJob",
    "PermanentJobError",
    "RetryPolicy",
    "RetryableJobError",
]
