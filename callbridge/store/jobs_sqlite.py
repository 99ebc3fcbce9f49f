"""The job queue (:class:`callbridge.jobs.model.JobQueue`) on the SQLite store.

It shares the store's connection and thread: reads go through the store's ``run`` and
every change through its ``write`` (one ``BEGIN IMMEDIATE`` transaction), so claims from
several processes on one file never hand a job to two runners.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from callbridge.jobs.model import Job, JobStatus, NewJob
from callbridge.store.base import from_micros, to_micros
from callbridge.store.rows import JOB_COLUMNS, job


def insert_jobs(conn: sqlite3.Connection, jobs: Sequence[NewJob], now_us: int) -> int:
    """Inside the caller's transaction: add ``jobs``, skipping existing ``(kind, call_sid)``."""
    added = 0
    for new in jobs:
        run_at = to_micros(new.run_at) if new.run_at is not None else now_us
        added += conn.execute(
            "INSERT INTO jobs (kind, call_sid, payload, status, next_attempt_at, created_at) "
            "VALUES (?, ?, ?, 'pending', ?, ?) ON CONFLICT (kind, call_sid) DO NOTHING",
            (new.kind, new.call_sid, json.dumps(dict(new.payload)), run_at, now_us),
        ).rowcount
    return added


def _job(row: sqlite3.Row) -> Job:
    return job(row, json.loads, from_micros)


class SqliteJobQueue:
    """:class:`~callbridge.jobs.model.JobQueue` through a :class:`SqliteStore`'s thread."""

    def __init__(
        self,
        run: Callable[[Callable[[sqlite3.Connection], Any]], Awaitable[Any]],
        write: Callable[[Callable[[sqlite3.Connection], Any]], Awaitable[Any]],
    ) -> None:
        self._run = run
        self._write = write

    async def enqueue(self, jobs: Sequence[NewJob], now: datetime) -> int:
        now_us = to_micros(now)
        added: int = await self._write(lambda conn: insert_jobs(conn, jobs, now_us))
        return added

    async def claim(
        self, kind: str, now: datetime, limit: int, owner: str, lease_s: float
    ) -> list[Job]:
        now_us = to_micros(now)
        expires_us = to_micros(now + timedelta(seconds=lease_s))
        select_due = (
            "SELECT job_id FROM jobs WHERE kind = ? AND ((status = 'pending' AND "
            "next_attempt_at <= ?) OR (status = 'running' AND lease_expires_at <= ?)) "
            "ORDER BY next_attempt_at, job_id LIMIT ?"
        )
        params = (kind, now_us, now_us, max(0, limit))

        def work(conn: sqlite3.Connection) -> list[Job]:
            # Look without the write lock first: most polls find nothing.
            if limit <= 0 or conn.execute(select_due, params).fetchone() is None:
                return []
            conn.execute("BEGIN IMMEDIATE")
            try:
                ids = [row[0] for row in conn.execute(select_due, params).fetchall()]
                claimed: list[Job] = []
                if ids:
                    marks = ",".join("?" * len(ids))
                    rows = conn.execute(
                        "UPDATE jobs SET status = 'running', attempts = attempts + 1, "
                        f"lease_owner = ?, lease_expires_at = ? WHERE job_id IN ({marks}) "
                        f"RETURNING {JOB_COLUMNS}",
                        (owner, expires_us, *ids),
                    ).fetchall()
                    claimed = sorted(
                        (_job(row) for row in rows), key=lambda j: (j.next_attempt_at, j.job_id)
                    )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return claimed

        result: list[Job] = await self._run(work)
        return result

    async def _leased_update(self, sql: str, params: tuple[Any, ...]) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            return bool(conn.execute(sql, params).rowcount)

        held: bool = await self._write(work)
        return held

    async def renew(self, job_id: int, owner: str, now: datetime, lease_s: float) -> bool:
        return await self._leased_update(
            "UPDATE jobs SET lease_expires_at = ? "
            "WHERE job_id = ? AND status = 'running' AND lease_owner = ?",
            (to_micros(now + timedelta(seconds=lease_s)), job_id, owner),
        )

    async def save_progress(self, job_id: int, owner: str, payload: Mapping[str, Any]) -> bool:
        return await self._leased_update(
            "UPDATE jobs SET payload = ? WHERE job_id = ? AND status = 'running' "
            "AND lease_owner = ?",
            (json.dumps(dict(payload)), job_id, owner),
        )

    async def complete(self, job_id: int, owner: str, now: datetime) -> bool:
        return await self._leased_update(
            "UPDATE jobs SET status = 'done', lease_owner = NULL, lease_expires_at = NULL, "
            "finished_at = ? WHERE job_id = ? AND status = 'running' AND lease_owner = ?",
            (to_micros(now), job_id, owner),
        )

    async def retry(self, job_id: int, owner: str, next_attempt_at: datetime, error: str) -> bool:
        return await self._leased_update(
            "UPDATE jobs SET status = 'pending', next_attempt_at = ?, last_error = ?, "
            "lease_owner = NULL, lease_expires_at = NULL "
            "WHERE job_id = ? AND status = 'running' AND lease_owner = ?",
            (to_micros(next_attempt_at), error, job_id, owner),
        )

    async def fail(self, job_id: int, owner: str, now: datetime, error: str) -> bool:
        return await self._leased_update(
            "UPDATE jobs SET status = 'failed', last_error = ?, lease_owner = NULL, "
            "lease_expires_at = NULL, finished_at = ? "
            "WHERE job_id = ? AND status = 'running' AND lease_owner = ?",
            (error, to_micros(now), job_id, owner),
        )

    async def release(self, owner: str) -> int:
        def work(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE jobs SET status = 'pending', attempts = max(attempts - 1, 0), "
                "lease_owner = NULL, lease_expires_at = NULL "
                "WHERE lease_owner = ? AND status = 'running'",
                (owner,),
            ).rowcount

        released: int = await self._write(work)
        return released

    async def get(self, kind: str, call_sid: str) -> Job | None:
        def work(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE kind = ? AND call_sid = ?",
                (kind, call_sid),
            ).fetchone()
            return None if row is None else _job(row)

        found: Job | None = await self._run(work)
        return found

    async def unfinished_for_call(self, call_sid: str) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            return (
                conn.execute(
                    "SELECT 1 FROM jobs WHERE call_sid = ? AND status IN ('pending', 'running') "
                    "LIMIT 1",
                    (call_sid,),
                ).fetchone()
                is not None
            )

        unfinished: bool = await self._run(work)
        return unfinished

    async def counts(self, kind: str | None = None) -> dict[JobStatus, int]:
        def work(conn: sqlite3.Connection) -> dict[JobStatus, int]:
            if kind is None:
                rows = conn.execute("SELECT status, count(*) FROM jobs GROUP BY status")
            else:
                rows = conn.execute(
                    "SELECT status, count(*) FROM jobs WHERE kind = ? GROUP BY status", (kind,)
                )
            return {JobStatus(row[0]): row[1] for row in rows}

        counts: dict[JobStatus, int] = await self._run(work)
        return counts

    async def purge_finished(self, finished_before: datetime) -> int:
        before = to_micros(finished_before)

        def work(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM jobs WHERE status IN ('done', 'failed') AND finished_at < ?",
                (before,),
            ).rowcount

        removed: int = await self._write(work)
        return removed
