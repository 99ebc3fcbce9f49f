"""``callbridge serve --workers N``: several bridge processes sharing one port.

The parent applies the store's schema migrations once (so a bad ``DATABASE_URL`` is still a
one-line start-up error), then starts N worker processes. Each runs the whole bridge and
binds the port with ``SO_REUSEPORT``, so the kernel spreads new connections (and so new
calls) across them; a call lives in the worker that accepted its media socket. The SQLite
store in WAL mode (or PostgreSQL) is shared, and webhook deliveries are claimed with a
lease, so no event is sent twice.

On SIGTERM or SIGINT the parent forwards SIGTERM to every worker, each drains its live
calls, and the parent exits 0 once all have. A worker that dies unexpectedly is logged and
started again (at most ``_MAX_RESTARTS`` times a minute, then the parent gives up).

Metrics: before the first worker starts, the parent sets up prometheus-client's
multiprocess directory (:class:`~callbridge.metrics.multiprocess.MetricsDirectory`), so a
scrape of any worker reports all of them; it marks a dead worker's live gauges gone and
removes the directory when it exits.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import time
from multiprocessing.process import BaseProcess
from types import FrameType

import structlog

from callbridge import event_loop
from callbridge.config import Settings
from callbridge.logs import configure_logging
from callbridge.metrics.multiprocess import MetricsDirectory
from callbridge.store.factory import open_store

log = structlog.get_logger("callbridge.workers")
_MAX_RESTARTS = 5
_START_GRACE_S = 5.0


def _run_worker(settings: Settings, index: int) -> None:
    from callbridge.app import serve

    configure_logging(settings.logging.format, settings.logging.level)
    structlog.contextvars.bind_contextvars(worker=index)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    event_loop.run(serve(settings), settings.server.event_loop)


async def _migrate(settings: Settings) -> None:
    store = open_store(settings.database.url, webhook_targets=settings.webhook.urls)
    await store.open()
    await store.close()


def serve_workers(settings: Settings) -> int:
    """Run ``settings.server.workers`` bridge processes until SIGTERM; the exit code."""
    asyncio.run(_migrate(settings))
    metrics_dir = MetricsDirectory.prepare() if settings.metrics.enabled else None
    try:
        return _supervise(settings, metrics_dir)
    finally:
        if metrics_dir is not None:
            metrics_dir.close()


def _supervise(settings: Settings, metrics_dir: MetricsDirectory | None) -> int:
    context = multiprocessing.get_context("spawn")
    stopping = False

    def start(index: int) -> BaseProcess:
        process = context.Process(
            target=_run_worker, args=(settings, index), name=f"callbridge-worker-{index}"
        )
        process.start()
        return process

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    workers = {index: start(index) for index in range(settings.server.workers)}
    started_at = time.monotonic()
    restarts: list[float] = []
    log.info("workers.started", workers=len(workers), pids=[p.pid for p in workers.values()])
    while not stopping:
        time.sleep(0.2)
        for index, process in list(workers.items()):
            if process.is_alive() or stopping:
                continue
            code = process.exitcode
            if time.monotonic() - started_at < _START_GRACE_S:
                # A worker that cannot even start (port taken, …) will not do better later;
                # it already printed why.
                log.error("workers.start_failed", worker=index, exit_code=code)
                _stop_all(workers)
                return 1
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < 60.0] + [now]
            if len(restarts) > _MAX_RESTARTS:
                log.error("workers.crash_loop", worker=index, exit_code=code)
                _stop_all(workers)
                return 1
            log.error("workers.restarting", worker=index, exit_code=code)
            if metrics_dir is not None:
                metrics_dir.process_died(process.pid)
            workers[index] = start(index)
    log.info("workers.stopping", workers=len(workers))
    codes = _stop_all(workers)
    return 0 if all(code == 0 for code in codes) else 1


def _stop_all(workers: dict[int, BaseProcess]) -> list[int | None]:
    for process in workers.values():
        if process.is_alive() and process.pid is not None:
            process.terminate()  # SIGTERM: the worker drains its live calls
    for process in workers.values():
        process.join()
    return [process.exitcode for process in workers.values()]
