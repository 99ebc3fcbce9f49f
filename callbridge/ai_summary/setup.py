"""Turning the AI summary on in the application (when ``CALLBRIDGE_SUMMARY_LLM_URL`` is set).

One :class:`~callbridge.ai_summary.llm.ChatLLM` per process (its connection pool is shared
by every summary), the ``ai_summary`` job kind on the job runner, and the post-call job
factory that enqueues a call's summary with its end.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from callbridge.ai_summary.job import AISummaryJob, llm_options
from callbridge.ai_summary.llm import ChatLLM
from callbridge.context import AFTER_CALL, JOBS, METRICS, SETTINGS, STORE

AI_SUMMARY = web.AppKey("ai_summary", AISummaryJob)


def setup_ai_summary(
    app: web.Application, *, notify: Callable[[], None], after_call: bool = True
) -> AISummaryJob:
    """Register the AI summary on ``app``; ``notify`` wakes the webhook dispatcher.

    ``after_call=False`` leaves out the call-end job factory: the batch pass enqueues the
    summary when it ends instead (:func:`~callbridge.ai_summary.job.ai_summary_jobs`)."""
    settings = app[SETTINGS]
    metrics = app[METRICS]
    llm = ChatLLM(llm_options(settings.summary), metrics=metrics)
    job = AISummaryJob(app[STORE], settings, llm, notify=notify, metrics=metrics)
    app[JOBS].register(job.kind())
    if after_call:
        app[AFTER_CALL].append(job.after_call)
    app[AI_SUMMARY] = job

    async def close_llm(app: web.Application) -> None:
        await llm.aclose()

    app.on_cleanup.append(close_llm)
    return job
