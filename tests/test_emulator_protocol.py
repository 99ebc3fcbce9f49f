"""The Scribe emulator's own contract, driven by a raw websocket client."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from callbridge.testing.scribe_emulator import ScribeEmulator, transcript_text
from callbridge.testing.speech import DetectedWord, build_track, pcm16_to_ulaw, synth_utterance

pytestmark = pytest.mark.timeout(20)

QUERY = "model_id=scribe_v2_realtime&audio_format=ulaw_8000&include_timestamps=true"
FRAME = b"\xff" * 160  # 20 ms of μ-law silence


def chunk(audio: bytes = FRAME, **fields: Any) -> str:
    message: dict[str, Any] = {
        "message_type": "input_audio_chunk",
        "audio_base_64": base64.b64encode(audio).decode(),
        "commit": False,
        "sample_rate": 8000,
    }
    message.update(fields)
    return json.dumps(message)


@pytest.fixture
async def emulator() -> AsyncIterator[ScribeEmulator]:
    async with ScribeEmulator() as running:
        yield running


async def open_raw(
    emulator: ScribeEmulator, query: str = QUERY, key: str = "test-key"
) -> tuple[ClientConnection, dict[str, Any]]:
    websocket = await connect(f"{emulator.url}?{query}", additional_headers={"xi-api-key": key})
    return websocket, json.loads(await websocket.recv())


async def error_then_close(websocket: ClientConnection) -> tuple[dict[str, Any], int | None]:
    """The next error message, skipping others, and the close code that follows it."""
    while True:
        message = json.loads(await websocket.recv())
        if "error" in message:
            break
    with pytest.raises(ConnectionClosed):
        await websocket.recv()
    return message, websocket.close_code


async def test_session_started_echo_is_realistic(emulator: ScribeEmulator) -> None:
    websocket, started = await open_raw(emulator, QUERY + "&language_code=de&made_up=1")
    assert started["message_type"] == "session_started"
    assert started["session_id"] == emulator.sessions[0].session_id
    config = started["config"]
    assert config["audio_format"] == "ulaw_8000"
    assert config["sample_rate"] == 8000
    assert config["language_code"] == "de"
    assert config["model_id"] == "scribe_v2_realtime"
    assert config["include_timestamps"] is True
    assert "vad_commit_strategy" in config
    assert emulator.sessions[0].ignored_params == ["made_up"]  # ignored, not rejected
    await websocket.close()


async def test_missing_audio_format_runs_as_pcm_16000(emulator: ScribeEmulator) -> None:
    websocket, started = await open_raw(emulator, "model_id=scribe_v2_realtime&encoding=ulaw_8000")
    assert started["config"]["audio_format"] == "pcm_16000"
    assert started["config"]["sample_rate"] == 16000
    await websocket.send(chunk(FRAME))  # 8000 is the wrong rate for this session
    error, _ = await error_then_close(websocket)
    assert error["message_type"] == "input_error"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("audio_format=ulaw_8000", "model_id is required"),
        ("model_id=scribe_realtime_v2&audio_format=ulaw_8000", "Invalid model_id"),
        ("model_id=scribe_v2_realtime&audio_format=mp3", "Invalid audio_format"),
        ("model_id=scribe_v2_realtime&include_timestamps=yes", "include_timestamps"),
    ],
)
async def test_bad_query_gets_invalid_request(
    emulator: ScribeEmulator, query: str, expected: str
) -> None:
    websocket, first = await open_raw(emulator, query)
    assert first["message_type"] == "invalid_request"
    assert expected in first["error"]
    assert set(first) == {"message_type", "error"}
    with pytest.raises(ConnectionClosed):
        await websocket.recv()


async def test_wrong_path_is_404(emulator: ScribeEmulator) -> None:
    url = emulator.url.replace("/realtime", "/realtime-beta")
    with pytest.raises(InvalidStatus) as caught:
        await connect(f"{url}?{QUERY}", additional_headers={"xi-api-key": "test-key"})
    assert caught.value.response.status_code == 404


joined_base64 = base64.b64encode(FRAME[:100]).decode() + base64.b64encode(FRAME[:100]).decode()


@pytest.mark.parametrize(
    ("frame", "error_type"),
    [
        (chunk(extra=1), "input_error"),
        (chunk(audio_base64="AA=="), "input_error"),  # TTS spelling as an extra key
        (chunk(audio_base_64=joined_base64), "input_error"),  # joined base64 strings
        (chunk(sample_rate=16000), "input_error"),
        (chunk(sample_rate="8000"), "input_error"),
        (chunk(commit="false"), "input_error"),
        (chunk(message_type="commit"), "input_error"),
        (
            json.dumps({"message_type": "input_audio_chunk", "commit": True, "sample_rate": 8000}),
            "input_error",
        ),
        (chunk(audio_base_64="not base64!"), "input_error"),
        ("not json", "input_error"),
        (FRAME, "input_error"),  # binary frame
    ],
)
async def test_malformed_client_messages_are_rejected(
    emulator: ScribeEmulator, frame: str | bytes, error_type: str
) -> None:
    websocket, _ = await open_raw(emulator)
    await websocket.send(chunk(FRAME))  # one valid chunk first
    await websocket.send(frame)
    error, close_code = await error_then_close(websocket)
    assert error["message_type"] == error_type
    assert set(error) == {"message_type", "error"} and error["error"]
    assert close_code == 1008
    session = emulator.sessions[0]
    await session.wait_closed()
    assert session.errors_sent == [error]
    assert len(session.chunks) == 1  # the invalid message was not recorded as audio


async def test_chunks_of_any_size_are_accepted(emulator: ScribeEmulator) -> None:
    # The official SDK sends 8,192-byte chunks: not whole 20 ms frames, and over 1 s.
    websocket, _ = await open_raw(emulator)
    sizes = [8192, 163, 80, 1]
    for size in sizes:
        await websocket.send(chunk(b"\xff" * size))
    await websocket.send(chunk(b"", commit=True))
    committed = json.loads(await websocket.recv())
    assert committed["message_type"] == "committed_transcript" and committed["text"] == ""
    assert emulator.sessions[0].audio_bytes == sum(sizes)
    assert emulator.sessions[0].errors_sent == []
    await websocket.close()


async def test_a_chunk_size_cap_is_an_opt_in_fault() -> None:
    async with ScribeEmulator(max_chunk_ms=1000) as emulator:
        websocket, _ = await open_raw(emulator)
        await websocket.send(chunk(FRAME * 60))  # 1.2 s > 1 s
        error, close_code = await error_then_close(websocket)
        assert error["message_type"] == "chunk_size_exceeded" and close_code == 1008


@pytest.mark.parametrize(
    ("audio_ms", "seconds"), [(0, "0.00"), (20, "0.02"), (200, "0.20"), (299, "0.29")]
)
async def test_a_commit_below_0_3_s_is_throttled_and_closes_the_session(
    emulator: ScribeEmulator, audio_ms: int, seconds: str
) -> None:
    websocket, _ = await open_raw(emulator)
    await websocket.send(chunk(b"\xff" * (audio_ms * 8), commit=True))
    message = json.loads(await websocket.recv())
    assert message == {  # the live text (reference §2.2), with the actual seconds
        "message_type": "commit_throttled",
        "error": f"Commit request ignored: only {seconds}s of uncommitted audio. "
        "You need at least 0.3s of uncommitted audio before committing.",
    }
    with pytest.raises(ConnectionClosed):
        await websocket.recv()  # no committed transcript for it: the socket closes
    assert websocket.close_code == 1000 and websocket.close_reason == "commit_throttled"
    session = emulator.sessions[0]
    assert session.committed == [] and session.throttled_commits == [audio_ms * 8]


async def test_an_empty_commit_right_after_a_commit_is_throttled(emulator: ScribeEmulator) -> None:
    websocket, _ = await open_raw(emulator)
    await websocket.send(chunk(b"\xff" * 2400, commit=True))  # exactly 0.3 s: accepted
    assert json.loads(await websocket.recv()) == {
        "message_type": "committed_transcript",
        "text": "",
    }
    await websocket.send(chunk(b"", commit=True))
    error, close_code = await error_then_close(websocket)
    assert error["message_type"] == "commit_throttled" and "only 0.00s" in error["error"]
    assert close_code == 1000 and websocket.close_reason == "commit_throttled"


async def test_auth_error_is_followed_by_a_close_1000() -> None:
    async with ScribeEmulator(api_key="right") as emulator:
        websocket, first = await open_raw(emulator, key="wrong")
        assert first == {
            "message_type": "auth_error",
            "error": "You must be authenticated to use this endpoint.",
        }
        with pytest.raises(ConnectionClosed):
            await websocket.recv()
        assert websocket.close_code == 1000 and not websocket.close_reason


async def test_previous_text_after_the_first_chunk_is_rejected(emulator: ScribeEmulator) -> None:
    websocket, _ = await open_raw(emulator)
    await websocket.send(chunk(previous_text="hello there"))
    await websocket.send(chunk(previous_text="again"))
    error, _ = await error_then_close(websocket)
    assert error["message_type"] == "input_error"
    assert "previous_text" in error["error"]
    assert emulator.sessions[0].chunks[0].previous_text == "hello there"


async def test_explicit_null_previous_text_is_accepted(emulator: ScribeEmulator) -> None:
    websocket, _ = await open_raw(emulator)
    await websocket.send(chunk(previous_text=None))
    await websocket.send(chunk(b"\xff" * 2400, previous_text=None))
    await websocket.send(chunk(b"", commit=True))
    committed = json.loads(await websocket.recv())
    assert committed == {"message_type": "committed_transcript", "text": ""}
    await websocket.close()


async def test_duration_transcriber_reports_voiced_seconds(emulator: ScribeEmulator) -> None:
    audio = pcm16_to_ulaw(build_track(1500, [(200, synth_utterance([400, 600, 800]))]))
    websocket, _ = await open_raw(emulator)
    for offset in range(0, len(audio), 800):
        await websocket.send(chunk(audio[offset : offset + 800]))
    await websocket.send(chunk(b"", commit=True))
    messages: list[dict[str, Any]] = []
    while len([m for m in messages if m["message_type"].startswith("committed")]) < 2:
        messages.append(json.loads(await websocket.recv()))
    plain, timed = (m for m in messages if m["message_type"].startswith("committed"))
    assert plain == {"message_type": "committed_transcript", "text": "[emulated: 0.7 s of speech]"}
    assert timed["message_type"] == "committed_transcript_with_timestamps"
    assert timed["text"] == plain["text"]
    assert [w["text"] for w in timed["words"]] == ["speech"] * 3
    assert timed["words"][0] == {
        "text": "speech",
        "start": 0.2,
        "end": 0.42,
        "type": "word",
        "logprob": 0.0,
    }
    await websocket.close()


async def test_noise_alone_transcribes_to_nothing(emulator: ScribeEmulator) -> None:
    audio = pcm16_to_ulaw(build_track(1000, [], noise_dbfs=-50.0))
    websocket, _ = await open_raw(emulator, "model_id=scribe_v2_realtime&audio_format=ulaw_8000")
    await websocket.send(chunk(audio, commit=True))  # audio and commit in one message
    assert json.loads(await websocket.recv()) == {
        "message_type": "committed_transcript",
        "text": "",
    }
    assert emulator.sessions[0].commits == [8000]
    await websocket.close()


def test_transcript_text_modes() -> None:
    words = [DetectedWord(0, 250, 400), DetectedWord(300, 500, 550)]
    assert transcript_text(words, "tones") == "tone400 tone550"
    assert transcript_text(words, "duration") == "[emulated: 0.5 s of speech]"
    assert transcript_text([], "duration") == ""


async def test_commit_delay_holds_back_committed_messages() -> None:
    async with ScribeEmulator(commit_delay_s=0.3) as emulator:
        websocket, _ = await open_raw(emulator)
        await websocket.send(chunk(FRAME * 20, commit=True))
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        await websocket.recv()
        assert loop.time() - sent_at >= 0.29
        await websocket.close()


async def test_idle_sockets_close_with_1000() -> None:
    async with ScribeEmulator(idle_timeout_s=0.1) as emulator:
        websocket, _ = await open_raw(emulator)
        with pytest.raises(ConnectionClosed):
            await websocket.recv()
        assert websocket.close_code == 1000
        await emulator.sessions[0].wait_closed()
        assert emulator.sessions[0].closed_code == 1000


async def test_handshake_refusals_are_counted(emulator: ScribeEmulator) -> None:
    emulator.refuse_connections(2, status=429)
    for _ in range(2):
        with pytest.raises(InvalidStatus) as caught:
            await open_raw(emulator)
        assert caught.value.response.status_code == 429
    websocket, started = await open_raw(emulator)
    assert started["message_type"] == "session_started"
    assert emulator.connection_attempts == 3
    await websocket.close()
