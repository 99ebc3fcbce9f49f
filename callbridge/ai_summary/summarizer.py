"""Writing one call's AI summary: one request when the transcript fits the input budget,
else a summary per part and a combining request (map, then reduce), every answer
validated, one retry on an invalid answer, then a clear failure.

Long calls. The transcript is cut between lines into consecutive parts whose request fits
``input_budget_tokens`` (a line longer than a part is cut between words). Each part is
summarised with the same schema, told which part of how many it is. The part summaries,
in order, then go to a combining request that writes the call's summary; when they do
not fit one request either, consecutive groups are combined first, and so on until one
summary is left (each round at least halves their number).

Invalid answers (not JSON, not the schema, blank text, a refusal, or cut off at the output
limit) are retried once per request: a cut-off answer with twice the output limit, any
other with the answer and what is wrong with it shown to the model. A second invalid
answer fails the summary (:class:`SummaryFailed`, ``invalid_output``), which is final.
Transport failures (:class:`~callbridge.ai_summary.llm.LLMError`) propagate to the job
that runs the summary, which retries the retryable ones later; answers already received
are kept in :class:`SummaryProgress`, so a retry does not pay for them again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from callbridge.ai_summary.llm import ChatLLM, Completion
from callbridge.ai_summary.prompt import (
    CallTranscript,
    Message,
    combine_messages,
    estimate_message_tokens,
    group_for_combining,
    part_messages,
    split_transcript,
    whole_call_messages,
)
from callbridge.ai_summary.schema import (
    SCHEMA_NAME,
    InvalidSummary,
    content_schema,
    parse_json_object,
    validate_content,
)

log = structlog.get_logger(__name__)

REPAIR_NOTE = (
    "That answer is not valid: {problem}. Answer again with only the corrected JSON object."
)
MAX_OUTPUT_TOKENS_ON_RETRY = 8192


class SummaryFailed(Exception):
    """A summary that cannot be written, and trying again would not change that.

    ``code``: ``invalid_output`` (two invalid answers to one request) or
    ``empty_transcript`` (nobody said anything).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class Usage:
    """Requests and tokens, as the LLM reported them."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, completion: Completion) -> None:
        self.requests += 1
        self.prompt_tokens += completion.prompt_tokens
        self.completion_tokens += completion.completion_tokens

    def to_json(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


@dataclass(slots=True)
class SummaryProgress:
    """What one call's summary has cost and received so far, across attempts."""

    answers: dict[str, dict[str, Any]] = field(default_factory=dict)  # request digest → answer
    usage: Usage = field(default_factory=Usage)
    model: str | None = None


@dataclass(frozen=True, slots=True)
class WrittenSummary:
    content: dict[str, Any]  # gist, reason, outcome, action_items, sentiment
    model: str
    parts: int
    usage: Usage


def _digest(messages: Sequence[Message]) -> str:
    raw = json.dumps(list(messages), ensure_ascii=False, sort_keys=True).encode("utf-8")
    return hashlib.sha256(raw).hexdigest()


def check_answer(completion: Completion, speakers: Sequence[str]) -> dict[str, Any]:
    """The summary in an answer, or :class:`InvalidSummary` saying what is wrong."""
    if completion.refusal:
        raise InvalidSummary(f"the model refused: {completion.refusal[:200]}")
    if completion.truncated:
        raise InvalidSummary("the answer was cut off at the output token limit")
    if completion.finish_reason == "content_filter":
        raise InvalidSummary("the answer was withheld by the provider's content filter")
    return validate_content(parse_json_object(completion.content), speakers)


class CallSummarizer:
    """Writes AI summaries with one :class:`ChatLLM` (see the module docstring)."""

    def __init__(self, llm: ChatLLM, *, input_budget_tokens: int) -> None:
        self.llm = llm
        self.input_budget_tokens = input_budget_tokens

    async def summarize(
        self, transcript: CallTranscript, progress: SummaryProgress | None = None
    ) -> WrittenSummary:
        """The call's summary; raises :class:`SummaryFailed` or ``LLMError``."""
        progress = progress if progress is not None else SummaryProgress()
        if not transcript.lines:
            raise SummaryFailed("empty_transcript", "nothing was said in the call")
        speakers = transcript.speakers
        whole = whole_call_messages(transcript)
        if estimate_message_tokens(whole) <= self.input_budget_tokens:
            content = await self._ask(whole, speakers, progress)
            return self._written(content, 1, progress)
        parts = self.split(transcript)
        summaries = [
            await self._ask(part_messages(transcript, lines, index, len(parts)), speakers, progress)
            for index, lines in enumerate(parts, start=1)
        ]
        while len(summaries) > 1:
            groups = group_for_combining(transcript, summaries, self.input_budget_tokens)
            summaries = [
                await self._ask(combine_messages(transcript, group), speakers, progress)
                if len(group) > 1
                else dict(group[0])
                for group in groups
            ]
        return self._written(summaries[0], len(parts), progress)

    def split(self, transcript: CallTranscript) -> list[list[Any]]:
        """The transcript's parts: each part's request fits the input budget."""
        empty = part_messages(transcript, [], 10**6, 10**6)  # the widest part header
        room = self.input_budget_tokens - estimate_message_tokens(empty)
        return split_transcript(transcript.lines, max(room, 50))

    @staticmethod
    def _written(content: dict[str, Any], parts: int, progress: SummaryProgress) -> WrittenSummary:
        return WrittenSummary(
            content=content, model=progress.model or "", parts=parts, usage=progress.usage
        )

    async def _ask(
        self, messages: list[Message], speakers: Sequence[str], progress: SummaryProgress
    ) -> dict[str, Any]:
        key = _digest(messages)
        known = progress.answers.get(key)
        if known is not None:
            return known
        schema = content_schema(speakers)
        request = messages
        max_tokens = self.llm.options.max_output_tokens
        for attempt in (1, 2):
            completion = await self.llm.complete(
                request, schema, SCHEMA_NAME, max_output_tokens=max_tokens
            )
            progress.usage.add(completion)
            try:
                content = check_answer(completion, speakers)
            except InvalidSummary as problem:
                self.llm.metrics.llm_invalid_answers.inc()
                if attempt == 2:
                    raise SummaryFailed(
                        "invalid_output", f"the LLM's answer was invalid twice: {problem}"
                    ) from None
                log.info("summary.invalid_answer", problem=str(problem)[:300], mode=self.llm.mode)
                if completion.truncated:
                    max_tokens = min(max_tokens * 2, MAX_OUTPUT_TOKENS_ON_RETRY)
                else:
                    request = [
                        *messages,
                        {"role": "assistant", "content": completion.content},
                        {"role": "user", "content": REPAIR_NOTE.format(problem=problem)},
                    ]
                continue
            progress.answers[key] = content
            progress.model = completion.model
            return content
        raise AssertionError("unreachable")  # pragma: no cover
