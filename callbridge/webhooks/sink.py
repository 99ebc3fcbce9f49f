"""The production call sink: stores every call event and enqueues its webhook event.

Each write is one store transaction (the transactional outbox), after which the
dispatcher is told that new deliveries may be due. A call's end also enqueues its
post-call jobs (:mod:`callbridge.jobs`) in that same transaction, so a crash can lose
neither the end nor the work that follows it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog

from callbridge.jobs.model import NewJob
from callbridge.metrics import DISABLED, BridgeMetrics
from callbridge.models import CallEnded, CallInfo, CommittedSegment
from callbridge.store.base import Store
from callbridge.webhooks.events import (
    call_ended_event,
    call_started_event,
    transcript_committed_event,
)

log = structlog.get_logger(__name__)

Summarize = Callable[[CallEnded, Sequence[CommittedSegment]], Mapping[str, Any]]
# The jobs a feature wants after a call (none for a call it does not concern).
AfterCall = Callable[[CallEnded], Sequence[NewJob]]


def _no_notify() -> None:
    return None


class StoreSink:
    """:class:`callbridge.call.sink.CallEventSink` backed by a store and the webhook outbox.

    ``summarize`` builds the post-call summary from the end and the stored segments;
    ``notify`` is usually ``WebhookDispatcher.notify``. ``after_call`` lists the features'
    post-call job factories (the list may grow until the first call ends), and
    ``jobs_enqueued`` is usually ``JobRunner.notify``.
    """

    def __init__(
        self,
        store: Store,
        summarize: Summarize,
        notify: Callable[[], None] = _no_notify,
        *,
        after_call: Sequence[AfterCall] = (),
        jobs_enqueued: Callable[[], None] = _no_notify,
        metrics: BridgeMetrics = DISABLED,
    ) -> None:
        self._store = store
        self._summarize = summarize
        self._notify = notify
        self._after_call = after_call
        self._jobs_enqueued = jobs_enqueued
        self._writes = metrics.store_writes

    async def call_started(self, call: CallInfo) -> None:
        with self._writes.labels(operation="call_started").time():
            await self._store.call_started(call, [call_started_event(call)])
        self._notify()

    async def segment_committed(self, segment: CommittedSegment) -> None:
        events = [transcript_committed_event(segment)] if segment.text.strip() else []
        with self._writes.labels(operation="segment_committed").time():
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
        jobs = [job for factory in self._after_call for job in factory(ended)]
        with self._writes.labels(operation="call_ended").time():
            await self._store.call_ended(
                ended, summary, [call_ended_event(ended, summary)], jobs=jobs
            )
        self._notify()
        if jobs:
            self._jobs_enqueued()
