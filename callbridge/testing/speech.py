"""Synthetic "speech" for tests, benchmarks and the Scribe emulator's recogniser.

Real recognition is impossible offline, so a "word" here is a short voiced sound: a
harmonic comb at a voice pitch (90–230 Hz, the glottal source of a vowel, shaped by
formant-like bumps) with one strong *key partial* whose frequency names the word
(``tone550`` is the word whose key partial is at 550 Hz). :func:`synth_utterance` makes
them, :func:`build_track` lays utterances on a noisy track, and :func:`detect_words` finds
them again, the way a recogniser would: only in *speech*, so never in music, tones, noise,
coughs or far-off babble (see :func:`voiced_frames`), and through such background when the
talker speaks over it. Everything is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from callbridge.audio.ulaw import audioop

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
    pitch_hz: float = 150.0,
) -> Pcm16:
    """Voiced words separated by silence; ``level_dbfs`` is each word's peak level.

    Each word is its key partial plus a harmonic comb at about ``pitch_hz`` (varying a few
    per cent from word to word, as intonation does) whose harmonics follow three formant
    bumps 12 dB or more below the key; harmonics within 25 Hz of the key are left out.
    """
    word_len = _samples(word_ms, sample_rate)
    gap = np.zeros(_samples(gap_ms, sample_rate))
    fade_len = min(_samples(FADE_MS, sample_rate), word_len // 2)
    envelope = np.ones(word_len)
    if fade_len:
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade_len) / fade_len)
        envelope[:fade_len] = ramp
        envelope[word_len - fade_len :] = ramp[::-1]
    t = np.arange(word_len) / sample_rate
    band_top = min(3400.0, sample_rate / 2 - 200)
    pieces: list[npt.NDArray[np.float64]] = []
    for index, freq in enumerate(word_freqs_hz):
        if index:
            pieces.append(gap)
        f0 = pitch_hz * (1.0 + 0.04 * np.sin(1.7 * index + freq / 97.0))
        wave = np.sin(2 * np.pi * freq * t)
        for k in range(1, int(band_top // f0) + 1):
            harmonic = k * f0
            if abs(harmonic - freq) < 25.0:
                continue
            wave += 0.25 * _formants(harmonic) * np.sin(2 * np.pi * harmonic * t + 0.7 * k)
        word = envelope * wave
        pieces.append(word * (_amplitude(level_dbfs) / max(1e-9, float(np.abs(word).max()))))
    if not pieces:
        return np.zeros(0, dtype=np.int16)
    return _to_int16(np.concatenate(pieces))


def _formants(freq_hz: float) -> float:
    """A vowel-like spectral envelope (F1 ~600, F2 ~1500, F3 ~2500 Hz), at most 1."""
    bumps = (
        1.0 / (1.0 + ((freq_hz - 600.0) / 350.0) ** 2)
        + 0.6 / (1.0 + ((freq_hz - 1500.0) / 450.0) ** 2)
        + 0.3 / (1.0 + ((freq_hz - 2500.0) / 500.0) ** 2)
    )
    return float(min(1.0, 0.15 + bumps))


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


VOICE_PITCH_HZ = (85.0, 300.0)
BLOCK_MS = 64  # voicing analysis block: resolves harmonics 85 Hz apart
NEAR_FIELD_DBFS = -36.0
"""Quietest 10 ms frame a recogniser takes for the speaker's own voice: 10 dB below the
talking level of :func:`synth_utterance` (-26 dBFS RMS at its default -14 dBFS peak), so
far-off talkers 12 dB or more below it are background, as they are for a recogniser tuned
for a handset."""
KEY_DOMINANCE_DB = 4.0
COMB_SHARE = 0.3
TALKER_GATE_DB = 8.0
NOISE_MARGIN_DB = 10.0


def voiced_frames(pcm: Pcm16, sample_rate: int = 8000) -> npt.NDArray[np.bool_]:
    """Per 10 ms frame: does it lie in a *voiced* stretch, a harmonic comb at a voice pitch?

    Each 64 ms block (hop 32 ms) is voiced when, for some pitch in 85–300 Hz, at least 8
    of its harmonics (and 60 % of those in the band) stand 6 dB or more above the local
    spectral floor. A voice's glottal source makes such a comb across the band; a tone or
    a DTMF pair has one or two partials, music a handful that do not share a voice pitch,
    noise and coughs no comb at all. The comb must also carry ``COMB_SHARE`` of the block's
    power, so that a loud tone or cough over a quiet voice is not taken for that voice.
    """
    samples = np.asarray(pcm, dtype=np.float64)
    frame_len = _samples(FRAME_MS, sample_rate)
    out = np.zeros(len(samples) // frame_len, dtype=bool)
    starts = _block_starts(len(samples), sample_rate)
    voiced = _voiced_blocks(samples, starts, sample_rate)
    _mark_voiced(out, starts[voiced], sample_rate)
    return out


class GrowingVoicing:
    """:func:`voiced_frames` of a recording that grows at its end, each block analysed once.

    The emulator recognises its uncommitted audio again for every partial transcript; over
    a long segment, analysing the whole of it each time costs more than the bridge under
    test. Blocks are independent, so the ones already analysed are kept, and a block none
    of whose frames is louder than ``threshold_dbfs`` is not analysed at all (no frame it
    could mark is loud enough to be a word). The frames it gives, where loud, are those of
    :func:`voiced_frames` over the whole.
    """

    def __init__(self, sample_rate: int, threshold_dbfs: float = NEAR_FIELD_DBFS) -> None:
        self.sample_rate = sample_rate
        self.threshold_dbfs = threshold_dbfs
        self._blocks_seen = 0
        self._voiced_starts: list[int] = []

    def frames(self, pcm: Pcm16, levels: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
        """Voiced frames of ``pcm`` (the same recording as before, grown), ``levels`` its
        :func:`frame_levels_dbfs`."""
        frame_len = _samples(FRAME_MS, self.sample_rate)
        starts = _block_starts(len(pcm), self.sample_rate)[self._blocks_seen :]
        self._blocks_seen += len(starts)
        block = _samples(BLOCK_MS, self.sample_rate)
        loud = levels > self.threshold_dbfs
        candidates = np.array(
            [s for s in starts.tolist() if loud[s // frame_len : (s + block) // frame_len].any()],
            dtype=int,
        )
        if len(candidates):
            samples = np.asarray(pcm, dtype=np.float64)
            voiced = _voiced_blocks(samples, candidates, self.sample_rate)
            self._voiced_starts.extend(candidates[voiced].tolist())
        out = np.zeros(len(pcm) // frame_len, dtype=bool)
        _mark_voiced(out, np.array(self._voiced_starts, dtype=int), self.sample_rate)
        return out


def _block_starts(samples: int, sample_rate: int) -> npt.NDArray[np.int_]:
    block = _samples(BLOCK_MS, sample_rate)
    if samples < block:
        return np.zeros(0, dtype=int)
    return np.arange(0, samples - block + 1, block // 2)


def _mark_voiced(
    out: npt.NDArray[np.bool_], starts: npt.NDArray[np.int_], sample_rate: int
) -> None:
    """Mark the whole frames inside each voiced block starting at ``starts``."""
    frame_len = _samples(FRAME_MS, sample_rate)
    block = _samples(BLOCK_MS, sample_rate)
    for start in starts.tolist():
        out[start // frame_len : min(len(out), (start + block) // frame_len)] = True


def _moving_sum(rows: npt.NDArray[np.float64], half_width: int) -> npt.NDArray[np.float64]:
    """Per row, the sum over ±``half_width`` bins (zeros beyond the ends): what
    ``np.convolve(row, ones, mode="same")`` gives, for all rows at once."""
    bins = rows.shape[1]
    padded = np.pad(rows, ((0, 0), (half_width, half_width)))
    total = np.zeros_like(rows)
    for shift in range(2 * half_width + 1):
        total += padded[:, shift : shift + bins]
    return total


def _voiced_blocks(
    samples: npt.NDArray[np.float64], starts: npt.NDArray[np.int_], sample_rate: int
) -> npt.NDArray[np.bool_]:
    """For each 64 ms block starting at ``starts``: is it voiced (see :func:`voiced_frames`)?"""
    if not len(starts):
        return np.zeros(0, dtype=bool)
    block = _samples(BLOCK_MS, sample_rate)
    size = 4096 if sample_rate <= 8000 else 8192
    blocks = np.stack([samples[s : s + block] for s in starts.tolist()]) * np.hanning(block)
    spectrum = 20 * np.log10(np.abs(np.fft.rfft(blocks, n=size, axis=1)) + 1e-6)
    bin_hz = sample_rate / size
    # Local floor: the spectrum smoothed over ±60 Hz (a mean in dB sits below the peaks).
    width = max(1, int(60 / bin_hz))
    floor = _moving_sum(spectrum, width) / (2 * width + 1)
    prominence = spectrum - floor
    # Peak value within ±1 bin of each harmonic position.
    prominence = np.maximum(prominence, np.roll(prominence, 1, axis=1))
    prominence = np.maximum(prominence, np.roll(prominence, -1, axis=1))
    band_top = min(3400.0, sample_rate / 2 - 200)
    pitches = np.arange(VOICE_PITCH_HZ[0], VOICE_PITCH_HZ[1], 1.0)
    harmonics = np.arange(2, int(band_top // VOICE_PITCH_HZ[0]) + 1)
    positions = pitches[:, None] * harmonics[None, :]  # (pitch, harmonic) in Hz
    in_band = (positions >= 200.0) & (positions <= band_top)
    bins = np.clip(np.round(positions / bin_hz).astype(int), 0, spectrum.shape[1] - 1)
    present = (prominence[:, bins] >= 6.0) & in_band[None, :, :]
    counts = present.sum(axis=2)  # (block, pitch)
    ratio = counts / np.maximum(1, in_band.sum(axis=1))[None, :]
    # The comb must carry a good part of the sound, not be a quiet voice under a loud
    # tone or cough: the power within ±24 Hz of its harmonics, against the band's.
    power = 10 ** (spectrum / 10)
    near = _moving_sum(power, max(1, int(24 / bin_hz)))
    low, high = int(200 / bin_hz), int(band_top / bin_hz)
    band_power = power[:, low:high].sum(axis=1) + 1e-12
    harmonic_power = near[:, bins] * in_band[None, :, :]  # (block, pitch, harmonic)
    comb_power = harmonic_power.sum(axis=2)
    share = comb_power / band_power[:, None]
    # ...spread over several harmonics, as a glottal source's is (two loud tones that
    # happen to sit on some pitch's harmonics, a DTMF pair, are not a voice). The
    # strongest harmonic is left out: a voice may have one that stands out.
    strongest = harmonic_power.max(axis=2)
    rest = comb_power - strongest
    spread = rest**2 / ((harmonic_power**2).sum(axis=2) - strongest**2 + 1e-24)
    voiced: npt.NDArray[np.bool_] = (
        (counts >= 8) & (ratio >= 0.6) & (share >= COMB_SHARE) & (spread >= 3.0)
    ).any(axis=1)
    return voiced


def detect_words(
    pcm: Pcm16,
    sample_rate: int = 8000,
    threshold_dbfs: float = NEAR_FIELD_DBFS,
    min_word_ms: int = 60,
    merge_gap_ms: int = 40,
    *,
    require_key: bool = True,
    voicing: GrowingVoicing | None = None,
) -> list[DetectedWord]:
    """Words: runs of 10 ms frames that are voiced (:func:`voiced_frames`) and loud enough
    for the speaker's own voice: above ``threshold_dbfs``, within ``TALKER_GATE_DB`` of the
    stretch's loudest tenth (so that babble between two words does not join them), and
    ``NOISE_MARGIN_DB`` above a background that runs through the stretch. Each is named by
    its dominant frequency, the key partial, which must stand ``KEY_DOMINANCE_DB`` above any
    other peak of the run (``require_key``; off for real recorded speech, whose words have
    no key partial: then every voiced run is a word).

    Runs separated by at most ``merge_gap_ms`` are merged; runs shorter than
    ``min_word_ms`` are dropped, and so are runs whose own spectrum is tones or noise
    (:func:`sounds_voiced`: a key press or a cough over babble).

    ``voicing`` analyses a recording passed again and again as it grows only once per
    block (:class:`GrowingVoicing`, made with the same ``threshold_dbfs``).
    """
    levels = frame_levels_dbfs(pcm, sample_rate)
    if not len(levels):
        return []
    # The talker's level: the loud end of what is audible (digital silence, a bridge's idle
    # fill, is not); background well below it is not their voice.
    audible = levels[levels > -90.0]
    talker = float(np.percentile(audible, 90)) if len(audible) else -90.0
    # A background that runs through the stretch (noise, babble) sets a floor as well:
    # when most of it is audible and its quiet tenth lies clearly below its loud tenth
    # (speech alone over digital silence has no such floor).
    noise_floor = -90.0
    if len(audible) >= len(levels) // 2:
        quiet = float(np.percentile(audible, 10))
        if talker - quiet >= 4.0:
            noise_floor = quiet
    loud = (
        (levels > threshold_dbfs)
        & (levels > talker - TALKER_GATE_DB)
        & (levels > noise_floor + NOISE_MARGIN_DB)
    )
    voiced_at = voiced_frames(pcm, sample_rate) if voicing is None else voicing.frames(pcm, levels)
    voiced = loud & voiced_at[: len(levels)]
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
        if not sounds_voiced(segment, sample_rate):
            continue
        freq, dominance_db = key_partial(segment, sample_rate)
        if require_key and dominance_db < KEY_DOMINANCE_DB:
            continue
        words.append(DetectedWord(start * FRAME_MS, end * FRAME_MS, freq))
    return words


def sounds_voiced(pcm: Pcm16, sample_rate: int = 8000) -> bool:
    """A run's own spectrum, whatever lies under it: not one or two tones (a DTMF pair
    holds nearly all its power in two peaks), not noise (a cough or a knock is nearly as
    flat as noise, a voice's harmonics are not)."""
    samples = np.asarray(pcm, dtype=np.float64)
    size = max(FFT_SIZE, 1 << (len(samples) - 1).bit_length())
    power = np.abs(np.fft.rfft(samples * np.hanning(len(samples)), n=size)) ** 2
    bin_hz = sample_rate / size
    band = power[int(200 / bin_hz) : int(min(3400.0, sample_rate / 2 - 200) / bin_hz)]
    total = float(band.sum()) + 1e-12
    guard = int(30 / bin_hz)
    peaks = band.copy()
    in_peaks = 0.0
    for _ in range(2):
        top = int(np.argmax(peaks))
        in_peaks += float(peaks[max(0, top - guard) : top + guard + 1].sum())
        peaks[max(0, top - guard) : top + guard + 1] = 0.0
    flatness = float(np.exp(np.mean(np.log(band + 1e-12)))) / (total / len(band))
    return in_peaks / total < 0.8 and flatness < 0.1


def key_partial(pcm: Pcm16, sample_rate: int = 8000) -> tuple[int, float]:
    """The dominant frequency (nearest 10 Hz) and how far (dB) it stands above the
    strongest peak more than 60 Hz away from it."""
    samples = np.asarray(pcm, dtype=np.float64)
    if len(samples) < 2:
        return 0, 0.0
    size = max(FFT_SIZE, 1 << (len(samples) - 1).bit_length())
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples)), n=size))
    spectrum[0] = 0.0
    peak = int(np.argmax(spectrum))
    guard = int(60 * size / sample_rate)
    others = spectrum.copy()
    others[max(0, peak - guard) : peak + guard + 1] = 0.0
    dominance = 20 * np.log10((spectrum[peak] + 1e-9) / (float(others.max()) + 1e-9))
    return dominant_frequency(np.asarray(pcm), sample_rate), float(dominance)


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
