"""One call's Scribe stream: the connection loop that sends, receives and reconnects.

:class:`SegmentTranscriber` is the :class:`~callbridge.call.turns.SegmentOutput` of a call's
turn segmenter. What it keeps (commit windows, retention, replay, matching, word times, the
0.3 s commit rule) is the synchronous :class:`~callbridge.call.commit_windows.CommitWindowLedger`;
when it may send is the :class:`~callbridge.call.send_pacer.SendPacer`. This module only runs
them against a live connection: a send task hands the ledger's steps to the socket as the
pacer allows, a receive task hands committed transcripts back to the ledger, and a tick
task wakes the sender for what no frame will (a paused stream's tail, keepalive).

A retryable :class:`~callbridge.scribe.errors.ScribeError` closes the connection and opens
another after a capped, jittered backoff; the ledger replays what was not answered. A fatal
one marks the call degraded instead. Time is read from an injected ``clock`` and waited on
with an injected ``sleep``, so tests can run the loop on a controlled clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from callbridge.audio.ulaw import BYTES_PER_MS, ulaw_to_pcm16
from callbridge.call.commit_windows import CommitWindowLedger, SegmentTranscript, Step
from callbridge.call.send_pacer import SendPacer
from callbridge.call.turns import PlannedSegment
from callbridge.metrics import DISABLED, BridgeMetrics
from callbridge.scribe.connection import ScribeConnection
from callbridge.scribe.errors import ScribeError
from callbridge.scribe.messages import CommittedTranscript, PartialTranscript
from callbridge.scribe.options import ScribeOptions

SegmentCallback = Callable[[SegmentTranscript], None]
Connect = Callable[[ScribeOptions], Awaitable[ScribeConnection]]
PartialCallback = Callable[[PlannedSegment, str], None]  # the segment on air, its text so far
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class TranscriberSettings:
    chunk_ms: int = 100
    min_commit_interval_s: float = 1.0
    max_send_speed: float = 4.0  # backlog is sent at most this much faster than real time
    retain_limit_ms: int = 120_000
    # Idle sockets have been seen closing "after a few seconds" without audio; Twilio's
    # own silence frames are not guaranteed, so keep well inside that.
    keepalive_after_s: float = 1.0
    backoff_initial_s: float = 0.25
    backoff_max_s: float = 8.0


class SegmentTranscriber:
    """Streams a call's serialised segments to Scribe and hands back their transcripts."""

    def __init__(
        self,
        options: ScribeOptions,
        settings: TranscriberSettings,
        on_segment: SegmentCallback,
        *,
        connect: Connect = ScribeConnection.open,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        log: structlog.stdlib.BoundLogger | None = None,
        metrics: BridgeMetrics = DISABLED,
        on_partial: PartialCallback | None = None,
    ) -> None:
        self._options = options
        self._settings = settings
        self._connect = connect
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._log = log or structlog.get_logger(__name__)
        self._metrics = metrics
        self._on_partial = on_partial
        self._wakeup = asyncio.Event()  # the sender has something to look at
        self._ledger = CommitWindowLedger(
            on_segment,
            chunk_ms=settings.chunk_ms,
            retain_limit_ms=settings.retain_limit_ms,
            include_timestamps=options.include_timestamps,
            language_code=options.language_code or None,
            wake=self._wakeup.set,
            clock=clock,
            metrics=metrics,
        )
        self._pacer = SendPacer(
            max_send_speed=settings.max_send_speed,
            min_commit_interval_s=settings.min_commit_interval_s,
            keepalive_after_s=settings.keepalive_after_s,
        )
        self._pcm = options.audio_format == "pcm_8000"
        self._task: asyncio.Task[None] | None = None
        self.connections = 0
        self.reconnects = 0

    # --------------------------------------------------------- SegmentOutput
    def audio(self, data: bytes, segment: PlannedSegment | None) -> None:
        self._ledger.audio(data, segment)

    def commit(self, segment: PlannedSegment | None) -> None:
        self._ledger.commit(segment)

    # --------------------------------------------------------------- figures
    @property
    def degraded(self) -> str | None:
        return self._ledger.degraded

    @property
    def lost_ms(self) -> int:
        return self._ledger.lost_ms

    @property
    def untranscribed(self) -> int:
        return self._ledger.untranscribed

    @property
    def language_code(self) -> str | None:
        return self._ledger.language_code

    @property
    def backlog_ms(self) -> int:
        return self._ledger.backlog_ms

    # -------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="scribe-stream")

    async def drain(self, timeout_s: float) -> None:
        """Send everything, await the last transcripts (bounded), close the session."""
        self._ledger.close()
        task = self._task
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._ledger.give_up("transcripts did not arrive before the drain timeout")

    async def abort(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # --------------------------------------------------------------- running
    async def _run(self) -> None:
        failures = 0  # in a row, without an answer in between
        while not self._ledger.finished:
            try:
                conn = await self._connect(self._options)
            except ScribeError as exc:
                if not self._retryable(exc):
                    return
                failures += 1
                self._log.warning(
                    "scribe.connect_retrying",
                    kind=exc.kind,
                    detail=exc.detail,
                    http_status=exc.http_status,
                    attempt=failures,
                )
                await self._backoff(failures)
                continue
            except Exception as exc:  # a bug, not a Scribe failure: never retry it blindly
                self._log.exception("scribe.connect_crashed")
                self._ledger.give_up(f"transcriber failed: {type(exc).__name__}: {exc}")
                return
            self._count_connection()
            lost = await self._session(conn)
            if lost is None:
                return
            if self._ledger.answers:
                failures = 0  # the session worked for a while: start the backoff afresh
            failures += 1
            _log_lost_session(self._log, lost, failures, self._ledger.unanswered)
            self._ledger.settle()
            await self._backoff(failures)

    def _count_connection(self) -> None:
        self.connections += 1
        self._metrics.scribe_connections.inc()
        if self.connections > 1:
            self.reconnects += 1
            self._metrics.scribe_reconnects.inc()

    async def _session(self, conn: ScribeConnection) -> ScribeError | None:
        """Serves one connection and closes it. Returns the retryable error that lost it,
        or None when the call is done with Scribe (every window answered, or given up)."""
        try:
            await self._serve(conn)
        except ScribeError as exc:
            self._ledger.connection_lost()
            await conn.close()
            return exc if self._retryable(exc) else None
        except asyncio.CancelledError:
            self._ledger.connection_lost()
            _close_in_background(conn, 1001, "call aborted")
            raise
        except Exception as exc:  # a bug: degrade this call, keep the bridge running
            self._ledger.connection_lost()
            self._log.exception("scribe.stream_crashed")
            _close_in_background(conn, 1011, "client error")
            self._ledger.give_up(f"transcriber failed: {type(exc).__name__}: {exc}")
            return None
        self._ledger.connection_lost()
        await conn.close(1000, "call ended")
        return None

    async def _serve(self, conn: ScribeConnection) -> None:
        """One connection, until the call is done (returns) or it fails (raises)."""
        context = self._ledger.connection_opened()
        self._pacer.start(self._clock())
        receiver = asyncio.create_task(self._receive(conn), name="scribe-receive")
        sender = asyncio.create_task(self._send(conn, context), name="scribe-send")
        ticker = asyncio.create_task(self._tick(), name="scribe-tick")
        try:
            # Either side returns only once the call is closing and every window is
            # answered; either one failing fails the connection.
            done, _ = await asyncio.wait({receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if exc is not None:
                    raise exc
        finally:
            for task in (receiver, sender, ticker):
                task.cancel()
            await asyncio.gather(receiver, sender, ticker, return_exceptions=True)

    def _retryable(self, exc: ScribeError) -> bool:
        """Counts the error; a fatal one gives the call up."""
        retryable = "true" if exc.retryable else "false"
        self._metrics.scribe_errors.labels(kind=exc.kind, retryable=retryable).inc()
        if not exc.retryable:
            self._log.error("scribe.failed", kind=exc.kind, detail=exc.detail, retryable=False)
            self._ledger.give_up(f"scribe {exc.kind}: {exc.detail}")
        return exc.retryable

    async def _backoff(self, failures: int) -> None:
        s = self._settings
        delay = min(s.backoff_max_s, s.backoff_initial_s * 2 ** (failures - 1))
        await self._sleep(self._rng.uniform(delay / 2, delay))

    # ------------------------------------------------------------------ send
    async def _send(self, conn: ScribeConnection, context: str | None) -> None:
        ledger, pacer, clock = self._ledger, self._pacer, self._clock
        if context:
            # Replay context: allowed on a connection's first chunk only, so it goes first,
            # with no audio, whatever comes next (replayed audio, a commit, keepalive).
            await conn.send_audio(b"", previous_text=context)
        while True:
            step = ledger.next_step(flush=pacer.flush_due)
            if step is Step.COMMIT:
                wait = pacer.commit_wait(clock())
                if wait > 0:
                    await self._sleep(wait)
                padding = ledger.take_commit()  # silence that makes it carry the 0.3 s floor
                if padding:
                    await self._send_audio(conn, padding)
                await conn.commit()
                pacer.committed(clock())
                self._metrics.scribe_commits.inc()
            elif step is Step.AUDIO:
                data = ledger.take_audio()
                wait = pacer.audio_wait(len(data) / BYTES_PER_MS, clock())
                if wait > 0:
                    await self._sleep(wait)
                await self._send_audio(conn, data)
                pacer.sent(clock())
            elif step is Step.IDLE and ledger.finished:
                return
            elif step is Step.IDLE and pacer.keepalive_now(clock()):
                await self._send_audio(conn, ledger.take_keepalive())
                pacer.sent(clock())
            else:
                # Nothing to send yet: wait for more (or, when closing, for the answers).
                self._wakeup.clear()
                await self._wakeup.wait()

    async def _send_audio(self, conn: ScribeConnection, ulaw: bytes) -> None:
        await conn.send_audio(ulaw_to_pcm16(ulaw) if self._pcm else ulaw)

    async def _tick(self) -> None:
        """Wake the sender for what no frame will: a short chunk left waiting by a stream
        that paused, and keepalive silence. One timer per tick for the call, where a timeout
        on each of the sender's waits would cost two timers per chunk."""
        pacer, ledger = self._pacer, self._ledger
        while True:
            await self._sleep(pacer.tick_s)
            if pacer.tick(self._clock(), ledger.has_backlog):
                self._wakeup.set()

    # --------------------------------------------------------------- receive
    async def _receive(self, conn: ScribeConnection) -> None:
        ledger = self._ledger
        while not ledger.finished:
            message = await conn.receive()
            if isinstance(message, CommittedTranscript):
                ledger.committed(message)
            elif isinstance(message, PartialTranscript) and self._on_partial is not None:
                segment = ledger.segment_on_air()
                if segment is not None:
                    self._on_partial(segment, message.text)


def _log_lost_session(
    log: structlog.stdlib.BoundLogger, exc: ScribeError, attempt: int, unanswered: int
) -> None:
    if exc.kind == "commit_throttled":
        # Every commit the ledger hands out carries ≥ 0.3 s, so this is a bug (or a new
        # rule of the service): the session is lost, replay recovers.
        log.error(
            "scribe.commit_throttled",
            detail=exc.detail,
            close_code=exc.close_code,
            unanswered=unanswered,
        )
    log.warning(
        "scribe.retrying",
        kind=exc.kind,
        detail=exc.detail,
        close_code=exc.close_code,
        attempt=attempt,
        unanswered=unanswered,
    )


_CLOSERS: set[asyncio.Task[None]] = set()


def _close_in_background(conn: ScribeConnection, code: int, reason: str) -> None:
    """Close a connection without waiting for it (the caller is being cancelled)."""

    async def close() -> None:
        with contextlib.suppress(Exception):
            await conn.close(code, reason)

    task = asyncio.get_running_loop().create_task(close())
    _CLOSERS.add(task)
    task.add_done_callback(_CLOSERS.discard)
