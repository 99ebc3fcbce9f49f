"""The AI summary as a post-call job (:mod:`callbridge.jobs`).

At a call's end, in the same transaction, an ``ai_summary`` job is enqueued and the
``call.ended`` summary says ``ai: {"status": "pending"}``. The job runner then writes the
summary in the background, at most ``summary.concurrency`` at once per process, so neither
``call.ended`` nor any other call's webhooks wait for an LLM. The job reads the call's
stored segments, which are redacted before they are stored (``CALLBRIDGE_REDACT``), so no
removed text can reach the LLM. With the batch pass on (``CALLBRIDGE_POSTCALL=batch``) the
job is enqueued when the pass ends instead, and reads the batch transcript (redacted too)
when the pass succeeded, the live one when it failed.

Outcomes, each stored with the call together with its ``call.summarized`` event:

* **ready**: the summary, with the model, the parts and the token usage;
* **failed** at once when retrying cannot help: two invalid answers (``invalid_output``),
  the LLM refusing the request (``llm_rejected``: key, model, URL), or a call in which
  nobody spoke (``empty_transcript``);
* **failed** after ``summary.retry_for_s`` of retrying timeouts, ``429`` (never sooner than
  its ``Retry-After``), ``5xx`` and connection errors with backoff (``llm_unavailable``).

The answers already received are saved in the job as it goes, so a retry, or a restart
that resumes the job, does not pay for them again. The analytics summary and the
transcript are never touched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import structlog

from callbridge.ai_summary.llm import ChatLLM, LLMError, LLMOptions
from callbridge.ai_summary.prompt import CallTranscript, Line
from callbridge.ai_summary.records import (
    FailureCode,
    failed_record,
    pending_record,
    ready_record,
)
from callbridge.ai_summary.schema import AIStatus
from callbridge.ai_summary.summarizer import (
    CallSummarizer,
    SummaryFailed,
    SummaryProgress,
    Usage,
)
from callbridge.config import Settings, SpeakerSettings, SummarySettings
from callbridge.jobs import (
    Job,
    JobContext,
    JobKind,
    NewJob,
    PermanentJobError,
    RetryableJobError,
    RetryPolicy,
)
from callbridge.metrics import DISABLED, BridgeMetrics
from callbridge.models import BatchStatus, CallEnded, CommittedSegment, utc_now
from callbridge.store.base import CallRecord, DurableStore
from callbridge.summary import spoken
from callbridge.webhooks.events import call_summarized_event
from callbridge.webhooks.sink import Summarize

log = structlog.get_logger(__name__)

AI_SUMMARY_JOB = "ai_summary"
TRANSIENT_CODES = ("timeout", "connection", "rate_limited", "server_error")
LEASE_S = 60.0  # renewed every 20 s while the summary is being written


def llm_options(summary: SummarySettings) -> LLMOptions:
    return LLMOptions(
        base_url=summary.llm_url,
        model=summary.llm_model,
        api_key=summary.llm_key,
        timeout_s=summary.llm_timeout_s,
        max_output_tokens=summary.llm_max_output_tokens,
        temperature=summary.llm_temperature if summary.llm_temperature >= 0 else None,
        structured_output=summary.llm_structured_output,
    )


def ai_summary_jobs(call_sid: str) -> Sequence[NewJob]:
    """The AI summary as a follow-up of the batch pass (enqueued when the pass ends)."""
    return [NewJob(AI_SUMMARY_JOB, call_sid)]


def speaker_roles(speakers: SpeakerSettings) -> dict[str, str]:
    """What each configured label stands for, as the LLM is told."""
    return {
        speakers.inbound_label: "the caller, on the inbound track",
        speakers.outbound_label: "the agent answering for the company, on the outbound track",
    }


def call_transcript(
    call: CallRecord, segments: Sequence[CommittedSegment], speakers: SpeakerSettings
) -> CallTranscript:
    """What the summary is written from: every segment with text, in order, one line each."""
    return CallTranscript(
        lines=tuple(Line(s.speaker, " ".join(s.text.split())) for s in spoken(segments)),
        duration_ms=call.duration_ms or 0,
        language_code=call.language_code,
        roles=speaker_roles(speakers),
    )


def with_ai_pending(summarize: Summarize, clock: Callable[[], datetime] = utc_now) -> Summarize:
    """``summarize`` whose summaries also say ``ai: pending`` (the job is enqueued with them)."""

    def summarize_with_ai(
        ended: CallEnded, segments: Sequence[CommittedSegment]
    ) -> Mapping[str, Any]:
        return {**summarize(ended, segments), "ai": pending_record(clock())}

    return summarize_with_ai


def _progress_from(payload: Mapping[str, Any]) -> SummaryProgress:
    saved = payload.get("progress")
    if not isinstance(saved, dict):
        return SummaryProgress()
    usage = saved.get("usage") or {}
    return SummaryProgress(
        answers=dict(saved.get("answers") or {}),
        usage=Usage(
            requests=int(usage.get("requests", 0)),
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
        ),
        model=saved.get("model"),
    )


def _progress_payload(progress: SummaryProgress) -> dict[str, Any]:
    return {
        "progress": {
            "answers": progress.answers,
            "usage": progress.usage.to_json(),
            "model": progress.model,
        }
    }


def failure_code(reason: str) -> str:
    """The ``error.code`` for a job's final reason (``"<code>: <message>"``)."""
    code = reason.split(":", 1)[0].strip()
    if code in TRANSIENT_CODES:
        return FailureCode.LLM_UNAVAILABLE
    known = (
        FailureCode.INVALID_OUTPUT,
        FailureCode.LLM_REJECTED,
        FailureCode.EMPTY_TRANSCRIPT,
    )
    return code if code in known else FailureCode.INTERNAL_ERROR


class AISummaryJob:
    """Writes, stores and announces one call's AI summary as a job (module docstring)."""

    def __init__(
        self,
        store: DurableStore,
        settings: Settings,
        llm: ChatLLM,
        *,
        notify: Callable[[], None],
        clock: Callable[[], datetime] = utc_now,
        metrics: BridgeMetrics = DISABLED,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self.llm = llm
        self.summarizer = CallSummarizer(
            llm, input_budget_tokens=settings.summary.llm_input_budget_tokens
        )
        self._notify = notify
        self._clock = clock

    def after_call(self, ended: CallEnded) -> Sequence[NewJob]:
        return [NewJob(AI_SUMMARY_JOB, ended.call_sid)]

    def kind(self) -> JobKind:
        return JobKind(
            name=AI_SUMMARY_JOB,
            handler=self.run,
            concurrency=self.settings.summary.concurrency,
            lease_s=LEASE_S,
            retry=RetryPolicy(
                initial_s=self.settings.summary.backoff_initial_s,
                max_s=self.settings.summary.backoff_max_s,
                give_up_after_s=self.settings.summary.retry_for_s,
            ),
            on_failed=self.failed,
        )

    async def run(self, context: JobContext) -> None:
        call_sid = context.job.call_sid
        call = await self.store.get_call(call_sid)
        if call is None or _finished(call):
            return  # erased meanwhile, or written before a crash kept the job from finishing
        # The best transcript there is: the batch pass's, when it ran and succeeded.
        batch = await self.store.get_batch_transcript(call_sid)
        if batch is not None and batch.status is BatchStatus.DONE:
            segments: Sequence[CommittedSegment] = batch.segments
        else:
            segments = await self.store.get_segments(call_sid)
        transcript = call_transcript(call, segments, self.settings.speakers)
        progress = _progress_from(context.payload)
        answers_before = len(progress.answers)
        try:
            written = await self.summarizer.summarize(transcript, progress)
        except LLMError as exc:
            if len(progress.answers) > answers_before:
                await context.save_progress(_progress_payload(progress))
            if exc.retryable:
                raise RetryableJobError(f"{exc.code}: {exc}", exc.retry_after_s) from exc
            await self._store_failure(call_sid, FailureCode.LLM_REJECTED, str(exc), progress)
            raise PermanentJobError(f"{FailureCode.LLM_REJECTED}: {exc}") from exc
        except SummaryFailed as exc:
            await self._store_failure(call_sid, exc.code, str(exc), progress)
            raise PermanentJobError(f"{exc.code}: {exc}") from exc
        record = ready_record(written, self._clock())
        if await self.store.set_ai_summary(
            call_sid, record, [call_summarized_event(call_sid, record)]
        ):
            self._notify()
            self._count(call, AIStatus.READY, written.content["outcome"]["status"])
            log.info(
                "summary.ready",
                call_sid=call_sid,
                model=written.model,
                parts=written.parts,
                **written.usage.to_json(),
            )

    async def failed(self, job: Job, reason: str) -> None:
        """The runner's clean-up for a job that failed for good: store and announce why
        (once: a failure :meth:`run` stored already is left as it is)."""
        call = await self.store.get_call(job.call_sid)
        if call is None or _finished(call):
            return
        progress = _progress_from(job.payload)
        await self._store_failure(job.call_sid, failure_code(reason), reason, progress)

    def _count(self, call: CallRecord | None, status: str, result: str) -> None:
        self.metrics.ai_summaries.labels(status=status, result=result).inc()
        if call is not None and call.ended_at is not None:
            waited = (self._clock() - call.ended_at).total_seconds()
            self.metrics.ai_summary_latency.observe(max(0.0, waited))

    async def _store_failure(
        self, call_sid: str, code: str, message: str, progress: SummaryProgress
    ) -> None:
        record = failed_record(
            code, message, self._clock(), model=progress.model, usage=progress.usage
        )
        if await self.store.set_ai_summary(
            call_sid, record, [call_summarized_event(call_sid, record)]
        ):
            self._notify()
            self._count(await self.store.get_call(call_sid), AIStatus.FAILED, code)
            log.warning("summary.failed", call_sid=call_sid, code=code, error=message[:300])


def _finished(call: CallRecord) -> bool:
    status = (call.ai_summary or {}).get("status")
    return status in (AIStatus.READY, AIStatus.FAILED)
