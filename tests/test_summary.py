"""The post-call summary against a constructed call whose figures are known exactly."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

import pytest

from callbridge.models import (
    CallEnded,
    CommittedSegment,
    EndReason,
    Interval,
    Track,
    TrackActivity,
    Word,
)
from callbridge.summary import coverage_ms, merge_intervals, summarize

SID = "CA00000000000000000000000000000001"
ENDED_AT = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def segment(
    sequence: int,
    speaker: str,
    text: str,
    start_ms: int,
    end_ms: int,
    words: tuple[Word, ...] = (),
    language_code: str | None = "en",
) -> CommittedSegment:
    return CommittedSegment(
        call_sid=SID,
        stream_sid="MZ1",
        sequence=sequence,
        speaker=speaker,
        track=Track.INBOUND if speaker == "caller" else Track.OUTBOUND,
        text=text,
        start_ms=start_ms,
        end_ms=end_ms,
        language_code=language_code,
        words=words,
        committed_at=ENDED_AT,
    )


def spans(*pairs: tuple[int, int]) -> tuple[Interval, ...]:
    return tuple(Interval(a, b) for a, b in pairs)


def known_call() -> tuple[CallEnded, list[CommittedSegment]]:
    """60 s call. Caller speaks 14 s, agent 17 s (one interval runs past the end and is
    clipped, two agent intervals overlap each other), they overlap twice for 1 s each."""
    caller = TrackActivity(Track.INBOUND, "caller", spans((1000, 5000), (10000, 20000)))
    agent = TrackActivity(
        Track.OUTBOUND,
        "agent",
        spans((4000, 8000), (19000, 30000), (29000, 31000), (59000, 65000)),
    )
    agent_words = tuple(
        Word(text, 4000 + i * 500, 4400 + i * 500, "word" if text.strip() else "spacing")
        for i, text in enumerate(["Hi,", " ", "how", " ", "can", " ", "I", " ", "help?"])
    )
    segments = [
        segment(1, "caller", "Hello there", 1000, 5200),
        segment(2, "agent", "Hi, how can I help?", 4000, 8200, words=agent_words),
        segment(3, "caller", "   ", 9000, 9500),
        segment(4, "caller", "I need help", 10000, 15000),
        segment(5, "caller", "with my\nbill please", 15000, 20200),
        segment(6, "agent", "Sure.", 19000, 31200),
    ]
    ended = CallEnded(
        call_sid=SID,
        stream_sid="MZ1",
        ended_at=ENDED_AT,
        duration_ms=60000,
        reason=EndReason.STOP,
        segments=6,
        activity=(caller, agent),
        language_code="en",
        audio_lost_ms=40,
    )
    return ended, segments


def test_known_call_figures() -> None:
    ended, segments = known_call()
    summary = summarize(ended, list(reversed(segments)))  # order of input does not matter

    assert summary["call_sid"] == SID
    assert summary["duration_ms"] == 60000
    assert summary["segments"] == 6
    assert summary["language_code"] == "en"
    assert summary["reason"] == "stop"
    assert summary["audio_lost_ms"] == 40
    assert summary["degraded"] is None
    assert summary["ended_at"] == "2025-01-02T03:04:05.678Z"

    assert summary["speakers"] == {
        "caller": {"talk_ms": 14000, "turns": 2, "words": 9, "words_per_minute": 38.6},
        "agent": {"talk_ms": 17000, "turns": 2, "words": 6, "words_per_minute": 21.2},
    }
    assert summary["talk_ms"] == 31000
    assert summary["overlap_ms"] == 2000
    assert summary["speech_ms"] == 29000
    assert summary["silence_ms"] == 31000
    assert summary["silence_ms"] + summary["talk_ms"] - summary["overlap_ms"] == 60000
    assert summary["talk_ratio"] == {"caller": 0.4516, "agent": 0.5484}
    assert sum(summary["talk_ratio"].values()) == pytest.approx(1.0, abs=1e-3)
    assert summary["turns"] == 4
    assert summary["longest_turn_ms"] == 12200
    assert summary["longest_turn_speaker"] == "agent"
    assert summary["transcript"] == (
        "caller: Hello there\n"
        "agent: Hi, how can I help?\n"
        "caller: I need help\n"
        "caller: with my bill please\n"
        "agent: Sure."
    )


def test_summary_is_json_and_deterministic() -> None:
    ended, segments = known_call()
    first = summarize(ended, segments)
    assert json.loads(json.dumps(first)) == first
    assert summarize(ended, segments) == first


def test_empty_call() -> None:
    ended = CallEnded(
        call_sid=SID,
        stream_sid="MZ1",
        ended_at=ENDED_AT,
        duration_ms=5000,
        reason=EndReason.HANGUP,
        segments=0,
        activity=(
            TrackActivity(Track.INBOUND, "caller", ()),
            TrackActivity(Track.OUTBOUND, "agent", ()),
        ),
        degraded="scribe_unavailable",
    )
    summary = summarize(ended, [])
    assert summary["speakers"] == {
        "caller": {"talk_ms": 0, "turns": 0, "words": 0, "words_per_minute": 0.0},
        "agent": {"talk_ms": 0, "turns": 0, "words": 0, "words_per_minute": 0.0},
    }
    assert summary["talk_ratio"] == {"caller": 0.0, "agent": 0.0}
    assert summary["overlap_ms"] == 0
    assert summary["silence_ms"] == 5000
    assert summary["longest_turn_ms"] == 0
    assert summary["longest_turn_speaker"] is None
    assert summary["transcript"] == ""
    assert summary["language_code"] is None
    assert summary["degraded"] == "scribe_unavailable"


def test_language_falls_back_to_segments_and_speakers_without_activity() -> None:
    _, segments = known_call()
    ended = CallEnded(
        call_sid=SID,
        stream_sid="MZ1",
        ended_at=ENDED_AT,
        duration_ms=60000,
        reason=EndReason.STOP,
        segments=1,
        activity=(),
    )
    summary = summarize(ended, [dataclasses.replace(segments[0], language_code="de")])
    assert summary["language_code"] == "de"
    assert summary["speakers"]["caller"] == {
        "talk_ms": 0,
        "turns": 1,
        "words": 2,
        "words_per_minute": 0.0,
    }
    assert summary["silence_ms"] == 60000


def test_interval_helpers() -> None:
    assert merge_intervals(spans((5, 10), (0, 3), (3, 4), (8, 12), (20, 20))) == [(0, 4), (5, 12)]
    assert merge_intervals(spans((-5, 3), (90, 120)), limit_ms=100) == [(0, 3), (90, 100)]
    three = [[(0, 10)], [(5, 15)], [(8, 9)]]
    assert coverage_ms(three, 1) == 15
    assert coverage_ms(three, 2) == 5  # [5, 10)
    assert coverage_ms(three, 3) == 1  # [8, 9)
