"""Every Prometheus metric of the bridge, defined once in :class:`BridgeMetrics`.

Each application builds its own :class:`BridgeMetrics` on its own ``CollectorRegistry``,
so two applications in one process (tests, the in-process harness, the demo) never share
figures. With ``serve --workers N`` the values live in the files of the multiprocess
directory instead (:mod:`callbridge.metrics.multiprocess`), and a scrape of any worker
merges all of them.

Disabled metrics (``CALLBRIDGE_METRICS_ENABLED=false``) are the same attributes bound to
no-op stand-ins, so instrumented code never checks a flag and costs next to nothing.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

# No `_created` series: they double the scrape and say little.
disable_created_metrics()  # type: ignore[no-untyped-call]

# End of speech → transcript stored: the turn decision alone waits turn_end_ms (600 ms).
TRANSCRIPT_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0, 20.0)
# Commit sent → committed transcript from Scribe.
COMMIT_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
# Event stored → a webhook target answered 2xx (retries included).
DELIVERY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
# One LLM request, and a call's end → its AI summary stored (retries included).
LLM_REQUEST_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
AI_SUMMARY_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class BridgeMetrics:
    """The bridge's metrics; ``registry`` is what a single-process scrape exposes."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry if enabled else None

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=r) if enabled else NOOP

        def gauge(name: str, doc: str, mode: str = "livesum") -> Gauge:
            if not enabled:
                return NOOP  # type: ignore[no-any-return]
            return Gauge(name, doc, registry=r, multiprocess_mode=mode)  # type: ignore[arg-type]

        def histogram(
            name: str, doc: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()
        ) -> Histogram:
            if not enabled:
                return NOOP  # type: ignore[no-any-return]
            return Histogram(name, doc, labels, registry=r, buckets=buckets)

        # calls --------------------------------------------------------------------------
        self.live_calls = gauge("callbridge_live_calls", "Calls whose media stream is open.")
        self.calls_started = counter(
            "callbridge_calls_started", "Calls whose media stream started."
        )
        self.calls_ended = counter(
            "callbridge_calls_ended",
            "Calls whose transcription ended, by reason (stop, hangup, completed, error, …).",
            ("reason",),
        )
        self.calls_degraded = counter(
            "callbridge_calls_degraded",
            "Calls that ended with incomplete transcription, by kind of cause.",
            ("reason",),
        )
        self.audio_lost = counter(
            "callbridge_audio_lost_seconds",
            "Speech the bridge had to drop (counted when its call ends).",
        )
        self.media_frames = counter(
            "callbridge_media_frames", "Twilio media frames received (both tracks)."
        )
        self.media_refused = counter(
            "callbridge_media_sockets_refused",
            "Media websockets refused or closed for a fault of the peer, by reason.",
            ("reason",),
        )
        self.segments = counter(
            "callbridge_segments_stored", "Committed segments with text, stored and enqueued."
        )
        self.transcript_latency = histogram(
            "callbridge_transcript_latency_seconds",
            "End of a speaker's speech to its segment stored (turn decision, Scribe, store).",
            TRANSCRIPT_BUCKETS,
        )
        # Scribe ---------------------------------------------------------------------------
        self.scribe_connections = counter(
            "callbridge_scribe_connections", "Scribe realtime sessions opened."
        )
        self.scribe_reconnects = counter(
            "callbridge_scribe_reconnects",
            "Scribe sessions opened again for a call after a retryable failure.",
        )
        self.scribe_errors = counter(
            "callbridge_scribe_errors",
            "Scribe failures by kind (the service's error type, or the connection's).",
            ("kind", "retryable"),
        )
        self.scribe_commits = counter("callbridge_scribe_commits", "Commits sent to Scribe.")
        self.commit_latency = histogram(
            "callbridge_scribe_commit_latency_seconds",
            "Commit sent to Scribe to its committed transcript received.",
            COMMIT_BUCKETS,
        )
        # webhooks ---------------------------------------------------------------------
        self.deliveries = counter(
            "callbridge_webhook_deliveries",
            "Webhook delivery attempts by target and outcome (delivered, retried, failed).",
            ("target", "outcome"),
        )
        self.delivery_latency = histogram(
            "callbridge_webhook_delivery_latency_seconds",
            "Event stored (committed) to a 2xx answer from the target, retries included.",
            DELIVERY_BUCKETS,
            ("target",),
        )
        # the AI summary -----------------------------------------------------------------
        self.ai_summaries = counter(
            "callbridge_ai_summaries",
            "AI summaries finished, by status (ready, failed) and result (the outcome status "
            "when ready, the error code when failed).",
            ("status", "result"),
        )
        self.ai_summary_latency = histogram(
            "callbridge_ai_summary_latency_seconds",
            "A call's end to its AI summary stored (ready or failed), retries included.",
            AI_SUMMARY_BUCKETS,
        )
        self.llm_requests = counter(
            "callbridge_llm_requests",
            "Chat-completions requests of the AI summary, by result (ok, or the error's code).",
            ("result",),
        )
        self.llm_request_latency = histogram(
            "callbridge_llm_request_seconds",
            "One chat-completions request, answered or failed.",
            LLM_REQUEST_BUCKETS,
        )
        self.llm_tokens = counter(
            "callbridge_llm_tokens",
            "Tokens the LLM reported, by kind (prompt, completion).",
            ("kind",),
        )
        self.llm_invalid_answers = counter(
            "callbridge_llm_invalid_answers",
            "LLM answers that failed validation (each retried once, then the summary fails).",
        )
        # store, event streams, the process ---------------------------------------------
        self.store_writes = histogram(
            "callbridge_store_write_seconds",
            "Store write transactions by operation.",
            STORE_BUCKETS,
            ("operation",),
        )
        self.event_streams = gauge(
            "callbridge_event_streams", "Open GET /v1/calls/{sid}/events streams."
        )
        self.event_streams_dropped = counter(
            "callbridge_event_streams_dropped",
            "Event-stream clients disconnected for falling behind, by reason.",
            ("reason",),
        )
        self.loop_lag = histogram(
            "callbridge_event_loop_lag_seconds",
            "How late the event loop ran a timer (sampled four times a second per process).",
            LOOP_LAG_BUCKETS,
        )


class _Noop:
    """Stands in for any metric, child or timer when metrics are disabled."""

    def labels(self, *_: object, **__: object) -> _Noop:
        return self

    def inc(self, *_: object) -> None:
        pass

    def dec(self, *_: object) -> None:
        pass

    def set(self, *_: object) -> None:
        pass

    def observe(self, *_: object) -> None:
        pass

    def time(self) -> _Noop:
        return self

    def __enter__(self) -> _Noop:
        return self

    def __exit__(self, *_: object) -> None:
        pass


NOOP: Any = _Noop()


def degraded_kind(reason: str) -> str:
    """A bounded label for a call's free-text ``degraded`` reason."""
    text = reason.strip().lower()
    if text.startswith("scribe "):
        kind = text.removeprefix("scribe ").split(":", 1)[0].strip()
        return "scribe_" + ("".join(c if c.isalnum() else "_" for c in kind)[:40] or "error")
    if text.startswith("audio dropped"):
        return "audio_lost"
    if text.startswith("transcripts did not arrive"):
        return "transcript_timeout"
    if text.startswith("transcriber failed"):
        return "internal_error"
    return "other"
