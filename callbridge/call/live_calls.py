"""The calls live in this process, and the limits that end them.

:class:`LiveCallRegistry` knows every media socket and call open here: the media handler
(:mod:`callbridge.twilio.media_route`) adds and removes them, the status callback ends a call whose
socket never closed, the claims' heartbeat renews their leases, and shutdown ends them all.
It also counts what was refused, by reason (``/healthz`` shows the counts).

:func:`watch_call_limits` is one task per process (never a task or a timer per call or per
frame) that ends, once a second:

* a started stream that has sent no media for ``limits.media_timeout_s`` (``reason``
  ``timeout``): Twilio sends media continuously, so a silent socket is a stream that died
  without closing (through tunnels the close may never arrive) or a client holding a Scribe
  session open, which would otherwise be kept alive with keepalive audio, and billed, forever;
* a call longer than ``limits.max_call_s`` (``reason`` ``max_duration``).

Media is noticed from the session's frame counter, which the hot path keeps anyway, so the
watch costs nothing per frame.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, KeysView
from dataclasses import dataclass

import structlog
from aiohttp import WSCloseCode, web

from callbridge.call.session import CallSession
from callbridge.config import LimitSettings
from callbridge.models import EndReason

log = structlog.get_logger("callbridge.call.live_calls")


@dataclass(slots=True, eq=False)
class LiveCall:
    """One call live here: its session, its socket, and what the watch has seen of it."""

    session: CallSession
    ws: web.WebSocketResponse
    started_at: float  # monotonic
    media_at: float  # monotonic: when its frame counter last moved
    frames_seen: int = 0
    ending: bool = False


class LiveCallRegistry:
    """The media sockets and calls open in this process, and the refusals counted."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._calls: dict[str, LiveCall] = {}
        self._starting: set[str] = set()  # claimed or being claimed, no session yet
        self._background: set[asyncio.Task[bool]] = set()
        self._clock = clock
        self.sockets = 0  # media sockets open (started or not)
        self.draining = False
        self.refused: Counter[str] = Counter()  # media sockets and starts refused, by reason
        self._frames_of_ended_calls = 0

    def reserve(self, call_sid: str) -> bool:
        """Hold ``call_sid`` while its start is checked; False if it is live or starting."""
        if call_sid in self._calls or call_sid in self._starting:
            return False
        self._starting.add(call_sid)
        return True

    def unreserve(self, call_sid: str) -> None:
        self._starting.discard(call_sid)

    def add(self, session: CallSession, ws: web.WebSocketResponse) -> None:
        sid = session.stream.call_sid
        self._starting.discard(sid)
        now = self._clock()
        self._calls[sid] = LiveCall(session, ws, started_at=now, media_at=now)

    def remove(self, session: CallSession) -> None:
        sid = session.stream.call_sid
        call = self._calls.get(sid)
        if call is not None and call.session is session:
            del self._calls[sid]
            self._frames_of_ended_calls += session.frames

    def is_live(self, call_sid: str) -> bool:
        return call_sid in self._calls

    def call_sids(self) -> KeysView[str]:
        return self._calls.keys()

    def calls(self) -> list[LiveCall]:
        return list(self._calls.values())

    def __len__(self) -> int:
        return len(self._calls)

    @property
    def frames_received(self) -> int:
        """Media frames of every call this process has held (for the frames metric)."""
        return self._frames_of_ended_calls + sum(c.session.frames for c in self._calls.values())

    def end_in_background(
        self, call_sid: str, reason: EndReason, message: str = "call ended"
    ) -> None:
        call = self._calls.get(call_sid)
        if call is not None:
            call.ending = True
        task = asyncio.get_running_loop().create_task(self.end_call(call_sid, reason, message))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def end_call(self, call_sid: str, reason: EndReason, message: str = "call ended") -> bool:
        """Finish a live call (its last turn committed, its transcript awaited) and close its
        socket with 1000 and ``message``; False if it is not live here."""
        call = self._calls.get(call_sid)
        if call is None:
            return False
        call.ending = True
        await call.session.finish(reason)
        await call.ws.close(code=WSCloseCode.OK, message=message.encode("utf-8")[:120])
        return True

    async def end_all(self, reason: EndReason, timeout_s: float) -> None:
        """Finish every live call at once (shutdown), bounded by ``timeout_s``."""
        calls = list(self._calls)
        if not calls:
            return
        log.info("bridge.ending_live_calls", calls=len(calls), reason=str(reason))
        results = asyncio.gather(
            *(self.end_call(sid, reason) for sid in calls), return_exceptions=True
        )
        try:
            await asyncio.wait_for(results, timeout_s)
        except TimeoutError:
            log.error("bridge.shutdown_timeout", calls=len(self._calls), timeout_s=timeout_s)


async def watch_call_limits(
    registry: LiveCallRegistry,
    limits: LimitSettings,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """End calls without media for ``media_timeout_s`` and calls longer than ``max_call_s``;
    runs until cancelled."""
    period = min(1.0, limits.media_timeout_s / 4, limits.max_call_s / 4)
    while True:
        await asyncio.sleep(period)
        now = clock()
        for call in registry.calls():
            if call.ending:
                continue
            frames = call.session.frames
            if frames != call.frames_seen:
                call.frames_seen = frames
                call.media_at = now
            sid = call.session.stream.call_sid
            if now - call.started_at >= limits.max_call_s:
                call.session.log.warning("call.max_duration", max_call_s=limits.max_call_s)
                registry.end_in_background(
                    sid, EndReason.MAX_DURATION, f"call longer than {limits.max_call_s:g} s"
                )
            elif now - call.media_at >= limits.media_timeout_s:
                call.session.log.warning(
                    "call.media_timeout", media_timeout_s=limits.media_timeout_s
                )
                registry.end_in_background(
                    sid, EndReason.TIMEOUT, f"no media for {limits.media_timeout_s:g} s"
                )
