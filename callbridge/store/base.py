"""The storage interface: calls, committed segments, and the webhook event outbox.

One small async interface so that SQLite (embedded default) and PostgreSQL (scale-out)
are interchangeable. Writes that belong together happen in one transaction: a segment and
its ``transcript.committed`` event, a call's end, its summary and its ``call.ended`` event
(the transactional outbox).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from callbridge.models import CallEnded, CallInfo, CommittedSegment


class StoreError(Exception):
    """The database is unreachable, unreadable or of an unknown schema version."""


class CallStatus(enum.StrEnum):
    RINGING = "ringing"  # /twilio/voice answered, no media yet
    LIVE = "live"  # media stream running
    ENDED = "ended"  # transcription finished, summary stored


@dataclass(frozen=True, slots=True)
class CallRecord:
    call_sid: str
    status: CallStatus
    stream_sid: str | None
    account_sid: str | None
    from_number: str | None
    to_number: str | None
    tracks: tuple[str, ...]
    custom_parameters: Mapping[str, str]
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    duration_ms: int | None
    end_reason: str | None
    twilio_status: str | None  # last CallStatus from a status callback
    twilio_duration_s: int | None  # CallDuration from the `completed` callback
    segments: int
    language_code: str | None
    degraded: str | None
    summary: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """A webhook event as stored: ``body`` is the exact JSON that is POSTed and signed."""

    event_id: str  # "evt_…", the `webhook-id` on every attempt
    call_sid: str
    event_type: str
    body: bytes
    created_at: datetime


class Store(Protocol):
    async def open(self) -> None:
        """Connect and apply schema migrations; raises :class:`StoreError`."""

    async def close(self) -> None: ...

    # calls and segments -------------------------------------------------
    async def call_requested(
        self, call_sid: str, account_sid: str | None, from_number: str | None, to_number: str | None
    ) -> None:
        """Record a call seen on /twilio/voice (idempotent)."""

    async def call_started(self, call: CallInfo, events: Sequence[OutboxEvent]) -> None:
        """Mark the call live and enqueue its ``call.started`` event, in one transaction."""

    async def segment_committed(
        self, segment: CommittedSegment, events: Sequence[OutboxEvent]
    ) -> None:
        """Store the segment and enqueue its event (none for empty text), in one transaction."""

    async def call_ended(
        self, ended: CallEnded, summary: Mapping[str, Any], events: Sequence[OutboxEvent]
    ) -> None:
        """Store the end, the summary and the ``call.ended`` event, in one transaction."""

    async def twilio_status(
        self, call_sid: str, status: str, duration_s: int | None
    ) -> None:
        """Record a Twilio call status callback."""

    async def get_call(self, call_sid: str) -> CallRecord | None: ...

    async def list_calls(
        self, limit: int, cursor: str | None
    ) -> tuple[list[CallRecord], str | None]:
        """Newest first; returns the page and the cursor of the next page (None at the end)."""

    async def get_segments(self, call_sid: str) -> list[CommittedSegment]: ...

    async def delete_call(self, call_sid: str) -> bool:
        """Erase the call, its segments and its undelivered events; False if unknown."""
