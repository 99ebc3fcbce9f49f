#!/usr/bin/env python3
"""Make ``callbridge/data/sample_call.wav`` and its ground truth ``sample_call.json``.

A two-speaker phone call synthesised with espeak-ng (two voices), band-limited and
resampled to 8 kHz with sox, mixed here onto two channels (left = caller, right = agent)
with one stretch of double talk, and written as 8 kHz μ-law stereo WAV, the way Twilio
carries it. Needs ``espeak-ng`` and ``sox`` on PATH and numpy (``.venv/bin/python``):

    apt-get install -y espeak-ng sox
    .venv/bin/python scripts/make_sample_call.py

The output is deterministic for a given espeak-ng/sox version.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import tempfile
import wave
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

from callbridge.audio.ulaw import audioop

RATE = 8000
DATA_DIR = Path(__file__).resolve().parent.parent / "callbridge" / "data"
VOICES = {"caller": "en-us+f3", "agent": "en-gb+m3"}
WORDS_PER_MINUTE = 165
NOISE_DBFS = -62.0  # a faint line hiss, like a real phone line
LEVEL_DBFS = -6.0  # speech peak level
ONSET_DBFS = -40.0  # where a line's speech is taken to start and end (ground truth)


@dataclass(frozen=True)
class Line:
    speaker: str
    text: str
    gap_s: float  # from the end of the previous line's speech; negative = talking over it


SCRIPT = [
    Line(
        "agent",
        "Thank you for calling Northwind Energy, this is Sam. How can I help you today?",
        0.5,
    ),
    Line("caller", "Hi Sam. My bill this month is almost twice what I normally pay.", 0.8),
    Line("agent", "I'm sorry to hear that. Could I have your account number, please?", 0.8),
    Line("caller", "Sure. It's four seven two, nine one eight, five five.", 0.8),
    Line(
        "agent",
        "Thank you. I can see that your March reading was estimated, so the bill is a guess.",
        0.8,
    ),
    Line("caller", "Estimated? Nobody told me that. Can you fix it?", -1.5),
    Line("agent", "Of course. I will book a meter reading for Thursday and correct the bill.", 0.8),
    Line("caller", "Thursday works. Thank you.", 0.8),
    Line("agent", "You're welcome. Goodbye.", 0.7),
]
TAIL_S = 0.8
TELEPHONE_BAND = ["highpass", "300", "lowpass", "3400"]  # sox effects


def synthesise(line: Line, workdir: Path, index: int) -> np.ndarray:
    """One line as 8 kHz float samples (peak at LEVEL_DBFS), leading/trailing silence cut."""
    raw = workdir / f"line{index}-raw.wav"
    phone = workdir / f"line{index}-8k.wav"
    voice = VOICES[line.speaker]
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(WORDS_PER_MINUTE), "-w", str(raw), line.text],
        check=True,
    )
    # telephone band, 8 kHz, 16-bit mono
    subprocess.run(
        [
            "sox",
            "-D",
            str(raw),
            "-r",
            str(RATE),
            "-c",
            "1",
            "-b",
            "16",
            str(phone),
            *TELEPHONE_BAND,
        ],
        check=True,
    )
    with wave.open(str(phone), "rb") as wav:
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(float)
    loud = np.flatnonzero(np.abs(samples) > 32768 * 10 ** (ONSET_DBFS / 20))
    samples = samples[loud[0] : loud[-1] + 1]
    peak = float(np.abs(samples).max())
    scaled: np.ndarray = samples * (32768 * 10 ** (LEVEL_DBFS / 20) / peak)
    return scaled


def write_mulaw_wav(path: Path, left: np.ndarray, right: np.ndarray) -> None:
    """8 kHz stereo μ-law WAV (format tag 7, with the ``fact`` chunk non-PCM files carry)."""

    def encode(samples: np.ndarray) -> bytes:
        pcm = np.clip(np.round(samples), -32768, 32767).astype("<i2").tobytes()
        return bytes(audioop.lin2ulaw(pcm, 2))

    left_ulaw, right_ulaw = encode(left), encode(right)
    interleaved = bytearray(len(left_ulaw) * 2)
    interleaved[0::2] = left_ulaw
    interleaved[1::2] = right_ulaw
    frames = len(left_ulaw)
    fmt = struct.pack("<HHIIHHH", 7, 2, RATE, RATE * 2, 2, 8, 0)
    fact = struct.pack("<I", frames)
    body = (
        b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"fact"
        + struct.pack("<I", len(fact))
        + fact
        + b"data"
        + struct.pack("<I", len(interleaved))
        + bytes(interleaved)
    )
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def main() -> int:
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as tmp:
        clips = [synthesise(line, Path(tmp), i) for i, line in enumerate(SCRIPT)]
    placed: list[tuple[Line, int, int]] = []
    cursor = 0
    for line, clip in zip(SCRIPT, clips, strict=True):
        start = max(0, cursor + round(line.gap_s * RATE))
        placed.append((line, start, start + len(clip)))
        cursor = start + len(clip)
    total = cursor + round(TAIL_S * RATE)
    tracks = {speaker: np.zeros(total) for speaker in VOICES}
    for (line, start, end), clip in zip(placed, clips, strict=True):
        tracks[line.speaker][start:end] += clip
    noise_amplitude = 32768 * 10 ** (NOISE_DBFS / 20)
    for samples in tracks.values():
        samples += rng.normal(0.0, noise_amplitude, total)

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    wav_path = DATA_DIR / "sample_call.wav"
    write_mulaw_wav(wav_path, tracks["caller"], tracks["agent"])

    def ms(sample: int) -> int:
        return round(sample * 1000 / RATE)

    overlaps = [
        {"start_ms": ms(start), "end_ms": ms(min(end, previous_end))}
        for (_, _, previous_end), (_, start, end) in pairwise(placed)
        if start < previous_end
    ]
    truth = {
        "file": "sample_call.wav",
        "format": "WAV, 8 kHz, 2 channels, 8-bit G.711 mu-law (format tag 7)",
        "channels": {"left": "caller (Twilio inbound track)", "right": "agent (outbound)"},
        "voices": VOICES,
        "duration_ms": ms(total),
        "turns": [
            {"speaker": line.speaker, "start_ms": ms(start), "end_ms": ms(end), "text": line.text}
            for line, start, end in placed
        ],
        "overlaps": overlaps,
    }
    (DATA_DIR / "sample_call.json").write_text(json.dumps(truth, indent=2) + "\n")
    size_kb = wav_path.stat().st_size / 1024
    print(f"{wav_path}: {total / RATE:.1f} s, {size_kb:.0f} KB, overlaps {overlaps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
