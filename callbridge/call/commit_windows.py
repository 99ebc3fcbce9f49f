"""The commit-window ledger of one call's Scribe stream: what was said, sent and answered.

A *commit window* is the audio between two commits. :class:`CommitWindowLedger` takes the
serialised stream from the turn segmenter (audio tagged with its segment, commits), keeps
each window's segment audio until its transcript arrives, and says what goes out next on
the connection: whole-frame chunks of about ``chunk_ms``, commits, keepalive silence.

It also owns four things that must agree with each other, which is why they live together:

- **Retention and replay.** Every unanswered window keeps its audio (bounded by
  ``retain_limit_ms``; beyond it the oldest goes and is counted, never silently). A new
  connection replays the unanswered windows, commits included, primed with the last text.
- **Matching.** Each ``committed_transcript`` answers the oldest commit sent on the
  connection; one that answers nothing is the service's own auto-commit, which covers what
  was sent of the oldest unanswered window.
- **The session clock and word times.** Scribe times words on the session's audio: every
  byte sent on the connection, including keepalive and padding silence that is not call
  audio. Each window records where its audio landed on that clock and which silence was
  inserted inside it, so word times map back to the stream clock exactly.
- **The 0.3 s commit rule** (:mod:`callbridge.scribe.commit_rule`). Every commit handed out
  carries at least :data:`~callbridge.scribe.commit_rule.COMMIT_FLOOR_MS` of audio sent on
  the connection since the previous one: a short window gets silence first, placed on the
  session clock after its words. :class:`~callbridge.scribe.commit_rule.CommitLedger`
  refuses a commit below the floor, so the rule is an invariant here, not a convention of
  the caller.

Everything is synchronous and does no I/O: the connection loop in
:mod:`callbridge.call.transcriber` sends what it is handed and reports what arrives. The only
clock read is for the commit-latency metric, and it is injected. ``tests/test_commit_windows.py``
drives replay, matching and word times directly, like ``tests/test_turns.py``.
"""

from __future__ import annotations

import contextlib
import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from callbridge.audio.ulaw import BYTES_PER_MS, FRAME_BYTES, silence
from callbridge.call.turns import PlannedSegment
from callbridge.metrics import DISABLED, BridgeMetrics
from callbridge.models import Word
from callbridge.scribe.commit_rule import CommitLedger
from callbridge.scribe.messages import CommittedTranscript, ScribeWord

IDLE_BACKLOG_MS = 1000
"""Idle silence is not queued while this much audio waits to be sent."""


@dataclass(frozen=True, slots=True)
class SegmentTranscript:
    """One segment's transcript as Scribe committed it (``text`` empty: no words heard)."""

    segment: PlannedSegment
    text: str
    words: tuple[Word, ...]
    language_code: str | None


class Step(enum.Enum):
    """What the sender should do next."""

    IDLE = "idle"  # nothing queued: keep the session warm if it is quiet, else wait
    WAIT = "wait"  # a short chunk is queued: wait for the rest of it (or a flush)
    AUDIO = "audio"  # take_audio()
    COMMIT = "commit"  # take_commit()


@dataclass(slots=True, eq=False)
class _Window:
    """The audio between two commits; ``segment`` is None for idle silence."""

    segment: PlannedSegment | None = None
    audio: bytearray = field(default_factory=bytearray)  # retained bytes [base, base + len)
    base: int = 0  # absolute offset of audio[0] within the segment's audio
    audio_stream_ms: int = 0  # stream time of absolute offset 0
    session_ms: float | None = None  # session-clock time of absolute offset 0, this connection
    # Silence sent inside this window on this connection (keepalive, commit padding):
    # (session ms where it starts, its ms). It is on the session clock, not the stream's.
    inserted: list[tuple[float, float]] = field(default_factory=list)
    # Retained audio dropped while the live connection still had it (queued or sent):
    # lost only if that connection fails before answering the window.
    at_risk_ms: int = 0
    committed: bool = False
    commit_sent_at: float | None = None  # clock() when its commit went out, this connection
    texts: list[str] = field(default_factory=list)
    words: list[Word] = field(default_factory=list)
    language_code: str | None = None

    def collect(self, message: CommittedTranscript) -> None:
        """Keep an answer's text and its words, mapped to the stream clock."""
        text = message.text.strip()
        if text:
            self.texts.append(text)
        self.language_code = message.language_code or self.language_code
        if self.segment is None or self.session_ms is None:
            return
        self.words.extend(
            map_word(w, self.audio_stream_ms, self.session_ms, self.inserted, self.segment)
            for w in message.words
            if w.type == "word"
        )

    def new_connection(self) -> int:
        """Forget this window's place on the old connection's session clock. Returns the
        audio at risk there (dropped from retention, never answered): lost now."""
        self.session_ms = None
        self.inserted.clear()
        at_risk, self.at_risk_ms = self.at_risk_ms, 0
        return at_risk

    def drop_head(self, nbytes: int) -> int:
        """Drop up to ``nbytes`` of the oldest retained audio: returns its ms."""
        drop = min(len(self.audio), nbytes)
        del self.audio[:drop]
        self.base += drop
        return drop // BYTES_PER_MS

    def release_audio(self) -> int:
        """Forget the retained audio (answered): returns its ms."""
        ms = len(self.audio) // BYTES_PER_MS
        self.base += len(self.audio)
        self.audio.clear()
        self.at_risk_ms = 0
        return ms


@dataclass(slots=True)
class _Chunk:
    data: bytes
    window: _Window
    offset: int  # absolute byte offset within the window's segment audio, -1 for idle silence


class _Commit:
    __slots__ = ("window",)

    def __init__(self, window: _Window) -> None:
        self.window = window


def _nothing() -> None:
    return None


def _remove(windows: deque[_Window], window: _Window) -> None:
    """Take ``window`` out of ``windows`` if it is there (it is usually the oldest)."""
    if windows and windows[0] is window:
        windows.popleft()
        return
    with contextlib.suppress(ValueError):
        windows.remove(window)


Resolution = tuple["_Window | None", CommittedTranscript]
"""A transcript and the window it answers (None: the service committed by itself)."""


class _SessionClock:
    """One connection's session clock, and its count for the 0.3 s commit rule.

    Scribe times words on the session's audio: every byte sent on the connection, call
    audio or not. The clock places each window's audio on it and records the silence
    inserted inside a window (keepalive, commit padding), which is session audio but no
    call audio.
    """

    __slots__ = ("_rule", "ms", "open_window")

    def __init__(self) -> None:
        self.ms = 0.0  # audio sent on this connection so far
        self.open_window: _Window | None = None  # the segment window whose audio is on air
        self._rule = CommitLedger(BYTES_PER_MS, FRAME_BYTES)

    def place(self, window: _Window, offset: int, ahead: int) -> None:
        """Segment audio at absolute byte ``offset`` of ``window`` goes out ``ahead`` bytes
        after what the clock has counted so far."""
        self.open_window = window
        if window.session_ms is None:
            # The window's origin (absolute offset 0 of its segment audio) is ``offset``
            # bytes before this audio's place on the clock. That is before this
            # connection's start when the window's head was dropped or answered by an
            # auto-commit, which is fine: words map back through the same origin. Kept in
            # bytes until the last division so that no rounding creeps in.
            window.session_ms = (self.ms * BYTES_PER_MS + ahead - offset) / BYTES_PER_MS

    def sent(self, nbytes: int) -> None:
        self.ms += nbytes / BYTES_PER_MS
        self._rule.sent(nbytes)

    def insert_silence(self, window: _Window | None, nbytes: int) -> None:
        if window is not None and window.session_ms is not None:
            window.inserted.append((self.ms, nbytes / BYTES_PER_MS))
        self.sent(nbytes)

    def commit(self, window: _Window) -> bytes:
        """The silence to send before ``window``'s commit so that it carries the floor
        (after its words, so no word moves); counts the commit."""
        padding = silence(self._rule.padding_bytes() // BYTES_PER_MS)
        if padding:
            self.insert_silence(window, len(padding))
        self._rule.committed(len(padding) // BYTES_PER_MS)  # raises below the floor
        if window is self.open_window:
            self.open_window = None
        return padding

    def service_committed(self) -> None:
        self._rule.service_committed()


class _AnswerMatcher:
    """Which window each committed transcript answers, on one connection.

    Commits are answered in order. With timestamps, each is answered twice (plain, then
    with words): the plain answer is held until its twin comes, or is settled as it is
    when the twin will not come. An answer to no commit is the service's own auto-commit.
    """

    __slots__ = ("_awaiting", "_provisional", "_timestamps", "_unprompted")

    def __init__(self, include_timestamps: bool, unprompted: Callable[[], None]) -> None:
        self._timestamps = include_timestamps
        self._unprompted = unprompted
        self._awaiting: deque[_Window] = deque()  # commits sent, oldest first
        self._provisional: Resolution | None = None

    def reset(self) -> None:
        self._awaiting.clear()
        self._provisional = None

    def commit_sent(self, window: _Window) -> None:
        self._awaiting.append(window)

    def match(self, message: CommittedTranscript) -> Resolution | None:
        """The answer to apply now, if any (a held plain answer may be settled)."""
        if not self._timestamps:
            return self._next_answered(), message
        if not message.with_timestamps:
            settled = self.settle()
            self._provisional = (self._next_answered(), message)
            return settled
        if self._provisional is not None:
            window, _ = self._provisional
            self._provisional = None
            return window, message
        return self._next_answered(), message

    def settle(self) -> Resolution | None:
        held, self._provisional = self._provisional, None
        return held

    def _next_answered(self) -> _Window | None:
        if self._awaiting:
            return self._awaiting.popleft()
        self._unprompted()
        return None


class _Outbox:
    """What is queued for the current connection and not sent yet: chunks and commits."""

    __slots__ = ("_chunk_bytes", "_chunk_ms", "_items", "_wake", "ms")

    def __init__(self, chunk_ms: int, wake: Callable[[], None]) -> None:
        self._chunk_ms = chunk_ms
        self._chunk_bytes = chunk_ms * BYTES_PER_MS
        self._wake = wake
        self._items: deque[_Chunk | _Commit] = deque()
        self.ms = 0  # audio queued

    def __bool__(self) -> bool:
        return bool(self._items)

    def audio(self, data: bytes, window: _Window, offset: int) -> None:
        """More than a chunk (a gap's silence) goes in pieces of a chunk, so that Scribe
        never gets an outsized chunk."""
        step = self._chunk_bytes
        if len(data) <= step:
            self._add(_Chunk(data, window, offset), len(data))
            return
        for start in range(0, len(data), step):
            piece = data[start : start + step]
            self._add(_Chunk(piece, window, offset + start if offset >= 0 else -1), len(piece))

    def _add(self, chunk: _Chunk, size: int) -> None:
        self._items.append(chunk)
        self.ms += size // BYTES_PER_MS
        # Wake the sender for full chunks only; a short chunk left by a paused stream is
        # flushed by the pacer's tick.
        if self.ms >= self._chunk_ms:
            self._wake()

    def commit(self, window: _Window) -> None:
        self._items.append(_Commit(window))

    def replay(self, window: _Window) -> None:
        """A window's retained audio again, in frames, and its commit if it has one."""
        for start in range(0, len(window.audio), FRAME_BYTES):
            data = bytes(window.audio[start : start + FRAME_BYTES])
            self._items.append(_Chunk(data, window, window.base + start))
            self.ms += len(data) // BYTES_PER_MS
        if window.committed:
            self._items.append(_Commit(window))

    def clear(self) -> None:
        self._items.clear()
        self.ms = 0

    def next_step(self, short_ok: bool) -> Step:
        items = self._items
        if not items:
            return Step.IDLE
        if isinstance(items[0], _Commit):
            return Step.COMMIT
        if short_ok or self._chunk_ready():
            return Step.AUDIO
        return Step.WAIT

    def _chunk_ready(self) -> bool:
        """A full chunk is waiting, or a commit that must not wait for one."""
        size = 0
        for item in self._items:
            if isinstance(item, _Commit):
                return True
            size += len(item.data)
            if size >= self._chunk_bytes:
                return True
        return False

    def take_audio(self, session: _SessionClock) -> bytes:
        """Up to a chunk of the queued audio, placed on the session clock."""
        items = self._items
        parts: list[bytes] = []
        size = 0
        while items and size < self._chunk_bytes and isinstance(items[0], _Chunk):
            chunk = items.popleft()
            assert isinstance(chunk, _Chunk)
            if chunk.offset >= 0:  # segment audio (idle silence has no place to map)
                session.place(chunk.window, chunk.offset, size)
            parts.append(chunk.data)
            size += len(chunk.data)
        self.ms = max(0, self.ms - size // BYTES_PER_MS)
        session.sent(size)
        return b"".join(parts)

    def take_commit(self) -> _Window:
        head = self._items.popleft()
        assert isinstance(head, _Commit)
        return head.window


class CommitWindowLedger:
    """Commit windows of one call: intake, retention, replay, matching, word-time mapping."""

    def __init__(
        self,
        deliver: Callable[[SegmentTranscript], None],
        *,
        chunk_ms: int = 100,
        retain_limit_ms: int = 120_000,
        include_timestamps: bool = True,
        language_code: str | None = None,
        wake: Callable[[], None] = _nothing,
        clock: Callable[[], float] = time.monotonic,
        metrics: BridgeMetrics = DISABLED,
    ) -> None:
        self._deliver_to = deliver
        self._chunk_ms = chunk_ms
        self._retain_limit_ms = retain_limit_ms
        self._wake = wake  # the sender has something to look at
        self._clock = clock
        self._metrics = metrics
        self._windows: deque[_Window] = deque()  # unanswered, oldest first
        self._current: _Window | None = None  # still taking audio
        self._outbox = _Outbox(chunk_ms, wake)  # not yet sent on this connection
        self._matcher = _AnswerMatcher(include_timestamps, self._service_committed)
        self._retained_ms = 0
        self._last_text = ""
        self._connected = False
        self._closing = False
        self._dead = False
        self._given_up_on: PlannedSegment | None = None  # the segment on air at give_up()
        self._session = _SessionClock()  # this connection's
        self.answers = 0  # windows answered on the current connection
        self.degraded: str | None = None
        self.lost_ms = 0
        self.untranscribed = 0  # turns never transcribed (Scribe gone for good)
        self.language_code = language_code

    # ------------------------------------------------------------------ intake
    def audio(self, data: bytes, segment: PlannedSegment | None) -> None:
        """Audio of ``segment`` (None: idle silence between segments). The per-frame path."""
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
            if self._connected and self._outbox.ms < IDLE_BACKLOG_MS:
                self._outbox.audio(data, window, -1)
            return
        if window.segment is None:
            window.segment = segment
            window.audio_stream_ms = segment.audio_start_ms
        offset = window.base + len(window.audio)
        window.audio += data
        self._retained_ms += len(data) // BYTES_PER_MS
        if self._connected:  # otherwise the next connection replays it from the window
            self._outbox.audio(data, window, offset)
        if self._retained_ms > self._retain_limit_ms:
            self._drop_oldest_audio()

    def commit(self, segment: PlannedSegment | None) -> None:
        """The window taking audio ends (``segment`` None: an idle window)."""
        if self._dead:
            # The turn still happened: count it, untranscribed (unless give_up() already
            # accounted for it, when it was taking audio at that moment).
            if segment is not None and segment is not self._given_up_on:
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
            self._outbox.commit(window)
        self._wake()

    def close(self) -> None:
        """The call is ending: commit the segment still taking audio, drop trailing idle
        silence (it needs no answer); :attr:`finished` once every window is answered."""
        self._closing = True
        current, self._current = self._current, None
        if current is not None and not current.committed:
            if current.segment is None:
                _remove(self._windows, current)
            else:
                self._current = current
                self.commit(current.segment)
        self._wake()

    @property
    def finished(self) -> bool:
        """Closing, and nothing is left to answer."""
        return self._closing and not self._windows

    @property
    def unanswered(self) -> int:
        return sum(1 for w in self._windows if w.segment is not None)

    @property
    def backlog_ms(self) -> int:
        """Audio queued for the current connection and not yet sent."""
        return self._outbox.ms

    @property
    def has_backlog(self) -> bool:
        return bool(self._outbox)

    # -------------------------------------------------------------- connection
    def connection_opened(self) -> str | None:
        """A new connection: queue every unanswered window again, then carry on live.
        Returns the context to prime it with (``previous_text``), if any."""
        self._outbox.clear()
        self._matcher.reset()
        self._session = _SessionClock()
        self.answers = 0
        kept: deque[_Window] = deque()
        for window in self._windows:
            self._count_lost(window.new_connection())  # at risk on the failed connection
            if window.segment is None:
                continue  # idle silence: nothing to replay
            kept.append(window)
            self._outbox.replay(window)
        if self._current is not None and self._current.segment is None:
            kept.append(self._current)
        self._windows = kept
        self._connected = True
        self._wake()
        return self._last_text or None

    def connection_lost(self) -> None:
        """The connection is gone; audio now waits in its windows for the next one."""
        self._connected = False

    def settle(self) -> None:
        """A plain transcript whose timestamped twin will not come (the connection died)
        is delivered as it is."""
        held = self._matcher.settle()
        if held is not None:
            self._resolve(*held)

    def give_up(self, reason: str) -> None:
        """Scribe is gone for good: what an auto-commit answered is kept, the rest counted."""
        self._dead = True
        self._connected = False
        self.degraded = self.degraded or reason
        self.settle()
        if self._current is not None:
            self._given_up_on = self._current.segment
        for window in list(self._windows):
            if window.segment is None:
                continue
            self._count_lost(window.at_risk_ms + len(window.audio) // BYTES_PER_MS)
            window.at_risk_ms = 0
            if window.texts:
                self._deliver(window, " ".join(window.texts), window.language_code)
            else:
                self.untranscribed += 1
        self._windows.clear()
        self._current = None
        self._outbox.clear()
        self._wake()

    # ----------------------------------------------------------------- sending
    def next_step(self, flush: bool) -> Step:
        """What goes out next. A short chunk goes only before a commit, at the call's end,
        or when ``flush`` (the stream paused mid-chunk)."""
        return self._outbox.next_step(short_ok=self._closing or flush)

    def take_audio(self) -> bytes:
        """Up to a chunk of queued audio (μ-law), placed on the session clock."""
        return self._outbox.take_audio(self._session)

    def take_commit(self) -> bytes:
        """The queued commit: returns the silence (μ-law, maybe empty) to send before it so
        that it carries the commit floor; the commit itself goes right after."""
        window = self._outbox.take_commit()
        self._matcher.commit_sent(window)
        padding = self._session.commit(window)
        window.commit_sent_at = self._clock()
        return padding

    def take_keepalive(self) -> bytes:
        """One chunk of silence to keep a quiet session open."""
        data = silence(self._chunk_ms)
        self._session.insert_silence(self._session.open_window, len(data))
        return data

    # --------------------------------------------------------------- retention
    def _drop_oldest_audio(self) -> None:
        """Retention is bounded: past it the oldest unanswered audio goes, and is counted.

        While connected, every retained byte is also queued or sent on the live connection:
        dropping it only means it can't be replayed, so it is lost only if that connection
        fails before answering (see :meth:`connection_opened`). Otherwise it is lost now.
        """
        limit = self._retain_limit_ms
        for window in self._windows:
            while window.audio and self._retained_ms > limit:
                dropped_ms = window.drop_head(FRAME_BYTES)
                self._retained_ms -= dropped_ms
                if self._connected:
                    window.at_risk_ms += dropped_ms
                else:
                    self._count_lost(dropped_ms)
            if self._retained_ms <= limit:
                break

    def _count_lost(self, ms: int) -> None:
        if ms <= 0:
            return
        self.lost_ms += ms
        if self.degraded is None:
            self.degraded = "audio dropped: Scribe did not answer for longer than the buffer holds"

    # ---------------------------------------------------------------- matching
    def segment_on_air(self) -> PlannedSegment | None:
        """The segment whose uncommitted audio Scribe is hearing: the oldest uncommitted."""
        for window in self._windows:
            if window.segment is not None and not window.committed:
                return window.segment
        return None

    def committed(self, message: CommittedTranscript) -> None:
        """A committed transcript arrived."""
        resolution = self._matcher.match(message)
        if resolution is not None:
            self._resolve(*resolution)

    def _service_committed(self) -> None:
        # The service committed by itself (the 90 s auto-commit): its count restarted.
        self._session.service_committed()

    def _resolve(self, window: _Window | None, message: CommittedTranscript) -> None:
        if message.language_code:
            self.language_code = message.language_code
        if window is None:
            # Auto-commit: it covers what was sent of the oldest unanswered window so far.
            target = self._windows[0] if self._windows else None
            if target is None or target.segment is None:
                return
            target.collect(message)
            self._retained_ms -= target.release_audio()
            self.answers += 1
            return
        window.collect(message)
        self.answers += 1
        if window.commit_sent_at is not None:
            self._metrics.commit_latency.observe(self._clock() - window.commit_sent_at)
            window.commit_sent_at = None  # with timestamps, one answer comes in two messages
        _remove(self._windows, window)
        self._retained_ms -= len(window.audio) // BYTES_PER_MS
        if window.segment is not None:
            self._deliver(window, " ".join(t for t in window.texts if t), window.language_code)
        if self._closing:
            self._wake()  # the sender returns once the last window is answered

    def _deliver(self, window: _Window, text: str, language_code: str | None) -> None:
        assert window.segment is not None
        if text:
            self._last_text = text
        self._deliver_to(
            SegmentTranscript(
                window.segment, text, tuple(window.words), language_code or self.language_code
            )
        )


def map_word(
    word: ScribeWord,
    audio_stream_ms: int,
    session_ms: float,
    inserted: list[tuple[float, float]],
    segment: PlannedSegment,
) -> Word:
    """A word timed on the session clock, on the stream clock instead.

    ``session_ms`` is where the window's segment audio starts on the session clock and
    ``audio_stream_ms`` where it starts on the stream clock; between the two clocks lies
    only the silence inserted inside the window before the word (keepalive, padding),
    which is session audio but no stream audio. Clamped to the segment's audio, since
    Scribe's times are estimates.
    """

    def to_stream(seconds: float) -> int:
        at = seconds * 1000.0
        inserted_ms = sum(length for start, length in inserted if start < at)
        stream_ms = audio_stream_ms + (at - session_ms - inserted_ms)
        return round(min(max(stream_ms, segment.audio_start_ms), segment.audio_end_ms))

    return Word(
        text=word.text,
        start_ms=to_stream(word.start_s),
        end_ms=to_stream(word.end_s),
        type=word.type,
        logprob=word.logprob,
    )
