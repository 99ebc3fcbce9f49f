"""One call's events on their way to the store: in order, never dropped, bounded memory.

:class:`CallEventWriter` takes a call's events synchronously (``put``: a deque append, so
audio and Scribe never wait on the store) and writes them to the call's sink one at a
time, in order, on its own task. A write that fails is retried with capped exponential
backoff for as long as the process runs; it never gives up.

Memory stays bounded however long the store is down: as soon as a write fails, or more
than ``memory_limit`` events wait, the waiting events move to the call's journal file
(:mod:`callbridge.call.event_journal`, appended and ``fsync``-ed from a worker thread), and
every later event follows them there until the journal is drained into the store. So
during an outage at most the events that arrived since the last spill (a backoff period)
are in memory.

A call's end does not wait for the store: :meth:`CallEventWriter.settled` returns once
every event is either stored or safely journaled; the writer then carries on in the
background until the store takes the rest. At shutdown (:meth:`EventWriters.stop`) the
writers still running journal what they hold and log it at error level
(``call.events_journaled``); the next process replays the journal at start-up
(:func:`~callbridge.call.event_journal.replay_journals`), so those events are delivered after a
restart, late but in order and without gaps.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from callbridge.call.event_journal import (
    CallEvent,
    JournalFile,
    decode_event,
    encode_event,
    write_event,
)
from callbridge.call.sink import CallEventSink


@dataclass(frozen=True, slots=True)
class WriterSettings:
    journal_dir: Path
    memory_limit: int = 64
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 5.0


class CallEventWriter:
    """Writes one call's events to ``sink`` in order; see the module docstring."""

    def __init__(
        self,
        sink: CallEventSink,
        call_sid: str,
        settings: WriterSettings,
        log: Any,
        on_done: Any = None,
    ) -> None:
        self._sink = sink
        self._call_sid = call_sid
        self._settings = settings
        self._log = log
        self._on_done = on_done
        self._memory: deque[CallEvent] = deque()
        self._ready = asyncio.Event()
        self._settled = asyncio.Event()
        self._settled.set()
        self._closed = False
        self._journal: JournalFile | None = None
        self._task: asyncio.Task[None] | None = None
        self.failures = 0  # failed write attempts
        self.journaled = 0  # events that went through the journal

    # ------------------------------------------------------------------ input
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="call-events")

    def put(self, event: CallEvent) -> None:
        """Queue an event (synchronous, never blocks)."""
        if self._closed:
            raise RuntimeError("the writer is closed")
        self._memory.append(event)
        self._settled.clear()
        self._ready.set()

    def close(self) -> None:
        """No more events: the task ends once everything is stored."""
        self._closed = True
        self._ready.set()

    @property
    def in_memory(self) -> int:
        return len(self._memory)

    @property
    def journal_path(self) -> Path | None:
        return self._journal.path if self._journal is not None else None

    async def settled(self) -> bool:
        """Wait until every event put so far is stored or journaled; True when all are
        stored (the store is keeping up)."""
        await self._settled.wait()
        return self._journal is None and not self._memory

    async def wait_stored(self) -> None:
        """Wait until the writer has stored everything and stopped (after :meth:`close`)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def stop(self) -> None:
        """Shutdown: cancel; what is not stored is journaled (and logged loudly)."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ---------------------------------------------------------------- running
    async def _run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            self._spill_now()
            if self._journal is not None:
                self._log.error(
                    "call.events_journaled",
                    path=str(self._journal.path),
                    events=self._journal.appended,
                    detail="the store did not take them before shutdown; they are "
                    "replayed into the store at the next start-up",
                )
                self._journal.close()
            raise
        finally:
            if self._on_done is not None:
                self._on_done(self)

    async def _loop(self) -> None:
        while True:
            if self._journal is not None:
                await self._drain_journal()
                continue
            if not self._memory:
                self._settled.set()
                if self._closed:
                    return
                self._ready.clear()
                await self._ready.wait()
                continue
            event = self._memory[0]
            try:
                await write_event(self._sink, event)
            except Exception as exc:
                self._failed(exc)
                await self._spill()  # the head included: the journal now holds everything
                await self._pause()
                continue
            self._memory.popleft()
            if len(self._memory) > self._settings.memory_limit:
                await self._spill()  # the store keeps up too slowly: bound the memory

    async def _drain_journal(self) -> None:
        journal = self._journal
        assert journal is not None
        await self._spill()
        lines = await asyncio.to_thread(journal.read_lines, 64)
        if not lines:
            if self._memory:  # arrived while the last line was written: journal it too
                return
            await asyncio.to_thread(journal.remove)
            self._journal = None
            self._log.warning("call.journal_drained", events=self.journaled)
            return
        for line in lines:
            try:
                event = decode_event(line)
            except (ValueError, KeyError, TypeError):  # only a bug writes such a line
                self._log.error("journal.unreadable_record", record=line[:200])
                continue
            while True:
                try:
                    await write_event(self._sink, event)
                    break
                except Exception as exc:
                    self._failed(exc)
                    await self._pause()

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        if self.failures == 1 or self.failures % 20 == 0:
            self._log.error("call.sink_failed", attempt=self.failures, error=repr(exc)[:300])

    async def _pause(self) -> None:
        """Back off before the next attempt; events arriving meanwhile go to the journal."""
        s = self._settings
        delay = min(s.backoff_max_s, s.backoff_initial_s * 2 ** min(self.failures - 1, 20))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        while (remaining := deadline - loop.time()) > 0:
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), remaining)
            await self._spill()

    async def _spill(self) -> None:
        """Move every event waiting in memory, in order, to the end of the journal."""
        if not self._memory:
            if self._journal is not None:
                self._settled.set()
            return
        if self._journal is None:
            self._journal = await asyncio.to_thread(
                JournalFile.create, self._settings.journal_dir, self._call_sid
            )
            self._log.warning("call.journal_opened", path=str(self._journal.path))
        events = list(self._memory)
        lines = [encode_event(e) for e in events]
        await asyncio.to_thread(self._journal.append, lines)
        for _ in events:  # only what was written: more may have arrived meanwhile
            self._memory.popleft()
        self.journaled += len(events)
        if not self._memory:
            self._settled.set()

    def _spill_now(self) -> None:
        """The synchronous spill of shutdown (the loop may be going away)."""
        if not self._memory:
            return
        try:
            if self._journal is None:
                self._journal = JournalFile.create(self._settings.journal_dir, self._call_sid)
            self._journal.append([encode_event(e) for e in self._memory])
            self.journaled += len(self._memory)
            self._memory.clear()
        except OSError:
            self._log.exception("call.events_lost", events=len(self._memory))


class EventWriters:
    """The call event writers of one process: made per call, stopped together at shutdown."""

    def __init__(self, settings: WriterSettings) -> None:
        self.settings = settings
        self._running: set[CallEventWriter] = set()

    def open(self, sink: CallEventSink, call_sid: str, log: Any) -> CallEventWriter:
        writer = CallEventWriter(sink, call_sid, self.settings, log, self._running.discard)
        self._running.add(writer)
        writer.start()
        return writer

    def __len__(self) -> int:
        return len(self._running)

    async def stop(self) -> None:
        """Stop every writer; whatever is unstored is journaled for the next start-up."""
        writers = list(self._running)
        await asyncio.gather(*(w.stop() for w in writers), return_exceptions=True)
        self._running.clear()


__all__ = ["CallEventWriter", "EventWriters", "WriterSettings", "decode_event"]
