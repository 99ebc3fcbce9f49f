"""Timestamp jumps: a gap is filled with at most a second of silence, in one step, and the
queues idle silence feeds stay bounded, so one message can neither freeze the worker nor
grow its memory (a 12-hour jump stalled /healthz for 6 s and took 148 MB; 999999999999
would have stalled the worker for days)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from callbridge.audio.ulaw import FRAME_BYTES
from callbridge.call.session import GAP_FILL_LIMIT_MS, TrackClock
from callbridge.testing.scribe_emulator import ScribeEmulator
from callbridge.testing.twilio_simulator import TwilioCallSimulator
from tests.bridge_harness import STREAM_SECRET, free_port
from tests.test_bridge_e2e import track
from tests.test_serve_process import serve_env, wait_healthy

FRAME = b"\x11" * FRAME_BYTES


def test_a_short_gap_is_filled_in_full() -> None:
    clock = TrackClock()
    assert clock.place(0, FRAME) == (0, 0)
    assert clock.place(600, FRAME) == (20, 580)  # 580 ms missing: 29 frames of silence
    assert clock.next_ms == 620 and clock.filled_ms == 580 and clock.skipped_ms == 0


@pytest.mark.parametrize("jump_ms", [1_000 + 20, 12 * 3600 * 1000, 999_999_999_999])
def test_a_long_gap_is_filled_with_its_last_second_and_the_rest_counted(jump_ms: int) -> None:
    clock = TrackClock()
    clock.place(0, FRAME)
    started = time.perf_counter()
    placed = clock.place(20 + jump_ms, FRAME)
    assert time.perf_counter() - started < 0.01  # no work in proportion to the gap
    assert placed is not None
    fill_start, fill = placed
    assert fill == GAP_FILL_LIMIT_MS  # one second of silence, pushed in one step
    frame_start = fill_start + fill  # the gap is rounded to whole frames
    assert abs(frame_start - (20 + jump_ms)) <= 10
    assert clock.skipped_ms == frame_start - 20 - GAP_FILL_LIMIT_MS
    assert clock.next_ms == frame_start + 20  # the clock follows Twilio's timestamps
    assert clock.place(frame_start + 20, FRAME) == (frame_start + 20, 0)  # and carries on


# --- the real server ------------------------------------------------------------------------


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
async def emulator() -> AsyncIterator[ScribeEmulator]:
    async with ScribeEmulator(api_key="test-key", transcriber="tones") as emu:
        yield emu


async def watch_health(base_url: str, stop: asyncio.Event, latencies: list[float]) -> None:
    """Ask /healthz every 50 ms; each answer's latency, or 99 s when it took over 2 s."""
    timeout = aiohttp.ClientTimeout(total=2.0)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while not stop.is_set():
            started = time.monotonic()
            try:
                async with http.get(f"{base_url}/healthz") as response:
                    assert response.status == 200
                latencies.append(time.monotonic() - started)
            except (TimeoutError, aiohttp.ClientError):
                latencies.append(99.0)
            await asyncio.sleep(0.05)


async def jumping_call(sim: TwilioCallSimulator, before: bytes, after: bytes, jump_ms: int) -> None:
    await sim.connect()
    await sim.send_start(("inbound",))
    end_ms = await sim.send_frames(before, speed=0)
    await sim.send_frames(after, speed=0, start_timestamp_ms=end_ms + jump_ms)
    await sim.send_stop()
    await sim.close()


@pytest.mark.slow
async def test_huge_timestamp_jumps_leave_the_worker_responsive_and_its_memory_flat(
    tmp_path: Path, emulator: ScribeEmulator
) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    db = tmp_path / "bridge.db"
    proc = subprocess.Popen(  # noqa: ASYNC220 (starting the server under test is instant)
        [sys.executable, "-m", "callbridge", "serve"],
        env=serve_env(
            emulator.url,
            port,
            db,
            CALLBRIDGE_TURNS_MIN_COMMIT_INTERVAL_MS="20",
            CALLBRIDGE_TURNS_CATCHUP_SPEED="1000",
        ),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_healthy(base_url, proc)

        def simulator(**kwargs: Any) -> TwilioCallSimulator:
            return TwilioCallSimulator(
                f"ws://127.0.0.1:{port}/twilio/media",
                auth_token="test-auth-token",
                public_url=base_url,
                stream_secret=STREAM_SECRET,
                **kwargs,
            )

        # Warm up (imports, caches, the first Scribe session), then measure.
        await simulator().run(track(1500, [(200, [500, 550])], seed=1), speed=0)
        await asyncio.sleep(0.5)
        rss_before = rss_kb(proc.pid)

        stop = asyncio.Event()
        latencies: list[float] = []
        watcher = asyncio.create_task(watch_health(base_url, stop, latencies))
        bystander = simulator()
        calls = [
            jumping_call(
                simulator(),
                track(1200, [(200, [600, 650])], seed=2),
                track(1200, [(200, [700, 750])], seed=3),
                12 * 3600 * 1000,
            ),
            jumping_call(
                simulator(),
                track(1200, [(200, [800, 850])], seed=4),
                track(1200, [(200, [900, 950])], seed=5),
                999_999_999_999,
            ),
            bystander.run(track(4000, [(300, [1000, 1050]), (2500, [1100])], seed=6), speed=2.0),
        ]
        await asyncio.wait_for(asyncio.gather(*calls), timeout=30)
        await asyncio.sleep(1.0)
        stop.set()
        await watcher
        rss_after = rss_kb(proc.pid)

        assert latencies and max(latencies) < 1.0, f"/healthz stalled: {max(latencies):.1f} s"
        assert rss_after - rss_before < 20_000, (rss_before, rss_after)
        # Every call ended, with its speech before and after the jump, and the bystander's.
        sessions = [" ".join(s.committed) for s in emulator.sessions]
        heard = " ".join(sessions).split()
        for word in ["tone600", "tone650", "tone700", "tone750", "tone800", "tone850"]:
            assert word in heard, sessions
        for word in ["tone900", "tone950", "tone1000", "tone1050", "tone1100"]:
            assert word in heard, sessions
        assert bystander.close_code == 1000 and not bystander.server_closed
        async with aiohttp.ClientSession() as http, http.get(f"{base_url}/healthz") as response:
            assert (await response.json())["live_calls"] == 0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
