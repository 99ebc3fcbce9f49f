"""The LLM, reached through the one API every provider and local server shares: OpenAI-
compatible chat completions, with the official ``openai`` package's async client.

:class:`ChatLLM` sends one chat request and returns the answer's text with its token
usage, or raises :class:`LLMError`, which says whether trying again later may help
(timeouts, ``429`` with its ``Retry-After``, ``5xx``, connection errors) or not (a refused
key, an unknown model, a request the server rejects). The client's own retries are off:
retrying, with backoff and for a bounded time, is the job queue's work, so a waiting
summary holds no connection and no concurrency slot.

Structured output. The answer's schema is requested the strongest way the server
supports (``structured_output``):

* ``json_schema``: ``response_format: {"type": "json_schema", "json_schema": {…,
  "strict": true}}``. OpenAI, Azure, vLLM, llama.cpp's server, Ollama (0.5+) and most
  hosted providers constrain the answer to the schema.
* ``json_object``: ``response_format: {"type": "json_object"}`` (JSON mode: valid JSON,
  any shape) with the schema in the system message. For servers that only have JSON mode.
* ``none``: no ``response_format``; the schema is in the system message. For servers that
  have neither (their answer may come in a Markdown fence, which the parser allows).
* ``auto`` (default): start with ``json_schema``; when the server answers ``400``/``422``
  naming ``response_format`` or ``json_schema``, step down to the next mode at once and
  stay there for the process. Every answer is validated whatever the mode, so a weaker
  mode costs at most the one retry on invalid output, never a wrong summary.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import openai
import structlog

from callbridge.ai_summary.prompt import Message
from callbridge.metrics import DISABLED, BridgeMetrics

log = structlog.get_logger(__name__)

STRUCTURED_OUTPUT_MODES = ("auto", "json_schema", "json_object", "none")
_STEP_DOWN = {"json_schema": "json_object", "json_object": "none"}
NO_KEY = "not-needed"  # local servers take any key; the client insists on one


@dataclass(frozen=True, slots=True)
class LLMOptions:
    """How to reach the LLM (``[summary]`` settings)."""

    base_url: str
    model: str
    api_key: str = ""
    timeout_s: float = 120.0
    max_output_tokens: int = 1024
    temperature: float | None = 0.0  # None: not sent (some reasoning models insist)
    structured_output: str = "auto"


class LLMError(Exception):
    """A chat request that got no usable answer.

    ``retryable``: trying again later may succeed; ``retry_after_s``: what the server asked
    for (``Retry-After``), if anything; ``code``: ``timeout``, ``connection``,
    ``rate_limited``, ``server_error``, ``unauthorized``, ``not_found`` or ``rejected``.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool,
        retry_after_s: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.status = status


@dataclass(frozen=True, slots=True)
class Completion:
    """One answer: its text, why it stopped, who wrote it and what it cost."""

    content: str
    finish_reason: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    refusal: str | None = None

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date) as seconds."""
    lowered = {key.lower(): value for key, value in headers.items()}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = lowered.get(name)
        if raw is None:
            continue
        try:
            value = float(raw.strip()) * scale
        except ValueError:
            parsed = email.utils.parsedate_tz(raw) if name == "retry-after" else None
            if parsed is None:
                continue
            value = email.utils.mktime_tz(parsed) - (time.time() if now is None else now)
        if math.isfinite(value):
            return max(0.0, value)
    return None


def _server_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
        if isinstance(body.get("detail"), str | list):
            return json.dumps(body["detail"])[:300]
    return str(exc.message)[:300]


def _names_response_format(exc: openai.APIStatusError) -> bool:
    if exc.status_code not in (400, 422):
        return False
    text = f"{getattr(exc, 'param', '') or ''} {_server_message(exc)}".lower()
    return any(word in text for word in ("response_format", "json_schema", "json schema"))


def classify(exc: openai.OpenAIError) -> LLMError:
    """The :class:`LLMError` for what the ``openai`` client raised."""
    if isinstance(exc, openai.APITimeoutError):
        return LLMError("timeout", "the LLM did not answer in time", retryable=True)
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        return LLMError("connection", f"cannot reach the LLM: {cause}", retryable=True)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = f"{status}: {_server_message(exc)}"
        retry_after = retry_after_seconds(dict(exc.response.headers))
        if status == 429:
            return LLMError(
                "rate_limited", message, retryable=True, retry_after_s=retry_after, status=status
            )
        if status >= 500 or status in (408, 409):
            return LLMError(
                "server_error", message, retryable=True, retry_after_s=retry_after, status=status
            )
        if status in (401, 403):
            return LLMError(
                "unauthorized",
                f"{message} (check CALLBRIDGE_SUMMARY_LLM_KEY)",
                retryable=False,
                status=status,
            )
        if status == 404:
            return LLMError(
                "not_found",
                f"{message} (check CALLBRIDGE_SUMMARY_LLM_URL and CALLBRIDGE_SUMMARY_LLM_MODEL)",
                retryable=False,
                status=status,
            )
        return LLMError("rejected", message, retryable=False, status=status)
    return LLMError("rejected", f"unexpected answer from the LLM: {exc}", retryable=False)


def schema_instruction(schema: Mapping[str, Any]) -> str:
    """What the system message gains when the server cannot be given the schema itself."""
    return (
        "\n\nYour answer must be a single JSON object, with no text before or after it, "
        "that is valid against this JSON Schema:\n" + json.dumps(schema, ensure_ascii=False)
    )


class ChatLLM:
    """One OpenAI-compatible chat-completions endpoint (one ``AsyncOpenAI`` client with its
    connection pool). Create it once per process; :meth:`aclose` at shutdown."""

    def __init__(
        self,
        options: LLMOptions,
        *,
        client: openai.AsyncOpenAI | None = None,
        metrics: BridgeMetrics = DISABLED,
    ) -> None:
        if options.structured_output not in STRUCTURED_OUTPUT_MODES:
            raise ValueError(f"unknown structured_output {options.structured_output!r}")
        self.options = options
        self.metrics = metrics
        self._client = client or openai.AsyncOpenAI(
            base_url=options.base_url,
            api_key=options.api_key or NO_KEY,
            timeout=options.timeout_s,
            max_retries=0,
        )
        self._mode = (
            "json_schema" if options.structured_output == "auto" else options.structured_output
        )

    @property
    def mode(self) -> str:
        """The structured-output mode requests use now (``auto`` may have stepped down)."""
        return self._mode

    async def aclose(self) -> None:
        await self._client.close()

    async def complete(
        self,
        messages: Sequence[Message],
        schema: Mapping[str, Any],
        schema_name: str,
        *,
        max_output_tokens: int | None = None,
    ) -> Completion:
        """Ask for an answer valid against ``schema``; see the module docstring for how."""
        while True:
            mode = self._mode
            started = time.perf_counter()
            try:
                completion = await self._request(
                    mode, messages, schema, schema_name, max_output_tokens
                )
            except openai.APIStatusError as exc:
                self.metrics.llm_request_latency.observe(time.perf_counter() - started)
                if (
                    self.options.structured_output == "auto"
                    and mode in _STEP_DOWN
                    and _names_response_format(exc)
                ):
                    self.metrics.llm_requests.labels(result="response_format_unsupported").inc()
                    self._step_down(mode, _server_message(exc))
                    continue
                raise self._counted(classify(exc)) from exc
            except openai.OpenAIError as exc:
                self.metrics.llm_request_latency.observe(time.perf_counter() - started)
                raise self._counted(classify(exc)) from exc
            self.metrics.llm_request_latency.observe(time.perf_counter() - started)
            self.metrics.llm_requests.labels(result="ok").inc()
            self.metrics.llm_tokens.labels(kind="prompt").inc(completion.prompt_tokens)
            self.metrics.llm_tokens.labels(kind="completion").inc(completion.completion_tokens)
            return completion

    def _counted(self, error: LLMError) -> LLMError:
        self.metrics.llm_requests.labels(result=error.code).inc()
        return error

    def _step_down(self, mode: str, reason: str) -> None:
        if self._mode == mode:  # another request may have stepped down already
            self._mode = _STEP_DOWN[mode]
            log.warning(
                "summary.structured_output_unsupported",
                mode=mode,
                now=self._mode,
                server_said=reason[:300],
            )

    async def _request(
        self,
        mode: str,
        messages: Sequence[Message],
        schema: Mapping[str, Any],
        schema_name: str,
        max_output_tokens: int | None,
    ) -> Completion:
        sent = [dict(message) for message in messages]
        extra: dict[str, Any] = {}
        if mode == "json_schema":
            extra["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": schema_name, "schema": dict(schema), "strict": True},
            }
        else:
            if sent and sent[0]["role"] == "system":
                sent[0]["content"] += schema_instruction(schema)
            else:
                sent.insert(0, {"role": "system", "content": schema_instruction(schema).strip()})
            if mode == "json_object":
                extra["response_format"] = {"type": "json_object"}
        if self.options.temperature is not None:
            extra["temperature"] = self.options.temperature
        response = await self._client.chat.completions.create(
            model=self.options.model,
            messages=cast(Any, sent),
            max_completion_tokens=max_output_tokens or self.options.max_output_tokens,
            **extra,
        )
        usage = response.usage
        prompt_tokens = usage.prompt_tokens if usage else 0
        completion_tokens = usage.completion_tokens if usage else 0
        model = response.model or self.options.model
        if not response.choices:  # an empty answer: the caller's validation rejects it
            return Completion("", "", model, prompt_tokens, completion_tokens)
        choice = response.choices[0]
        return Completion(
            content=choice.message.content or "",
            finish_reason=str(choice.finish_reason or ""),
            model=model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            refusal=getattr(choice.message, "refusal", None),
        )
