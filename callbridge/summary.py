"""The post-call summary (interface §6): talk time, turns, words, overlap and silence.

:func:`summarize` is pure and deterministic; its result is plain JSON (``dict``/``list``/
``str``/``int``/``float``/``None``). Definitions:

* **talk_ms** of a speaker: the total length of the union of that speaker's speech
  intervals as measured by the bridge's voice activity detection (``CallEnded.activity``),
  clipped to ``[0, duration_ms)``. Segment spans are not used for talk time: they include
  the pre-roll and the pauses inside a turn.
* **talk_ratio**: per speaker ``talk_ms / Σ talk_ms`` over all speakers (rounded to four
  decimals, so the values sum to 1 up to rounding); every ratio is 0 when nobody spoke.
  Overlapping speech counts for both speakers.
* **overlap_ms**: time in which two or more speakers' speech intervals overlap.
* **silence_ms**: time within ``[0, duration_ms)`` in which nobody speaks, so
  ``silence_ms + Σ talk_ms − overlap_ms == duration_ms`` (with two speakers).
* **turns**: a turn is a maximal run of consecutive (by ``sequence``) segments with
  non-empty text by one speaker; segments with empty text neither count nor break a run.
  A turn lasts from the ``start_ms`` of its first segment to the ``end_ms`` of its last;
  ``longest_turn_ms`` is the longest of these (0 without turns).
* **words**: the number of ``type == "word"`` entries of a segment's ``words`` when the
  segment has any, else its whitespace-separated tokens.
* **words_per_minute**: ``words / (talk_ms / 60000)`` rounded to one decimal; 0.0 when the
  speaker's measured talk time is 0.
* **segments**: the committed segments of the call (transcripts with text, numbered 1..n;
  a committed transcript with empty text is not a segment).
* **transcript**: one ``speaker: text`` line per segment with non-empty text, in sequence
  order, joined by ``\\n`` (newlines inside a segment's text become spaces).

Extras: ``stream_sid``, ``ended_at``, ``reason``, ``degraded``, ``audio_lost_ms``,
``empty_transcripts`` (commits Scribe answered with empty text: noise, music, tones, a
cough), ``untranscribed_turns`` (turns never transcribed because Scribe was gone for good),
``talk_ms`` (total), ``speech_ms`` (time anyone speaks), ``turns`` (total) and
``longest_turn_speaker``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from callbridge.models import CallEnded, CommittedSegment, Interval, rfc3339

Span = tuple[int, int]


def merge_intervals(intervals: Iterable[Interval], limit_ms: int | None = None) -> list[Span]:
    """The union of half-open intervals as sorted, disjoint spans, clipped to ``[0, limit_ms)``."""
    spans: list[Span] = []
    for interval in sorted(intervals, key=lambda i: (i.start_ms, i.end_ms)):
        start = max(0, interval.start_ms)
        end = interval.end_ms if limit_ms is None else min(interval.end_ms, limit_ms)
        if end <= start:
            continue
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        else:
            spans.append((start, end))
    return spans


def total_ms(spans: Iterable[Span]) -> int:
    return sum(end - start for start, end in spans)


def coverage_ms(per_speaker: Iterable[Sequence[Span]], at_least: int) -> int:
    """Time during which at least ``at_least`` of the given span lists are active."""
    edges: list[tuple[int, int]] = []
    for spans in per_speaker:
        for start, end in spans:
            edges.append((start, 1))
            edges.append((end, -1))
    edges.sort()
    covered = 0
    active = 0
    previous = 0
    for moment, change in edges:
        if active >= at_least:
            covered += moment - previous
        active += change
        previous = moment
    return covered


def count_words(segment: CommittedSegment) -> int:
    if segment.words:
        return sum(1 for word in segment.words if word.type == "word")
    return len(segment.text.split())


def transcript_line(segment: CommittedSegment) -> str:
    """``speaker: text`` on one line."""
    return f"{segment.speaker}: {' '.join(segment.text.split())}"


def spoken(segments: Iterable[CommittedSegment]) -> list[CommittedSegment]:
    """Segments with non-empty text, in sequence order."""
    return sorted((s for s in segments if s.text.strip()), key=lambda s: s.sequence)


def find_turns(segments: Sequence[CommittedSegment]) -> list[tuple[str, int, int]]:
    """``(speaker, start_ms, end_ms)`` of every turn (see the module docstring)."""
    turns: list[tuple[str, int, int]] = []
    for segment in spoken(segments):
        if turns and turns[-1][0] == segment.speaker:
            speaker, start, end = turns[-1]
            turns[-1] = (speaker, min(start, segment.start_ms), max(end, segment.end_ms))
        else:
            turns.append((segment.speaker, segment.start_ms, segment.end_ms))
    return turns


def summarize(ended: CallEnded, segments: Sequence[CommittedSegment]) -> dict[str, Any]:
    """The post-call summary of one call; see the module docstring for every definition."""
    duration_ms = max(0, ended.duration_ms)
    speech_by_speaker: dict[str, list[Interval]] = {}
    for activity in ended.activity:
        speech_by_speaker.setdefault(activity.speaker, []).extend(activity.speech)
    for segment in sorted(segments, key=lambda s: s.sequence):
        speech_by_speaker.setdefault(segment.speaker, [])
    merged = {
        speaker: merge_intervals(intervals, duration_ms)
        for speaker, intervals in speech_by_speaker.items()
    }

    turns = find_turns(segments)
    talk = {speaker: total_ms(spans) for speaker, spans in merged.items()}
    all_talk_ms = sum(talk.values())
    speakers: dict[str, dict[str, Any]] = {}
    for speaker, talk_ms in talk.items():
        words = sum(count_words(s) for s in spoken(segments) if s.speaker == speaker)
        speakers[speaker] = {
            "talk_ms": talk_ms,
            "turns": sum(1 for turn in turns if turn[0] == speaker),
            "words": words,
            "words_per_minute": round(words * 60000 / talk_ms, 1) if talk_ms else 0.0,
        }
    talk_ratio = {
        speaker: round(talk_ms / all_talk_ms, 4) if all_talk_ms else 0.0
        for speaker, talk_ms in talk.items()
    }
    speech_ms = coverage_ms(merged.values(), 1)
    longest = max(turns, key=lambda t: t[2] - t[1], default=None)
    return {
        "call_sid": ended.call_sid,
        "stream_sid": ended.stream_sid,
        "ended_at": rfc3339(ended.ended_at),
        "duration_ms": duration_ms,
        "reason": str(ended.reason),
        "degraded": ended.degraded,
        "audio_lost_ms": ended.audio_lost_ms,
        "empty_transcripts": ended.empty_transcripts,
        "untranscribed_turns": ended.untranscribed_turns,
        "language_code": ended.language_code or _most_common_language(segments),
        "segments": ended.segments,
        "speakers": speakers,
        "talk_ratio": talk_ratio,
        "talk_ms": all_talk_ms,
        "speech_ms": speech_ms,
        "overlap_ms": coverage_ms(merged.values(), 2),
        "silence_ms": max(0, duration_ms - speech_ms),
        "turns": len(turns),
        "longest_turn_ms": (longest[2] - longest[1]) if longest else 0,
        "longest_turn_speaker": longest[0] if longest else None,
        "transcript": "\n".join(transcript_line(s) for s in spoken(segments)),
    }


def _most_common_language(segments: Sequence[CommittedSegment]) -> str | None:
    counts = Counter(s.language_code for s in segments if s.language_code)
    if not counts:
        return None
    # most_common keeps first-seen order among ties, which keeps the result deterministic
    return counts.most_common(1)[0][0]
