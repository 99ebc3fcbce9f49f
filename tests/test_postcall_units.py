"""The batch pass's parts on their own: the audio spool, the audio sent and its time map,
the batch transcript (entities, speakers, the second net), the client's errors, the sweeper."""

from __future__ import annotations

import io
import json
import os
import wave
from pathlib import Path

import pytest

from callbridge.audio.ulaw import FRAME_BYTES
from callbridge.models import Track
from callbridge.postcall.audio_spool import FLUSH_BYTES, AudioSpool, TrackAudio, folder_name
from callbridge.postcall.batch_client import (
    BatchEntity,
    BatchOptions,
    BatchTranscription,
    BatchWord,
    entity_categories,
    parse_transcription,
)
from callbridge.postcall.batch_transcript import TrackResult, batch_segments, entity_kind
from callbridge.postcall.request_audio import TimeMap, merge_spans, request_audio
from callbridge.redaction import RedactionKind

FRAME = bytes(range(FRAME_BYTES))


# --- the audio spool -----------------------------------------------------------------------


async def test_spool_keeps_each_track_on_the_stream_clock(tmp_path: Path) -> None:
    spool = AudioSpool(tmp_path, 10 * 2**20, host="host-a")
    recorder = spool.open("CA1", ["inbound", "outbound"])
    assert recorder is not None
    for n in range(10):
        recorder.append("inbound", n * 20, FRAME)
    # a timestamp jump: 1 s of frames never sent
    for n in range(60, 65):
        recorder.append("inbound", n * 20, FRAME)
    recorder.append("outbound", 500, FRAME)
    recorder.append("elsewhere", 0, FRAME)  # not a track of the call: ignored
    await recorder.close()
    audio = spool.read("CA1")
    assert audio is not None and audio.host == "host-a" and audio.incomplete is None
    inbound = audio.tracks["inbound"]
    assert [(start, len(data)) for start, data in inbound.pieces] == [
        (0, 10 * FRAME_BYTES),
        (1200, 5 * FRAME_BYTES),
    ]
    assert inbound.pieces[0][1] == FRAME * 10
    assert audio.tracks["outbound"].pieces == ((500, FRAME),)
    assert inbound.duration_ms == 300


async def test_what_was_flushed_survives_a_crash(tmp_path: Path) -> None:
    spool = AudioSpool(tmp_path, 10 * 2**20)
    recorder = spool.open("CA1", ["inbound"])
    assert recorder is not None
    frames = FLUSH_BYTES // FRAME_BYTES + 5
    for n in range(frames):
        recorder.append("inbound", n * 20, FRAME)
    # the process dies here: no close(); what reached the file is readable
    audio = spool.read("CA1")
    assert audio is not None
    kept = sum(len(data) for _, data in audio.tracks["inbound"].pieces)
    assert FLUSH_BYTES <= kept < frames * FRAME_BYTES
    await recorder.close()


async def test_the_spool_limit_stops_recording_and_marks_the_call(tmp_path: Path) -> None:
    spool = AudioSpool(tmp_path, FLUSH_BYTES + 1000)
    recorder = spool.open("CA1", ["inbound"])
    assert recorder is not None
    for n in range(3 * FLUSH_BYTES // FRAME_BYTES):
        recorder.append("inbound", n * 20, FRAME)
    await recorder.close()
    audio = spool.read("CA1")
    assert audio is not None and audio.incomplete is not None
    assert "spool full" in audio.incomplete
    assert spool.delete("CA1") and spool.read("CA1") is None
    assert not spool.delete("CA1")


def test_a_call_sid_never_becomes_a_path_of_its_own(tmp_path: Path) -> None:
    assert folder_name("CA0123abc") == "CA0123abc"
    for hostile in ("../../etc", "CA1/../x", "", "a" * 200, "CA 1"):
        name = folder_name(hostile)
        assert name.startswith("h-") and "/" not in name and ".." not in name
    spool = AudioSpool(tmp_path / "audio", 2**20)
    recorder = spool.open("../escape", ["inbound"])
    assert recorder is not None
    assert recorder.folder.parent == tmp_path / "audio"
    assert [sid for sid, _ in spool.kept()] == ["../escape"]


# --- the audio sent ------------------------------------------------------------------------


def wav_seconds(data: bytes) -> float:
    with wave.open(io.BytesIO(data)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 8000)
        return wav.getnframes() / 8000


def test_only_speech_is_sent_and_times_map_back() -> None:
    track = TrackAudio("inbound", ((0, b"\x10" * 80_000),))  # 10 s
    sent = request_audio(track, [(1000, 2000), (6000, 6500)], pad_ms=400, join_ms=300)
    assert sent is not None
    # 0.6-2.4 s and 5.6-6.9 s, joined by 0.3 s of silence
    assert sent.seconds == pytest.approx(1.8 + 0.3 + 1.3)
    assert wav_seconds(sent.wav) == pytest.approx(sent.seconds)
    assert sent.time_map.to_stream(0) == 600
    assert sent.time_map.to_stream(1800) == 2400
    assert sent.time_map.to_stream(1900) == 5600  # inside the joining silence
    assert sent.time_map.to_stream(2100) == 5600
    assert sent.time_map.to_stream(2600) == 6100
    assert request_audio(track, []) is None  # no speech, nothing sent
    everything = request_audio(track, None)
    assert everything is not None and everything.seconds == 10.0


def test_gaps_in_the_kept_audio_are_joined_not_filled() -> None:
    track = TrackAudio("inbound", ((0, b"\x10" * 8000), (60_000, b"\x10" * 8000)))
    sent = request_audio(track, None, join_ms=300)
    assert sent is not None and sent.seconds == pytest.approx(2.3)
    assert sent.time_map.to_stream(1500) == 60_000 + 200


def test_merge_spans() -> None:
    assert merge_spans([(1000, 2000), (2500, 3000), (100, 200)], 300) == [(0, 500), (700, 3300)]
    assert TimeMap(()).to_stream(12.4) == 12


# --- the batch transcript ------------------------------------------------------------------


def transcription(tokens: list[tuple[str, float, float]], entities=()) -> BatchTranscription:  # type: ignore[no-untyped-def]
    words: list[BatchWord] = []
    for index, (text, start, end) in enumerate(tokens):
        if index:
            words.append(BatchWord(" ", tokens[index - 1][2], start, "spacing"))
        words.append(BatchWord(text, start, end, "word", "speaker_0", -0.1))
    text = " ".join(t for t, _, _ in tokens)
    found = []
    for entity_type, entity_text in entities:
        at = text.index(entity_text)
        found.append(BatchEntity(entity_text, entity_type, at, at + len(entity_text)))
    return BatchTranscription("tr_1", text, "eng", tuple(words), tuple(found), 5.0)


IDENTITY = TimeMap(((0, 0, 100_000),))


def test_entities_become_markers_and_speakers_are_exact() -> None:
    caller = transcription(
        [
            ("My", 0.1, 0.3),
            ("card", 0.4, 0.6),
            ("is", 0.7, 0.8),
            ("4111", 0.9, 1.2),
            ("1111", 1.3, 1.6),
            ("1111", 1.7, 2.0),
            ("1111.", 2.1, 2.4),
            ("Thanks.", 5.0, 5.4),
        ],
        entities=[("credit_card", "4111 1111 1111 1111"), ("name", "Thanks")],
    )
    agent = transcription([("Go", 3.0, 3.2), ("ahead.", 3.3, 3.6)])
    segments = batch_segments(
        [
            TrackResult(Track.INBOUND, "caller", caller, IDENTITY),
            TrackResult(Track.OUTBOUND, "agent", agent, TimeMap(((0, 0, 100_000),))),
        ],
        call_sid="CA1",
        stream_sid="MZ1",
        kinds={RedactionKind.PCI},
        committed_at=__import__("datetime").datetime(2025, 1, 1),
    )
    assert [(s.sequence, s.speaker, s.text) for s in segments] == [
        (1, "caller", "My card is [PCI]"),
        (2, "agent", "Go ahead."),
        (3, "caller", "Thanks."),  # a name is not a kind asked for: left alone
    ]
    marker = segments[0].words[-1]
    assert (marker.text, marker.start_ms, marker.end_ms) == ("[PCI]", 900, 2400)


def test_the_local_redactor_is_a_second_net() -> None:
    # Scribe found no entity (none asked for, or it missed it): the redactor still does
    caller = transcription([("it's", 0.1, 0.3), ("4111", 0.4, 0.7), ("1111", 0.8, 1.1),
                            ("1111", 1.2, 1.5), ("1111", 1.6, 1.9)])  # fmt: skip
    segments = batch_segments(
        [TrackResult(Track.INBOUND, "caller", caller, IDENTITY)],
        call_sid="CA1",
        stream_sid="MZ1",
        kinds={RedactionKind.PCI},
        committed_at=__import__("datetime").datetime(2025, 1, 1),
    )
    assert [s.text for s in segments] == ["it's [PCI]"]
    unredacted = batch_segments(
        [TrackResult(Track.INBOUND, "caller", caller, IDENTITY)],
        call_sid="CA1",
        stream_sid="MZ1",
        kinds=set(),
        committed_at=__import__("datetime").datetime(2025, 1, 1),
    )
    assert [s.text for s in unredacted] == ["it's 4111 1111 1111 1111"]


def test_entity_types_map_to_kinds() -> None:
    kinds = set(RedactionKind)
    assert entity_kind("credit_card", kinds) is RedactionKind.PCI
    assert entity_kind("credit_card_expiration", kinds) is RedactionKind.PCI
    assert entity_kind("cvv", kinds) is RedactionKind.PCI
    assert entity_kind("ssn", kinds) is RedactionKind.SSN
    assert entity_kind("date_of_birth", kinds) is RedactionKind.DOB
    assert entity_kind("name", kinds) is None
    assert entity_kind("ssn", {RedactionKind.PCI}) is None
    assert entity_categories(["pci", "ssn", "dob"]) == ("pci", "pii")
    assert entity_categories([]) == ()


def test_parse_transcription_is_tolerant_and_refuses_other_shapes() -> None:
    parsed = parse_transcription(
        {
            "text": "hi",
            "words": [{"text": "hi", "start": 0.1, "end": 0.3}],
            "entities": None,
            "transcription_id": "tr_9",
            "language_code": "eng",
        }
    )
    assert parsed.words[0].type == "word" and parsed.entities == ()
    assert parsed.audio_duration_secs is None
    from callbridge.postcall.batch_client import BatchError

    with pytest.raises(BatchError, match="single-channel"):
        parse_transcription({"transcripts": []})


# --- the client's URLs ---------------------------------------------------------------------


def test_transcript_url_defaults_to_the_sdk_path_and_can_be_set() -> None:
    options = BatchOptions(url="https://api.elevenlabs.io/v1/speech-to-text")
    assert options.transcript_url("tr/1") == (
        "https://api.elevenlabs.io/v1/speech-to-text/transcripts/tr%2F1"
    )
    legacy = BatchOptions(transcripts_url="https://x.example/v1/speech-to-text/{transcription_id}")
    assert legacy.transcript_url("tr_1") == "https://x.example/v1/speech-to-text/tr_1"


def test_the_spool_files_are_private(tmp_path: Path) -> None:
    spool = AudioSpool(tmp_path, 2**20)
    recorder = spool.open("CA1", ["inbound"])
    assert recorder is not None
    mode = os.stat(tmp_path / "CA1" / "inbound.ulaw").st_mode & 0o777
    assert mode == 0o600
    assert json.loads((tmp_path / "CA1" / "meta.json").read_text())["call_sid"] == "CA1"


def test_serve_checks_the_postcall_settings(tmp_path: Path) -> None:
    from callbridge.config import ConfigError, check_serve, load_settings

    empty = tmp_path / "empty.toml"
    empty.write_text("")
    base = {
        "ELEVENLABS_API_KEY": "k",
        "CALLBRIDGE_PUBLIC_URL": "https://bridge.example.com",
        "CALLBRIDGE_TWILIO_VALIDATE": "false",
    }
    with pytest.raises(ConfigError, match=r"^CALLBRIDGE_POSTCALL: 'later' is not off or batch"):
        load_settings(empty, environ={**base, "CALLBRIDGE_POSTCALL": "later"})
    with pytest.raises(ConfigError, match=r"^CALLBRIDGE_SCRIBE_BATCH_URL: "):
        load_settings(empty, environ={**base, "CALLBRIDGE_SCRIBE_BATCH_URL": "ftp://x"})
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    settings = load_settings(
        empty,
        environ={
            **base,
            "CALLBRIDGE_POSTCALL": "batch",
            "CALLBRIDGE_POSTCALL_AUDIO_DIR": str(blocker / "audio"),
        },
    )
    with pytest.raises(ConfigError, match=r"^CALLBRIDGE_POSTCALL_AUDIO_DIR: cannot create"):
        check_serve(settings)
    good = load_settings(
        empty,
        environ={
            **base,
            "CALLBRIDGE_POSTCALL": "batch",
            "CALLBRIDGE_POSTCALL_AUDIO_DIR": str(tmp_path / "a"),
        },
    )
    check_serve(good)
    assert good.postcall.enabled and (tmp_path / "a").is_dir()
    assert good.scribe.batch_url == "https://api.elevenlabs.io/v1/speech-to-text"
