"""The aiohttp application: wiring of routes, store, webhook dispatcher, jobs and live calls.

:func:`create_app` builds the application from :class:`~callbridge.config.Settings`;
:func:`serve` runs it until SIGTERM or SIGINT, then drains: ``/healthz`` answers 503, new
media streams are refused, every live call commits its last turn and awaits its
transcripts (bounded by ``server.shutdown_timeout_s``), the webhook dispatcher finishes its
in-flight requests, the job runner gives running jobs ``jobs.shutdown_grace_s`` and hands
the rest back to the queue, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import structlog
from aiohttp import web

from callbridge.ai_summary.job import ai_summary_jobs, with_ai_pending
from callbridge.ai_summary.setup import setup_ai_summary
from callbridge.api.routes import setup_api
from callbridge.call.event_journal import replay_journals
from callbridge.call.event_writer import EventWriters, WriterSettings
from callbridge.call.live_calls import LiveCallRegistry, watch_call_limits
from callbridge.call.lost_calls import LostCallReaper
from callbridge.call.sink import CallEventSink, FanOutSink, LoggingSink
from callbridge.call.stream_claims import StreamClaims
from callbridge.config import Settings, redacted, with_stream_secret
from callbridge.context import (
    AFTER_CALL,
    CALL_ERASERS,
    CLAIMS,
    EVENT_WRITERS,
    JOBS,
    LIVE_CALLS,
    LIVE_FEED,
    LOST_CALLS,
    METRICS,
    REGISTRY,
    SETTINGS,
    SINK,
    STORE,
)
from callbridge.http_limits import runner_options, setup_http_limits
from callbridge.jobs.runner import JobRunner
from callbridge.live_page import setup_live_page
from callbridge.logs import quiet_client_errors
from callbridge.masking import mask_url
from callbridge.metrics import BridgeMetrics
from callbridge.metrics.call_sink import CallMetricsSink
from callbridge.metrics.exposition import setup_metrics
from callbridge.metrics.monitor import ProcessFigures
from callbridge.models import EndReason, utc_now
from callbridge.postcall.setup import setup_postcall
from callbridge.store.factory import open_store
from callbridge.summary import summarize
from callbridge.twilio.routes import setup_twilio_routes
from callbridge.webhooks.dispatcher import WebhookDispatcher
from callbridge.webhooks.sink import AfterCall, StoreSink

log = structlog.get_logger("callbridge.app")
DISPATCHER = web.AppKey("webhook_dispatcher", WebhookDispatcher)


def create_app(settings: Settings, *, extra_sink: CallEventSink | None = None) -> web.Application:
    """The bridge as an aiohttp application (store opened and dispatcher started on startup).

    Without ``CALLBRIDGE_STREAM_SECRET`` the stream tokens use a random secret of this app's
    own (``serve`` picks one before it starts workers, so that they share it)."""
    settings, _ = with_stream_secret(settings)
    quiet_client_errors()
    app = web.Application(client_max_size=256 * 1024)
    app[SETTINGS] = settings
    store = open_store(
        settings.database.url,
        webhook_targets=settings.webhook.urls,
        pool_size=settings.database.pool_size,
    )
    app[STORE] = store
    metrics = app[METRICS] = BridgeMetrics(enabled=settings.metrics.enabled)
    # A claim outlives its request by a few seconds, so a killed process's in-flight
    # deliveries are retried soon after a restart (under the same webhook-id).
    dispatcher = WebhookDispatcher(
        store, settings.webhook, lease_s=settings.webhook.timeout_s + 5.0, metrics=metrics
    )
    app[DISPATCHER] = dispatcher
    jobs = JobRunner(
        store.jobs,
        poll_interval_s=settings.jobs.poll_interval_s,
        keep_finished_s=settings.jobs.keep_finished_s,
    )
    app[JOBS] = jobs
    after_call: list[AfterCall] = []  # features add their post-call job factories
    app[AFTER_CALL] = after_call
    sinks: list[CallEventSink] = [
        LoggingSink(),
        StoreSink(
            store,
            with_ai_pending(summarize) if settings.summary.enabled else summarize,
            dispatcher.notify,
            after_call=after_call,
            jobs_enqueued=jobs.notify,
            metrics=metrics,
        ),
        CallMetricsSink(metrics),  # after the store: counts what was stored
    ]
    if extra_sink is not None:
        sinks.append(extra_sink)
    app[SINK] = FanOutSink(sinks)
    app[EVENT_WRITERS] = EventWriters(
        WriterSettings(journal_dir=Path(settings.database.journal_dir))
    )
    app[CALL_ERASERS] = []
    if settings.summary.enabled:
        # With the batch pass on, the AI summary waits for it and reads the batch transcript.
        setup_ai_summary(app, notify=dispatcher.notify, after_call=not settings.postcall.enabled)
    if settings.postcall.enabled:
        setup_postcall(
            app,
            notify=dispatcher.notify,
            follow_ups=[ai_summary_jobs] if settings.summary.enabled else [],
        )
    app.cleanup_ctx.append(_store_and_dispatcher)
    app.cleanup_ctx.append(_supervise_live_calls)  # needs the store open; stops before it closes
    app.cleanup_ctx.append(_reap_lost_calls)
    app.on_shutdown.append(_end_live_calls)  # first: event streams see the calls end
    registry = LiveCallRegistry()
    app[REGISTRY] = registry
    app[LIVE_CALLS] = registry
    app[CLAIMS] = StreamClaims(store, settings.server.stream_lease_s)
    setup_twilio_routes(app)
    app.router.add_get("/healthz", healthz)
    setup_api(app)
    setup_http_limits(app)
    setup_live_page(app)
    feed = app[LIVE_FEED]
    setup_metrics(
        app,
        ProcessFigures(
            live_calls=registry.__len__,
            frames_received=lambda: registry.frames_received,
            event_streams=lambda: feed.subscribers,
            media_refused=lambda: registry.refused,
        ),
    )
    return app


async def healthz(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    if registry.draining:
        return web.json_response({"status": "draining"}, status=503)
    return web.json_response(
        {
            "status": "ok",
            "live_calls": len(registry),
            "media_sockets": registry.sockets,
            "max_calls": request.app[SETTINGS].limits.max_calls,
            "refused": dict(registry.refused),
            "pid": os.getpid(),
        }
    )


async def _supervise_live_calls(app: web.Application) -> AsyncIterator[None]:
    """Two tasks per process, for all its calls: the heartbeat of their claims, and the
    watch that ends calls without media or past the longest call."""
    registry = app[REGISTRY]

    def lost(call_sid: str) -> None:
        registry.end_in_background(call_sid, EndReason.ERROR, "the call's claim was lost")

    tasks = [
        asyncio.create_task(
            app[CLAIMS].run_heartbeat(registry.call_sids, lost), name="stream-claims-heartbeat"
        ),
        asyncio.create_task(
            watch_call_limits(registry, app[SETTINGS].limits), name="call-limits-watch"
        ),
    ]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _reap_lost_calls(app: web.Application) -> AsyncIterator[None]:
    """Ends the calls of processes that are gone (:mod:`callbridge.call.lost_calls`)."""
    claims = app[CLAIMS]
    reaper = LostCallReaper(
        app[STORE], app[SINK], app[REGISTRY], owner=claims.owner, lease_s=claims.lease_s
    )
    app[LOST_CALLS] = reaper
    task = asyncio.create_task(reaper.run(), name="lost-call-reaper")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _store_and_dispatcher(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = app[STORE]
    await store.open()
    dispatcher = app[DISPATCHER]
    await dispatcher.start()
    jobs = app[JOBS]
    await jobs.start()
    purger = asyncio.create_task(_purge_finished(app), name="purge-deliveries")
    # Call events a previous process journaled (the store was down) go to the store now.
    replayer = asyncio.create_task(
        replay_journals(Path(settings.database.journal_dir), app[SINK]), name="replay-journals"
    )
    try:
        yield
    finally:
        purger.cancel()
        replayer.cancel()
        await asyncio.gather(purger, replayer, return_exceptions=True)
        # Writers still waiting for the store journal what they hold, for the next start.
        await app[EVENT_WRITERS].stop()
        await jobs.stop(timeout=settings.jobs.shutdown_grace_s)
        await dispatcher.stop(timeout=settings.webhook.timeout_s)
        await store.close()


async def _purge_finished(app: web.Application) -> None:
    """Delivered and failed deliveries are kept ``keep_finished_s``, then removed."""
    keep_s = app[SETTINGS].webhook.keep_finished_s
    interval_s = min(3600.0, max(0.05, keep_s / 2))
    store = app[STORE]
    while True:
        await asyncio.sleep(interval_s)
        try:
            removed = await store.purge_finished_deliveries(utc_now() - timedelta(seconds=keep_s))
        except Exception:
            log.exception("webhook.purge_failed")
            continue
        if removed:
            log.info("webhook.purged", deliveries=removed)


async def _end_live_calls(app: web.Application) -> None:
    await drain(app)


async def drain(app: web.Application) -> None:
    """Refuse new streams and finish every live call (idempotent)."""
    registry = app[REGISTRY]
    registry.draining = True
    await registry.end_all(EndReason.SHUTDOWN, app[SETTINGS].server.shutdown_timeout_s)


def warn_about_settings(settings: Settings) -> None:
    """Start-up warnings for settings that work but weaken the product."""
    if not settings.twilio.validate:
        log.warning(
            "twilio.signature_validation_disabled",
            setting="CALLBRIDGE_TWILIO_VALIDATE",
            detail="anyone who finds this server can stream audio into it",
        )
    if settings.webhook.urls and not settings.webhook.secret:
        log.warning(
            "webhook.unsigned",
            setting="CALLBRIDGE_WEBHOOK_SECRET",
            detail="events are sent unsigned; receivers cannot verify them",
        )
    if not settings.api.tokens:
        log.warning(
            "api.no_tokens",
            setting="CALLBRIDGE_API_TOKENS",
            detail="every /v1 request will be answered 401",
        )


async def serve(settings: Settings, *, sock: socket.socket | None = None) -> None:
    """Run the bridge until SIGTERM/SIGINT, then drain and return."""
    app = create_app(settings)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=settings.server.shutdown_timeout_s,
        **runner_options(settings),
    )
    await runner.setup()
    try:
        if sock is not None:
            site: web.BaseSite = web.SockSite(runner, sock)
        else:
            site = web.TCPSite(
                runner,
                settings.server.host,
                settings.server.port,
                reuse_port=settings.server.workers > 1,
            )
        await site.start()
        # Everything allocated so far (modules, settings, the app) lives as long as the
        # process: keep it out of the cyclic collector's full passes, which otherwise pause
        # the event loop for 30-70 ms at 200 calls (9-25 ms frozen; benchmarks/load.py).
        gc.collect()
        gc.freeze()
        log.info(
            "callbridge.serving",
            host=settings.server.host,
            port=settings.server.port,
            public_url=mask_url(settings.server.public_url),
            event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
            frozen_objects=gc.get_freeze_count(),
            settings=redacted(settings),
        )
        warn_about_settings(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("callbridge.draining", live_calls=len(app[REGISTRY]))
        await drain(app)
    finally:
        await runner.cleanup()
    log.info("callbridge.stopped")
