"""Scribe faults, end to end: the real bridge, the Scribe emulator and the Twilio simulator.

Every conversation is tone-burst "words", each frequency used once per call, so the
emulator's transcript (``tone500 tone550 …``) tells exactly which audio reached it, and a
duplicated or missing word shows. For each fault the measure is *utterances delivered /
utterances spoken*: an utterance counts as delivered when one committed segment holds
exactly its words, on its speaker's track, in conversation order, with its timestamps.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog

from callbridge.audio.ulaw import FRAME_BYTES
from callbridge.config import Settings
from callbridge.models import CommittedSegment, Track, Word
from callbridge.testing.scribe_emulator import ScribeEmulator
from callbridge.testing.speech import build_track, pcm16_to_ulaw, synth_utterance
from tests.bridge_harness import RunningBridge, bridge_settings, free_port, running_bridge

IN, OUT = Track.INBOUND, Track.OUTBOUND
SPEAKER = {IN: "caller", OUT: "agent"}
WORD_MS, GAP_MS = 220, 90
TOLERANCE_MS = 300

Utterance = tuple[int, Track, list[int]]  # (start_ms, track, tone frequencies)

# Six alternating turns, ~0.9 s apart, every frequency used once.
CONVERSATION: list[Utterance] = [
    (400, IN, [400, 450, 500]),
    (2200, OUT, [550, 600]),
    (3600, IN, [650, 700, 750]),
    (5400, OUT, [800, 850, 900]),
    (7200, IN, [950, 1000]),
    (8600, OUT, [1050, 1100, 1150]),
]
CONVERSATION_MS = 10_500


def words_ms(n: int) -> int:
    return n * WORD_MS + (n - 1) * GAP_MS


def render(
    script: Sequence[Utterance], duration_ms: int, seed: int, noise_dbfs: float | None = -60.0
) -> tuple[bytes, bytes]:
    """The inbound and outbound μ-law tracks of a script."""

    def one(track: Track, track_seed: int) -> bytes:
        placements = [(s, synth_utterance(f)) for s, t, f in script if t is track]
        pcm = build_track(duration_ms, placements, noise_dbfs=noise_dbfs, seed=track_seed)
        return pcm16_to_ulaw(pcm)

    return one(IN, seed), one(OUT, seed + 1)


@dataclass
class Delivery:
    delivered: int
    spoken: int
    problems: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> str:
        return f"{self.delivered}/{self.spoken}"


def check_delivery(segments: Sequence[CommittedSegment], script: Sequence[Utterance]) -> Delivery:
    """Utterances delivered / spoken, and every way the segments differ from the script."""
    spoken = [s for s in segments if s.text]
    problems: list[str] = []
    words = [w for s in spoken for w in s.text.split()]
    duplicated = sorted({w for w in words if words.count(w) > 1})
    if duplicated:
        problems.append(f"duplicated words {duplicated}")
    if [s.sequence for s in segments] != list(range(1, len(segments) + 1)):
        problems.append("sequence numbers are not 1..n")
    delivered = 0
    cursor = 0
    for start, track, freqs in script:
        expected = [f"tone{f}" for f in freqs]
        match = next(
            (i for i in range(cursor, len(spoken)) if spoken[i].text.split() == expected), None
        )
        if match is None:
            problems.append(f"utterance at {start} ms ({track}) missing")
            continue
        segment = spoken[match]
        if match != cursor:
            problems.append(f"segments before utterance at {start} ms: {spoken[cursor:match]}")
        cursor = match + 1
        if segment.track is not track or segment.speaker != SPEAKER[track]:
            problems.append(f"utterance at {start} ms attributed to {segment.speaker}")
            continue
        if abs(segment.start_ms - start) > TOLERANCE_MS:
            problems.append(f"utterance at {start} ms starts at {segment.start_ms}")
            continue
        end = start + words_ms(len(freqs))
        if abs(segment.end_ms - end) > TOLERANCE_MS:
            problems.append(f"utterance at {start} ms ends at {segment.end_ms}, not {end}")
            continue
        if not word_times_ok(segment.words, start, len(freqs)):
            problems.append(f"utterance at {start} ms has word times {segment.words}")
            continue
        delivered += 1
    if cursor != len(spoken):
        problems.append(f"unexpected segments {spoken[cursor:]}")
    return Delivery(delivered, len(script), problems)


def word_times_ok(words: Sequence[Word], start_ms: int, count: int) -> bool:
    if len(words) != count:
        return False
    for index, word in enumerate(words):
        truth = start_ms + index * (WORD_MS + GAP_MS)
        if abs(word.start_ms - truth) > TOLERANCE_MS:
            return False
    return True


def record_figures(name: str, delivery: Delivery, emulator: ScribeEmulator, **extra: Any) -> None:
    text = (
        f"delivered {delivery.ratio}, connection attempts {emulator.connection_attempts}, "
        f"sessions {len(emulator.sessions)}"
    )
    for key, value in extra.items():
        text += f", {key} {value}"
    print(f"[faults] {name}: {text}")


async def wait_ended(bridge: RunningBridge, call_sid: str, timeout_s: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        record = await bridge.store.get_call(call_sid)
        if record is not None and str(record.status) == "ended":
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"call {call_sid} did not end")


@pytest.fixture
async def emulator() -> AsyncIterator[ScribeEmulator]:
    # Partials off: they are noise for these tests and cost emulator time.
    async with ScribeEmulator(
        api_key="test-key", transcriber="tones", partial_interval_ms=0
    ) as emu:
        yield emu


@asynccontextmanager
async def bridge_for(
    tmp_path: Path, emulator: ScribeEmulator, **overrides: Any
) -> AsyncIterator[RunningBridge]:
    settings: Settings = bridge_settings(tmp_path, emulator.url, free_port(), **overrides)
    async with running_bridge(settings) as running:
        yield running


async def run_call(
    bridge: RunningBridge,
    script: Sequence[Utterance] = CONVERSATION,
    duration_ms: int = CONVERSATION_MS,
    *,
    speed: float = 0,
    seed: int = 11,
) -> tuple[str, Delivery]:
    inbound, outbound = render(script, duration_ms, seed)
    sim = bridge.simulator()
    result = await sim.run(inbound=inbound, outbound=outbound, speed=speed)
    assert not result.server_closed_early
    await wait_ended(bridge, sim.call_sid)
    segments = await bridge.store.get_segments(sim.call_sid)
    return sim.call_sid, check_delivery(segments, script)


# --------------------------------------------------------------------- retryable faults


async def test_two_abrupt_closes_mid_utterance_lose_and_duplicate_nothing(
    tmp_path: Path, emulator: ScribeEmulator
) -> None:
    # Session 1 drops TCP 2.6 s into the call (inside the second utterance); session 2,
    # replaying from the second utterance, drops again ~2 s later, mid-replay.
    emulator.fail_after_audio(2600, error_type=None, close_code=None)
    emulator.fail_after_audio(2000, error_type=None, close_code=None)
    async with bridge_for(tmp_path, emulator) as bridge:
        sid, delivery = await run_call(bridge, speed=4.0)
        record = await bridge.store.get_call(sid)
    record_figures("abrupt close x2", delivery, emulator)
    assert delivery.problems == [] and delivery.delivered == delivery.spoken
    assert len(emulator.sessions) == 3
    assert record is not None and record.degraded is None and record.end_reason == "stop"
    # Session 1 answered the first turn only and died inside the second, which session 2
    # replayed, primed with the first turn's text.
    assert emulator.sessions[0].committed == ["tone400 tone450 tone500"]
    assert emulator.sessions[1].chunks[0].previous_text == "tone400 tone450 tone500"
    # The replay is primed with the last delivered text, on the first chunk only.
    for session in emulator.sessions[1:]:
        first, *rest = session.chunks
        assert first.previous_text is not None and 0 < len(first.previous_text) <= 50
        assert all(chunk.previous_text is None for chunk in rest)


RETRYABLE_TYPES = [
    "rate_limited",
    "queue_overflow",
    "resource_exhausted",
    "transcriber_error",
    "error",
    "session_time_limit_exceeded",
    "insufficient_audio_activity",
    "commit_throttled",
]


@pytest.mark.parametrize("error_type", RETRYABLE_TYPES)
async def test_retryable_error_reconnects_and_replays(
    tmp_path: Path, emulator: ScribeEmulator, error_type: str
) -> None:
    emulator.fail_after_audio(3000, error_type=error_type, close_code=1011)
    async with bridge_for(tmp_path, emulator) as bridge:
        sid, delivery = await run_call(bridge)
        record = await bridge.store.get_call(sid)
    record_figures(f"retryable {error_type}", delivery, emulator)
    assert delivery.problems == [] and delivery.delivered == delivery.spoken
    assert [e["message_type"] for e in emulator.sessions[0].errors_sent] == [error_type]
    assert len(emulator.sessions) == 2 and emulator.connection_attempts == 2
    assert record is not None and record.degraded is None


async def test_commit_throttled_is_a_lost_session_replayed_and_logged_as_a_bug(
    tmp_path: Path, emulator: ScribeEmulator
) -> None:
    # The live service closes the session after commit_throttled (close 1000). The bridge
    # never sends a short commit, so this can only be a bug or a new rule: it is logged at
    # error level, and the session is recovered like any lost one, at the same commit pace.
    emulator.fail_after_audio(3000, error_type="commit_throttled", close_code=1000)
    with structlog.testing.capture_logs() as logs:
        async with bridge_for(tmp_path, emulator) as bridge:
            sid, delivery = await run_call(bridge)
            record = await bridge.store.get_call(sid)
    record_figures("commit_throttled injected", delivery, emulator)
    assert delivery.problems == [] and delivery.delivered == delivery.spoken
    assert len(emulator.sessions) == 2
    assert record is not None and record.degraded is None
    (bug,) = [e for e in logs if e["event"] == "scribe.commit_throttled"]
    assert bug["log_level"] == "error" and "0.3s" not in bug["detail"]


def commit_sizes_ms(emulator: ScribeEmulator) -> list[float]:
    """Audio per client commit, every session: what the live 0.3 s rule is checked on."""
    sizes = []
    for session in emulator.sessions:
        previous = 0
        for offset in sorted(session.commits + session.auto_commits + session.throttled_commits):
            if offset in session.commits or offset in session.throttled_commits:
                sizes.append((offset - previous) / 8)
            previous = offset
    return sizes


async def test_short_windows_are_padded_to_the_commit_floor_on_every_path(
    tmp_path: Path, emulator: ScribeEmulator
) -> None:
    """Short windows on every path that makes them: a 70 ms click just before hang-up (a
    ~270 ms segment), a one-word answer, and the same windows replayed after a lost session
    (a replay drops the idle silence the first connection had). None may reach the strict
    emulator below 0.3 s; the padding must not move word times."""
    script: list[Utterance] = [
        (300, IN, [400, 450]),
        (1400, OUT, [900]),  # a 0.22 s answer
        (2300, IN, [500, 550]),
    ]
    click = (3600, synth_utterance([700], word_ms=70))
    duration = 3700  # hang up 30 ms after the click
    for fault in (False, True):
        if fault:  # lose the session inside the answer's window: it is replayed
            emulator.fail_after_audio(1600, error_type=None, close_code=None)
        inbound = pcm16_to_ulaw(
            build_track(
                duration,
                [(s, synth_utterance(f)) for s, t, f in script if t is IN] + [click],
                seed=41,
            )
        )
        outbound = pcm16_to_ulaw(
            build_track(duration, [(s, synth_utterance(f)) for s, t, f in script if t is OUT])
        )
        first_session = len(emulator.sessions)
        (tmp_path / str(fault)).mkdir()
        async with bridge_for(tmp_path / str(fault), emulator) as bridge:
            sim = bridge.simulator()
            await sim.run(inbound=inbound, outbound=outbound, speed=0, end="close")
            await wait_ended(bridge, sim.call_sid)
            segments = await bridge.store.get_segments(sim.call_sid)
            record = await bridge.store.get_call(sim.call_sid)
        sessions = emulator.sessions[first_session:]
        assert all(not s.throttled_commits and not s.errors_sent for s in sessions)
        sizes = commit_sizes_ms(emulator)
        assert sizes and min(sizes) >= 300, sizes
        assert len(sessions) == (2 if fault else 1)
        assert record is not None and record.degraded is None
        delivery = check_delivery([s for s in segments if s.text != "tone700"], script)
        assert delivery.problems == [] and delivery.delivered == 3, delivery.problems
        assert [s.text for s in segments][-1] == "tone700"  # the click's "word" is kept


async def test_session_time_limit_rolls_over_at_turn_boundaries(
    tmp_path: Path, emulator: ScribeEmulator
) -> None:
    emulator.session_time_limit_s = 3.0
    async with bridge_for(tmp_path, emulator) as bridge:
        sid, delivery = await run_call(bridge, speed=4.0)
        record = await bridge.store.get_call(sid)
    limits = sum(
        1
        for s in emulator.sessions
        for e in s.errors_sent
        if e["message_type"] == "session_time_limit_exceeded"
    )
    record_figures("session time limit 3 s", delivery, emulator, rollovers=limits)
    assert delivery.problems == [] and delivery.delivered == delivery.spoken
    assert limits >= 2
    assert record is not None and record.degraded is None


async def test_handshake_refusals_at_call_start_buffer_then_deliver(
    tmp_path: Path, emulator: ScribeEmulator
) -> None:
    emulator.refuse_connections(3, 503)
    async with bridge_for(tmp_path, emulator) as bridge:
        sid, delivery = await run_call(bridge, speed=4.0)
        record = await bridge.store.get_call(sid)
    record_figures("503 x3 at start", delivery, emulator)
    assert delivery.problems == [] and delivery.delivered == delivery.spoken
    assert emulator.connection_attempts == 4 and len(emulator.sessions) == 1
    assert record is not None and record.degraded is None
    assert record.summary is not None and record.summary["audio_lost_ms"] == 0


async def test_slow_committed_transcripts_arrive_in_order(
    tmp_path: Path, emulator: ScribeEmulator
) -> None:
    emulator.commit_delay_s = 0.8
    async with bridge_for(tmp_path, emulator) as bridge:
        sid, delivery = await run_call(bridge, speed=4.0)
        record = await bridge.store.get_call(sid)
    record_figures("commit delay 0.8 s", delivery, emulator)
    assert delivery.problems == [] and delivery.delivered == delivery.spoken
    assert len(emulator.sessions) == 1
    assert record is not None and record.degraded is None


# ----------------------------------------------------------------- non-retryable faults


@pytest.mark.parametrize("kind", ["auth_error", "invalid_request", "input_error"])
async def test_non_retryable_error_degrades_the_call_without_a_retry_storm(
    tmp_path: Path, emulator: ScribeEmulator, kind: str
) -> None:
    scribe: dict[str, Any] = {}
    if kind == "auth_error":
        scribe["api_key"] = "wrong-key"
    elif kind == "invalid_request":
        scribe["model_id"] = "scribe_v0_nonexistent"
    else:
        emulator.fail_after_audio(2600, error_type="input_error", close_code=1008)
    inbound, outbound = render(CONVERSATION, CONVERSATION_MS, 12)
    with structlog.testing.capture_logs() as logs:
        async with bridge_for(tmp_path, emulator, scribe=scribe) as bridge:
            sim = bridge.simulator()
            result = await sim.run(
                inbound=inbound, outbound=outbound, speed=4.0, wait_for_server_close_s=10.0
            )
            await wait_ended(bridge, sim.call_sid)
            record = await bridge.store.get_call(sim.call_sid)
            segments = await bridge.store.get_segments(sim.call_sid)
    delivery = check_delivery(segments, CONVERSATION)
    record_figures(f"fatal {kind}", delivery, emulator, degraded=record and record.degraded)
    assert record is not None and record.degraded is not None and kind in record.degraded
    assert record.end_reason == "error"
    assert emulator.connection_attempts == 1
    # Untranscribed speech is counted as lost, never hidden; every turn is still recorded.
    assert record.summary is not None
    unheard = [u for u in CONVERSATION if u[0] >= (2600 if kind == "input_error" else 0)]
    assert record.summary["audio_lost_ms"] >= sum(words_ms(len(w)) for _, _, w in unheard)
    # Every turn is accounted for: transcribed (a segment) or counted as untranscribed.
    assert len(segments) + record.summary["untranscribed_turns"] >= len(CONVERSATION)
    assert record.summary["untranscribed_turns"] >= 1
    failures = [e for e in logs if e["event"] == "scribe.failed"]
    assert len(failures) == 1 and failures[0]["kind"] == kind
    # The Twilio socket took every frame and was closed by the bridge, normally, at the end.
    frames = -(-len(inbound) // FRAME_BYTES)
    assert result.frames_sent == {IN: frames, OUT: frames}
    assert result.close_code == 1000 and result.close_reason == "stream ended"
    # Only transcribed turns are segments, numbered without gaps.
    assert all(s.text for s in segments)
    assert [s.sequence for s in segments] == list(range(1, len(segments) + 1))
    if kind == "input_error":
        assert delivery.delivered >= 1  # what was answered before the error is kept


# ------------------------------------------------------------------- outage and buffer


async def test_outage_beyond_the_buffer_drops_oldest_counts_and_marks(
    tmp_path: Path, emulator: ScribeEmulator
) -> None:
    async with bridge_for(tmp_path, emulator, turns={"backlog_limit_s": 1}) as bridge:
        # Healthy first: a 1 s buffer with segments longer than 1 s loses nothing while
        # Scribe answers (sent audio is only at risk, not lost).
        sid, healthy = await run_call(bridge, speed=4.0)
        record = await bridge.store.get_call(sid)
        assert healthy.problems == [] and record is not None and record.degraded is None
        assert record.summary is not None and record.summary["audio_lost_ms"] == 0
        # Then Scribe is unreachable for ~1-2 s while the whole call arrives at once.
        emulator.refuse_connections(4, 503)
        sid, delivery = await run_call(bridge, speed=0)
        record = await bridge.store.get_call(sid)
        segments = await bridge.store.get_segments(sid)
    assert record is not None and record.summary is not None
    lost = record.summary["audio_lost_ms"]
    record_figures("outage beyond 1 s buffer", delivery, emulator, audio_lost_ms=lost)
    assert lost > 0
    assert record.degraded is not None and "dropped" in record.degraded
    assert record.end_reason == "error"
    # The whole call arrived before Scribe came back: only the newest second survived,
    # transcribed once, in order, on the right track.
    heard = [w for s in segments for w in s.text.split()]
    said = [f"tone{f}" for _, _, freqs in CONVERSATION for f in freqs]
    assert heard and heard == said[-len(heard) :]
    assert all(s.track is OUT for s in segments if s.text)  # the last turn is the agent's
    assert [s.sequence for s in segments] == list(range(1, len(segments) + 1))


# ------------------------------------------------------------------------ isolation


async def test_a_failing_call_never_slows_a_healthy_one(
    tmp_path: Path, emulator: ScribeEmulator
) -> None:
    async with bridge_for(tmp_path, emulator) as bridge:
        loop = asyncio.get_running_loop()
        healthy_audio = render(CONVERSATION, CONVERSATION_MS, 21)
        faulty_audio = render(CONVERSATION, CONVERSATION_MS, 23)
        healthy = bridge.simulator()
        faulty = bridge.simulator()

        async def healthy_call() -> float:
            started = loop.time()
            await healthy.run(inbound=healthy_audio[0], outbound=healthy_audio[1], speed=3.0)
            await wait_ended(bridge, healthy.call_sid)
            return loop.time() - started - CONVERSATION_MS / 3.0 / 1000.0  # beyond the audio

        healthy_task = asyncio.create_task(healthy_call())
        for _ in range(500):  # the healthy call owns the first session
            if emulator.sessions:
                break
            await asyncio.sleep(0.01)
        assert len(emulator.sessions) == 1
        # Every later session fails: the faulty call keeps dropping, reconnecting, and in
        # between has its handshakes refused.
        emulator.fail_after_audio(700, error_type=None, close_code=None, sessions=3)
        emulator.fail_after_audio(700, error_type="resource_exhausted", sessions=2)
        emulator.refuse_connections(2, 503)
        await faulty.run(inbound=faulty_audio[0], outbound=faulty_audio[1], speed=3.0)
        healthy_end_s = await healthy_task
        await wait_ended(bridge, faulty.call_sid, timeout_s=30.0)
        healthy_segments = await bridge.store.get_segments(healthy.call_sid)
        healthy_record = await bridge.store.get_call(healthy.call_sid)
    delivery = check_delivery(healthy_segments, CONVERSATION)
    record_figures(
        "isolation (healthy call)", delivery, emulator, ended_after_audio_s=f"{healthy_end_s:.2f}"
    )
    assert delivery.problems == [] and delivery.delivered == delivery.spoken
    assert healthy_record is not None and healthy_record.degraded is None
    assert healthy_end_s < 1.0  # stop → ended, as for a call alone
    assert len(emulator.sessions) >= 4  # the faulty call really did fail over and over


# ------------------------------------------------------------------------- keepalive


async def test_keepalive_keeps_an_idle_session_open(
    tmp_path: Path, emulator: ScribeEmulator
) -> None:
    emulator.idle_timeout_s = 1.5
    # Twilio stops sending frames (on both tracks) for 3 s after the first turn: digital
    # silence is not sent at all. Meanwhile the call's first segment is still open.
    script: list[Utterance] = [
        (300, IN, [500, 600]),
        (4000, OUT, [700, 800, 900]),
        (5400, IN, [1000, 1050]),
    ]
    duration = 6400
    inbound, outbound = render(script, duration, 31, noise_dbfs=None)
    async with bridge_for(tmp_path, emulator) as bridge:
        sim = bridge.simulator()
        await sim.run(inbound=inbound, outbound=outbound, speed=1.0, skip_silence=True)
        await wait_ended(bridge, sim.call_sid)
        segments = await bridge.store.get_segments(sim.call_sid)
        record = await bridge.store.get_call(sim.call_sid)
    delivery = check_delivery(segments, script)
    record_figures("keepalive, 3 s without frames", delivery, emulator)
    assert delivery.problems == [] and delivery.delivered == delivery.spoken
    assert record is not None and record.degraded is None
    (session,) = emulator.sessions  # never closed for idleness
    assert session.closed_code == 1000 and not session.errors_sent
    gaps = [b.received_at - a.received_at for a, b in itertools.pairwise(session.chunks)]
    assert max(gaps) < 1.5  # keepalive silence while no frames came
    assert max(gaps) > 0.9  # (there really was a pause)
