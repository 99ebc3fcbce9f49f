"""``callbridge simulate``: WAV reading, and the command against a real ``callbridge serve``."""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import wave
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from callbridge.models import Track
from callbridge.simulate import (
    Bridge,
    SimulateError,
    clock,
    load_call_audio,
    play_call,
    read_wav,
    sample_call_path,
    summary_lines,
)
from tests.bridge_harness import free_port

AUTH_TOKEN = "sim-auth-token"
API_TOKEN = "sim-api-token"
SEGMENT_LINE = r"^\[\d\d:\d\d\.\d\] (caller|agent): \[emulated: [\d.]+ s of speech\]$"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any callbridge, Twilio or ElevenLabs setting, plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CALLBRIDGE_", "TWILIO_", "ELEVENLABS_"))
        and key not in {"DATABASE_URL", "PORT", "HOST"}
    }
    env.update(extra)
    return env


# --- WAV files ------------------------------------------------------------------------------


def write_pcm_wav(path: Path, samples: np.ndarray, rate: int, width: int = 2) -> Path:
    """``samples``: float in [-1, 1], shape (n,) or (n, channels)."""
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    if width == 1:
        data = np.clip(samples * 127 + 128, 0, 255).astype(np.uint8).tobytes()
    else:
        data = np.clip(samples * 32767, -32768, 32767).astype("<i2").tobytes()
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(data)
    return path


def tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return 0.5 * np.sin(2 * np.pi * freq * t)


def test_bundled_sample_is_8khz_mulaw_stereo_passed_through() -> None:
    path = sample_call_path()
    truth = json.loads(path.with_name("sample_call.json").read_text())
    assert path.stat().st_size < 700 * 1024
    audio = read_wav(path)
    assert len(audio.channels) == 2
    assert abs(audio.duration_s * 1000 - truth["duration_ms"]) < 5
    raw = path.read_bytes()
    data_at = raw.index(b"data") + 8
    assert audio.channels[0][:1000] == raw[data_at : data_at + 2000 : 2]  # untouched μ-law
    tracks = load_call_audio(path)
    assert set(tracks) == {Track.INBOUND, Track.OUTBOUND}


def test_ground_truth_has_turns_and_an_overlap() -> None:
    truth = json.loads(sample_call_path().with_name("sample_call.json").read_text())
    turns = truth["turns"]
    assert len(turns) >= 5
    assert {turn["speaker"] for turn in turns} == {"caller", "agent"}
    assert 20_000 <= truth["duration_ms"] <= 40_000
    (overlap,) = truth["overlaps"]
    assert 1000 <= overlap["end_ms"] - overlap["start_ms"] <= 2000


@pytest.mark.parametrize(("rate", "width"), [(8000, 2), (16000, 2), (44100, 2), (22050, 1)])
def test_pcm_wav_any_rate_and_width_becomes_8khz_mulaw(
    tmp_path: Path, rate: int, width: int
) -> None:
    path = write_pcm_wav(tmp_path / "a.wav", tone(1.0, rate), rate, width)
    (channel,) = read_wav(path).channels
    assert abs(len(channel) - 8000) <= 2
    assert load_call_audio(path).keys() == {Track.INBOUND}


def test_stereo_wav_is_caller_left_agent_right(tmp_path: Path) -> None:
    left, right = tone(0.5, 16000), np.zeros(8000)
    path = write_pcm_wav(tmp_path / "s.wav", np.stack([left, right], axis=1), 16000)
    tracks = load_call_audio(path)
    assert set(tracks) == {Track.INBOUND, Track.OUTBOUND}
    assert set(tracks[Track.OUTBOUND]) <= {0xFF, 0x7F}  # μ-law silence
    assert len(set(tracks[Track.INBOUND])) > 10


def test_float_wav_is_read(tmp_path: Path) -> None:
    samples = tone(0.25, 8000).astype("<f4")
    fmt = struct.pack("<HHIIHH", 3, 1, 8000, 32000, 4, 32)
    data = samples.tobytes()
    body = b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt + b"data"
    body += struct.pack("<I", len(data)) + data
    path = tmp_path / "f.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    (channel,) = read_wav(path).channels
    assert len(channel) == 2000


def test_separate_caller_and_agent_files(tmp_path: Path) -> None:
    caller = write_pcm_wav(tmp_path / "c.wav", tone(1.0, 8000), 8000)
    agent = write_pcm_wav(tmp_path / "a.wav", tone(0.5, 8000), 8000)
    tracks = load_call_audio(caller=caller, agent=agent)
    assert (len(tracks[Track.INBOUND]), len(tracks[Track.OUTBOUND])) == (8000, 4000)


def test_bad_files_raise_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "text.wav").write_text("hello")
    three = np.zeros((800, 3))
    three_path = tmp_path / "three.wav"
    with wave.open(str(three_path), "wb") as wav:
        wav.setnchannels(3)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(three.astype("<i2").tobytes())
    stereo = write_pcm_wav(tmp_path / "st.wav", np.zeros((800, 2)), 8000)
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: read_wav(tmp_path / "missing.wav"), "no such file"),
        (lambda: read_wav(tmp_path / "text.wav"), "not a WAV file"),
        (lambda: read_wav(tmp_path), "directory"),
        (lambda: read_wav(three_path), "3 channels"),
        (lambda: load_call_audio(caller=stereo), "mono"),
        (lambda: load_call_audio(agent=stereo), "--caller"),
        (lambda: load_call_audio(stereo, caller=stereo), "not both"),
    ]
    for call, expected in cases:
        with pytest.raises(SimulateError, match=expected) as info:
            call()
        assert "\n" not in str(info.value)


def test_output_formats() -> None:
    assert clock(3200) == "00:03.2"
    assert clock(83_450) == "01:23.4"
    lines = summary_lines(
        {
            "duration_ms": 37555,
            "segments": 10,
            "turns": 9,
            "language_code": "en",
            "reason": "stop",
            "speakers": {"caller": {"talk_ms": 11700, "turns": 4, "words": 32}},
            "talk_ratio": {"caller": 0.41},
            "overlap_ms": 1200,
            "silence_ms": 9900,
            "longest_turn_ms": 4600,
            "longest_turn_speaker": "agent",
        }
    )
    assert lines[0].startswith("Summary: 37.6 s call, 10 segments")
    assert "caller  talk 11.7 s (41%), 4 turns, 32 words" in lines[1]
    assert lines[2] == "  overlap 1.2 s, silence 9.9 s, longest turn 4.6 s (agent)"


async def test_refused_media_handshake_is_a_clear_error(unused_tcp_port: int) -> None:
    """A bridge that answers the voice webhook but refuses the websocket upgrade (403)."""
    twiml = '<Response><Start><Stream url="wss://x/twilio/media"/></Start></Response>'

    async def voice(_: web.Request) -> web.Response:
        return web.Response(text=twiml, content_type="application/xml")

    async def media(_: web.Request) -> web.Response:
        return web.Response(status=403)

    app = web.Application()
    app.router.add_post("/twilio/voice", voice)
    app.router.add_get("/twilio/media", media)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    url = f"http://127.0.0.1:{unused_tcp_port}"
    try:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(SimulateError, match="media websocket with 403"):
                await play_call(
                    session,
                    Bridge(url=url, public_url=url, auth_token="t"),
                    {Track.INBOUND: b"\xff" * 1600},
                    call_sid="CA" + "0" * 32,
                    speed=0,
                )
    finally:
        await runner.cleanup()


# --- against a real `callbridge serve` --------------------------------------------------------


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"process exited early: {proc.stdout.read() if proc.stdout else ''!r}"
            )
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


def wait_healthy(base_url: str, proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"serve exited early: {proc.stdout.read() if proc.stdout else ''!r}"
            )
        try:
            with urllib.request.urlopen(base_url + "/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("callbridge serve never became healthy")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def served_bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``callbridge serve`` (a subprocess) wired to a Scribe emulator subprocess; its URL."""
    tmp = tmp_path_factory.mktemp("serve")
    scribe_port, port = free_port(), free_port()
    emulator = subprocess.Popen(
        [
            *(sys.executable, "-m", "callbridge.testing.scribe_emulator"),
            *("--port", str(scribe_port), "--api-key", "test-key", "--transcriber", "duration"),
        ],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(scribe_port, emulator)
        env = clean_env(
            ELEVENLABS_API_KEY="test-key",
            CALLBRIDGE_SCRIBE_URL=f"ws://127.0.0.1:{scribe_port}/v1/speech-to-text/realtime",
            TWILIO_AUTH_TOKEN=AUTH_TOKEN,
            CALLBRIDGE_PUBLIC_URL=f"http://127.0.0.1:{port}",
            HOST="127.0.0.1",
            PORT=str(port),
            CALLBRIDGE_API_TOKENS=f"{API_TOKEN},other-token",
            DATABASE_URL=f"sqlite:///{tmp / 'x.db'}",
            # the simulator plays 8x faster than real time; relax the wall-clock limits
            CALLBRIDGE_TURNS_MIN_COMMIT_INTERVAL_MS="100",
            CALLBRIDGE_TURNS_CATCHUP_SPEED="64",
        )
        server = subprocess.Popen(
            [sys.executable, "-m", "callbridge", "serve"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            base_url = f"http://127.0.0.1:{port}"
            wait_healthy(base_url, server)
            yield base_url
        finally:
            stop(server)
    finally:
        stop(emulator)


def simulate(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "callbridge", "simulate", *args],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=90,
    )


@pytest.mark.slow
def test_simulate_plays_the_sample_into_callbridge_serve(served_bridge: str) -> None:
    result = simulate(
        "--url",
        served_bridge,
        "--wav",
        str(sample_call_path()),
        "--speed",
        "8",
        TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        CALLBRIDGE_API_TOKENS=API_TOKEN,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    segments = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert all(re.match(SEGMENT_LINE, line) for line in segments), segments
    speakers = [line.split("] ")[1].split(":")[0] for line in segments]
    assert speakers[0] == "agent"
    assert {"caller", "agent"} <= set(speakers)
    assert len(segments) >= 9
    assert any(line.startswith("Summary: ") for line in result.stdout.splitlines())
    assert "overlap" in result.stdout


@pytest.mark.slow
def test_simulate_without_api_token_only_streams(served_bridge: str) -> None:
    result = simulate(
        "--url", served_bridge, "--speed", "0", "--call-sid", "CA" + "1" * 32,
        TWILIO_AUTH_TOKEN=AUTH_TOKEN,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("\n") == 1 and "no API token" in result.stderr
    assert "CA" + "1" * 32 in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong_auth_token", "403"),
        ("wrong_api_token", "401"),
        ("public_url_mismatch", "403"),
        ("not_running", "cannot reach the bridge"),
        ("missing_file", "no such file"),
        ("unreadable_wav", "not a WAV file"),
        ("no_auth_token", "TWILIO_AUTH_TOKEN"),
    ],
)
def test_simulate_bad_input_is_one_line(
    served_bridge: str, tmp_path: Path, case: str, expected: str
) -> None:
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(os.urandom(2000))
    args = ["--url", served_bridge, "--speed", "0"]
    env = {"TWILIO_AUTH_TOKEN": AUTH_TOKEN, "CALLBRIDGE_API_TOKENS": API_TOKEN}
    if case == "wrong_auth_token":
        env["TWILIO_AUTH_TOKEN"] = "not-the-token"
    elif case == "wrong_api_token":
        args += ["--api-token", "not-a-token"]
    elif case == "public_url_mismatch":
        args += ["--public-url", "https://bridge.example.com"]
    elif case == "not_running":
        args = ["--url", f"http://127.0.0.1:{free_port()}"]
    elif case == "missing_file":
        args += ["--wav", str(tmp_path / "nope.wav")]
    elif case == "unreadable_wav":
        args += ["--caller", str(garbage)]
    elif case == "no_auth_token":
        del env["TWILIO_AUTH_TOKEN"]
    result = simulate(*args, **env)
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("callbridge simulate: ")
    assert expected in lines[0]
