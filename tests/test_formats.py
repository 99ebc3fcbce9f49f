"""Transcript renderings: txt, WebVTT (parsed back with webvtt-py) and SubRip."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import webvtt

from callbridge.api.formats import clock, segment_to_json, to_srt, to_txt, to_vtt
from callbridge.models import CommittedSegment, Track, Word

AT = datetime(2025, 1, 1, tzinfo=UTC)


def seg(sequence: int, speaker: str, text: str, start_ms: int, end_ms: int) -> CommittedSegment:
    return CommittedSegment(
        call_sid="CA1",
        stream_sid="MZ1",
        sequence=sequence,
        speaker=speaker,
        track=Track.INBOUND if speaker == "caller" else Track.OUTBOUND,
        text=text,
        start_ms=start_ms,
        end_ms=end_ms,
        language_code="en",
        committed_at=AT,
    )


SEGMENTS = [
    seg(2, "agent", "Tom & Jerry <3 --> fun", 3_723_004, 3_725_500),
    seg(1, "caller", "Hello\n\nthere", 0, 1_250),
    seg(3, "caller", "", 3_726_000, 3_727_000),
    seg(4, "caller", "zero length", 3_730_000, 3_730_000),
]


def test_clock() -> None:
    assert clock(0, ".") == "00:00:00.000"
    assert clock(3_723_004, ",") == "01:02:03,004"
    assert clock(100 * 3_600_000, ".") == "100:00:00.000"


def test_txt_lines_in_order_without_empty_segments() -> None:
    assert to_txt(SEGMENTS) == (
        "caller: Hello there\nagent: Tom & Jerry <3 --> fun\ncaller: zero length\n"
    )
    assert to_txt([]) == ""


def test_vtt_is_valid_webvtt_with_voice_spans() -> None:
    text = to_vtt(SEGMENTS)
    assert text.startswith("WEBVTT\n\n")
    assert "00:00:00.000 --> 00:00:01.250\n<v caller>Hello there</v>\n" in text
    assert "<v agent>Tom &amp; Jerry &lt;3 --&gt; fun</v>" in text

    captions = webvtt.from_buffer(io.StringIO(text))
    assert len(webvtt.from_string(text, strict=True).captions) == 3
    assert [(c.start, c.end) for c in captions] == [
        ("00:00:00.000", "00:00:01.250"),
        ("01:02:03.004", "01:02:05.500"),
        ("01:02:10.000", "01:02:10.001"),  # a cue must end after it starts
    ]
    assert [c.voice for c in captions] == ["caller", "agent", "caller"]
    assert captions[0].text == "Hello there"
    assert len(webvtt.from_string(to_vtt([]), strict=True).captions) == 0


def test_srt_numbered_cues() -> None:
    text = to_srt(SEGMENTS)
    assert text == (
        "1\n00:00:00,000 --> 00:00:01,250\ncaller: Hello there\n\n"
        "2\n01:02:03,004 --> 01:02:05,500\nagent: Tom & Jerry <3 --> fun\n\n"
        "3\n01:02:10,000 --> 01:02:10,001\ncaller: zero length\n"
    )
    captions = webvtt.from_buffer(io.StringIO(text), format="srt")
    assert len(captions) == 3
    assert captions[1].start == "01:02:03.004"


def test_segment_json_has_every_field() -> None:
    with_words = CommittedSegment(
        call_sid="CA1",
        stream_sid="MZ1",
        sequence=1,
        speaker="caller",
        track=Track.INBOUND,
        text="hi",
        start_ms=10,
        end_ms=400,
        language_code=None,
        words=(Word("hi", 10, 400, logprob=-0.25),),
        committed_at=AT,
    )
    assert segment_to_json(with_words) == {
        "call_sid": "CA1",
        "stream_sid": "MZ1",
        "sequence": 1,
        "speaker": "caller",
        "track": "inbound",
        "text": "hi",
        "start_ms": 10,
        "end_ms": 400,
        "language_code": None,
        "words": [{"text": "hi", "start_ms": 10, "end_ms": 400, "type": "word", "logprob": -0.25}],
        "committed_at": "2025-01-01T00:00:00.000Z",
    }
