"""The live Scribe commit rule, kept by one small synchronous ledger per connection.

The live service refuses a commit when less than 0.3 s of audio arrived since the previous
commit (an empty commit included): it answers ``commit_throttled`` and closes the socket
with 1000, losing whatever it had not answered (reference §2.2, observed). The rule is
about audio *on the connection*, so it is counted per connection, from the bytes actually
sent since its previous commit — segment audio, idle silence, keepalive and replayed audio
alike — and not from what the turn segmenter planned. The call's
:class:`~callbridge.call.commit_windows.CommitWindowLedger`, which decides every byte and commit
that goes out, keeps one per connection.

:class:`CommitLedger` answers one question before every commit: how much silence must go
out first so that the commit carries at least :data:`COMMIT_FLOOR_MS`. Padding with
silence after the last word leaves the words' session times alone (the caller records the
inserted silence for the word-time mapping all the same) and keeps a window single-speaker,
which merging a short tail into the next window would not. The ledger does no I/O and
reads no clock, so it is tested on its own (``tests/test_commit_rule.py``).
"""

from __future__ import annotations

MIN_COMMIT_AUDIO_MS = 300
"""The live service's minimum of uncommitted audio per commit (observed)."""

COMMIT_MARGIN_MS = 40
"""Safety margin on top of the rule: two frames. Whether the service counts received bytes
or decoded samples (after a resampler with a few ms of delay) is not published; 40 ms of
extra silence costs nothing a caller can hear."""

COMMIT_FLOOR_MS = MIN_COMMIT_AUDIO_MS + COMMIT_MARGIN_MS
"""What every commit the bridge sends carries, at least."""


class CommitLedger:
    """Audio sent on one connection since its previous commit, in bytes.

    ``frame_bytes`` is the padding granularity (whole 20 ms frames keep the stream in the
    frame sizes the rest of the bridge uses).
    """

    __slots__ = ("_floor_bytes", "_frame_bytes", "commits", "padded_ms", "uncommitted_bytes")

    def __init__(self, bytes_per_ms: int, frame_bytes: int, floor_ms: int = COMMIT_FLOOR_MS):
        if bytes_per_ms <= 0 or frame_bytes <= 0 or floor_ms < MIN_COMMIT_AUDIO_MS:
            raise ValueError("bytes_per_ms and frame_bytes must be positive, floor_ms ≥ 300")
        self._floor_bytes = floor_ms * bytes_per_ms
        self._frame_bytes = frame_bytes
        self.uncommitted_bytes = 0
        self.commits = 0
        self.padded_ms = 0  # silence added before commits so far (for the call's figures)

    def sent(self, nbytes: int) -> None:
        """Audio went out on the connection."""
        self.uncommitted_bytes += nbytes

    def padding_bytes(self) -> int:
        """Silence (whole frames) to send before the next commit; 0 when none is needed."""
        missing = self._floor_bytes - self.uncommitted_bytes
        if missing <= 0:
            return 0
        return -(-missing // self._frame_bytes) * self._frame_bytes

    def committed(self, padded_ms: int = 0) -> None:
        """A commit went out (after ``padded_ms`` of padding)."""
        if self.uncommitted_bytes < self._floor_bytes:
            # Only a bug gets here: the caller must send padding_bytes() first.
            raise AssertionError(
                f"commit with {self.uncommitted_bytes} bytes of audio, below the floor"
            )
        self.uncommitted_bytes = 0
        self.commits += 1
        self.padded_ms += padded_ms

    def service_committed(self) -> None:
        """The service committed by itself (the 90 s auto-commit): its count restarted at
        some moment up to now. Counting from now on is the safe side of that."""
        self.uncommitted_bytes = 0
