"""Runs the job queue in a server process: claims, handlers, leases, retries, stop.

One :class:`JobRunner` per process. Each registered :class:`JobKind` gets its own claim
loop and its own concurrency budget, so a slow kind never takes slots from another. A
claimed job is leased to this runner for ``JobKind.lease_s`` and the lease is renewed while
the handler runs; if this process dies, the lease runs out and any runner sharing the
store takes the job again. Outcomes:

* the handler returns: the job is done;
* it raises :class:`~callbridge.jobs.model.RetryableJobError` (or anything unexpected):
  the job is due again after a capped exponential backoff with jitter, or after the
  handler's ``retry_after_s`` if that is longer, unless that would pass
  ``RetryPolicy.give_up_after_s`` since the job was enqueued; then it fails;
* it raises :class:`~callbridge.jobs.model.PermanentJobError`: the job fails at once.

A failing job's ``JobKind.on_failed`` runs before the job is marked failed (so clean-up is
not lost to a crash in between; it must be idempotent). :meth:`JobRunner.stop` stops
claiming, gives running handlers a grace period, cancels the rest and gives their leases
back, so a restarted process resumes them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import structlog

from callbridge.jobs.clock import Clock, SystemClock, as_datetime
from callbridge.jobs.model import Job, JobQueue, PermanentJobError, RetryableJobError

log = structlog.get_logger(__name__)


class LeaseLost(Exception):
    """This runner no longer holds the job's lease; another runner may be running it."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Capped exponential backoff with jitter, for a bounded total time.

    The n-th retry waits between half and all of ``min(max_s, initial_s · 2^(n-1))``
    (equal jitter: spread out, never hammering at once). No retry is scheduled past
    ``give_up_after_s`` after the job was enqueued: the job fails instead.
    """

    initial_s: float = 2.0
    max_s: float = 300.0
    give_up_after_s: float = 3600.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        ceiling = min(self.max_s, self.initial_s * 2.0 ** min(max(attempt - 1, 0), 62))
        return ceiling / 2 + rng.uniform(0.0, ceiling / 2)


class JobContext:
    """What a handler gets: the job, the runner's clock, and a way to save progress."""

    def __init__(self, runner: JobRunner, job: Job, kind: JobKind) -> None:
        self.job = job
        self._runner = runner
        self._kind = kind
        self.payload: Mapping[str, Any] = job.payload

    @property
    def attempt(self) -> int:
        """1 on the first attempt."""
        return self.job.attempts

    def now(self) -> float:
        return self._runner.clock.now()

    async def save_progress(self, payload: Mapping[str, Any]) -> None:
        """Store ``payload`` as the job's payload, so a later attempt (here or in another
        process) can skip what is done. Raises :class:`LeaseLost` without the lease."""
        if not await self._runner.queue.save_progress(self.job.job_id, self._runner.owner, payload):
            raise LeaseLost(f"job {self.job.job_id}")
        self.payload = dict(payload)


JobHandler = Callable[[JobContext], Coroutine[Any, Any, None]]
FailureHook = Callable[[Job, str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class JobKind:
    """A kind of job and how to run it."""

    name: str
    handler: JobHandler
    concurrency: int = 2
    lease_s: float = 120.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    on_failed: FailureHook | None = None


@dataclass(slots=True)
class RunnerStats:
    """This process's counters (the store has the durable state)."""

    started: int = 0
    done: int = 0
    retried: int = 0
    failed: int = 0
    lease_lost: int = 0


@dataclass(eq=False, slots=True)
class _KindWorker:
    kind: JobKind
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    running: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None


class JobRunner:
    """Claims and runs the jobs of every registered kind from ``queue``.

    ``clock`` and ``rng`` are injectable for deterministic tests; ``poll_interval_s`` is how
    often each kind looks for due work beyond :meth:`notify` (retries falling due, other
    processes' jobs, expired leases).
    """

    def __init__(
        self,
        queue: JobQueue,
        *,
        owner: str | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        poll_interval_s: float = 2.0,
        keep_finished_s: float = 7 * 86400.0,
        purge_interval_s: float = 3600.0,
    ) -> None:
        self.queue = queue
        self.owner = owner or f"jobs-{uuid.uuid4().hex[:12]}"
        self.clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._poll_interval_s = poll_interval_s
        self._keep_finished_s = keep_finished_s
        self._purge_interval_s = purge_interval_s
        self._workers: dict[str, _KindWorker] = {}
        self._started = False
        self._stopping = False
        self._purger: asyncio.Task[None] | None = None
        self.stats = RunnerStats()

    # set-up and lifecycle -------------------------------------------------------------------

    def register(self, kind: JobKind) -> None:
        """Add a kind (before :meth:`start`)."""
        if self._started:
            raise RuntimeError("register job kinds before the runner starts")
        if kind.name in self._workers:
            raise ValueError(f"job kind {kind.name!r} is registered already")
        if kind.concurrency < 1:
            raise ValueError(f"job kind {kind.name!r}: concurrency must be at least 1")
        self._workers[kind.name] = _KindWorker(kind)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self._workers)

    def running(self, kind: str | None = None) -> int:
        """Handlers running in this process now."""
        workers = self._workers.values() if kind is None else [self._workers[kind]]
        return sum(len(worker.running) for worker in workers)

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._stopping = False
        for worker in self._workers.values():
            worker.wake = asyncio.Event()
            worker.wake.set()  # look for work left from before at once
            worker.task = asyncio.create_task(
                self._claim_loop(worker), name=f"jobs:{worker.kind.name}"
            )
        if self._workers:
            self._purger = asyncio.create_task(self._purge_loop(), name="jobs:purge")
        log.info("jobs.started", kinds=list(self._workers), owner=self.owner)

    def notify(self, kind: str | None = None) -> None:
        """Jobs were enqueued: look for due work now (all kinds, or one)."""
        for name, worker in self._workers.items():
            if kind is None or name == kind:
                worker.wake.set()

    async def stop(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 (a grace period)
        """Claim nothing more, give running handlers ``timeout`` seconds, cancel the rest
        and give their leases back (they resume at once on the next start)."""
        if not self._started:
            return
        self._stopping = True
        for worker in self._workers.values():
            worker.wake.set()
        loops = [worker.task for worker in self._workers.values() if worker.task is not None]
        if self._purger is not None:
            self._purger.cancel()
            loops.append(self._purger)
        await asyncio.gather(*loops, return_exceptions=True)
        running = [task for worker in self._workers.values() for task in worker.running.values()]
        unfinished: set[asyncio.Task[None]] = set()
        if running:
            _, unfinished = await asyncio.wait(running, timeout=max(0.0, timeout))
        for task in unfinished:
            task.cancel()
        if unfinished:
            await asyncio.gather(*unfinished, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.queue.release(self.owner)
        self._started = False
        self._purger = None
        log.info("jobs.stopped", interrupted=len(unfinished))

    # claiming -------------------------------------------------------------------------------

    async def _claim_loop(self, worker: _KindWorker) -> None:
        kind = worker.kind
        while not self._stopping:
            worker.wake.clear()
            free = kind.concurrency - len(worker.running)
            if free > 0:
                try:
                    jobs = await self.queue.claim(
                        kind.name, self._now(), free, self.owner, kind.lease_s
                    )
                except Exception:
                    log.exception("jobs.claim_failed", kind=kind.name)
                    jobs = []
                for job in jobs:
                    if self._stopping:
                        break
                    task = asyncio.create_task(self._run(worker, job), name=f"job:{job.job_id}")
                    worker.running[job.job_id] = task
                if self._stopping and len(jobs) > len(worker.running):
                    with contextlib.suppress(Exception):
                        await self.queue.release(self.owner)
            if self._stopping:
                break
            await self._wait(worker.wake, self._poll_interval_s)

    async def _wait(self, event: asyncio.Event, timeout: float) -> None:  # noqa: ASYNC109
        waiter = asyncio.create_task(event.wait())
        sleeper = asyncio.create_task(self.clock.sleep(timeout))
        try:
            await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiter, sleeper):
                task.cancel()
            await asyncio.gather(waiter, sleeper, return_exceptions=True)

    def _now(self) -> Any:
        return as_datetime(self.clock.now())

    # one job --------------------------------------------------------------------------------

    async def _run(self, worker: _KindWorker, job: Job) -> None:
        kind = worker.kind
        bound = log.bind(job_id=job.job_id, kind=kind.name, call_sid=job.call_sid)
        try:
            deadline = job.created_at + timedelta(seconds=kind.retry.give_up_after_s)
            if self._now() >= deadline:
                reason = job.last_error or "interrupted"
                await self._fail(job, kind, _gave_up(reason, job.attempts - 1, kind))
                return
            self.stats.started += 1
            bound.info("jobs.running", attempt=job.attempts)
            await self._attempt(worker, job, bound)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Recording the outcome failed (store down): the lease runs out and the job is
            # taken again, with this attempt counted.
            bound.exception("jobs.record_failed")
        finally:
            worker.running.pop(job.job_id, None)
            worker.wake.set()  # a slot is free

    async def _attempt(self, worker: _KindWorker, job: Job, bound: Any) -> None:
        kind = worker.kind
        context = JobContext(self, job, kind)
        handler = asyncio.create_task(kind.handler(context), name=f"job-handler:{job.job_id}")
        keeper = asyncio.create_task(self._keep_lease(job, kind, handler))
        try:
            await handler
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the runner is stopping
            # the lease keeper cancelled the handler: another runner holds the job now
            self.stats.lease_lost += 1
            bound.warning("jobs.lease_lost")
            return
        except LeaseLost:
            self.stats.lease_lost += 1
            bound.warning("jobs.lease_lost")
            return
        except RetryableJobError as exc:
            await self._retry(job, kind, exc.reason, exc.retry_after_s, bound)
            return
        except PermanentJobError as exc:
            await self._fail(job, kind, exc.reason)
            return
        except Exception as exc:
            bound.exception("jobs.handler_crashed")
            await self._retry(job, kind, f"{type(exc).__name__}: {exc}"[:500], None, bound)
            return
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
        if await self.queue.complete(job.job_id, self.owner, self._now()):
            self.stats.done += 1
            bound.info("jobs.done", attempt=job.attempts)
        else:
            self.stats.lease_lost += 1
            bound.warning("jobs.lease_lost", at="complete")

    async def _keep_lease(self, job: Job, kind: JobKind, handler: asyncio.Task[None]) -> bool:
        """Renew the lease every third of its length; True (and the handler cancelled) when
        the lease was lost."""
        while not handler.done():
            await self.clock.sleep(kind.lease_s / 3)
            if handler.done():
                break
            try:
                held = await self.queue.renew(job.job_id, self.owner, self._now(), kind.lease_s)
            except Exception:
                log.exception("jobs.renew_failed", job_id=job.job_id, kind=kind.name)
                continue
            if not held:
                handler.cancel()
                return True
        return False

    async def _retry(
        self, job: Job, kind: JobKind, reason: str, retry_after_s: float | None, bound: Any
    ) -> None:
        now = self.clock.now()
        delay = kind.retry.delay(job.attempts, self._rng)
        if retry_after_s is not None:
            delay = max(delay, retry_after_s)
        deadline = job.created_at.timestamp() + kind.retry.give_up_after_s
        if now + delay > deadline:
            await self._fail(job, kind, _gave_up(reason, job.attempts, kind))
            return
        if await self.queue.retry(job.job_id, self.owner, as_datetime(now + delay), reason):
            self.stats.retried += 1
            bound.info("jobs.retry", attempt=job.attempts, retry_in_s=round(delay, 3), error=reason)
        else:
            self.stats.lease_lost += 1
            bound.warning("jobs.lease_lost", at="retry")

    async def _fail(self, job: Job, kind: JobKind, reason: str) -> None:
        bound = log.bind(job_id=job.job_id, kind=kind.name, call_sid=job.call_sid)
        if kind.on_failed is not None:
            try:
                await kind.on_failed(job, reason)
            except Exception:
                # Clean-up did not happen: keep the job, so a later claim fails it again.
                bound.exception("jobs.on_failed_crashed")
                next_at = as_datetime(self.clock.now() + kind.retry.initial_s)
                await self.queue.retry(job.job_id, self.owner, next_at, reason)
                return
        if await self.queue.fail(job.job_id, self.owner, self._now(), reason):
            self.stats.failed += 1
            bound.warning("jobs.failed", attempts=job.attempts, error=reason)
        else:
            self.stats.lease_lost += 1
            bound.warning("jobs.lease_lost", at="fail")

    async def _purge_loop(self) -> None:
        while True:
            await self.clock.sleep(self._purge_interval_s)
            before = as_datetime(self.clock.now() - self._keep_finished_s)
            try:
                removed = await self.queue.purge_finished(before)
            except Exception:
                log.exception("jobs.purge_failed")
                continue
            if removed:
                log.info("jobs.purged", jobs=removed)


def _gave_up(reason: str, attempts: int, kind: JobKind) -> str:
    """One failure message, whether the retry time ran out at a retry or at the next claim."""
    return f"{reason} (gave up after {attempts} attempts in {_s(kind)})"


def _s(kind: JobKind) -> str:
    return f"{kind.retry.give_up_after_s:g} s"
