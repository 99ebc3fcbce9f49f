"""Synthetic tone-burst speech and its detector."""

from __future__ import annotations

import numpy as np
import pytest

from callbridge.testing.speech import (
    DetectedWord,
    build_track,
    detect_words,
    frame_levels_dbfs,
    line_noise,
    pcm16_to_ulaw,
    synth_utterance,
    ulaw_to_pcm16,
)

FREQS = [400, 550, 700, 850, 1000, 1230, 1500, 2100]


def test_words_come_back_with_frequencies_and_times_under_line_noise() -> None:
    utterance = synth_utterance(FREQS)
    track = build_track(4000, [(500, utterance)], noise_dbfs=-60.0, seed=7)
    words = detect_words(ulaw_to_pcm16(pcm16_to_ulaw(track)))
    assert [w.freq_hz for w in words] == FREQS
    for index, word in enumerate(words):
        expected_start = 500 + index * (220 + 90)
        assert abs(word.start_ms - expected_start) <= 20
        assert abs(word.end_ms - (expected_start + 220)) <= 20


def test_detection_is_deterministic_and_noise_is_not_speech() -> None:
    track = build_track(2000, [(100, synth_utterance([600, 900]))], seed=1)
    assert detect_words(track) == detect_words(track.copy())
    assert detect_words(line_noise(3000, level_dbfs=-45.0, seed=2)) == []


def test_short_bursts_are_dropped_and_close_ones_merged() -> None:
    blip = synth_utterance([700], word_ms=40)
    assert detect_words(build_track(1000, [(300, blip)], noise_dbfs=None)) == []
    merged = synth_utterance([500, 500], word_ms=150, gap_ms=20)
    words = detect_words(build_track(1000, [(100, merged)], noise_dbfs=None))
    assert len(words) == 1 and words[0].freq_hz == 500
    assert words[0] == DetectedWord(words[0].start_ms, words[0].end_ms, 500)
    assert abs(words[0].duration_ms - 320) <= 20


def test_levels_and_codec() -> None:
    utterance = synth_utterance([440], word_ms=500, level_dbfs=-14.0)
    assert np.max(np.abs(utterance)) == pytest.approx(32768 * 10 ** (-14 / 20), rel=0.01)
    noise = line_noise(1000, level_dbfs=-60.0, seed=0)
    assert frame_levels_dbfs(noise).mean() == pytest.approx(-60.0, abs=1.5)
    ulaw = pcm16_to_ulaw(utterance)
    assert len(ulaw) == len(utterance)
    decoded = ulaw_to_pcm16(ulaw)
    assert decoded.dtype == np.int16
    assert np.max(np.abs(decoded.astype(int) - utterance)) < 1100  # μ-law quantisation


def test_build_track_cuts_placements_at_the_end() -> None:
    track = build_track(500, [(400, synth_utterance([300]))], noise_dbfs=None)
    assert len(track) == 4000
    assert detect_words(track)[0].start_ms == 400
