"""The redactor: what it removes, what it leaves, words with their times, and redaction
across one speaker's segments with a bounded hold (pure, on explicit times)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callbridge.models import Word
from callbridge.redaction import RedactionKind, Redactor, SegmentRedactionStage, parse_kinds
from callbridge.redaction.detect import luhn_valid, ssn_valid

ALL = Redactor(set(RedactionKind))
PCI_ONLY = Redactor({RedactionKind.PCI})

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    for check in "0123456789":
        if luhn_valid(body + check):
            return body + check
    raise AssertionError("unreachable")


# --- positives --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("my card is 4111 1111 1111 1111", "my card is [PCI]"),
        ("4111111111111111", "[PCI]"),
        ("it's 5555-5555-5555-4444.", "it's [PCI]."),
        ("amex 3782 822463 10005 thanks", "amex [PCI] thanks"),
        ("four one one one one one one one one one one one one one one one", "[PCI]"),
        ("four double one one, one one one one, one one one one, one one one one", "[PCI]"),
        (
            "five five five five, triple five five, five five five five, four four four four",
            "[PCI]",
        ),
        ("forty one eleven eleven eleven eleven eleven eleven eleven", "[PCI]"),
        ("uh 4111 um 1111 1111 1111", "uh [PCI]"),
        ("6011 1111 1111 1117 expiry 12/27 cvv 123", "[PCI] expiry [PCI] cvv [PCI]"),
        (
            "4111 1111 1111 1111 expires oh four twenty six and the code is nine eight seven",
            "[PCI] expires [PCI] and the code is [PCI]",
        ),
        ("4111 1111 1111 1111, good until April twenty twenty seven", "[PCI], good until [PCI]"),
        ("the cvv is 042", "the cvv is [PCI]"),
        ("security code four five six", "security code [PCI]"),
    ],
)
def test_cards_and_what_follows_them_are_redacted(text: str, expected: str) -> None:
    assert PCI_ONLY.redact_text(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ssn 123-45-6789", "ssn [SSN]"),
        ("it is 123 45 6789", "it is [SSN]"),
        ("my social is one two three four five six seven eight nine", "my social is [SSN]"),
        ("social security number 123456789", "social security number [SSN]"),
        ("the last four of my social are 6789", "the last four of my social are [SSN]"),
        ("s s n is 078 05 1120", "s s n is [SSN]"),
    ],
)
def test_social_security_numbers_are_redacted(text: str, expected: str) -> None:
    assert Redactor({RedactionKind.SSN}).redact_text(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I was born on the 12th of July 1987", "I was born on the [DOB]"),
        ("date of birth oh seven twelve nineteen eighty seven", "date of birth [DOB]"),
        ("my birthday is July twelfth, nineteen eighty seven.", "my birthday is [DOB]."),
        ("DOB 07/12/1987", "DOB [DOB]"),
        ("born march 3rd", "born [DOB]"),
    ],
)
def test_dates_of_birth_are_redacted(text: str, expected: str) -> None:
    assert Redactor({RedactionKind.DOB}).redact_text(text) == expected


# --- negatives: what must stay -------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "order number 4521 please",
        "my order is one two three four",
        "call me back at 415 555 1234",
        "call me at (415) 555-1234 or 1 800 555 0199",
        "my number is four one five five five five one two three four",
        "that's $4,111,111,111,111,111",
        "4111111111111111 dollars",
        "it was 25 % off",
        "the total is one thousand two hundred and fifty",
        "4111 1111 1111 1112",  # fails Luhn
        "1111 1111 1111 1117",  # Luhn-valid but no card starts with 1
        "9111 1111 1111 1113",  # nor with 9
        "it expires April twenty twenty seven",  # no card before it
        "I need 3 tickets for 2027 and 4 for 2028",
        "my zip is 94107-1234",
        "meet at 10:30 on 12/27",
        "the code is 123",  # no card, no CVV keyword
        "tracking 1Z999AA10123456784",
        "123-45-6789 is my case number",  # SSN-shaped, but SSNs are off here
    ],
)
def test_numbers_that_are_not_cards_stay(text: str) -> None:
    assert PCI_ONLY.redact_text(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "my account is 123 456 789",  # 9 digits, not 3-2-4, no keyword
        "ssn area 000 is invalid: 000-12-3456",
        "666-12-3456",
        "912-34-5678",
        "social club meets at 7",
        "call 415 555 1234",
    ],
)
def test_numbers_that_are_not_ssns_stay(text: str) -> None:
    assert Redactor({RedactionKind.SSN}).redact_text(text) == text


@pytest.mark.parametrize(
    "text",
    ["the meeting is on July 12th 1987", "born to run", "my birthday party is fun"],
)
def test_dates_without_a_birth_keyword_stay(text: str) -> None:
    assert Redactor({RedactionKind.DOB}).redact_text(text) == text


def test_only_the_listed_kinds_are_redacted() -> None:
    text = "card 4111 1111 1111 1111, ssn 123-45-6789, born July 4 1980"
    assert Redactor(set()).redact_text(text) == text
    assert Redactor({RedactionKind.SSN}).redact_text(text) == (
        "card 4111 1111 1111 1111, ssn [SSN], born July 4 1980"
    )
    assert ALL.redact_text(text) == "card [PCI], ssn [SSN], born [DOB]"


def test_parse_kinds_names_unknown_kinds() -> None:
    assert parse_kinds(["PCI", " ssn ", ""]) == {RedactionKind.PCI, RedactionKind.SSN}
    with pytest.raises(ValueError, match=r"'iban'.*known: pci, ssn, dob"):
        parse_kinds(["pci", "iban"])


def test_luhn_and_ssn_rules() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert ssn_valid("078051120") and not ssn_valid("000123456")
    assert not ssn_valid("123006789") and not ssn_valid("123450000")


# --- properties ------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    length=st.sampled_from([13, 15, 16, 19]),
    first=st.sampled_from("23456"),
    style=st.sampled_from(["plain", "spaced", "dashed", "words", "chunks"]),
)
def test_any_luhn_valid_card_is_redacted_however_it_is_read(
    seed: int, length: int, first: str, style: str
) -> None:
    rng = random.Random(seed)
    number = luhn_complete(first, length, rng)
    groups = [number[i : i + 4] for i in range(0, length, 4)]
    spoken = {
        "plain": number,
        "spaced": " ".join(groups),
        "dashed": "-".join(groups),
        "words": " ".join(DIGIT_WORDS[int(d)] for d in number),
        "chunks": ", ".join(" ".join(DIGIT_WORDS[int(d)] for d in g) for g in groups),
    }[style]
    redacted = PCI_ONLY.redact_text(f"the card number is {spoken} thanks")
    assert redacted == "the card number is [PCI] thanks"


@settings(max_examples=200, deadline=None)
@given(area=st.integers(200, 999), exchange=st.integers(200, 999), line=st.integers(0, 9999))
def test_phone_numbers_are_never_cards(area: int, exchange: int, line: int) -> None:
    for text in (
        f"call me on {area} {exchange} {line:04d}",
        f"it's 1-{area}-{exchange}-{line:04d}",
        f"({area}) {exchange}-{line:04d}",
    ):
        assert PCI_ONLY.redact_text(text) == text


@settings(max_examples=100, deadline=None)
@given(value=st.integers(0, 10**12), cents=st.integers(0, 99))
def test_amounts_are_never_cards(value: int, cents: int) -> None:
    for text in (f"that comes to ${value:,}.{cents:02d}", f"{value} dollars"):
        assert PCI_ONLY.redact_text(text) == text


# --- words keep their times ----------------------------------------------------------------


def words_of(text: str, start_ms: int = 0, step_ms: int = 300) -> tuple[Word, ...]:
    return tuple(
        Word(token, start_ms + i * step_ms, start_ms + i * step_ms + 250, logprob=-0.1)
        for i, token in enumerate(text.split())
    )


def test_words_are_redacted_with_their_times_kept() -> None:
    text = "my card is 4111 1111 1111 1111 thanks"
    result = PCI_ONLY.redact("", "", [(text, words_of(text, 1000))])
    (segment,) = result.segments
    assert segment.text == "my card is [PCI] thanks"
    assert [w.text for w in segment.words] == ["my", "card", "is", "[PCI]", "thanks"]
    marker = segment.words[3]
    assert (marker.start_ms, marker.end_ms) == (1900, 3050)  # first digit group to last
    assert marker.logprob is None
    assert segment.words[0] == words_of(text, 1000)[0]
    assert segment.found == (RedactionKind.PCI,)


# --- across segments -----------------------------------------------------------------------


Item = str


def stage(
    hold_s: float = 2.5, kinds: set[RedactionKind] | None = None
) -> SegmentRedactionStage[Item]:
    return SegmentRedactionStage(Redactor(kinds or {RedactionKind.PCI}), hold_s)


def push(
    s: SegmentRedactionStage[Item], name: str, track: str, text: str, now: float
) -> list[tuple[str, str]]:
    return [(item, r.text) for item, r in s.push(name, track, text, words_of(text), now)]


def test_a_card_read_in_three_segments_is_redacted_in_all_three() -> None:
    s = stage()
    assert push(s, "a", "caller", "my card is 4111 1111", 0.0) == []
    assert s.next_deadline == 2.5
    assert push(s, "b", "caller", "1111", 1.2) == []
    released = push(s, "c", "caller", "1111 thank you", 2.0)
    assert released == [("a", "my card is [PCI]"), ("b", "[PCI]"), ("c", "[PCI] thank you")]
    assert s.next_deadline is None and s.stats.max_added_s == 2.0


def test_the_other_speaker_waits_behind_a_held_segment_and_order_is_kept() -> None:
    s = stage()
    assert push(s, "a", "caller", "it's 4111 1111 1111", 0.0) == []
    # the agent's "mhm" arrives while the caller's number is open: it waits, in order
    assert push(s, "b", "agent", "mhm", 0.5) == []
    released = push(s, "c", "caller", "1111", 1.5)
    assert released == [("a", "it's [PCI]"), ("b", "mhm"), ("c", "[PCI]")]


def test_a_hold_is_bounded_and_what_waits_behind_it_follows() -> None:
    s = stage(hold_s=2.5)
    push(s, "a", "caller", "my order number is 4521", 0.0)
    assert push(s, "b", "agent", "thanks", 0.4) == []
    assert s.expire(2.4) == []
    released = [(item, r.text) for item, r in s.expire(2.5)]
    assert released == [("a", "my order number is 4521"), ("b", "thanks")]
    assert s.stats.expired == 1 and s.stats.max_added_s == 2.5


def test_a_segment_that_cannot_continue_a_card_is_not_held() -> None:
    s = stage()
    assert push(s, "a", "caller", "hello there", 0.0) == [("a", "hello there")]
    assert push(s, "b", "caller", "it costs $40", 0.1) == [("b", "it costs $40")]
    assert push(s, "c", "caller", "call me on 9 1 7", 0.2) == [("c", "call me on 9 1 7")]
    assert push(s, "d", "caller", "my card is 4111 1111 1111 1111", 0.3) == [
        ("d", "my card is [PCI]")
    ]
    assert s.stats.held == 0


def test_the_expiry_read_right_after_a_card_in_the_next_segment_is_redacted() -> None:
    s = stage()
    assert push(s, "a", "caller", "it's 4111 1111", 0.0) == []
    assert push(s, "b", "caller", "1111 1111", 1.0) == [("a", "it's [PCI]"), ("b", "[PCI]")]
    assert push(s, "c", "caller", "12 27 and 737", 2.0) == [("c", "[PCI] and [PCI]")]


def test_a_cvv_in_a_later_segment_follows_the_released_card() -> None:
    s = stage()
    assert push(s, "a", "caller", "4111 1111 1111 1111", 0.0) == [("a", "[PCI]")]
    assert push(s, "b", "agent", "and the three digits on the back?", 1.0) == [
        ("b", "and the three digits on the back?"),
    ]
    assert push(s, "c", "caller", "it's 737", 3.0) == [("c", "it's [PCI]")]


def test_when_a_hold_runs_out_a_card_like_number_is_redacted_and_its_rest_later() -> None:
    s = stage(hold_s=2.5)
    push(s, "a", "caller", "my visa is 4111 1111 1111", 0.0)
    # nothing more in time: released, and the unfinished card number goes, to be safe
    assert [(i, r.text) for i, r in s.expire(2.5)] == [("a", "my visa is [PCI]")]
    # the last group, late: it follows a redacted card, so it goes too
    assert push(s, "b", "caller", "1111", 4.0) == [("b", "[PCI]")]


def test_a_late_last_group_is_caught_when_the_first_ones_were_released() -> None:
    s = stage(hold_s=2.5)
    push(s, "a", "caller", "4111 1111", 0.0)
    assert [(i, r.text) for i, r in s.expire(2.5)] == [("a", "4111 1111")]  # 8 digits, no card word
    # the card is complete across the released segment: the new part is redacted
    assert push(s, "b", "caller", "1111 1111 thanks", 3.0) == [("b", "[PCI] thanks")]


def test_flush_at_call_end_releases_everything_in_order() -> None:
    s = stage()
    push(s, "a", "caller", "my card is 5555 5555", 0.0)
    push(s, "b", "agent", "go on", 0.5)
    # the call ended in the middle of a card number: what was read goes, to be safe
    assert [(i, r.text) for i, r in s.flush(1.0)] == [("a", "my card is [PCI]"), ("b", "go on")]
    assert s.waiting == 0


def test_speakers_do_not_complete_each_others_numbers() -> None:
    s = stage()
    push(s, "a", "caller", "4111 1111", 0.0)
    push(s, "b", "agent", "1111 1111", 0.5)
    released = [(i, r.text) for i, r in s.flush(1.0)]
    assert released == [("a", "4111 1111"), ("b", "1111 1111")]


def test_words_are_redacted_across_segments_too() -> None:
    s = stage()
    first = "card 4111 1111"
    second = "1111 1111 ok"
    s.push("a", "caller", first, words_of(first), 0.0)
    released = s.push("b", "caller", second, words_of(second, 5000), 1.0)
    assert [[w.text for w in r.words] for _, r in released] == [
        ["card", "[PCI]"],
        ["[PCI]", "ok"],
    ]
    assert released[0][1].words[1].start_ms == 300 and released[0][1].words[1].end_ms == 850
