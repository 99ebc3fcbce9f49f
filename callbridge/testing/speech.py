"""Synthetic "speech" for tests, benchmarks and the Scribe emulator's recogniser.

Real recognition is impossible offline, so a "word" here is a sine burst at a distinct
frequency. :func:`synth_utterance` makes them, :func:`build_track` lays utterances on a
noisy track, and :func:`detect_words` finds them again (voiced runs by frame energy, each
with its dominant frequency). Everything is deterministic.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # audioop: deprecated in 3.11, fine here
    import audioop

Pcm16 = npt.NDArray[np.int16]

FULL_SCALE = 32768.0
FADE_MS = 10
FRAME_MS = 10
FFT_SIZE = 8192  # ~1 Hz bins at 8 kHz, well under the 10 Hz rounding


def _amplitude(level_dbfs: float) -> float:
    return float(FULL_SCALE * 10.0 ** (level_dbfs / 20.0))


def _samples(duration_ms: float, sample_rate: int) -> int:
    return round(duration_ms * sample_rate / 1000)


def synth_utterance(
    word_freqs_hz: Sequence[float],
    word_ms: int = 220,
    gap_ms: int = 90,
    level_dbfs: float = -14.0,
    sample_rate: int = 8000,
) -> Pcm16:
    """Tone-burst words separated by silence; ``level_dbfs`` is each burst's peak level."""
    word_len = _samples(word_ms, sample_rate)
    gap = np.zeros(_samples(gap_ms, sample_rate))
    fade_len = min(_samples(FADE_MS, sample_rate), word_len // 2)
    envelope = np.ones(word_len)
    if fade_len:
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade_len) / fade_len)
        envelope[:fade_len] = ramp
        envelope[word_len - fade_len :] = ramp[::-1]
    t = np.arange(word_len) / sample_rate
    pieces: list[npt.NDArray[np.float64]] = []
    for index, freq in enumerate(word_freqs_hz):
        if index:
            pieces.append(gap)
        pieces.append(_amplitude(level_dbfs) * envelope * np.sin(2 * np.pi * freq * t))
    if not pieces:
        return np.zeros(0, dtype=np.int16)
    return _to_int16(np.concatenate(pieces))


def line_noise(
    duration_ms: int, level_dbfs: float = -60.0, seed: int = 0, sample_rate: int = 8000
) -> Pcm16:
    """White (Gaussian) noise whose RMS level is ``level_dbfs``."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(_samples(duration_ms, sample_rate)) * _amplitude(level_dbfs)
    return _to_int16(noise)


def build_track(
    duration_ms: int,
    placements: Sequence[tuple[int, Pcm16]],
    noise_dbfs: float | None = -60.0,
    seed: int = 0,
    sample_rate: int = 8000,
) -> Pcm16:
    """A track of ``duration_ms``: line noise with each ``(start_ms, pcm)`` mixed in.

    Placements that run past the end are cut off. ``noise_dbfs=None`` gives digital silence.
    """
    length = _samples(duration_ms, sample_rate)
    if noise_dbfs is None:
        track = np.zeros(length)
    else:
        track = line_noise(duration_ms, noise_dbfs, seed, sample_rate).astype(np.float64)
    for start_ms, pcm in placements:
        start = _samples(start_ms, sample_rate)
        if start >= length:
            continue
        piece = np.asarray(pcm, dtype=np.float64)[: length - start]
        track[start : start + len(piece)] += piece
    return _to_int16(track)


def _to_int16(samples: npt.NDArray[np.float64]) -> Pcm16:
    return np.clip(np.round(samples), -32768, 32767).astype(np.int16)


def pcm16_to_ulaw(pcm: Pcm16) -> bytes:
    """G.711 μ-law bytes (one per sample) of 16-bit PCM."""
    return audioop.lin2ulaw(np.asarray(pcm, dtype="<i2").tobytes(), 2)


def ulaw_to_pcm16(ulaw: bytes) -> Pcm16:
    """16-bit PCM samples of G.711 μ-law bytes."""
    return np.frombuffer(audioop.ulaw2lin(ulaw, 2), dtype="<i2").astype(np.int16)


@dataclass(frozen=True, slots=True)
class DetectedWord:
    """A voiced run: ``[start_ms, end_ms)`` and its dominant frequency (nearest 10 Hz)."""

    start_ms: int
    end_ms: int
    freq_hz: int

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.start_ms


def frame_levels_dbfs(
    pcm: Pcm16, sample_rate: int = 8000, frame_ms: int = FRAME_MS
) -> npt.NDArray[np.float64]:
    """RMS level of each whole ``frame_ms`` frame, in dBFS (a trailing part frame is ignored)."""
    frame_len = _samples(frame_ms, sample_rate)
    frames = len(pcm) // frame_len
    if frames == 0:
        return np.zeros(0)
    blocks = np.asarray(pcm[: frames * frame_len], dtype=np.float64).reshape(frames, frame_len)
    rms = np.sqrt(np.mean(blocks * blocks, axis=1))
    levels: npt.NDArray[np.float64] = 20.0 * np.log10(np.maximum(rms, 1e-3) / FULL_SCALE)
    return levels


def detect_words(
    pcm: Pcm16,
    sample_rate: int = 8000,
    threshold_dbfs: float = -35.0,
    min_word_ms: int = 60,
    merge_gap_ms: int = 40,
) -> list[DetectedWord]:
    """Voiced runs of 10 ms frames above ``threshold_dbfs``, each with its dominant frequency.

    Runs separated by at most ``merge_gap_ms`` are merged; runs shorter than
    ``min_word_ms`` are dropped.
    """
    voiced = frame_levels_dbfs(pcm, sample_rate) > threshold_dbfs
    runs: list[list[int]] = []  # [first_frame, end_frame)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], voiced.astype(np.int8), [0]))))
    for start, end in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True):
        if runs and (start - runs[-1][1]) * FRAME_MS <= merge_gap_ms:
            runs[-1][1] = end
        else:
            runs.append([start, end])
    frame_len = _samples(FRAME_MS, sample_rate)
    words = []
    for start, end in runs:
        if (end - start) * FRAME_MS < min_word_ms:
            continue
        segment = pcm[start * frame_len : end * frame_len]
        words.append(
            DetectedWord(start * FRAME_MS, end * FRAME_MS, dominant_frequency(segment, sample_rate))
        )
    return words


def dominant_frequency(pcm: Pcm16, sample_rate: int = 8000) -> int:
    """The strongest frequency of ``pcm`` (Hann window, zero-padded FFT), nearest 10 Hz."""
    samples = np.asarray(pcm, dtype=np.float64)
    if len(samples) < 2:
        return 0
    size = max(FFT_SIZE, 1 << (len(samples) - 1).bit_length())
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples)), n=size))
    spectrum[0] = 0.0
    peak = int(np.argmax(spectrum))
    offset = 0.0
    if 0 < peak < len(spectrum) - 1:  # parabolic interpolation between bins
        left, centre, right = spectrum[peak - 1], spectrum[peak], spectrum[peak + 1]
        denominator = left - 2 * centre + right
        if denominator:
            offset = float(0.5 * (left - right) / denominator)
    freq = (peak + offset) * sample_rate / size
    return int(round(freq / 10.0) * 10)
