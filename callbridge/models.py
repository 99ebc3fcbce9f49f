"""Value objects that cross module boundaries: calls, committed segments, call ends.

Everything here is immutable and free of I/O. The bridge produces these; the store, the
webhook dispatcher, the summary and the API consume them. Times on the Twilio stream clock
are integer milliseconds since the stream started (``start_ms``/``end_ms``); wall-clock
times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


class Track(enum.StrEnum):
    """A Twilio media track, spelled as in ``media.track``."""

    INBOUND = "inbound"
    OUTBOUND = "outbound"


class EndReason(enum.StrEnum):
    """Why a call's transcription ended (``call.ended`` ``reason``)."""

    STOP = "stop"  # Twilio sent `stop`
    HANGUP = "hangup"  # the media socket closed without `stop`
    COMPLETED = "completed"  # a `completed` status callback arrived first
    SHUTDOWN = "shutdown"  # the bridge was asked to stop (SIGTERM)
    ERROR = "error"  # the stream broke (protocol error, fatal Scribe error)
    BRIDGE_LOST = "bridge_lost"  # the process holding the call died; ended by another
    TIMEOUT = "timeout"  # no media for CALLBRIDGE_MEDIA_TIMEOUT_S
    MAX_DURATION = "max_duration"  # longer than CALLBRIDGE_MAX_CALL_S


def utc_now() -> datetime:
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    """RFC 3339 UTC with millisecond precision and a ``Z`` suffix."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Word:
    """One recognised word, its times mapped onto the Twilio stream clock."""

    text: str
    start_ms: int
    end_ms: int
    type: str = "word"
    logprob: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "text": self.text,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "type": self.type,
        }
        if self.logprob is not None:
            out["logprob"] = self.logprob
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Word:
        logprob = raw.get("logprob")
        return cls(
            text=str(raw["text"]),
            start_ms=int(raw["start_ms"]),
            end_ms=int(raw["end_ms"]),
            type=str(raw.get("type", "word")),
            logprob=float(logprob) if logprob is not None else None,
        )


@dataclass(frozen=True, slots=True)
class CallInfo:
    """What is known about a call when its media stream starts (``call.started``)."""

    call_sid: str
    stream_sid: str
    account_sid: str
    from_number: str | None
    to_number: str | None
    tracks: tuple[str, ...]
    custom_parameters: Mapping[str, str]
    started_at: datetime


@dataclass(frozen=True, slots=True)
class CommittedSegment:
    """One speaker's committed transcript for one stretch of the call."""

    call_sid: str
    stream_sid: str
    sequence: int  # 1, 2, 3 … per call, no gaps
    speaker: str  # the configured label of `track`
    track: Track
    text: str
    start_ms: int
    end_ms: int
    language_code: str | None
    words: tuple[Word, ...] = ()
    committed_at: datetime = field(default_factory=utc_now)
    # time.monotonic() when its speech ended, in the process that heard it (for the
    # transcript latency metric); not stored, not sent.
    speech_ended_at: float | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The segment as ``transcript.committed`` carries it (and the API returns it)."""
        return {
            "call_sid": self.call_sid,
            "stream_sid": self.stream_sid,
            "sequence": self.sequence,
            "speaker": self.speaker,
            "track": str(self.track),
            "text": self.text,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "language_code": self.language_code,
            "words": [word.to_json() for word in self.words],
        }


@dataclass(frozen=True, slots=True)
class LivePartial:
    """Interim text of the segment on air (the whole segment so far): streamed to live
    viewers in the process that holds the call, never stored or sent as a webhook."""

    call_sid: str
    speaker: str
    track: str
    text: str


@dataclass(frozen=True, slots=True)
class Interval:
    """A half-open span ``[start_ms, end_ms)`` on the stream clock."""

    start_ms: int
    end_ms: int

    @property
    def duration_ms(self) -> int:
        return max(0, self.end_ms - self.start_ms)


@dataclass(frozen=True, slots=True)
class TrackActivity:
    """The voice activity the bridge measured on one track: its speech intervals."""

    track: Track
    speaker: str
    speech: tuple[Interval, ...]


@dataclass(frozen=True, slots=True)
class CallEnded:
    """The end of a call's transcription, after its last segment was committed."""

    call_sid: str
    stream_sid: str
    ended_at: datetime
    duration_ms: int  # length of the stream on its own clock
    reason: EndReason
    segments: int  # committed segments (transcripts with text), as numbered
    activity: tuple[TrackActivity, ...]
    language_code: str | None = None
    degraded: str | None = None  # why transcription was incomplete, if it was
    audio_lost_ms: int = 0  # audio the bridge had to drop (never silently)
    # Committed transcripts with empty text (noise, music, a tone): not segments, counted.
    empty_transcripts: int = 0
    # Turns never transcribed because Scribe was gone for good (their audio is in
    # audio_lost_ms): not segments either.
    untranscribed_turns: int = 0


class BatchStatus(enum.StrEnum):
    """How a call's post-call batch pass ended."""

    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class BatchTranscript:
    """A call's ``batch`` transcript (Scribe v2 batch, after the call), or why there is none.

    ``segments`` are numbered 1, 2, 3 … in the order of speech, redacted like the live ones;
    ``transcription_ids`` are the transcripts at ElevenLabs (deleted with the call);
    ``audio_seconds`` is what was billed."""

    call_sid: str
    status: BatchStatus
    segments: tuple[CommittedSegment, ...] = ()
    summary: Mapping[str, Any] | None = None
    error: str | None = None
    transcription_ids: tuple[str, ...] = ()
    audio_seconds: float = 0.0
    model_id: str | None = None
    created_at: datetime = field(default_factory=utc_now)


def segment_from_json(raw: Mapping[str, Any]) -> CommittedSegment:
    """Inverse of :meth:`CommittedSegment.to_json` (with ``committed_at``, RFC 3339)."""
    committed_at = raw.get("committed_at")
    return CommittedSegment(
        call_sid=str(raw["call_sid"]),
        stream_sid=str(raw.get("stream_sid") or ""),
        sequence=int(raw["sequence"]),
        speaker=str(raw["speaker"]),
        track=Track(raw["track"]),
        text=str(raw["text"]),
        start_ms=int(raw["start_ms"]),
        end_ms=int(raw["end_ms"]),
        language_code=raw.get("language_code"),
        words=tuple(Word.from_json(word) for word in raw.get("words") or ()),
        committed_at=(
            datetime.fromisoformat(str(committed_at).replace("Z", "+00:00"))
            if committed_at
            else utc_now()
        ),
    )


def segment_to_stored_json(segment: CommittedSegment) -> dict[str, Any]:
    """The segment as stored in JSON (``committed_at`` to the microsecond)."""
    return {**segment.to_json(), "committed_at": segment.committed_at.astimezone(UTC).isoformat()}
