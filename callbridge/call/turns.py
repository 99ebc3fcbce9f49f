"""Turn taking: cut both tracks into single-speaker segments and serialise them into one stream.

A call has one Scribe session, so one audio stream, yet two parties who may talk at once.
:class:`TurnSegmenter` runs a voice activity detector per track and opens a
:class:`PlannedSegment` when a party starts speaking (with a little pre-roll so the first
phoneme is not clipped). Segments go on air one at a time, in the order they started: the
segment on air streams live; a segment that starts while another is on air (double talk)
is held back and goes on air, backlog first, right after the current one is committed.
Between segments the stream carries μ-law silence so the session never goes cold.

A segment ends when its speaker has been silent for ``turn_end_ms``; or for
``takeover_ms`` while the other party speaks; or, past ``soft_max_segment_ms``, at the
next ``pause_split_ms`` pause; or at ``max_segment_ms`` whatever happens, so that Scribe's
own 90 s auto-commit never cuts a segment.

Hold-back is bounded, whatever the on-air track carries (a monologue, hold music a
detector took for speech, a TV): once the oldest held segment's speaker has waited
``hold_cut_ms`` since they started, the on-air segment ends at its speaker's next pause of
``hold_pause_ms`` (a gap between words, so no word is split where a pause exists), and at
``hold_max_ms`` it ends where it is. If its speaker is still talking, they carry on at once
in a new segment, queued behind the held one: no audio is lost or sent twice, and every
segment stays single-speaker. With Scribe answering in ~0.3 s this keeps every transcript
within about 3.5 s of the end of its speech (README, "Real lines").

Everything here runs on the Twilio stream clock and does no I/O: it is the per-frame hot
path and it is deterministic, which is how the tests drive it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from callbridge.audio.ulaw import BYTES_PER_MS, mean_power, silence
from callbridge.audio.vad import VadSettings, VoiceActivityDetector
from callbridge.config import TurnSettings
from callbridge.models import Interval, Track


@dataclass(slots=True, eq=False)
class PlannedSegment:
    """One speaker's stretch of audio on its way to Scribe, on the stream clock."""

    id: int
    track: Track
    speech_start_ms: int
    speech_end_ms: int
    audio_start_ms: int
    audio_end_ms: int
    closed: bool = False
    on_air: bool = False
    lost_ms: int = 0
    held: deque[bytes] = field(default_factory=deque)
    held_bytes: int = 0


class SegmentOutput(Protocol):
    """Where the serialised stream goes: audio (tagged with its segment) and commits."""

    def audio(self, data: bytes, segment: PlannedSegment | None) -> None: ...

    def commit(self, segment: PlannedSegment | None) -> None: ...


class _TrackTurns:
    __slots__ = ("end_ms", "preroll", "segment", "track", "vad")

    def __init__(self, track: Track, vad: VoiceActivityDetector, preroll_frames: int) -> None:
        self.track = track
        self.vad = vad
        self.end_ms = 0  # stream time reached by this track's frames
        self.segment: PlannedSegment | None = None
        self.preroll: deque[tuple[int, bytes]] = deque(maxlen=preroll_frames)


class TurnSegmenter:
    """Decides speaker turns from per-track voice activity and feeds one serial stream."""

    def __init__(
        self, tracks: Sequence[Track], settings: TurnSettings, output: SegmentOutput
    ) -> None:
        if not tracks:
            raise ValueError("at least one track")
        self._settings = settings
        self._output = output
        vad = VadSettings(
            threshold_db=settings.vad_threshold_db,
            min_level_dbfs=settings.vad_min_level_dbfs,
            onset_ms=settings.vad_onset_ms,
            hangover_ms=settings.vad_hangover_ms,
            talker_gate_db=settings.vad_talker_gate_db,
            sustain_ms=settings.vad_sustain_ms,
        )
        preroll_frames = (settings.preroll_ms + settings.vad_onset_ms) // 20 + 2
        self._tracks = {
            t: _TrackTurns(t, VoiceActivityDetector(vad), preroll_frames) for t in tracks
        }
        self._pacer = tracks[0]
        self._queue: deque[PlannedSegment] = deque()
        self._held_bytes = 0
        self._held_limit = settings.backlog_limit_s * 1000 * BYTES_PER_MS
        self._idle_ms = 0
        self._next_id = 1
        self.lost_ms = 0
        self.hold_cuts = 0  # on-air segments ended early for a held one

    # ------------------------------------------------------------------ input
    def push(self, track: Track, start_ms: int, payload: bytes) -> None:
        """One frame of one track, in order for that track, gaps already filled."""
        state = self._tracks.get(track)
        if state is None:
            return
        duration_ms = len(payload) // BYTES_PER_MS
        end_ms = start_ms + duration_ms
        state.end_ms = end_ms
        started = state.vad.update(mean_power(payload), start_ms, duration_ms)
        segment = state.segment
        if segment is None:
            state.preroll.append((start_ms, payload))
            if started:
                self._open(state, end_ms)
        else:
            self._append(segment, payload, end_ms)
            if state.vad.talking:
                segment.speech_end_ms = end_ms
            self._maybe_close(state, segment, end_ms)
        if len(self._tracks) > 1:
            self._close_stalled(end_ms)
            if len(self._queue) > 1:
                self._bound_hold_back(end_ms)
        if track is self._pacer and not self._queue:
            self._idle_fill(duration_ms)
        self._pump()

    def finish(self) -> None:
        """End of stream: close every open segment and flush it, with its commit."""
        for state in self._tracks.values():
            state.vad.finish()
            segment = state.segment
            if segment is not None:
                segment.closed = True
                state.segment = None
                if segment.audio_end_ms == segment.audio_start_ms:
                    self._queue.remove(segment)  # opened by a hard cut on the last frame
        self._pump()

    # ----------------------------------------------------------------- queries
    def activity(self, track: Track) -> tuple[Interval, ...]:
        return self._tracks[track].vad.intervals

    @property
    def tracks(self) -> tuple[Track, ...]:
        return tuple(self._tracks)

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    # ---------------------------------------------------------------- internals
    def _open(self, state: _TrackTurns, end_ms: int) -> None:
        speech_start = state.vad.speech_start_ms
        earliest = speech_start - self._settings.preroll_ms
        frames = [(ts, data) for ts, data in state.preroll if ts >= earliest]
        state.preroll.clear()
        audio_start = frames[0][0] if frames else speech_start
        segment = self._new_segment(state, speech_start, end_ms, audio_start)
        for ts, data in frames:
            self._append(segment, data, ts + len(data) // BYTES_PER_MS)

    def _append(self, segment: PlannedSegment, payload: bytes, end_ms: int) -> None:
        segment.audio_end_ms = end_ms
        if segment.on_air:
            self._output.audio(payload, segment)
            return
        segment.held.append(payload)
        segment.held_bytes += len(payload)
        self._held_bytes += len(payload)
        if self._held_bytes > self._held_limit:
            self._drop_oldest_held()

    def _drop_oldest_held(self) -> None:
        for segment in self._queue:
            while segment.held and self._held_bytes > self._held_limit:
                dropped = segment.held.popleft()
                segment.held_bytes -= len(dropped)
                self._held_bytes -= len(dropped)
                lost = len(dropped) // BYTES_PER_MS
                segment.lost_ms += lost
                self.lost_ms += lost
            if self._held_bytes <= self._held_limit:
                return

    def _maybe_close(self, state: _TrackTurns, segment: PlannedSegment, end_ms: int) -> None:
        s = self._settings
        quiet_ms = end_ms - segment.speech_end_ms
        length_ms = end_ms - segment.speech_start_ms
        close = quiet_ms >= s.turn_end_ms or length_ms >= s.max_segment_ms
        if not close and quiet_ms >= s.takeover_ms:
            close = any(
                other.vad.speaking and other.segment is not None
                for other in self._tracks.values()
                if other is not state
            )
        if not close and length_ms >= s.soft_max_segment_ms:
            close = quiet_ms >= s.pause_split_ms
        if not close:
            return
        segment.closed = True
        state.segment = None
        if length_ms >= s.max_segment_ms and state.vad.speaking:
            # A hard cut mid-speech: the speaker carries on in a new segment at once.
            self._new_segment(state, end_ms, end_ms, end_ms)

    def _bound_hold_back(self, now_ms: int) -> None:
        """End the on-air segment when a held one has waited too long (module docstring)."""
        head = self._queue[0]
        if head.closed or not head.on_air:
            return
        held = next((seg for seg in self._queue if not seg.on_air), None)
        if held is None:
            return
        s = self._settings
        waited = now_ms - held.speech_start_ms
        if waited < s.hold_cut_ms:
            return
        state = self._tracks[head.track]
        if state.segment is not head:
            return
        paused = state.end_ms - head.speech_end_ms >= s.hold_pause_ms
        if not paused and waited < s.hold_max_ms:
            return
        head.closed = True
        state.segment = None
        self.hold_cuts += 1
        if state.vad.speaking:
            # The speaker carries on at once, behind the held segment.
            cut_ms = state.end_ms
            self._new_segment(state, cut_ms, cut_ms, cut_ms)

    def _close_stalled(self, now_ms: int) -> None:
        """A track whose frames stopped (Twilio need not send silence) cannot hold the floor:
        once the other track's clock is ``turn_end_ms`` past it, its segment ends."""
        limit = now_ms - self._settings.turn_end_ms
        for state in self._tracks.values():
            segment = state.segment
            if segment is not None and state.end_ms <= limit:
                segment.closed = True
                state.segment = None
                state.vad.finish()

    def _new_segment(
        self, state: _TrackTurns, speech_start_ms: int, speech_end_ms: int, audio_start_ms: int
    ) -> PlannedSegment:
        """Open a segment on ``state``'s track and queue it behind those already started."""
        segment = PlannedSegment(
            id=self._next_id,
            track=state.track,
            speech_start_ms=speech_start_ms,
            speech_end_ms=speech_end_ms,
            audio_start_ms=audio_start_ms,
            audio_end_ms=audio_start_ms,
        )
        self._next_id += 1
        state.segment = segment
        self._queue.append(segment)
        return segment

    def _idle_fill(self, duration_ms: int) -> None:
        self._output.audio(silence(duration_ms), None)
        self._idle_ms += duration_ms
        if self._idle_ms >= self._settings.idle_commit_ms:
            self._output.commit(None)
            self._idle_ms = 0

    def _pump(self) -> None:
        queue = self._queue
        while queue:
            head = queue[0]
            if not head.on_air:
                head.on_air = True
                while head.held:
                    self._output.audio(head.held.popleft(), head)
                self._held_bytes -= head.held_bytes
                head.held_bytes = 0
            if not head.closed:
                return
            self._output.commit(head)
            queue.popleft()
            self._idle_ms = 0
