"""The call audio kept for the post-call batch pass: one folder per call on local disk.

While a call runs, :class:`CallAudioRecorder` appends each track's μ-law frames as Twilio
sent them to ``<audio_dir>/<call>/<track>.ulaw``. On the hot path that is a ``bytearray``
append; every 32 KB (4 s of a track) the buffer goes to the file in one ``os.write`` (page
cache, tens of microseconds), so a crashed process loses at most the last 4 s, and the
file is fsync-ed off the event loop when the call ends. Frames are placed on the stream
clock: ``<track>.idx`` holds a line ``<byte offset> <stream ms>`` wherever a track's
timestamps jump (its first frame included), so gaps are known without writing silence.

:class:`AudioSpool` owns the folder: it opens recorders, reads a call's audio back
(:class:`CallAudio`), deletes it, and keeps the total under ``max_bytes`` (a call that would
pass it stops being recorded and is marked incomplete; its pass then fails rather than
transcribe half a call).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from callbridge.audio.ulaw import BYTES_PER_MS

log = structlog.get_logger(__name__)

FLUSH_BYTES = 32 * 1024
META_FILE = "meta.json"
INCOMPLETE_FILE = "incomplete"
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def folder_name(call_sid: str) -> str:
    """The call's folder name: the SID itself when it is plain, else a hash of it (a SID
    comes from the network and never becomes a path of its own)."""
    if _SAFE_NAME.fullmatch(call_sid):
        return call_sid
    return "h-" + hashlib.sha256(call_sid.encode()).hexdigest()[:40]


@dataclass(frozen=True, slots=True)
class TrackAudio:
    """One track as received: contiguous pieces ``(stream start ms, μ-law bytes)``."""

    track: str
    pieces: tuple[tuple[int, bytes], ...]

    @property
    def duration_ms(self) -> int:
        return sum(len(data) for _, data in self.pieces) // BYTES_PER_MS


@dataclass(frozen=True, slots=True)
class CallAudio:
    call_sid: str
    host: str
    tracks: dict[str, TrackAudio]
    incomplete: str | None  # why some audio was not kept, if any


class CallAudioRecorder:
    """Appends one call's frames to its folder (see the module docstring)."""

    def __init__(self, spool: AudioSpool, folder: Path, tracks: Sequence[str]) -> None:
        self._spool = spool
        self.folder = folder
        self._fds: dict[str, int] = {}
        self._index_fds: dict[str, int] = {}
        self._buffers: dict[str, bytearray] = {}
        self._next_ms: dict[str, int | None] = {}
        self._offsets: dict[str, int] = {}
        self.stopped: str | None = None
        self.bytes_written = 0
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        for track in tracks:
            self._fds[track] = os.open(folder / f"{track}.ulaw", flags, 0o600)
            self._index_fds[track] = os.open(folder / f"{track}.idx", flags, 0o600)
            self._buffers[track] = bytearray()
            self._next_ms[track] = None
            self._offsets[track] = os.fstat(self._fds[track]).st_size

    def append(self, track: str, start_ms: int, payload: bytes) -> None:
        """One frame at ``start_ms`` on the stream clock. The hot path: a buffer append."""
        buffer = self._buffers.get(track)
        if buffer is None or self.stopped is not None:
            return
        if start_ms != self._next_ms[track]:
            self._mark(track, start_ms)
        buffer += payload
        self._next_ms[track] = start_ms + len(payload) // BYTES_PER_MS
        if len(buffer) >= FLUSH_BYTES:
            self._flush(track)

    def _mark(self, track: str, start_ms: int) -> None:
        offset = self._offsets[track] + len(self._buffers[track])
        try:
            os.write(self._index_fds[track], f"{offset} {start_ms}\n".encode())
        except OSError as exc:
            self._stop(f"audio index not written: {exc.strerror}")

    def _flush(self, track: str) -> None:
        buffer = self._buffers[track]
        if not buffer or self.stopped is not None:
            return
        if not self._spool.reserve(len(buffer)):
            self._stop(f"audio spool full ({self._spool.max_bytes // 2**20} MB)")
            return
        try:
            os.write(self._fds[track], buffer)
        except OSError as exc:
            self._stop(f"audio not written: {exc.strerror}")
            return
        self._offsets[track] += len(buffer)
        self.bytes_written += len(buffer)
        buffer.clear()

    def _stop(self, reason: str) -> None:
        self.stopped = reason
        for buffer in self._buffers.values():
            buffer.clear()
        with contextlib.suppress(OSError):
            (self.folder / INCOMPLETE_FILE).write_text(reason + "\n", encoding="utf-8")
        log.warning("postcall.audio_stopped", folder=self.folder.name, reason=reason)

    async def close(self) -> None:
        """Write what is buffered and fsync the files (off the event loop)."""
        for track in list(self._buffers):
            self._flush(track)
        fds = [*self._fds.values(), *self._index_fds.values()]
        self._fds.clear()
        self._index_fds.clear()
        self._buffers.clear()
        if fds:
            await asyncio.get_running_loop().run_in_executor(None, _sync_and_close, fds)


def _sync_and_close(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.fsync(fd)
        with contextlib.suppress(OSError):
            os.close(fd)


class AudioSpool:
    """The folder of kept call audio, its size limit and its host name."""

    def __init__(self, folder: Path, max_bytes: int, host: str | None = None) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.host = host or socket.gethostname()
        self._used: int | None = None

    # writing ----------------------------------------------------------------------------------

    def open(self, call_sid: str, tracks: Sequence[str]) -> CallAudioRecorder | None:
        """A recorder for a new call (None, logged, if the folder cannot be made)."""
        folder = self.folder / folder_name(call_sid)
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            meta = {
                "call_sid": call_sid,
                "host": self.host,
                "tracks": list(tracks),
                "format": "ulaw_8000",
                "created_at": time.time(),
            }
            (folder / META_FILE).write_text(json.dumps(meta), encoding="utf-8")
            return CallAudioRecorder(self, folder, tracks)
        except OSError as exc:
            log.error("postcall.audio_not_kept", call_sid=call_sid, error=str(exc))
            return None

    def reserve(self, size: int) -> bool:
        """Count ``size`` more bytes against the limit; False when it would pass it."""
        if self._used is None:
            self._used = self.used_bytes()
        if self._used + size > self.max_bytes:
            return False
        self._used += size
        return True

    def used_bytes(self) -> int:
        total = 0
        if self.folder.is_dir():
            for path in self.folder.rglob("*"):
                with contextlib.suppress(OSError):
                    if path.is_file():
                        total += path.stat().st_size
        return total

    # reading and erasing --------------------------------------------------------------------

    def read(self, call_sid: str) -> CallAudio | None:
        """The call's audio, None if none is kept here."""
        folder = self.folder / folder_name(call_sid)
        try:
            meta: dict[str, Any] = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        tracks = {track: _read_track(folder, track) for track in meta.get("tracks", [])}
        incomplete = None
        with contextlib.suppress(OSError):
            incomplete = (folder / INCOMPLETE_FILE).read_text(encoding="utf-8").strip()
        return CallAudio(call_sid, str(meta.get("host", "")), tracks, incomplete)

    def delete(self, call_sid: str) -> bool:
        """Erase the call's audio; False if there was none."""
        folder = self.folder / folder_name(call_sid)
        if not folder.exists():
            return False
        size = 0
        for path in folder.glob("*"):
            with contextlib.suppress(OSError):
                size += path.stat().st_size
        shutil.rmtree(folder, ignore_errors=True)
        if self._used is not None:
            self._used = max(0, self._used - size)
        return True

    def kept(self) -> list[tuple[str, float]]:
        """``(call_sid, created_at)`` of every call whose audio is kept here."""
        found: list[tuple[str, float]] = []
        if not self.folder.is_dir():
            return found
        for folder in self.folder.iterdir():
            try:
                meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
                found.append((str(meta["call_sid"]), float(meta["created_at"])))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return found


def _read_track(folder: Path, track: str) -> TrackAudio:
    try:
        data = (folder / f"{track}.ulaw").read_bytes()
    except OSError:
        return TrackAudio(track, ())
    marks: list[tuple[int, int]] = []
    with contextlib.suppress(OSError):
        for line in (folder / f"{track}.idx").read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit() and parts[1].lstrip("-").isdigit():
                marks.append((int(parts[0]), int(parts[1])))
    if not marks and data:
        marks = [(0, 0)]
    pieces: list[tuple[int, bytes]] = []
    marks = sorted(mark for mark in marks if mark[0] < len(data))
    for index, (offset, start_ms) in enumerate(marks):
        end = marks[index + 1][0] if index + 1 < len(marks) else len(data)
        if end > offset:
            pieces.append((start_ms, data[offset:end]))
    return TrackAudio(track, tuple(pieces))
