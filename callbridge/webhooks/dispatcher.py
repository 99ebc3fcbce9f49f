"""Delivers the outbox: claims due deliveries, POSTs them signed, records the outcome.

One :class:`WebhookDispatcher` runs in each server process. Every target has its own worker
and its own in-flight budget (``max_in_flight``), so a slow or dead target never takes
slots from a healthy one; the store hands out only the oldest unfinished delivery of each
(call, target), so one call's events arrive in order while other calls proceed. The worker
runs its claim query on :meth:`WebhookDispatcher.notify` (new events), when one of its
deliveries finishes (the call's next event becomes claimable, and a slot is free), when its
own retries fall due, and every ``poll_interval_s`` (other processes' events, expired leases).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import structlog

from callbridge.config import WebhookSettings
from callbridge.metrics import DISABLED, BridgeMetrics
from callbridge.store.base import Delivery, OutboxStore
from callbridge.webhooks.signing import WebhookSigner

log = structlog.get_logger(__name__)

USER_AGENT = "callbridge-webhooks/1"
_MAX_RESPONSE_BYTES = 64 * 1024


def target_label(url: str) -> str:
    """The target URL without credentials or query (which may carry tokens), for logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(int(text))
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - now)


def backoff_delay(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in ``[0, min(max, initial·2^(n-1))]``."""
    ceiling = min(max_s, initial_s * 2.0 ** min(max(attempt - 1, 0), 62))
    return rng.uniform(0.0, ceiling)


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    delivered: bool
    retryable: bool
    error: str | None = None
    status: int | None = None
    retry_after_s: float | None = None


def classify(status: int, retry_after_s: float | None) -> AttemptOutcome:
    """2xx delivered; 408, 429 and 5xx retried; anything else (3xx, 4xx) is final."""
    if 200 <= status < 300:
        return AttemptOutcome(delivered=True, retryable=False, status=status)
    retryable = status in (408, 429) or status >= 500
    return AttemptOutcome(
        delivered=False,
        retryable=retryable,
        error=f"HTTP {status}",
        status=status,
        retry_after_s=retry_after_s if retryable else None,
    )


@dataclass(slots=True)
class DispatcherStats:
    """Counters of this process's dispatcher (the store has the durable totals)."""

    delivered: int = 0
    retried: int = 0
    failed: int = 0
    attempts: int = 0


@dataclass(eq=False, slots=True)
class _TargetWorker:
    url: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: set[asyncio.Task[None]] = field(default_factory=set)
    timers: set[asyncio.TimerHandle] = field(default_factory=set)
    task: asyncio.Task[None] | None = None


class WebhookDispatcher:
    """Runs the outbox for ``settings.urls`` (the same list the store was built with).

    ``clock`` (unix seconds) and ``rng`` are injectable for deterministic tests; ``session``
    lets a caller share an ``aiohttp.ClientSession`` (otherwise one is made at start).
    """

    def __init__(
        self,
        store: OutboxStore,
        settings: WebhookSettings,
        *,
        poll_interval_s: float = 1.0,
        lease_s: float | None = None,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        session: aiohttp.ClientSession | None = None,
        metrics: BridgeMetrics = DISABLED,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._settings = settings
        self._signer = WebhookSigner(settings.secret or None)
        self._poll_interval_s = poll_interval_s
        self._lease_s = lease_s if lease_s is not None else settings.timeout_s + 60.0
        self.owner = owner or f"dispatcher-{uuid.uuid4().hex[:12]}"
        self._clock = clock
        self._rng = rng or random.Random()
        self._session = session
        self._owns_session = session is None
        self._workers = [_TargetWorker(url) for url in dict.fromkeys(settings.urls)]
        self._stopping = False
        self._started = False
        self.stats = DispatcherStats()

    @property
    def in_flight(self) -> int:
        return sum(len(worker.in_flight) for worker in self._workers)

    # lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._stopping = False
        if self._session is None and self._workers:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": USER_AGENT},
            )
        for worker in self._workers:
            worker.wake = asyncio.Event()
            worker.wake.set()  # look for work left over from before at once
            worker.task = asyncio.create_task(
                self._run_worker(worker), name=f"webhooks:{target_label(worker.url)}"
            )
        log.info(
            "webhooks.started",
            targets=[target_label(worker.url) for worker in self._workers],
            signed=self._signer.signs,
            owner=self.owner,
        )

    def notify(self) -> None:
        """New events were committed: look for due deliveries now."""
        for worker in self._workers:
            worker.wake.set()

    async def stop(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 (a grace period)
        """Take no new work, let in-flight requests finish (up to ``timeout`` seconds),
        leave everything else pending in the store for the next start."""
        if not self._started:
            return
        self._stopping = True
        for worker in self._workers:
            for timer in worker.timers:
                timer.cancel()
            worker.timers.clear()
            worker.wake.set()
        await asyncio.gather(
            *(worker.task for worker in self._workers if worker.task), return_exceptions=True
        )
        in_flight = [task for worker in self._workers for task in worker.in_flight]
        unfinished: set[asyncio.Task[None]] = set()
        if in_flight:
            _, unfinished = await asyncio.wait(in_flight, timeout=max(0.0, timeout))
        for task in unfinished:
            task.cancel()
        if unfinished:
            await asyncio.gather(*unfinished, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._store.release_claims(self.owner)
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None
        self._started = False
        log.info("webhooks.stopped", abandoned_in_flight=len(unfinished))

    # the per-target loop ------------------------------------------------------------------

    async def _run_worker(self, worker: _TargetWorker) -> None:
        while not self._stopping:
            worker.wake.clear()
            free = self._settings.max_in_flight - len(worker.in_flight)
            if free > 0:
                try:
                    claimed = await self._store.claim_deliveries(
                        self._now(), free, self.owner, self._lease_s, target=worker.url
                    )
                except Exception:
                    log.exception("webhooks.claim_failed", target=target_label(worker.url))
                    claimed = []
                for delivery in claimed:
                    task = asyncio.create_task(self._deliver(worker, delivery))
                    worker.in_flight.add(task)
            if self._stopping:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(worker.wake.wait(), self._poll_interval_s)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    async def _deliver(self, worker: _TargetWorker, delivery: Delivery) -> None:
        try:
            outcome = await self._attempt(delivery)
            await self._record(worker, delivery, outcome)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The lease runs out and the delivery is tried again (same event id).
            log.exception(
                "webhooks.record_failed", event_id=delivery.event_id, call_sid=delivery.call_sid
            )
        finally:
            task = asyncio.current_task()
            if task is not None:
                worker.in_flight.discard(task)
            worker.wake.set()  # a slot is free, and the call's next event may be due

    async def _attempt(self, delivery: Delivery) -> AttemptOutcome:
        session = self._session
        if session is None:
            return AttemptOutcome(delivered=False, retryable=True, error="dispatcher not started")
        timestamp = int(self._clock())
        headers = {
            "Content-Type": "application/json",
            **self._signer.headers(delivery.event_id, timestamp, delivery.body),
        }
        self.stats.attempts += 1
        try:
            async with session.post(
                delivery.target,
                data=delivery.body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self._settings.timeout_s),
            ) as response:
                status = response.status
                retry_after = parse_retry_after(response.headers.get("Retry-After"), self._clock())
                with contextlib.suppress(Exception):
                    await response.content.read(_MAX_RESPONSE_BYTES)
        except TimeoutError:
            return AttemptOutcome(
                delivered=False,
                retryable=True,
                error=f"timed out after {self._settings.timeout_s:g} s",
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # connection refused/reset, garbage responses, …
            # aiohttp puts the URL in some messages; its query may carry a token
            detail = str(exc).replace(delivery.target, target_label(delivery.target))
            return AttemptOutcome(
                delivered=False, retryable=True, error=f"{type(exc).__name__}: {detail}"[:500]
            )
        return classify(status, retry_after)

    async def _record(
        self, worker: _TargetWorker, delivery: Delivery, outcome: AttemptOutcome
    ) -> None:
        attempt = delivery.attempts + 1
        m, target = self._metrics, target_label(delivery.target)
        if outcome.delivered:
            self.stats.delivered += 1
            m.deliveries.labels(target=target, outcome="delivered").inc()
            m.delivery_latency.labels(target=target).observe(
                max(0.0, self._clock() - delivery.created_at.timestamp())
            )
            with m.store_writes.labels(operation="mark_delivered").time():
                await self._store.mark_delivered(delivery.delivery_id, self.owner)
            return
        error = outcome.error or "unknown error"
        context = {
            "event_id": delivery.event_id,
            "event_type": delivery.event_type,
            "call_sid": delivery.call_sid,
            "target": target_label(delivery.target),
            "attempt": attempt,
            "error": error,
        }
        if not outcome.retryable:
            self.stats.failed += 1
            m.deliveries.labels(target=target, outcome="failed").inc()
            log.warning("webhooks.delivery_failed", final=True, **context)
            await self._store.mark_failed(delivery.delivery_id, self.owner, error)
            return
        now = self._clock()
        delay = backoff_delay(
            attempt, self._settings.backoff_initial_s, self._settings.backoff_max_s, self._rng
        )
        if outcome.retry_after_s is not None:
            delay = max(delay, outcome.retry_after_s)
        deadline = delivery.created_at.timestamp() + self._settings.retry_for_s
        if now + delay > deadline:
            self.stats.failed += 1
            m.deliveries.labels(target=target, outcome="failed").inc()
            log.warning("webhooks.delivery_failed", final=True, gave_up=True, **context)
            await self._store.mark_failed(
                delivery.delivery_id,
                self.owner,
                f"{error}; gave up after {self._settings.retry_for_s:g} s",
            )
            return
        self.stats.retried += 1
        m.deliveries.labels(target=target, outcome="retried").inc()
        log.info("webhooks.delivery_retry", retry_in_s=round(delay, 3), **context)
        next_at = datetime.fromtimestamp(now + delay, UTC)
        if await self._store.mark_retry(delivery.delivery_id, self.owner, next_at, error):
            self._wake_later(worker, delay)

    def _wake_later(self, worker: _TargetWorker, delay: float) -> None:
        if self._stopping:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            worker.timers.discard(handle)
            worker.wake.set()

        handle = loop.call_later(delay + 0.005, fire)
        worker.timers.add(handle)
