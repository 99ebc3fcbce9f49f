"""Tokens of transcript text and the numbers in them, written or spoken.

:func:`tokenize` splits text into words, digit groups, redaction markers (``[PCI]``) and
single symbols, keeping character offsets. :func:`numbers` reads the numeric items a caller
says: digit groups (``4111``), digit words (``four``, ``oh``, ``zero``), ``double four``,
``triple seven``, teens and tens (``eleven``, ``forty two``), and ordinals for dates
(``12th``, ``twenty first``). :func:`runs` joins items that follow each other with only
pauses between them (spaces, ``-``, ``.``, ``,``, ``/``, a segment boundary, ``uh``/``um``)
into the digit runs that card numbers, SSNs and dates are read as.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass


class TokenKind(enum.Enum):
    WORD = "word"
    NUM = "num"
    MARK = "mark"  # an earlier redaction: [PCI], [SSN] …
    SYM = "sym"
    BREAK = "break"  # the boundary between two segments of one speaker


@dataclass(frozen=True, slots=True)
class Token:
    kind: TokenKind
    norm: str  # lower-cased text; digits for NUM (ordinal suffix removed)
    piece: int  # which text of a combined stream it came from
    start: int  # character offsets in that piece
    end: int
    ordinal: bool = False  # NUM written as 12th, 1st …


_TOKEN = re.compile(
    r"(?P<mark>\[[A-Z][A-Z_]*\])"
    r"|(?P<num>\d+)(?P<suffix>st|nd|rd|th|ST|ND|RD|TH)?(?![A-Za-z])"
    r"|(?P<word>[A-Za-z]+(?:'[A-Za-z]+)?)"
    r"|(?P<sym>[^\sA-Za-z\d])"
)


def tokenize(text: str, piece: int = 0) -> list[Token]:
    tokens: list[Token] = []
    for match in _TOKEN.finditer(text):
        if match.group("mark"):
            kind, norm, ordinal = TokenKind.MARK, match.group("mark"), False
        elif match.group("num") is not None:
            kind, norm, ordinal = TokenKind.NUM, match.group("num"), bool(match.group("suffix"))
        elif match.group("word"):
            kind, norm, ordinal = TokenKind.WORD, match.group("word").lower(), False
        else:
            kind, norm, ordinal = TokenKind.SYM, match.group("sym"), False
        tokens.append(Token(kind, norm, piece, match.start(), match.end(), ordinal))
    return tokens


def tokenize_pieces(pieces: Sequence[str]) -> list[Token]:
    """The tokens of several texts in a row, a BREAK between each two."""
    tokens: list[Token] = []
    for index, text in enumerate(pieces):
        if index:
            end = tokens[-1].end if tokens and tokens[-1].piece == index - 1 else 0
            tokens.append(Token(TokenKind.BREAK, "", index - 1, end, end))
        tokens.extend(tokenize(text, index))
    return tokens


UNITS = {
    "zero": "0",
    "oh": "0",
    "o": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
}
TEENS = {
    "ten": "10",
    "eleven": "11",
    "twelve": "12",
    "thirteen": "13",
    "fourteen": "14",
    "fifteen": "15",
    "sixteen": "16",
    "seventeen": "17",
    "eighteen": "18",
    "nineteen": "19",
}
TENS = {
    "twenty": "2",
    "thirty": "3",
    "forty": "4",
    "fourty": "4",
    "fifty": "5",
    "sixty": "6",
    "seventy": "7",
    "eighty": "8",
    "ninety": "9",
}
ORDINAL_UNITS = {
    "first": "1",
    "second": "2",
    "third": "3",
    "fourth": "4",
    "fifth": "5",
    "sixth": "6",
    "seventh": "7",
    "eighth": "8",
    "ninth": "9",
}
ORDINAL_WORDS = {
    **{word: digit for word, digit in ORDINAL_UNITS.items()},
    "tenth": "10",
    "eleventh": "11",
    "twelfth": "12",
    "thirteenth": "13",
    "fourteenth": "14",
    "fifteenth": "15",
    "sixteenth": "16",
    "seventeenth": "17",
    "eighteenth": "18",
    "nineteenth": "19",
    "twentieth": "20",
    "thirtieth": "30",
}
REPEATS = {"double": 2, "triple": 3}
FILLERS = frozenset({"uh", "um", "umm", "er", "erm", "ah", "hmm", "mm", "mhm"})
JOINERS = frozenset({"-", ".", ",", "/"})
MONTHS = {
    "january": 1,
    "jan": 1,
    "february": 2,
    "feb": 2,
    "march": 3,
    "mar": 3,
    "april": 4,
    "apr": 4,
    "may": 5,
    "june": 6,
    "jun": 6,
    "july": 7,
    "jul": 7,
    "august": 8,
    "aug": 8,
    "september": 9,
    "sep": 9,
    "sept": 9,
    "october": 10,
    "oct": 10,
    "november": 11,
    "nov": 11,
    "december": 12,
    "dec": 12,
}
CURRENCY_WORDS = frozenset(
    {"dollar", "dollars", "bucks", "cents", "euro", "euros", "pound", "pounds", "percent"}
)
CURRENCY_SYMBOLS = frozenset({"$", "€", "£", "%"})


@dataclass(frozen=True, slots=True)
class NumberItem:
    """One number as read: tokens ``first``…``last`` (indices) say ``digits``."""

    first: int
    last: int
    digits: str
    ordinal: bool = False
    spoken_zero_only: bool = False  # a lone "oh"/"o": a digit only next to other digits


def numbers(tokens: Sequence[Token]) -> list[NumberItem]:
    """Every numeric item in ``tokens``, in order."""
    items: list[NumberItem] = []
    i = 0
    n = len(tokens)

    def next_index(j: int, skip_hyphen: bool = False) -> int | None:
        k = j + 1
        if skip_hyphen and k < n and tokens[k].kind is TokenKind.SYM and tokens[k].norm == "-":
            k += 1
        return k if k < n else None

    while i < n:
        token = tokens[i]
        if token.kind is TokenKind.NUM:
            items.append(NumberItem(i, i, token.norm, ordinal=token.ordinal))
            i += 1
            continue
        if token.kind is not TokenKind.WORD:
            i += 1
            continue
        word = token.norm
        if word in UNITS:
            items.append(NumberItem(i, i, UNITS[word], spoken_zero_only=word in ("oh", "o")))
            i += 1
        elif word in TEENS:
            items.append(NumberItem(i, i, TEENS[word]))
            i += 1
        elif word in TENS:
            k = next_index(i, skip_hyphen=True)
            if (
                k is not None
                and tokens[k].kind is TokenKind.WORD
                and tokens[k].norm in UNITS
                and UNITS[tokens[k].norm] != "0"
            ):
                items.append(NumberItem(i, k, TENS[word] + UNITS[tokens[k].norm]))
                i = k + 1
            elif (
                k is not None
                and tokens[k].kind is TokenKind.WORD
                and tokens[k].norm in ORDINAL_UNITS
            ):
                items.append(NumberItem(i, k, TENS[word] + ORDINAL_UNITS[tokens[k].norm], True))
                i = k + 1
            else:
                items.append(NumberItem(i, i, TENS[word] + "0"))
                i += 1
        elif word in ORDINAL_WORDS:
            items.append(NumberItem(i, i, ORDINAL_WORDS[word], ordinal=True))
            i += 1
        elif word in REPEATS:
            k = next_index(i)
            repeated: str | None = None
            if k is not None:
                following = tokens[k]
                if following.kind is TokenKind.WORD and following.norm in UNITS:
                    repeated = UNITS[following.norm]
                elif following.kind is TokenKind.NUM and len(following.norm) == 1:
                    repeated = following.norm
            if repeated is not None and k is not None:
                items.append(NumberItem(i, k, repeated * REPEATS[word]))
                i = k + 1
            else:
                i += 1
        else:
            i += 1
    return items


@dataclass(frozen=True, slots=True)
class DigitRun:
    """Numeric items read one after the other with only pauses between them."""

    items: tuple[NumberItem, ...]
    amount: bool  # $12, 40 dollars, 15 %: a quantity, never an identifier

    @property
    def first(self) -> int:
        return self.items[0].first

    @property
    def last(self) -> int:
        return self.items[-1].last

    @property
    def digits(self) -> str:
        return "".join(item.digits for item in self.items)


def _only_pauses(tokens: Sequence[Token], start: int, end: int) -> bool:
    """Whether ``tokens[start:end]`` hold nothing but pauses."""
    for token in tokens[start:end]:
        if token.kind is TokenKind.BREAK:
            continue
        if token.kind is TokenKind.SYM and token.norm in JOINERS:
            continue
        if token.kind is TokenKind.WORD and token.norm in FILLERS:
            continue
        return False
    return True


def runs(tokens: Sequence[Token], items: Sequence[NumberItem] | None = None) -> list[DigitRun]:
    """The digit runs of ``tokens`` (ordinals stay out of runs: they are dates, not numbers)."""
    if items is None:
        items = numbers(tokens)
    groups: list[list[NumberItem]] = []
    for item in items:
        if item.ordinal:
            groups.append([item])
            continue
        previous = groups[-1] if groups else None
        if (
            previous is not None
            and not previous[-1].ordinal
            and _only_pauses(tokens, previous[-1].last + 1, item.first)
        ):
            previous.append(item)
        else:
            groups.append([item])
    found: list[DigitRun] = []
    for group in groups:
        if group[0].ordinal:
            continue
        if all(item.spoken_zero_only for item in group):
            continue  # "oh" on its own is an interjection
        found.append(DigitRun(tuple(group), _is_amount(tokens, group[0].first, group[-1].last)))
    return found


def _is_amount(tokens: Sequence[Token], first: int, last: int) -> bool:
    before = tokens[first - 1] if first > 0 else None
    after = tokens[last + 1] if last + 1 < len(tokens) else None
    if before is not None and before.kind is TokenKind.SYM and before.norm in CURRENCY_SYMBOLS:
        return True
    if after is None:
        return False
    if after.kind is TokenKind.SYM and after.norm in CURRENCY_SYMBOLS:
        return True
    return after.kind is TokenKind.WORD and after.norm in CURRENCY_WORDS


def significant(token: Token) -> bool:
    """A token that says something (not a pause)."""
    if token.kind in (TokenKind.BREAK, TokenKind.SYM):
        return False
    return not (token.kind is TokenKind.WORD and token.norm in FILLERS)
