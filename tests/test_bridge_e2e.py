"""The real bridge against the Scribe emulator and the Twilio simulator, end to end.

Speech is tone bursts (one frequency per "word") so that the emulator's transcript says
exactly which audio reached it: every word can be traced back to one speaker.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from callbridge.audio.ulaw import FRAME_BYTES, SILENCE_BYTE
from callbridge.models import CommittedSegment, Track
from callbridge.testing.scribe_emulator import ScribeEmulator
from callbridge.testing.speech import build_track, pcm16_to_ulaw, synth_utterance
from callbridge.testing.twilio_simulator import FrameDrop, RawMessage, SimulatorHandshakeError
from tests.bridge_harness import RunningBridge, bridge_settings, free_port, running_bridge

IN, OUT = Track.INBOUND, Track.OUTBOUND
WORD_MS, GAP_MS = 220, 90


def words_ms(n: int) -> int:
    return n * WORD_MS + (n - 1) * GAP_MS


def track(duration_ms: int, utterances: Sequence[tuple[int, Sequence[int]]], seed: int) -> bytes:
    placements = [(start, synth_utterance(freqs)) for start, freqs in utterances]
    return pcm16_to_ulaw(build_track(duration_ms, placements, noise_dbfs=-60.0, seed=seed))


def tokens(segment: CommittedSegment) -> list[str]:
    return segment.text.split()


@pytest.fixture
async def emulator() -> AsyncIterator[ScribeEmulator]:
    async with ScribeEmulator(api_key="test-key", transcriber="tones") as emu:
        yield emu


@pytest.fixture
async def bridge(tmp_path: Path, emulator: ScribeEmulator) -> AsyncIterator[RunningBridge]:
    async with running_bridge(bridge_settings(tmp_path, emulator.url, free_port())) as running:
        yield running


async def wait_ended(bridge: RunningBridge, call_sid: str, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        record = await bridge.store.get_call(call_sid)
        if record is not None and str(record.status) == "ended":
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"call {call_sid} did not end")


async def test_alternating_turns_one_segment_per_turn(bridge: RunningBridge) -> None:
    caller_words = [[400, 450, 500], [550, 600], [650, 700, 750, 800]]
    agent_words = [[1200, 1250, 1300, 1350], [1400, 1450]]
    script = [  # (start_ms, track, words): alternating turns with 0.8–1 s pauses
        (500, IN, caller_words[0]),
        (2300, OUT, agent_words[0]),
        (4500, IN, caller_words[1]),
        (6000, OUT, agent_words[1]),
        (7600, IN, caller_words[2]),
    ]
    duration = 11_000
    caller = track(duration, [(s, w) for s, t, w in script if t is IN], 1)
    agent = track(duration, [(s, w) for s, t, w in script if t is OUT], 2)
    sim = bridge.simulator()
    await sim.run(inbound=caller, outbound=agent, speed=0)
    await wait_ended(bridge, sim.call_sid)
    segments = [s for s in await bridge.store.get_segments(sim.call_sid) if s.text]
    assert [s.track for s in segments] == [t for _, t, _ in script]
    assert [s.speaker for s in segments] == ["caller", "agent", "caller", "agent", "caller"]
    assert [s.sequence for s in segments] == [1, 2, 3, 4, 5]
    for segment, (start, _, freqs) in zip(segments, script, strict=True):
        assert tokens(segment) == [f"tone{f}" for f in freqs]
        assert abs(segment.start_ms - start) <= 300
        assert abs(segment.end_ms - (start + words_ms(len(freqs)))) <= 300
        for word, freq_index in zip(segment.words, range(len(freqs)), strict=True):
            truth = start + freq_index * (WORD_MS + GAP_MS)
            assert abs(word.start_ms - truth) <= 300


async def test_double_talk_never_mixes_speakers_and_loses_nothing(bridge: RunningBridge) -> None:
    caller_freqs = list(range(400, 1000, 50))  # 12 words, ~3.6 s
    agent_freqs = [1500, 1600, 1700]  # talks over the caller in the middle
    duration = 9000
    caller = track(duration, [(500, caller_freqs)], 3)
    agent = track(duration, [(1700, agent_freqs)], 4)
    sim = bridge.simulator()
    await sim.run(inbound=caller, outbound=agent, speed=0)
    await wait_ended(bridge, sim.call_sid)
    segments = [s for s in await bridge.store.get_segments(sim.call_sid) if s.text]
    heard = {IN: [], OUT: []}  # type: dict[Track, list[str]]
    for segment in segments:
        own = {f"tone{f}" for f in (caller_freqs if segment.track is IN else agent_freqs)}
        assert set(tokens(segment)) <= own, f"segment {segment.sequence} mixes speakers"
        heard[segment.track] += tokens(segment)
    assert heard[IN] == [f"tone{f}" for f in caller_freqs]
    assert heard[OUT] == [f"tone{f}" for f in agent_freqs]
    # The held-back agent goes on air once they waited hold_cut_ms: the caller is cut at a
    # word gap and carries on after the agent.
    assert [s.track for s in segments] == [IN, OUT, IN]


async def test_last_words_survive_a_hangup_200_ms_later(bridge: RunningBridge) -> None:
    freqs = [500, 600, 700]
    end_of_speech = 300 + words_ms(3)
    caller = track(end_of_speech + 200, [(300, freqs)], 5)
    for end in ("close", "abort"):
        sim = bridge.simulator()
        await sim.run(inbound=caller, speed=0, end=end)
        await wait_ended(bridge, sim.call_sid)
        segments = [s for s in await bridge.store.get_segments(sim.call_sid) if s.text]
        assert [tokens(s) for s in segments] == [[f"tone{f}" for f in freqs]], end
        record = await bridge.store.get_call(sim.call_sid)
        assert record is not None and record.end_reason == "hangup"


async def test_bytes_reaching_scribe_are_twilios_plus_silence_for_gaps(
    bridge: RunningBridge, emulator: ScribeEmulator
) -> None:
    freqs = [400, 500, 600, 700, 800, 900, 1000, 1100]
    caller = track(5000, [(200, freqs)], 6)
    sim = bridge.simulator()
    # 400 ms lost in the middle of speech: timestamps jump there.
    await sim.run(inbound=caller, speed=0, drops=[FrameDrop(IN, 1000, 1400)])
    await wait_ended(bridge, sim.call_sid)
    (session,) = emulator.sessions
    assert all(len(c.audio) % FRAME_BYTES == 0 for c in session.chunks)
    assert all(len(c.audio) <= 5 * FRAME_BYTES for c in session.chunks)
    received = session.audio
    expected = bytearray(caller[: len(caller) // FRAME_BYTES * FRAME_BYTES])
    expected[1000 * 8 : 1400 * 8] = bytes([SILENCE_BYTE]) * (400 * 8)
    # The received stream is idle silence, then the segment: a contiguous slice of what
    # Twilio sent, with silence exactly where the timestamps showed the gap.
    start = next(i for i, b in enumerate(received) if b != SILENCE_BYTE)
    start -= start % FRAME_BYTES
    body = received[start:].rstrip(bytes([SILENCE_BYTE]))
    offset = bytes(expected).find(body)
    assert offset >= 0 and offset % FRAME_BYTES == 0
    assert set(received[:start]) <= {SILENCE_BYTE}
    segments = [s for s in await bridge.store.get_segments(sim.call_sid) if s.text]
    assert len(segments) == 1
    # The tones whose audio was dropped are missing; the rest arrived in order.
    heard = tokens(segments[0])
    assert heard == [t for t in (f"tone{f}" for f in freqs) if t in heard]
    assert len(heard) >= 6


async def test_inbound_only_stream_gives_utterances(bridge: RunningBridge) -> None:
    caller = track(6000, [(300, [500, 600]), (3000, [700, 800, 900])], 7)
    sim = bridge.simulator()
    await sim.run(inbound=caller, speed=0)
    await wait_ended(bridge, sim.call_sid)
    segments = [s for s in await bridge.store.get_segments(sim.call_sid) if s.text]
    assert [tokens(s) for s in segments] == [
        ["tone500", "tone600"],
        ["tone700", "tone800", "tone900"],
    ]
    assert {s.speaker for s in segments} == {"caller"}


BAD_INPUTS = {
    "non_json": RawMessage(600, "this is not json"),
    "unknown_event": RawMessage(600, json.dumps({"event": "surprise", "streamSid": "MZ1"})),
    "bad_base64": RawMessage(
        600,
        json.dumps(
            {
                "event": "media",
                "sequenceNumber": "99",
                "streamSid": "MZ1",
                "media": {"track": "inbound", "chunk": "1", "timestamp": "600", "payload": "%%%"},
            }
        ),
    ),
    "binary": RawMessage(600, b"\x00\x01\x02"),
    "huge": RawMessage(600, "x" * (1024 * 1024)),
}


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
async def test_bad_input_closes_that_socket_only(bridge: RunningBridge, kind: str) -> None:
    good_freqs = [500, 600, 700]
    good_audio = track(4000, [(300, good_freqs)], 8)
    bad_audio = track(4000, [(300, [900, 1000])], 9)
    good = bridge.simulator()
    bad = bridge.simulator()
    good_run = asyncio.create_task(good.run(inbound=good_audio, speed=2.0))
    bad_result = await bad.run(inbound=bad_audio, speed=2.0, raw_messages=[BAD_INPUTS[kind]])
    await good_run
    await wait_ended(bridge, good.call_sid)
    good_segments = [s for s in await bridge.store.get_segments(good.call_sid) if s.text]
    assert [tokens(s) for s in good_segments] == [[f"tone{f}" for f in good_freqs]]
    if kind == "unknown_event":
        assert bad_result.close_code in (None, 1000)
    else:
        assert bad_result.close_code in (1002, 1003, 1007, 1009), bad_result
        assert bad_result.server_closed_early
    # Speech that arrived before the bad message is kept: the bad call still ends cleanly.
    await wait_ended(bridge, bad.call_sid)
    async with aiohttp.ClientSession() as http, http.get(f"{bridge.base_url}/healthz") as response:
        assert response.status == 200


async def test_media_before_start_and_wrong_format_are_refused(bridge: RunningBridge) -> None:
    sim = bridge.simulator()
    await sim.connect()
    await sim.send_connected()
    await sim.send_media(IN, bytes([SILENCE_BYTE]) * FRAME_BYTES, 0)
    assert await sim.wait_closed(5.0)
    await sim.close()
    assert sim.close_code == 1002 and "before start" in (sim.close_reason or "")

    sim = bridge.simulator()
    await sim.connect()
    start = {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": sim.stream_sid,
        "start": {
            "accountSid": sim.account_sid,
            "streamSid": sim.stream_sid,
            "callSid": sim.call_sid,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/l16", "sampleRate": 16000, "channels": 1},
            "customParameters": {},
        },
    }
    await sim.send_raw(json.dumps(start))
    assert await sim.wait_closed(5.0)
    await sim.close()
    assert sim.close_code == 1003
    assert "audio/l16" in (sim.close_reason or "") or "format" in (sim.close_reason or "")


@pytest.mark.parametrize("signature", ["missing", "wrong"])
async def test_unsigned_media_socket_is_refused_before_upgrade(
    bridge: RunningBridge, signature: str
) -> None:
    sim = bridge.simulator(signature=signature)
    with pytest.raises(SimulatorHandshakeError) as refused:
        await sim.connect()
    assert refused.value.status == 403
    await sim.close()
    assert bridge.live_calls == 0


async def test_pcm_8000_option_converts_the_audio(tmp_path: Path, emulator: ScribeEmulator) -> None:
    settings = bridge_settings(
        tmp_path, emulator.url, free_port(), scribe={"audio_format": "pcm_8000"}
    )
    async with running_bridge(settings) as bridge:
        caller = track(4000, [(300, [500, 700])], 10)
        sim = bridge.simulator()
        await sim.run(inbound=caller, speed=0)
        await wait_ended(bridge, sim.call_sid)
        segments = [s for s in await bridge.store.get_segments(sim.call_sid) if s.text]
        assert [tokens(s) for s in segments] == [["tone500", "tone700"]]
    assert emulator.sessions[0].query["audio_format"] == ["pcm_8000"]


async def test_odd_and_empty_payloads_are_reframed_and_never_end_transcription(
    bridge: RunningBridge, emulator: ScribeEmulator
) -> None:
    # Payloads "can be any length" (163 bytes has been seen); empty ones carry nothing.
    caller_words = [[500, 600, 700], [800, 900]]
    caller = track(6000, [(300, caller_words[0]), (3000, caller_words[1])], 11)
    sizes = [160, 163, 157, 0, 160, 321, 1, 159, 160, 0, 80, 80]  # repeated over the call
    sim = bridge.simulator()
    await sim.connect()
    await sim.send_start(["inbound"])
    offset = index = 0
    while offset < len(caller):
        size = sizes[index % len(sizes)]
        index += 1
        assert await sim.send_media(IN, caller[offset : offset + size], offset // 8)
        offset += size
    await sim.send_stop()
    await sim.close()
    await wait_ended(bridge, sim.call_sid)
    record = await bridge.store.get_call(sim.call_sid)
    assert record is not None and record.degraded is None and record.end_reason == "stop"
    segments = await bridge.store.get_segments(sim.call_sid)
    assert [tokens(s) for s in segments] == [[f"tone{f}" for f in w] for w in caller_words]
    # What reached Scribe is the caller's audio, every byte, in whole 20 ms frames.
    (session,) = emulator.sessions
    assert all(len(c.audio) % FRAME_BYTES == 0 for c in session.chunks)
    # Each commit window, without the idle silence around it, is a slice of the caller's.
    bounds = [0, *session.commits]
    windows = [session.audio[a:b] for a, b in itertools.pairwise(bounds)]
    pieces = [p.strip(b"\xff") for w in windows for p in re.split(b"\xff{160,}", w)]
    pieces = [p for p in pieces if p]
    assert len(pieces) == 2 and all(piece in caller for piece in pieces)


def test_emulated_tone_words_are_distinct() -> None:
    # Guard for the tests above: adjacent test frequencies are resolvable.
    assert len({round(f, -1) for f in np.arange(400, 1000, 50)}) == 12


async def test_finished_deliveries_are_purged_after_the_keep_period(
    tmp_path: Path, emulator: ScribeEmulator
) -> None:
    import dataclasses
    import sqlite3

    from callbridge.testing.webhook_receiver import WebhookReceiver

    async with WebhookReceiver() as receiver:
        settings = bridge_settings(tmp_path, emulator.url, free_port(), webhook_urls=[receiver.url])
        settings = settings.replace(
            webhook=dataclasses.replace(settings.webhook, keep_finished_s=1.0)
        )
        async with running_bridge(settings) as bridge:
            sim = bridge.simulator()
            await sim.run(inbound=track(3000, [(300, [500, 600])], 11), speed=0)
            await wait_ended(bridge, sim.call_sid)
            await receiver.wait_for(3, timeout=10)  # started, one segment, ended

            def counts() -> tuple[int, int]:
                with sqlite3.connect(tmp_path / "bridge.db") as conn:
                    deliveries = conn.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0]
                    events = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
                return deliveries, events

            assert counts() == (3, 3)  # kept while younger than keep_finished_s
            for _ in range(60):
                if counts() == (0, 3):
                    break
                await asyncio.sleep(0.1)
            assert counts() == (0, 3)
            # The call, its transcript and its event log stay; only the delivery
            # bookkeeping goes.
            assert len(await bridge.store.get_segments(sim.call_sid)) == 1
