"""A short two-party call for the event stream, metrics and live page tests, and the ways
they start, play and wait for it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from callbridge.testing.speech import build_track, pcm16_to_ulaw, synth_utterance
from callbridge.testing.twilio_simulator import TwilioCallSimulator
from tests.bridge_harness import RunningBridge

CALLER_WORDS = [[400, 450, 500], [650, 700]]
AGENT_WORDS = [[1200, 1250, 1300]]


def two_party_call() -> tuple[bytes, bytes]:
    """Caller, agent, caller: three turns with clear pauses (tone-burst words)."""

    def track(placements: Sequence[tuple[int, Sequence[int]]], seed: int) -> bytes:
        audio = [(start, synth_utterance(words)) for start, words in placements]
        return pcm16_to_ulaw(build_track(7000, audio, noise_dbfs=-60.0, seed=seed))

    caller = track([(300, CALLER_WORDS[0]), (4300, CALLER_WORDS[1])], 1)
    agent = track([(2000, AGENT_WORDS[0])], 2)
    return caller, agent


async def wait_ended(bridge: RunningBridge, call_sid: str) -> None:
    for _ in range(500):
        record = await bridge.store.get_call(call_sid)
        if record is not None and record.status == "ended":
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"call {call_sid} did not end")


async def play_ended_call(bridge: RunningBridge) -> str:
    """The two-party call played to its end; its SID."""
    caller, agent = two_party_call()
    sim = bridge.simulator()
    await sim.run(inbound=caller, outbound=agent, speed=0)
    await wait_ended(bridge, sim.call_sid)
    return sim.call_sid


async def started_call(
    bridge: RunningBridge, seen_by: RunningBridge | None = None
) -> TwilioCallSimulator:
    """A stream started on ``bridge`` (both tracks, no audio yet), once ``seen_by``'s store
    (the same by default) has the call."""
    sim = bridge.simulator()
    await sim.connect()
    await sim.send_start(("inbound", "outbound"))
    for _ in range(100):
        if await (seen_by or bridge).store.get_call(sim.call_sid) is not None:
            return sim
        await asyncio.sleep(0.02)
    raise AssertionError(f"call {sim.call_sid} was not stored")
