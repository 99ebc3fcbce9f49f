"""Live redaction through the real server: a caller reads a card number over several turns,
with the agent in between; every way out of the bridge (webhooks, the API's transcript in
every format, the summary, the event stream's stored events, the database file, the logs)
carries markers, never the digits. Negatives (order numbers, phone numbers, amounts) pass
unchanged."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from callbridge.config import ConfigError, RedactionSettings, Settings, load_settings
from callbridge.testing.scribe_emulator import ScribeEmulator
from callbridge.testing.speech import build_track, pcm16_to_ulaw
from callbridge.testing.speech_script import SpeechScript
from callbridge.testing.webhook_receiver import WebhookReceiver
from tests.bridge_harness import (
    API_TOKEN,
    RunningBridge,
    bridge_settings,
    free_port,
    running_bridge,
)
from tests.test_bridge_e2e import wait_ended

SCRIPT = SpeechScript(
    {
        500: "my card number is 4111 1111",
        800: "1111 1111",
        1100: "and the expiry is 12 27 code 737",
        1600: "sure go ahead",  # agent
        1900: "thanks and the rest",  # agent
        2200: "order 4521 call me on 415 555 1234 it was $40",  # caller, later
    }
)


def call_audio() -> tuple[bytes, bytes]:
    caller = [(300, 500), (3600, 800), (6400, 1100), (11500, 2200)]
    agent = [(2400, 1900), (9300, 1600)]
    duration = 16_000
    inbound = build_track(duration, [(at, SCRIPT.audio(key)) for at, key in caller], seed=1)
    outbound = build_track(duration, [(at, SCRIPT.audio(key)) for at, key in agent], seed=2)
    return pcm16_to_ulaw(inbound), pcm16_to_ulaw(outbound)


def redacting(settings: Settings, kinds: Sequence[str], hold_ms: int = 2500) -> Settings:
    return settings.replace(redaction=RedactionSettings(kinds=tuple(kinds), hold_ms=hold_ms))


async def api_get(bridge: RunningBridge, path: str) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    async with (
        aiohttp.ClientSession() as http,
        http.get(bridge.base_url + path, headers=headers) as response,
    ):
        return response.status, await response.text()


def files_holding(folder: Path, needle: bytes) -> list[Path]:
    """Every file under ``folder`` (database, WAL, journal …) whose bytes contain ``needle``."""
    return [p for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


CARD_PARTS = re.compile(r"\b(?:4111|1111|737)\b|\b12 27\b")


def has_card_digits(text: str) -> bool:
    """Whether ``text`` holds a group of the card, its expiry or its CVV as a number of its
    own (random SIDs and ids are hex: "…a737b…" is not the CVV)."""
    return CARD_PARTS.search(text) is not None


@pytest.fixture
async def emulator() -> Any:
    async with ScribeEmulator(transcriber="tones", script=SCRIPT) as emu:
        yield emu


async def test_a_card_read_over_three_turns_never_leaves_the_bridge(
    tmp_path: Path, emulator: ScribeEmulator
) -> None:
    inbound, outbound = call_audio()
    async with WebhookReceiver() as receiver:
        settings = redacting(
            bridge_settings(tmp_path, emulator.url, free_port(), webhook_urls=[receiver.url]),
            ["pci"],
        )
        with structlog.testing.capture_logs() as logs:
            async with running_bridge(settings) as bridge:
                sim = bridge.simulator()
                await sim.run(inbound=inbound, outbound=outbound, speed=0)
                await wait_ended(bridge, sim.call_sid)
                await receiver.wait_for(1, predicate=lambda r: r.event_type == "call.ended")
                formats = {
                    fmt: await api_get(bridge, f"/v1/calls/{sim.call_sid}/transcript?format={fmt}")
                    for fmt in ("json", "txt", "vtt", "srt")
                }
                summary = await api_get(bridge, f"/v1/calls/{sim.call_sid}/summary")
    # what Scribe said (the emulator heard the digits) …
    assert any("4111" in text for s in emulator.sessions for text in s.committed)
    committed = [r.data for r in receiver.requests if r.event_type == "transcript.committed"]
    assert [(c["speaker"], c["text"]) for c in committed] == [
        ("caller", "my card number is [PCI]"),
        ("agent", "thanks and the rest"),
        ("caller", "[PCI]"),
        ("caller", "and the expiry is [PCI] code [PCI]"),
        ("agent", "sure go ahead"),
        ("caller", "order 4521 call me on 415 555 1234 it was $40"),
    ]
    assert [c["sequence"] for c in committed] == [1, 2, 3, 4, 5, 6]
    first_words = committed[0]["words"]
    assert [w["text"] for w in first_words] == ["my", "card", "number", "is", "[PCI]"]
    assert first_words[4]["end_ms"] > first_words[4]["start_ms"] > first_words[3]["end_ms"]
    assert [w["text"] for w in committed[2]["words"]] == ["[PCI]"]
    # … and nothing after the bridge has the card: webhooks, API formats, summary, logs, disk
    for request in receiver.requests:
        assert not has_card_digits(request.body.decode()), request.event_type
    for fmt, (status, body) in formats.items():
        assert status == 200 and "[PCI]" in body and not has_card_digits(body), fmt
    assert summary[0] == 200 and "[PCI]" in json.loads(summary[1])["transcript"]
    assert not has_card_digits(summary[1])
    assert not any(has_card_digits(repr(entry)) for entry in logs)
    assert (
        files_holding(tmp_path, b"4111 1111") == [] and files_holding(tmp_path, b"code 737") == []
    )
    assert any(entry["event"] == "redaction.summary" for entry in logs)


async def test_negatives_pass_unchanged_with_every_kind_on(
    tmp_path: Path, emulator: ScribeEmulator
) -> None:
    inbound, outbound = call_audio()
    settings = redacting(
        bridge_settings(tmp_path, emulator.url, free_port()), ["pci", "ssn", "dob"]
    )
    async with running_bridge(settings) as bridge:
        sim = bridge.simulator()
        await sim.run(inbound=inbound, outbound=outbound, speed=0)
        await wait_ended(bridge, sim.call_sid)
        segments = await bridge.store.get_segments(sim.call_sid)
    texts = [s.text for s in segments]
    assert "order 4521 call me on 415 555 1234 it was $40" in texts
    assert "sure go ahead" in texts


async def test_without_redaction_the_text_is_as_scribe_said(
    tmp_path: Path, emulator: ScribeEmulator
) -> None:
    inbound, outbound = call_audio()
    async with running_bridge(bridge_settings(tmp_path, emulator.url, free_port())) as bridge:
        sim = bridge.simulator()
        await sim.run(inbound=inbound, outbound=outbound, speed=0)
        await wait_ended(bridge, sim.call_sid)
        segments = await bridge.store.get_segments(sim.call_sid)
    assert segments[0].text == "my card number is 4111 1111"


async def test_a_number_open_when_its_hold_runs_out_is_redacted_to_be_safe(
    tmp_path: Path,
) -> None:
    script = SpeechScript({500: "my visa is 4111 1111 1111", 900: "hello"})
    inbound = pcm16_to_ulaw(
        build_track(9000, [(300, script.audio(500)), (7000, script.audio(900))], seed=4)
    )
    async with ScribeEmulator(transcriber="tones", script=script) as emu:
        # no hold at all: the segment leaves as soon as it is committed
        settings = redacting(bridge_settings(tmp_path, emu.url, free_port()), ["pci"], hold_ms=0)
        async with running_bridge(settings) as bridge:
            sim = bridge.simulator()
            await sim.run(inbound=inbound, speed=1.5)
            await wait_ended(bridge, sim.call_sid, timeout_s=20)
            segments = await bridge.store.get_segments(sim.call_sid)
    assert [s.text for s in segments] == ["my visa is [PCI]", "hello"]


def test_an_unknown_kind_is_a_start_up_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    with pytest.raises(ConfigError, match=r"^CALLBRIDGE_REDACT: unknown kind 'iban'"):
        load_settings(empty, environ={"CALLBRIDGE_REDACT": "pci,iban"})
    with pytest.raises(ConfigError, match="CALLBRIDGE_REDACTION_HOLD_MS"):
        load_settings(empty, environ={"CALLBRIDGE_REDACTION_HOLD_MS": "5000"})
    settings = load_settings(empty, environ={"CALLBRIDGE_REDACT": "pci, SSN"})
    assert settings.redaction.kinds == ("pci", "SSN")
    assert dataclasses.asdict(settings.redaction)["hold_ms"] == 2500


# A caller gives a social security number (whole, then its last four after a pause) and a
# date of birth (the keyword in one turn, the date in the next); the agent reads numbers
# and a date that are none of them.
ID_SCRIPT = SpeechScript(
    {
        500: "my social is 123-45-6789",
        600: "the last four of my social are",
        700: "it's 6789",
        800: "my date of birth is",
        900: "July 12th 1987",
        1000: "your case number is 987 654 321",
        1100: "the meeting is on March 3rd 2020",
        1200: "call 415 555 1234 order 4521 it was $40",
    }
)
ID_SECRETS = re.compile(r"6789|1987|July|12th")
NEGATIVES = ("987 654 321", "March 3rd 2020", "415 555 1234", "order 4521", "$40")


def id_call_audio() -> tuple[bytes, bytes]:
    caller = [(300, 500), (2500, 600), (5600, 700), (7000, 800), (9500, 900)]
    agent = [(11500, 1000), (14500, 1100), (17500, 1200)]
    duration = 21_500
    inbound = build_track(duration, [(at, ID_SCRIPT.audio(key)) for at, key in caller], seed=5)
    outbound = build_track(duration, [(at, ID_SCRIPT.audio(key)) for at, key in agent], seed=6)
    return pcm16_to_ulaw(inbound), pcm16_to_ulaw(outbound)


async def test_ids_and_dates_of_birth_are_redacted_across_turns_and_negatives_stay(
    tmp_path: Path,
) -> None:
    inbound, outbound = id_call_audio()
    async with (
        ScribeEmulator(transcriber="tones", script=ID_SCRIPT) as emu,
        WebhookReceiver() as receiver,
    ):
        settings = redacting(
            bridge_settings(tmp_path, emu.url, free_port(), webhook_urls=[receiver.url]),
            ["pci", "ssn", "dob"],
        )
        async with running_bridge(settings) as bridge:
            sim = bridge.simulator()
            await sim.run(inbound=inbound, outbound=outbound, speed=0)
            await wait_ended(bridge, sim.call_sid)
            await receiver.wait_for(1, predicate=lambda r: r.event_type == "call.ended")
            formats = {
                fmt: await api_get(bridge, f"/v1/calls/{sim.call_sid}/transcript?format={fmt}")
                for fmt in ("json", "txt", "vtt", "srt")
            }
            summary = await api_get(bridge, f"/v1/calls/{sim.call_sid}/summary")
        heard = [text for s in emu.sessions for text in s.committed]
    assert "it's 6789" in heard and "July 12th 1987" in heard  # Scribe said them
    committed = [r.data for r in receiver.requests if r.event_type == "transcript.committed"]
    assert [(c["speaker"], c["text"]) for c in committed] == [
        ("caller", "my social is [SSN]"),
        ("caller", "the last four of my social are"),
        ("caller", "it's [SSN]"),  # the keyword was in the turn before
        ("caller", "my date of birth is"),
        ("caller", "[DOB]"),  # likewise
        ("agent", "your case number is 987 654 321"),
        ("agent", "the meeting is on March 3rd 2020"),
        ("agent", "call 415 555 1234 order 4521 it was $40"),
    ]
    assert [w["text"] for w in committed[4]["words"]] == ["[DOB]"]
    for request in receiver.requests:
        assert ID_SECRETS.search(request.body.decode()) is None, request.event_type
    for fmt, (status, body) in formats.items():
        assert status == 200 and ID_SECRETS.search(body) is None, fmt
        assert "[SSN]" in body and "[DOB]" in body, fmt
        for negative in NEGATIVES:
            assert negative in body, (fmt, negative)
    assert summary[0] == 200 and ID_SECRETS.search(summary[1]) is None
    assert "987 654 321" in json.loads(summary[1])["transcript"]
