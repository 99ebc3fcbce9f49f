"""A local OpenAI-compatible chat-completions server for tests, benchmarks and the demo.

:class:`LLMEmulator` serves ``POST /v1/chat/completions`` (and ``GET /v1/models``) the
way the OpenAI API does: bearer-key auth (when it has a key), every request validated as
strictly as the real API (:mod:`callbridge.testing.llm_requests`), its error bodies and
statuses, ``max_completion_tokens`` honoured (a longer answer is cut off with
``finish_reason: "length"``), a context window, streaming (``stream: true``, server-sent
events) and token usage. The answer is a deterministic summary of the transcript in the
request (:mod:`callbridge.testing.llm_answers`), every text marked ``[emulated]``, from a
model whose name says it is the emulator. It is an emulator for call summaries, not a
language model: it answers every request with a summary.

Faults are injected per request, in order (:meth:`LLMEmulator.inject`), or for every
request (``default_fault``): ``429`` with ``Retry-After``, ``5xx``, slow answers, a
dropped connection, invalid JSON, a truncated answer, valid JSON that breaks the schema,
and a refusal. ``response_formats`` emulates servers without structured outputs (e.g.
``("text", "json_object")``). Every request is recorded in :attr:`LLMEmulator.requests`
(headers, raw body, parsed JSON, answered status) for assertions.

    async with LLMEmulator() as llm:
        llm.inject(LLMFault.rate_limit(retry_after="1"), LLMFault.server_error())
        ...  # CALLBRIDGE_SUMMARY_LLM_URL=llm.url, _MODEL=llm.model, _KEY=llm.api_key

Standalone: ``callbridge emulate-llm --port 8766`` (or ``python -m
callbridge.testing.llm_emulator``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from callbridge.testing.llm_answers import answer_for, count_tokens, token_ends
from callbridge.testing.llm_requests import ApiError, check_request, message_text
from callbridge.testing.local_server import HttpFault, LocalHttpServer

EMULATED_MODEL = "callbridge-emulated-llm"
DEFAULT_API_KEY = "sk-emulated-test-key"
CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True, slots=True)
class LLMFault(HttpFault):
    """One injected fault: those of every test double (``rate_limit``, ``server_error``,
    ``slow``, ``disconnect``) and bad answers."""

    @classmethod
    def invalid_json(cls) -> LLMFault:
        return cls("invalid_json")

    @classmethod
    def truncated(cls) -> LLMFault:
        """Half the answer, ``finish_reason: "length"``."""
        return cls("truncated")

    @classmethod
    def schema_violation(cls) -> LLMFault:
        """Valid JSON without ``outcome`` and with an unknown sentiment value."""
        return cls("schema_violation")

    @classmethod
    def refusal(cls) -> LLMFault:
        return cls("refusal")


@dataclass(frozen=True, slots=True)
class EmulatedRequest:
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any
    status: int  # what the emulator answered (0: the connection was dropped)
    fault: str | None
    received_at: float = field(default_factory=time.time)


class LLMEmulator(LocalHttpServer):
    """The emulator server (see the module docstring). ``port=0`` picks a free port."""

    def __init__(
        self,
        *,
        api_key: str | None = DEFAULT_API_KEY,
        models: Sequence[str] = (EMULATED_MODEL,),
        port: int = 0,
        response_formats: Sequence[str] = ("text", "json_object", "json_schema"),
        context_tokens: int = 128_000,
        latency_s: float = 0.0,
    ) -> None:
        super().__init__(port)
        self.api_key = api_key
        self.models = tuple(models)
        self.response_formats = tuple(response_formats)
        self.context_tokens = context_tokens
        self.latency_s = latency_s
        self.default_fault: LLMFault | None = None
        self.requests: list[EmulatedRequest] = []
        self.in_flight = 0  # chat requests being answered now
        self.max_in_flight = 0  # the most ever answered at once
        self._faults: deque[LLMFault | None] = deque()
        self._changed = asyncio.Condition()

    @property
    def model(self) -> str:
        return self.models[0]

    @property
    def url(self) -> str:
        """The base URL to give an OpenAI client (``…/v1``)."""
        return f"http://127.0.0.1:{self._port}/v1"

    def inject(self, *faults: LLMFault | None) -> None:
        """Apply these faults to the next requests, one each, in order (None: that request
        is answered normally)."""
        self._faults.extend(faults)

    @property
    def chat_requests(self) -> list[EmulatedRequest]:
        return [r for r in self.requests if r.path == CHAT_PATH]

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[EmulatedRequest]:  # noqa: ASYNC109
        """Wait until ``count`` chat requests have been answered."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: len(self.chat_requests) >= count)
        except TimeoutError:
            raise TimeoutError(
                f"LLM emulator: {len(self.chat_requests)} of {count} requests after {timeout} s"
            ) from None
        return self.chat_requests

    # lifecycle ------------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_post(CHAT_PATH, self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        return app

    # serving --------------------------------------------------------------------------------

    async def _record(
        self, request: web.Request, body: bytes, status: int, fault: str | None
    ) -> None:
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        record = EmulatedRequest(
            path=request.path,
            headers={key.lower(): value for key, value in request.headers.items()},
            body=body,
            json=parsed,
            status=status,
            fault=fault,
        )
        async with self._changed:
            self.requests.append(record)
            self._changed.notify_all()

    @staticmethod
    def _error(error: ApiError, headers: dict[str, str] | None = None) -> web.Response:
        return web.json_response(error.body(), status=error.status, headers=headers)

    def _authorize(self, request: web.Request) -> ApiError | None:
        if self.api_key is None:
            return None
        header = request.headers.get("Authorization", "")
        if not header:
            return ApiError(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        given = header.removeprefix("Bearer ").strip()
        if not secrets.compare_digest(given.encode(), self.api_key.encode()):
            shown = f"{given[:3]}***{given[-2:]}" if len(given) > 6 else "***"
            return ApiError(401, f"Incorrect API key provided: {shown}.", None, "invalid_api_key")
        return None

    async def _unknown(self, request: web.Request) -> web.Response:
        body = await request.read()
        await self._record(request, body, 404, None)
        return self._error(ApiError(404, f"Invalid URL ({request.method} {request.path})"))

    async def _models(self, request: web.Request) -> web.Response:
        denied = self._authorize(request)
        await self._record(request, b"", denied.status if denied else 200, None)
        if denied is not None:
            return self._error(denied)
        created = int(time.time())
        data = [
            {"id": m, "object": "model", "created": created, "owned_by": "callbridge-emulator"}
            for m in self.models
        ]
        return web.json_response({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._chat_answer(request)
        finally:
            self.in_flight -= 1

    async def _chat_answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        fault = self._faults.popleft() if self._faults else self.default_fault
        kind = fault.kind if fault else None
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        denied = self._authorize(request)
        if denied is not None:
            await self._record(request, body, denied.status, None)
            return self._error(denied)
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        try:
            check_request(parsed, models=self.models, response_formats=self.response_formats)
            self._check_context(parsed)
        except ApiError as error:
            await self._record(request, body, error.status, None)
            return self._error(error)
        if fault is not None and fault.kind in ("rate_limit", "server_error"):
            await self._record(request, body, fault.status, kind)
            return self._fault_response(fault)
        if fault is not None and fault.kind == "disconnect":
            await self._record(request, body, 0, kind)
            if request.transport is not None:
                request.transport.close()  # the client sees the connection end unanswered
            return web.Response(status=500)
        await self._record(request, body, 200, kind)
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(fault.delay_s)
        return await self._answer(request, parsed, fault)

    def _check_context(self, body: dict[str, Any]) -> None:
        prompt = sum(count_tokens(message_text(m)) + 4 for m in body["messages"])
        if prompt > self.context_tokens:
            raise ApiError(
                400,
                f"This model's maximum context length is {self.context_tokens} tokens. "
                f"However, your messages resulted in {prompt} tokens. Please reduce the "
                "length of the messages.",
                "messages",
                "context_length_exceeded",
            )

    @staticmethod
    def _fault_response(fault: LLMFault) -> web.Response:
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        if fault.kind == "rate_limit":
            error = ApiError(
                429,
                "Rate limit reached for requests (emulated). Please try again later.",
                None,
                "rate_limit_exceeded",
                type="requests",
            )
        else:
            error = ApiError(
                fault.status,
                "The server had an error while processing your request (emulated).",
                None,
                None,
                type="server_error",
            )
        return web.json_response(error.body(), status=error.status, headers=headers)

    async def _answer(
        self, request: web.Request, body: dict[str, Any], fault: LLMFault | None
    ) -> web.StreamResponse:
        response_format = body.get("response_format")
        summary = answer_for(body["messages"], response_format)
        refusal = None
        if fault is not None and fault.kind == "schema_violation":
            summary.pop("outcome", None)
            summary["sentiment"] = dict.fromkeys(summary.get("sentiment", {}), "furious")
        content = json.dumps(summary, ensure_ascii=False)
        kind = (response_format or {}).get("type", "text")
        if kind == "text":  # as models without structured output tend to answer
            content = f"Here is the summary:\n```json\n{content}\n```"
        finish_reason = "stop"
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if fault is not None and fault.kind == "invalid_json":
            content = content.replace('":', '" ', 1).replace("}", "", 1)
        if fault is not None and fault.kind == "refusal":
            content, refusal = "", "I'm sorry, I can't help with that (emulated)."
        if fault is not None and fault.kind == "truncated":
            content, finish_reason = content[: len(content) // 2], "length"
        elif limit is not None and count_tokens(content) > limit:
            content, finish_reason = content[: token_ends(content)[limit - 1]], "length"
        prompt_tokens = sum(count_tokens(message_text(m)) + 4 for m in body["messages"])
        completion_tokens = count_tokens(content)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        ident = "chatcmpl-emu" + secrets.token_hex(12)
        created = int(time.time())
        model = body["model"]
        message = {"role": "assistant", "content": content or None, "refusal": refusal}
        choices = [
            {"index": i, "message": message, "logprobs": None, "finish_reason": finish_reason}
            for i in range(body.get("n") or 1)
        ]
        if body.get("stream"):
            return await self._stream(request, ident, created, model, choices, usage, body)
        return web.json_response(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_callbridge_emulator",
                "choices": choices,
                "usage": usage,
            }
        )

    @staticmethod
    async def _stream(
        request: web.Request,
        ident: str,
        created: int,
        model: str,
        choices: list[dict[str, Any]],
        usage: dict[str, int],
        body: dict[str, Any],
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def send(chunk_choices: list[dict[str, Any]], chunk_usage: Any = None) -> None:
            chunk: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_callbridge_emulator",
                "choices": chunk_choices,
            }
            if chunk_usage is not None or (body.get("stream_options") or {}).get("include_usage"):
                chunk["usage"] = chunk_usage
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        for choice in choices:
            index, message = choice["index"], choice["message"]
            await send(
                [
                    {
                        "index": index,
                        "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None,
                    }
                ]
            )
            text = message["content"] or ""
            for start in range(0, len(text), 64):
                delta = {"content": text[start : start + 64]}
                await send([{"index": index, "delta": delta, "finish_reason": None}])
            if message["refusal"]:
                await send(
                    [
                        {
                            "index": index,
                            "delta": {"refusal": message["refusal"]},
                            "finish_reason": None,
                        }
                    ]
                )
            await send([{"index": index, "delta": {}, "finish_reason": choice["finish_reason"]}])
        if (body.get("stream_options") or {}).get("include_usage"):
            await send([], usage)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


async def _serve(args: argparse.Namespace) -> None:
    emulator = LLMEmulator(api_key=args.api_key or None, models=args.model, port=args.port)
    async with emulator:
        print(
            f"LLM emulator on {emulator.url} (models: {', '.join(emulator.models)}; "
            f"key: {'any' if emulator.api_key is None else 'required'})",
            flush=True,
        )
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Local OpenAI-compatible chat-completions emulator (call summaries)"
    )
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY, help="empty: accept any key")
    parser.add_argument("--model", action="append", default=None, help="served model (repeat)")
    args = parser.parse_args(argv)
    args.model = args.model or [EMULATED_MODEL]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
