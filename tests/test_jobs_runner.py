"""The job runner on a controlled clock: outcomes, backoff, Retry-After, give-up, leases,
concurrency, stop and resumption. Store work is real (SQLite, and PostgreSQL for runners
sharing one queue); only time is simulated."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from callbridge.jobs import (
    Job,
    JobContext,
    JobKind,
    JobRunner,
    JobStatus,
    NewJob,
    PermanentJobError,
    RetryableJobError,
    RetryPolicy,
)
from callbridge.jobs.clock import as_datetime
from callbridge.store.base import DurableStore
from callbridge.testing.clock import ManualClock

START = 1_700_000_000.0


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:  # noqa: ASYNC109
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


class Harness:
    """A runner on the manual clock plus helpers to enqueue and inspect jobs."""

    def __init__(self, store: DurableStore, clock: ManualClock) -> None:
        self.store = store
        self.clock = clock
        self.runners: list[JobRunner] = []

    def runner(self, *kinds: JobKind, owner: str | None = None, seed: int = 7) -> JobRunner:
        runner = JobRunner(
            self.store.jobs,
            owner=owner,
            clock=self.clock,
            rng=random.Random(seed),
            poll_interval_s=1.0,
        )
        for kind in kinds:
            runner.register(kind)
        self.runners.append(runner)
        return runner

    async def enqueue(self, *jobs: NewJob) -> None:
        await self.store.jobs.enqueue(jobs, as_datetime(self.clock.now()))
        for runner in self.runners:
            runner.notify()

    async def job(self, call_sid: str, kind: str = "work") -> Job:
        found = await self.store.jobs.get(kind, call_sid)
        assert found is not None
        return found

    async def status_is(self, call_sid: str, status: JobStatus, kind: str = "work") -> bool:
        return (await self.job(call_sid, kind)).status is status

    async def advance_until(
        self, check: Callable[[], Awaitable[bool]], step: float = 0.5, limit_s: float = 60.0
    ) -> None:
        """Move the clock in steps until ``check`` holds (the runner polls on the clock, so
        a single jump can land between its claim and its next sleep)."""
        moved = 0.0
        while not await check():
            if moved > limit_s:
                raise AssertionError("condition not reached")
            await self.clock.advance(step)
            moved += step
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        for runner in self.runners:
            await runner.stop(timeout=1.0)


@pytest.fixture
async def harness(store: DurableStore, clock: ManualClock) -> AsyncIterator[Harness]:
    harness = Harness(store, clock)
    yield harness
    await harness.stop()


async def test_a_successful_handler_finishes_the_job(harness: Harness) -> None:
    seen: list[tuple[str, dict[str, object], int]] = []

    async def handle(context: JobContext) -> None:
        seen.append((context.job.call_sid, dict(context.payload), context.attempt))

    runner = harness.runner(JobKind("work", handle))
    await runner.start()
    await harness.enqueue(NewJob("work", "CA1", {"x": 1}))
    await eventually(lambda: harness.status_is("CA1", JobStatus.DONE))
    assert seen == [("CA1", {"x": 1}, 1)]
    assert runner.stats.done == 1
    job = await harness.job("CA1")
    assert job.finished_at == as_datetime(START) and job.lease_owner is None


async def test_retries_back_off_exponentially_with_jitter_then_succeed(harness: Harness) -> None:
    policy = RetryPolicy(initial_s=4.0, max_s=10.0, give_up_after_s=3600.0)
    attempts_at: list[float] = []

    async def handle(context: JobContext) -> None:
        attempts_at.append(context.now())
        if context.attempt < 4:
            raise RetryableJobError(f"HTTP 503 (attempt {context.attempt})")

    runner = harness.runner(JobKind("work", handle, retry=policy), seed=11)
    await runner.start()
    await harness.enqueue(NewJob("work", "CA1"))
    expected_rng = random.Random(11)
    for attempt in (1, 2, 3):
        await eventually(lambda n=attempt: _len_is(attempts_at, n))
        await eventually(lambda: harness.status_is("CA1", JobStatus.PENDING))
        job = await harness.job("CA1")
        delay = policy.delay(attempt, expected_rng)
        ceiling = min(10.0, 4.0 * 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling
        assert job.next_attempt_at == as_datetime(attempts_at[-1] + delay)
        assert job.last_error == f"HTTP 503 (attempt {attempt})"
        # Not a moment early …
        await harness.clock.advance(delay - 0.5)
        await asyncio.sleep(0.05)
        assert len(attempts_at) == attempt
        # … and soon after it is due (the claim loop polls every second).
        await harness.advance_until(lambda n=attempt: _len_is(attempts_at, n + 1), limit_s=3.0)
    await eventually(lambda: harness.status_is("CA1", JobStatus.DONE))
    assert len(attempts_at) == 4 and runner.stats.retried == 3


def _len_is(items: list[float], n: int) -> Awaitable[bool]:
    async def check() -> bool:
        return len(items) == n

    return check()


async def test_retry_after_from_the_handler_is_honoured(harness: Harness) -> None:
    calls: list[float] = []

    async def handle(context: JobContext) -> None:
        calls.append(context.now())
        if len(calls) == 1:
            raise RetryableJobError("HTTP 429", retry_after_s=120.0)

    runner = harness.runner(JobKind("work", handle, retry=RetryPolicy(initial_s=1.0, max_s=2.0)))
    await runner.start()
    await harness.enqueue(NewJob("work", "CA1"))
    await eventually(lambda: _true_if(runner.stats.retried == 1))
    job = await harness.job("CA1")
    assert job.next_attempt_at == as_datetime(START + 120.0)
    await harness.clock.advance(119.0)
    await asyncio.sleep(0.05)
    assert len(calls) == 1
    await harness.advance_until(lambda: harness.status_is("CA1", JobStatus.DONE), limit_s=3.0)
    assert calls[1] >= START + 120.0


async def test_retries_stop_after_the_bounded_time_and_the_job_fails_with_the_reason(
    harness: Harness,
) -> None:
    failures: list[tuple[str, str]] = []

    async def handle(context: JobContext) -> None:
        raise RetryableJobError("connection refused")

    async def on_failed(job: Job, reason: str) -> None:
        failures.append((job.call_sid, reason))

    policy = RetryPolicy(initial_s=10.0, max_s=20.0, give_up_after_s=60.0)
    runner = harness.runner(JobKind("work", handle, retry=policy, on_failed=on_failed))
    await runner.start()
    await harness.enqueue(NewJob("work", "CA1"))
    await harness.advance_until(lambda: harness.status_is("CA1", JobStatus.FAILED), step=2.0)
    job = await harness.job("CA1")
    assert job.last_error is not None
    assert job.last_error.startswith("connection refused (gave up after")
    assert "60 s" in job.last_error
    # no attempt was scheduled past the 60 s bound
    assert job.finished_at is not None and job.finished_at <= as_datetime(START + 60.0)
    assert failures == [("CA1", job.last_error)]
    assert runner.stats.failed == 1


async def test_a_permanent_error_fails_at_once(harness: Harness) -> None:
    failures: list[str] = []

    async def handle(context: JobContext) -> None:
        raise PermanentJobError("HTTP 422: invalid model_id")

    async def on_failed(job: Job, reason: str) -> None:
        failures.append(reason)

    runner = harness.runner(JobKind("work", handle, on_failed=on_failed))
    await runner.start()
    await harness.enqueue(NewJob("work", "CA1"))
    await eventually(lambda: harness.status_is("CA1", JobStatus.FAILED))
    assert (await harness.job("CA1")).attempts == 1
    assert failures == ["HTTP 422: invalid model_id"]


async def test_an_unexpected_exception_is_retried(harness: Harness) -> None:
    calls = 0

    async def handle(context: JobContext) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyError("transcription_id")

    runner = harness.runner(JobKind("work", handle, retry=RetryPolicy(initial_s=1.0, max_s=1.0)))
    await runner.start()
    await harness.enqueue(NewJob("work", "CA1"))
    await eventually(lambda: _true_if(runner.stats.retried == 1))
    assert (await harness.job("CA1")).last_error == "KeyError: 'transcription_id'"
    await harness.advance_until(lambda: harness.status_is("CA1", JobStatus.DONE))


async def test_a_failing_clean_up_keeps_the_job_until_it_succeeds(harness: Harness) -> None:
    hook_calls = 0

    async def handle(context: JobContext) -> None:
        raise PermanentJobError("bad audio")

    async def on_failed(job: Job, reason: str) -> None:
        nonlocal hook_calls
        hook_calls += 1
        if hook_calls == 1:
            raise OSError("disk busy")

    kind = JobKind("work", handle, retry=RetryPolicy(initial_s=1.0), on_failed=on_failed)
    runner = harness.runner(kind)
    await runner.start()
    await harness.enqueue(NewJob("work", "CA1"))
    await eventually(lambda: _true_if(hook_calls == 1))
    await eventually(lambda: harness.status_is("CA1", JobStatus.PENDING))
    await harness.advance_until(lambda: harness.status_is("CA1", JobStatus.FAILED))
    assert hook_calls == 2


async def test_concurrency_is_bounded_per_kind_and_kinds_do_not_share_slots(
    harness: Harness,
) -> None:
    release = asyncio.Event()
    running = {"slow": 0, "fast": 0}
    peak = {"slow": 0, "fast": 0}

    def handler(name: str) -> Callable[[JobContext], Awaitable[None]]:
        async def handle(context: JobContext) -> None:
            running[name] += 1
            peak[name] = max(peak[name], running[name])
            try:
                if name == "slow":
                    await release.wait()
            finally:
                running[name] -= 1

        return handle

    runner = harness.runner(
        JobKind("slow", handler("slow"), concurrency=2),
        JobKind("fast", handler("fast"), concurrency=3),
    )
    await runner.start()
    await harness.enqueue(*(NewJob("slow", f"CA{i}") for i in range(6)))
    await harness.enqueue(*(NewJob("fast", f"CA{i}") for i in range(6)))
    for i in range(6):
        await eventually(lambda i=i: harness.status_is(f"CA{i}", JobStatus.DONE, "fast"))
    assert running["slow"] == 2 and runner.running("slow") == 2
    assert (await harness.store.jobs.counts("slow"))[JobStatus.PENDING] == 4
    release.set()
    for i in range(6):
        await eventually(lambda i=i: harness.status_is(f"CA{i}", JobStatus.DONE, "slow"))
    assert peak == {"slow": 2, "fast": peak["fast"]} and 1 <= peak["fast"] <= 3


async def test_the_lease_is_renewed_while_a_long_handler_runs(harness: Harness) -> None:
    release = asyncio.Event()
    others: list[str] = []

    async def long(context: JobContext) -> None:
        await release.wait()

    async def other(context: JobContext) -> None:
        others.append(context.job.call_sid)

    first = harness.runner(JobKind("work", long, lease_s=30.0), owner="first")
    second = harness.runner(JobKind("work", other, lease_s=30.0), owner="second")
    await first.start()
    await harness.enqueue(NewJob("work", "CA1"))
    await eventually(lambda: harness.status_is("CA1", JobStatus.RUNNING))
    await second.start()
    for _ in range(12):  # two minutes, four times the lease
        await harness.clock.advance(10.0)
        await asyncio.sleep(0.02)
    assert others == []
    assert (await harness.job("CA1")).lease_owner == "first"
    release.set()
    await eventually(lambda: harness.status_is("CA1", JobStatus.DONE))
    assert (await harness.job("CA1")).attempts == 1


async def test_a_crashed_runners_job_is_taken_over_after_its_lease(harness: Harness) -> None:
    done: list[str] = []

    async def handle(context: JobContext) -> None:
        done.append(context.job.call_sid)

    await harness.enqueue(NewJob("work", "CA1"))
    # A runner claimed it and died without a word.
    claimed = await harness.store.jobs.claim("work", as_datetime(START), 1, "dead-runner", 30.0)
    assert len(claimed) == 1
    survivor = harness.runner(JobKind("work", handle, lease_s=30.0), owner="survivor")
    await survivor.start()
    await harness.clock.advance(29.0)
    await asyncio.sleep(0.05)
    assert done == []
    await harness.advance_until(lambda: harness.status_is("CA1", JobStatus.DONE), limit_s=3.0)
    assert done == ["CA1"]
    assert (await harness.job("CA1")).attempts == 2


async def test_a_handler_that_lost_its_lease_is_cancelled(harness: Harness) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def handle(context: JobContext) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    runner = harness.runner(JobKind("work", handle, lease_s=30.0), owner="r1")
    await runner.start()
    await harness.enqueue(NewJob("work", "CA1"))
    # The handler runs, so the claim loop that started it is back to waiting: the job
    # released below cannot be claimed again by r1 before r2 takes it.
    await eventually(lambda: _true_if(started.is_set()))
    assert await harness.status_is("CA1", JobStatus.RUNNING)
    # Someone else holds the job now (the lease was taken over while this runner stalled).
    await harness.store.jobs.release("r1")
    await harness.store.jobs.claim("work", as_datetime(START), 1, "r2", 300.0)
    await harness.advance_until(lambda: _true_if(cancelled.is_set()), step=2.0, limit_s=30.0)
    await eventually(lambda: _true_if(runner.stats.lease_lost == 1))
    assert (await harness.job("CA1")).lease_owner == "r2"


async def _true(value: bool) -> bool:
    return value


def _true_if(value: bool) -> Awaitable[bool]:
    return _true(value)


async def test_progress_saved_by_one_attempt_is_seen_by_the_next(harness: Harness) -> None:
    payloads: list[dict[str, object]] = []

    async def handle(context: JobContext) -> None:
        payloads.append(dict(context.payload))
        if "uploaded" not in context.payload:
            await context.save_progress({**context.payload, "uploaded": "tr_1"})
            raise RetryableJobError("HTTP 502")

    runner = harness.runner(JobKind("work", handle, retry=RetryPolicy(initial_s=1.0, max_s=1.0)))
    await runner.start()
    await harness.enqueue(NewJob("work", "CA1", {"call": "CA1"}))
    await eventually(lambda: _true_if(runner.stats.retried == 1))
    await harness.advance_until(lambda: harness.status_is("CA1", JobStatus.DONE))
    assert payloads == [{"call": "CA1"}, {"call": "CA1", "uploaded": "tr_1"}]


async def test_stop_interrupts_gives_the_lease_back_and_a_restart_resumes(
    harness: Harness,
) -> None:
    started: list[str] = []
    interrupted = asyncio.Event()

    async def hang(context: JobContext) -> None:
        started.append("first")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            interrupted.set()
            raise

    first = harness.runner(JobKind("work", hang), owner="first")
    await first.start()
    await harness.enqueue(NewJob("work", "CA1"))
    await eventually(lambda: _true_if(started == ["first"]))
    await first.stop(timeout=0.1)  # as on SIGTERM, with a short grace period
    assert interrupted.is_set()
    job = await harness.job("CA1")
    assert job.status is JobStatus.PENDING and job.lease_owner is None and job.attempts == 0

    async def finish(context: JobContext) -> None:
        started.append("second")

    second = harness.runner(JobKind("work", finish), owner="second")
    await second.start()  # no clock advance: resumed at once, not after a lease expiry
    await eventually(lambda: harness.status_is("CA1", JobStatus.DONE))
    assert started == ["first", "second"]


async def test_a_job_found_past_its_retry_time_fails_without_running(harness: Harness) -> None:
    ran: list[str] = []

    async def handle(context: JobContext) -> None:
        ran.append(context.job.call_sid)

    await harness.enqueue(NewJob("work", "CA1"))
    claimed = await harness.store.jobs.claim("work", as_datetime(START), 1, "dead", 30.0)
    await harness.store.jobs.retry(claimed[0].job_id, "dead", as_datetime(START), "HTTP 500")
    await harness.clock.advance(7200.0)
    runner = harness.runner(JobKind("work", handle, retry=RetryPolicy(give_up_after_s=3600.0)))
    await runner.start()
    await eventually(lambda: harness.status_is("CA1", JobStatus.FAILED))
    assert ran == []
    assert (await harness.job("CA1")).last_error == "HTTP 500 (gave up after 1 attempts in 3600 s)"


async def test_finished_jobs_are_purged_after_the_keep_time(
    store: DurableStore, clock: ManualClock
) -> None:
    async def handle(context: JobContext) -> None:
        return None

    runner = JobRunner(
        store.jobs, clock=clock, poll_interval_s=1.0, keep_finished_s=100.0, purge_interval_s=50.0
    )
    runner.register(JobKind("work", handle))
    await runner.start()
    try:
        await store.jobs.enqueue([NewJob("work", "CA1")], as_datetime(clock.now()))
        runner.notify()
        await eventually(lambda: _status(store, "CA1", JobStatus.DONE))
        await clock.advance(50.0)
        await asyncio.sleep(0.05)
        assert await store.jobs.get("work", "CA1") is not None
        await clock.advance(100.0)
        await eventually(lambda: _gone(store, "CA1"))
    finally:
        await runner.stop()


async def _status(store: DurableStore, call_sid: str, status: JobStatus) -> bool:
    job = await store.jobs.get("work", call_sid)
    return job is not None and job.status is status


async def _gone(store: DurableStore, call_sid: str) -> bool:
    return await store.jobs.get("work", call_sid) is None


def test_kinds_are_checked_when_registered(store: DurableStore) -> None:
    async def handle(context: JobContext) -> None:
        return None

    runner = JobRunner(store.jobs)
    runner.register(JobKind("work", handle))
    with pytest.raises(ValueError, match="registered already"):
        runner.register(JobKind("work", handle))
    with pytest.raises(ValueError, match="concurrency"):
        runner.register(JobKind("other", handle, concurrency=0))


def test_backoff_is_capped_and_jittered() -> None:
    policy = RetryPolicy(initial_s=2.0, max_s=60.0)
    rng = random.Random(3)
    for attempt, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (6, 60.0), (50, 60.0), (500, 60.0)]:
        delays = {policy.delay(attempt, rng) for _ in range(20)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered
