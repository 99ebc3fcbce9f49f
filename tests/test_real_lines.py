"""Calls that sound like real phone lines, end to end through the real server.

The audio (:mod:`callbridge.testing.lines`): far-off babble 13 dB under the caller, street
noise under the agent, 12 s of hold music on the agent's track while the caller keeps
talking, DTMF, a knock, coughs, 0.35 s answers, double talk, and a click 80 ms before
hang-up. The Scribe emulator (strict: the live 0.3 s commit rule) answers commits in 0.3 s
and, like a real recogniser, hears words only in speech, through the background.

Checked: every utterance is delivered once, on its speaker's track, in order, and nothing
else (no word from babble, music, tones, coughs); no ``commit_throttled``; one Scribe
session per call; gap-free sequence numbers; and, on a short call played in real time,
end of speech → ``transcript.committed`` webhook within 4 s.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from callbridge.models import Track
from callbridge.testing.lines import ScriptedLine, noisy_call, short_noisy_call
from callbridge.testing.scribe_emulator import ScribeEmulator
from callbridge.testing.webhook_receiver import ReceivedRequest, WebhookReceiver
from tests.bridge_harness import RunningBridge, bridge_settings, free_port, running_bridge

LATENCY_BOUND_S = 4.0
SCRIBE_ANSWER_S = 0.3


@pytest.fixture
async def emulator() -> AsyncIterator[ScribeEmulator]:
    async with ScribeEmulator(
        transcriber="tones", commit_delay_s=SCRIBE_ANSWER_S, partial_interval_ms=0
    ) as emu:
        yield emu


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as running:
        yield running


async def play(bridge: RunningBridge, call: ScriptedLine, speed: float) -> tuple[str, float, Any]:
    """Play the call; returns its SID, the loop time its first frame went out, the result."""
    sim = bridge.simulator()
    await sim.connect()
    await sim.send_start(["inbound", "outbound"])
    started = asyncio.get_running_loop().time()
    await sim.send_frames(call.inbound, call.outbound, speed=speed)
    await sim.send_stop()
    await sim.close()
    return sim.call_sid, started, sim.result()


def committed(receiver: WebhookReceiver, call_sid: str) -> list[ReceivedRequest]:
    return [
        r
        for r in receiver.requests
        if r.event_type == "transcript.committed" and r.data.get("call_sid") == call_sid
    ]


def check_utterances(call: ScriptedLine, segments: Sequence[dict[str, Any]]) -> list[str]:
    """Every way the segments differ from the script: each utterance's words once, on its
    speaker's track, in order (a held-back party may split the on-air one in two at a
    word gap), and no other word at all."""
    problems: list[str] = []
    sequences = [s["sequence"] for s in segments]
    if sequences != list(range(1, len(segments) + 1)):
        problems.append(f"sequences {sequences}")
    if any(not s["text"].strip() for s in segments):
        problems.append("a segment with empty text")
    heard = {
        track: [w for s in segments if s["track"] == track for w in s["text"].split()]
        for track in ("inbound", "outbound")
    }
    for track in ("inbound", "outbound"):
        said = [f"tone{f}" for _, t, freqs in call.utterances if t == track for f in freqs]
        if heard[track] != said:
            problems.append(f"{track}: heard {heard[track]}, said {said}")
    speaker = {"inbound": "caller", "outbound": "agent"}
    for segment in segments:
        if segment["speaker"] != speaker[segment["track"]]:
            problems.append(f"segment {segment['sequence']} has speaker {segment['speaker']}")
    return problems


async def test_a_noisy_call_with_hold_music_delivers_every_utterance_and_nothing_else(
    tmp_path: Path, emulator: ScribeEmulator, receiver: WebhookReceiver
) -> None:
    call = noisy_call()
    settings = bridge_settings(tmp_path, emulator.url, free_port(), webhook_urls=[receiver.url])
    async with running_bridge(settings) as bridge:
        call_sid, _, result = await play(bridge, call, speed=4.0)
        await receiver.wait_for(
            1,
            timeout=20,
            predicate=lambda r: r.event_type == "call.ended" and r.data["call_sid"] == call_sid,
        )
        record = await bridge.store.get_call(call_sid)
        stored = await bridge.store.get_segments(call_sid)
    assert not result.server_closed_early
    segments = [r.data for r in committed(receiver, call_sid)]
    assert check_utterances(call, segments) == []
    assert [s.to_json() | {"committed_at": None} for s in stored] == [
        s | {"committed_at": None} for s in segments
    ]  # the API's transcript is the same, numbers included
    # Word times and speech spans on the stream clock match the script.
    for start, track, freqs in call.utterances:
        words = [
            w
            for s in segments
            if s["track"] == track
            for w in s["words"]
            if w["text"] in {f"tone{f}" for f in freqs}
        ]
        assert len(words) == len(freqs)
        for index, word in enumerate(words):
            truth = start + index * (call.word_ms + call.gap_ms)
            assert abs(word["start_ms"] - truth) <= 150, (track, freqs, word)
    (session,) = emulator.sessions  # one Scribe session, never lost
    assert session.errors_sent == [] and session.throttled_commits == []
    assert record is not None and record.degraded is None and record.summary is not None
    assert record.summary["audio_lost_ms"] == 0
    # Background opened turns that Scribe answered with nothing: counted, not numbered.
    assert record.summary["empty_transcripts"] >= 1
    assert record.summary["segments"] == len(segments)


async def test_end_of_speech_to_transcript_within_4_s_in_real_time(
    tmp_path: Path, emulator: ScribeEmulator, receiver: WebhookReceiver
) -> None:
    # Real time, so that the wall-clock parts (Scribe's 0.3 s answer, the production
    # 1 s commit spacing and 4x catch-up limit) and the stream-clock parts (turn end,
    # hold-back) add up as on a live call.
    call = short_noisy_call()
    settings = bridge_settings(
        tmp_path,
        emulator.url,
        free_port(),
        webhook_urls=[receiver.url],
        turns={"min_commit_interval_ms": 1000, "catchup_speed": 4.0},
    )
    async with running_bridge(settings) as bridge:
        call_sid, started, _ = await play(bridge, call, speed=1.0)
        await receiver.wait_for(
            1,
            timeout=15,
            predicate=lambda r: r.event_type == "call.ended" and r.data["call_sid"] == call_sid,
        )
    requests = committed(receiver, call_sid)
    segments = [r.data for r in requests]
    assert check_utterances(call, segments) == []
    latencies = []
    for start, track, freqs in call.utterances:
        end_s = started + call.speech_end_ms(start, len(freqs)) / 1000
        last_word = f"tone{freqs[-1]}"
        arrival = next(
            r.received_monotonic
            for r in requests
            if r.data["track"] == track and last_word in r.data["text"].split()
        )
        latencies.append(arrival - end_s)
    print(f"[real lines] end of speech → transcript.committed: {[round(x, 2) for x in latencies]}")
    assert max(latencies) <= LATENCY_BOUND_S, latencies
    (session,) = emulator.sessions
    assert session.throttled_commits == [] and session.errors_sent == []


async def test_the_last_click_before_hang_up_never_costs_the_session(
    tmp_path: Path, emulator: ScribeEmulator, receiver: WebhookReceiver
) -> None:
    # A 70 ms click 80 ms before hang-up opens a turn with ~270 ms of audio: committed with
    # padding (no commit_throttled), answered empty, not a segment.
    call = short_noisy_call(seed=3)
    settings = bridge_settings(tmp_path, emulator.url, free_port(), webhook_urls=[receiver.url])
    async with running_bridge(settings) as bridge:
        call_sid, _, _ = await play(bridge, call, speed=0)
        ended = await receiver.wait_for(
            1,
            timeout=15,
            predicate=lambda r: r.event_type == "call.ended" and r.data["call_sid"] == call_sid,
        )
    assert check_utterances(call, [r.data for r in committed(receiver, call_sid)]) == []
    (session,) = emulator.sessions
    assert session.throttled_commits == [] and session.errors_sent == []
    sizes = [b - a for a, b in zip([0, *session.commits], session.commits, strict=False)]
    assert min(sizes) >= 2400
    assert ended[0].data["summary"]["degraded"] is None


def test_tracks_are_what_the_script_says() -> None:
    call = noisy_call()
    assert len(call.inbound) == len(call.outbound) == call.duration_ms * 8
    assert {t for _, t, _ in call.utterances} == {str(Track.INBOUND), str(Track.OUTBOUND)}
