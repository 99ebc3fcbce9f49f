"""Test audio that sounds like real phone lines, made by code (deterministic, 8 kHz PCM).

A phone line is rarely a clean voice on silence. This module makes the rest of it, to lay
under and between the synthetic "speech" of :mod:`callbridge.testing.speech` with
:func:`callbridge.testing.speech.build_track`:

* :func:`babble`: far-off talkers (a cafeteria, an open-plan office): several overlapping
  voices of the same synthetic speech, muffled (low-passed, as distance and reverberation
  do) and quiet: :func:`level_for_snr` puts it 12–15 dB below the talker;
* :func:`pink_noise` (street and car rumble, fans) and :func:`street_noise` (pink noise with
  slow swells of passing traffic);
* :func:`hold_music`: a chord pad under a melody, notes of 250–500 ms, looped;
* :func:`dtmf`: key-press tones (the standard pairs, 70–100 ms each);
* :func:`cough` and :func:`click`: short broadband bursts of 40–150 ms;
* :func:`tone`: a steady tone (hold beeps, a fax or modem line).

What a real recogniser hears in these (nothing) is what the Scribe emulator hears: its
recogniser (:func:`callbridge.testing.speech.detect_words`) reports a word only for a voiced
sound (a harmonic comb at a voice pitch) with a dominant key partial, loud enough to be the
speaker's own voice. Music, tones, noise, coughs and far-off babble give no words, and the
talker's words are heard through them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from callbridge.testing.speech import FULL_SCALE, Pcm16, synth_utterance

Float = npt.NDArray[np.float64]
RATE = 8000
DTMF_PAIRS = {
    "1": (697, 1209), "2": (697, 1336), "3": (697, 1477),
    "4": (770, 1209), "5": (770, 1336), "6": (770, 1477),
    "7": (852, 1209), "8": (852, 1336), "9": (852, 1477),
    "*": (941, 1209), "0": (941, 1336), "#": (941, 1477),
}  # fmt: skip


def _n(ms: float) -> int:
    return round(ms * RATE / 1000)


def _at_rms(signal: Float, level_dbfs: float) -> Float:
    rms = float(np.sqrt(np.mean(signal * signal))) if len(signal) else 0.0
    if rms == 0.0:
        return signal
    return signal * (FULL_SCALE * 10 ** (level_dbfs / 20) / rms)


def _to_pcm(signal: Float) -> Pcm16:
    return np.clip(np.round(signal), -32768, 32767).astype(np.int16)


def _lowpass(signal: Float, cutoff_hz: float) -> Float:
    """A gentle low-pass (a second-order roll-off, applied in the frequency domain):
    distance and rooms muffle a voice."""
    spectrum = np.fft.rfft(signal)
    freqs = np.fft.rfftfreq(len(signal), 1 / RATE)
    spectrum /= 1.0 + (freqs / cutoff_hz) ** 2
    return np.fft.irfft(spectrum, n=len(signal))


def level_for_snr(speech_level_dbfs: float, snr_db: float) -> float:
    """The RMS level of a background ``snr_db`` below speech at ``speech_level_dbfs`` RMS."""
    return speech_level_dbfs - snr_db


SPEECH_RMS_DBFS = -26.0
"""RMS level of :func:`callbridge.testing.speech.synth_utterance` words at the default
-14 dBFS peak, measured over their voiced frames (see ``tests/test_lines.py``)."""


def babble(
    duration_ms: int,
    level_dbfs: float,
    *,
    voices: int = 6,
    seed: int = 0,
) -> Pcm16:
    """Far-off talkers: ``voices`` overlapping streams of synthetic words, muffled and
    summed, at ``level_dbfs`` RMS. Each voice has its own pitch and random key words."""
    rng = np.random.default_rng(seed)
    length = _n(duration_ms)
    mix = np.zeros(length)
    for _ in range(voices):
        voice = np.zeros(length)
        at = int(rng.integers(0, _n(600)))
        pitch = float(rng.uniform(95, 230))
        while at < length:
            words = [float(f) for f in rng.choice(np.arange(400, 3000, 10), rng.integers(2, 7))]
            utterance = synth_utterance(words, pitch_hz=pitch).astype(np.float64)
            piece = utterance[: length - at]
            voice[at : at + len(piece)] += piece
            at += len(utterance) + _n(float(rng.uniform(150, 900)))
        mix += voice
    mix = _lowpass(mix, 1200.0)
    return _to_pcm(_at_rms(mix, level_dbfs))


def pink_noise(duration_ms: int, level_dbfs: float, *, seed: int = 0) -> Pcm16:
    """Pink (1/f) noise at ``level_dbfs`` RMS (white noise shaped in the frequency domain)."""
    rng = np.random.default_rng(seed)
    length = _n(duration_ms)
    spectrum = np.fft.rfft(rng.standard_normal(length))
    freqs = np.fft.rfftfreq(length, 1 / RATE)
    spectrum[1:] /= np.sqrt(freqs[1:])
    spectrum[0] = 0.0
    return _to_pcm(_at_rms(np.fft.irfft(spectrum, n=length), level_dbfs))


def street_noise(duration_ms: int, level_dbfs: float, *, seed: int = 0) -> Pcm16:
    """Pink noise swelling by up to ~8 dB every few seconds, as traffic passes."""
    rng = np.random.default_rng(seed + 1)
    noise = pink_noise(duration_ms, 0.0, seed=seed).astype(np.float64)
    t = np.arange(len(noise)) / RATE
    swell = np.ones_like(t)
    for _ in range(max(1, duration_ms // 3000)):
        centre = float(rng.uniform(0, duration_ms / 1000))
        width = float(rng.uniform(0.8, 2.0))
        swell += 1.5 * np.exp(-(((t - centre) / width) ** 2))
    return _to_pcm(_at_rms(noise * swell, level_dbfs))


def hold_music(duration_ms: int, level_dbfs: float, *, seed: int = 0) -> Pcm16:
    """A looped tune: a soft chord pad (three notes) under a melody of 250–500 ms notes,
    each note a fundamental with two weaker harmonics and a short attack."""
    rng = np.random.default_rng(seed)
    length = _n(duration_ms)
    t = np.arange(length) / RATE
    chords = [(261.6, 329.6, 392.0), (220.0, 277.2, 329.6), (174.6, 220.0, 261.6)]
    scale = [523.3, 587.3, 659.3, 698.5, 784.0, 880.0, 987.8]
    out = np.zeros(length)
    bar = _n(2000)
    for start in range(0, length, bar):
        chord = chords[(start // bar) % len(chords)]
        seg = slice(start, min(length, start + bar))
        for note in chord:
            out[seg] += 0.25 * np.sin(2 * np.pi * note * t[seg])
    at = 0
    while at < length:
        note_len = _n(float(rng.choice([250, 375, 500])))
        freq = float(rng.choice(scale))
        seg = slice(at, min(length, at + note_len))
        local = np.arange(seg.stop - seg.start) / RATE
        envelope = np.minimum(1.0, local / 0.015) * np.exp(-local * 2.5)
        tone_ = sum(
            amp * np.sin(2 * np.pi * freq * k * local) for k, amp in ((1, 1.0), (2, 0.3), (3, 0.1))
        )
        out[seg] += envelope * tone_
        at += note_len
    return _to_pcm(_at_rms(out, level_dbfs))


def dtmf(digits: str, level_dbfs: float = -16.0, *, tone_ms: int = 90, gap_ms: int = 80) -> Pcm16:
    """Key presses: each digit's two tones for ``tone_ms``, ``gap_ms`` apart."""
    pieces: list[Float] = []
    local = np.arange(_n(tone_ms)) / RATE
    for index, digit in enumerate(digits):
        low, high = DTMF_PAIRS[digit]
        if index:
            pieces.append(np.zeros(_n(gap_ms)))
        pieces.append(np.sin(2 * np.pi * low * local) + np.sin(2 * np.pi * high * local))
    signal = np.concatenate(pieces) if pieces else np.zeros(0)
    peak = FULL_SCALE * 10 ** (level_dbfs / 20)
    return _to_pcm(signal / 2.0 * peak)


def tone(duration_ms: int, freq_hz: float, level_dbfs: float = -20.0) -> Pcm16:
    t = np.arange(_n(duration_ms)) / RATE
    return _to_pcm(FULL_SCALE * 10 ** (level_dbfs / 20) * np.sin(2 * np.pi * freq_hz * t))


def cough(duration_ms: int = 120, level_dbfs: float = -16.0, *, seed: int = 0) -> Pcm16:
    """A broadband burst with a fast attack and a decay (a cough, a sneeze, a bump)."""
    rng = np.random.default_rng(seed)
    length = _n(duration_ms)
    local = np.arange(length) / RATE
    envelope = np.minimum(1.0, local / 0.008) * np.exp(-local / (duration_ms / 1000 / 3))
    burst = _lowpass(rng.standard_normal(length), 2500.0) * envelope
    return _to_pcm(_at_rms(burst, level_dbfs))


def click(duration_ms: int = 40, level_dbfs: float = -14.0, *, seed: int = 0) -> Pcm16:
    """A short sharp click or knock (a handset bumped, a pen dropped)."""
    rng = np.random.default_rng(seed)
    length = _n(duration_ms)
    local = np.arange(length) / RATE
    burst = rng.standard_normal(length) * np.exp(-local / 0.006)
    return _to_pcm(_at_rms(burst, level_dbfs))


def mix(duration_ms: int, layers: Sequence[tuple[int, Pcm16]]) -> Pcm16:
    """Lay ``(start_ms, pcm)`` layers over each other on a track of ``duration_ms``."""
    length = _n(duration_ms)
    out = np.zeros(length)
    for start_ms, pcm in layers:
        start = _n(start_ms)
        if start >= length:
            continue
        piece = np.asarray(pcm, dtype=np.float64)[: length - start]
        out[start : start + len(piece)] += piece
    return _to_pcm(out)


# ----------------------------------------------------------------- a scripted noisy call


class ScriptedLine:
    """A two-track call whose every utterance is known: (start_ms, track, key frequencies).

    ``inbound``/``outbound`` are the rendered tracks (8 kHz PCM) with speech over the
    backgrounds; :attr:`utterances` is the ground truth a test checks transcripts against.
    """

    def __init__(
        self,
        duration_ms: int,
        utterances: Sequence[tuple[int, str, Sequence[int]]],
        inbound_background: Sequence[tuple[int, Pcm16]] = (),
        outbound_background: Sequence[tuple[int, Pcm16]] = (),
        *,
        word_ms: int = 220,
        gap_ms: int = 90,
        line_noise_dbfs: float = -60.0,
        seed: int = 0,
    ) -> None:
        from callbridge.testing.speech import build_track

        self.duration_ms = duration_ms
        self.utterances = [(start, track, list(freqs)) for start, track, freqs in utterances]
        self.word_ms = word_ms
        self.gap_ms = gap_ms
        pitch = {"inbound": 205.0, "outbound": 120.0}
        rendered: dict[str, Pcm16] = {}
        for offset, (track, background) in enumerate(
            (("inbound", inbound_background), ("outbound", outbound_background))
        ):
            speech = [
                (start, synth_utterance(freqs, word_ms, gap_ms, pitch_hz=pitch[track]))
                for start, t, freqs in self.utterances
                if t == track
            ]
            rendered[track] = build_track(
                duration_ms, [*speech, *background], noise_dbfs=line_noise_dbfs, seed=seed + offset
            )
        self.inbound = rendered["inbound"]
        self.outbound = rendered["outbound"]

    def speech_end_ms(self, start_ms: int, words: int) -> int:
        return start_ms + words * self.word_ms + (words - 1) * self.gap_ms


def noisy_call(seed: int = 0) -> ScriptedLine:
    """A 30 s call on a bad line, every hard case of issue 12 in it.

    Caller (inbound): far-off babble 13 dB under their voice all call long, a knock, a
    cough, a DTMF key sequence while on hold, a 0.35 s "no" and a 0.35 s "yes" (the second
    over the agent: double talk), and a 70 ms click 80 ms before hang-up. Agent (outbound):
    street noise 15 dB under their voice, and 12 s of hold music (3–15 s) while the caller
    keeps talking.
    """
    babble_level = level_for_snr(SPEECH_RMS_DBFS, 13.0)
    street_level = level_for_snr(SPEECH_RMS_DBFS, 15.0)
    duration = 30_000
    utterances = [
        (500, "inbound", [400, 450, 500]),
        (1900, "outbound", [1200, 1250, 1300]),
        (4200, "inbound", [550, 600, 650, 700]),  # on hold: the music plays
        (8000, "inbound", [750, 800]),
        (10_500, "inbound", [850]),  # "no", on hold
        (16_000, "outbound", [1350, 1400, 1450, 1500]),  # back from hold
        (18_000, "inbound", [900, 950, 1000]),
        (21_000, "outbound", [1550, 1600, 1650, 1700, 1750, 1800, 1850]),
        (22_200, "inbound", [1050]),  # "yes", over the agent
        (25_500, "inbound", [1100, 1150]),
    ]
    return ScriptedLine(
        duration,
        utterances,
        inbound_background=[
            (0, babble(duration, babble_level, seed=seed + 11)),
            (2900, click(40, seed=seed + 1)),
            (13_000, dtmf("4 7 2 #".replace(" ", ""), -18.0)),
            (14_600, cough(120, seed=seed + 2)),
            (24_300, cough(60, seed=seed + 3)),
            (duration - 150, click(70, seed=seed + 4)),
        ],
        outbound_background=[
            (0, street_noise(duration, street_level, seed=seed + 21)),
            (3000, hold_music(12_000, -22.0, seed=seed + 22)),
        ],
        seed=seed,
    )


def short_noisy_call(seed: int = 0) -> ScriptedLine:
    """A 10 s call for real-time latency checks: hold music on the agent's track the whole
    time, babble under the caller, who talks over the music four times (one a 0.35 s
    "no"), and a click just before hang-up."""
    duration = 10_000
    utterances = [
        (700, "inbound", [400, 450, 500]),
        (2900, "inbound", [550]),
        (4600, "inbound", [600, 650, 700, 750]),
        (7600, "inbound", [800, 850]),
    ]
    return ScriptedLine(
        duration,
        utterances,
        inbound_background=[
            (0, babble(duration, level_for_snr(SPEECH_RMS_DBFS, 13.0), seed=seed + 31)),
            (duration - 150, click(70, seed=seed + 5)),
        ],
        outbound_background=[(0, hold_music(duration, -22.0, seed=seed + 32))],
        seed=seed,
    )
