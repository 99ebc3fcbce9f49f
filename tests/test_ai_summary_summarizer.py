"""Writing one call's AI summary against the LLM emulator: validation, one retry on an
invalid answer, then a clear failure; long calls in parts within the input budget;
answers kept across attempts. Plus the prompt and schema pieces it is made of."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from callbridge.ai_summary.llm import ChatLLM, LLMError, LLMOptions
from callbridge.ai_summary.prompt import (
    CallTranscript,
    Line,
    estimate_message_tokens,
    estimate_tokens,
    group_for_combining,
    split_transcript,
    whole_call_messages,
)
from callbridge.ai_summary.schema import (
    InvalidSummary,
    parse_json_object,
    validate_content,
)
from callbridge.ai_summary.summarizer import CallSummarizer, SummaryFailed, SummaryProgress
from callbridge.testing.llm_answers import count_tokens
from callbridge.testing.llm_emulator import LLMEmulator, LLMFault

ROLES = {"caller": "the customer who called", "agent": "the company's agent"}
SHORT = CallTranscript(
    lines=(
        Line("caller", "Hello, my card [PCI] was declined at the shop."),
        Line("agent", "Let me check. Your card is blocked, I'll unblock it now."),
        Line("caller", "Thanks, that's everything."),
    ),
    duration_ms=42_000,
    language_code="en",
    roles=ROLES,
)
DIALOGUE = [
    ("caller", "I moved house last month and my broadband still points at the old address."),
    ("agent", "I can move the service for you; may I confirm the new postcode first?"),
    ("caller", "It is the one on the letter you sent, the flat above the bakery."),
    ("agent", "Thank you, I see it. The engineer visit is needed for the new line."),
]
LONG = CallTranscript(
    lines=tuple(Line(s, f"{t} (turn {i})") for i in range(60) for s, t in [DIALOGUE[i % 4]]),
    duration_ms=1_800_000,
    language_code="en",
    roles=ROLES,
)


@pytest.fixture
async def emulator() -> AsyncIterator[LLMEmulator]:
    async with LLMEmulator() as emu:
        yield emu


@pytest.fixture
async def llm(emulator: LLMEmulator) -> AsyncIterator[ChatLLM]:
    chat = ChatLLM(
        LLMOptions(
            base_url=emulator.url, model=emulator.model, api_key=emulator.api_key or "", timeout_s=5
        )
    )
    yield chat
    await chat.aclose()


async def test_a_short_call_is_one_request(emulator: LLMEmulator, llm: ChatLLM) -> None:
    written = await CallSummarizer(llm, input_budget_tokens=8000).summarize(SHORT)
    assert written.parts == 1 and written.model == emulator.model
    assert written.content["outcome"]["status"] == "resolved"
    assert set(written.content["sentiment"]) == {"caller", "agent"}
    assert written.usage.requests == 1 and written.usage.prompt_tokens > 100
    user = emulator.chat_requests[0].json["messages"][1]["content"]
    assert "caller: Hello, my card [PCI] was declined at the shop." in user
    assert "- duration: 42.0 s" in user and "- language: en" in user


@pytest.mark.parametrize(
    "fault",
    [LLMFault.invalid_json(), LLMFault.schema_violation(), LLMFault.refusal()],
)
async def test_an_invalid_answer_is_retried_once_with_the_problem(
    emulator: LLMEmulator, llm: ChatLLM, fault: LLMFault
) -> None:
    emulator.inject(fault)
    written = await CallSummarizer(llm, input_budget_tokens=8000).summarize(SHORT)
    assert written.usage.requests == 2
    retry = emulator.chat_requests[1].json["messages"]
    assert retry[:2] == emulator.chat_requests[0].json["messages"]
    assert retry[2]["role"] == "assistant"
    assert retry[3]["role"] == "user" and retry[3]["content"].startswith("That answer is not valid")
    validate_content(written.content, ("caller", "agent"))


async def test_a_cut_off_answer_is_retried_with_twice_the_output_limit(
    emulator: LLMEmulator, llm: ChatLLM
) -> None:
    emulator.inject(LLMFault.truncated())
    await CallSummarizer(llm, input_budget_tokens=8000).summarize(SHORT)
    limits = [r.json["max_completion_tokens"] for r in emulator.chat_requests]
    assert limits == [1024, 2048]
    assert emulator.chat_requests[1].json["messages"] == emulator.chat_requests[0].json["messages"]


async def test_two_invalid_answers_fail_clearly(emulator: LLMEmulator, llm: ChatLLM) -> None:
    emulator.inject(LLMFault.invalid_json(), LLMFault.schema_violation())
    with pytest.raises(SummaryFailed) as failure:
        await CallSummarizer(llm, input_budget_tokens=8000).summarize(SHORT)
    assert failure.value.code == "invalid_output"
    assert "invalid twice" in str(failure.value)
    assert '"outcome" is a required property' in str(failure.value)
    assert len(emulator.chat_requests) == 2


async def test_an_empty_transcript_asks_nothing(emulator: LLMEmulator, llm: ChatLLM) -> None:
    empty = CallTranscript(lines=(), duration_ms=5000, language_code=None, roles=ROLES)
    with pytest.raises(SummaryFailed) as failure:
        await CallSummarizer(llm, input_budget_tokens=8000).summarize(empty)
    assert failure.value.code == "empty_transcript" and not emulator.requests


async def test_a_long_call_is_summarised_in_parts_within_the_budget() -> None:
    budget = 1200
    # The emulator's window is the budget: a request over it would be refused (400).
    async with LLMEmulator(context_tokens=budget) as emu:
        llm = ChatLLM(LLMOptions(base_url=emu.url, model=emu.model, api_key=emu.api_key or ""))
        summarizer = CallSummarizer(llm, input_budget_tokens=budget)
        assert estimate_message_tokens(whole_call_messages(LONG)) > budget
        written = await summarizer.summarize(LONG)
        await llm.aclose()
    parts = summarizer.split(LONG)
    assert written.parts == len(parts) >= 3
    requests = emu.chat_requests
    assert all(r.status == 200 for r in requests)
    # every line went to the LLM exactly once, in order, across the part requests
    sent = [
        line
        for r in requests
        if "Transcript:" in r.json["messages"][1]["content"]
        for line in r.json["messages"][1]["content"].split("Transcript:\n", 1)[1].split("\n")
    ]
    assert sent == [line.render() for line in LONG.lines]
    combines = [r for r in requests if "Part summaries:" in r.json["messages"][1]["content"]]
    assert len(requests) == len(parts) + len(combines) and combines
    for r in requests:  # the bridge's estimate stays within the budget, and errs high
        estimated = estimate_message_tokens(r.json["messages"])
        assert estimated <= budget
        assert estimated >= sum(count_tokens(m["content"]) for m in r.json["messages"])
    assert written.content["gist"].startswith("[emulated] Combined from")
    assert "turn 0" in written.content["reason"]  # the first part's reason
    assert written.usage.requests == len(requests)


async def test_answers_already_paid_for_are_not_asked_again() -> None:
    async with LLMEmulator() as emu:
        llm = ChatLLM(LLMOptions(base_url=emu.url, model=emu.model, api_key=emu.api_key or ""))
        summarizer = CallSummarizer(llm, input_budget_tokens=1200)
        parts = len(summarizer.split(LONG))
        progress = SummaryProgress()
        emu.inject(None, None, LLMFault.server_error())  # parts 1 and 2, then a 500
        with pytest.raises(LLMError) as error:
            await summarizer.summarize(LONG, progress)
        assert error.value.retryable and len(progress.answers) == 2
        before = len(emu.chat_requests)
        written = await summarizer.summarize(LONG, progress)
        await llm.aclose()
    asked_again = [r.json["messages"][1]["content"] for r in emu.chat_requests[before:]]
    assert not any(f"part {n} of {parts}" in content for n in (1, 2) for content in asked_again)
    assert any(f"part 3 of {parts}" in content for content in asked_again)
    assert written.parts == parts
    assert written.usage.requests == len(emu.chat_requests) - 1  # the 500 reported no usage


# --- prompt and schema pieces -----------------------------------------------------------------


def test_the_estimate_errs_high_for_english_and_counts_other_scripts_per_character() -> None:
    text = "\n".join(line.render() for line in LONG.lines)
    assert estimate_tokens(text) >= count_tokens(text)
    assert estimate_tokens("日本語のテキスト") == 8
    assert estimate_tokens("") == 0


def test_split_keeps_order_and_cuts_only_overlong_lines() -> None:
    lines = [Line("caller", "word " * 10), Line("agent", "x " * 400), Line("caller", "bye")]
    parts = split_transcript(lines, 60)
    joined = [line for part in parts for line in part]
    assert " ".join(line.text for line in joined if line.speaker == "agent").split() == ["x"] * 400
    assert joined[0] == Line("caller", ("word " * 10).strip())
    assert joined[-1] == Line("caller", "bye")
    for part in parts:
        assert sum(estimate_tokens(line.render()) + 1 for line in part) <= 60
    assert split_transcript([], 100) == [[]]


def test_combining_groups_always_make_progress() -> None:
    summary = {"gist": "g " * 300, "reason": "r", "outcome": {}, "action_items": []}
    groups = group_for_combining(SHORT, [summary] * 5, budget=100)  # nothing fits
    assert all(len(group) >= 2 for group in groups)
    assert sum(len(group) for group in groups) == 5 and len(groups) <= 2
    assert group_for_combining(SHORT, [summary] * 3, budget=100_000) == [[summary] * 3]


def test_what_leaves_the_bridge_is_the_labelled_text_and_two_facts() -> None:
    messages = whole_call_messages(SHORT)
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert user.splitlines()[:4] == [
        "Call facts:",
        "- duration: 42.0 s",
        "- language: en",
        "- speaker labels: caller (the customer who called); agent (the company's agent)",
    ]
    assert user.split("Transcript:\n", 1)[1] == "\n".join(line.render() for line in SHORT.lines)


def test_the_parser_takes_fenced_json_and_refuses_everything_else() -> None:
    assert parse_json_object('Sure:\n```json\n{"a": 1}\n```') == {"a": 1}
    for bad in ("no json here", "[1, 2]", '{"a": }', ""):
        with pytest.raises(InvalidSummary):
            parse_json_object(bad)


def test_validation_names_what_is_wrong() -> None:
    good = {
        "gist": "A call.",
        "reason": "Why.",
        "outcome": {"status": "follow_up", "text": "Later."},
        "action_items": [{"owner": "agent", "text": "Call back."}],
        "sentiment": {"caller": "neutral", "agent": "positive"},
    }
    assert validate_content(good, ("caller", "agent")) == good
    cases = {
        "/outcome/status": {**good, "outcome": {"status": "done", "text": "x"}},
        "/sentiment": {**good, "sentiment": {"caller": "neutral"}},
        "/gist": {**good, "gist": ""},
        "/action_items/0": {**good, "action_items": [{"owner": "agent"}]},
        "/": {**good, "extra": 1},
    }
    for where, value in cases.items():
        with pytest.raises(InvalidSummary) as problem:
            validate_content(value, ("caller", "agent"))
        assert where in str(problem.value), (where, str(problem.value))
    with pytest.raises(InvalidSummary):
        validate_content({**good, "gist": "   "}, ("caller", "agent"))
    json.dumps(good)  # plain JSON
