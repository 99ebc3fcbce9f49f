"""The audio of one track as sent to Scribe batch, and the map of its times back.

Scribe batch takes a file, not raw μ-law (``file_format`` has no μ-law), so a track goes as
a WAV of 16-bit PCM at 8 kHz. By default only speech is sent: the track's measured speech
(the live voice activity) padded by ``pad_ms`` on each side, its stretches joined with
``join_ms`` of silence (a pause between turns, as a listener would expect one), since
silence is billed like speech. :class:`TimeMap` maps a time in
the sent audio back to the Twilio stream clock.
"""

from __future__ import annotations

import bisect
import io
import wave
from collections.abc import Sequence
from dataclasses import dataclass

from callbridge.audio.ulaw import BYTES_PER_MS, SAMPLE_RATE, audioop
from callbridge.postcall.audio_spool import TrackAudio

Span = tuple[int, int]  # [start_ms, end_ms) on the stream clock


@dataclass(frozen=True, slots=True)
class TimeMap:
    """Pieces ``(sent_start_ms, stream_start_ms, length_ms)`` in sent order."""

    pieces: tuple[tuple[int, int, int], ...]

    def to_stream(self, sent_ms: float) -> int:
        """The stream time of a moment in the sent audio (inside a joining silence: the
        start of the piece after it)."""
        if not self.pieces:
            return round(sent_ms)
        starts = [piece[0] for piece in self.pieces]
        index = max(0, bisect.bisect_right(starts, sent_ms) - 1)
        sent_start, stream_start, length = self.pieces[index]
        offset = sent_ms - sent_start
        if offset > length:
            if index + 1 < len(self.pieces):
                return self.pieces[index + 1][1]
            offset = length
        return round(stream_start + max(0.0, offset))


@dataclass(frozen=True, slots=True)
class RequestAudio:
    wav: bytes
    time_map: TimeMap
    seconds: float  # what Scribe bills


def merge_spans(spans: Sequence[Span], pad_ms: int) -> list[Span]:
    """The spans padded by ``pad_ms`` on each side, sorted and merged."""
    merged: list[Span] = []
    for start, end in sorted((max(0, s - pad_ms), e + pad_ms) for s, e in spans if e > s):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def request_audio(
    track: TrackAudio,
    speech: Sequence[Span] | None,
    *,
    pad_ms: int = 400,
    join_ms: int = 700,
) -> RequestAudio | None:
    """The WAV to send for ``track``: all of it (``speech`` None), or only its speech
    (None when the track has none, so nothing is sent and nothing billed)."""
    chosen: list[tuple[int, bytes]] = []
    keep = merge_spans(speech, pad_ms) if speech is not None else None
    for start_ms, data in track.pieces:
        end_ms = start_ms + len(data) // BYTES_PER_MS
        if keep is None:
            chosen.append((start_ms, data))
            continue
        for keep_start, keep_end in keep:
            lo, hi = max(start_ms, keep_start), min(end_ms, keep_end)
            if hi > lo:
                cut = data[(lo - start_ms) * BYTES_PER_MS : (hi - start_ms) * BYTES_PER_MS]
                chosen.append((lo, cut))
    if not chosen:
        return None
    ulaw = bytearray()
    pieces: list[tuple[int, int, int]] = []
    previous_end: int | None = None
    for start_ms, data in sorted(chosen, key=lambda piece: piece[0]):
        if previous_end is not None and start_ms != previous_end:
            ulaw += b"\xff" * (join_ms * BYTES_PER_MS)
        pieces.append((len(ulaw) // BYTES_PER_MS, start_ms, len(data) // BYTES_PER_MS))
        ulaw += data
        previous_end = start_ms + len(data) // BYTES_PER_MS
    return RequestAudio(
        wav=pcm16_wav(bytes(ulaw)),
        time_map=TimeMap(tuple(pieces)),
        seconds=len(ulaw) / BYTES_PER_MS / 1000.0,
    )


def pcm16_wav(ulaw: bytes) -> bytes:
    """μ-law bytes as a mono 16-bit PCM WAV file at 8 kHz."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(audioop.ulaw2lin(ulaw, 2))
    return out.getvalue()
