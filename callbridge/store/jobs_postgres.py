"""The job queue (:class:`callbridge.jobs.model.JobQueue`) on the PostgreSQL store.

Claims use ``FOR UPDATE SKIP LOCKED``, so any number of runners in any number of
processes and instances take disjoint jobs; every outcome is conditional on the lease.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from callbridge.jobs.model import Job, JobStatus, NewJob
from callbridge.store.rows import JOB_COLUMNS, job

Connect = Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]


def _as_is(value: Any) -> Any:
    return value


def _job(row: Any) -> Job:
    return job(row, _as_is, _as_is)


async def insert_jobs(conn: asyncpg.Connection, jobs: Sequence[NewJob], now: datetime) -> int:
    """Inside the caller's transaction: add ``jobs``, skipping existing ``(kind, call_sid)``."""
    added = 0
    for new in jobs:
        inserted = await conn.fetchval(
            "INSERT INTO jobs (kind, call_sid, payload, status, next_attempt_at, created_at) "
            "VALUES ($1, $2, $3, 'pending', $4, $5) ON CONFLICT (kind, call_sid) DO NOTHING "
            "RETURNING job_id",
            new.kind,
            new.call_sid,
            dict(new.payload),
            new.run_at or now,
            now,
        )
        added += inserted is not None
    return added


class PostgresJobQueue:
    """:class:`~callbridge.jobs.model.JobQueue` on a :class:`PostgresStore`'s pool.

    ``connection`` and ``transaction`` are the store's context managers (they turn driver
    errors into :class:`~callbridge.store.base.StoreError`)."""

    def __init__(self, connection: Connect, transaction: Connect) -> None:
        self._connection = connection
        self._transaction = transaction

    async def enqueue(self, jobs: Sequence[NewJob], now: datetime) -> int:
        async with self._transaction() as conn:
            return await insert_jobs(conn, jobs, now)

    async def claim(
        self, kind: str, now: datetime, limit: int, owner: str, lease_s: float
    ) -> list[Job]:
        if limit <= 0:
            return []
        async with self._connection() as conn:
            rows = await conn.fetch(
                "WITH picked AS (SELECT job_id FROM jobs WHERE kind = $1 AND "
                "((status = 'pending' AND next_attempt_at <= $2) OR "
                "(status = 'running' AND lease_expires_at <= $2)) "
                "ORDER BY next_attempt_at, job_id LIMIT $3 FOR UPDATE SKIP LOCKED) "
                "UPDATE jobs j SET status = 'running', attempts = j.attempts + 1, "
                "lease_owner = $4, lease_expires_at = $5 FROM picked "
                f"WHERE j.job_id = picked.job_id RETURNING {_qualified('j')}",
                kind,
                now,
                limit,
                owner,
                now + timedelta(seconds=lease_s),
            )
        return sorted((_job(row) for row in rows), key=lambda j: (j.next_attempt_at, j.job_id))

    async def _leased_update(self, sql: str, *args: Any) -> bool:
        async with self._connection() as conn:
            status = await conn.execute(sql, *args)
        return not str(status).endswith(" 0")

    async def renew(self, job_id: int, owner: str, now: datetime, lease_s: float) -> bool:
        return await self._leased_update(
            "UPDATE jobs SET lease_expires_at = $3 "
            "WHERE job_id = $1 AND status = 'running' AND lease_owner = $2",
            job_id,
            owner,
            now + timedelta(seconds=lease_s),
        )

    async def save_progress(self, job_id: int, owner: str, payload: Mapping[str, Any]) -> bool:
        return await self._leased_update(
            "UPDATE jobs SET payload = $3 "
            "WHERE job_id = $1 AND status = 'running' AND lease_owner = $2",
            job_id,
            owner,
            dict(payload),
        )

    async def complete(self, job_id: int, owner: str, now: datetime) -> bool:
        return await self._leased_update(
            "UPDATE jobs SET status = 'done', lease_owner = NULL, lease_expires_at = NULL, "
            "finished_at = $3 WHERE job_id = $1 AND status = 'running' AND lease_owner = $2",
            job_id,
            owner,
            now,
        )

    async def retry(self, job_id: int, owner: str, next_attempt_at: datetime, error: str) -> bool:
        return await self._leased_update(
            "UPDATE jobs SET status = 'pending', next_attempt_at = $3, last_error = $4, "
            "lease_owner = NULL, lease_expires_at = NULL "
            "WHERE job_id = $1 AND status = 'running' AND lease_owner = $2",
            job_id,
            owner,
            next_attempt_at,
            error,
        )

    async def fail(self, job_id: int, owner: str, now: datetime, error: str) -> bool:
        return await self._leased_update(
            "UPDATE jobs SET status = 'failed', last_error = $4, lease_owner = NULL, "
            "lease_expires_at = NULL, finished_at = $3 "
            "WHERE job_id = $1 AND status = 'running' AND lease_owner = $2",
            job_id,
            owner,
            now,
            error,
        )

    async def release(self, owner: str) -> int:
        async with self._connection() as conn:
            status = await conn.execute(
                "UPDATE jobs SET status = 'pending', attempts = greatest(attempts - 1, 0), "
                "lease_owner = NULL, lease_expires_at = NULL "
                "WHERE lease_owner = $1 AND status = 'running'",
                owner,
            )
        return int(str(status).rsplit(" ", 1)[-1])

    async def get(self, kind: str, call_sid: str) -> Job | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE kind = $1 AND call_sid = $2",
                kind,
                call_sid,
            )
        return None if row is None else _job(row)

    async def unfinished_for_call(self, call_sid: str) -> bool:
        async with self._connection() as conn:
            found = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE call_sid = $1 "
                "AND status IN ('pending', 'running'))",
                call_sid,
            )
        return bool(found)

    async def counts(self, kind: str | None = None) -> dict[JobStatus, int]:
        async with self._connection() as conn:
            if kind is None:
                rows = await conn.fetch("SELECT status, count(*) FROM jobs GROUP BY status")
            else:
                rows = await conn.fetch(
                    "SELECT status, count(*) FROM jobs WHERE kind = $1 GROUP BY status", kind
                )
        return {JobStatus(row[0]): row[1] for row in rows}

    async def purge_finished(self, finished_before: datetime) -> int:
        async with self._connection() as conn:
            status = await conn.execute(
                "DELETE FROM jobs WHERE status IN ('done', 'failed') AND finished_at < $1",
                finished_before,
            )
        return int(str(status).rsplit(" ", 1)[-1])


def _qualified(alias: str) -> str:
    return ", ".join(f"{alias}.{column.strip()}" for column in JOB_COLUMNS.split(","))
