"""``serve --workers 2``: one scrape reports every worker; a dead worker's live gauge goes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import generate_latest

from callbridge.metrics.multiprocess import scrape_registry
from callbridge.testing.scribe_emulator import ScribeEmulator
from callbridge.testing.twilio_simulator import TwilioCallSimulator
from tests.bridge_harness import AUTH_TOKEN, STREAM_SECRET, free_port
from tests.metrics_scrape import Scrape, scrape
from tests.test_bridge_e2e import track
from tests.test_serve_process import _children, serve_env, wait_healthy

pytestmark = pytest.mark.slow
WORKER_START_GRACE_S = 5.0  # a worker that dies sooner makes the parent give up (workers.py)


@pytest.fixture
async def emulator() -> AsyncIterator[ScribeEmulator]:
    async with ScribeEmulator(api_key="test-key", transcriber="tones") as emu:
        yield emu


def per_process(metrics_dir: Path, tmp_path: Path) -> dict[int, Scrape]:
    """Each worker's own figures, read from its files alone."""
    found: dict[int, Scrape] = {}
    pids = {int(path.stem.rsplit("_", 1)[1]) for path in metrics_dir.glob("*.db")}
    for pid in pids:
        alone = tmp_path / f"alone-{pid}"
        alone.mkdir(exist_ok=True)
        for path in metrics_dir.glob(f"*_{pid}.db"):
            shutil.copy(path, alone / path.name)
        found[pid] = Scrape(generate_latest(scrape_registry(str(alone))).decode())
    return found


def stale_file(metrics_dir: Path) -> None:
    """A counter file left by an earlier run (another pid): it must not count."""
    code = "from prometheus_client import Counter; Counter('callbridge_calls_started', 'x').inc(42)"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


def kill_leftover_workers(pids: set[int]) -> None:
    """Workers of this server still alive (their parent was killed): kill them."""
    for pid in pids:
        with contextlib.suppress(OSError):
            if b"multiprocessing" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)


async def serving_pid_other_than(base_url: str, known: set[int]) -> int:
    """Wait until a worker that is not one of ``known`` answers (the restarted one)."""
    connector = aiohttp.TCPConnector(force_close=True)  # each request may reach any worker
    deadline = time.monotonic() + 60  # a busy machine takes a while to spawn a worker
    async with aiohttp.ClientSession(connector=connector) as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(f"{base_url}/healthz") as response:
                    pid = int((await response.json())["pid"])
                    if pid not in known:
                        return pid
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.02)
    raise AssertionError("no restarted worker answered")


async def test_one_scrape_reports_every_worker_and_forgets_dead_ones_live_calls(
    tmp_path: Path, emulator: ScribeEmulator
) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    stale_file(metrics_dir)
    assert len(list(metrics_dir.glob("counter_*.db"))) == 1
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    env = serve_env(
        emulator.url,
        port,
        tmp_path / "bridge.db",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        CALLBRIDGE_API_TOKENS="test-api-token",
        CALLBRIDGE_TURNS_MIN_COMMIT_INTERVAL_MS="20",
        CALLBRIDGE_TURNS_CATCHUP_SPEED="1000",
        CALLBRIDGE_LOGGING_LEVEL="warning",
    )
    proc = subprocess.Popen(  # noqa: ASYNC220 (starting the server under test is instant)
        [sys.executable, "-m", "callbridge", "serve", "--workers", "2"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def simulator() -> TwilioCallSimulator:
        return TwilioCallSimulator(
            f"ws://127.0.0.1:{port}/twilio/media",
            auth_token=AUTH_TOKEN,
            public_url=public,
            stream_secret=STREAM_SECRET,
        )

    workers_seen: set[int] = set()  # the parent's children, to clean up after a failure
    try:
        await wait_healthy(public, proc)
        workers_seen.update(_children(proc.pid))
        serving_since = time.monotonic()  # the parent counts its grace from before this
        async with aiohttp.ClientSession() as http:
            # Calls until both workers have taken some (the kernel spreads connections over
            # the workers listening; on a loaded machine the second may still be starting).
            calls = 0
            frames = 0
            spread_by = time.monotonic() + 30.0
            while True:
                sims = [simulator() for _ in range(4)]
                audio = track(1000, [(200, [500, 550])], calls)
                ends = await asyncio.gather(*(sim.run(inbound=audio, speed=0) for sim in sims))
                calls += len(sims)
                frames += sum(sum(end.frames_sent.values()) for end in ends)
                own = per_process(metrics_dir, tmp_path)
                busy = [p for p, s in own.items() if s.value("callbridge_calls_started_total")]
                if len(busy) >= 2 or time.monotonic() > spread_by:
                    break
                await asyncio.sleep(0.2)
            assert len(busy) >= 2, "every call went to one worker"
            # Any worker's scrape has the sum of all (and nothing of the stale file).
            for _ in range(200):
                together = await scrape(http, public, "test-api-token")
                if together.value("callbridge_media_frames_total") == frames:
                    break
                await asyncio.sleep(0.05)
            for _ in range(4):  # connections land on either worker; each says the same
                together = await scrape(http, public, "test-api-token")
                assert together.value("callbridge_calls_started_total") == calls
                assert together.value("callbridge_calls_ended_total", {"reason": "stop"}) == calls
                assert together.value("callbridge_media_frames_total") == frames

            # A live call, then its worker dies: the parent restarts it and its live gauge
            # stops counting, while its counters stay in the totals.
            live = simulator()
            await live.connect()
            await live.send_start(("inbound",))
            await live.send_frames(track(500, [], 99), speed=0)
            holder = None
            for _ in range(100):
                own = per_process(metrics_dir, tmp_path)
                holders = [p for p, s in own.items() if s.value("callbridge_live_calls") == 1]
                if holders:
                    holder = holders[0]
                    break
                await asyncio.sleep(0.05)
            assert holder is not None
            assert (await scrape(http, public, "test-api-token")).value(
                "callbridge_live_calls"
            ) == 1
            grace_left = serving_since + WORKER_START_GRACE_S + 0.5 - time.monotonic()
            await asyncio.sleep(max(0.0, grace_left))
            before = set(per_process(metrics_dir, tmp_path))
            os.kill(holder, signal.SIGKILL)
            await serving_pid_other_than(public, before)
            workers_seen.update(_children(proc.pid))
            after = await scrape(http, public, "test-api-token")
            assert after.value("callbridge_live_calls") == 0
            assert after.value("callbridge_calls_started_total") == calls + 1
            await live.close(abort=True)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        # Workers outlive a killed parent: ask it to stop them first, then kill what is left.
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        await asyncio.to_thread(kill_leftover_workers, workers_seen)
