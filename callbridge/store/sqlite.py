"""The embedded SQLite store: calls, segments and the webhook outbox in one file.

All SQLite work runs on one dedicated thread (the stdlib driver blocks), so the event loop
never waits on the disk. The file is in WAL mode with ``synchronous=NORMAL`` and a busy
timeout, and every write transaction starts with ``BEGIN IMMEDIATE``, so several
``callbridge`` processes can share it. Schema versions live in ``PRAGMA user_version`` and
are applied at :meth:`SqliteStore.open`. The writes of a call's life and of the outbox are the
statements of :mod:`callbridge.store.writes`, shared with the PostgreSQL store.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import structlog

from callbridge.jobs.model import JobQueue, NewJob
from callbridge.models import (
    BatchTranscript,
    CallEnded,
    CallInfo,
    CommittedSegment,
    segment_to_stored_json,
    utc_now,
)
from callbridge.store import writes
from callbridge.store.base import (
    FINAL_TWILIO_STATUSES,
    CallRecord,
    CallStatus,
    Delivery,
    DeliveryCounts,
    DeliveryStatus,
    EventsStored,
    LostStream,
    OutboxEvent,
    StoredEvent,
    StoreError,
    StreamClaim,
    TargetBacklog,
    backlog_per_target,
    decode_cursor,
    encode_cursor,
    from_micros,
    log_write_after_end,
    split_ai_summary,
    to_micros,
)
from callbridge.store.jobs_sqlite import SqliteJobQueue, insert_jobs
from callbridge.store.migrations import load_migrations
from callbridge.store.rows import (
    BATCH_COLUMNS,
    CALL_COLUMNS,
    DELIVERY_COLUMNS,
    SEGMENT_COLUMNS,
    batch_transcript,
    call_record,
    committed_segment,
    delivery,
)
from callbridge.store.writes import SQLITE

log = structlog.get_logger(__name__)

_FINAL_STATUSES_SQL = ", ".join(f"'{status}'" for status in sorted(FINAL_TWILIO_STATUSES))
_RENEW_BATCH = 500  # call SIDs per renewal statement (SQLite binds at most 32766 values)

T = TypeVar("T")
_SQL = SQLITE.sql


def _statements(script: str) -> Iterator[str]:
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending.strip()
            pending = ""
    leftover = [line for line in pending.splitlines() if line.strip()]
    if any(not line.strip().startswith("--") for line in leftover):
        raise ValueError("incomplete SQL statement at the end of a migration")


def _opt_micros(moment: datetime | None) -> int | None:
    return None if moment is None else to_micros(moment)


class SqliteStore:
    """:class:`~callbridge.store.base.DurableStore` on a SQLite file.

    ``webhook_targets`` are the URLs every event gets a delivery row for. Events are
    stored either way: they are the call's event log (``GET /v1/calls/{sid}/events``).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        webhook_targets: Sequence[str] = (),
        busy_timeout_s: float = 10.0,
        url: str | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._path = str(path)
        self._url = url or f"sqlite:///{self._path}"
        self._targets = tuple(dict.fromkeys(webhook_targets))
        self._busy_timeout_s = busy_timeout_s
        self._clock = clock
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._events_stored: EventsStored | None = None
        # the calls the running write stored events of; store thread only
        self._event_calls: set[str] | None = None

    @property
    def webhook_targets(self) -> tuple[str, ...]:
        return self._targets

    @property
    def jobs(self) -> JobQueue:
        return SqliteJobQueue(self._run, self._write)

    # plumbing -----------------------------------------------------------------------------

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None or self._conn is None:
            raise StoreError("the store is not open")
        conn = self._conn

        def call() -> T:
            try:
                return work(conn)
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite error on {self._url}: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work`` in one write transaction; after its commit, the events callback is told
        the calls it stored events of."""
        event_calls: set[str] = set()

        def transaction(conn: sqlite3.Connection) -> T:
            self._event_calls = event_calls
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = work(conn)
                except BaseException:
                    conn.execute("ROLLBACK")
                    event_calls.clear()
                    raise
                conn.execute("COMMIT")
                return result
            finally:
                self._event_calls = None

        result = await self._run(transaction)
        if self._events_stored is not None:
            for call_sid in event_calls:
                self._events_stored(call_sid)
        return result

    def on_events_stored(self, callback: EventsStored | None) -> None:
        self._events_stored = callback

    @staticmethod
    def _deliveries(conn: sqlite3.Connection, ids: Sequence[int]) -> list[Delivery]:
        marks = ",".join("?" * len(ids))
        rows = conn.execute(
            f"SELECT {DELIVERY_COLUMNS} FROM deliveries d "
            "JOIN events e ON e.event_id = d.event_id "
            f"WHERE d.delivery_id IN ({marks}) "
            "ORDER BY d.next_attempt_at, d.delivery_id",
            list(ids),
        ).fetchall()
        return [delivery(row, from_micros) for row in rows]

    def _now_us(self) -> int:
        return to_micros(self._clock())

    # lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        if self._conn is not None:
            return
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="callbridge-sqlite")
        loop = asyncio.get_running_loop()
        try:
            self._conn = await loop.run_in_executor(executor, self._open_sync)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._executor = executor

    def _open_sync(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self._path, timeout=self._busy_timeout_s, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"DATABASE_URL: cannot open {self._url}: {exc}") from None
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            # Deleted rows are overwritten with zeros, not left in free pages (erasure).
            conn.execute("PRAGMA secure_delete = ON")
            self._migrate(conn)
        except StoreError:
            conn.close()
            raise
        except sqlite3.DatabaseError as exc:
            conn.close()
            if "not a database" in str(exc) or "malformed" in str(exc):
                raise StoreError(
                    f"DATABASE_URL: {self._url} is not a usable SQLite database ({exc})"
                ) from None
            raise StoreError(f"DATABASE_URL: cannot open {self._url}: {exc}") from None
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        migrations = load_migrations("sqlite")
        latest = migrations[-1][0]
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > latest:
                raise StoreError(
                    f"DATABASE_URL: {self._url} has schema version {version}, newer than the "
                    f"{latest} this callbridge knows; upgrade callbridge"
                )
            for number, script in migrations:
                if number <= version:
                    continue
                for statement in _statements(script):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
                log.info("store.migrated", backend="sqlite", version=number)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    async def close(self) -> None:
        if self._conn is None or self._executor is None:
            return
        conn, executor = self._conn, self._executor
        self._conn = None
        await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        executor.shutdown(wait=False)
        self._executor = None

    # the outbox, inside the caller's transaction --------------------------------------------

    def _enqueue(
        self, conn: sqlite3.Connection, events: Sequence[OutboxEvent], now: datetime
    ) -> None:
        for event in events:
            stored = conn.execute(_SQL(writes.EVENT_INSERT), writes.event_args(event, SQLITE))
            if stored.fetchone() is None:
                continue  # stored before: its deliveries exist
            if self._event_calls is not None:
                self._event_calls.add(event.call_sid)
            for target in self._targets:
                conn.execute(
                    _SQL(writes.DELIVERY_INSERT), writes.delivery_args(event, target, now, SQLITE)
                )

    # calls and segments -------------------------------------------------------------------

    async def call_requested(
        self, call_sid: str, account_sid: str | None, from_number: str | None, to_number: str | None
    ) -> None:
        now = self._now_us()

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO calls (call_sid, status, account_sid, from_number, to_number, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (call_sid) DO UPDATE SET "
                "account_sid = coalesce(calls.account_sid, excluded.account_sid), "
                "from_number = coalesce(calls.from_number, excluded.from_number), "
                "to_number = coalesce(calls.to_number, excluded.to_number) "
                "WHERE calls.status <> 'ended'",
                (call_sid, CallStatus.RINGING, account_sid, from_number, to_number, now),
            )

        await self._write(work)

    async def call_started(self, call: CallInfo, events: Sequence[OutboxEvent]) -> None:
        now = self._clock()

        def work(conn: sqlite3.Connection) -> None:
            row = conn.execute(_SQL(writes.CALL_STATE), (call.call_sid,)).fetchone()
            if row is not None and row["status"] == CallStatus.ENDED:
                log_write_after_end("call_started", call.call_sid)
                return
            if (
                row is not None
                and row["started_at"] is not None
                and row["stream_sid"] == call.stream_sid
            ):
                return  # a repeated call_started: already stored and enqueued
            conn.execute(_SQL(writes.CALL_STARTED), writes.call_started_args(call, now, SQLITE))
            self._enqueue(conn, events, now)

        await self._write(work)

    async def segment_committed(
        self, segment: CommittedSegment, events: Sequence[OutboxEvent]
    ) -> None:
        now = self._clock()

        def work(conn: sqlite3.Connection) -> None:
            row = conn.execute(_SQL(writes.CALL_STATE), (segment.call_sid,)).fetchone()
            if row is not None and row["status"] == CallStatus.ENDED:
                log_write_after_end("segment_committed", segment.call_sid)
                return
            inserted = conn.execute(
                _SQL(writes.SEGMENT_INSERT), writes.segment_args(segment, SQLITE)
            )
            if inserted.fetchone() is None:
                log.warning(
                    "store.segment_duplicate", call_sid=segment.call_sid, sequence=segment.sequence
                )
                return  # the same segment again: its event is already enqueued
            conn.execute(
                _SQL(writes.SEGMENT_COUNTED), writes.segment_counted_args(segment, now, SQLITE)
            )
            self._enqueue(conn, events, now)

        await self._write(work)

    async def call_ended(
        self,
        ended: CallEnded,
        summary: Mapping[str, Any],
        events: Sequence[OutboxEvent],
        jobs: Sequence[NewJob] = (),
    ) -> None:
        now = self._clock()
        analytics, ai_summary = split_ai_summary(summary)

        def work(conn: sqlite3.Connection) -> None:
            row = conn.execute(_SQL(writes.CALL_STATE), (ended.call_sid,)).fetchone()
            if row is not None and row["status"] == CallStatus.ENDED:
                return  # a repeated call_ended: already stored and enqueued
            conn.execute(
                _SQL(writes.CALL_ENDED),
                writes.call_ended_args(ended, analytics, ai_summary, now, SQLITE),
            )
            self._enqueue(conn, events, now)
            insert_jobs(conn, jobs, to_micros(now))

        await self._write(work)

    async def set_ai_summary(
        self, call_sid: str, ai_summary: Mapping[str, Any], events: Sequence[OutboxEvent]
    ) -> bool:
        now = self._clock()

        def work(conn: sqlite3.Connection) -> bool:
            updated = conn.execute(
                "UPDATE calls SET ai_summary = ? WHERE call_sid = ? AND (ai_summary IS NULL "
                "OR json_extract(ai_summary, '$.status') = 'pending')",
                (json.dumps(dict(ai_summary)), call_sid),
            ).rowcount
            if updated:
                self._enqueue(conn, events, now)
            return bool(updated)

        return await self._write(work)

    async def set_batch_transcript(
        self, record: BatchTranscript, events: Sequence[OutboxEvent], jobs: Sequence[NewJob] = ()
    ) -> bool:
        now = self._clock()

        def work(conn: sqlite3.Connection) -> bool:
            inserted = conn.execute(
                "INSERT INTO batch_transcripts (call_sid, status, segments, summary, error, "
                "transcription_ids, audio_seconds, model_id, created_at) "
                "SELECT ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS "
                "(SELECT 1 FROM calls WHERE call_sid = ?) ON CONFLICT (call_sid) DO NOTHING",
                (
                    record.call_sid,
                    str(record.status),
                    json.dumps([segment_to_stored_json(s) for s in record.segments]),
                    None if record.summary is None else json.dumps(dict(record.summary)),
                    record.error,
                    json.dumps(list(record.transcription_ids)),
                    record.audio_seconds,
                    record.model_id,
                    to_micros(record.created_at),
                    record.call_sid,
                ),
            ).rowcount
            if inserted:
                self._enqueue(conn, events, now)
                insert_jobs(conn, jobs, to_micros(now))
            return bool(inserted)

        return await self._write(work)

    async def get_batch_transcript(self, call_sid: str) -> BatchTranscript | None:
        def work(conn: sqlite3.Connection) -> BatchTranscript | None:
            row = conn.execute(
                f"SELECT {BATCH_COLUMNS} FROM batch_transcripts WHERE call_sid = ?", (call_sid,)
            ).fetchone()
            return None if row is None else batch_transcript(row, json.loads, from_micros)

        return await self._run(work)

    async def twilio_status(self, call_sid: str, status: str, duration_s: int | None) -> None:
        now = self._now_us()

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO calls (call_sid, status, created_at, twilio_status, "
                "twilio_duration_s) VALUES (?, ?, ?, ?, ?) ON CONFLICT (call_sid) DO UPDATE SET "
                "twilio_status = excluded.twilio_status, "
                "twilio_duration_s = coalesce(excluded.twilio_duration_s, "
                "calls.twilio_duration_s) WHERE calls.twilio_status IS NULL "
                f"OR calls.twilio_status NOT IN ({_FINAL_STATUSES_SQL})",
                (call_sid, CallStatus.RINGING, now, status, duration_s),
            )

        await self._write(work)

    # live-call claims ---------------------------------------------------------------------

    async def claim_stream(self, call_sid: str, owner: str, lease_s: float) -> StreamClaim:
        now = self._now_us()
        expires = now + int(lease_s * 1_000_000)

        def work(conn: sqlite3.Connection) -> StreamClaim:
            claimed = conn.execute(
                "INSERT INTO calls (call_sid, status, created_at, stream_owner, "
                "stream_lease_expires_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (call_sid) "
                "DO UPDATE SET stream_owner = excluded.stream_owner, "
                "stream_lease_expires_at = excluded.stream_lease_expires_at "
                "WHERE calls.status <> 'ended' AND (calls.stream_owner IS NULL "
                "OR calls.stream_lease_expires_at <= ?) RETURNING call_sid",
                (call_sid, CallStatus.RINGING, now, owner, expires, now),
            ).fetchone()
            if claimed is not None:
                return StreamClaim.CLAIMED
            row = conn.execute(
                "SELECT status FROM calls WHERE call_sid = ?", (call_sid,)
            ).fetchone()
            return StreamClaim.ENDED if row[0] == CallStatus.ENDED else StreamClaim.LIVE_ELSEWHERE

        return await self._write(work)

    async def renew_stream_claims(
        self, owner: str, call_sids: Sequence[str], lease_s: float
    ) -> set[str]:
        if not call_sids:
            return set()
        expires = self._now_us() + int(lease_s * 1_000_000)
        sids = list(dict.fromkeys(call_sids))

        def work(conn: sqlite3.Connection) -> set[str]:
            renewed: set[str] = set()
            for start in range(0, len(sids), _RENEW_BATCH):
                batch = sids[start : start + _RENEW_BATCH]
                marks = ",".join("?" * len(batch))
                rows = conn.execute(
                    "UPDATE calls SET stream_lease_expires_at = ? "
                    f"WHERE stream_owner = ? AND call_sid IN ({marks}) RETURNING call_sid",
                    (expires, owner, *batch),
                ).fetchall()
                renewed.update(row[0] for row in rows)
            return renewed

        return await self._write(work)

    async def release_stream(self, call_sid: str, owner: str) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE calls SET stream_owner = NULL, stream_lease_expires_at = NULL "
                "WHERE call_sid = ? AND stream_owner = ?",
                (call_sid, owner),
            )

        await self._write(work)

    async def take_over_lost_streams(
        self, owner: str, lease_s: float, limit: int
    ) -> list[LostStream]:
        now = self._now_us()
        expires = now + int(lease_s * 1_000_000)

        def work(conn: sqlite3.Connection) -> list[LostStream]:
            lost = conn.execute(
                f"SELECT {CALL_COLUMNS}, stream_owner, stream_lease_expires_at FROM calls "
                "WHERE stream_owner IS NOT NULL "
                "AND stream_owner <> ? AND stream_lease_expires_at <= ? AND status = 'live' "
                "ORDER BY stream_lease_expires_at LIMIT ?",
                (owner, now, max(0, limit)),
            ).fetchall()
            for row in lost:
                conn.execute(
                    "UPDATE calls SET stream_owner = ?, stream_lease_expires_at = ? "
                    "WHERE call_sid = ?",
                    (owner, expires, row["call_sid"]),
                )
            return [
                LostStream(
                    call_record(row, json.loads, from_micros),
                    row["stream_owner"],
                    from_micros(row["stream_lease_expires_at"]),
                )
                for row in lost
            ]

        return await self._write(work)

    async def stream_lease_expiry(self, call_sid: str) -> datetime | None:
        def work(conn: sqlite3.Connection) -> datetime | None:
            row = conn.execute(
                "SELECT stream_lease_expires_at FROM calls WHERE call_sid = ? "
                "AND stream_owner IS NOT NULL AND status <> 'ended'",
                (call_sid,),
            ).fetchone()
            return None if row is None else from_micros(row[0])

        return await self._run(work)

    async def calls_ended_by_twilio(self, owner: str) -> set[str]:
        def work(conn: sqlite3.Connection) -> set[str]:
            rows = conn.execute(
                "SELECT call_sid FROM calls WHERE stream_owner = ? "
                f"AND twilio_status IN ({_FINAL_STATUSES_SQL})",
                (owner,),
            ).fetchall()
            return {row[0] for row in rows}

        return await self._run(work)

    async def get_call(self, call_sid: str) -> CallRecord | None:
        def work(conn: sqlite3.Connection) -> CallRecord | None:
            row = conn.execute(
                f"SELECT {CALL_COLUMNS} FROM calls WHERE call_sid = ?", (call_sid,)
            ).fetchone()
            return None if row is None else call_record(row, json.loads, from_micros)

        return await self._run(work)

    async def list_calls(
        self, limit: int, cursor: str | None, status: CallStatus | None = None
    ) -> tuple[list[CallRecord], str | None]:
        """Newest first. ``ValueError`` for a cursor this store did not hand out."""
        limit = max(1, limit)
        after = decode_cursor(cursor) if cursor else None
        where: list[str] = []
        params: list[Any] = []
        if status is not None:
            where.append("status = ?")
            params.append(str(status))
        if after is not None:
            where.append("(created_at, call_sid) < (?, ?)")
            params += [after[0], after[1]]
        query = (
            f"SELECT {CALL_COLUMNS} FROM calls "
            + (f"WHERE {' AND '.join(where)} " if where else "")
            + "ORDER BY created_at DESC, call_sid DESC LIMIT ?"
        )
        params.append(limit + 1)

        def work(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            return conn.execute(query, params).fetchall()

        rows = await self._run(work)
        page = [call_record(row, json.loads, from_micros) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = encode_cursor(last["created_at"], last["call_sid"])
        return page, next_cursor

    async def get_segments(self, call_sid: str) -> list[CommittedSegment]:
        def work(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            return conn.execute(
                f"SELECT {SEGMENT_COLUMNS} FROM segments WHERE call_sid = ? ORDER BY sequence",
                (call_sid,),
            ).fetchall()

        return [committed_segment(row, json.loads, from_micros) for row in await self._run(work)]

    async def delete_call(self, call_sid: str) -> bool:
        """Erase the call, its segments, its jobs and all its events and deliveries (their
        bodies carry transcript text, so delivered ones go too).

        The text is gone from the files too, not only from the tables: ``secure_delete``
        zeroes the deleted rows, and a ``TRUNCATE`` checkpoint afterwards copies the zeroed
        pages into the database file and empties the write-ahead log, which still held every
        earlier version of the pages the call was written to."""

        def work(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM deliveries WHERE call_sid = ?", (call_sid,))
            conn.execute("DELETE FROM jobs WHERE call_sid = ?", (call_sid,))
            conn.execute("DELETE FROM batch_transcripts WHERE call_sid = ?", (call_sid,))
            events = conn.execute("DELETE FROM events WHERE call_sid = ?", (call_sid,)).rowcount
            segments = conn.execute("DELETE FROM segments WHERE call_sid = ?", (call_sid,)).rowcount
            calls = conn.execute("DELETE FROM calls WHERE call_sid = ?", (call_sid,)).rowcount
            return bool(calls or segments or events)

        erased = await self._write(work)
        if erased:
            await self._run(self._checkpoint_after_erasure)
        return erased

    def _checkpoint_after_erasure(self, conn: sqlite3.Connection) -> None:
        # Waits (busy timeout) for other processes' readers to reach the latest snapshot.
        busy, wal_frames, copied = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            log.warning(
                "store.erasure_checkpoint_incomplete",
                wal_frames=wal_frames,
                copied=copied,
                detail="a reader held an older snapshot; the next checkpoint completes it",
            )

    # the event log ----------------------------------------------------------------------

    async def events_after(
        self, positions: Mapping[str, int], limit: int
    ) -> dict[str, list[StoredEvent] | None]:
        wanted = dict(positions)

        def work(conn: sqlite3.Connection) -> dict[str, list[StoredEvent] | None]:
            found: dict[str, list[StoredEvent] | None] = {}
            for call_sid, after in wanted.items():
                rows = conn.execute(
                    "SELECT position, event_id, event_type, body FROM events "
                    "WHERE call_sid = ? AND position > ? ORDER BY position LIMIT ?",
                    (call_sid, after, max(1, limit)),
                ).fetchall()
                if (
                    not rows
                    and not conn.execute(
                        "SELECT 1 FROM calls WHERE call_sid = ?", (call_sid,)
                    ).fetchone()
                ):
                    found[call_sid] = None
                    continue
                found[call_sid] = [
                    StoredEvent(call_sid, row[0], row[1], row[2], bytes(row[3])) for row in rows
                ]
            return found

        return await self._run(work)

    async def event_position(self, call_sid: str, event_id: str) -> int | None:
        def work(conn: sqlite3.Connection) -> int | None:
            row = conn.execute(
                "SELECT position FROM events WHERE event_id = ? AND call_sid = ?",
                (event_id, call_sid),
            ).fetchone()
            return None if row is None else int(row[0])

        return await self._run(work)

    # the outbox, for the dispatcher -------------------------------------------------------

    async def claim_deliveries(
        self, now: datetime, limit: int, owner: str, lease_s: float, target: str | None = None
    ) -> list[Delivery]:
        now_us = to_micros(now)
        expires_us = to_micros(now + timedelta(seconds=lease_s))
        where = (
            "status = 'pending' AND is_head = 1 AND next_attempt_at <= ? "
            "AND (lease_expires_at IS NULL OR lease_expires_at <= ?)"
        )
        params: list[Any] = [now_us, now_us]
        if target is not None:
            where = "target = ? AND " + where
            params.insert(0, target)
        select_due = (
            f"SELECT delivery_id FROM deliveries WHERE {where} "
            "ORDER BY next_attempt_at, delivery_id LIMIT ?"
        )
        params.append(max(0, limit))

        def work(conn: sqlite3.Connection) -> list[Delivery]:
            # Look without the write lock first: most polls find nothing.
            if not conn.execute(select_due, params).fetchone():
                return []
            conn.execute("BEGIN IMMEDIATE")
            try:
                ids = [row[0] for row in conn.execute(select_due, params).fetchall()]
                if not ids:
                    conn.execute("COMMIT")
                    return []
                marks = ",".join("?" * len(ids))
                conn.execute(
                    "UPDATE deliveries SET lease_owner = ?, lease_expires_at = ? "
                    f"WHERE delivery_id IN ({marks})",
                    (owner, expires_us, *ids),
                )
                deliveries = self._deliveries(conn, ids)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return deliveries

        return await self._run(work)

    async def _finish(self, delivery_id: int, owner: str, status: str, error: str | None) -> bool:
        now = self._clock()
        finished = writes.delivery_finished_args(delivery_id, owner, status, error, now, SQLITE)

        def work(conn: sqlite3.Connection) -> bool:
            row = conn.execute(_SQL(writes.DELIVERY_FINISHED), finished).fetchone()
            if row is None:
                return False
            conn.execute(_SQL(writes.NEXT_HEAD), (row["call_sid"], row["target"]))
            return True

        return await self._write(work)

    async def mark_delivered(self, delivery_id: int, owner: str) -> bool:
        return await self._finish(delivery_id, owner, DeliveryStatus.DELIVERED, None)

    async def mark_failed(self, delivery_id: int, owner: str, error: str) -> bool:
        return await self._finish(delivery_id, owner, DeliveryStatus.FAILED, error)

    async def mark_retry(
        self, delivery_id: int, owner: str, next_attempt_at: datetime, error: str
    ) -> bool:
        retry = writes.delivery_retry_args(delivery_id, owner, next_attempt_at, error, SQLITE)

        def work(conn: sqlite3.Connection) -> bool:
            return bool(conn.execute(_SQL(writes.DELIVERY_RETRY), retry).rowcount)

        return await self._write(work)

    async def release_claims(self, owner: str) -> int:
        def work(conn: sqlite3.Connection) -> int:
            return conn.execute(_SQL(writes.RELEASE_CLAIMS), (owner,)).rowcount

        return await self._write(work)

    async def delivery_counts(self) -> DeliveryCounts:
        def work(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute("SELECT status, count(*) FROM deliveries GROUP BY status")
            return {row[0]: row[1] for row in rows}

        counts = await self._run(work)
        return DeliveryCounts(
            pending=counts.get(DeliveryStatus.PENDING, 0),
            delivered=counts.get(DeliveryStatus.DELIVERED, 0),
            failed=counts.get(DeliveryStatus.FAILED, 0),
        )

    async def pending_deliveries_exist(self) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            return (
                conn.execute("SELECT 1 FROM deliveries WHERE status = 'pending' LIMIT 1").fetchone()
                is not None
            )

        return await self._run(work)

    async def delivery_backlog(self) -> list[TargetBacklog]:
        def work(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            return conn.execute(
                "SELECT target, count(*) AS pending, min(created_at) AS oldest FROM deliveries "
                "WHERE status = 'pending' GROUP BY target"
            ).fetchall()

        rows = {row["target"]: row for row in await self._run(work)}
        return backlog_per_target(
            self._targets,
            {t: (row["pending"], from_micros(row["oldest"])) for t, row in rows.items()},
        )

    async def purge_finished_deliveries(self, finished_before: datetime) -> int:
        before = SQLITE.time(finished_before)

        def work(conn: sqlite3.Connection) -> int:
            return conn.execute(_SQL(writes.PURGE_FINISHED), (before,)).rowcount

        return await self._write(work)
