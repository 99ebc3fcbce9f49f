"""μ-law energy for voice activity: the fast integer-RMS path against exact arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest

from callbridge.audio.ulaw import FRAME_BYTES, mean_power, power_dbfs, silence, ulaw_to_pcm16
from callbridge.testing.speech import pcm16_to_ulaw


def exact_power(frame: bytes) -> float:
    samples = np.frombuffer(ulaw_to_pcm16(frame), dtype="<i2").astype(np.float64) / 32768.0
    return float(np.mean(samples**2))


@pytest.mark.parametrize("level_dbfs", [-55.0, -50.0, -40.0, -20.0, -6.0, -1.0])
def test_mean_power_of_a_tone_matches_exact_arithmetic_exactly(
    level_dbfs: float,
) -> None:
    t = np.arange(FRAME_BYTES) / 8000.0
    amplitude = 32767 * 10 ** (level_dbfs / 20) * math.sqrt(2)
    pcm = np.clip(amplitude * np.sin(2 * math.pi * 440 * t), -32768, 32767).astype("<i2")
    frame = pcm16_to_ulaw(pcm)
    assert abs(power_dbfs(mean_power(frame)) - power_dbfs(exact_power(frame))) < 1e-4


def test_mean_power_of_noise_frames_matches_exact_arithmetic() -> None:
    rng = np.random.default_rng(7)
    for scale in (30, 300, 3000, 30000):
        pcm = np.clip(rng.normal(0, scale, FRAME_BYTES), -32768, 32767).astype("<i2")
        frame = pcm16_to_ulaw(pcm)
        assert mean_power(frame) == pytest.approx(exact_power(frame), rel=1e-6)


def test_silence_has_no_power_and_loud_codes_are_near_full_scale() -> None:
    assert mean_power(silence(20)) == 0.0
    assert mean_power(b"") == 0.0
    assert power_dbfs(mean_power(bytes([0x80]) * FRAME_BYTES)) == pytest.approx(-0.17, abs=0.05)
    assert len(silence(20)) == FRAME_BYTES and set(silence(20)) == {0xFF}
