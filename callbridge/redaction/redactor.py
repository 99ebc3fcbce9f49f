"""Applies :mod:`callbridge.redaction.detect` to texts and word lists: pure, no I/O.

A speaker's consecutive segments are redacted together (a card read in groups lands in
several segments): :meth:`Redactor.redact` takes the text already released for that
speaker as left *context* (never changed again, but it can make a CVV follow a card, or
complete a card whose first groups were released), the segments still *pending*, and says
which of them may still continue an entity in the next segment.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from callbridge.models import Word
from callbridge.redaction.detect import (
    CARD_FIRST_DIGITS,
    CARD_WORDS,
    TokenSpan,
    detect,
    keyword_before,
)
from callbridge.redaction.kinds import RedactionKind
from callbridge.redaction.tokens import DigitRun, Token, TokenKind, significant, tokenize_pieces

FAIL_SAFE_MIN_DIGITS = 8
CharSpan = tuple[int, int, RedactionKind]  # [start, end) in one piece


@dataclass(frozen=True, slots=True)
class Redacted:
    """One segment's redacted text and words, and what was removed (kinds, in order)."""

    text: str
    words: tuple[Word, ...]
    found: tuple[RedactionKind, ...]


@dataclass(frozen=True, slots=True)
class PendingResult:
    """:meth:`Redactor.redact`'s answer: every pending segment redacted with what is known,
    and the index of the first one that may still continue an entity (None: none may)."""

    segments: tuple[Redacted, ...]
    open_from: int | None


class Redactor:
    """Replaces the entities of ``kinds`` with their markers (``[PCI]`` …)."""

    def __init__(self, kinds: Collection[RedactionKind]) -> None:
        self.kinds = frozenset(kinds)

    def redact_text(self, text: str) -> str:
        """One text on its own, nothing to come after it."""
        spans, _ = self._spans("", [text], final=True)
        return _apply(text, spans[0])

    def redact(
        self,
        context_text: str,
        context_words: str,
        pending: Sequence[tuple[str, Sequence[Word]]],
        *,
        final: bool = False,
    ) -> PendingResult:
        """Redact ``pending`` (text, words) segments of one speaker after ``context``.

        With ``final`` nothing more will come: an unfinished card-like run at the end (8+
        digits starting with 2–6 after a card word, or 3+ digits right after a ``[PCI]``)
        is redacted too, to be safe."""
        texts = [text for text, _ in pending]
        text_spans, open_piece = self._spans(context_text, texts, final)
        word_texts = [" ".join(word.text for word in words) for _, words in pending]
        word_spans, _ = self._spans(context_words, word_texts, final)
        segments = []
        for index, (text, words) in enumerate(pending):
            spans = text_spans[index]
            segments.append(
                Redacted(
                    text=_apply(text, spans),
                    words=_apply_words(words, word_spans[index]),
                    found=tuple(kind for _, _, kind in spans),
                )
            )
        return PendingResult(tuple(segments), open_piece)

    # ----------------------------------------------------------------------------------------

    def _spans(
        self, context: str, texts: Sequence[str], final: bool
    ) -> tuple[list[list[CharSpan]], int | None]:
        """Char spans per text (context excluded) and the first text that stays open."""
        tokens = tokenize_pieces([context, *texts])
        if not self.kinds or not tokens:
            return [[] for _ in texts], None
        analysis = detect(tokens, self.kinds)
        token_spans = list(analysis.spans)
        open_piece: int | None = None
        if analysis.open_from is not None:
            if final:
                safe = self._fail_safe(tokens, analysis.open_from, analysis.runs, token_spans)
                if safe is not None:
                    token_spans.append(safe)
            else:
                open_piece = max(0, tokens[analysis.open_from].piece - 1)
        per_piece: list[list[CharSpan]] = [[] for _ in texts]
        for span in token_spans:
            for piece, start, end in _char_ranges(tokens, span):
                if piece >= 1:
                    per_piece[piece - 1].append((start, end, span.kind))
        return [_join(spans) for spans in per_piece], open_piece

    def _fail_safe(
        self,
        tokens: Sequence[Token],
        open_from: int,
        digit_runs: Sequence[DigitRun],
        spans: Sequence[TokenSpan],
    ) -> TokenSpan | None:
        """An unfinished card-like run at the end of what a speaker said is redacted."""
        if RedactionKind.PCI not in self.kinds:
            return None
        run = next((r for r in digit_runs if r.first == open_from), None)
        if run is None or any(s.first <= run.first <= s.last for s in spans):
            return None
        digits = run.digits
        card_like = (
            len(digits) >= FAIL_SAFE_MIN_DIGITS
            and digits[0] in CARD_FIRST_DIGITS
            and keyword_before(tokens, run.first, 12, CARD_WORDS)
        )
        if card_like or (len(digits) >= 3 and _right_after_card(tokens, run.first)):
            return TokenSpan(RedactionKind.PCI, run.first, run.last)
        return None


def _right_after_card(tokens: Sequence[Token], index: int) -> bool:
    """Only pauses between a ``[PCI]`` marker and ``tokens[index]``: the rest of a card whose
    first groups were redacted already."""
    for k in range(index - 1, -1, -1):
        token = tokens[k]
        if token.kind is TokenKind.MARK:
            return token.norm == RedactionKind.PCI.marker
        if significant(token):
            return False
    return False


def _char_ranges(tokens: Sequence[Token], span: TokenSpan) -> list[tuple[int, int, int]]:
    """``(piece, start, end)`` of the span's characters in each piece it touches."""
    ranges: dict[int, list[int]] = {}
    for token in tokens[span.first : span.last + 1]:
        if token.kind is TokenKind.BREAK:
            continue
        bounds = ranges.setdefault(token.piece, [token.start, token.end])
        bounds[0] = min(bounds[0], token.start)
        bounds[1] = max(bounds[1], token.end)
    return [(piece, start, end) for piece, (start, end) in sorted(ranges.items())]


def _join(spans: list[CharSpan]) -> list[CharSpan]:
    joined: list[CharSpan] = []
    for start, end, kind in sorted(spans):
        if joined and start <= joined[-1][1]:
            first_start, first_end, first_kind = joined[-1]
            joined[-1] = (first_start, max(first_end, end), first_kind)
        else:
            joined.append((start, end, kind))
    return joined


def _apply(text: str, spans: Sequence[CharSpan]) -> str:
    out = []
    position = 0
    for start, end, kind in spans:
        out.append(text[position:start])
        out.append(kind.marker)
        position = end
    out.append(text[position:])
    return "".join(out)


def _apply_words(words: Sequence[Word], spans: Sequence[CharSpan]) -> tuple[Word, ...]:
    """Words overlapping a span become one marker word spanning their times."""
    if not spans:
        return tuple(words)
    result: list[Word] = []
    offset = 0
    current: tuple[int, Word] | None = None  # (span index, marker word so far)
    for word in words:
        start, end = offset, offset + len(word.text)
        offset = end + 1
        hit = next(
            (i for i, (s, e, _) in enumerate(spans) if start < e and s < end),
            None,
        )
        if hit is None:
            if current is not None:
                result.append(current[1])
                current = None
            result.append(word)
            continue
        if current is not None and current[0] == hit:
            marker = current[1]
            current = (hit, Word(marker.text, marker.start_ms, word.end_ms, "word"))
            continue
        if current is not None:
            result.append(current[1])
        current = (hit, Word(spans[hit][2].marker, word.start_ms, word.end_ms, "word"))
    if current is not None:
        result.append(current[1])
    return tuple(result)
