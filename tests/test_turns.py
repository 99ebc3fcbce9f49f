"""Turn taking on the stream clock: who holds the floor, where segments are cut, what is sent."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np

from callbridge.audio.ulaw import FRAME_BYTES, SILENCE_BYTE
from callbridge.call.turns import PlannedSegment, TurnSegmenter
from callbridge.config import TurnSettings
from callbridge.models import Track
from callbridge.testing.speech import build_track, pcm16_to_ulaw, synth_utterance

IN, OUT = Track.INBOUND, Track.OUTBOUND


class RecordingOutput:
    """Collects the serial stream: per commit window, which segment and which bytes."""

    def __init__(self) -> None:
        self.stream: list[tuple[str, PlannedSegment | None, bytes]] = []
        self.now_ms = 0  # the stream clock, set by the driver before each frame
        self.committed_at: dict[int, int] = {}  # segment id → stream time of its commit

    def audio(self, data: bytes, segment: PlannedSegment | None) -> None:
        self.stream.append(("audio", segment, data))

    def commit(self, segment: PlannedSegment | None) -> None:
        self.stream.append(("commit", segment, b""))
        if segment is not None:
            self.committed_at[segment.id] = self.now_ms

    def committed(self) -> list[PlannedSegment]:
        return [seg for kind, seg, _ in self.stream if kind == "commit" and seg is not None]

    def audio_of(self, segment: PlannedSegment) -> bytes:
        return b"".join(
            data for kind, seg, data in self.stream if kind == "audio" and seg is segment
        )

    def windows(self) -> list[list[PlannedSegment | None]]:
        """The segments whose audio falls in each commit window (idle silence as None)."""
        out: list[list[PlannedSegment | None]] = [[]]
        for kind, seg, _ in self.stream:
            if kind == "commit":
                out.append([])
            elif seg not in out[-1]:
                out[-1].append(seg)
        return out


def utterance(start_ms: int, freqs: Sequence[float]) -> tuple[int, np.ndarray]:
    return start_ms, synth_utterance(freqs)


def utterance_ms(n_words: int) -> int:
    return n_words * 220 + (n_words - 1) * 90


def run(
    tracks: dict[Track, bytes], settings: TurnSettings | None = None
) -> tuple[TurnSegmenter, RecordingOutput]:
    out = RecordingOutput()
    seg = TurnSegmenter(tuple(tracks), settings or TurnSettings(), out)
    length = max(len(b) for b in tracks.values())
    for offset in range(0, length, FRAME_BYTES):
        out.now_ms = offset // 8 + 20
        for track, audio in tracks.items():
            frame = audio[offset : offset + FRAME_BYTES]
            if len(frame) == FRAME_BYTES:
                seg.push(track, offset // 8, frame)
    out.now_ms = length // 8
    seg.finish()
    return seg, out


def mulaw_track(duration_ms: int, placements: list[tuple[int, np.ndarray]], seed: int) -> bytes:
    return pcm16_to_ulaw(build_track(duration_ms, placements, noise_dbfs=-60.0, seed=seed))


def test_alternating_turns_give_one_segment_per_turn_in_order() -> None:
    caller = mulaw_track(
        9000, [utterance(500, [400, 500, 600, 700]), utterance(5600, [450, 550])], 1
    )
    agent = mulaw_track(9000, [utterance(2600, [800, 900, 1000, 1100, 1200])], 2)
    _, out = run({IN: caller, OUT: agent})
    segments = out.committed()
    assert [s.track for s in segments] == [IN, OUT, IN]
    truth = [
        (500, 500 + utterance_ms(4)),
        (2600, 2600 + utterance_ms(5)),
        (5600, 5600 + utterance_ms(2)),
    ]
    for segment, (start, end) in zip(segments, truth, strict=True):
        assert abs(segment.speech_start_ms - start) <= 60
        assert abs(segment.speech_end_ms - end) <= 60
    # One segment per commit window: no window mixes two segments.
    for window in out.windows():
        assert len([s for s in window if s is not None]) <= 1


def test_each_segment_carries_exactly_its_own_tracks_audio() -> None:
    caller = mulaw_track(6000, [utterance(300, [400, 500, 600])], 3)
    agent = mulaw_track(6000, [utterance(2500, [800, 900])], 4)
    _, out = run({IN: caller, OUT: agent})
    for segment in out.committed():
        source = caller if segment.track is IN else agent
        sent = out.audio_of(segment)
        start = segment.audio_start_ms * 8
        assert sent == source[start : start + len(sent)]
        assert segment.audio_start_ms <= segment.speech_start_ms - 150  # pre-roll kept


def test_double_talk_is_held_back_then_the_holder_is_cut_at_a_pause() -> None:
    # The caller talks 0.5–4.3 s; the agent talks over them at 1.5–2.4 s. The agent is held
    # back, and once they have waited hold_cut_ms the caller is cut at the next word gap.
    settings = TurnSettings()
    period = 220 + 90
    caller_words = [400, 450, 500, 550, 600, 650, 700, 750, 800, 850, 900, 950, 1000]
    caller = mulaw_track(8000, [utterance(500, caller_words)], 5)
    agent = mulaw_track(8000, [utterance(1500, [1500, 1600, 1700])], 6)
    seg, out = run({IN: caller, OUT: agent})
    segments = out.committed()
    assert [s.track for s in segments] == [IN, OUT, IN]
    first, agent_seg, rest = segments
    assert seg.hold_cuts == 1
    assert abs(agent_seg.speech_start_ms - 1500) <= 60
    # The cut: after the agent waited hold_cut_ms, before hold_max_ms, inside a word gap.
    cut_ms = first.audio_end_ms
    assert 1500 + settings.hold_cut_ms <= cut_ms <= 1500 + settings.hold_max_ms
    assert 220 <= (cut_ms - 500) % period < period, cut_ms
    # The agent's speech was not sent while the caller held the floor: it follows the commit.
    kinds = [(kind, s) for kind, s, _ in out.stream if s is not None]
    first_agent_audio = next(i for i, (k, s) in enumerate(kinds) if s is agent_seg)
    assert first_agent_audio > kinds.index(("commit", first))
    # Nothing is lost or sent twice: the caller's two segments are one contiguous slice of
    # their track, the agent's segment a slice of theirs.
    caller_sent = out.audio_of(first) + out.audio_of(rest)
    start = first.audio_start_ms * 8
    assert rest.audio_start_ms == first.audio_end_ms
    assert caller_sent == caller[start : start + len(caller_sent)]
    agent_sent = out.audio_of(agent_seg)
    assert agent_sent == agent[agent_seg.audio_start_ms * 8 :][: len(agent_sent)]
    assert rest.speech_end_ms >= 500 + len(caller_words) * period - 90 - 60


def test_hold_back_is_bounded_behind_a_monologue_without_pauses() -> None:
    # A caller (or a TV) talking for 12 s with syllable dips of 40 ms but no pause of
    # hold_pause_ms; the agent answers "no" (one 0.3 s word) at 2 s. The agent's segment is
    # committed within hold_max_ms of their start, on the stream clock.
    settings = TurnSettings()
    t = np.arange(8000 * 12) / 8000
    envelope = np.where((t % 0.25) < 0.21, 1.0, 0.0)
    drone = pcm16_to_ulaw((np.sin(2 * np.pi * 300 * t) * 6000 * envelope).astype(np.int16))
    agent = mulaw_track(12_000, [(2000, synth_utterance([900], word_ms=300))], 7)
    seg, out = run({IN: drone, OUT: agent})
    committed = out.committed()
    agent_seg = next(s for s in committed if s.track is OUT)
    assert out.committed_at[agent_seg.id] <= 2000 + settings.hold_max_ms + 20
    caller_segments = [s for s in committed if s.track is IN]
    assert len(caller_segments) >= 2 and seg.hold_cuts >= 1
    # (caller audio: contiguous over the cut)
    assert caller_segments[1].audio_start_ms == caller_segments[0].audio_end_ms


def test_without_double_talk_nothing_is_cut() -> None:
    caller = mulaw_track(9000, [utterance(500, [400 + 50 * i for i in range(20)])], 8)
    agent = mulaw_track(9000, [utterance(7600, [1200, 1300])], 9)
    seg, out = run({IN: caller, OUT: agent})
    assert [s.track for s in out.committed()] == [IN, OUT] and seg.hold_cuts == 0


def test_takeover_ends_the_holders_turn_before_the_full_turn_end_pause() -> None:
    caller = mulaw_track(7000, [utterance(500, [400, 500, 600, 700, 800])], 7)
    # The agent starts 100 ms before the caller's last word ends and keeps going.
    caller_end = 500 + utterance_ms(5)
    agent = mulaw_track(7000, [utterance(caller_end - 100, [1200, 1300, 1400, 1500, 1600])], 8)
    _, out = run({IN: caller, OUT: agent})
    caller_seg, agent_seg = out.committed()
    commit_index = next(
        i for i, (k, s, _) in enumerate(out.stream) if k == "commit" and s is caller_seg
    )
    # When the caller's commit goes out, the stream has not yet run turn_end_ms past their speech.
    sent_before = sum(len(d) for k, s, d in out.stream[:commit_index] if s is caller_seg) // 8
    assert (
        caller_seg.audio_start_ms + sent_before - caller_seg.speech_end_ms
        < TurnSettings().turn_end_ms
    )
    assert agent_seg.track is OUT


def test_a_long_monologue_is_cut_at_pauses_below_the_hard_limit() -> None:
    words = [400 + 10 * (i % 40) for i in range(150)]  # ~46 s of continuous talk
    caller = mulaw_track(50_000, [utterance(200, words)], 9)
    settings = TurnSettings()
    _, out = run({IN: caller}, settings)
    segments = out.committed()
    assert len(segments) >= 2
    for segment in segments:
        assert segment.speech_end_ms - segment.speech_start_ms <= settings.max_segment_ms
        assert segment.track is IN
    # Consecutive pieces leave no speech out.
    for before, after in itertools.pairwise(segments):
        assert after.audio_start_ms <= before.audio_end_ms + 20


def test_hard_cut_at_max_segment_length_without_pauses() -> None:
    # Syllable-like talk with 40 ms dips every 250 ms: never a pause long enough to cut at.
    t = np.arange(8000 * 40) / 8000
    envelope = np.where((t % 0.25) < 0.21, 1.0, 0.0)
    tone = np.sin(2 * np.pi * 500 * t) * 8000 * envelope
    caller = pcm16_to_ulaw(tone.astype(np.int16))
    settings = dataclasses.replace(TurnSettings(), soft_max_segment_ms=8000, max_segment_ms=10_000)
    _, out = run({IN: caller}, settings)
    segments = out.committed()
    assert len(segments) == 4
    assert all(s.speech_end_ms - s.speech_start_ms <= 10_000 for s in segments)
    assert all(s.track is IN for s in segments)
    total = sum(len(out.audio_of(s)) for s in segments)
    assert total >= len(caller) - 200 * 8  # everything after the onset was sent


def test_silence_keeps_the_stream_warm_and_commits_idle_windows() -> None:
    quiet = mulaw_track(45_000, [], 10)
    settings = TurnSettings()
    _, out = run({IN: quiet, OUT: quiet}, settings)
    assert out.committed() == []
    idle_audio = b"".join(d for k, s, d in out.stream if k == "audio" and s is None)
    assert set(idle_audio) == {SILENCE_BYTE}
    assert len(idle_audio) == len(quiet)  # paced by the first track, one frame per frame
    idle_commits = [1 for k, s, _ in out.stream if k == "commit" and s is None]
    assert len(idle_commits) == 45_000 // settings.idle_commit_ms


def test_steady_line_noise_is_not_speech() -> None:
    noisy = pcm16_to_ulaw(build_track(20_000, [], noise_dbfs=-38.0, seed=11))
    _seg, out = run({IN: noisy})
    # The floor learns the noise within a few seconds; after that nothing opens.
    late = [s for s in out.committed() if s.speech_start_ms > 4000]
    assert late == []


def test_speech_over_loud_line_noise_is_still_found() -> None:
    speech = utterance(6000, [500, 600, 700])
    noisy = pcm16_to_ulaw(build_track(10_000, [speech], noise_dbfs=-38.0, seed=12))
    _, out = run({IN: noisy})
    found = [s for s in out.committed() if abs(s.speech_start_ms - 6000) <= 100]
    assert len(found) == 1


def test_backlog_is_bounded_and_what_it_drops_is_counted() -> None:
    # The caller holds the floor for 20 s while the agent talks 10 s over them.
    caller = mulaw_track(25_000, [utterance(200, [400 + 10 * (i % 30) for i in range(64)])], 13)
    agent = mulaw_track(25_000, [utterance(1000, [1500 + 10 * (i % 30) for i in range(32)])], 14)
    # (with the hold-back bound out of the way: the backlog limit is the last safety net)
    settings = dataclasses.replace(
        TurnSettings(), backlog_limit_s=3, hold_cut_ms=10**6, hold_max_ms=10**6
    )
    seg, out = run({IN: caller, OUT: agent}, settings)
    assert seg.lost_ms > 0
    agent_segments = [s for s in out.committed() if s.track is OUT]
    assert sum(s.lost_ms for s in agent_segments) == seg.lost_ms


def test_voice_activity_intervals_are_recorded_per_track() -> None:
    caller = mulaw_track(6000, [utterance(1000, [400, 500])], 15)
    seg, _ = run({IN: caller})
    (interval,) = seg.activity(IN)
    assert abs(interval.start_ms - 1000) <= 40
    assert abs(interval.end_ms - (1000 + utterance_ms(2))) <= 40


def test_a_track_whose_frames_stop_does_not_hold_the_floor() -> None:
    # The agent speaks, then Twilio stops sending agent frames (no silence frames either);
    # the caller's later turn must still be committed without waiting for call end.
    agent = mulaw_track(1500, [utterance(200, [1200, 1300, 1400])], 16)
    caller = mulaw_track(6000, [utterance(2500, [400, 500])], 17)
    out = RecordingOutput()
    seg = TurnSegmenter((IN, OUT), TurnSettings(), out)
    for offset in range(0, len(caller), FRAME_BYTES):
        seg.push(IN, offset // 8, caller[offset : offset + FRAME_BYTES])
        if offset < len(agent):
            seg.push(OUT, offset // 8, agent[offset : offset + FRAME_BYTES])
    # Before finish(): both turns are committed, agent first.
    assert [s.track for s in out.committed()] == [OUT, IN]
    agent_seg = out.committed()[0]
    assert abs(agent_seg.speech_end_ms - (200 + utterance_ms(3))) <= 60


def test_hold_music_and_steady_tones_are_learned_into_the_floor_within_seconds() -> None:
    from callbridge.testing import lines

    for sound in (lines.hold_music(20_000, -20.0, seed=3), lines.tone(20_000, 440.0, -20.0)):
        track = pcm16_to_ulaw(build_track(20_000, [(0, sound)], seed=5))
        seg, out = run({IN: track})
        speech_ms = sum(i.duration_ms for i in seg.activity(IN))
        assert speech_ms <= 3000, speech_ms  # not 20 s of "speech"
        assert all(s.speech_start_ms < 3000 for s in out.committed())


def test_babble_under_the_talker_does_not_keep_their_turn_open() -> None:
    from callbridge.testing import lines

    level = lines.level_for_snr(lines.SPEECH_RMS_DBFS, 13.0)
    speech_end = 1000 + utterance_ms(4)
    caller = pcm16_to_ulaw(
        build_track(
            8000,
            [(0, lines.babble(8000, level, seed=7)), utterance(1000, [400, 500, 600, 700])],
            seed=6,
        )
    )
    _, out = run({IN: caller})
    # (the babble before the talker may open the talker's segment early: no reference yet)
    talker = next(s for s in out.committed() if s.speech_start_ms <= 1100 < s.speech_end_ms)
    assert abs(talker.speech_end_ms - speech_end) <= 100
    # committed at the turn end, not held open by the babble
    assert out.committed_at[talker.id] <= speech_end + TurnSettings().turn_end_ms + 100
