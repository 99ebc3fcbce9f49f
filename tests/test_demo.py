"""``callbridge demo``: the whole product in one command, run as a user would."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from callbridge.config import Settings
from callbridge.demo import demo_settings
from callbridge.simulate import sample_call_path
from callbridge.testing.llm_emulator import LLMEmulator

LIVE_LINE = re.compile(
    r"^callbridge demo: watch it live at (\S+/live) \(paste the API token (\S+)\)$"
)
SEGMENT = re.compile(r"^\[(\d\d):(\d\d\.\d)\] (caller|agent): (.*)$")
EMULATED = re.compile(r"^\[emulated: \d+\.\d s of speech\]$")


def demo_env() -> dict[str, str]:
    """The user's environment without a key or any bridge setting."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CALLBRIDGE_", "TWILIO_", "ELEVENLABS_"))
        and key not in {"DATABASE_URL", "PORT", "HOST"}
    }


def run_demo(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "callbridge", "demo", *args],
        env=demo_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


@pytest.mark.slow
def test_demo_prints_the_sample_call_turn_by_turn_and_a_summary() -> None:
    result = run_demo("--speed", "16")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    first_call, second_call = result.stdout.split("-" * 78 + "\n")
    check_the_noisy_call(second_call.splitlines())
    lines = first_call.splitlines()
    assert "no ELEVENLABS_API_KEY" in lines[0]
    assert "emulator" in lines[0]

    segments = [match.groups() for line in lines if (match := SEGMENT.match(line))]
    assert segments, result.stdout
    assert all(EMULATED.match(text) for *_, text in segments)
    truth = json.loads(sample_call_path().with_name("sample_call.json").read_text())
    turns = sorted(truth["turns"], key=lambda turn: turn["start_ms"])
    starts_ms = [round((int(m) * 60 + float(s)) * 1000) for m, s, _, _ in segments]
    assert starts_ms == sorted(starts_ms)
    # Every line of the script opens a segment of its speaker near its start...
    for turn in turns:
        assert any(
            speaker == turn["speaker"] and abs(start - turn["start_ms"]) <= 500
            for start, (*_, speaker, _) in zip(starts_ms, segments, strict=True)
        ), turn
    # ...and every segment lies in a line of its own speaker: single-speaker segments, also
    # where the caller talks over the agent (held back, then the agent is cut at a pause).
    for start, (*_, speaker, _) in zip(starts_ms, segments, strict=True):
        assert any(
            speaker == turn["speaker"] and turn["start_ms"] - 500 <= start <= turn["end_ms"] + 500
            for turn in turns
        ), (start, speaker)

    summary_at = next(i for i, line in enumerate(lines) if line.startswith("Summary: "))
    assert summary_at > lines.index(next(line for line in lines if SEGMENT.match(line)))
    summary = "\n".join(lines[summary_at:])
    assert "caller  talk" in summary and "agent   talk" in summary
    assert "overlap" in summary and "silence" in summary
    assert "all signatures valid" in result.stdout.splitlines()[-1]

    # the post-call batch pass, emulated and marked as such: the script, speaker by speaker
    assert "batch emulator" in lines[2] and "EMULATED" in lines[2]
    batch_at = next(i for i, line in enumerate(lines) if line.startswith("Batch transcript ("))
    assert batch_at > summary_at and "EMULATED" in lines[batch_at]
    batch = [
        match.groups() for line in lines[batch_at + 1 :] if (match := SEGMENT.match(line.strip()))
    ]
    assert [(speaker, text) for *_, speaker, text in batch] == [
        (turn["speaker"], turn["text"]) for turn in turns
    ]
    batch_starts = [round((int(m) * 60 + float(s)) * 1000) for m, s, _, _ in batch]
    assert all(
        abs(start - turn["start_ms"]) <= 500
        for start, turn in zip(batch_starts, turns, strict=True)
    )
    billed = re.search(r"([\d.]+) s of audio billed", lines[batch_at])
    assert billed is not None and float(billed.group(1)) < 2 * truth["duration_ms"] / 1000

    # the AI summary of the sample call, from the bundled LLM emulator, marked as such; it
    # reads the batch transcript, which the batch pass gives it
    assert "no CALLBRIDGE_SUMMARY_LLM_URL" in lines[1] and "LLM emulator" in lines[1]
    ai_at = next(i for i, line in enumerate(lines) if line.startswith("AI summary by "))
    assert ai_at > batch_at
    assert lines[ai_at].startswith("AI summary by callbridge-emulated-llm (1 request(s), ")
    ai = dict(line.strip().split(": ", 1) for line in lines[ai_at + 1 : ai_at + 4])
    assert ai["Gist"].startswith(f"[emulated] {len(batch)} lines")  # one per batch segment
    assert ai["Reason"] == f"[emulated] caller said: “{turns[1]['text']}”"
    assert ai["Outcome"].startswith(("resolved", "unresolved", "escalated", "follow_up"))
    assert any(line.startswith("  Sentiment: caller ") for line in lines[ai_at:])


@pytest.mark.slow
async def test_demo_uses_the_configured_llm() -> None:
    async with LLMEmulator(api_key="sk-configured", models=("my-local-model",)) as llm:
        env = demo_env() | {
            "CALLBRIDGE_SUMMARY_LLM_URL": llm.url,
            "CALLBRIDGE_SUMMARY_LLM_MODEL": "my-local-model",
            "CALLBRIDGE_SUMMARY_LLM_KEY": "sk-configured",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "callbridge",
            "demo",
            "--call",
            "sample",
            "--speed",
            "0",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 90)
    stdout = out.decode()
    assert process.returncode == 0, stdout + err.decode()
    assert f"the AI summary comes from my-local-model at {llm.url}" in stdout
    assert "AI summary by my-local-model (1 request(s)" in stdout
    [request] = llm.chat_requests
    assert request.json["model"] == "my-local-model"
    assert request.headers["authorization"] == "Bearer sk-configured"


@pytest.mark.slow
async def test_demo_serves_the_live_page_with_the_call_and_lingers() -> None:
    import aiohttp

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "callbridge",
        "demo",
        "--call",
        "sample",
        "--speed",
        "16",
        "--linger",
        "30",
        env=demo_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        page = token = None
        lines: list[str] = []
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            assert line, "".join(lines)
            lines.append(line)
            if found := LIVE_LINE.match(line.strip()):
                page, token = found.groups()
            if "stays up for 30 s" in line:
                break
        assert page is not None and token is not None
        auth = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as http:
            served = await http.get(page)  # after the call: still served
            assert served.status == 200 and served.content_type == "text/html"
            calls = await (await http.get(page.replace("/live", "/v1/calls"), headers=auth)).json()
            assert [c["status"] for c in calls["calls"]] == ["ended"]
        proc.send_signal(signal.SIGINT)  # Ctrl-C ends the wait at once, cleanly
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def check_the_noisy_call(lines: list[str]) -> None:
    """The second call: the sample call on a bad line, and the report of its background."""
    assert "noisy_call.wav" in lines[0]
    truth = json.loads(sample_call_path().with_name("noisy_call.json").read_text())
    hold = truth["hold_music"]
    segments = [match.groups() for line in lines if (match := SEGMENT.match(line))]
    starts_ms = [round((int(m) * 60 + float(s)) * 1000) for m, s, _, _ in segments]
    in_hold = [
        speaker
        for start, (*_, speaker, _) in zip(starts_ms, segments, strict=True)
        if hold["start_ms"] <= start < hold["end_ms"]
    ]
    assert "agent" not in in_hold and "caller" in in_hold  # music: no agent words
    for turn in truth["turns"]:  # every line is still heard, on its speaker
        assert any(
            speaker == turn["speaker"] and abs(start - turn["start_ms"]) <= 500
            for start, (*_, speaker, _) in zip(starts_ms, segments, strict=True)
        ), turn
    report = "\n".join(lines[lines.index("Bad line, checked against noisy_call.json:") :])
    assert ": 0 agent segments in it" in report
    assert "1 caller segment(s), not held back" in report
    assert "commits answered empty, none numbered" in report
    assert f"segments {len(segments)}, sequence 1..{len(segments)} without gaps" in report


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--wav", "/nonexistent/call.wav"], "no such file"),
        (["--wav", str(Path(__file__))], "not a WAV file"),
        (["--speed", "-1"], "--speed"),
        (["--linger", "-1"], "--linger"),
    ],
)
def test_demo_bad_input_is_one_line(args: list[str], expected: str) -> None:
    result = run_demo(*args)
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("callbridge demo: ") and expected in lines[0]


def test_demo_settings_scale_the_wall_clock_limits_with_the_speed(tmp_path: Path) -> None:
    base = Settings()

    def settings(speed: float, emulator: bool = True) -> Settings:
        return demo_settings(
            base,
            port=8123,
            scribe_url="ws://127.0.0.1:1/v1/speech-to-text/realtime" if emulator else None,
            scribe_key="k" if emulator else None,
            webhook_url="http://127.0.0.1:2/hooks",
            webhook_secret="whsec_" + "A" * 32,
            twilio_token="t",
            api_token="a",
            database_path=tmp_path / "d.db",
            speed=speed,
            log_level="warning",
        )

    real_time = settings(1.0)
    assert real_time.turns == base.turns
    assert real_time.server.public_url == "http://127.0.0.1:8123"
    assert real_time.database.url == f"sqlite:///{tmp_path / 'd.db'}"
    fast = settings(4.0)
    assert fast.turns.catchup_speed == base.turns.catchup_speed * 4
    assert fast.turns.min_commit_interval_ms == base.turns.min_commit_interval_ms // 4
    real_service = settings(4.0, emulator=False)
    assert real_service.turns.min_commit_interval_ms == base.turns.min_commit_interval_ms
    assert real_service.scribe == base.scribe


def test_demo_with_an_unreachable_scribe_fails_clearly() -> None:
    env = demo_env() | {
        "ELEVENLABS_API_KEY": "not-a-key",
        "CALLBRIDGE_SCRIBE_URL": "ws://127.0.0.1:9/v1/speech-to-text/realtime",
    }
    result = subprocess.run(
        [sys.executable, "-m", "callbridge", "demo", "--speed", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout.splitlines()[0].startswith("callbridge demo: ELEVENLABS_API_KEY is set")
    assert "callbridge demo: the call was not fully transcribed" in result.stderr
