"""Row → record mapping shared by the SQLite and PostgreSQL stores.

The backends differ only in how a JSON column and a timestamp column come back (SQLite:
text and integer microseconds; PostgreSQL: decoded JSON and datetimes), so each passes its
two decoders and the mapping itself lives here once.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from callbridge.jobs.model import Job, JobStatus
from callbridge.models import (
    BatchStatus,
    BatchTranscript,
    CommittedSegment,
    Track,
    Word,
    segment_from_json,
)
from callbridge.store.base import CallRecord, CallStatus, Delivery

CALL_COLUMNS = (
    "call_sid, status, stream_sid, account_sid, from_number, to_number, tracks, "
    "custom_parameters, created_at, started_at, ended_at, duration_ms, end_reason, "
    "twilio_status, twilio_duration_s, segments, language_code, degraded, summary, ai_summary"
)
# From ``deliveries d JOIN events e``: what a claimed delivery carries to the dispatcher.
DELIVERY_COLUMNS = (
    "d.delivery_id, d.event_id, d.call_sid, e.event_type, d.target, e.body, d.attempts, "
    "e.created_at"
)
SEGMENT_COLUMNS = (
    "call_sid, sequence, stream_sid, speaker, track, text, words, start_ms, "
    "end_ms, language, committed_at"
)


class Row(Protocol):
    """A result row indexable by column name (``sqlite3.Row``, ``asyncpg.Record``)."""

    def __getitem__(self, key: str, /) -> Any: ...


DecodeJson = Callable[[Any], Any]
DecodeTime = Callable[[Any], datetime]


def call_record(row: Row, json: DecodeJson, time: DecodeTime) -> CallRecord:
    def optional_time(value: Any) -> datetime | None:
        return None if value is None else time(value)

    summary = row["summary"]
    ai_summary = row["ai_summary"]
    return CallRecord(
        call_sid=row["call_sid"],
        status=CallStatus(row["status"]),
        stream_sid=row["stream_sid"],
        account_sid=row["account_sid"],
        from_number=row["from_number"],
        to_number=row["to_number"],
        tracks=tuple(json(row["tracks"])),
        custom_parameters=json(row["custom_parameters"]),
        created_at=time(row["created_at"]),
        started_at=optional_time(row["started_at"]),
        ended_at=optional_time(row["ended_at"]),
        duration_ms=row["duration_ms"],
        end_reason=row["end_reason"],
        twilio_status=row["twilio_status"],
        twilio_duration_s=row["twilio_duration_s"],
        segments=row["segments"],
        language_code=row["language_code"],
        degraded=row["degraded"],
        summary=None if summary is None else json(summary),
        ai_summary=None if ai_summary is None else json(ai_summary),
    )


def committed_segment(row: Row, json: DecodeJson, time: DecodeTime) -> CommittedSegment:
    return CommittedSegment(
        call_sid=row["call_sid"],
        stream_sid=row["stream_sid"],
        sequence=row["sequence"],
        speaker=row["speaker"],
        track=Track(row["track"]),
        text=row["text"],
        start_ms=row["start_ms"],
        end_ms=row["end_ms"],
        language_code=row["language"],
        words=tuple(Word.from_json(word) for word in json(row["words"])),
        committed_at=time(row["committed_at"]),
    )


def delivery(row: Row, time: DecodeTime) -> Delivery:
    """A row of :data:`DELIVERY_COLUMNS` as the dispatcher's :class:`Delivery`."""
    return Delivery(
        delivery_id=row["delivery_id"],
        event_id=row["event_id"],
        call_sid=row["call_sid"],
        event_type=row["event_type"],
        target=row["target"],
        body=bytes(row["body"]),
        attempts=row["attempts"],
        created_at=time(row["created_at"]),
    )


# --- the job queue ----------------------------------------------------------------------------

JOB_COLUMNS = (
    "job_id, kind, call_sid, payload, status, attempts, next_attempt_at, last_error, "
    "lease_owner, lease_expires_at, created_at, finished_at"
)


def job(row: Row, json: DecodeJson, time: DecodeTime) -> Job:
    """A row of :data:`JOB_COLUMNS` as a :class:`~callbridge.jobs.model.Job`."""

    def optional_time(value: Any) -> datetime | None:
        return None if value is None else time(value)

    return Job(
        job_id=row["job_id"],
        kind=row["kind"],
        call_sid=row["call_sid"],
        payload=json(row["payload"]),
        status=JobStatus(row["status"]),
        attempts=row["attempts"],
        next_attempt_at=time(row["next_attempt_at"]),
        last_error=row["last_error"],
        lease_owner=row["lease_owner"],
        lease_expires_at=optional_time(row["lease_expires_at"]),
        created_at=time(row["created_at"]),
        finished_at=optional_time(row["finished_at"]),
    )


# --- batch transcripts ------------------------------------------------------------------------

BATCH_COLUMNS = (
    "call_sid, status, segments, summary, error, transcription_ids, audio_seconds, model_id, "
    "created_at"
)


def batch_transcript(row: Row, json: DecodeJson, time: DecodeTime) -> BatchTranscript:
    summary = row["summary"]
    return BatchTranscript(
        call_sid=row["call_sid"],
        status=BatchStatus(row["status"]),
        segments=tuple(segment_from_json(raw) for raw in json(row["segments"])),
        summary=None if summary is None else json(summary),
        error=row["error"],
        transcription_ids=tuple(json(row["transcription_ids"])),
        audio_seconds=float(row["audio_seconds"]),
        model_id=row["model_id"],
        created_at=time(row["created_at"]),
    )
