"""Re-framing of one track's Twilio payloads into whole 20 ms frames.

Twilio does not document its frame size: payloads are 160 bytes in practice, yet they "can
be any length" (reference §2), and 163-byte payloads have been seen. Everything after the
call session works in whole 160-byte frames (voice activity per frame, chunks of whole
frames to Scribe, interface §4), so :class:`FrameAligner` sits in front of the track clock
and turns any payload sizes into whole frames, losing no byte:

* a 160-byte payload with nothing pending passes straight through (the hot path: one
  comparison, no copy);
* other sizes are joined with the bytes left over from earlier payloads and cut into
  frames; the remainder (< 160 bytes) waits for the next payload;
* the remainder is continuous with the next payload unless that payload's timestamp lies a
  whole frame or more beyond the remainder's end: then audio was lost between them, the
  remainder is completed with silence and the next payload starts afresh at its own
  timestamp (the track clock then fills the gap);
* empty payloads carry nothing and are counted, not passed on;
* :meth:`flush` completes the last remainder with silence at the end of the stream.

Refusing odd payloads was the alternative; it would end transcription for a call over a few
bytes the rest of the bridge can take, so they are re-framed instead.
"""

from __future__ import annotations

from callbridge.audio.ulaw import BYTES_PER_MS, FRAME_BYTES, FRAME_MS, SILENCE_BYTE

Frame = tuple[int, bytes]  # (start_ms on the track's timestamps, 160 bytes)


class FrameAligner:
    """Whole 20 ms frames out of one track's payloads of any size."""

    __slots__ = ("empty_payloads", "odd_payloads", "pending", "pending_start_ms")

    def __init__(self) -> None:
        self.pending = b""  # < FRAME_BYTES bytes not yet in a frame
        self.pending_start_ms = 0
        self.odd_payloads = 0
        self.empty_payloads = 0

    def push(self, timestamp_ms: int, payload: bytes) -> list[Frame]:
        """The whole frames this payload completes (often exactly ``[(timestamp, payload)]``)."""
        size = len(payload)
        if size == FRAME_BYTES and not self.pending:
            return [(timestamp_ms, payload)]
        if not size:
            self.empty_payloads += 1
            return []
        self.odd_payloads += size != FRAME_BYTES
        frames: list[Frame] = []
        if self.pending:
            pending_end_ms = self.pending_start_ms + len(self.pending) // BYTES_PER_MS
            if timestamp_ms - pending_end_ms >= FRAME_MS:  # audio lost in between
                frames.append(self._completed_pending())
                data, start_ms = payload, timestamp_ms
            else:
                data, start_ms = self.pending + payload, self.pending_start_ms
        else:
            data, start_ms = payload, timestamp_ms
        whole = len(data) // FRAME_BYTES * FRAME_BYTES
        for offset in range(0, whole, FRAME_BYTES):
            frames.append((start_ms + offset // BYTES_PER_MS, data[offset : offset + FRAME_BYTES]))
        self.pending = data[whole:]
        self.pending_start_ms = start_ms + whole // BYTES_PER_MS
        return frames

    def flush(self) -> list[Frame]:
        """At the end of the stream: the remainder, completed with silence (or nothing)."""
        if not self.pending:
            return []
        return [self._completed_pending()]

    def _completed_pending(self) -> Frame:
        frame = self.pending + bytes([SILENCE_BYTE]) * (FRAME_BYTES - len(self.pending))
        start_ms = self.pending_start_ms
        self.pending = b""
        return start_ms, frame
