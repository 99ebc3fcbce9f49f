"""The process's own sampler: event-loop lag, and the figures the hot path only counts.

The per-frame path never touches a metric: a call session counts its frames in a plain
integer, and :class:`ProcessMonitor` adds what the process received since its last look to
the frames counter once a second (and once more when it stops); the media sockets the
bridge refused, which it counts by reason, the same way. The same loop sets the live gauges
and measures how late the event loop runs a timer, four times a second.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from callbridge.metrics.definitions import BridgeMetrics

TICK_S = 0.25
TICKS_PER_FLUSH = 4


@dataclass(frozen=True, slots=True)
class ProcessFigures:
    """How the monitor reads the process (each a cheap call, made once a second)."""

    live_calls: Callable[[], int]
    frames_received: Callable[[], int]  # since the process started, never decreasing
    event_streams: Callable[[], int]
    media_refused: Callable[[], Mapping[str, int]]  # by reason, since the process started


class ProcessMonitor:
    def __init__(
        self, metrics: BridgeMetrics, figures: ProcessFigures, *, tick_s: float = TICK_S
    ) -> None:
        self._metrics = metrics
        self._figures = figures
        self._tick_s = tick_s
        self._frames_reported = 0
        self._refused_reported: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="metrics-monitor")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.flush()

    def flush(self) -> None:
        m, figures = self._metrics, self._figures
        frames = figures.frames_received()
        if frames > self._frames_reported:
            m.media_frames.inc(frames - self._frames_reported)
            self._frames_reported = frames
        for reason, count in figures.media_refused().items():
            reported = self._refused_reported.get(reason, 0)
            if count > reported:
                m.media_refused.labels(reason=reason).inc(count - reported)
                self._refused_reported[reason] = count
        m.live_calls.set(figures.live_calls())
        m.event_streams.set(figures.event_streams())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        ticks = 0
        while True:
            planned = loop.time() + self._tick_s
            await asyncio.sleep(self._tick_s)
            self._metrics.loop_lag.observe(max(0.0, loop.time() - planned))
            ticks += 1
            if ticks % TICKS_PER_FLUSH == 0:
                self.flush()
