"""Transcript and call renderings shared by the API and the ``callbridge calls`` commands.

JSON objects for calls and segments, and the text formats ``txt`` (``speaker: text``
lines), ``vtt`` (WebVTT with the speaker as a ``<v speaker>`` voice span) and ``srt``
(SubRip, text prefixed ``speaker: ``). Segments with empty text are left out of the text
formats; the JSON transcript keeps every segment.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from callbridge.models import CommittedSegment, rfc3339
from callbridge.store.base import CallRecord
from callbridge.summary import spoken, transcript_line

TRANSCRIPT_FORMATS = ("json", "txt", "vtt", "srt")

CONTENT_TYPES = {
    "json": "application/json",
    "txt": "text/plain",
    "vtt": "text/vtt",
    "srt": "application/x-subrip",
}


def _time(moment: datetime | None) -> str | None:
    return rfc3339(moment) if moment is not None else None


def call_to_json(call: CallRecord) -> dict[str, Any]:
    """A call as the API and ``calls show`` present it (the summary is served separately)."""
    return {
        "call_sid": call.call_sid,
        "status": str(call.status),
        "stream_sid": call.stream_sid,
        "account_sid": call.account_sid,
        "from": call.from_number,
        "to": call.to_number,
        "tracks": list(call.tracks),
        "custom_parameters": dict(call.custom_parameters),
        "created_at": _time(call.created_at),
        "started_at": _time(call.started_at),
        "ended_at": _time(call.ended_at),
        "duration_ms": call.duration_ms,
        "reason": call.end_reason,
        "twilio_status": call.twilio_status,
        "twilio_duration_s": call.twilio_duration_s,
        "segments": call.segments,
        "language_code": call.language_code,
        "degraded": call.degraded,
        "summary_available": call.summary is not None,
        "ai_summary_status": None if call.ai_summary is None else call.ai_summary.get("status"),
    }


def summary_to_json(call: CallRecord) -> dict[str, Any] | None:
    """The post-call summary as served: the stored one, with the AI summary as ``ai``."""
    if call.summary is None:
        return None
    summary = dict(call.summary)
    if call.ai_summary is not None:
        summary["ai"] = dict(call.ai_summary)
    return summary


def segment_to_json(segment: CommittedSegment) -> dict[str, Any]:
    """Every segment field (as in ``transcript.committed``) plus ``committed_at``."""
    return {**segment.to_json(), "committed_at": rfc3339(segment.committed_at)}


def transcript_to_json(call: CallRecord, segments: Sequence[CommittedSegment]) -> dict[str, Any]:
    ordered = sorted(segments, key=lambda s: s.sequence)
    return {
        "call_sid": call.call_sid,
        "status": str(call.status),
        "segments": [segment_to_json(s) for s in ordered],
    }


def clock(ms: int, decimal_mark: str) -> str:
    """``HH:MM:SS.mmm`` (or ``,mmm``); hours grow past 99 if they must."""
    ms = max(0, ms)
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{decimal_mark}{millis:03d}"


def _cue_times(segment: CommittedSegment, decimal_mark: str) -> str:
    start = max(0, segment.start_ms)
    end = max(segment.end_ms, start + 1)  # a cue must end after it starts
    return f"{clock(start, decimal_mark)} --> {clock(end, decimal_mark)}"


def one_line(text: str) -> str:
    """Whitespace (newlines included) collapsed, so text never ends a cue early."""
    return " ".join(text.split())


def vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_txt(segments: Sequence[CommittedSegment]) -> str:
    lines = [transcript_line(s) for s in spoken(segments)]
    return "".join(f"{line}\n" for line in lines)


def to_vtt(segments: Sequence[CommittedSegment]) -> str:
    blocks = ["WEBVTT\n"]
    for segment in spoken(segments):
        speaker = vtt_escape(one_line(segment.speaker)) or "speaker"
        text = vtt_escape(one_line(segment.text))
        blocks.append(f"{_cue_times(segment, '.')}\n<v {speaker}>{text}</v>\n")
    return "\n".join(blocks)


def to_srt(segments: Sequence[CommittedSegment]) -> str:
    blocks = []
    for number, segment in enumerate(spoken(segments), start=1):
        blocks.append(f"{number}\n{_cue_times(segment, ',')}\n{transcript_line(segment)}\n")
    return "\n".join(blocks)


TEXT_RENDERERS: dict[str, Callable[[Sequence[CommittedSegment]], str]] = {
    "txt": to_txt,
    "vtt": to_vtt,
    "srt": to_srt,
}
