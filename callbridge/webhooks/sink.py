"""The production call sink: stores every call event and enqueues its webhook event.

Each write is one store transaction (the transactional outbox), after which the
dispatcher is told that new deliveries may be due.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog

from callbridge.models import CallEnded, CallInfo, CommittedSegment
from callbridge.store.base import Store
from callbridge.webhooks.events import (
    call_ended_event,
    call_started_event,
    transcript_committed_event,
)

log = structlog.get_logger(__name__)

Summarize = Callable[[CallEnded, Sequence[CommittedSegment]], Mapping[str, Any]]


def _no_notify() -> None:
    return None


class StoreSink:
    """:class:`callbridge.sink.CallEventSink` backed by a store and the webhook outbox.

    ``summarize`` builds the post-call summary from the end and the stored segments;
    ``notify`` is usually ``WebhookDispatcher.notify``.
    """

    def __init__(
        self,
        store: Store,
        summarize: Summarize,
        notify: Callable[[], None] = _no_notify,
    ) -> None:
        self._store = store
        self._summarize = summarize
        self._notify = notify

    async def call_started(self, call: CallInfo) -> None:
        await self._store.call_started(call, [call_started_event(call)])
        self._notify()

    async def segment_committed(self, segment: CommittedSegment) -> None:
        events = [transcript_committed_event(segment)] if segment.text.strip() else []
        await self._store.segment_committed(segment, events)
        if events:
            self._notify()

    async def call_ended(self, ended: CallEnded) -> None:
        segments = await self._store.get_segments(ended.call_sid)
        try:
            summary = dict(self._summarize(ended, segments))
        except Exception:
            # A summary bug must not lose the call's end or its event.
            log.exception("summary.failed", call_sid=ended.call_sid)
            summary = {
                "call_sid": ended.call_sid,
                "duration_ms": ended.duration_ms,
                "segments": ended.segments,
                "error": "summary_failed",
            }
        await self._store.call_ended(ended, summary, [call_ended_event(ended, summary)])
        self._notify()
