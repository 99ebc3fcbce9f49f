#!/usr/bin/env python3
"""Make ``callbridge/data/noisy_call.wav`` and its ground truth ``noisy_call.json``.

The bundled sample call (``sample_call.wav``, espeak-ng voices) on a bad line: far-off
babble 13 dB under the caller all call long, street noise 15 dB under the agent, and a
12 s hold after the agent asks for the account number: hold music on the agent's track
while the caller reads the number over it, then key presses (DTMF 4-7-2) and a cough; a
click 80 ms before hang-up. Made from the sample call and :mod:`callbridge.testing.lines`,
so it needs only numpy (``.venv/bin/python scripts/make_noisy_call.py``); deterministic.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from callbridge.simulate import load_call_audio, sample_call_path
from callbridge.testing import lines
from callbridge.testing.speech import frame_levels_dbfs, ulaw_to_pcm16

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_sample_call import DATA_DIR, RATE, write_mulaw_wav

HOLD_AFTER_TURN = 2  # the agent's "Could I have your account number, please?"
HOLD_MS = 12_000
CALLER_OVER_MUSIC_MS = 2_000  # into the hold, the caller reads the number
DTMF_AT_MS = 7_800
COUGH_AT_MS = 10_200
BABBLE_SNR_DB = 13.0
STREET_SNR_DB = 15.0
MUSIC_DBFS = -24.0


def ms_to_samples(ms: int) -> int:
    return ms * RATE // 1000


def speech_rms_dbfs(pcm: np.ndarray) -> float:
    levels = frame_levels_dbfs(pcm.astype(np.int16))
    return float(np.mean(levels[levels > -40]))  # the talker's voiced frames


def main() -> int:
    truth = json.loads(sample_call_path().with_name("sample_call.json").read_text())
    tracks = load_call_audio(sample_call_path())
    from callbridge.models import Track

    caller = ulaw_to_pcm16(tracks[Track.INBOUND]).astype(np.float64)
    agent = ulaw_to_pcm16(tracks[Track.OUTBOUND]).astype(np.float64)
    turns = truth["turns"]
    held_turn = turns[HOLD_AFTER_TURN + 1]  # the caller's answer, moved into the hold
    cut = ms_to_samples(turns[HOLD_AFTER_TURN]["end_ms"] + 400)
    resume = ms_to_samples(held_turn["end_ms"] + 800)  # the agent's next line
    answer = caller[ms_to_samples(held_turn["start_ms"]) : ms_to_samples(held_turn["end_ms"])]

    hold = ms_to_samples(HOLD_MS)
    caller_hold = np.zeros(hold)
    at = ms_to_samples(CALLER_OVER_MUSIC_MS)
    caller_hold[at : at + len(answer)] += answer
    dtmf = lines.dtmf("472", -18.0).astype(np.float64)
    caller_hold[ms_to_samples(DTMF_AT_MS) :][: len(dtmf)] += dtmf
    cough = lines.cough(130, -18.0, seed=3).astype(np.float64)
    caller_hold[ms_to_samples(COUGH_AT_MS) :][: len(cough)] += cough
    agent_hold = lines.hold_music(HOLD_MS, MUSIC_DBFS, seed=4).astype(np.float64)

    new_caller = np.concatenate([caller[:cut], caller_hold, caller[resume:]])
    new_agent = np.concatenate([agent[:cut], agent_hold, agent[resume:]])
    total = len(new_caller)
    total_ms = total * 1000 // RATE
    click = lines.click(70, -14.0, seed=5).astype(np.float64)
    new_caller[total - ms_to_samples(150) :][: len(click)] += click

    babble = lines.babble(total_ms, speech_rms_dbfs(caller) - BABBLE_SNR_DB, seed=11)
    street = lines.street_noise(total_ms, speech_rms_dbfs(agent) - STREET_SNR_DB, seed=12)
    new_caller[: len(babble)] += babble
    new_agent[: len(street)] += street

    shift_ms = HOLD_MS - (held_turn["end_ms"] + 800 - (turns[HOLD_AFTER_TURN]["end_ms"] + 400))
    hold_start_ms = turns[HOLD_AFTER_TURN]["end_ms"] + 400
    new_turns = []
    for index, turn in enumerate(turns):
        if index <= HOLD_AFTER_TURN:
            new_turns.append(turn)
        elif turn is held_turn:
            start = hold_start_ms + CALLER_OVER_MUSIC_MS
            length = turn["end_ms"] - turn["start_ms"]
            new_turns.append(turn | {"start_ms": start, "end_ms": start + length})
        else:
            new_turns.append(
                turn
                | {"start_ms": turn["start_ms"] + shift_ms, "end_ms": turn["end_ms"] + shift_ms}
            )
    write_mulaw_wav(DATA_DIR / "noisy_call.wav", new_caller, new_agent)
    noisy = {
        "file": "noisy_call.wav",
        "made_from": "sample_call.wav, by scripts/make_noisy_call.py",
        "format": truth["format"],
        "channels": truth["channels"],
        "duration_ms": total_ms,
        "turns": new_turns,
        "hold_music": {"start_ms": hold_start_ms, "end_ms": hold_start_ms + HOLD_MS},
        "background": [
            {"track": "caller", "what": f"far-off babble, {BABBLE_SNR_DB:g} dB under the caller"},
            {"track": "agent", "what": f"street noise, {STREET_SNR_DB:g} dB under the agent"},
            {"track": "caller", "what": "DTMF 4-7-2", "start_ms": hold_start_ms + DTMF_AT_MS},
            {"track": "caller", "what": "a cough", "start_ms": hold_start_ms + COUGH_AT_MS},
            {"track": "caller", "what": "a 70 ms click", "start_ms": total_ms - 150},
        ],
    }
    (DATA_DIR / "noisy_call.json").write_text(json.dumps(noisy, indent=2) + "\n")
    size_kb = (DATA_DIR / "noisy_call.wav").stat().st_size / 1024
    print(f"noisy_call.wav: {total_ms / 1000:.1f} s, {size_kb:.0f} KB, hold {noisy['hold_music']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
