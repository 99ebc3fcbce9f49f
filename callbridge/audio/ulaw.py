"""G.711 μ-law facts and conversions used by the bridge.

Twilio sends 8 kHz mono μ-law, which Scribe's ``ulaw_8000`` takes as it is, so on the
default path audio is never converted. This module supplies the silence byte, the
per-frame energy measure used by voice activity detection, and the conversion to 16-bit
PCM for the optional ``pcm_8000`` format.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import numpy.typing as npt

with warnings.catch_warnings():
    # Deprecated in 3.11-3.12 and removed in 3.13, where the audioop-lts package (a declared
    # dependency there) provides the same module.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

SAMPLE_RATE = 8000
BYTES_PER_MS = SAMPLE_RATE // 1000  # one byte per μ-law sample
FRAME_MS = 20
FRAME_BYTES = FRAME_MS * BYTES_PER_MS
SILENCE_BYTE = 0xFF  # μ-law code for a zero sample

_LINEAR = np.frombuffer(audioop.ulaw2lin(bytes(range(256)), 2), dtype="<i2").astype(np.float64)
# Squared amplitude of every μ-law code, normalised to full scale: energy is a table lookup.
_POWER: npt.NDArray[np.float64] = (_LINEAR / 32768.0) ** 2


@functools.lru_cache(maxsize=64)
def silence(duration_ms: int) -> bytes:
    """μ-law silence; cached, since the same few durations are asked for every frame."""
    return bytes([SILENCE_BYTE]) * (duration_ms * BYTES_PER_MS)


def mean_power(payload: bytes) -> float:
    """Mean squared amplitude of a μ-law frame, 1.0 being a full-scale square wave."""
    if not payload:
        return 0.0
    return float(_POWER.take(np.frombuffer(payload, dtype=np.uint8)).mean())


def power_dbfs(power: float) -> float:
    return 10.0 * math.log10(power + 1e-12)


def ulaw_to_pcm16(payload: bytes) -> bytes:
    """16-bit little-endian PCM of a μ-law buffer (for Scribe's ``pcm_8000``)."""
    return audioop.ulaw2lin(payload, 2)
