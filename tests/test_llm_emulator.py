"""The LLM emulator: it refuses what the OpenAI chat-completions API refuses, with the
API's statuses and error bodies, answers deterministically from the transcript, and
injects the faults it promises."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest

from callbridge.ai_summary.schema import SCHEMA_NAME, content_schema, validate_content
from callbridge.testing.llm_emulator import LLMEmulator, LLMFault
from callbridge.testing.llm_requests import check_strict_schema

TRANSCRIPT = (
    "Call facts:\n- duration: 40.0 s\n- language: en\n"
    "- speaker labels: caller (the caller); agent (the agent)\n\n"
    "Transcript:\n"
    "caller: Hello, my router is broken again and I am frustrated, it is terrible.\n"
    "agent: Sorry to hear that. I'll send you a new one today.\n"
    "caller: Great, thank you."
)


def summary_format(speakers: tuple[str, ...] = ("caller", "agent")) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": SCHEMA_NAME, "schema": content_schema(speakers), "strict": True},
    }


def request_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "callbridge-emulated-llm",
        "messages": [
            {"role": "system", "content": "Summarise the call as JSON."},
            {"role": "user", "content": TRANSCRIPT},
        ],
        "response_format": summary_format(),
    }
    body.update(overrides)
    return {key: value for key, value in body.items() if value is not None}


@pytest.fixture
async def emulator() -> AsyncIterator[LLMEmulator]:
    async with LLMEmulator() as emu:
        yield emu


async def post(
    emulator: LLMEmulator, body: Any, key: str | None = "default"
) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {emulator.api_key if key == 'default' else key}"
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(emulator.url + "/chat/completions", data=raw, headers=headers) as resp,
    ):
        return resp.status, await resp.json(), dict(resp.headers)


def client(emulator: LLMEmulator, **kwargs: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=emulator.url, api_key=emulator.api_key, max_retries=0, **kwargs
    )


# --- strict like the API ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "message", "param", "code"),
    [
        (b"{not json", 400, "We could not parse the JSON body", None, None),
        (request_body(foo=1), 400, "Unrecognized request argument supplied: foo", None, None),
        (request_body(model=None), 400, "you must provide a model parameter", None, None),
        (
            request_body(model="gpt-unknown"),
            404,
            "The model `gpt-unknown` does not exist",
            None,
            "model_not_found",
        ),
        (
            request_body(messages=None),
            400,
            "Missing required parameter: 'messages'.",
            "messages",
            "missing_required_parameter",
        ),
        (
            request_body(messages=[]),
            400,
            "Invalid 'messages': empty array",
            "messages",
            "empty_array",
        ),
        (
            request_body(messages=[{"role": "bot", "content": "hi"}]),
            400,
            "Invalid value: 'bot'. Supported values are: 'system', 'assistant', 'user', "
            "'function', 'tool', and 'developer'.",
            "messages[0].role",
            "invalid_value",
        ),
        (
            request_body(messages=[{"role": "user"}]),
            400,
            "Missing required parameter: 'messages[0].content'.",
            "messages[0].content",
            "missing_required_parameter",
        ),
        (
            request_body(messages=[{"role": "user", "content": "x", "speaker": "caller"}]),
            400,
            "Additional properties are not allowed ('speaker' was unexpected)",
            None,
            None,
        ),
        (
            request_body(temperature=3),
            400,
            "Invalid 'temperature': decimal above maximum value.",
            "temperature",
            "decimal_above_max_value",
        ),
        (
            request_body(max_completion_tokens=0),
            400,
            "Invalid 'max_completion_tokens': integer below minimum value.",
            "max_completion_tokens",
            "integer_below_min_value",
        ),
        (
            request_body(response_format={"type": "yaml"}),
            400,
            "Invalid value: 'yaml'. Supported values are: 'text', 'json_object', and "
            "'json_schema'.",
            "response_format.type",
            "invalid_value",
        ),
        (
            request_body(response_format={"type": "json_schema", "json_schema": {"schema": {}}}),
            400,
            "Missing required parameter: 'response_format.json_schema.name'.",
            "response_format.json_schema.name",
            "missing_required_parameter",
        ),
        (
            request_body(
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "call summary", "schema": {"type": "object"}},
                }
            ),
            400,
            "string does not match pattern",
            "response_format.json_schema.name",
            "invalid_value",
        ),
        (
            request_body(
                response_format={
                    "type": "json_schema",
                    "json_schema": {
                        "name": "s",
                        "strict": True,
                        "schema": {"type": "object", "properties": {"a": {"type": "string"}}},
                    },
                }
            ),
            400,
            "Invalid schema for response_format 's': In context=(), 'additionalProperties' "
            "is required to be supplied and to be false.",
            "response_format",
            None,
        ),
        (
            request_body(
                response_format={
                    "type": "json_schema",
                    "json_schema": {
                        "name": "s",
                        "strict": True,
                        "schema": {
                            "type": "object",
                            "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
                            "required": ["a"],
                            "additionalProperties": False,
                        },
                    },
                }
            ),
            400,
            "'required' is required to be supplied and to be an array including every key "
            "in properties. Missing 'b'.",
            "response_format",
            None,
        ),
        (
            request_body(
                messages=[{"role": "user", "content": "summarise this call"}],
                response_format={"type": "json_object"},
            ),
            400,
            "'messages' must contain the word 'json' in some form",
            "messages",
            None,
        ),
    ],
)
async def test_requests_the_api_refuses_are_refused_alike(
    emulator: LLMEmulator,
    body: Any,
    status: int,
    message: str,
    param: str | None,
    code: str | None,
) -> None:
    got_status, answer, _ = await post(emulator, body)
    assert got_status == status
    error = answer["error"]
    assert message in error["message"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert emulator.requests[-1].status == status


async def test_a_key_is_required_and_checked(emulator: LLMEmulator) -> None:
    status, answer, _ = await post(emulator, request_body(), key=None)
    assert status == 401 and "You didn't provide an API key" in answer["error"]["message"]
    status, answer, _ = await post(emulator, request_body(), key="sk-wrong-key-123")
    assert status == 401 and answer["error"]["code"] == "invalid_api_key"
    assert "sk-wrong-key-123" not in answer["error"]["message"]  # masked, as the API does
    with pytest.raises(openai.AuthenticationError):
        await openai.AsyncOpenAI(
            base_url=emulator.url, api_key="sk-nope", max_retries=0
        ).chat.completions.create(**request_body())


async def test_a_keyless_emulator_takes_any_key() -> None:
    async with LLMEmulator(api_key=None) as emu:
        status, _, _ = await post(emu, request_body(), key=None)
        assert status == 200


async def test_our_summary_schema_is_valid_in_strict_mode() -> None:
    check_strict_schema(SCHEMA_NAME, content_schema(("caller", "agent")))
    check_strict_schema(SCHEMA_NAME, content_schema(("customer",)))


async def test_a_request_beyond_the_context_window_is_refused() -> None:
    async with LLMEmulator(context_tokens=50) as emu:
        status, answer, _ = await post(emu, request_body())
        assert status == 400 and answer["error"]["code"] == "context_length_exceeded"


async def test_a_server_without_structured_outputs_refuses_json_schema() -> None:
    async with LLMEmulator(response_formats=("text", "json_object")) as emu:
        status, answer, _ = await post(emu, request_body())
        assert status == 400 and answer["error"]["param"] == "response_format"
        status, _, _ = await post(emu, request_body(response_format={"type": "json_object"}))
        assert status == 200


# --- answers ----------------------------------------------------------------------------------


async def test_the_answer_is_a_valid_deterministic_summary_marked_emulated(
    emulator: LLMEmulator,
) -> None:
    async with client(emulator) as llm:
        first = await llm.chat.completions.create(**request_body())
        second = await llm.chat.completions.create(**request_body())
    assert first.object == "chat.completion" and first.model == emulator.model
    assert first.choices[0].finish_reason == "stop"
    content = first.choices[0].message.content
    assert content is not None and content == second.choices[0].message.content
    summary = validate_content(json.loads(content), ("caller", "agent"))
    assert summary["gist"].startswith("[emulated]")
    assert "router is broken" in summary["reason"]
    assert summary["outcome"]["status"] == "resolved"  # "thank you" closes it
    assert summary["action_items"] == [
        {"owner": "agent", "text": "[emulated] I'll send you a new one today."}
    ]
    assert summary["sentiment"] == {"caller": "negative", "agent": "neutral"}
    usage = first.usage
    assert usage is not None and usage.prompt_tokens > 40 and usage.completion_tokens > 20
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_without_structured_output_the_json_comes_in_a_fence(emulator: LLMEmulator) -> None:
    async with client(emulator) as llm:
        answer = await llm.chat.completions.create(**request_body(response_format=None))
    content = answer.choices[0].message.content or ""
    assert content.startswith("Here is the summary:\n```json\n") and content.endswith("```")


async def test_max_completion_tokens_cuts_the_answer_off(emulator: LLMEmulator) -> None:
    async with client(emulator) as llm:
        answer = await llm.chat.completions.create(**request_body(max_completion_tokens=10))
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == 10
    with pytest.raises(json.JSONDecodeError):
        json.loads(answer.choices[0].message.content or "")


async def test_streaming_gives_the_same_answer(emulator: LLMEmulator) -> None:
    async with client(emulator) as llm:
        whole = await llm.chat.completions.create(**request_body())
        stream = await llm.chat.completions.create(
            **request_body(stream=True, stream_options={"include_usage": True})
        )
        pieces, finish, usage = [], None, None
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                pieces.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
    assert "".join(pieces) == whole.choices[0].message.content
    assert finish == "stop" and usage is not None and usage.total_tokens > 0


# --- faults ----------------------------------------------------------------------------------


async def test_rate_limit_carries_retry_after(emulator: LLMEmulator) -> None:
    emulator.inject(LLMFault.rate_limit(retry_after="7"))
    status, answer, headers = await post(emulator, request_body())
    assert status == 429 and headers["Retry-After"] == "7"
    assert answer["error"]["code"] == "rate_limit_exceeded"
    status, _, _ = await post(emulator, request_body())  # one fault per injection
    assert status == 200


async def test_server_errors_slow_answers_and_dropped_connections(emulator: LLMEmulator) -> None:
    emulator.inject(LLMFault.server_error(503), LLMFault.slow(1.0), LLMFault.disconnect())
    async with client(emulator, timeout=0.3) as llm:
        with pytest.raises(openai.InternalServerError) as server_error:
            await llm.chat.completions.create(**request_body())
        assert server_error.value.status_code == 503
        started = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            await llm.chat.completions.create(**request_body())
        assert time.monotonic() - started < 0.9
        with pytest.raises(openai.APIConnectionError):
            await llm.chat.completions.create(**request_body())
    assert [r.fault for r in emulator.chat_requests] == ["server_error", "slow", "disconnect"]


@pytest.mark.parametrize(
    ("fault", "finish_reason"),
    [
        (LLMFault.invalid_json(), "stop"),
        (LLMFault.truncated(), "length"),
        (LLMFault.schema_violation(), "stop"),
        (LLMFault.refusal(), "stop"),
    ],
)
async def test_bad_answers(emulator: LLMEmulator, fault: LLMFault, finish_reason: str) -> None:
    emulator.inject(fault)
    async with client(emulator) as llm:
        answer = await llm.chat.completions.create(**request_body())
    choice = answer.choices[0]
    assert choice.finish_reason == finish_reason
    if fault.kind == "refusal":
        assert choice.message.refusal and not choice.message.content
        return
    with pytest.raises(ValueError):
        validate_content(json.loads(choice.message.content or ""), ("caller", "agent"))


async def test_every_request_is_recorded_with_its_body(emulator: LLMEmulator) -> None:
    body = request_body()
    await post(emulator, body)
    recorded = emulator.chat_requests[-1]
    assert json.loads(recorded.body) == body and recorded.json == body
    assert recorded.headers["authorization"] == f"Bearer {emulator.api_key}"
