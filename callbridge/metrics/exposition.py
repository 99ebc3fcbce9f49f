"""``GET /metrics``: every metric in the Prometheus text format, behind the API's tokens.

A scrape merges every worker's figures when the process runs in multiprocess mode (see
:mod:`callbridge.metrics.multiprocess`), else it reads the application's own registry. It
adds the webhook backlog per target, read from the store at scrape time with one indexed
query (the store is shared, so every worker and instance reports the same backlog: use
``max`` across them, not ``sum``). The text is rendered on a worker thread, off the event
loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from callbridge import __version__
from callbridge.api.auth import check_bearer
from callbridge.context import METRICS, STORE
from callbridge.http_errors import json_error
from callbridge.metrics.monitor import ProcessFigures, ProcessMonitor
from callbridge.metrics.multiprocess import multiprocess_dir, scrape_registry
from callbridge.models import utc_now
from callbridge.store.base import TargetBacklog
from callbridge.webhooks.dispatcher import target_label

METRICS_PATH = "/metrics"
MONITOR = web.AppKey("metrics_monitor", ProcessMonitor)


class ScrapeTimeCollector(Collector):
    """What the store knows, read at scrape time: the webhook backlog, and build info."""

    def __init__(self, backlog: Sequence[TargetBacklog]) -> None:
        self._backlog = backlog

    def collect(self) -> Iterator[Metric]:
        now = utc_now()
        pending = GaugeMetricFamily(
            "callbridge_webhook_pending_deliveries",
            "Webhook deliveries not yet delivered or finally failed, per target (from the store).",
            labels=["target"],
        )
        oldest = GaugeMetricFamily(
            "callbridge_webhook_oldest_pending_age_seconds",
            "Age of the oldest pending webhook delivery, per target (0 when none waits).",
            labels=["target"],
        )
        for row in self._backlog:
            label = [target_label(row.target)]
            pending.add_metric(label, row.pending)
            age = 0.0
            if row.oldest_created_at is not None:
                age = max(0.0, (now - row.oldest_created_at).total_seconds())
            oldest.add_metric(label, age)
        info = GaugeMetricFamily(
            "callbridge_build_info", "The running callbridge version.", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield from (pending, oldest, info)


def _render(registries: Sequence[CollectorRegistry]) -> bytes:
    return b"".join(generate_latest(registry) for registry in registries)


async def metrics_route(request: web.Request) -> web.Response:
    refusal = check_bearer(request)
    if refusal is not None:
        return refusal
    metrics = request.app[METRICS]
    if not metrics.enabled:
        return json_error(404, "metrics_disabled", "metrics are off (CALLBRIDGE_METRICS_ENABLED)")
    request.app[MONITOR].flush()  # this process's figures as of now
    path = multiprocess_dir()
    recorded = scrape_registry(path) if path is not None else metrics.registry
    scrape_time = CollectorRegistry()
    scrape_time.register(ScrapeTimeCollector(await request.app[STORE].delivery_backlog()))
    body = await asyncio.to_thread(_render, (recorded, scrape_time))
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def setup_metrics(app: web.Application, figures: ProcessFigures) -> None:
    """Add ``GET /metrics`` and run the process monitor with the application."""
    app[MONITOR] = ProcessMonitor(app[METRICS], figures)
    app.router.add_get(METRICS_PATH, metrics_route, name="metrics")
    app.cleanup_ctx.append(_run_monitor)


async def _run_monitor(app: web.Application) -> AsyncIterator[None]:
    monitor = app[MONITOR]
    if app[METRICS].enabled:
        monitor.start()
    yield
    await monitor.stop()
