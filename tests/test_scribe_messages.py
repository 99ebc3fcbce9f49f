"""Parsing of Scribe server messages."""

from __future__ import annotations

import json

import pytest

from callbridge.scribe.errors import ScribeError
from callbridge.scribe.messages import (
    CommittedTranscript,
    FinalTranscript,
    PartialTranscript,
    ScribeWord,
    ServerWarning,
    SessionStarted,
    UnknownMessage,
    parse_message,
    parse_word,
)


def test_session_started_is_parsed_leniently() -> None:
    message = parse_message(
        json.dumps(
            {
                "message_type": "session_started",
                "session_id": "abc",
                "config": {"audio_format": "ulaw_8000", "vad_commit_strategy": True},
            }
        )
    )
    assert isinstance(message, SessionStarted)
    assert message.session_id == "abc" and message.audio_format == "ulaw_8000"
    assert message.config["vad_commit_strategy"] is True
    bare = parse_message('{"message_type":"session_started","config":null}')
    assert isinstance(bare, SessionStarted) and bare.audio_format is None


def test_transcripts() -> None:
    assert parse_message('{"message_type":"partial_transcript","text":"hi"}') == PartialTranscript(
        "hi"
    )
    assert parse_message('{"message_type":"committed_transcript"}') == CommittedTranscript("")
    assert parse_message('{"message_type":"final_transcript","text":"x"}') == FinalTranscript("x")
    timed = parse_message(
        json.dumps(
            {
                "message_type": "committed_transcript_with_timestamps",
                "text": "Hello there",
                "language_code": "en",
                "words": [
                    {
                        "text": "Hello",
                        "start": 0.12,
                        "end": 0.45,
                        "type": "word",
                        "logprob": -0.05,
                        "speaker_id": "speaker_0",
                        "characters": ["H"],
                    },
                    {"text": " ", "start": 0.45, "end": 0.5, "type": "spacing"},
                    {"text": "there"},  # every field is optional in the spec
                    {"text": "bad", "start": "soon"},  # malformed: dropped
                    "not a word",
                    {"start": 1.0, "end": 2.0},  # no text: dropped
                ],
            }
        )
    )
    assert isinstance(timed, CommittedTranscript) and timed.with_timestamps
    assert timed.language_code == "en"
    assert timed.words == (
        ScribeWord("Hello", 0.12, 0.45, "word", -0.05, "speaker_0"),
        ScribeWord(" ", 0.45, 0.5, "spacing"),
        ScribeWord("there", 0.0, 0.0),
    )
    null_words = parse_message(
        '{"message_type":"committed_transcript_with_timestamps","text":"","language_code":null,"words":null}'
    )
    assert null_words == CommittedTranscript("", None, (), True)


def test_word_end_before_start_is_clamped() -> None:
    assert parse_word({"text": "a", "start": 2.0, "end": 1.0}) == ScribeWord("a", 2.0, 2.0)
    assert parse_word({"text": "a", "start": True}) is None


def test_warning_and_unknown() -> None:
    assert parse_message('{"message_type":"warning","warning":"careful"}') == ServerWarning(
        "careful"
    )
    unknown = parse_message('{"message_type":"speakers_merged","from_speaker_id":"a"}')
    assert isinstance(unknown, UnknownMessage) and unknown.message_type == "speakers_merged"


def test_error_text_comes_from_the_error_field() -> None:
    with pytest.raises(ScribeError) as caught:
        parse_message('{"message_type":"auth_error","error":"no key","message":"wrong field"}')
    assert (caught.value.kind, caught.value.detail, caught.value.retryable) == (
        "auth_error",
        "no key",
        False,
    )
    with pytest.raises(ScribeError) as unknown:
        parse_message('{"message_type":"brand_new_error","error":"x"}')
    assert unknown.value.retryable


@pytest.mark.parametrize("frame", ["{not json", "[1, 2]", '{"text": "no type"}', b"\xff\xfe"])
def test_garbage_is_a_retryable_protocol_error(frame: str | bytes) -> None:
    with pytest.raises(ScribeError) as caught:
        parse_message(frame)
    assert (caught.value.kind, caught.value.retryable) == ("protocol", True)
