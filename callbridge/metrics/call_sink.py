"""Counts calls and segments as the call sink sees them: one branch of the fan-out.

It runs after the store's branch, so what it counts has been stored: calls started, ended
by reason and degraded by kind, segments with text and how long after the end of their
speech they were stored, and the audio a call lost (counted when the call ends, from its
:class:`~callbridge.models.CallEnded`).
"""

from __future__ import annotations

import time

from callbridge.metrics.definitions import BridgeMetrics, degraded_kind
from callbridge.models import CallEnded, CallInfo, CommittedSegment


class CallMetricsSink:
    """:class:`~callbridge.call.sink.CallEventSink` that only counts."""

    def __init__(self, metrics: BridgeMetrics) -> None:
        self._metrics = metrics

    async def call_started(self, call: CallInfo) -> None:
        self._metrics.calls_started.inc()

    async def segment_committed(self, segment: CommittedSegment) -> None:
        if segment.text.strip():
            self._metrics.segments.inc()
        if segment.speech_ended_at is not None:  # None when replayed from a journal
            self._metrics.transcript_latency.observe(time.monotonic() - segment.speech_ended_at)

    async def call_ended(self, ended: CallEnded) -> None:
        m = self._metrics
        m.calls_ended.labels(reason=str(ended.reason)).inc()
        if ended.degraded:
            m.calls_degraded.labels(reason=degraded_kind(ended.degraded)).inc()
        if ended.audio_lost_ms:
            m.audio_lost.inc(ended.audio_lost_ms / 1000.0)
