"""One call's Scribe stream: send the serialised audio, match commits to segments, never lose one.

:class:`SegmentTranscriber` is the :class:`~callbridge.turns.SegmentOutput` of a call's
turn segmenter. Audio and commits are appended synchronously (the per-frame hot path: a
deque append, nothing else) and a send task batches them into ~100 ms chunks of whole
frames; a receive task matches each ``committed_transcript`` to the *commit window* it
answers (the audio between two commits), in order.

Every window keeps its segment's audio until its transcript has arrived, so that when the
connection fails for a retryable reason, a new connection replays the unanswered windows,
commits included, primed with ``previous_text``; a fatal error marks the call degraded
instead. The retained audio is bounded; beyond the bound the oldest audio is dropped and
counted, never silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from callbridge.audio.ulaw import BYTES_PER_MS, silence, ulaw_to_pcm16
from callbridge.metrics import DISABLED, BridgeMetrics
from callbridge.models import Word
from callbridge.scribe.connection import ScribeConnection
from callbridge.scribe.errors import ScribeError
from callbridge.scribe.messages import CommittedTranscript, PartialTranscript, ScribeWord
from callbridge.scribe.options import ScribeOptions
from callbridge.turns import PlannedSegment

_TICK_S = 0.25  # how often the ticker looks: the longest a paused stream's tail waits
_IDLE_BACKLOG_MS = 1000  # idle silence is not queued while this much audio waits to be sent

SegmentCallback = Callable[[PlannedSegment, str, tuple[Word, ...], str | None], None]
Connect = Callable[[ScribeOptions], Awaitable[ScribeConnection]]
PartialCallback = Callable[[PlannedSegment, str], None]  # the segment on air, its text so far
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class TranscriberSettings:
    chunk_ms: int = 100
    min_commit_interval_s: float = 1.0
    max_send_speed: float = 4.0  # backlog is sent at most this much faster than real time
    final_transcript_timeout_s: float = 3.0
    retain_limit_ms: int = 120_000
    # Idle sockets have been seen closing "after a few seconds" without audio; Twilio's
    # own silence frames are not guaranteed, so keep well inside that.
    keepalive_after_s: float = 1.0
    backoff_initial_s: float = 0.25
    backoff_max_s: float = 8.0


@dataclass(slots=True, eq=False)
class _Window:
    """The audio between two commits; ``segment`` is None for idle silence."""

    segment: PlannedSegment | None = None
    audio: bytearray = field(default_factory=bytearray)  # retained bytes [base, base + len)
    base: int = 0  # absolute offset of audio[0] within the segment's audio
    audio_stream_ms: int = 0  # stream time of absolute offset 0
    session_ms: float | None = None  # session-audio time of absolute offset 0, this connection
    # Keepalive silence sent inside this window on this connection: (session ms, ms).
    inserted: list[tuple[float, float]] = field(default_factory=list)
    # Retained audio dropped while the live connection still had it (queued or sent):
    # lost only if that connection fails before answering the window.
    at_risk_ms: int = 0
    committed: bool = False
    commit_sent_at: float | None = None  # time.monotonic() of its commit, this connection
    texts: list[str] = field(default_factory=list)
    words: list[Word] = field(default_factory=list)
    language_code: str | None = None


@dataclass(slots=True)
class _Chunk:
    data: bytes
    window: _Window
    offset: int  # absolute byte offset within the window's segment audio, -1 for idle silence


class _Commit:
    __slots__ = ("window",)

    def __init__(self, window: _Window) -> None:
        self.window = window


class SegmentTranscriber:
    """Streams a call's serialised segments to Scribe and hands back their transcripts."""

    def __init__(
        self,
        options: ScribeOptions,
        settings: TranscriberSettings,
        on_segment: SegmentCallback,
        *,
        connect: Connect = ScribeConnection.open,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        log: structlog.stdlib.BoundLogger | None = None,
        metrics: BridgeMetrics = DISABLED,
        on_partial: PartialCallback | None = None,
    ) -> None:
        self._options = options
        self._metrics = metrics
        self._on_partial = on_partial
        self._settings = settings
        self._on_segment = on_segment
        self._connect = connect
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._log = log or structlog.get_logger(__name__)
        self._windows: deque[_Window] = deque()  # unanswered, oldest first
        self._current: _Window | None = None  # still taking audio
        self._outbox: deque[_Chunk | _Commit] = deque()  # not yet sent on this connection
        self._outbox_ms = 0
        self._awaiting: deque[_Window] = deque()  # commits sent on this connection
        self._provisional: tuple[_Window | None, CommittedTranscript] | None = None
        self._wakeup = asyncio.Event()  # the sender has something to look at
        self._last_send = 0.0  # time.monotonic() of the last message on this connection
        self._flush_due = False  # set by the ticker: send a partial chunk now
        self._keepalive_due = False  # set by the ticker: the session has been quiet too long
        self._closing = False
        self._connected = False
        self._dead = False
        self._task: asyncio.Task[None] | None = None
        self._retained_ms = 0
        self._last_text = ""
        self._answers = 0  # windows answered on the current connection
        self.degraded: str | None = None
        self.lost_ms = 0
        self.untranscribed = 0  # turns never transcribed (Scribe gone for good)
        self.connections = 0
        self.reconnects = 0
        self.language_code: str | None = options.language_code or None

    # --------------------------------------------------------- SegmentOutput
    def audio(self, data: bytes, segment: PlannedSegment | None) -> None:
        if self._dead:
            if segment is not None:  # speech that can no longer be transcribed
                self.lost_ms += len(data) // BYTES_PER_MS
            return
        window = self._current
        if window is None:
            window = self._current = _Window()
            self._windows.append(window)
        if segment is None:
            # Idle silence only keeps a live session warm: none while audio waits to go.
            if self._connected and self._outbox_ms < _IDLE_BACKLOG_MS:
                self._enqueue_audio(data, window, -1)
            return
        if window.segment is None:
            window.segment = segment
            window.audio_stream_ms = segment.audio_start_ms
        offset = window.base + len(window.audio)
        window.audio += data
        self._retained_ms += len(data) // BYTES_PER_MS
        if self._connected:  # otherwise the next connection replays it from the window
            self._enqueue_audio(data, window, offset)
        if self._retained_ms > self._settings.retain_limit_ms:
            self._drop_oldest_audio()

    def commit(self, segment: PlannedSegment | None) -> None:
        if self._dead:
            if segment is not None:  # the turn still happened: count it, untranscribed
                self.untranscribed += 1
            return
        window = self._current
        if window is None:
            if segment is None:
                return
            window = _Window(segment=segment, audio_stream_ms=segment.audio_start_ms)
            self._windows.append(window)
        self._current = None
        window.committed = True
        if self._connected:
            self._outbox.append(_Commit(window))
        self._wakeup.set()

    def _enqueue_audio(self, data: bytes, window: _Window, offset: int) -> None:
        """Queue audio for the sender; more than a chunk (a gap's silence) goes in pieces of
        a chunk, so that Scribe never gets an outsized chunk."""
        step = self._settings.chunk_ms * BYTES_PER_MS
        if len(data) <= step:
            self._enqueue(_Chunk(data, window, offset), len(data))
            return
        for start in range(0, len(data), step):
            piece = data[start : start + step]
            self._enqueue(_Chunk(piece, window, offset + start if offset >= 0 else -1), len(piece))

    def _enqueue(self, chunk: _Chunk, size: int) -> None:
        self._outbox.append(chunk)
        self._outbox_ms += size // BYTES_PER_MS
        # Wake the sender for full chunks only; a short chunk left by a paused stream is
        # flushed by the ticker.
        if self._outbox_ms >= self._settings.chunk_ms:
            self._wakeup.set()

    # -------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="scribe-stream")

    async def drain(self, timeout_s: float) -> None:
        """Send everything, await the last transcripts (bounded), close the session."""
        self._closing = True
        current, self._current = self._current, None
        if current is not None and not current.committed:
            if current.segment is None:
                with contextlib.suppress(ValueError):  # trailing idle silence needs no answer
                    self._windows.remove(current)
            else:
                self._current = current
                self.commit(current.segment)
        self._wakeup.set()
        task = self._task
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._give_up("transcripts did not arrive before the drain timeout")

    async def abort(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def unanswered(self) -> int:
        return sum(1 for w in self._windows if w.segment is not None)

    # --------------------------------------------------------------- running
    async def _run(self) -> None:
        failures = 0
        while True:
            if self._closing and not self._windows:
                return
            try:
                conn = await self._connect(self._options)
            except ScribeError as exc:
                self._count_error(exc)
                if not exc.retryable:
                    self._fatal(exc)
                    return
                failures += 1
                self._log.warning(
                    "scribe.connect_retrying",
                    kind=exc.kind,
                    detail=exc.detail,
                    http_status=exc.http_status,
                    attempt=failures,
                )
                await self._backoff(failures, exc)
                continue
            except Exception as exc:  # a bug, not a Scribe failure: never retry it blindly
                self._log.exception("scribe.connect_crashed")
                self._give_up(f"transcriber failed: {type(exc).__name__}: {exc}")
                return
            self.connections += 1
            self._metrics.scribe_connections.inc()
            if self.connections > 1:
                self.reconnects += 1
                self._metrics.scribe_reconnects.inc()
            self._rebuild_outbox()
            self._answers = 0
            self._connected = True
            try:
                await self._serve(conn)
            except ScribeError as exc:
                self._connected = False
                self._count_error(exc)
                await conn.close()
                if not exc.retryable:
                    self._fatal(exc)
                    return
                if self._answers:
                    failures = 0  # the session worked for a while: start the backoff afresh
                failures += 1
                if exc.kind == "commit_throttled":
                    # Every commit the connection sends carries ≥ 0.3 s, so this is a bug
                    # (or a new rule of the service): the session is lost, replay recovers.
                    self._log.error(
                        "scribe.commit_throttled",
                        detail=exc.detail,
                        close_code=exc.close_code,
                        unanswered=self.unanswered,
                    )
                self._log.warning(
                    "scribe.retrying",
                    kind=exc.kind,
                    detail=exc.detail,
                    close_code=exc.close_code,
                    attempt=failures,
                    unanswered=self.unanswered,
                )
                self._settle_provisional()
                await self._backoff(failures, exc)
                continue
            except asyncio.CancelledError:
                self._connected = False
                _close_in_background(conn, 1001, "call aborted")
                raise
            except Exception as exc:  # a bug: degrade this call, keep the bridge running
                self._connected = False
                self._log.exception("scribe.stream_crashed")
                _close_in_background(conn, 1011, "client error")
                self._give_up(f"transcriber failed: {type(exc).__name__}: {exc}")
                return
            self._connected = False
            await conn.close(1000, "call ended")
            return

    async def _serve(self, conn: ScribeConnection) -> None:
        receiver = asyncio.create_task(self._receive(conn), name="scribe-receive")
        sender = asyncio.create_task(self._send(conn), name="scribe-send")
        ticker = asyncio.create_task(self._tick(), name="scribe-tick")
        try:
            # Either side returns only once the call is closing and every window is
            # answered; either one failing fails the connection.
            done, _ = await asyncio.wait({receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if exc is not None:
                    raise exc
        finally:
            for task in (receiver, sender, ticker):
                task.cancel()
            await asyncio.gather(receiver, sender, ticker, return_exceptions=True)

    async def _backoff(self, failures: int, exc: ScribeError) -> None:
        s = self._settings
        delay = min(s.backoff_max_s, s.backoff_initial_s * 2 ** (failures - 1))
        await self._sleep(self._rng.uniform(delay / 2, delay))

    def _count_error(self, exc: ScribeError) -> None:
        retryable = "true" if exc.retryable else "false"
        self._metrics.scribe_errors.labels(kind=exc.kind, retryable=retryable).inc()

    def _fatal(self, exc: ScribeError) -> None:
        self._log.error("scribe.failed", kind=exc.kind, detail=exc.detail, retryable=False)
        self._give_up(f"scribe {exc.kind}: {exc.detail}")

    def _give_up(self, reason: str) -> None:
        self._dead = True
        self._connected = False
        self.degraded = self.degraded or reason
        self._settle_provisional()
        untranscribed = [w for w in self._windows if w.segment is not None]
        for window in untranscribed:
            assert window.segment is not None
            self._count_lost(window.at_risk_ms + len(window.audio) // BYTES_PER_MS)
            window.at_risk_ms = 0
            if window.texts:  # an auto-commit answered part of it: that text is kept
                self._deliver(window, " ".join(window.texts), window.language_code)
            else:
                self.untranscribed += 1
        self._windows.clear()
        self._current = None
        self._outbox.clear()
        self._wakeup.set()

    # ------------------------------------------------------------------ send
    async def _send(self, conn: ScribeConnection) -> None:
        s = self._settings
        chunk_bytes = s.chunk_ms * BYTES_PER_MS
        pcm = self._options.audio_format == "pcm_8000"
        last_commit = -1e9
        self._last_send = time.monotonic()
        self._flush_due = self._keepalive_due = False
        budget_ms = 1000.0  # pacing allowance, refilled at max_send_speed × real time
        budget_at = time.monotonic()
        session_ms = 0.0
        open_window: _Window | None = None  # the segment window whose audio is on air
        outbox = self._outbox
        if self._last_text:
            # Replay context: allowed on a connection's first chunk only, so it goes first,
            # with no audio, whatever comes next (replayed audio, a commit, keepalive).
            await conn.send_audio(b"", previous_text=self._last_text[-50:])
        while True:
            if not outbox:
                if self._closing and not self._windows:
                    return
                if self._keepalive_due:
                    self._keepalive_due = False
                    if time.monotonic() - self._last_send >= s.keepalive_after_s:
                        await conn.send_audio(silence(s.chunk_ms))
                        if open_window is not None and open_window.session_ms is not None:
                            open_window.inserted.append((session_ms, float(s.chunk_ms)))
                        session_ms += s.chunk_ms
                        self._last_send = time.monotonic()
                    continue
                # Nothing to send: wait for more (or, when closing, for the answers); the
                # ticker keeps the session warm meanwhile.
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            head = outbox[0]
            if isinstance(head, _Commit):
                outbox.popleft()
                wait = s.min_commit_interval_s - (time.monotonic() - last_commit)
                if wait > 0:
                    await asyncio.sleep(wait)
                self._awaiting.append(head.window)
                # The connection pads a short window with silence (the 0.3 s rule); that
                # silence is on the session clock, after the window's words.
                padded_ms = await conn.commit()
                head.window.commit_sent_at = time.monotonic()
                self._metrics.scribe_commits.inc()
                if padded_ms:
                    if head.window.session_ms is not None:
                        head.window.inserted.append((session_ms, float(padded_ms)))
                    session_ms += padded_ms
                if head.window is open_window:
                    open_window = None
                last_commit = self._last_send = time.monotonic()
                continue
            if not (self._closing or self._flush_due or _chunk_ready(outbox, chunk_bytes)):
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # A full chunk, or a short one: before a commit, at the end, or after a pause
            # in the stream (the ticker's flush).
            self._flush_due = False
            parts: list[bytes] = []
            size = 0
            while outbox and isinstance(outbox[0], _Chunk) and size < chunk_bytes:
                chunk = outbox.popleft()
                assert isinstance(chunk, _Chunk)
                window = chunk.window
                if chunk.offset >= 0:
                    open_window = window
                    if window.session_ms is None:
                        window.session_ms = (
                            session_ms * BYTES_PER_MS + size - chunk.offset
                        ) / BYTES_PER_MS
                parts.append(chunk.data)
                size += len(chunk.data)
            self._outbox_ms = max(0, self._outbox_ms - size // BYTES_PER_MS)
            if not parts:
                continue
            data = b"".join(parts)
            ms = len(data) / BYTES_PER_MS
            now = time.monotonic()
            budget_ms = min(1000.0, budget_ms + (now - budget_at) * 1000.0 * s.max_send_speed)
            budget_at = now
            if budget_ms < ms:
                await asyncio.sleep((ms - budget_ms) / 1000.0 / s.max_send_speed)
                budget_ms = ms
                budget_at = time.monotonic()
            budget_ms -= ms
            await conn.send_audio(ulaw_to_pcm16(data) if pcm else data)
            session_ms += ms
            self._last_send = time.monotonic()

    async def _tick(self) -> None:
        """Wake the sender for what no frame will: a short chunk left waiting by a stream
        that paused, and keepalive silence. One timer per tick for the call, where a timeout
        on each of the sender's waits would cost two timers per chunk."""
        s = self._settings
        period = min(_TICK_S, s.keepalive_after_s / 2)
        while True:
            await asyncio.sleep(period)
            quiet_s = time.monotonic() - self._last_send
            if self._outbox:
                if quiet_s >= period:
                    self._flush_due = True
                    self._wakeup.set()
            elif quiet_s >= s.keepalive_after_s:
                self._keepalive_due = True
                self._wakeup.set()

    def _rebuild_outbox(self) -> None:
        """On a new connection: send every unanswered window again, then carry on live."""
        self._outbox.clear()
        self._awaiting.clear()
        self._provisional = None
        kept: deque[_Window] = deque()
        frame = 20 * BYTES_PER_MS
        for window in self._windows:
            window.session_ms = None
            window.inserted.clear()
            if window.at_risk_ms:  # the failed connection never answered it: now it is lost
                self._count_lost(window.at_risk_ms)
                window.at_risk_ms = 0
            if window.segment is None:
                continue  # idle silence: nothing to replay
            kept.append(window)
            for start in range(0, len(window.audio), frame):
                data = bytes(window.audio[start : start + frame])
                self._outbox.append(_Chunk(data, window, window.base + start))
            if window.committed:
                self._outbox.append(_Commit(window))
        if self._current is not None and self._current.segment is None:
            kept.append(self._current)
        self._windows = kept
        self._outbox_ms = (
            sum(len(c.data) for c in self._outbox if isinstance(c, _Chunk)) // BYTES_PER_MS
        )
        self._wakeup.set()

    def _drop_oldest_audio(self) -> None:
        """Retention is bounded: past it the oldest unanswered audio goes, and is counted.

        While connected, every retained byte is also queued or sent on the live connection:
        dropping it only means it can't be replayed, so it is lost only if that connection
        fails before answering (see :meth:`_rebuild_outbox`). Otherwise it is lost now.
        """
        limit = self._settings.retain_limit_ms
        for window in self._windows:
            while window.audio and self._retained_ms > limit:
                drop = min(len(window.audio), 20 * BYTES_PER_MS)
                del window.audio[:drop]
                window.base += drop
                self._retained_ms -= drop // BYTES_PER_MS
                if self._connected:
                    window.at_risk_ms += drop // BYTES_PER_MS
                else:
                    self._count_lost(drop // BYTES_PER_MS)
            if self._retained_ms <= limit:
                break

    def _count_lost(self, ms: int) -> None:
        if ms <= 0:
            return
        self.lost_ms += ms
        if self.degraded is None:
            self.degraded = "audio dropped: Scribe did not answer for longer than the buffer holds"

    # --------------------------------------------------------------- receive
    async def _receive(self, conn: ScribeConnection) -> None:
        while True:
            if self._closing and not self._windows:
                return
            message = await conn.receive()
            if isinstance(message, CommittedTranscript):
                self._on_committed(message)
            elif isinstance(message, PartialTranscript) and self._on_partial is not None:
                segment = self._segment_on_air()
                if segment is not None:
                    self._on_partial(segment, message.text)

    def _segment_on_air(self) -> PlannedSegment | None:
        """The segment whose uncommitted audio Scribe is hearing: the oldest uncommitted."""
        for window in self._windows:
            if window.segment is not None and not window.committed:
                return window.segment
        return None

    def _on_committed(self, message: CommittedTranscript) -> None:
        if not self._options.include_timestamps:
            self._resolve(self._next_answered(), message)
            return
        if not message.with_timestamps:
            self._settle_provisional()
            self._provisional = (self._next_answered(), message)
            return
        if self._provisional is not None:
            window, _ = self._provisional
            self._provisional = None
            self._resolve(window, message)
        else:
            self._resolve(self._next_answered(), message)

    def _next_answered(self) -> _Window | None:
        if self._awaiting:
            return self._awaiting.popleft()
        return None  # the service committed by itself

    def _settle_provisional(self) -> None:
        if self._provisional is not None:
            window, message = self._provisional
            self._provisional = None
            self._resolve(window, message)

    def _resolve(self, window: _Window | None, message: CommittedTranscript) -> None:
        if message.language_code:
            self.language_code = message.language_code
        if window is None:
            # Auto-commit: it covers what was sent of the oldest unanswered window so far.
            target = self._windows[0] if self._windows else None
            if target is None or target.segment is None:
                return
            self._collect(target, message)
            self._retained_ms -= len(target.audio) // BYTES_PER_MS
            target.base += len(target.audio)
            target.audio.clear()
            target.at_risk_ms = 0
            self._answers += 1
            return
        self._collect(window, message)
        self._answers += 1
        if window.commit_sent_at is not None:
            self._metrics.commit_latency.observe(time.monotonic() - window.commit_sent_at)
            window.commit_sent_at = None  # with timestamps, one answer comes in two messages
        if self._windows and self._windows[0] is window:
            self._windows.popleft()
        else:
            with contextlib.suppress(ValueError):
                self._windows.remove(window)
        self._retained_ms -= len(window.audio) // BYTES_PER_MS
        if window.segment is not None:
            self._deliver(window, " ".join(t for t in window.texts if t), window.language_code)
        if self._closing:
            self._wakeup.set()  # the sender returns once the last window is answered

    def _collect(self, window: _Window, message: CommittedTranscript) -> None:
        text = message.text.strip()
        if text:
            window.texts.append(text)
        window.language_code = message.language_code or window.language_code
        if window.segment is None or window.session_ms is None:
            return
        window.words.extend(
            _map_word(w, window.audio_stream_ms, window.session_ms, window.inserted, window.segment)
            for w in message.words
            if w.type == "word"
        )

    def _deliver(self, window: _Window, text: str, language_code: str | None) -> None:
        assert window.segment is not None
        if text:
            self._last_text = text
        self._on_segment(
            window.segment, text, tuple(window.words), language_code or self.language_code
        )


_CLOSERS: set[asyncio.Task[None]] = set()


def _close_in_background(conn: ScribeConnection, code: int, reason: str) -> None:
    """Close a connection without waiting for it (the caller is being cancelled)."""

    async def close() -> None:
        with contextlib.suppress(Exception):
            await conn.close(code, reason)

    task = asyncio.get_running_loop().create_task(close())
    _CLOSERS.add(task)
    task.add_done_callback(_CLOSERS.discard)


def _chunk_ready(outbox: deque[_Chunk | _Commit], chunk_bytes: int) -> bool:
    """A full chunk is waiting, or a commit that must not wait for one."""
    size = 0
    for item in outbox:
        if isinstance(item, _Commit):
            return True
        size += len(item.data)
        if size >= chunk_bytes:
            return True
    return False


def _map_word(
    word: ScribeWord,
    audio_stream_ms: int,
    session_ms: float,
    inserted: list[tuple[float, float]],
    segment: PlannedSegment,
) -> Word:
    def to_stream(seconds: float) -> int:
        at = seconds * 1000.0
        keepalive = sum(length for start, length in inserted if start < at)  # not stream audio
        stream_ms = audio_stream_ms + (at - session_ms - keepalive)
        return round(min(max(stream_ms, segment.audio_start_ms), segment.audio_end_ms))

    return Word(
        text=word.text,
        start_ms=to_stream(word.start_s),
        end_ms=to_stream(word.end_s),
        type=word.type,
        logprob=word.logprob,
    )
