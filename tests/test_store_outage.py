"""A store that is down during calls, end to end: the calls carry on, nothing is lost,
sequences stay gap-free, and what the store never took is delivered after a restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from callbridge.models import Track
from callbridge.store.base import StoreError
from callbridge.testing.scribe_emulator import ScribeEmulator
from callbridge.testing.speech import build_track, pcm16_to_ulaw, synth_utterance
from tests.bridge_harness import RunningBridge, bridge_settings, free_port, running_bridge

CALLER = [(300, [400, 450, 500]), (3000, [650, 700]), (5200, [900, 950, 1000])]
AGENT = [(1500, [550, 600]), (4000, [750, 800, 850])]
WORDS = [
    ["tone400", "tone450", "tone500"],
    ["tone550", "tone600"],
    ["tone650", "tone700"],
    ["tone750", "tone800", "tone850"],
    ["tone900", "tone950", "tone1000"],
]


def audio(script: list[tuple[int, list[int]]], seed: int) -> bytes:
    placements = [(start, synth_utterance(freqs)) for start, freqs in script]
    return pcm16_to_ulaw(build_track(7000, placements, seed=seed))


def take_store_down(bridge: RunningBridge) -> dict[str, Any]:
    """The store's writes raise as an unreachable database does (reads still work)."""
    store = bridge.store
    writes = ("call_started", "segment_committed", "call_ended")
    claims = ("claim_stream", "renew_stream_claims", "release_stream")
    originals = {name: getattr(store, name) for name in writes + claims}

    async def down(*_: Any, **__: Any) -> None:
        raise StoreError("PostgreSQL error: connection refused")

    for name in originals:
        setattr(store, name, down)
    return originals


def bring_store_back(bridge: RunningBridge, originals: dict[str, Any]) -> None:
    for name, method in originals.items():
        setattr(bridge.store, name, method)


@pytest.fixture
async def emulator() -> AsyncIterator[ScribeEmulator]:
    async with ScribeEmulator(transcriber="tones", partial_interval_ms=0) as emu:
        yield emu


async def wait_for(predicate: Any, timeout_s: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def test_an_outage_during_a_call_delays_and_loses_nothing(
    tmp_path: Path, emulator: ScribeEmulator
) -> None:
    settings = bridge_settings(tmp_path, emulator.url, free_port())
    async with running_bridge(settings) as bridge:
        originals = take_store_down(bridge)
        sim = bridge.simulator()
        loop = asyncio.get_running_loop()
        result = await sim.run(inbound=audio(CALLER, 1), outbound=audio(AGENT, 2), speed=0)
        ended_at = loop.time()
        await wait_for(lambda: _no_live_calls(bridge), 10)
        # The call ended without waiting for the store (its events are journaled).
        assert loop.time() - ended_at < 5.0 and not result.server_closed_early
        assert await bridge.store.get_call(sim.call_sid) is None
        bring_store_back(bridge, originals)
        await wait_for(lambda: _ended(bridge, sim.call_sid))
        segments = await bridge.store.get_segments(sim.call_sid)
        record = await bridge.store.get_call(sim.call_sid)
    assert [s.text.split() for s in segments] == WORDS
    assert [s.sequence for s in segments] == [1, 2, 3, 4, 5]
    assert record is not None and record.segments == 5 and record.degraded is None
    assert not list((tmp_path / "journal").glob("*.jsonl"))


async def test_events_the_store_never_took_are_delivered_after_a_restart(
    tmp_path: Path, emulator: ScribeEmulator
) -> None:
    settings = bridge_settings(tmp_path, emulator.url, free_port())
    with structlog.testing.capture_logs() as logs:
        async with running_bridge(settings) as bridge:
            take_store_down(bridge)
            sim = bridge.simulator()
            await sim.run(inbound=audio(CALLER, 3), outbound=audio(AGENT, 4), speed=0)
            await wait_for(lambda: _no_live_calls(bridge), 10)
        # shutdown with the store still down
    (loud,) = [e for e in logs if e["event"] == "call.events_journaled"]
    assert loud["log_level"] == "error" and loud["events"] == 7  # started, 5 segments, end
    assert len(list((tmp_path / "journal").glob("*.jsonl"))) == 1
    # The next process on the same store and journal: replayed at start-up.
    settings = bridge_settings(tmp_path, emulator.url, free_port())
    async with running_bridge(settings) as bridge:
        await wait_for(lambda: _ended(bridge, sim.call_sid))
        segments = await bridge.store.get_segments(sim.call_sid)
    assert [s.text.split() for s in segments] == WORDS
    assert [s.sequence for s in segments] == [1, 2, 3, 4, 5]
    assert [s.track for s in segments] == [Track.INBOUND, Track.OUTBOUND] * 2 + [Track.INBOUND]
    assert not list((tmp_path / "journal").glob("*.jsonl"))


async def _no_live_calls(bridge: RunningBridge) -> bool:
    return bridge.live_calls == 0


async def _ended(bridge: RunningBridge, call_sid: str) -> bool:
    record = await bridge.store.get_call(call_sid)
    return record is not None and str(record.status) == "ended"
