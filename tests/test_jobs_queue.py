"""The job queue's store contract (callbridge.jobs.model.JobQueue), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from callbridge.jobs.model import JobStatus, NewJob
from callbridge.store.base import DurableStore
from callbridge.webhooks.events import call_ended_event
from tests.test_store_contract import T0, Backend, call_info, ended, run_call


def at(seconds: float) -> object:
    return T0 + timedelta(seconds=seconds)


async def test_enqueue_is_idempotent_per_kind_and_call(store: DurableStore) -> None:
    jobs = store.jobs
    added = await jobs.enqueue(
        [NewJob("batch", "CA1", {"n": 1}), NewJob("summary", "CA1"), NewJob("batch", "CA2")],
        T0,
    )
    assert added == 3
    assert await jobs.enqueue([NewJob("batch", "CA1", {"n": 2})], at(5)) == 0
    job = await jobs.get("batch", "CA1")
    assert job is not None
    assert job.payload == {"n": 1}  # the first one stays
    assert job.status is JobStatus.PENDING and job.attempts == 0
    assert job.created_at == T0 and job.next_attempt_at == T0
    assert await jobs.counts() == {JobStatus.PENDING: 3}
    assert await jobs.counts("batch") == {JobStatus.PENDING: 2}
    assert await jobs.get("batch", "CA9") is None


async def test_claim_takes_only_due_jobs_of_its_kind_oldest_first(store: DurableStore) -> None:
    jobs = store.jobs
    await jobs.enqueue([NewJob("batch", "CA-later", run_at=at(60))], T0)
    await jobs.enqueue([NewJob("batch", "CA-b")], at(2))
    await jobs.enqueue([NewJob("batch", "CA-a")], at(1))
    await jobs.enqueue([NewJob("summary", "CA-a")], at(1))
    claimed = await jobs.claim("batch", at(10), 10, "runner-1", 30.0)
    assert [job.call_sid for job in claimed] == ["CA-a", "CA-b"]
    for job in claimed:
        assert job.status is JobStatus.RUNNING
        assert job.attempts == 1
        assert job.lease_owner == "runner-1"
        assert job.lease_expires_at == at(40)
    # Leased: nobody else gets them; the later one is not due yet.
    assert await jobs.claim("batch", at(20), 10, "runner-2", 30.0) == []
    for job in claimed:
        assert await jobs.complete(job.job_id, "runner-1", at(30))
    later = await jobs.claim("batch", at(61), 10, "runner-2", 30.0)
    assert [job.call_sid for job in later] == ["CA-later"]
    assert await jobs.claim("batch", at(200), 0, "runner-2", 30.0) == []


async def test_limit_is_respected(store: DurableStore) -> None:
    await store.jobs.enqueue([NewJob("batch", f"CA{i}") for i in range(5)], T0)
    assert len(await store.jobs.claim("batch", T0, 2, "r", 30.0)) == 2
    assert len(await store.jobs.claim("batch", T0, 10, "r", 30.0)) == 3


async def test_an_expired_lease_is_taken_over_and_the_old_owner_loses_it(
    store: DurableStore,
) -> None:
    jobs = store.jobs
    await jobs.enqueue([NewJob("batch", "CA1")], T0)
    (first,) = await jobs.claim("batch", T0, 1, "dead-runner", 30.0)
    assert await jobs.claim("batch", at(29), 1, "survivor", 30.0) == []
    (second,) = await jobs.claim("batch", at(30), 1, "survivor", 30.0)
    assert second.job_id == first.job_id
    assert second.attempts == 2 and second.lease_owner == "survivor"
    # The first owner's outcomes no longer count.
    assert not await jobs.complete(first.job_id, "dead-runner", at(31))
    assert not await jobs.renew(first.job_id, "dead-runner", at(31), 30.0)
    assert not await jobs.save_progress(first.job_id, "dead-runner", {"x": 1})
    assert not await jobs.retry(first.job_id, "dead-runner", at(40), "boom")
    assert not await jobs.fail(first.job_id, "dead-runner", at(31), "boom")
    assert await jobs.complete(second.job_id, "survivor", at(31))
    done = await jobs.get("batch", "CA1")
    assert done is not None and done.status is JobStatus.DONE
    assert done.finished_at == at(31) and done.lease_owner is None


async def test_renew_extends_the_lease(store: DurableStore) -> None:
    jobs = store.jobs
    await jobs.enqueue([NewJob("batch", "CA1")], T0)
    (job,) = await jobs.claim("batch", T0, 1, "r1", 30.0)
    assert await jobs.renew(job.job_id, "r1", at(20), 30.0)
    assert await jobs.claim("batch", at(45), 1, "r2", 30.0) == []
    assert len(await jobs.claim("batch", at(50), 1, "r2", 30.0)) == 1


async def test_retry_fail_progress_and_release(store: DurableStore) -> None:
    jobs = store.jobs
    await jobs.enqueue([NewJob("batch", "CA1", {"step": 0}), NewJob("batch", "CA2")], T0)
    one, two = await jobs.claim("batch", T0, 2, "r1", 30.0)
    assert await jobs.save_progress(one.job_id, "r1", {"step": 1, "id": "tr_1"})
    assert await jobs.retry(one.job_id, "r1", at(100), "HTTP 503")
    retried = await jobs.get("batch", "CA1")
    assert retried is not None
    assert retried.status is JobStatus.PENDING and retried.lease_owner is None
    assert retried.last_error == "HTTP 503" and retried.next_attempt_at == at(100)
    assert retried.payload == {"step": 1, "id": "tr_1"}

    assert await jobs.fail(two.job_id, "r1", at(5), "HTTP 400: bad file")
    assert await jobs.claim("batch", at(99), 5, "r1", 30.0) == []
    failed = await jobs.get("batch", "CA2")
    assert failed is not None and failed.status is JobStatus.FAILED
    assert failed.last_error == "HTTP 400: bad file" and failed.finished_at == at(5)
    assert await jobs.claim("batch", at(1000), 5, "r2", 30.0) != []  # CA1 only
    assert await jobs.counts() == {JobStatus.RUNNING: 1, JobStatus.FAILED: 1}

    # A runner that stops gives its leases back; the interrupted attempt is not counted.
    assert await jobs.release("r2") == 1
    released = await jobs.get("batch", "CA1")
    assert released is not None
    assert released.status is JobStatus.PENDING and released.attempts == 1
    (again,) = await jobs.claim("batch", at(1000), 5, "r3", 30.0)
    assert again.attempts == 2


async def test_purge_removes_only_old_finished_jobs(store: DurableStore) -> None:
    jobs = store.jobs
    await jobs.enqueue([NewJob("k", f"CA{i}") for i in range(4)], T0)
    claimed = await jobs.claim("k", T0, 3, "r", 30.0)
    await jobs.complete(claimed[0].job_id, "r", at(10))
    await jobs.fail(claimed[1].job_id, "r", at(20), "no")
    await jobs.complete(claimed[2].job_id, "r", at(100))
    assert await jobs.purge_finished(at(50)) == 2
    assert await jobs.counts() == {JobStatus.DONE: 1, JobStatus.PENDING: 1}


async def test_call_end_enqueues_its_jobs_in_the_same_transaction(
    store: DurableStore, backend: Backend
) -> None:
    info = call_info("CA1")
    await store.call_started(info, [])
    end = ended("CA1", 0)
    summary = {"call_sid": "CA1"}
    await store.call_ended(
        end, summary, [call_ended_event(end, summary)], jobs=[NewJob("batch", "CA1", {"a": 1})]
    )
    job = await store.jobs.get("batch", "CA1")
    assert job is not None and job.payload == {"a": 1}
    # Erasing the call erases its jobs.
    assert await store.delete_call("CA1")
    assert await backend.raw_count("jobs", "CA1") == 0


async def test_a_failed_call_end_write_enqueues_nothing(store: DurableStore) -> None:
    await run_call(store, "CA1", segments=1)
    job = NewJob("batch", "CA1")
    # the call has ended already: call_ended is a no-op and enqueues nothing new
    await store.call_ended(ended("CA1", 1), {}, [], jobs=[job])
    assert await store.jobs.get("batch", "CA1") is None


async def test_concurrent_claims_never_share_a_job(backend: Backend) -> None:
    """Three stores on one database (as three processes would have) claiming at once."""
    stores = [backend.store() for _ in range(3)]
    for store in stores:
        await store.open()
    try:
        await stores[0].jobs.enqueue([NewJob("batch", f"CA{i}") for i in range(40)], T0)
        results = await asyncio.gather(
            *(
                store.jobs.claim("batch", at(1), 10, f"r{n}", 30.0)
                for n, store in enumerate(stores)
                for _ in range(2)
            )
        )
        ids = [job.job_id for claimed in results for job in claimed]
        assert len(ids) == len(set(ids)) == 40
    finally:
        for store in stores:
            await store.close()
