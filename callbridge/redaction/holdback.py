"""Redaction across a speaker's segments, with a bounded hold (one per call, pure).

Callers read card numbers in groups with pauses, so the groups land in consecutive
segments of the same speaker. :class:`SegmentRedactionStage` redacts each segment together
with the same speaker's segments before it: the released ones as context (kept in memory
only, as said, so a card found across a released segment still redacts the new part, and
a CVV follows only a real card), the held ones again. It holds back a segment that ends in
a digit run that may go on (see :func:`callbridge.redaction.detect.detect`) until the
speaker's next segment arrives, or at most ``hold_s``. Segments leave in the order they
arrived (another speaker's segment waits behind a held one), so the transcript order and
the sequence numbers given after this stage are the commit order. When a hold runs out,
the segment leaves as redacted as what is known allows, an unfinished card-like number
included (the fail-safe of :meth:`~callbridge.redaction.redactor.Redactor.redact`).

Time is whatever the caller passes (``now``): the call session uses its event loop's
clock and schedules :meth:`SegmentRedactionStage.expire` at :attr:`next_deadline`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from callbridge.models import Word
from callbridge.redaction.kinds import RedactionKind
from callbridge.redaction.redactor import Redacted, Redactor

T = TypeVar("T")
CONTEXT_CHARS = 400


@dataclass(slots=True)
class _Entry(Generic[T]):
    item: T
    track: str
    text: str
    words: tuple[Word, ...]
    arrived: float
    deadline: float
    held: bool = True
    redacted: Redacted | None = None


@dataclass(slots=True)
class StageStats:
    held: int = 0  # segments that were held back at least once
    expired: int = 0  # held segments released because their hold ran out
    max_added_s: float = 0.0  # the longest any segment waited in the stage
    found: dict[RedactionKind, int] = field(default_factory=dict)


class SegmentRedactionStage(Generic[T]):
    """Per call: segments (any payload ``T`` with its track, text and words) in, redacted
    segments out in arrival order, each held at most ``hold_s``."""

    def __init__(self, redactor: Redactor, hold_s: float) -> None:
        self._redactor = redactor
        self._hold_s = hold_s
        self._queue: deque[_Entry[T]] = deque()
        self._context_text: dict[str, str] = {}
        self._context_words: dict[str, str] = {}
        self.stats = StageStats()

    @property
    def next_deadline(self) -> float | None:
        """When :meth:`expire` must next run (None while nothing is held)."""
        deadlines = [entry.deadline for entry in self._queue if entry.held]
        return min(deadlines) if deadlines else None

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def push(
        self, item: T, track: str, text: str, words: Sequence[Word], now: float
    ) -> list[tuple[T, Redacted]]:
        """A new segment; returns the segments that may leave now, in order."""
        entry = _Entry(item, track, text, tuple(words), now, now + self._hold_s)
        self._queue.append(entry)
        self._resolve(track, final=False)
        if entry.held:
            self.stats.held += 1
        return self._release(now)

    def expire(self, now: float) -> list[tuple[T, Redacted]]:
        """Release every segment whose hold has run out (and what waits behind it)."""
        for track in {entry.track for entry in self._queue if entry.held}:
            group = self._group(track)
            expired = [i for i, entry in enumerate(group) if entry.deadline <= now]
            if not expired:
                continue
            last = expired[-1]
            self.stats.expired += last + 1
            self._settle(track, group, upto=last, final=True)
            self._resolve(track, final=False)
        return self._release(now)

    def flush(self, now: float) -> list[tuple[T, Redacted]]:
        """Nothing more will come (the call ended): release everything."""
        for track in {entry.track for entry in self._queue if entry.held}:
            group = self._group(track)
            self._settle(track, group, upto=len(group) - 1, final=True)
        return self._release(now)

    # ----------------------------------------------------------------------------------------

    def _group(self, track: str) -> list[_Entry[T]]:
        return [entry for entry in self._queue if entry.track == track and entry.held]

    def _redact(self, track: str, group: Sequence[_Entry[T]], final: bool) -> int | None:
        result = self._redactor.redact(
            self._context_text.get(track, ""),
            self._context_words.get(track, ""),
            [(entry.text, entry.words) for entry in group],
            final=final,
        )
        for entry, redacted in zip(group, result.segments, strict=True):
            entry.redacted = redacted
        return result.open_from

    def _resolve(self, track: str, final: bool) -> None:
        group = self._group(track)
        if not group:
            return
        open_from = self._redact(track, group, final)
        upto = len(group) - 1 if open_from is None else open_from - 1
        self._settle(track, group, upto, final=None)

    def _settle(self, track: str, group: list[_Entry[T]], upto: int, final: bool | None) -> None:
        """Entries ``group[:upto + 1]`` are done: they join the speaker's context."""
        if final is not None:
            self._redact(track, group, final)
        for entry in group[: upto + 1]:
            entry.held = False
            assert entry.redacted is not None
            # The context is what the speaker said, unredacted: it never leaves this object
            # (memory only, a few hundred characters per speaker, gone with the call).
            self._context_text[track] = _tail(self._context_text.get(track, ""), entry.text)
            self._context_words[track] = _tail(
                self._context_words.get(track, ""), " ".join(word.text for word in entry.words)
            )

    def _release(self, now: float) -> list[tuple[T, Redacted]]:
        released: list[tuple[T, Redacted]] = []
        while self._queue and not self._queue[0].held:
            entry = self._queue.popleft()
            assert entry.redacted is not None
            self.stats.max_added_s = max(self.stats.max_added_s, now - entry.arrived)
            for kind in entry.redacted.found:
                self.stats.found[kind] = self.stats.found.get(kind, 0) + 1
            released.append((entry.item, entry.redacted))
        return released


def _tail(context: str, text: str) -> str:
    """The last ~``CONTEXT_CHARS`` of ``context + text``, cut at a space."""
    joined = f"{context} {text}".strip() if context else text
    if len(joined) <= CONTEXT_CHARS:
        return joined
    cut = joined[-CONTEXT_CHARS:]
    space = cut.find(" ")
    return cut[space + 1 :] if space >= 0 else cut
