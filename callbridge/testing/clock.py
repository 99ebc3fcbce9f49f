"""A clock that moves only when a test says so (for :class:`callbridge.jobs.JobRunner`
and anything else that takes a :class:`callbridge.jobs.clock.Clock`)."""

from __future__ import annotations

import asyncio
import heapq
import itertools


class ManualClock:
    """``now()`` starts at ``start`` (unix seconds) and moves with :meth:`advance`.

    ``sleep(s)`` returns once the clock has been advanced by ``s`` or more; a sleep of zero
    or less returns at once (after one turn of the event loop).
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), future))
        await future

    @property
    def sleepers(self) -> int:
        """Sleeps still waiting (cancelled ones included until the next advance)."""
        return len(self._sleepers)

    async def advance(self, seconds: float) -> None:
        """Move the clock forward, wake every sleep that is due, and let them run."""
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)
        for _ in range(5):
            await asyncio.sleep(0)
