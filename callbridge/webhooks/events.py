"""Webhook event bodies (interface §5), built once and stored as the exact bytes sent.

Every event gets a fresh ``evt_…`` id here; retries reuse the stored id and body, so a
receiver can deduplicate on ``webhook-id``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from callbridge.models import (
    BatchTranscript,
    CallEnded,
    CallInfo,
    CommittedSegment,
    rfc3339,
    utc_now,
)
from callbridge.store.base import OutboxEvent

CALL_STARTED = "call.started"
TRANSCRIPT_COMMITTED = "transcript.committed"
CALL_ENDED = "call.ended"
CALL_TRANSCRIPT_FINAL = "call.transcript_final"
CALL_POSTCALL_FAILED = "call.postcall_failed"  # extension: the batch pass finally failed
CALL_SUMMARIZED = "call.summarized"


def new_event_id() -> str:
    """``evt_`` and 32 random hex digits (128 bits)."""
    return "evt_" + secrets.token_hex(16)


def encode_body(event_type: str, timestamp: datetime, data: Mapping[str, Any]) -> bytes:
    body = {"type": event_type, "timestamp": rfc3339(timestamp), "data": data}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _event(call_sid: str, event_type: str, data: Mapping[str, Any], now: datetime) -> OutboxEvent:
    return OutboxEvent(
        event_id=new_event_id(),
        call_sid=call_sid,
        event_type=event_type,
        body=encode_body(event_type, now, data),
        created_at=now,
    )


def call_started_event(call: CallInfo, now: datetime | None = None) -> OutboxEvent:
    data = {
        "call_sid": call.call_sid,
        "stream_sid": call.stream_sid,
        "account_sid": call.account_sid,
        "from": call.from_number,
        "to": call.to_number,
        "tracks": list(call.tracks),
        "custom_parameters": dict(call.custom_parameters),
        "started_at": rfc3339(call.started_at),
    }
    return _event(call.call_sid, CALL_STARTED, data, now or utc_now())


def transcript_committed_event(
    segment: CommittedSegment, now: datetime | None = None
) -> OutboxEvent:
    data = segment.to_json()
    return _event(segment.call_sid, TRANSCRIPT_COMMITTED, data, now or utc_now())


def call_ended_event(
    ended: CallEnded, summary: Mapping[str, Any], now: datetime | None = None
) -> OutboxEvent:
    data = {
        "call_sid": ended.call_sid,
        "ended_at": rfc3339(ended.ended_at),
        "duration_ms": ended.duration_ms,
        "segments": ended.segments,
        "empty_transcripts": ended.empty_transcripts,  # extension: not segments, counted
        "reason": str(ended.reason),
        "summary": dict(summary),
    }
    return _event(ended.call_sid, CALL_ENDED, data, now or utc_now())


def call_summarized_event(
    call_sid: str, ai_summary: Mapping[str, Any], now: datetime | None = None
) -> OutboxEvent:
    """The AI summary is ready, or has finally failed (``ai.status`` says which)."""
    data = {"call_sid": call_sid, "ai": dict(ai_summary)}
    return _event(call_sid, CALL_SUMMARIZED, data, now or utc_now())


def call_transcript_final_event(
    record: BatchTranscript, now: datetime | None = None
) -> OutboxEvent:
    """The call's ``batch`` transcript is stored: its segments and the summary made from them."""
    data = {
        "call_sid": record.call_sid,
        "version": "batch",
        "segments": [segment.to_json() for segment in record.segments],
        "summary": dict(record.summary or {}),
        "audio_seconds_billed": record.audio_seconds,  # extension
    }
    return _event(record.call_sid, CALL_TRANSCRIPT_FINAL, data, now or utc_now())


def call_postcall_failed_event(record: BatchTranscript, now: datetime | None = None) -> OutboxEvent:
    """Extension: the batch pass finally failed; the live transcript stays the call's only one."""
    data = {"call_sid": record.call_sid, "version": "batch", "error": record.error}
    return _event(record.call_sid, CALL_POSTCALL_FAILED, data, now or utc_now())
