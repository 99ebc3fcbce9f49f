"""The process's one watcher of the calls' event logs, for its event-stream clients.

Every ``GET /v1/calls/{sid}/events`` client of a process subscribes here
(:meth:`LiveFeed.subscribe`). The feed fetches the new events of every watched call with one
store query (:meth:`~callbridge.store.base.Store.events_after`) and offers them to each of
the call's subscribers, so the store's load grows with the number of watched calls, not of
clients. It fetches:

* at once when this process stored events of a watched call (the store tells it after the
  commit, :meth:`~callbridge.store.base.Store.on_events_stored`);
* every ``poll_interval_s`` while anything is watched, for what other processes and
  instances sharing the store wrote.

Live partial transcripts of calls held in this process (:meth:`LiveFeed.partial`) go to the
call's subscribers as they come; they are never stored, and only the newest waits for a
client. A subscriber's buffer is bounded: one that falls too far behind is marked
``overflowed`` and its stream is closed (the client resumes with ``Last-Event-ID``, from the
store).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from callbridge.models import LivePartial
from callbridge.store.base import Store, StoredEvent

log = structlog.get_logger("callbridge.api.live_feed")

FETCH_PAGE = 200  # events per call per fetch; a full page is fetched again at once
_CALLS_PER_QUERY = 500


class EventSubscription:
    """One client's view of a call: events offered by the feed, and the newest partial.

    ``position`` is the last event the client was given; the stream handler moves it.
    Offered events at or before it are dropped; an offered event further than one past it
    means the feed skipped some for this client (it joined a watch that was ahead), so the
    handler reads the gap from the store.
    """

    __slots__ = (
        "_bytes",
        "_events",
        "_max_bytes",
        "_max_events",
        "call_sid",
        "changed",
        "erased",
        "on_overflow",
        "overflowed",
        "partial",
        "position",
    )

    def __init__(self, call_sid: str, position: int, max_events: int, max_bytes: int) -> None:
        self.call_sid = call_sid
        self.position = position
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._events: deque[StoredEvent] = deque()
        self._bytes = 0
        self.partial: LivePartial | None = None
        self.overflowed = False
        # Called once when the buffer overflows: the stream's writer may be blocked on a
        # client that does not read, so it cannot notice by itself.
        self.on_overflow: Callable[[], None] | None = None
        self.erased = False
        self.changed = asyncio.Event()

    def offer(self, event: StoredEvent) -> None:
        if self.overflowed:
            return
        newest = self._events[-1].position if self._events else self.position
        if event.position <= newest:
            return
        if len(self._events) >= self._max_events or self._bytes + len(event.body) > self._max_bytes:
            self.overflowed = True
            self._events.clear()
            self._bytes = 0
            self.changed.set()
            if self.on_overflow is not None:
                self.on_overflow()
            return
        self._events.append(event)
        self._bytes += len(event.body)
        if event.event_type == "transcript.committed":
            self.partial = None  # it was about the segment this event completes
        self.changed.set()

    def offer_partial(self, partial: LivePartial) -> None:
        self.partial = partial
        self.changed.set()

    def take(self) -> list[StoredEvent]:
        events = list(self._events)
        self._events.clear()
        self._bytes = 0
        return events

    def take_partial(self) -> LivePartial | None:
        partial, self.partial = self.partial, None
        return partial


@dataclass(eq=False, slots=True)
class _Watch:
    position: int  # the feed has offered every event of the call up to here
    subscribers: set[EventSubscription] = field(default_factory=set)


class LiveFeed:
    """Fetches watched calls' new events once per process and fans them out."""

    def __init__(
        self,
        store: Store,
        *,
        poll_interval_s: float = 1.0,
        max_events: int = 1000,
        max_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self._store = store
        self._poll_interval_s = poll_interval_s
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._watches: dict[str, _Watch] = {}
        self._due: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.fetches = 0

    @property
    def running(self) -> bool:
        return self._task is not None

    @property
    def subscribers(self) -> int:
        return sum(len(watch.subscribers) for watch in self._watches.values())

    # lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._wake = asyncio.Event()
            self._store.on_events_stored(self.stored)
            self._task = asyncio.create_task(self._run(), name="live-feed")

    async def stop(self) -> None:
        self._store.on_events_stored(None)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for watch in self._watches.values():
            for subscription in watch.subscribers:
                subscription.changed.set()

    # subscribers --------------------------------------------------------------------------

    def subscribe(self, call_sid: str, position: int) -> EventSubscription:
        """Watch ``call_sid`` for a client that has seen its events up to ``position``."""
        subscription = EventSubscription(call_sid, position, self._max_events, self._max_bytes)
        watch = self._watches.get(call_sid)
        if watch is None:
            watch = self._watches[call_sid] = _Watch(position)
            # Events stored between the client's replay and now are found at once.
            self._due.add(call_sid)
            self._wake.set()
        watch.subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: EventSubscription) -> None:
        watch = self._watches.get(subscription.call_sid)
        if watch is None:
            return
        watch.subscribers.discard(subscription)
        if not watch.subscribers:
            del self._watches[subscription.call_sid]
            self._due.discard(subscription.call_sid)

    # producers ----------------------------------------------------------------------------

    def stored(self, call_sid: str) -> None:
        """This process stored events of ``call_sid`` (called after the commit)."""
        if call_sid in self._watches:
            self._due.add(call_sid)
            self._wake.set()

    def partial(self, partial: LivePartial) -> None:
        """Interim text of a call held by this process; a dict lookup when nobody watches."""
        watch = self._watches.get(partial.call_sid)
        if watch is not None:
            for subscription in watch.subscribers:
                subscription.offer_partial(partial)

    # the fetch loop -----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            polled = False
            if not self._due:
                if self._watches:
                    try:
                        await asyncio.wait_for(self._wake.wait(), self._poll_interval_s)
                    except TimeoutError:
                        polled = True
                else:
                    await self._wake.wait()
            self._wake.clear()
            due = list(self._watches) if polled else [c for c in self._due if c in self._watches]
            self._due.clear()
            if not due:
                continue
            try:
                await self._fetch(due)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The store is down: the next poll tries again; clients keep their place.
                log.warning("events.fetch_failed", calls=len(due), error=str(exc))
                await asyncio.sleep(self._poll_interval_s)

    async def _fetch(self, call_sids: Sequence[str]) -> None:
        for start in range(0, len(call_sids), _CALLS_PER_QUERY):
            batch = call_sids[start : start + _CALLS_PER_QUERY]
            positions = {sid: self._watches[sid].position for sid in batch if sid in self._watches}
            self.fetches += 1
            found = await self._store.events_after(positions, FETCH_PAGE)
            for call_sid, events in found.items():
                watch = self._watches.get(call_sid)
                if watch is None:
                    continue  # every client left while the query ran
                if events is None:
                    for subscription in watch.subscribers:
                        subscription.erased = True
                        subscription.changed.set()
                    continue
                for event in events:
                    if event.position <= watch.position:
                        continue  # the watch moved on while the query ran
                    watch.position = event.position
                    for subscription in watch.subscribers:
                        subscription.offer(event)
                if len(events) >= FETCH_PAGE:
                    self._due.add(call_sid)
                    self._wake.set()
