"""``GET /v1/calls/{call_sid}/events``: a call's events as Server-Sent Events.

The stream carries the call's stored webhook events exactly as the webhooks do: ``data:``
is the very JSON body that is POSTed and signed, ``id:`` its ``webhook-id`` and ``event:``
its type. It starts at the call's first event (or after the one named by ``Last-Event-ID``),
then follows the call live. The store is the source, so a call held by another worker or
instance streams the same way (see :mod:`callbridge.api.live_feed` for how new events are
found). Beside them, a call held by this process also streams its live partial
transcripts as ``event: transcript.partial`` (no ``id:``, never stored).

The stream ends once the call has ended and nothing more will be stored for it: after
``call.ended``, unless post-call work that stores further events is still pending
(:func:`post_call_pending`: a post-call job of the call, an AI summary on its way), then
after that work's events (``call.transcript_final``, ``call.summarized``). A client that
asks again after the last event gets ``204``, which tells an ``EventSource`` to stop
reconnecting. A comment line goes out after ``events_heartbeat_s`` without an event. A
client that does not keep up (its buffer of ``events_buffer`` events fills, or one write
takes ``events_write_timeout_s``) is disconnected; it resumes from the store with
``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson
import structlog
from aiohttp import web

from callbridge.ai_summary.records import ai_summary_pending
from callbridge.api.live_feed import FETCH_PAGE, EventSubscription, LiveFeed
from callbridge.context import LIVE_FEED, METRICS, SETTINGS, STORE
from callbridge.http_errors import json_error
from callbridge.metrics import DISABLED, BridgeMetrics
from callbridge.models import LivePartial, rfc3339, utc_now
from callbridge.store.base import CallStatus, DurableStore, StoredEvent

log = structlog.get_logger("callbridge.api.events")

PARTIAL_EVENT = "transcript.partial"
CALL_ENDED = "call.ended"
RECONNECT_MS = 3000


def metrics_of(request: web.Request) -> BridgeMetrics:
    return request.config_dict.get(METRICS) or DISABLED


async def post_call_pending(store: DurableStore, call_sid: str) -> bool:
    """Whether work that stores more of the call's events after ``call.ended`` is pending:

    * a post-call job of the call (the job queue, :mod:`callbridge.jobs`) is pending or
      running: the batch transcript pass and its ``call.transcript_final``, for example;
    * the call's AI summary is ``pending``: a ``call.summarized`` follows (stored in the same
      transaction as the state that replaces ``pending``).
    """
    if await store.jobs.unfinished_for_call(call_sid):
        return True
    call = await store.get_call(call_sid)
    return call is not None and ai_summary_pending(call)


def event_frame(event: StoredEvent) -> bytes:
    """One stored event as an SSE message: the webhook body as its only ``data:`` line."""
    lines = b"".join(b"data: " + line + b"\n" for line in event.body.split(b"\n"))
    return (
        b"id: " + event.event_id.encode() + b"\nevent: " + event.event_type.encode() + b"\n"
        b"" + lines + b"\n"
    )


def partial_frame(partial: LivePartial) -> bytes:
    body = orjson.dumps(
        {
            "type": PARTIAL_EVENT,
            "timestamp": rfc3339(utc_now()),
            "data": {
                "call_sid": partial.call_sid,
                "speaker": partial.speaker,
                "track": partial.track,
                "text": partial.text,
            },
        }
    )
    return b"event: " + PARTIAL_EVENT.encode() + b"\ndata: " + body + b"\n\n"


class StreamClosed(Exception):
    """The client is gone, too slow, or the stream was told to stop."""


class _Stream:
    """Writes one client's stream and keeps its place (``position``) in the call's log."""

    def __init__(
        self,
        response: web.StreamResponse,
        store: DurableStore,
        call_sid: str,
        write_timeout_s: float,
        metrics: BridgeMetrics,
    ) -> None:
        self.response = response
        self.metrics = metrics
        self.store = store
        self.call_sid = call_sid
        self.write_timeout_s = write_timeout_s
        self.position = 0
        self.ended = False  # call.ended has been sent (or was before the client's place)
        self.written_at = time.monotonic()

    async def write(self, data: bytes) -> None:
        try:
            async with asyncio.timeout(self.write_timeout_s):
                await self.response.write(data)
            self.written_at = time.monotonic()
        except TimeoutError:
            log.warning("events.client_dropped", call_sid=self.call_sid, reason="write_timeout")
            self.metrics.event_streams_dropped.labels(reason="write_timeout").inc()
            raise StreamClosed("the client did not take the stream in time") from None
        except (ConnectionError, RuntimeError) as exc:  # reset, or the transport is closed
            raise StreamClosed(f"client gone: {exc}") from None

    async def send(self, events: list[StoredEvent]) -> None:
        frames: list[bytes] = []
        for event in events:
            if event.position <= self.position:
                continue
            frames.append(event_frame(event))
            self.position = event.position
            if event.event_type == CALL_ENDED:
                self.ended = True
        if frames:
            await self.write(b"".join(frames))

    async def catch_up(self) -> bool:
        """Send everything stored after ``position``; False if the call is gone."""
        while True:
            found = (await self.store.events_after({self.call_sid: self.position}, FETCH_PAGE))[
                self.call_sid
            ]
            if found is None:
                return False
            await self.send(found)
            if len(found) < FETCH_PAGE:
                return True


async def stream_call_events(request: web.Request) -> web.StreamResponse:
    call_sid = request.match_info["call_sid"]
    store = request.config_dict[STORE]
    settings = request.config_dict[SETTINGS].api
    feed = request.config_dict[LIVE_FEED]
    call = await store.get_call(call_sid)
    if call is None:
        return json_error(404, "call_not_found", f"no call {call_sid!r}")
    position = 0
    last_event_id = request.headers.get("Last-Event-ID", "").strip()
    if last_event_id:
        found = await store.event_position(call_sid, last_event_id)
        if found is None:
            return json_error(
                400,
                "unknown_event_id",
                f"Last-Event-ID {last_event_id!r} is not an event of call {call_sid!r}",
            )
        position = found
    first = (await store.events_after({call_sid: position}, FETCH_PAGE))[call_sid]
    if first is None:
        return json_error(404, "call_not_found", f"no call {call_sid!r}")
    if (
        not first
        and position > 0
        and call.status == CallStatus.ENDED
        and not await post_call_pending(store, call_sid)
    ):
        return web.Response(status=204)  # nothing more will come: stop reconnecting

    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache, no-store",
            "X-Accel-Buffering": "no",  # nginx: pass events on as they come
        }
    )
    await response.prepare(request)
    stream = _Stream(
        response, store, call_sid, settings.events_write_timeout_s, metrics_of(request)
    )
    stream.position = position
    stream.ended = call.status == CallStatus.ENDED
    subscription: EventSubscription | None = None
    try:
        await stream.write(f"retry: {RECONNECT_MS}\n\n".encode())
        await stream.send(first)
        if len(first) >= FETCH_PAGE and not await stream.catch_up():
            return response
        subscription = feed.subscribe(call_sid, stream.position)
        subscription.on_overflow = _dropper(request, call_sid)
        await _follow(
            stream,
            subscription,
            feed,
            store,
            settings.events_heartbeat_s,
            recheck_s=settings.events_poll_s,
        )
    except StreamClosed as exc:
        log.info("events.stream_closed", call_sid=call_sid, reason=str(exc))
    except Exception as exc:  # the store failed mid-stream: the client resumes later
        log.warning("events.stream_failed", call_sid=call_sid, error=str(exc))
    finally:
        if subscription is not None:
            feed.unsubscribe(subscription)
    return response


def _dropper(request: web.Request, call_sid: str) -> Callable[[], None]:
    def drop() -> None:
        log.warning("events.client_dropped", call_sid=call_sid, reason="buffer_full")
        metrics_of(request).event_streams_dropped.labels(reason="buffer_full").inc()
        if request.transport is not None:
            # abort, not close: close would first flush what the client does not read
            request.transport.abort()  # a write blocked on the client fails at once

    return drop


async def _follow(
    stream: _Stream,
    subscription: EventSubscription,
    feed: LiveFeed,
    store: DurableStore,
    heartbeat_s: float,
    recheck_s: float,
) -> None:
    """Send what the feed offers until the call is over, the client lags, or the feed stops.

    After ``call.ended`` the post-call work is looked at again on every event and every
    ``recheck_s`` (its last event may be stored a moment before the work is marked done)."""
    while True:
        if stream.ended and not await post_call_pending(store, stream.call_sid):
            await stream.catch_up()  # what was stored with call.ended or just after it
            return
        subscription.changed.clear()
        if subscription.overflowed:
            raise StreamClosed("the client fell too far behind")
        if subscription.erased:
            return
        events = subscription.take()
        gap = bool(events) and events[0].position > stream.position + 1
        # The feed was ahead of this client when it joined: read the gap first.
        if gap and not await stream.catch_up():
            return
        await stream.send(events)
        partial = subscription.take_partial()
        if partial is not None and not stream.ended:
            await stream.write(partial_frame(partial))
        if events or partial is not None:
            continue
        if not feed.running:
            return
        idle_s = time.monotonic() - stream.written_at
        wait_s = max(0.0, heartbeat_s - idle_s)
        try:
            async with asyncio.timeout(min(wait_s, recheck_s) if stream.ended else wait_s):
                await subscription.changed.wait()
        except TimeoutError:
            if time.monotonic() - stream.written_at >= heartbeat_s:
                await stream.write(b": keep-alive\n\n")
