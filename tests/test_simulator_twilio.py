"""The Twilio simulator against a tiny recording media-websocket server."""

from __future__ import annotations

import asyncio
import json
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from callbridge.models import Track
from callbridge.testing.twilio_simulator import (
    FrameDrop,
    RawMessage,
    SimulatorHandshakeError,
    TwilioCallSimulator,
    load_wav,
    new_call_sid,
    new_stream_sid,
    to_mulaw,
)
from callbridge.twilio.protocol import MediaFrame, ProtocolError, Stop, StreamStart, parse_message
from callbridge.twilio.signatures import TwilioSignatureChecker

TOKEN = "sim-token"
PUBLIC = "https://bridge.example.com"


@dataclass
class RecordingMediaServer:
    """Checks the upgrade signature, parses every message, closes 1008 on a protocol error."""

    checker: TwilioSignatureChecker
    messages: list[Any] = field(default_factory=list)
    raw: list[str | bytes] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    rejected_handshakes: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    first_media: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not self.checker.check_websocket(request):
            self.rejected_handshakes += 1
            return web.json_response({"error": "bad signature"}, status=403)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        loop = asyncio.get_running_loop()
        try:
            async for message in ws:
                data = message.data
                self.raw.append(data)
                self.arrivals.append(loop.time())
                try:
                    parsed = parse_message(data)
                except ProtocolError as error:
                    await ws.close(code=1008, message=error.reason.encode())
                    break
                self.messages.append(parsed)
                if isinstance(parsed, MediaFrame):
                    self.first_media.set()
                if isinstance(parsed, Stop):
                    await ws.close(code=1000, message=b"stream stopped")
                    break
        finally:
            self.closed.set()
        return ws

    def media(self, track: Track | None = None) -> list[MediaFrame]:
        return [
            m
            for m in self.messages
            if isinstance(m, MediaFrame) and (track is None or m.track is track)
        ]


@dataclass
class Harness:
    server: RecordingMediaServer
    ws_url: str

    def simulator(self, **kwargs: Any) -> TwilioCallSimulator:
        return TwilioCallSimulator(self.ws_url, auth_token=TOKEN, public_url=PUBLIC, **kwargs)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    server = RecordingMediaServer(TwilioSignatureChecker(TOKEN, PUBLIC))
    app = web.Application()
    app.router.add_get("/twilio/media", server.handle)
    test_server = TestServer(app)
    await test_server.start_server()
    try:
        yield Harness(server, str(test_server.make_url("/twilio/media")).replace("http", "ws", 1))
    finally:
        await test_server.close()


def _tone(frames: int, amplitude: int = 8000) -> np.ndarray:
    t = np.arange(frames * 160)
    return (amplitude * np.sin(2 * np.pi * 440 * t / 8000)).astype(np.int16)


async def test_full_call_ordering_and_counters(harness: Harness) -> None:
    inbound = to_mulaw(_tone(10))
    outbound = to_mulaw(_tone(7, 3000))
    sim = harness.simulator(custom_parameters={"cb_from": "+1555"})
    result = await sim.run(inbound, outbound, speed=0, wait_for_server_close_s=2)

    raw = harness.server.raw
    first = json.loads(raw[0])
    assert first == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    start = harness.server.messages[1]
    assert isinstance(start, StreamStart)
    assert start.call_sid == sim.call_sid and start.stream_sid == sim.stream_sid
    assert start.call_sid.startswith("CA") and start.stream_sid.startswith("MZ")
    assert start.tracks == (Track.INBOUND, Track.OUTBOUND)
    assert start.custom_parameters == {"cb_from": "+1555"}
    assert isinstance(harness.server.messages[-1], Stop)

    # Numbers are strings on the wire; sequence numbers count every message from start = 1.
    decoded = [json.loads(r) for r in raw[1:]]
    assert [int(m["sequenceNumber"]) for m in decoded] == list(range(1, len(decoded) + 1))
    assert all(isinstance(m["media"]["chunk"], str) for m in decoded if m["event"] == "media")

    # Interleaved, 160-byte frames, per-track chunks, one shared 20 ms timestamp clock.
    frames = harness.server.media()
    assert [f.track for f in frames[:4]] == [Track.INBOUND, Track.OUTBOUND] * 2
    for track in Track:
        got = harness.server.media(track)
        assert len(got) == 10  # outbound padded with silence to the inbound length
        assert [f.chunk for f in got] == list(range(1, 11))
        assert [f.timestamp_ms for f in got] == [i * 20 for i in range(10)]
        assert all(len(f.payload) == 160 for f in got)
        assert b"".join(f.payload for f in got) == sim.sent[track].audio
    assert sim.sent[Track.INBOUND].audio == inbound
    assert sim.sent[Track.OUTBOUND].audio[: len(outbound)] == outbound
    assert set(sim.sent[Track.OUTBOUND].audio[len(outbound) :]) == {0xFF}
    assert result.frames_sent == {Track.INBOUND: 10, Track.OUTBOUND: 10}
    assert result.close_code == 1000 and result.close_reason == "stream stopped"


async def test_inbound_only_partial_frame_and_no_pad(harness: Harness) -> None:
    audio = bytes(range(200)) + bytes(250)  # 450 bytes → 3 frames, the last padded
    sim = harness.simulator()
    await sim.run(audio, speed=0)
    start = harness.server.messages[1]
    assert isinstance(start, StreamStart) and start.tracks == (Track.INBOUND,)
    frames = harness.server.media()
    assert [len(f.payload) for f in frames] == [160, 160, 160]
    assert all(f.track is Track.INBOUND for f in frames)
    assert sim.sent[Track.INBOUND].audio[:450] == audio


async def test_frame_drop_makes_a_timestamp_gap(harness: Harness) -> None:
    sim = harness.simulator()
    await sim.run(
        to_mulaw(_tone(20)),
        to_mulaw(_tone(20)),
        speed=0,
        drops=[
            FrameDrop(Track.INBOUND, 100, 200),
            FrameDrop(Track.OUTBOUND, 300, 340, advance_chunk=True),
        ],
    )
    inbound = harness.server.media(Track.INBOUND)
    assert [f.timestamp_ms for f in inbound] == [t for t in range(0, 400, 20) if not 100 <= t < 200]
    assert [f.chunk for f in inbound] == list(range(1, 16))  # chunks stay consecutive by default
    outbound = harness.server.media(Track.OUTBOUND)
    assert [f.timestamp_ms for f in outbound] == [
        t for t in range(0, 400, 20) if t not in (300, 320)
    ]
    assert [f.chunk for f in outbound] == [c for c in range(1, 21) if c not in (16, 17)]
    assert sim.sent[Track.INBOUND].timestamps == [f.timestamp_ms for f in inbound]


async def test_skip_silence(harness: Harness) -> None:
    audio = to_mulaw(_tone(3)) + b"\xff" * 320 + b"\x7f" * 160 + to_mulaw(_tone(2))
    sim = harness.simulator()
    await sim.run(audio, speed=0, skip_silence=True)
    assert [f.timestamp_ms for f in harness.server.media()] == [0, 20, 40, 120, 140]


async def test_raw_bad_message_gets_a_protocol_close(harness: Harness) -> None:
    sim = harness.simulator()
    result = await sim.run(
        to_mulaw(_tone(50)),
        speed=0,
        raw_messages=[RawMessage(at_ms=100, data="this is not json")],
    )
    assert harness.server.raw[2 + 5] == "this is not json"  # after connected, start and 5 frames
    assert result.close_code == 1008
    assert result.close_reason == "message is not JSON"
    assert result.server_closed_early
    assert result.frames_sent[Track.INBOUND] < 50  # it stopped sending once the server closed


async def test_binary_raw_message(harness: Harness) -> None:
    sim = harness.simulator()
    await sim.connect()
    await sim.send_start(["inbound"])
    await sim.send_raw(b"\x00\x01binary")
    assert await sim.wait_closed(2)
    await sim.close()
    assert sim.close_code == 1008


async def test_close_without_stop(harness: Harness) -> None:
    sim = harness.simulator()
    await sim.run(to_mulaw(_tone(3)), speed=0, end="close")
    await asyncio.wait_for(harness.server.closed.wait(), 2)
    assert not any(isinstance(m, Stop) for m in harness.server.messages)
    assert len(harness.server.media()) == 3


async def test_abort_without_close_frame(harness: Harness) -> None:
    sim = harness.simulator()
    await sim.run(to_mulaw(_tone(3)), speed=0, end="abort")
    await asyncio.wait_for(harness.server.closed.wait(), 2)
    assert not any(isinstance(m, Stop) for m in harness.server.messages)


@pytest.mark.parametrize("signature", ["missing", "wrong"])
async def test_bad_handshake_signature_is_refused(harness: Harness, signature: str) -> None:
    sim = harness.simulator(signature=signature)
    with pytest.raises(SimulatorHandshakeError) as caught:
        await sim.connect()
    assert caught.value.status == 403
    assert harness.server.rejected_handshakes == 1


async def test_shared_key_handshake(harness: Harness) -> None:
    harness.server.checker = TwilioSignatureChecker(TOKEN, PUBLIC, shared_keys={"K1": "s3cret"})
    sim = harness.simulator(shared_key=("K1", "s3cret"))
    await sim.run(to_mulaw(_tone(1)), speed=0)
    assert len(harness.server.media()) == 1


async def test_paced_sending(harness: Harness) -> None:
    # 50 frames (1 s of audio) at 2× real time take ≥ 490 ms to send; checked loosely:
    # when the first frame arrives most are still to come, and the total cannot be shorter
    # than the paced schedule (sleeping to deadlines never runs ahead).
    sim = harness.simulator()
    loop = asyncio.get_running_loop()
    began = loop.time()
    task = asyncio.create_task(sim.run(to_mulaw(_tone(50)), speed=2.0, end="none"))
    await asyncio.wait_for(harness.server.first_media.wait(), 5)
    assert len(harness.server.media()) < 40
    await task
    assert loop.time() - began >= 49 * 0.020 / 2.0
    await sim.close()
    assert sim.result().frames_sent[Track.INBOUND] == 50
    assert sim.close_code is not None


async def test_speed_zero_is_fast(harness: Harness) -> None:
    sim = harness.simulator()
    loop = asyncio.get_running_loop()
    began = loop.time()
    await sim.run(to_mulaw(_tone(500)), to_mulaw(_tone(500)), speed=0)  # 10 s of audio
    assert loop.time() - began < 5
    assert len(harness.server.media()) == 1000


async def test_hangup_after_and_shared_session(harness: Harness) -> None:
    async with aiohttp.ClientSession() as session:
        sims = [harness.simulator(session=session) for _ in range(3)]
        await asyncio.gather(
            *(s.run(to_mulaw(_tone(2)), speed=0, hangup_after_ms=20) for s in sims)
        )
        assert not session.closed
    starts = [m for m in harness.server.messages if isinstance(m, StreamStart)]
    assert len({s.call_sid for s in starts}) == 3


async def test_record_audio_off_keeps_counts(harness: Harness) -> None:
    sim = harness.simulator(record_audio=False)
    result = await sim.run(to_mulaw(_tone(5)), to_mulaw(_tone(5)), speed=0)
    assert result.frames_sent == {Track.INBOUND: 5, Track.OUTBOUND: 5}
    assert sim.sent[Track.INBOUND].frames == []
    assert len(harness.server.media()) == 10


def _write_wav(path: Path, channels: int, rate: int, width: int, frames: np.ndarray) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(frames.tobytes())


async def test_wav_inputs(harness: Harness, tmp_path: Path) -> None:
    left = _tone(50)  # 1 s at 8 kHz
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    _write_wav(tmp_path / "stereo.wav", 2, 8000, 2, stereo)
    tracks = load_wav(tmp_path / "stereo.wav")
    assert tracks[Track.INBOUND] == to_mulaw(left)
    assert set(tracks[Track.OUTBOUND]) <= {0xFF, 0x7F}

    # 16 kHz mono, 8-bit and 32-bit WAVs are resampled/converted to 8 kHz μ-law.
    t = np.arange(16000)
    mono16k = (8000 * np.sin(2 * np.pi * 300 * t / 16000)).astype(np.int16)
    _write_wav(tmp_path / "mono16k.wav", 1, 16000, 2, mono16k)
    assert abs(len(load_wav(tmp_path / "mono16k.wav")[Track.INBOUND]) - 8000) <= 2
    _write_wav(tmp_path / "u8.wav", 1, 8000, 1, (mono16k[::2] // 256 + 128).astype(np.uint8))
    assert len(load_wav(tmp_path / "u8.wav")[Track.INBOUND]) == 8000
    _write_wav(tmp_path / "s32.wav", 1, 8000, 4, mono16k[::2].astype(np.int32) << 16)
    assert load_wav(tmp_path / "s32.wav")[Track.INBOUND] == to_mulaw(mono16k[::2])

    sim = harness.simulator()
    await sim.run(wav=tmp_path / "stereo.wav", speed=0)
    start = harness.server.messages[1]
    assert isinstance(start, StreamStart) and start.tracks == (Track.INBOUND, Track.OUTBOUND)
    assert len(harness.server.media(Track.OUTBOUND)) == 50
    assert sim.sent[Track.INBOUND].audio == to_mulaw(left)

    with pytest.raises(ValueError):
        to_mulaw(tmp_path / "stereo.wav")
    with pytest.raises(TypeError):
        to_mulaw(np.zeros(10, dtype=np.float32))


def test_sid_helpers() -> None:
    call_sid, stream_sid = new_call_sid(), new_stream_sid()
    assert call_sid.startswith("CA") and len(call_sid) == 34
    assert stream_sid.startswith("MZ") and len(stream_sid) == 34
    assert new_call_sid() != call_sid
