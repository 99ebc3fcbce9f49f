"""The post-call batch pass as the API shows it: ``?version=batch`` and a call's ``postcall``.

* ``GET /v1/calls/{sid}/transcript?version=batch`` (every format) and
  ``GET /v1/calls/{sid}/summary?version=batch``: the batch transcript and the summary made
  from it; ``409 batch_pending`` until the pass has finished, ``404 batch_failed`` (with
  the reason) when it failed, ``404 batch_not_found`` when there is none (the pass was off).
* ``GET /v1/calls/{sid}`` carries ``postcall``: ``status`` (``pending``, ``running``,
  ``done``, ``failed``), ``error``, ``audio_seconds_billed``; null without a pass.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from callbridge.context import SETTINGS, STORE
from callbridge.http_errors import json_error
from callbridge.jobs import JobStatus
from callbridge.models import BatchStatus, BatchTranscript, rfc3339
from callbridge.postcall.batch_pass import POSTCALL_JOB
from callbridge.store.base import CallRecord, CallStatus, DurableStore

VERSIONS = ("live", "batch")


def invalid_version() -> web.Response:
    return json_error(400, "invalid_version", "version must be live or batch")


async def postcall_state(store: DurableStore, call_sid: str) -> dict[str, Any] | None:
    record = await store.get_batch_transcript(call_sid)
    if record is not None:
        return {
            "status": str(record.status),
            "error": record.error,
            "audio_seconds_billed": record.audio_seconds,
            "segments": len(record.segments) if record.status is BatchStatus.DONE else None,
            "finished_at": rfc3339(record.created_at),
        }
    job = await store.jobs.get(POSTCALL_JOB, call_sid)
    if job is None or job.status is JobStatus.DONE:
        return None
    status = {JobStatus.PENDING: "pending", JobStatus.RUNNING: "running"}.get(job.status, "failed")
    return {
        "status": status,
        "error": job.last_error,
        "audio_seconds_billed": None,
        "segments": None,
        "finished_at": None,
    }


async def batch_record(request: web.Request, call: CallRecord) -> BatchTranscript | web.Response:
    """The call's batch transcript, or the error response that says why there is none."""
    store = request.config_dict[STORE]
    sid = call.call_sid
    record = await store.get_batch_transcript(sid)
    if record is None:
        job = await store.jobs.get(POSTCALL_JOB, sid)
        running = job is not None and job.status in (JobStatus.PENDING, JobStatus.RUNNING)
        if running or (
            call.status is not CallStatus.ENDED and request.config_dict[SETTINGS].postcall.enabled
        ):
            return json_error(
                409, "batch_pending", f"call {sid!r}: the batch pass has not finished yet"
            )
        return json_error(
            404, "batch_not_found", f"call {sid!r} has no batch transcript (no batch pass ran)"
        )
    if record.status is BatchStatus.FAILED:
        return json_error(
            404, "batch_failed", f"call {sid!r}: the batch pass failed: {record.error}"
        )
    return record
