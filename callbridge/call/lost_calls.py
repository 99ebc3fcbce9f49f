"""Ending the calls of a process that is gone: ``call.ended`` with ``reason: bridge_lost``.

A call lives in the process that holds its media socket, and that process renews the call's
live-call claim (:mod:`callbridge.call.stream_claims`) every third of the lease. A process that
dies (killed, out of memory, its machine lost) stops renewing, and without this module its
calls would stay "live" in the store forever, their ``call.ended`` never sent.

Every process runs one :class:`LostCallReaper`. Every heartbeat period it takes over, in one
atomic store statement, the live calls whose lease expired under another owner
(:meth:`~callbridge.store.base.Store.take_over_lost_streams`: two survivors never take the
same call), and ends each from what the store holds (:func:`lost_call_end`):

* ``reason`` ``bridge_lost``, ``degraded`` saying which process was lost;
* the stored segments are kept as they are, and the summary is made from them: talk times
  from the segments' spans, as the voice activity measured by the lost process died with it;
* ``duration_ms`` is Twilio's ``CallDuration`` when its status callback has arrived, else the
  longer of the last segment's end and the time the lost process last renewed the lease;
  ``audio_lost_ms`` is what lies after the last stored segment.

A process only takes calls over once it has reached the store for longer than a heartbeat
period: after an outage of the store itself, every live owner renews first, so calls of
healthy processes are never taken.

Twilio's status callback reaches any instance. Its final status is recorded in the store
and used twice here: a process ends its own live calls that Twilio says are over, whichever
instance got the callback (:meth:`~callbridge.store.base.Store.calls_ended_by_twilio`); and
for a call live in another process, :meth:`LostCallReaper.watch` looks again the moment its
lease runs out, rather than at the next periodic sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Protocol

import structlog

from callbridge.call.sink import CallEventSink
from callbridge.models import (
    CallEnded,
    CommittedSegment,
    EndReason,
    Interval,
    Track,
    TrackActivity,
    utc_now,
)
from callbridge.store.base import LostStream, Store

log = structlog.get_logger("callbridge.call.lost_calls")

TAKE_OVER_BATCH = 100


class LiveHere(Protocol):
    """The calls whose media stream is open in this process."""

    def is_live(self, call_sid: str) -> bool: ...

    def end_in_background(self, call_sid: str, reason: EndReason) -> None: ...


def lost_call_end(
    lost: LostStream,
    segments: Sequence[CommittedSegment],
    lease_s: float,
    now: datetime,
) -> CallEnded:
    """The end of a call whose process is gone, made from what the store holds."""
    call = lost.call
    last_end_ms = max((segment.end_ms for segment in segments), default=0)
    if call.twilio_duration_s is not None:
        duration_ms = call.twilio_duration_s * 1000
    else:
        duration_ms = last_end_ms
        if call.started_at is not None:
            # The lost process renewed the lease for the last time lease_s before it ran out.
            alive_until = lost.lease_expired_at - timedelta(seconds=lease_s)
            alive_ms = int((alive_until - call.started_at).total_seconds() * 1000)
            duration_ms = max(duration_ms, alive_ms)
    speech: dict[Track, list[Interval]] = {}
    speakers: dict[Track, str] = {}
    for segment in segments:
        speech.setdefault(segment.track, []).append(Interval(segment.start_ms, segment.end_ms))
        speakers[segment.track] = segment.speaker
    return CallEnded(
        call_sid=call.call_sid,
        stream_sid=call.stream_sid or "",
        ended_at=now,
        duration_ms=duration_ms,
        reason=EndReason.BRIDGE_LOST,
        segments=call.segments,
        activity=tuple(
            TrackActivity(track, speakers[track], tuple(intervals))
            for track, intervals in speech.items()
        ),
        language_code=call.language_code,
        degraded=(
            f"bridge_lost: the process holding the call's media stream ({lost.previous_owner}) "
            "stopped renewing its lease; the transcript ends with its last stored segment"
        ),
        audio_lost_ms=max(0, duration_ms - last_end_ms),
    )


class LostCallReaper:
    """Takes over and ends the calls of lost processes; see the module docstring.

    ``owner`` is this process's instance id (the one its live-call claims carry), and
    ``lease_s`` the live-call lease; the reaper sweeps every third of it.
    """

    def __init__(
        self,
        store: Store,
        sink: CallEventSink,
        live_here: LiveHere,
        *,
        owner: str,
        lease_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._sink = sink
        self._live_here = live_here
        self.owner = owner
        self.lease_s = lease_s
        self.interval_s = lease_s / 3
        self._clock = clock
        self._store_reachable_since: float | None = None
        self._wake = asyncio.Event()
        self._watching: set[asyncio.Task[None]] = set()
        self.ended = 0  # calls this process ended as bridge_lost

    async def run(self) -> None:
        """Sweep every ``interval_s`` (jittered) and when :meth:`watch` asks; until cancelled."""
        try:
            while True:
                delay = self.interval_s * random.uniform(0.8, 1.2)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                self._wake.clear()
                await self.sweep()
        finally:
            for task in self._watching:
                task.cancel()

    async def sweep(self) -> int:
        """One pass: end this process's calls Twilio says are over, then take over and end
        lost calls (once the store has been reachable for a heartbeat). Returns how many
        lost calls it ended."""
        try:
            over = await self._store.calls_ended_by_twilio(self.owner)
        except Exception:
            self._store_reachable_since = None
            log.exception("lost_calls.sweep_failed")
            return 0
        now = self._clock()
        if self._store_reachable_since is None:
            self._store_reachable_since = now
        for call_sid in over:
            if self._live_here.is_live(call_sid):
                log.info("lost_calls.ended_by_twilio", call_sid=call_sid)
                self._live_here.end_in_background(call_sid, EndReason.COMPLETED)
        if now - self._store_reachable_since < self.interval_s * 1.5:
            return 0  # live owners renew first after an outage of the store
        ended = 0
        while True:
            try:
                lost = await self._store.take_over_lost_streams(
                    self.owner, self.lease_s, TAKE_OVER_BATCH
                )
            except Exception:
                self._store_reachable_since = None
                log.exception("lost_calls.sweep_failed")
                return ended
            for stream in lost:
                ended += await self._end(stream)
            if len(lost) < TAKE_OVER_BATCH:
                return ended

    async def _end(self, lost: LostStream) -> int:
        """End one call taken over; if that fails, the reaper's own lease on it runs out
        and a later sweep (here or elsewhere) tries again."""
        call_sid = lost.call.call_sid
        try:
            segments = await self._store.get_segments(call_sid)
            ended = lost_call_end(lost, segments, self.lease_s, utc_now())
            await self._sink.call_ended(ended)
        except Exception:
            log.exception("lost_calls.end_failed", call_sid=call_sid)
            return 0
        self.ended += 1
        log.warning(
            "lost_calls.call_ended",
            call_sid=call_sid,
            previous_owner=lost.previous_owner,
            segments=ended.segments,
            duration_ms=ended.duration_ms,
            twilio_status=lost.call.twilio_status,
        )
        return 1

    def watch(self, call_sid: str) -> None:
        """Twilio says ``call_sid`` is over and it is not live here: if another process
        holds it, look again as soon as that lease runs out (it ends the call if the
        holder is gone; a live holder ends it itself at its next heartbeat)."""
        task = asyncio.get_running_loop().create_task(self._watch(call_sid))
        self._watching.add(task)
        task.add_done_callback(self._watching.discard)

    async def _watch(self, call_sid: str) -> None:
        try:
            expires_at = await self._store.stream_lease_expiry(call_sid)
        except Exception:
            log.exception("lost_calls.watch_failed", call_sid=call_sid)
            return
        if expires_at is None:
            return
        wait_s = (expires_at - utc_now()).total_seconds()
        await asyncio.sleep(max(0.0, wait_s) + 0.05)
        self._wake.set()
