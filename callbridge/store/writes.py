"""The SQL of a call's writes and of the outbox, shared by the SQLite and PostgreSQL stores.

Each statement is written once, in PostgreSQL's syntax with numbered placeholders (``$1``).
What differs between the backends is spelled out in :class:`Dialect`, the way
:mod:`callbridge.store.rows` takes decoders for reading:

* placeholders: SQLite's numbered ``?1`` for PostgreSQL's ``$1`` (same numbers, so a value
  used twice is bound once in both);
* how a timestamp is bound: SQLite stores integer microseconds since the epoch, PostgreSQL a
  ``timestamptz``;
* how a JSON value is bound: SQLite stores text, PostgreSQL ``jsonb`` (the connection's codec
  encodes it);
* the two-argument maximum: SQLite's scalar ``max``, PostgreSQL's ``greatest``.

What stays in the store modules is what is not the same statement in both: how a write is
serialised (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: ``FOR UPDATE`` on the call's row and a
per-call advisory lock around its deliveries) and how each driver reports what a statement did.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from callbridge.models import CallEnded, CallInfo, CommittedSegment
from callbridge.store.base import CallStatus, OutboxEvent, to_micros


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one backend writes the statements below."""

    name: str
    placeholder: str  # "$" or "?": the prefix of a numbered placeholder
    time: Callable[[datetime], Any]  # a timestamp as bound
    json: Callable[[Any], Any]  # a JSON value as bound
    greatest: str  # the two-argument maximum function

    def sql(self, statement: str) -> str:
        """``statement`` in this dialect."""
        return _render(statement, self.placeholder, self.greatest)


def _as_is(value: Any) -> Any:
    return value


SQLITE = Dialect("sqlite", "?", to_micros, json.dumps, "max")
POSTGRES = Dialect("postgres", "$", _as_is, _as_is, "greatest")


@functools.cache
def _render(statement: str, placeholder: str, greatest: str) -> str:
    return re.sub(r"\$(\d+)", placeholder + r"\1", statement.replace("{greatest}", greatest))


def _optional_json(value: Any | None, dialect: Dialect) -> Any | None:
    return None if value is None else dialect.json(value)


# --- a call's life ------------------------------------------------------------------------

CALL_STATE = "SELECT status, stream_sid, started_at FROM calls WHERE call_sid = $1"

CALL_STARTED = (
    "INSERT INTO calls (call_sid, status, stream_sid, account_sid, from_number, to_number, "
    "tracks, custom_parameters, created_at, started_at) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (call_sid) DO UPDATE SET "
    "status = excluded.status, stream_sid = excluded.stream_sid, "
    "account_sid = coalesce(excluded.account_sid, calls.account_sid), "
    "from_number = coalesce(excluded.from_number, calls.from_number), "
    "to_number = coalesce(excluded.to_number, calls.to_number), "
    "tracks = excluded.tracks, custom_parameters = excluded.custom_parameters, "
    "started_at = excluded.started_at"
)


def call_started_args(call: CallInfo, now: datetime, dialect: Dialect) -> tuple[Any, ...]:
    return (
        call.call_sid,
        CallStatus.LIVE.value,
        call.stream_sid,
        call.account_sid or None,
        call.from_number,
        call.to_number,
        dialect.json(list(call.tracks)),
        dialect.json(dict(call.custom_parameters)),
        dialect.time(now),
        dialect.time(call.started_at),
    )


# Returns the sequence only when the segment is new (a repeat inserts nothing).
SEGMENT_INSERT = (
    "INSERT INTO segments (call_sid, sequence, stream_sid, speaker, track, text, words, "
    "start_ms, end_ms, language, committed_at) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) "
    "ON CONFLICT (call_sid, sequence) DO NOTHING RETURNING sequence"
)


def segment_args(segment: CommittedSegment, dialect: Dialect) -> tuple[Any, ...]:
    return (
        segment.call_sid,
        segment.sequence,
        segment.stream_sid,
        segment.speaker,
        str(segment.track),
        segment.text,
        dialect.json([word.to_json() for word in segment.words]),
        segment.start_ms,
        segment.end_ms,
        segment.language_code,
        dialect.time(segment.committed_at),
    )


SEGMENT_COUNTED = (
    "INSERT INTO calls (call_sid, status, stream_sid, created_at, segments, language_code) "
    "VALUES ($1, $2, $3, $4, 1, $5) ON CONFLICT (call_sid) DO UPDATE "
    "SET segments = calls.segments + 1, "
    "language_code = coalesce(excluded.language_code, calls.language_code)"
)


def segment_counted_args(
    segment: CommittedSegment, now: datetime, dialect: Dialect
) -> tuple[Any, ...]:
    return (
        segment.call_sid,
        CallStatus.LIVE.value,
        segment.stream_sid,
        dialect.time(now),
        segment.language_code,
    )


CALL_ENDED = (
    "INSERT INTO calls (call_sid, status, stream_sid, created_at, ended_at, duration_ms, "
    "end_reason, segments, language_code, degraded, summary, ai_summary) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) "
    "ON CONFLICT (call_sid) DO UPDATE SET "
    "status = excluded.status, ended_at = excluded.ended_at, "
    "duration_ms = excluded.duration_ms, end_reason = excluded.end_reason, "
    "segments = {greatest}(calls.segments, excluded.segments), "
    "language_code = coalesce(excluded.language_code, calls.language_code), "
    "degraded = excluded.degraded, summary = excluded.summary, "
    "ai_summary = excluded.ai_summary, "
    "stream_owner = NULL, stream_lease_expires_at = NULL"
)


def call_ended_args(
    ended: CallEnded,
    analytics: Mapping[str, Any],
    ai_summary: Mapping[str, Any] | None,
    now: datetime,
    dialect: Dialect,
) -> tuple[Any, ...]:
    """``analytics`` and ``ai_summary`` as :func:`~callbridge.store.base.split_ai_summary`
    splits the call-end summary."""
    return (
        ended.call_sid,
        CallStatus.ENDED.value,
        ended.stream_sid,
        dialect.time(now),
        dialect.time(ended.ended_at),
        ended.duration_ms,
        str(ended.reason),
        ended.segments,
        ended.language_code,
        ended.degraded,
        dialect.json(dict(analytics)),
        _optional_json(ai_summary, dialect),
    )


# --- the outbox ---------------------------------------------------------------------------

# The call's next position is max + 1: the stores serialise the writers of one call's events
# (SQLite: BEGIN IMMEDIATE; PostgreSQL: the call's advisory lock). Returns the event id only
# when the event is new.
EVENT_INSERT = (
    "INSERT INTO events (event_id, call_sid, event_type, body, created_at, position) "
    "VALUES ($1, $2, $3, $4, $5, (SELECT coalesce(max(position), 0) + 1 FROM events "
    "WHERE call_sid = $2)) ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
)


def event_args(event: OutboxEvent, dialect: Dialect) -> tuple[Any, ...]:
    return (
        event.event_id,
        event.call_sid,
        event.event_type,
        event.body,
        dialect.time(event.created_at),
    )


# One per event and target; the head (claimable) when nothing of the call is pending for
# that target.
DELIVERY_INSERT = (
    "INSERT INTO deliveries (event_id, call_sid, target, status, is_head, next_attempt_at, "
    "created_at) VALUES ($1, $2, $3, 'pending', NOT EXISTS (SELECT 1 FROM deliveries "
    "WHERE call_sid = $2 AND target = $3 AND status = 'pending'), $4, $4)"
)


def delivery_args(
    event: OutboxEvent, target: str, now: datetime, dialect: Dialect
) -> tuple[Any, ...]:
    return (event.event_id, event.call_sid, target, dialect.time(now))


# Only the lease's owner finishes a delivery; returns its call and target when it did.
DELIVERY_FINISHED = (
    "UPDATE deliveries SET status = $3, is_head = FALSE, attempts = attempts + 1, "
    "last_error = $4, lease_owner = NULL, lease_expires_at = NULL, finished_at = $5 "
    "WHERE delivery_id = $1 AND status = 'pending' AND lease_owner = $2 "
    "RETURNING call_sid, target"
)


def delivery_finished_args(
    delivery_id: int, owner: str, status: str, error: str | None, now: datetime, dialect: Dialect
) -> tuple[Any, ...]:
    return (delivery_id, owner, status, error, dialect.time(now))


# After a delivery finished: the call's next pending delivery for that target is the head.
NEXT_HEAD = (
    "UPDATE deliveries SET is_head = TRUE WHERE delivery_id = (SELECT min(delivery_id) "
    "FROM deliveries WHERE call_sid = $1 AND target = $2 AND status = 'pending')"
)

DELIVERY_RETRY = (
    "UPDATE deliveries SET attempts = attempts + 1, next_attempt_at = $3, last_error = $4, "
    "lease_owner = NULL, lease_expires_at = NULL "
    "WHERE delivery_id = $1 AND status = 'pending' AND lease_owner = $2"
)


def delivery_retry_args(
    delivery_id: int, owner: str, next_attempt_at: datetime, error: str, dialect: Dialect
) -> tuple[Any, ...]:
    return (delivery_id, owner, dialect.time(next_attempt_at), error)


RELEASE_CLAIMS = (
    "UPDATE deliveries SET lease_owner = NULL, lease_expires_at = NULL "
    "WHERE lease_owner = $1 AND status = 'pending'"
)

PURGE_FINISHED = (
    "DELETE FROM deliveries WHERE status IN ('delivered', 'failed') AND finished_at < $1"
)
