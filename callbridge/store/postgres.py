"""The PostgreSQL store (scale-out): the same schema and behaviour as SQLite, on asyncpg.

Migrations run at :meth:`PostgresStore.open` in one transaction under an advisory lock, so
processes starting together apply them once. Claims use ``FOR UPDATE SKIP LOCKED`` and a
lease, and every transaction that adds or finishes a delivery takes a per-call advisory
lock, so the "only the oldest unfinished delivery per (call, target) is claimable" rule
holds with any number of processes. The writes of a call's life and of the outbox are the
statements of :mod:`callbridge.store.writes`, shared with the SQLite store.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import structlog

from callbridge.jobs.model import JobQueue, NewJob
from callbridge.masking import mask_url
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
from callbridge.store.jobs_postgres import PostgresJobQueue, insert_jobs
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
from callbridge.store.writes import POSTGRES

log = structlog.get_logger(__name__)
_SQL = POSTGRES.sql


def _as_is(value: Any) -> Any:
    """asyncpg already decodes jsonb (via the codec below) and timestamptz."""
    return value


# ("CB_M", hashtext(schema)): migrations of the schema the tables live in (current_schema()),
# so deployments in other schemas of one database never wait on each other.
MIGRATION_LOCK_SPACE = 0x43425F4D
_CALL_LOCK_SPACE = 0x43425F43  # ("CB_C", hashtext(call_sid)): a call's delivery queues


# Leases (webhook deliveries, live calls) are written with each process's clock and read by
# others: beyond this much disagreement with the database's clock, say so at start-up.
CLOCK_SKEW_WARNING_S = 1.0

_FINAL_STATUSES = sorted(FINAL_TWILIO_STATUSES)

_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, asyncio.TimeoutError)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class PostgresStore:
    """:class:`~callbridge.store.base.DurableStore` on PostgreSQL via an asyncpg pool."""

    def __init__(
        self,
        url: str,
        *,
        webhook_targets: Sequence[str] = (),
        min_connections: int = 1,
        max_connections: int = 10,
        connect_timeout_s: float = 10.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._url = url
        self._targets = tuple(dict.fromkeys(webhook_targets))
        self._min = min_connections
        self._max = max_connections
        self._connect_timeout_s = connect_timeout_s
        self._clock = clock
        self._pool: asyncpg.Pool | None = None
        self._events_stored: EventsStored | None = None

    @property
    def webhook_targets(self) -> tuple[str, ...]:
        return self._targets

    @property
    def jobs(self) -> JobQueue:
        return PostgresJobQueue(self._connection, self._transaction)

    # plumbing -----------------------------------------------------------------------------

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        if self._pool is None:
            raise StoreError("the store is not open")
        try:
            async with self._pool.acquire() as conn:
                yield conn
        except _DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL error on {mask_url(self._url)}: {exc}") from exc

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._connection() as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[tuple[asyncpg.Connection, set[str]]]:
        """A transaction, and the set its ``_enqueue`` adds the calls it stored events of
        to; after the commit (not after a rollback) the events callback is told them."""
        event_calls: set[str] = set()
        async with self._transaction() as conn:
            yield conn, event_calls
        if self._events_stored is not None:
            for call_sid in event_calls:
                self._events_stored(call_sid)

    def on_events_stored(self, callback: EventsStored | None) -> None:
        self._events_stored = callback

    # lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            pool = await asyncpg.create_pool(
                self._url,
                min_size=self._min,
                max_size=self._max,
                init=_init_connection,
                timeout=self._connect_timeout_s,
            )
        except (*_DB_ERRORS, ValueError) as exc:
            raise StoreError(
                f"DATABASE_URL: cannot connect to {mask_url(self._url)}: {exc}"
            ) from None
        try:
            await self._migrate(pool)
            await self._check_clock(pool)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def _check_clock(self, pool: asyncpg.Pool) -> None:
        """Warn when this process's clock and the database's disagree: another instance
        would then take this one's leases early, or late."""
        try:
            async with pool.acquire() as conn:
                before = self._clock()
                database_now = await conn.fetchval("SELECT clock_timestamp()")
                after = self._clock()
        except _DB_ERRORS as exc:
            raise StoreError(f"DATABASE_URL: {mask_url(self._url)}: {exc}") from None
        skew_s = (before + (after - before) / 2 - database_now).total_seconds()
        if abs(skew_s) > CLOCK_SKEW_WARNING_S:
            log.warning(
                "store.clock_skew",
                skew_s=round(skew_s, 3),
                detail="this clock and PostgreSQL's differ; keep every instance on NTP",
            )

    async def _migrate(self, pool: asyncpg.Pool) -> None:
        migrations = load_migrations("postgres")
        latest = migrations[-1][0]
        key = "$1, hashtext(current_schema())"
        try:
            async with pool.acquire() as conn, conn.transaction():
                if not await conn.fetchval(
                    f"SELECT pg_try_advisory_xact_lock({key})", MIGRATION_LOCK_SPACE
                ):
                    # Another process is migrating (or checking) the schema: wait for it.
                    log.info("store.migration_waiting", backend="postgres")
                    await conn.execute(f"SELECT pg_advisory_xact_lock({key})", MIGRATION_LOCK_SPACE)
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS callbridge_schema (version INTEGER NOT NULL)"
                )
                version = await conn.fetchval("SELECT max(version) FROM callbridge_schema") or 0
                if version > latest:
                    raise StoreError(
                        f"DATABASE_URL: {mask_url(self._url)} has schema version {version}, "
                        f"newer than the {latest} this callbridge knows; upgrade callbridge"
                    )
                for number, script in migrations:
                    if number <= version:
                        continue
                    await conn.execute(script)
                    await conn.execute("INSERT INTO callbridge_schema VALUES ($1)", number)
                    log.info("store.migrated", backend="postgres", version=number)
        except _DB_ERRORS as exc:
            raise StoreError(f"DATABASE_URL: cannot migrate {mask_url(self._url)}: {exc}") from None

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    # the outbox, inside the caller's transaction --------------------------------------------

    async def _enqueue(
        self,
        conn: asyncpg.Connection,
        events: Sequence[OutboxEvent],
        now: datetime,
        event_calls: set[str],
    ) -> None:
        if not events:
            return
        # The call's lock also makes max + 1 below the call's next position: writers of
        # one call's events take turns, and each sees the last one's commit.
        for call_sid in sorted({event.call_sid for event in events}):
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))", _CALL_LOCK_SPACE, call_sid
            )
        for event in events:
            stored = await conn.fetchval(
                _SQL(writes.EVENT_INSERT), *writes.event_args(event, POSTGRES)
            )
            if stored is None:
                continue  # stored before: its deliveries exist
            event_calls.add(event.call_sid)
            for target in self._targets:
                await conn.execute(
                    _SQL(writes.DELIVERY_INSERT),
                    *writes.delivery_args(event, target, now, POSTGRES),
                )

    # calls and segments -------------------------------------------------------------------

    async def call_requested(
        self, call_sid: str, account_sid: str | None, from_number: str | None, to_number: str | None
    ) -> None:
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO calls (call_sid, status, account_sid, from_number, to_number, "
                "created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (call_sid) DO UPDATE SET "
                "account_sid = coalesce(calls.account_sid, excluded.account_sid), "
                "from_number = coalesce(calls.from_number, excluded.from_number), "
                "to_number = coalesce(calls.to_number, excluded.to_number) "
                "WHERE calls.status <> 'ended'",
                call_sid,
                CallStatus.RINGING.value,
                account_sid,
                from_number,
                to_number,
                self._clock(),
            )

    async def call_started(self, call: CallInfo, events: Sequence[OutboxEvent]) -> None:
        now = self._clock()
        async with self._write() as (conn, event_calls):
            row = await conn.fetchrow(_SQL(writes.CALL_STATE) + " FOR UPDATE", call.call_sid)
            if row is not None and row["status"] == CallStatus.ENDED:
                log_write_after_end("call_started", call.call_sid)
                return
            if (
                row is not None
                and row["started_at"] is not None
                and row["stream_sid"] == call.stream_sid
            ):
                return  # a repeated call_started: already stored and enqueued
            await conn.execute(
                _SQL(writes.CALL_STARTED), *writes.call_started_args(call, now, POSTGRES)
            )
            await self._enqueue(conn, events, now, event_calls)

    async def segment_committed(
        self, segment: CommittedSegment, events: Sequence[OutboxEvent]
    ) -> None:
        now = self._clock()
        async with self._write() as (conn, event_calls):
            row = await conn.fetchrow(_SQL(writes.CALL_STATE) + " FOR UPDATE", segment.call_sid)
            if row is not None and row["status"] == CallStatus.ENDED:
                log_write_after_end("segment_committed", segment.call_sid)
                return
            inserted = await conn.fetchval(
                _SQL(writes.SEGMENT_INSERT), *writes.segment_args(segment, POSTGRES)
            )
            if inserted is None:
                log.warning(
                    "store.segment_duplicate", call_sid=segment.call_sid, sequence=segment.sequence
                )
                return  # the same segment again: its event is already enqueued
            await conn.execute(
                _SQL(writes.SEGMENT_COUNTED), *writes.segment_counted_args(segment, now, POSTGRES)
            )
            await self._enqueue(conn, events, now, event_calls)

    async def call_ended(
        self,
        ended: CallEnded,
        summary: Mapping[str, Any],
        events: Sequence[OutboxEvent],
        jobs: Sequence[NewJob] = (),
    ) -> None:
        now = self._clock()
        analytics, ai_summary = split_ai_summary(summary)
        async with self._write() as (conn, event_calls):
            row = await conn.fetchrow(_SQL(writes.CALL_STATE) + " FOR UPDATE", ended.call_sid)
            if row is not None and row["status"] == CallStatus.ENDED:
                return  # a repeated call_ended: already stored and enqueued
            await conn.execute(
                _SQL(writes.CALL_ENDED),
                *writes.call_ended_args(ended, analytics, ai_summary, now, POSTGRES),
            )
            await self._enqueue(conn, events, now, event_calls)
            await insert_jobs(conn, jobs, now)

    async def set_ai_summary(
        self, call_sid: str, ai_summary: Mapping[str, Any], events: Sequence[OutboxEvent]
    ) -> bool:
        now = self._clock()
        async with self._write() as (conn, event_calls):
            updated = await conn.fetchval(
                "UPDATE calls SET ai_summary = $1 WHERE call_sid = $2 AND (ai_summary IS NULL "
                "OR ai_summary->>'status' = 'pending') RETURNING true",
                dict(ai_summary),
                call_sid,
            )
            if updated:
                await self._enqueue(conn, events, now, event_calls)
            return bool(updated)

    async def set_batch_transcript(
        self, record: BatchTranscript, events: Sequence[OutboxEvent], jobs: Sequence[NewJob] = ()
    ) -> bool:
        now = self._clock()
        async with self._write() as (conn, event_calls):
            inserted = await conn.fetchval(
                "INSERT INTO batch_transcripts (call_sid, status, segments, summary, error, "
                "transcription_ids, audio_seconds, model_id, created_at) "
                "SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 WHERE EXISTS "
                "(SELECT 1 FROM calls WHERE call_sid = $1) ON CONFLICT (call_sid) DO NOTHING "
                "RETURNING true",
                record.call_sid,
                str(record.status),
                [segment_to_stored_json(s) for s in record.segments],
                None if record.summary is None else dict(record.summary),
                record.error,
                list(record.transcription_ids),
                record.audio_seconds,
                record.model_id,
                record.created_at,
            )
            if inserted:
                await self._enqueue(conn, events, now, event_calls)
                await insert_jobs(conn, jobs, now)
            return bool(inserted)

    async def get_batch_transcript(self, call_sid: str) -> BatchTranscript | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {BATCH_COLUMNS} FROM batch_transcripts WHERE call_sid = $1", call_sid
            )
        return None if row is None else batch_transcript(row, _as_is, _as_is)

    async def twilio_status(self, call_sid: str, status: str, duration_s: int | None) -> None:
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO calls (call_sid, status, created_at, twilio_status, "
                "twilio_duration_s) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (call_sid) DO UPDATE "
                "SET twilio_status = excluded.twilio_status, "
                "twilio_duration_s = coalesce(excluded.twilio_duration_s, "
                "calls.twilio_duration_s) "
                "WHERE calls.twilio_status IS NULL OR NOT calls.twilio_status = ANY($6::text[])",
                call_sid,
                CallStatus.RINGING.value,
                self._clock(),
                status,
                duration_s,
                _FINAL_STATUSES,
            )

    # live-call claims ---------------------------------------------------------------------

    async def claim_stream(self, call_sid: str, owner: str, lease_s: float) -> StreamClaim:
        now = self._clock()
        async with self._connection() as conn:
            claimed = await conn.fetchval(
                "INSERT INTO calls (call_sid, status, created_at, stream_owner, "
                "stream_lease_expires_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (call_sid) "
                "DO UPDATE SET stream_owner = excluded.stream_owner, "
                "stream_lease_expires_at = excluded.stream_lease_expires_at "
                "WHERE calls.status <> 'ended' AND (calls.stream_owner IS NULL "
                "OR calls.stream_lease_expires_at <= $3) RETURNING call_sid",
                call_sid,
                CallStatus.RINGING.value,
                now,
                owner,
                now + timedelta(seconds=lease_s),
            )
            if claimed is not None:
                return StreamClaim.CLAIMED
            status = await conn.fetchval("SELECT status FROM calls WHERE call_sid = $1", call_sid)
        return StreamClaim.ENDED if status == CallStatus.ENDED else StreamClaim.LIVE_ELSEWHERE

    async def renew_stream_claims(
        self, owner: str, call_sids: Sequence[str], lease_s: float
    ) -> set[str]:
        if not call_sids:
            return set()
        async with self._connection() as conn:
            rows = await conn.fetch(
                "UPDATE calls SET stream_lease_expires_at = $1 "
                "WHERE stream_owner = $2 AND call_sid = ANY($3::text[]) RETURNING call_sid",
                self._clock() + timedelta(seconds=lease_s),
                owner,
                list(dict.fromkeys(call_sids)),
            )
        return {row[0] for row in rows}

    async def release_stream(self, call_sid: str, owner: str) -> None:
        async with self._connection() as conn:
            await conn.execute(
                "UPDATE calls SET stream_owner = NULL, stream_lease_expires_at = NULL "
                "WHERE call_sid = $1 AND stream_owner = $2",
                call_sid,
                owner,
            )

    async def take_over_lost_streams(
        self, owner: str, lease_s: float, limit: int
    ) -> list[LostStream]:
        now = self._clock()
        columns = ", ".join(f"c.{name.strip()}" for name in CALL_COLUMNS.split(","))
        async with self._connection() as conn:
            rows = await conn.fetch(
                "WITH lost AS (SELECT call_sid, stream_owner, stream_lease_expires_at FROM calls "
                "WHERE stream_owner IS NOT NULL AND stream_owner <> $1 "
                "AND stream_lease_expires_at <= $2 AND status = 'live' "
                "ORDER BY stream_lease_expires_at LIMIT $4 FOR UPDATE SKIP LOCKED) "
                "UPDATE calls c SET stream_owner = $1, stream_lease_expires_at = $3 FROM lost "
                f"WHERE c.call_sid = lost.call_sid RETURNING {columns}, "
                "lost.stream_owner AS previous_owner, lost.stream_lease_expires_at AS expired_at",
                owner,
                now,
                now + timedelta(seconds=lease_s),
                max(0, limit),
            )
        return [
            LostStream(call_record(row, _as_is, _as_is), row["previous_owner"], row["expired_at"])
            for row in rows
        ]

    async def stream_lease_expiry(self, call_sid: str) -> datetime | None:
        async with self._connection() as conn:
            expiry: datetime | None = await conn.fetchval(
                "SELECT stream_lease_expires_at FROM calls WHERE call_sid = $1 "
                "AND stream_owner IS NOT NULL AND status <> 'ended'",
                call_sid,
            )
        return expiry

    async def calls_ended_by_twilio(self, owner: str) -> set[str]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT call_sid FROM calls WHERE stream_owner = $1 "
                "AND twilio_status = ANY($2::text[])",
                owner,
                _FINAL_STATUSES,
            )
        return {row[0] for row in rows}

    async def get_call(self, call_sid: str) -> CallRecord | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {CALL_COLUMNS} FROM calls WHERE call_sid = $1", call_sid
            )
        return None if row is None else call_record(row, _as_is, _as_is)

    async def list_calls(
        self, limit: int, cursor: str | None, status: CallStatus | None = None
    ) -> tuple[list[CallRecord], str | None]:
        """Newest first. ``ValueError`` for a cursor this store did not hand out."""
        limit = max(1, limit)
        after = decode_cursor(cursor) if cursor else None
        where: list[str] = []
        args: list[Any] = []
        if status is not None:
            args.append(status.value)
            where.append(f"status = ${len(args)}")
        if after is not None:
            args += [from_micros(after[0]), after[1]]
            where.append(f"(created_at, call_sid) < (${len(args) - 1}, ${len(args)})")
        args.append(limit + 1)
        query = (
            f"SELECT {CALL_COLUMNS} FROM calls "
            + (f"WHERE {' AND '.join(where)} " if where else "")
            + f"ORDER BY created_at DESC, call_sid DESC LIMIT ${len(args)}"
        )
        async with self._connection() as conn:
            rows = await conn.fetch(query, *args)
        page = [call_record(row, _as_is, _as_is) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = encode_cursor(to_micros(last["created_at"]), last["call_sid"])
        return page, next_cursor

    async def get_segments(self, call_sid: str) -> list[CommittedSegment]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT {SEGMENT_COLUMNS} FROM segments WHERE call_sid = $1 ORDER BY sequence",
                call_sid,
            )
        return [committed_segment(row, _as_is, _as_is) for row in rows]

    async def delete_call(self, call_sid: str) -> bool:
        """Erase the call, its segments, its jobs and all its events and deliveries (their
        bodies carry transcript text, so delivered ones go too)."""
        async with self._transaction() as conn:
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))", _CALL_LOCK_SPACE, call_sid
            )
            await conn.execute("DELETE FROM deliveries WHERE call_sid = $1", call_sid)
            await conn.execute("DELETE FROM jobs WHERE call_sid = $1", call_sid)
            await conn.execute("DELETE FROM batch_transcripts WHERE call_sid = $1", call_sid)
            events = await conn.execute("DELETE FROM events WHERE call_sid = $1", call_sid)
            segments = await conn.execute("DELETE FROM segments WHERE call_sid = $1", call_sid)
            calls = await conn.execute("DELETE FROM calls WHERE call_sid = $1", call_sid)
        return any(not status.endswith(" 0") for status in (events, segments, calls))

    # the event log ----------------------------------------------------------------------

    async def events_after(
        self, positions: Mapping[str, int], limit: int
    ) -> dict[str, list[StoredEvent] | None]:
        if not positions:
            return {}
        # One round trip for every watched call: each call's next events, and whether the
        # call is still there (an erased call has no row).
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT w.call_sid, c.call_sid IS NOT NULL AS present, e.position, e.event_id, "
                "e.event_type, e.body FROM unnest($1::text[], $2::bigint[]) AS w(call_sid, after) "
                "LEFT JOIN calls c ON c.call_sid = w.call_sid "
                "LEFT JOIN LATERAL (SELECT position, event_id, event_type, body FROM events "
                "WHERE events.call_sid = w.call_sid AND events.position > w.after "
                "ORDER BY position LIMIT $3) e ON TRUE "
                "ORDER BY w.call_sid, e.position",
                list(positions),
                list(positions.values()),
                max(1, limit),
            )
        found: dict[str, list[StoredEvent] | None] = {}
        for row in rows:
            call_sid = row["call_sid"]
            events = found.setdefault(call_sid, [])
            if row["position"] is not None:
                assert events is not None
                events.append(
                    StoredEvent(
                        call_sid, row["position"], row["event_id"], row["event_type"], row["body"]
                    )
                )
            elif not row["present"]:
                found[call_sid] = None
        return found

    async def event_position(self, call_sid: str, event_id: str) -> int | None:
        async with self._connection() as conn:
            position = await conn.fetchval(
                "SELECT position FROM events WHERE event_id = $1 AND call_sid = $2",
                event_id,
                call_sid,
            )
        return None if position is None else int(position)

    # the outbox, for the dispatcher -------------------------------------------------------

    async def claim_deliveries(
        self, now: datetime, limit: int, owner: str, lease_s: float, target: str | None = None
    ) -> list[Delivery]:
        target_filter = "AND target = $5" if target is not None else ""
        query = (
            "WITH picked AS (SELECT delivery_id FROM deliveries "
            "WHERE status = 'pending' AND is_head AND next_attempt_at <= $1 "
            f"AND (lease_expires_at IS NULL OR lease_expires_at <= $1) {target_filter} "
            "ORDER BY next_attempt_at, delivery_id LIMIT $2 FOR UPDATE SKIP LOCKED) "
            "UPDATE deliveries d SET lease_owner = $3, lease_expires_at = $4 "
            "FROM picked, events e WHERE d.delivery_id = picked.delivery_id "
            f"AND e.event_id = d.event_id RETURNING {DELIVERY_COLUMNS}, d.next_attempt_at"
        )
        args: list[Any] = [now, max(0, limit), owner, now + timedelta(seconds=lease_s)]
        if target is not None:
            args.append(target)
        async with self._connection() as conn:
            rows = await conn.fetch(query, *args)
        rows = sorted(rows, key=lambda row: (row["next_attempt_at"], row["delivery_id"]))
        return [delivery(row, _as_is) for row in rows]

    async def _finish(self, delivery_id: int, owner: str, status: str, error: str | None) -> bool:
        async with self._transaction() as conn:
            call_sid = await conn.fetchval(
                "SELECT call_sid FROM deliveries WHERE delivery_id = $1", delivery_id
            )
            if call_sid is None:
                return False
            # The call's lock first (as enqueue and delete take it), then the row.
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))", _CALL_LOCK_SPACE, call_sid
            )
            row = await conn.fetchrow(
                _SQL(writes.DELIVERY_FINISHED),
                *writes.delivery_finished_args(
                    delivery_id, owner, status, error, self._clock(), POSTGRES
                ),
            )
            if row is None:
                return False
            await conn.execute(_SQL(writes.NEXT_HEAD), row["call_sid"], row["target"])
        return True

    async def mark_delivered(self, delivery_id: int, owner: str) -> bool:
        return await self._finish(delivery_id, owner, DeliveryStatus.DELIVERED.value, None)

    async def mark_failed(self, delivery_id: int, owner: str, error: str) -> bool:
        return await self._finish(delivery_id, owner, DeliveryStatus.FAILED.value, error)

    async def mark_retry(
        self, delivery_id: int, owner: str, next_attempt_at: datetime, error: str
    ) -> bool:
        async with self._connection() as conn:
            status = await conn.execute(
                _SQL(writes.DELIVERY_RETRY),
                *writes.delivery_retry_args(delivery_id, owner, next_attempt_at, error, POSTGRES),
            )
        return not str(status).endswith(" 0")

    async def release_claims(self, owner: str) -> int:
        async with self._connection() as conn:
            status = await conn.execute(_SQL(writes.RELEASE_CLAIMS), owner)
        return int(str(status).rsplit(" ", 1)[-1])

    async def delivery_counts(self) -> DeliveryCounts:
        async with self._connection() as conn:
            rows = await conn.fetch("SELECT status, count(*) FROM deliveries GROUP BY status")
        counts = {row[0]: row[1] for row in rows}
        return DeliveryCounts(
            pending=counts.get(DeliveryStatus.PENDING.value, 0),
            delivered=counts.get(DeliveryStatus.DELIVERED.value, 0),
            failed=counts.get(DeliveryStatus.FAILED.value, 0),
        )

    async def pending_deliveries_exist(self) -> bool:
        async with self._connection() as conn:
            found = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM deliveries WHERE status = 'pending')"
            )
        return bool(found)

    async def delivery_backlog(self) -> list[TargetBacklog]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT target, count(*) AS pending, min(created_at) AS oldest FROM deliveries "
                "WHERE status = 'pending' GROUP BY target"
            )
        return backlog_per_target(
            self._targets, {row["target"]: (row["pending"], row["oldest"]) for row in rows}
        )

    async def purge_finished_deliveries(self, finished_before: datetime) -> int:
        async with self._connection() as conn:
            status = await conn.execute(_SQL(writes.PURGE_FINISHED), POSTGRES.time(finished_before))
        return int(str(status).rsplit(" ", 1)[-1])
