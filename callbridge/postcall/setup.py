"""Turning the post-call batch pass on in the application (``CALLBRIDGE_POSTCALL=batch``).

One :class:`~callbridge.postcall.audio_spool.AudioSpool` (calls record into it), one
:class:`~callbridge.postcall.batch_client.ScribeBatchClient` (its connection pool shared by
every pass), the ``postcall_batch`` job kind, the post-call job factory, the eraser that
``DELETE /v1/calls/{sid}`` runs first, and the sweeper that deletes kept audio no pass will
use (the call was erased, its pass ended in another process, a crash left it behind).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import structlog
from aiohttp import web

from callbridge.config import Settings
from callbridge.context import AFTER_CALL, AUDIO_SPOOL, CALL_ERASERS, JOBS, SETTINGS, STORE
from callbridge.jobs import JobStatus
from callbridge.postcall.audio_spool import AudioSpool
from callbridge.postcall.batch_client import BatchOptions, ScribeBatchClient, entity_categories
from callbridge.postcall.batch_pass import POSTCALL_JOB, BatchPass, FollowUps
from callbridge.store.base import CallStatus, DurableStore

log = structlog.get_logger(__name__)

BATCH_PASS = web.AppKey("batch_pass", BatchPass)
SWEEP_GRACE_S = 600.0  # audio of an ended call with no pass at all is kept this long


def batch_options(settings: Settings) -> BatchOptions:
    s, p = settings.scribe, settings.postcall
    return BatchOptions(
        url=s.batch_url,
        transcripts_url=s.batch_transcripts_url,
        api_key=s.api_key,
        model_id=s.batch_model_id,
        language_code=s.language,
        tag_audio_events=p.tag_audio_events,
        keyterms=tuple(term for term in s.keyterms if term.strip()),
        entity_detection=entity_categories(settings.redaction.kinds),
        enable_logging=p.enable_logging,
        timeout_s=p.timeout_s,
    )


def setup_postcall(
    app: web.Application,
    *,
    notify: Callable[[], None],
    follow_ups: Sequence[FollowUps] = (),
) -> BatchPass:
    """Register the batch pass on ``app``; ``notify`` wakes the webhook dispatcher and
    ``follow_ups`` are jobs to enqueue when a pass ends (the AI summary)."""
    settings = app[SETTINGS]
    spool = AudioSpool(Path(settings.postcall.audio_dir), settings.postcall.max_audio_mb * 2**20)
    client = ScribeBatchClient(batch_options(settings))
    runner = app[JOBS]
    batch = BatchPass(
        app[STORE], settings, spool, client, notify=notify, follow_ups=follow_ups,
        jobs_enqueued=runner.notify,
    )  # fmt: skip
    runner.register(batch.kind())
    app[AFTER_CALL].append(batch.after_call)
    app[CALL_ERASERS].append(batch.erase)
    app[AUDIO_SPOOL] = spool
    app[BATCH_PASS] = batch

    async def sweep_and_close(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(
            _sweep(app[STORE], spool, settings.postcall.sweep_interval_s), name="audio-sweeper"
        )
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await batch.drain(timeout=settings.jobs.shutdown_grace_s)
            await client.close()

    app.cleanup_ctx.append(sweep_and_close)
    return batch


async def _sweep(store: DurableStore, spool: AudioSpool, interval_s: float) -> None:
    while True:
        try:
            removed = await sweep_once(store, spool)
        except Exception:
            log.exception("postcall.sweep_failed")
        else:
            if removed:
                log.info("postcall.audio_swept", calls=removed)
        await asyncio.sleep(interval_s)


async def sweep_once(
    store: DurableStore, spool: AudioSpool, now: float | None = None, grace_s: float = SWEEP_GRACE_S
) -> int:
    """Delete kept audio that no pass will use; returns how many calls' audio went."""
    now = time.time() if now is None else now
    removed = 0
    for call_sid, created_at in spool.kept():
        if now - created_at < 60:
            continue  # a call just starting: its store rows may not be written yet
        call = await store.get_call(call_sid)
        if call is not None and call.status is not CallStatus.ENDED:
            continue
        job = await store.jobs.get(POSTCALL_JOB, call_sid)
        if job is not None and job.status in (JobStatus.PENDING, JobStatus.RUNNING):
            continue
        ended_at = call.ended_at.timestamp() if call is not None and call.ended_at else 0.0
        if call is not None and job is None and now - ended_at < grace_s:
            continue  # its end (and so its job) may still be on the way from a journal
        spool.delete(call_sid)
        removed += 1
    return removed
