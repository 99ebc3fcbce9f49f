"""The chat-completions client against the LLM emulator: typed, retryable-or-not errors
with Retry-After, and structured output that steps down on servers without it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from email.utils import formatdate

import pytest

from callbridge.ai_summary.llm import ChatLLM, LLMError, LLMOptions, retry_after_seconds
from callbridge.ai_summary.prompt import CallTranscript, Line, whole_call_messages
from callbridge.ai_summary.schema import SCHEMA_NAME, content_schema
from callbridge.ai_summary.summarizer import check_answer
from callbridge.testing.llm_emulator import LLMEmulator, LLMFault
from tests.bridge_harness import free_port

SPEAKERS = ("caller", "agent")
TRANSCRIPT = CallTranscript(
    lines=(
        Line("caller", "Hi, I was charged twice for my order."),
        Line("agent", "I see it. I'll refund the second charge now."),
        Line("caller", "Thank you."),
    ),
    duration_ms=21_000,
    language_code="en",
    roles={"caller": "the customer who called", "agent": "the company's agent"},
)
MESSAGES = whole_call_messages(TRANSCRIPT)
SCHEMA = content_schema(SPEAKERS)


def options(emulator: LLMEmulator, **overrides: object) -> LLMOptions:
    base = {
        "base_url": emulator.url,
        "model": emulator.model,
        "api_key": emulator.api_key or "",
        "timeout_s": 5.0,
    }
    return LLMOptions(**{**base, **overrides})  # type: ignore[arg-type]


@pytest.fixture
async def emulator() -> AsyncIterator[LLMEmulator]:
    async with LLMEmulator() as emu:
        yield emu


async def ask(llm: ChatLLM) -> dict[str, object]:
    completion = await llm.complete(MESSAGES, SCHEMA, SCHEMA_NAME)
    return check_answer(completion, SPEAKERS)


async def test_a_summary_with_json_schema_and_usage(emulator: LLMEmulator) -> None:
    llm = ChatLLM(options(emulator))
    completion = await llm.complete(MESSAGES, SCHEMA, SCHEMA_NAME)
    await llm.aclose()
    summary = check_answer(completion, SPEAKERS)
    assert summary["outcome"]["status"] == "resolved"
    assert completion.model == emulator.model and completion.prompt_tokens > 0
    sent = emulator.chat_requests[0].json
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["strict"] is True
    assert sent["temperature"] == 0.0 and sent["max_completion_tokens"] == 1024
    assert sent["messages"] == MESSAGES  # the schema travels in response_format only


async def test_temperature_can_be_left_out(emulator: LLMEmulator) -> None:
    llm = ChatLLM(options(emulator, temperature=None))
    await ask(llm)
    await llm.aclose()
    assert "temperature" not in emulator.chat_requests[0].json


@pytest.mark.parametrize(
    ("formats", "mode", "requests"),
    [(("text", "json_object"), "json_object", 2), (("text",), "none", 3)],
)
async def test_auto_steps_down_when_the_server_lacks_structured_output(
    formats: tuple[str, ...], mode: str, requests: int
) -> None:
    async with LLMEmulator(response_formats=formats) as emu:
        llm = ChatLLM(options(emu))
        first = await ask(llm)
        assert llm.mode == mode and len(emu.chat_requests) == requests
        second = await ask(llm)  # the process remembers: one request now
        await llm.aclose()
    assert first == second
    assert len(emu.chat_requests) == requests + 1
    last = emu.chat_requests[-1].json
    assert "JSON Schema" in last["messages"][0]["content"]  # the schema is in the prompt
    assert json.dumps(SCHEMA) in last["messages"][0]["content"]
    assert ("response_format" in last) == (mode == "json_object")


async def test_an_explicit_mode_never_steps_down() -> None:
    async with LLMEmulator(response_formats=("text",)) as emu:
        llm = ChatLLM(options(emu, structured_output="json_schema"))
        with pytest.raises(LLMError) as error:
            await ask(llm)
        await llm.aclose()
    assert error.value.code == "rejected" and not error.value.retryable
    assert "response_format" in str(error.value)


@pytest.mark.parametrize(
    ("fault", "code", "retry_after"),
    [
        (LLMFault.rate_limit(retry_after="12"), "rate_limited", 12.0),
        (LLMFault.rate_limit(retry_after=None), "rate_limited", None),
        (LLMFault.server_error(500), "server_error", None),
        (LLMFault.server_error(502), "server_error", None),
        (LLMFault.slow(2.0), "timeout", None),
        (LLMFault.disconnect(), "connection", None),
    ],
)
async def test_transient_failures_are_retryable(
    emulator: LLMEmulator, fault: LLMFault, code: str, retry_after: float | None
) -> None:
    emulator.inject(fault)
    llm = ChatLLM(options(emulator, timeout_s=0.5))
    with pytest.raises(LLMError) as error:
        await ask(llm)
    assert (error.value.code, error.value.retryable) == (code, True)
    assert error.value.retry_after_s == retry_after
    assert await ask(llm)  # the next request is fine
    await llm.aclose()
    assert len(emulator.chat_requests) == 2  # the client itself never retried


async def test_an_unreachable_server_is_retryable() -> None:
    llm = ChatLLM(
        LLMOptions(base_url=f"http://127.0.0.1:{free_port()}/v1", model="m", timeout_s=2.0)
    )
    with pytest.raises(LLMError) as error:
        await ask(llm)
    await llm.aclose()
    assert (error.value.code, error.value.retryable) == ("connection", True)


async def test_refusals_of_the_request_are_final(emulator: LLMEmulator) -> None:
    wrong_key = ChatLLM(options(emulator, api_key="sk-not-the-key"))
    with pytest.raises(LLMError) as error:
        await ask(wrong_key)
    assert (error.value.code, error.value.retryable, error.value.status) == (
        "unauthorized",
        False,
        401,
    )
    assert "CALLBRIDGE_SUMMARY_LLM_KEY" in str(error.value)
    assert "sk-not-the-key" not in str(error.value)
    wrong_model = ChatLLM(options(emulator, model="gpt-nonexistent"))
    with pytest.raises(LLMError) as error:
        await ask(wrong_model)
    assert (error.value.code, error.value.retryable) == ("not_found", False)
    assert "CALLBRIDGE_SUMMARY_LLM_MODEL" in str(error.value)
    for llm in (wrong_key, wrong_model):
        await llm.aclose()


def test_retry_after_in_seconds_milliseconds_and_http_dates() -> None:
    assert retry_after_seconds({"Retry-After": "30"}) == 30.0
    assert retry_after_seconds({"retry-after": "1.5"}) == 1.5
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    now = 1_800_000_000.0
    date = formatdate(now + 45, usegmt=True)
    assert retry_after_seconds({"Retry-After": date}, now=now) == 45.0
    assert retry_after_seconds({"Retry-After": formatdate(now - 5, usegmt=True)}, now=now) == 0.0
    assert retry_after_seconds({"Retry-After": "soon"}) is None
    assert retry_after_seconds({}) is None
