"""Realistic line audio and the recogniser: words are heard through the background, and
the background alone (babble, music, tones, noise, coughs) gives no word."""

from __future__ import annotations

import numpy as np
import pytest

from callbridge.testing import lines
from callbridge.testing.speech import (
    NEAR_FIELD_DBFS,
    GrowingVoicing,
    build_track,
    detect_words,
    frame_levels_dbfs,
    pcm16_to_ulaw,
    synth_utterance,
    ulaw_to_pcm16,
    voiced_frames,
)

DURATION = 6000
WORDS = [400 + 50 * i for i in range(12)]
SPEECH = [(300, synth_utterance(WORDS[:6])), (3000, synth_utterance(WORDS[6:], pitch_hz=210))]


def on_the_wire(pcm: np.ndarray) -> np.ndarray:
    return ulaw_to_pcm16(pcm16_to_ulaw(pcm))


def heard(layers: list[tuple[int, np.ndarray]]) -> list[int]:
    return [w.freq_hz for w in detect_words(on_the_wire(build_track(DURATION, layers)))]


BACKGROUNDS = {
    "babble 15 dB": lambda: lines.babble(DURATION, lines.SPEECH_RMS_DBFS - 15, seed=1),
    "babble 12 dB": lambda: lines.babble(DURATION, lines.SPEECH_RMS_DBFS - 12, seed=2),
    "pink 15 dB": lambda: lines.pink_noise(DURATION, lines.SPEECH_RMS_DBFS - 15, seed=3),
    "street 12 dB": lambda: lines.street_noise(DURATION, lines.SPEECH_RMS_DBFS - 12, seed=4),
    "hold music": lambda: lines.hold_music(DURATION, -22.0, seed=5),
}


@pytest.mark.parametrize("name", sorted(BACKGROUNDS))
def test_every_word_is_heard_through_the_background(name: str) -> None:
    background = BACKGROUNDS[name]()
    if name == "hold music":  # music on one track, speech on the other: here, alternating
        layers = [(0, background[: 2000 * 8]), SPEECH[1]]
        assert heard(layers) == WORDS[6:]
    else:
        assert heard([(0, background), *SPEECH]) == WORDS


NOT_SPEECH = {
    "far-off babble (12 dB under a talker)": lambda: lines.babble(DURATION, -38.0, seed=5),
    "nearer babble (8 dB under)": lambda: lines.babble(DURATION, -34.0, seed=6),
    "hold music": lambda: lines.hold_music(DURATION, -14.0, seed=7),
    "quiet hold music": lambda: lines.hold_music(DURATION, -26.0, seed=8),
    "DTMF": lambda: lines.dtmf("123456789*0#"),
    "coughs and clicks": lambda: lines.mix(
        DURATION,
        [(400 + 900 * i, lines.cough(40 + 22 * i, seed=i)) for i in range(5)]
        + [(800 + 900 * i, lines.click(40, seed=i)) for i in range(5)],
    ),
    "a steady tone": lambda: lines.tone(DURATION, 440.0),
    "pink noise": lambda: lines.pink_noise(DURATION, -30.0, seed=9),
    "street noise": lambda: lines.street_noise(DURATION, -30.0, seed=10),
}


@pytest.mark.parametrize("name", sorted(NOT_SPEECH))
def test_background_alone_gives_no_words(name: str) -> None:
    assert heard([(0, NOT_SPEECH[name]())]) == []


def test_levels_are_what_the_names_say() -> None:
    speech = np.concatenate([pcm for _, pcm in SPEECH])
    levels = frame_levels_dbfs(speech)
    assert np.mean(levels[levels > -60]) == pytest.approx(lines.SPEECH_RMS_DBFS, abs=1.5)
    babble = lines.babble(DURATION, -39.0, seed=1).astype(np.float64)
    rms_db = 20 * np.log10(np.sqrt(np.mean(babble**2)) / 32768)
    assert rms_db == pytest.approx(-39.0, abs=0.2)
    assert len(lines.dtmf("12")) == (90 * 2 + 80) * 8


def test_the_noisy_call_scripts_are_deterministic() -> None:
    first, second = lines.noisy_call(), lines.noisy_call()
    assert np.array_equal(first.inbound, second.inbound)
    assert first.utterances == second.utterances
    assert not np.array_equal(first.inbound, lines.noisy_call(seed=1).inbound)


@pytest.mark.parametrize("track", ["inbound", "outbound"])
def test_a_recording_analysed_as_it_grows_gives_the_same_words(track: str) -> None:
    """The emulator's partials analyse the growing segment block by block
    (:class:`GrowingVoicing`): at every length, the words are those of one analysis of the
    whole, through babble, hold music, DTMF, coughs and clicks."""
    pcm = on_the_wire(getattr(lines.noisy_call(seed=3), track)[: 16_000 * 8])
    voicing = GrowingVoicing(8000)
    seen_words = 0
    for end_ms in range(500, 16_001, 500):
        part = pcm[: end_ms * 8]
        grown = detect_words(part, voicing=voicing)
        assert grown == detect_words(part), f"at {end_ms} ms"
        levels = frame_levels_dbfs(part)
        loud = levels > NEAR_FIELD_DBFS
        assert np.array_equal(voicing.frames(part, levels) & loud, voiced_frames(part) & loud)
        seen_words = max(seen_words, len(grown))
    assert seen_words >= 3  # the comparison covered real words, not only silence
