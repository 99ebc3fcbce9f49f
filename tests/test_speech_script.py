"""Scripted speech in the Scribe emulator: keyed utterances come back as their text, with
the tones' times, committed across turns through the real bridge."""

from __future__ import annotations

from pathlib import Path

import pytest

from callbridge.models import Track
from callbridge.testing.scribe_emulator import ScribeEmulator
from callbridge.testing.speech import DetectedWord, build_track, pcm16_to_ulaw
from callbridge.testing.speech_script import ScriptedUtterance, SpeechScript
from tests.bridge_harness import bridge_settings, free_port, running_bridge
from tests.test_bridge_e2e import wait_ended


def test_render_maps_tokens_to_tones_and_leaves_the_rest() -> None:
    script = SpeechScript({500: "my card is", 800: ScriptedUtterance("four one", "41")})
    words = [
        DetectedWord(0, 200, 500),
        DetectedWord(300, 500, 510),
        DetectedWord(600, 800, 520),
        DetectedWord(900, 1100, 1500),  # not scripted
        DetectedWord(1200, 1400, 800),
        DetectedWord(1500, 1700, 810),
    ]
    rendered = script.render(words, lambda w: f"tone{w.freq_hz}")
    assert [(t.text, t.start_ms, t.end_ms) for t, _ in rendered] == [
        ("my", 0, 200),
        ("card", 300, 500),
        ("is", 600, 800),
        ("tone1500", 900, 1100),
        ("four", 1200, 1400),
        ("one", 1500, 1700),
    ]
    batch = script.render(words[4:], lambda w: "?", batch=True)
    assert [(t.text, t.start_ms, t.end_ms) for t, _ in batch] == [("41", 1200, 1700)]


def test_a_second_half_without_its_key_is_not_papered_over() -> None:
    script = SpeechScript({500: "one two three"})
    words = [DetectedWord(0, 200, 510), DetectedWord(300, 500, 520)]
    assert [t.text for t, _ in script.render(words, lambda w: f"tone{w.freq_hz}")] == [
        "tone510",
        "tone520",
    ]


def test_scripts_are_checked() -> None:
    with pytest.raises(ValueError, match="overlap"):
        SpeechScript({500: "a b c d", 520: "x"})
    with pytest.raises(ValueError, match="not in its text"):
        SpeechScript({500: ScriptedUtterance("a b", entities=(("ssn", "c"),))})
    assert SpeechScript({500: "a b c"}).freqs(500) == [500, 510, 520]


async def test_a_card_read_in_two_turns_comes_back_as_two_scripted_segments(
    tmp_path: Path,
) -> None:
    script = SpeechScript({500: "my card is 4111 1111", 900: "1111 1111 thanks"})
    caller = pcm16_to_ulaw(
        build_track(7000, [(300, script.audio(500)), (3300, script.audio(900))], seed=3)
    )
    async with ScribeEmulator(transcriber="tones", script=script) as emulator:
        settings = bridge_settings(tmp_path, emulator.url, free_port())
        async with running_bridge(settings) as bridge:
            sim = bridge.simulator()
            await sim.run(inbound=caller, speed=0)
            await wait_ended(bridge, sim.call_sid)
            segments = await bridge.store.get_segments(sim.call_sid)
    assert [(s.track, s.text) for s in segments] == [
        (Track.INBOUND, "my card is 4111 1111"),
        (Track.INBOUND, "1111 1111 thanks"),
    ]
    first = segments[0]
    assert [w.text for w in first.words] == ["my", "card", "is", "4111", "1111"]
    # one tone per token: 220 ms words, 90 ms gaps from 300 ms
    assert all(abs(w.start_ms - (300 + i * 310)) <= 60 for i, w in enumerate(first.words))
