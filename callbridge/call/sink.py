"""The one interface through which a call's results leave the bridge.

A :class:`CallSession` calls these methods in order for one call: ``call_started`` once,
then ``segment_committed`` for every committed segment in sequence order, then
``call_ended`` once. Calls for one call are never concurrent. Storage plus the webhook
outbox (see :mod:`callbridge.store` and :mod:`callbridge.webhooks`) is the production
sink; :class:`LoggingSink` writes them to the log.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import structlog

from callbridge.models import CallEnded, CallInfo, CommittedSegment


class CallEventSink(Protocol):
    async def call_started(self, call: CallInfo) -> None: ...

    async def segment_committed(self, segment: CommittedSegment) -> None: ...

    async def call_ended(self, ended: CallEnded) -> None: ...


class LoggingSink:
    """Logs every call event; useful on its own and as one branch of a fan-out."""

    def __init__(self) -> None:
        self._log = structlog.get_logger("callbridge.segments")

    async def call_started(self, call: CallInfo) -> None:
        self._log.info(
            "call.started", call_sid=call.call_sid, stream_sid=call.stream_sid, tracks=call.tracks
        )

    async def segment_committed(self, segment: CommittedSegment) -> None:
        self._log.info(
            "transcript.committed",
            call_sid=segment.call_sid,
            sequence=segment.sequence,
            speaker=segment.speaker,
            start_ms=segment.start_ms,
            end_ms=segment.end_ms,
            chars=len(segment.text),
        )

    async def call_ended(self, ended: CallEnded) -> None:
        self._log.info(
            "call.ended",
            call_sid=ended.call_sid,
            reason=str(ended.reason),
            segments=ended.segments,
            duration_ms=ended.duration_ms,
        )


class FanOutSink:
    """Passes every event to several sinks in turn (the first failure propagates)."""

    def __init__(self, sinks: Sequence[CallEventSink]) -> None:
        self._sinks = tuple(sinks)

    async def call_started(self, call: CallInfo) -> None:
        for sink in self._sinks:
            await sink.call_started(call)

    async def segment_committed(self, segment: CommittedSegment) -> None:
        for sink in self._sinks:
            await sink.segment_committed(segment)

    async def call_ended(self, ended: CallEnded) -> None:
        for sink in self._sinks:
            await sink.call_ended(ended)
