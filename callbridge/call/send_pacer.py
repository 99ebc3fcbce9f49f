"""When a call's Scribe stream may send: audio within a token bucket, commits spaced apart,
a paused stream's short chunk flushed, keepalive silence when the session is quiet.

:class:`SendPacer` is synchronous and reads no clock: every method takes ``now`` (seconds,
any monotonic clock) and answers with how long to wait or whether something is due. The
connection loop in :mod:`callbridge.call.transcriber` does the waiting; the tests
(``tests/test_send_pacer.py``) pass the times themselves.
"""

from __future__ import annotations

TICK_S = 0.25
"""How often the connection loop looks at the pacer: the longest a paused stream's short
chunk waits, and the resolution of keepalive."""

BURST_MS = 1000.0
"""Audio that may go out at once after a quiet spell, before pacing starts."""


class SendPacer:
    """Pacing state of one connection; :meth:`start` it on each new connection.

    - **Token bucket**: a backlog (a replay, a held segment going on air) goes out at most
      ``max_send_speed`` × real time, after a burst of :data:`BURST_MS`.
    - **Commit spacing**: commits at least ``min_commit_interval_s`` apart.
    - **Tick**: a short chunk left by a stream that paused is flushed after a quiet tick;
      after ``keepalive_after_s`` without any message, keepalive silence is due.
    """

    __slots__ = (
        "_budget_at",
        "_budget_ms",
        "_keepalive_after_s",
        "_last_commit",
        "_last_send",
        "_max_send_speed",
        "_min_commit_interval_s",
        "flush_due",
        "keepalive_due",
        "tick_s",
    )

    def __init__(
        self, *, max_send_speed: float, min_commit_interval_s: float, keepalive_after_s: float
    ) -> None:
        if max_send_speed <= 0 or keepalive_after_s <= 0 or min_commit_interval_s < 0:
            raise ValueError("max_send_speed and keepalive_after_s must be positive")
        self._max_send_speed = max_send_speed
        self._min_commit_interval_s = min_commit_interval_s
        self._keepalive_after_s = keepalive_after_s
        self.tick_s = min(TICK_S, keepalive_after_s / 2)
        self.start(0.0)

    def start(self, now: float) -> None:
        """A new connection: a full bucket, no commit yet, quiet since ``now``."""
        self._budget_ms = BURST_MS
        self._budget_at = now
        self._last_commit = float("-inf")
        self._last_send = now
        self.flush_due = False  # a short chunk may go now
        self.keepalive_due = False  # the session may have been quiet too long

    # ------------------------------------------------------------------ audio
    def audio_wait(self, ms: float, now: float) -> float:
        """Takes ``ms`` of audio from the bucket: the seconds to wait before sending it."""
        rate = 1000.0 * self._max_send_speed  # bucket ms per second
        self._budget_ms = min(BURST_MS, self._budget_ms + (now - self._budget_at) * rate)
        self._budget_at = now
        self._budget_ms -= ms
        self.flush_due = False  # whatever was short is going out now
        return -self._budget_ms / rate if self._budget_ms < 0 else 0.0

    def sent(self, now: float) -> None:
        """A message went out."""
        self._last_send = now

    # ---------------------------------------------------------------- commits
    def commit_wait(self, now: float) -> float:
        """Seconds to wait before the next commit may go."""
        return max(0.0, self._min_commit_interval_s - (now - self._last_commit))

    def committed(self, now: float) -> None:
        self._last_commit = self._last_send = now

    # -------------------------------------------------------------- the tick
    def tick(self, now: float, backlog: bool) -> bool:
        """The periodic look. True when the sender should wake: a short chunk has waited a
        quiet tick (``backlog``), or, with nothing queued, keepalive is due."""
        quiet_s = now - self._last_send
        if backlog:
            if quiet_s >= self.tick_s:
                self.flush_due = True
                return True
        elif quiet_s >= self._keepalive_after_s:
            self.keepalive_due = True
            return True
        return False

    def keepalive_now(self, now: float) -> bool:
        """Whether keepalive silence goes now (the session is still quiet); clears the due."""
        if not self.keepalive_due:
            return False
        self.keepalive_due = False
        return now - self._last_send >= self._keepalive_after_s
