"""The clock a job runner reads and sleeps on.

Production uses :class:`SystemClock` (wall-clock time, ``asyncio.sleep``). Tests use
:class:`callbridge.testing.clock.ManualClock`, which only moves when told, so backoff,
leases and give-up deadlines can be checked exactly.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Unix seconds."""

    async def sleep(self, seconds: float) -> None:
        """Return once ``seconds`` have passed on this clock."""


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


def as_datetime(unix_s: float) -> datetime:
    return datetime.fromtimestamp(unix_s, UTC)
