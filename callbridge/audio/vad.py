"""Per-track voice activity detection for telephone audio.

An energy detector with an adaptive noise floor: the floor follows quiet frames quickly and
loud ones slowly, so steady line noise or hum is learned within seconds while the short gaps
between words keep it low during speech. A frame is *voiced* when it stands
``threshold_db`` above the floor (and above an absolute minimum). Speech *starts* after
``onset_ms`` of consecutive voiced frames and *ends* after ``hangover_ms`` without one.

The detector errs toward hearing speech: a false start costs an empty segment, a missed
word costs a lost sentence.
"""

from __future__ import annotations

from dataclasses import dataclass

from callbridge.audio.ulaw import power_dbfs
from callbridge.models import Interval

_FLOOR_FALL = 0.3  # fraction of the distance to a quieter frame covered per frame
_FLOOR_RISE_DB_PER_S = 3.0
_FLOOR_START_MAX_DBFS = -45.0
_MAX_INTERVALS = 100_000


@dataclass(frozen=True, slots=True)
class VadSettings:
    threshold_db: float = 9.0
    min_level_dbfs: float = -50.0
    onset_ms: int = 60
    hangover_ms: int = 240


class VoiceActivityDetector:
    """Speech/non-speech decisions for one track, fed one frame at a time on the stream clock."""

    __slots__ = (
        "_floor_db",
        "_hangover_ms",
        "_intervals",
        "_min_level_db",
        "_onset_ms",
        "_run_start_ms",
        "_threshold_db",
        "last_voiced_end_ms",
        "speaking",
        "speech_start_ms",
        "voiced",
    )

    def __init__(self, settings: VadSettings) -> None:
        self._threshold_db = settings.threshold_db
        self._min_level_db = settings.min_level_dbfs
        self._onset_ms = settings.onset_ms
        self._hangover_ms = settings.hangover_ms
        self._floor_db: float | None = None
        self._run_start_ms: int | None = None  # start of the current run of voiced frames
        self._intervals: list[Interval] = []
        self.voiced = False  # the last frame's raw decision
        self.speaking = False  # debounced: onset reached, hangover not yet run out
        self.speech_start_ms = 0  # start of the current (or last) speech
        self.last_voiced_end_ms = 0

    def update(self, power: float, start_ms: int, duration_ms: int) -> bool:
        """Take one frame's mean power; returns True when speech starts at this frame."""
        level = power_dbfs(power)
        floor = self._floor_db
        if floor is None:
            floor = min(level, _FLOOR_START_MAX_DBFS)
        voiced = level >= floor + self._threshold_db and level >= self._min_level_db
        if level < floor:
            floor += (level - floor) * _FLOOR_FALL
        else:
            floor += min(level - floor, _FLOOR_RISE_DB_PER_S * duration_ms / 1000.0)
        self._floor_db = floor
        self.voiced = voiced
        end_ms = start_ms + duration_ms
        started = False
        if voiced:
            if self._run_start_ms is None:
                self._run_start_ms = start_ms
            if self.speaking:
                self.last_voiced_end_ms = end_ms
            elif end_ms - self._run_start_ms >= self._onset_ms:
                self.speaking = True
                started = True
                self.speech_start_ms = self._run_start_ms
                self.last_voiced_end_ms = end_ms
        else:
            self._run_start_ms = None
            if self.speaking and end_ms - self.last_voiced_end_ms >= self._hangover_ms:
                self.speaking = False
                self._record(Interval(self.speech_start_ms, self.last_voiced_end_ms))
        return started

    def finish(self) -> None:
        """Close the speech interval still open at the end of the stream."""
        if self.speaking:
            self.speaking = False
            self._record(Interval(self.speech_start_ms, self.last_voiced_end_ms))

    @property
    def intervals(self) -> tuple[Interval, ...]:
        return tuple(self._intervals)

    def _record(self, interval: Interval) -> None:
        if len(self._intervals) < _MAX_INTERVALS:
            self._intervals.append(interval)
