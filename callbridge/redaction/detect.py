"""Finds card numbers, SSNs and dates of birth in tokens, with few false positives.

Rules (each documented in the README's Redaction section):

* **Card (pci)**: within one digit run, a stretch of whole numeric items with 13–19 digits
  that starts with 2–6 (the card networks' first digits: Mastercard 2/5, Amex and Diners 3,
  Visa 4, Discover and UnionPay 6) and passes the Luhn check. Amounts (``$``, ``dollars``,
  ``%``) never count. A 10-digit phone number, a 4-digit order number, a date or an amount
  is never a card.
* **After a card**, within the next 15 words and before a word that starts another number
  (``order``, ``phone``, ``account`` …): one expiry (``12/27``, ``04 2027``, ``April twenty
  twenty seven``) and one CVV (a run of 3–4 digits, which ends what belongs to the card).
  After ``CVV``/``CVC``/``security code``: the next run of 3–4 digits within 8 words.
* **SSN (ssn)**: a valid SSN (area not 000, 666 or 9xx; group not 00; serial not 0000)
  written 3-2-4 (``123-45-6789``, ``123 45 6789``); or, within 12 words after ``social``,
  ``SSN`` or ``social security``, a valid 9-digit run, or a 4-digit run (the last four).
* **Date of birth (dob)**: within 12 words after ``born``, ``birth``, ``birthday`` or
  ``DOB``, the date as read: month names, ordinals and numbers with ``of``/``the`` and
  separators between them, when it has a month name or at least two numbers.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from callbridge.redaction.kinds import RedactionKind
from callbridge.redaction.tokens import (
    FILLERS,
    JOINERS,
    MONTHS,
    DigitRun,
    NumberItem,
    Token,
    TokenKind,
    numbers,
    runs,
    significant,
)

CARD_DIGITS = range(13, 20)
CARD_FIRST_DIGITS = frozenset("23456")
CARD_CONTEXT_WORDS = 15
CVV_KEYWORD_WORDS = 8
SSN_CONTEXT_WORDS = 12
DOB_CONTEXT_WORDS = 12
CARD_WORDS = frozenset(
    {"card", "visa", "mastercard", "amex", "discover", "credit", "debit", "maestro"}
)
CVV_WORDS = frozenset({"cvv", "cvc", "cv2", "cvv2", "csc", "cid"})
SSN_WORDS = frozenset({"ssn", "social"})
DOB_WORDS = frozenset({"born", "birth", "birthday", "birthdate", "dob"})
DATE_CONNECTORS = frozenset({"of", "the"})
# Words that start a different number: what follows them is not the card's CVV or expiry.
OTHER_NUMBER_WORDS = frozenset(
    {
        "order",
        "reference",
        "confirmation",
        "ticket",
        "account",
        "phone",
        "call",
        "zip",
        "postcode",
        "extension",
        "apartment",
        "room",
        "invoice",
        "case",
    }
)


@dataclass(frozen=True, slots=True)
class TokenSpan:
    """Tokens ``first``…``last`` (inclusive indices) are one entity of ``kind``."""

    kind: RedactionKind
    first: int
    last: int


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def ssn_valid(digits: str) -> bool:
    if len(digits) != 9 or not digits.isdigit():
        return False
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


@dataclass(slots=True)
class Analysis:
    """Everything :func:`detect` found in one token stream."""

    spans: list[TokenSpan]
    runs: list[DigitRun]
    open_from: int | None  # first token of an entity that may go on in the next segment


def detect(tokens: Sequence[Token], kinds: Collection[RedactionKind]) -> Analysis:
    items = numbers(tokens)
    digit_runs = runs(tokens, items)
    spans: list[TokenSpan] = []
    if RedactionKind.PCI in kinds:
        spans += _cards_and_what_follows(tokens, digit_runs)
    if RedactionKind.SSN in kinds:
        spans += _ssns(tokens, digit_runs, covered=_covered(spans))
    if RedactionKind.DOB in kinds:
        spans += _dates_of_birth(tokens, items)
    merged = _merge(spans)
    return Analysis(merged, digit_runs, _open_from(tokens, digit_runs, kinds, merged))


def _covered(spans: Sequence[TokenSpan]) -> set[int]:
    return {index for span in spans for index in range(span.first, span.last + 1)}


def _merge(spans: list[TokenSpan]) -> list[TokenSpan]:
    """Sorted, overlapping spans joined (the earlier-found kind wins)."""
    merged: list[TokenSpan] = []
    for span in sorted(spans, key=lambda s: (s.first, s.last)):
        if merged and span.first <= merged[-1].last:
            last = merged[-1]
            merged[-1] = TokenSpan(last.kind, last.first, max(last.last, span.last))
        else:
            merged.append(span)
    return merged


# --- cards -----------------------------------------------------------------------------------


def _card_in(run: DigitRun) -> list[tuple[int, int]]:
    """``(first_item, last_item)`` of every card in the run, longest first from the left."""
    found: list[tuple[int, int]] = []
    items = run.items
    i = 0
    while i < len(items):
        best: int | None = None
        digits = ""
        for j in range(i, len(items)):
            digits += items[j].digits
            if len(digits) > CARD_DIGITS[-1]:
                break
            if len(digits) in CARD_DIGITS and digits[0] in CARD_FIRST_DIGITS and luhn_valid(digits):
                best = j
        if best is None:
            i += 1
        else:
            found.append((i, best))
            i = best + 1
    return found


def _words_after(tokens: Sequence[Token], index: int, count: int) -> int:
    """The index of the last token within ``count`` significant tokens after ``index``."""
    seen = 0
    last = index
    for k in range(index + 1, len(tokens)):
        if significant(tokens[k]):
            seen += 1
            if seen > count:
                break
        last = k
    return last


def _cards_and_what_follows(tokens: Sequence[Token], digit_runs: list[DigitRun]) -> list[TokenSpan]:
    spans: list[TokenSpan] = []
    card_ends: list[int] = [
        index
        for index, token in enumerate(tokens)
        if token.kind is TokenKind.MARK and token.norm == RedactionKind.PCI.marker
    ]
    # Runs left after taking the cards out: a card and its expiry read without a pause
    # between them are one digit run, and the expiry is the part after the card.
    run_at: dict[int, DigitRun] = {}
    for run in digit_runs:
        if run.amount:
            continue
        rest_from = 0
        for first, last in _card_in(run):
            span = TokenSpan(RedactionKind.PCI, run.items[first].first, run.items[last].last)
            spans.append(span)
            card_ends.append(span.last)
            if first > rest_from:
                rest = DigitRun(run.items[rest_from:first], amount=False)
                run_at[rest.first] = rest
            rest_from = last + 1
        if rest_from < len(run.items):
            rest = DigitRun(run.items[rest_from:], amount=False)
            run_at[rest.first] = rest
    for end in card_ends:
        spans += _after_card(tokens, digit_runs, run_at, end)
    for index, token in enumerate(tokens):
        if token.kind is TokenKind.WORD and (
            token.norm in CVV_WORDS or (token.norm == "security" and _next_word(tokens, index))
        ):
            stop = _words_after(tokens, index, CVV_KEYWORD_WORDS)
            code = next(
                (
                    run
                    for first, run in sorted(run_at.items())
                    if index < first <= stop and len(run.digits) in (3, 4)
                ),
                None,
            )
            if code is not None:
                spans.append(TokenSpan(RedactionKind.PCI, code.first, code.last))
    return spans


def _after_card(
    tokens: Sequence[Token],
    digit_runs: Sequence[DigitRun],
    run_at: dict[int, DigitRun],
    end: int,
) -> list[TokenSpan]:
    """The expiry and the CVV that follow a card (at most one of each, within
    ``CARD_CONTEXT_WORDS`` words, and not past a word that starts another number)."""
    spans: list[TokenSpan] = []
    stop = _words_after(tokens, end, CARD_CONTEXT_WORDS)
    expiry_found = False
    k = end + 1
    while k <= stop:
        token = tokens[k]
        if token.kind is TokenKind.WORD and token.norm in OTHER_NUMBER_WORDS:
            break
        run = run_at.get(k)
        if run is not None:
            if not expiry_found and _is_expiry(run):
                expiry_found = True
                spans.append(TokenSpan(RedactionKind.PCI, run.first, run.last))
            elif len(run.digits) in (3, 4):
                spans.append(TokenSpan(RedactionKind.PCI, run.first, run.last))
                break  # the CVV ends what belongs to the card
            k = run.last + 1
            continue
        if not expiry_found and token.kind is TokenKind.WORD and token.norm in MONTHS:
            year = _run_starting_near(digit_runs, tokens, k)
            if year is not None and len(year.digits) in (2, 4):
                expiry_found = True
                spans.append(TokenSpan(RedactionKind.PCI, k, year.last))
                k = year.last + 1
                continue
        k += 1
    return spans


def _next_word(tokens: Sequence[Token], index: int) -> bool:
    for token in tokens[index + 1 :]:
        if significant(token):
            return token.kind is TokenKind.WORD and token.norm == "code"
    return False


def _is_expiry(run: DigitRun) -> bool:
    """``12/27``, ``4 2027``, ``oh four twenty six`` (0426), ``042027``."""
    if len(run.items) == 2:
        month, year = run.items
        if len(month.digits) in (1, 2) and 1 <= int(month.digits) <= 12:
            return len(year.digits) in (2, 4)
    digits = run.digits
    if len(digits) == 4:
        return 1 <= int(digits[:2]) <= 12
    return len(digits) == 6 and 1 <= int(digits[:2]) <= 12 and digits[2:4] == "20"


def _run_starting_near(
    digit_runs: Sequence[DigitRun], tokens: Sequence[Token], index: int
) -> DigitRun | None:
    """A run that starts right after ``index`` (skipping pauses and ``of``/``the``)."""
    k = index + 1
    while k < len(tokens) and (
        not significant(tokens[k])
        or (tokens[k].kind is TokenKind.WORD and tokens[k].norm in DATE_CONNECTORS)
    ):
        k += 1
    for run in digit_runs:
        if run.first == k and not run.amount:
            return run
    return None


# --- SSNs ------------------------------------------------------------------------------------


def _ssns(
    tokens: Sequence[Token], digit_runs: list[DigitRun], covered: set[int]
) -> list[TokenSpan]:
    keywords = [
        index
        for index, token in enumerate(tokens)
        if token.kind is TokenKind.WORD
        and (token.norm in SSN_WORDS or _spelled(tokens, index, ("s", "s", "n")))
    ]
    spans: list[TokenSpan] = []
    for run in digit_runs:
        if run.amount or run.first in covered:
            continue
        digits = run.digits
        shaped = [len(item.digits) for item in run.items] == [3, 2, 4] and _plain_joins(tokens, run)
        after_keyword = any(
            k < run.first <= _words_after(tokens, k, SSN_CONTEXT_WORDS) for k in keywords
        )
        if (shaped and ssn_valid(digits)) or (
            after_keyword and (ssn_valid(digits) or len(digits) == 4)
        ):
            spans.append(TokenSpan(RedactionKind.SSN, run.first, run.last))
    return spans


def _plain_joins(tokens: Sequence[Token], run: DigitRun) -> bool:
    """Items joined by spaces or ``-`` only (``123-45-6789``, ``123 45 6789``)."""
    for token in tokens[run.first : run.last + 1]:
        if token.kind is TokenKind.SYM and token.norm != "-":
            return False
    return True


def _spelled(tokens: Sequence[Token], index: int, letters: tuple[str, ...]) -> bool:
    """``tokens[index:]`` spell ``letters`` out (``s s n``, ``d o b``)."""
    if index + len(letters) > len(tokens):
        return False
    return all(
        tokens[index + k].kind is TokenKind.WORD and tokens[index + k].norm == letter
        for k, letter in enumerate(letters)
    )


# --- dates of birth --------------------------------------------------------------------------


def _dates_of_birth(tokens: Sequence[Token], items: Sequence[NumberItem]) -> list[TokenSpan]:
    in_number = {k: item for item in items for k in range(item.first, item.last + 1)}
    spans: list[TokenSpan] = []
    for index, token in enumerate(tokens):
        if token.kind is not TokenKind.WORD or not (
            token.norm in DOB_WORDS or _spelled(tokens, index, ("d", "o", "b"))
        ):
            continue
        stop = _words_after(tokens, index, DOB_CONTEXT_WORDS)
        first: int | None = None
        last: int | None = None
        months = 0
        numbers_seen: set[int] = set()
        k = index + 1
        while k <= stop:
            current = tokens[k]
            dateish = k in in_number or (current.kind is TokenKind.WORD and current.norm in MONTHS)
            if dateish:
                if first is None:
                    first = k
                last = k
                if k in in_number:
                    numbers_seen.add(in_number[k].first)
                else:
                    months += 1
            elif first is not None and not _date_connector(current):
                break
            k += 1
        if first is not None and last is not None and (months or len(numbers_seen) >= 2):
            spans.append(TokenSpan(RedactionKind.DOB, first, last))
    return spans


def _date_connector(token: Token) -> bool:
    if token.kind is TokenKind.BREAK:
        return True
    if token.kind is TokenKind.SYM:
        return token.norm in JOINERS
    return token.kind is TokenKind.WORD and (token.norm in DATE_CONNECTORS or token.norm in FILLERS)


# --- what may continue in the next segment ---------------------------------------------------


def _open_from(
    tokens: Sequence[Token],
    digit_runs: Sequence[DigitRun],
    kinds: Collection[RedactionKind],
    spans: Sequence[TokenSpan],
) -> int | None:
    """Where an entity that the speaker may still be reading starts, if the text ends in one:
    a digit run at the very end that could begin a card (first digit 2–6), or any digit run
    or month name at the end after an SSN or date-of-birth keyword. A text that ends in an
    entity found already (a whole card) is not open."""
    last = next((k for k in range(len(tokens) - 1, -1, -1) if significant(tokens[k])), None)
    if last is None or any(span.first <= last <= span.last for span in spans):
        return None
    end_run = next((run for run in digit_runs if run.first <= last <= run.last), None)
    if end_run is not None and end_run.amount:
        return None
    keyword_words: set[str] = set()
    if RedactionKind.SSN in kinds:
        keyword_words |= SSN_WORDS
    if RedactionKind.DOB in kinds:
        keyword_words |= DOB_WORDS
    start = end_run.first if end_run is not None else last
    keyword_near = keyword_before(tokens, start, SSN_CONTEXT_WORDS, keyword_words)
    if end_run is not None:
        if RedactionKind.PCI in kinds and end_run.digits[0] in CARD_FIRST_DIGITS:
            return end_run.first
        return end_run.first if keyword_near else None
    token = tokens[last]
    if (
        RedactionKind.DOB in kinds
        and token.kind is TokenKind.WORD
        and token.norm in MONTHS
        and keyword_near
    ):
        return last
    return None


def keyword_before(
    tokens: Sequence[Token], index: int, words: int, vocabulary: Collection[str]
) -> bool:
    """One of ``vocabulary`` within ``words`` significant tokens before ``index``."""
    seen = 0
    for k in range(index - 1, -1, -1):
        token = tokens[k]
        if not significant(token):
            continue
        seen += 1
        if seen > words:
            return False
        if token.kind is TokenKind.WORD and token.norm in vocabulary:
            return True
    return False
