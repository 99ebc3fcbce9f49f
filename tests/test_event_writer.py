"""Call events to the store: in order, never dropped, bounded memory, journaled across
restarts when the store is down."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from callbridge.call.event_journal import (
    JournalFile,
    decode_event,
    encode_event,
    journal_files,
    replay_journals,
)
from callbridge.call.event_writer import EventWriters, WriterSettings
from callbridge.models import (
    CallEnded,
    CallInfo,
    CommittedSegment,
    EndReason,
    Interval,
    Track,
    TrackActivity,
    Word,
)
from callbridge.store.base import StoreError

NOW = datetime(2026, 3, 4, 5, 6, 7, 123000, tzinfo=UTC)
LOG = structlog.get_logger("test")


def segment(sequence: int, call_sid: str = "CA1") -> CommittedSegment:
    return CommittedSegment(
        call_sid=call_sid,
        stream_sid="MZ1",
        sequence=sequence,
        speaker="caller",
        track=Track.INBOUND,
        text=f"words {sequence} «ü»",
        start_ms=sequence * 1000,
        end_ms=sequence * 1000 + 500,
        language_code="en",
        words=(Word("words", sequence * 1000, sequence * 1000 + 200, logprob=-0.5),),
        committed_at=NOW,
    )


class FlakySink:
    """A sink whose store can be down; records what it stored, in order."""

    def __init__(self) -> None:
        self.down = False
        self.stored: list[Any] = []
        self.attempts = 0

    async def _write(self, event: Any) -> None:
        self.attempts += 1
        await asyncio.sleep(0)
        if self.down:
            raise StoreError("database is locked")
        self.stored.append(event)

    async def call_started(self, call: CallInfo) -> None:
        await self._write(call)

    async def segment_committed(self, segment: CommittedSegment) -> None:
        await self._write(segment)

    async def call_ended(self, ended: CallEnded) -> None:
        await self._write(ended)


def settings(tmp_path: Path, limit: int = 8) -> WriterSettings:
    return WriterSettings(
        journal_dir=tmp_path / "journal",
        memory_limit=limit,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
    )


async def test_a_store_outage_loses_nothing_keeps_order_and_bounds_memory(tmp_path: Path) -> None:
    sink = FlakySink()
    writers = EventWriters(settings(tmp_path))
    writer = writers.open(sink, "CA1", LOG)
    events = [segment(n) for n in range(1, 401)]
    for event in events[:5]:
        writer.put(event)
    assert await writer.settled() is True  # the store keeps up: stored
    sink.down = True
    peak = 0
    for event in events[5:]:
        writer.put(event)
        await asyncio.sleep(0.0005)
        peak = max(peak, writer.in_memory)
    assert await writer.settled() is False  # durable, in the journal, not yet stored
    assert writer.in_memory == 0 and writer.journal_path is not None
    assert writer.journal_path.exists()
    assert peak < 100  # never the outage's 395 events
    assert sink.stored == events[:5] and sink.attempts > 5
    sink.down = False
    writer.close()
    await asyncio.wait_for(writer.wait_stored(), 10)
    assert sink.stored == events  # in order, each once
    assert list(journal_files(tmp_path / "journal")) == []  # drained and removed
    assert len(writers) == 0


async def test_a_slow_store_spills_past_the_memory_bound(tmp_path: Path) -> None:
    class SlowSink(FlakySink):
        async def _write(self, event: Any) -> None:
            await asyncio.sleep(0.01)
            self.stored.append(event)

    sink = SlowSink()
    writer = EventWriters(settings(tmp_path, limit=4)).open(sink, "CA1", LOG)
    events = [segment(n) for n in range(1, 41)]
    for event in events:
        writer.put(event)
    await asyncio.sleep(0.05)
    assert writer.in_memory <= 4 + 1
    writer.close()
    await asyncio.wait_for(writer.wait_stored(), 10)
    assert sink.stored == events and writer.journaled > 0


async def test_unwritten_events_at_shutdown_are_delivered_after_a_restart(
    tmp_path: Path,
) -> None:
    sink = FlakySink()
    sink.down = True
    writers = EventWriters(settings(tmp_path))
    events: list[Any] = [
        CallInfo("CA1", "MZ1", "AC1", "+1", None, ("inbound",), {"k": "v"}, NOW),
        segment(1),
        segment(2),
        CallEnded(
            "CA1",
            "MZ1",
            NOW,
            4000,
            EndReason.STOP,
            2,
            (TrackActivity(Track.INBOUND, "caller", (Interval(0, 500),)),),
            "en",
            None,
            0,
            empty_transcripts=3,
            untranscribed_turns=1,
        ),
    ]
    with structlog.testing.capture_logs() as logs:
        writer = writers.open(sink, "CA1", LOG)
        for event in events:
            writer.put(event)
        await asyncio.sleep(0.02)
        await writers.stop()  # shutdown while the store is down
    (loud,) = [e for e in logs if e["event"] == "call.events_journaled"]
    assert loud["log_level"] == "error" and loud["events"] == 4
    assert sink.stored == []
    # The next process: the store is back; replay delivers every event once, in order.
    restarted = FlakySink()
    assert await replay_journals(tmp_path / "journal", restarted) == 4
    assert restarted.stored == events
    assert list(journal_files(tmp_path / "journal")) == []


async def test_replay_waits_for_the_store_and_skips_a_torn_last_record(tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    journal = JournalFile.create(directory, "CA9")
    journal.append([encode_event(segment(1, "CA9")), encode_event(segment(2, "CA9"))])
    journal.append([encode_event(segment(3, "CA9"))[:40]])  # a crash mid-append
    journal.close()
    sink = FlakySink()
    sink.down = True

    async def heal() -> None:
        await asyncio.sleep(0.2)
        sink.down = False

    healing = asyncio.create_task(heal())
    with structlog.testing.capture_logs() as logs:
        replayed = await replay_journals(directory, sink, backoff_initial_s=0.01)
    await healing
    assert replayed == 2 and sink.stored == [segment(1, "CA9"), segment(2, "CA9")]
    assert any(e["event"] == "journal.torn_record_skipped" for e in logs)


async def test_a_live_writers_journal_is_not_taken_by_a_replay(tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    live = JournalFile.create(directory, "CA2")
    live.append([encode_event(segment(1, "CA2"))])
    sink = FlakySink()
    assert await replay_journals(directory, sink) == 0  # locked by its (live) owner
    assert sink.stored == [] and live.path.exists()
    live.close()
    assert await replay_journals(directory, sink) == 1


def test_every_event_kind_survives_the_journal_format() -> None:
    ended = CallEnded(
        "CA1",
        "MZ1",
        NOW,
        1,
        EndReason.HANGUP,
        0,
        (TrackActivity(Track.OUTBOUND, "agent", (Interval(1, 2), Interval(5, 9))),),
        None,
        "scribe auth_error",
        12,
        empty_transcripts=2,
        untranscribed_turns=3,
    )
    started = CallInfo("CA1", "MZ1", "AC1", None, "+2", ("inbound", "outbound"), {}, NOW)
    for event in (started, segment(7), ended):
        assert decode_event(encode_event(event)) == event
