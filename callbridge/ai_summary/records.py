"""The ``ai`` object in its three states, as stored with the call and served (interface §6;
the schema is :data:`callbridge.ai_summary.schema.AI_SUMMARY_SCHEMA`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from callbridge.ai_summary.schema import AIStatus
from callbridge.ai_summary.summarizer import Usage, WrittenSummary
from callbridge.models import rfc3339
from callbridge.store.base import CallRecord


class FailureCode:
    """``error.code`` of a failed AI summary."""

    INVALID_OUTPUT = "invalid_output"  # two invalid answers to one request
    LLM_UNAVAILABLE = "llm_unavailable"  # transient failures past the retry time
    LLM_REJECTED = "llm_rejected"  # the LLM refused the request (key, model, URL, input)
    EMPTY_TRANSCRIPT = "empty_transcript"  # nothing was said
    INTERNAL_ERROR = "internal_error"  # a bug or a store failure past the retry time


def pending_record(now: datetime) -> dict[str, Any]:
    return {"status": str(AIStatus.PENDING), "created_at": rfc3339(now)}


def ready_record(written: WrittenSummary, now: datetime) -> dict[str, Any]:
    return {
        "status": str(AIStatus.READY),
        "created_at": rfc3339(now),
        "model": written.model,
        **written.content,
        "parts": written.parts,
        "usage": written.usage.to_json(),
    }


def failed_record(
    code: str,
    message: str,
    now: datetime,
    *,
    model: str | None = None,
    usage: Usage | None = None,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "status": str(AIStatus.FAILED),
        "created_at": rfc3339(now),
        "model": model,
        "error": {"code": code, "message": message[:1000]},
    }
    if usage is not None and usage.requests:
        record["usage"] = usage.to_json()
    return record


def ai_summary_pending(call: CallRecord) -> bool:
    """Whether the call's AI summary is still to come (``call.summarized`` will follow)."""
    return (call.ai_summary or {}).get("status") == AIStatus.PENDING
