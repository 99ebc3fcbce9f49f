"""A local, crash-safe journal of call events the store has not accepted yet.

When the store is down (or too slow) a call's events are not dropped and not piled up in
memory: :class:`~callbridge.call.event_writer.CallEventWriter` appends them, in order, to that
call's journal file here and writes them to the store from there once it answers again.
At shutdown, whatever is still unwritten is in a journal file; the next process replays
every journal file it finds at start-up (:func:`replay_journals`), in order, and deletes
each file once all of its events are stored. Store writes are idempotent (a repeated
segment or end is ignored), so replaying an event that did reach the store is harmless.

One file per call (``<call_sid>-<random>.jsonl`` in the journal directory), one JSON
event per line, each append flushed and ``fsync``-ed. A process holds an exclusive
``flock`` on the files it writes, so another worker's replay never takes a live file, and
a dead process's files are free. A crash in the middle of an append leaves a partial last
line: replay skips it with a warning (the event it held was never acknowledged as durable).

All methods here are blocking file I/O: callers on the event loop run them in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from callbridge.call.sink import CallEventSink
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

CallEvent = CallInfo | CommittedSegment | CallEnded
SUFFIX = ".jsonl"
log = structlog.get_logger("callbridge.journal")


# --------------------------------------------------------------------- (de)serialising


def encode_event(event: CallEvent) -> bytes:
    """One journal line (with its newline)."""
    if isinstance(event, CallInfo):
        record: dict[str, Any] = {
            "kind": "started",
            "call_sid": event.call_sid,
            "stream_sid": event.stream_sid,
            "account_sid": event.account_sid,
            "from": event.from_number,
            "to": event.to_number,
            "tracks": list(event.tracks),
            "custom_parameters": dict(event.custom_parameters),
            "started_at": event.started_at.isoformat(),
        }
    elif isinstance(event, CommittedSegment):
        record = {"kind": "segment", **event.to_json()}
        record["committed_at"] = event.committed_at.isoformat()
    else:
        record = {
            "kind": "ended",
            "call_sid": event.call_sid,
            "stream_sid": event.stream_sid,
            "ended_at": event.ended_at.isoformat(),
            "duration_ms": event.duration_ms,
            "reason": str(event.reason),
            "segments": event.segments,
            "activity": [
                {
                    "track": str(a.track),
                    "speaker": a.speaker,
                    "speech": [[i.start_ms, i.end_ms] for i in a.speech],
                }
                for a in event.activity
            ],
            "language_code": event.language_code,
            "degraded": event.degraded,
            "audio_lost_ms": event.audio_lost_ms,
            "empty_transcripts": event.empty_transcripts,
            "untranscribed_turns": event.untranscribed_turns,
        }
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def decode_event(line: bytes) -> CallEvent:
    """Inverse of :func:`encode_event`; ``ValueError`` (or ``KeyError``) for anything else."""
    raw = json.loads(line)
    kind = raw["kind"]
    if kind == "started":
        return CallInfo(
            call_sid=raw["call_sid"],
            stream_sid=raw["stream_sid"],
            account_sid=raw["account_sid"],
            from_number=raw["from"],
            to_number=raw["to"],
            tracks=tuple(raw["tracks"]),
            custom_parameters=dict(raw["custom_parameters"]),
            started_at=datetime.fromisoformat(raw["started_at"]),
        )
    if kind == "segment":
        return CommittedSegment(
            call_sid=raw["call_sid"],
            stream_sid=raw["stream_sid"],
            sequence=int(raw["sequence"]),
            speaker=raw["speaker"],
            track=Track(raw["track"]),
            text=raw["text"],
            start_ms=int(raw["start_ms"]),
            end_ms=int(raw["end_ms"]),
            language_code=raw["language_code"],
            words=tuple(Word.from_json(w) for w in raw["words"]),
            committed_at=datetime.fromisoformat(raw["committed_at"]),
        )
    if kind == "ended":
        return CallEnded(
            call_sid=raw["call_sid"],
            stream_sid=raw["stream_sid"],
            ended_at=datetime.fromisoformat(raw["ended_at"]),
            duration_ms=int(raw["duration_ms"]),
            reason=EndReason(raw["reason"]),
            segments=int(raw["segments"]),
            activity=tuple(
                TrackActivity(
                    Track(a["track"]),
                    a["speaker"],
                    tuple(Interval(int(s), int(e)) for s, e in a["speech"]),
                )
                for a in raw["activity"]
            ),
            language_code=raw["language_code"],
            degraded=raw["degraded"],
            audio_lost_ms=int(raw["audio_lost_ms"]),
            empty_transcripts=int(raw.get("empty_transcripts", 0)),
            untranscribed_turns=int(raw.get("untranscribed_turns", 0)),
        )
    raise ValueError(f"unknown journal record kind {kind!r}")


# ------------------------------------------------------------------------- one file


class JournalFile:
    """One call's journal: append-only lines, read back in order, removed when drained."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd
        self.read_offset = 0
        self.appended = 0  # records appended by this process
        self.read = 0  # records read back

    @classmethod
    def create(cls, directory: Path, call_sid: str) -> JournalFile:
        directory.mkdir(parents=True, exist_ok=True)
        safe = "".join(c for c in call_sid if c.isalnum())[:64] or "call"
        path = directory / f"{safe}-{secrets.token_hex(4)}{SUFFIX}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _fsync_directory(directory)
        return cls(path, fd)

    @classmethod
    def claim(cls, path: Path) -> JournalFile | None:
        """Take a file left by another process; None while a live process holds it."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        if not path.exists():  # drained and removed by its owner just before we locked it
            os.close(fd)
            return None
        return cls(path, fd)

    def append(self, lines: list[bytes]) -> None:
        """Append and make durable (``fsync``) before returning."""
        data = b"".join(lines)
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)
        self.appended += len(lines)

    def read_lines(self, limit: int) -> list[bytes]:
        """Up to ``limit`` whole lines after the last one read (a partial last line waits)."""
        lines: list[bytes] = []
        chunk = os.pread(self._fd, 1 << 16, self.read_offset)
        while chunk and len(lines) < limit:
            end = chunk.find(b"\n")
            if end < 0:
                if len(chunk) < 1 << 16:
                    break  # a partial last line
                chunk += os.pread(self._fd, 1 << 16, self.read_offset + len(chunk))
                continue
            lines.append(chunk[: end + 1])
            self.read_offset += end + 1
            chunk = chunk[end + 1 :]
        self.read += len(lines)
        return lines

    def trailing_bytes(self) -> int:
        """Bytes after the last whole line (a torn append from a crash)."""
        return os.fstat(self._fd).st_size - self.read_offset

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # also releases the lock
            self._fd = -1


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def journal_files(directory: Path) -> Iterator[Path]:
    if not directory.is_dir():
        return iter(())
    return iter(sorted(directory.glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime))


# --------------------------------------------------------------------------- replay


async def replay_journals(
    directory: Path,
    sink: CallEventSink,
    *,
    backoff_initial_s: float = 0.5,
    backoff_max_s: float = 30.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> int:
    """Write every event of every journal file no live process holds to ``sink``, in order,
    retrying each write with capped backoff until it succeeds; returns the events replayed.

    Runs as a background task of the server: it never delays start-up, and the store being
    down at start-up only means it keeps retrying."""
    replayed = 0
    for path in journal_files(directory):
        journal = await asyncio.to_thread(JournalFile.claim, path)
        if journal is None:
            continue
        try:
            events = 0
            while True:
                lines = await asyncio.to_thread(journal.read_lines, 256)
                if not lines:
                    break
                for line in lines:
                    try:
                        event = decode_event(line)
                    except (ValueError, KeyError, TypeError):
                        log.error("journal.unreadable_record", path=str(path), record=line[:200])
                        continue
                    await write_until_stored(
                        sink, event, backoff_initial_s, backoff_max_s, sleep, log
                    )
                    events += 1
            torn = await asyncio.to_thread(journal.trailing_bytes)
            if torn:
                log.warning("journal.torn_record_skipped", path=str(path), bytes=torn)
            await asyncio.to_thread(journal.remove)
            replayed += events
            log.warning("journal.replayed", path=str(path), events=events)
        finally:
            journal.close()
    return replayed


async def write_event(sink: CallEventSink, event: CallEvent) -> None:
    if isinstance(event, CallInfo):
        await sink.call_started(event)
    elif isinstance(event, CommittedSegment):
        await sink.segment_committed(event)
    else:
        await sink.call_ended(event)


async def write_until_stored(
    sink: CallEventSink,
    event: CallEvent,
    backoff_initial_s: float,
    backoff_max_s: float,
    sleep: Callable[[float], Awaitable[None]],
    bound_log: Any,
) -> None:
    """One event to the sink, retried with capped exponential backoff until it is stored."""
    attempt = 0
    while True:
        try:
            await write_event(sink, event)
            if attempt:
                bound_log.warning("call.sink_recovered", attempts=attempt + 1)
            return
        except Exception as exc:
            attempt += 1
            if attempt == 1 or attempt % 20 == 0:
                bound_log.error("call.sink_failed", attempt=attempt, error=repr(exc)[:300])
            await sleep(min(backoff_max_s, backoff_initial_s * 2 ** min(attempt - 1, 20)))
