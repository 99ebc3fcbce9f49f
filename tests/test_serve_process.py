"""`callbridge serve` as a real process: start-up errors, and draining on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from callbridge.testing.scribe_emulator import ScribeEmulator
from callbridge.testing.twilio_simulator import TwilioCallSimulator
from tests.bridge_harness import API_TOKEN, AUTH_TOKEN, STREAM_SECRET, free_port
from tests.test_bridge_e2e import track

pytestmark = pytest.mark.slow


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CALLBRIDGE_", "TWILIO_"))}
    env.pop("ELEVENLABS_API_KEY", None)
    env.pop("DATABASE_URL", None)
    env.update(extra)
    return env


def serve_env(scribe_url: str, port: int, db: Path, **extra: str) -> dict[str, str]:
    """What ``callbridge serve`` needs to run here: keys, the emulator, a port, a database."""
    return base_env(
        ELEVENLABS_API_KEY="test-key",
        CALLBRIDGE_SCRIBE_URL=scribe_url,
        TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        CALLBRIDGE_STREAM_SECRET=STREAM_SECRET,
        CALLBRIDGE_PUBLIC_URL=f"http://127.0.0.1:{port}",
        DATABASE_URL=f"sqlite:///{db}",
        PORT=str(port),
        HOST="127.0.0.1",
        **extra,
    )


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({}, "ELEVENLABS_API_KEY"),
        ({"ELEVENLABS_API_KEY": "k"}, "CALLBRIDGE_PUBLIC_URL"),
        (
            {"ELEVENLABS_API_KEY": "k", "CALLBRIDGE_PUBLIC_URL": "https://b.example"},
            "TWILIO_AUTH_TOKEN",
        ),
        (
            {
                "ELEVENLABS_API_KEY": "k",
                "CALLBRIDGE_PUBLIC_URL": "https://b.example",
                "TWILIO_AUTH_TOKEN": "t",
                "CALLBRIDGE_WEBHOOK_SECRET": "not-a-secret",
            },
            "CALLBRIDGE_WEBHOOK_SECRET",
        ),
    ],
)
def test_serve_refuses_to_start_with_one_line_naming_the_setting(
    tmp_path: Path, env: dict[str, str], setting: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "callbridge", "serve"],
        env=base_env(**env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and setting in lines[0]
    assert "Traceback" not in result.stderr


def test_unreadable_database_is_a_one_line_start_up_error(tmp_path: Path) -> None:
    (tmp_path / "bad.db").write_bytes(b"this is not a database" * 100)
    result = subprocess.run(
        [sys.executable, "-m", "callbridge", "serve"],
        env=base_env(
            ELEVENLABS_API_KEY="k",
            CALLBRIDGE_PUBLIC_URL="https://b.example",
            TWILIO_AUTH_TOKEN="t",
            DATABASE_URL=f"sqlite:///{tmp_path / 'bad.db'}",
            PORT=str(free_port()),
        ),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "DATABASE_URL" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture
async def emulator() -> AsyncIterator[ScribeEmulator]:
    async with ScribeEmulator(api_key="test-key", transcriber="tones") as emu:
        yield emu


async def wait_healthy(base_url: str, proc: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            assert proc.poll() is None, "server exited early"
            try:
                async with http.get(f"{base_url}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("server did not become healthy")


async def test_sigterm_during_live_calls_delivers_every_utterance_and_exits_0(
    tmp_path: Path, emulator: ScribeEmulator
) -> None:
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    db = tmp_path / "bridge.db"
    proc = subprocess.Popen(  # noqa: ASYNC220 (starting the server under test is instant)
        [sys.executable, "-m", "callbridge", "serve"],
        env=serve_env(
            emulator.url,
            port,
            db,
            CALLBRIDGE_API_TOKENS=API_TOKEN,
            CALLBRIDGE_TURNS_MIN_COMMIT_INTERVAL_MS="50",
            CALLBRIDGE_LOGGING_FORMAT="json",
        ),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        await wait_healthy(public, proc)
        calls = []
        for index in range(3):
            base = 500 + 200 * index
            audio = track(
                6000,
                [(300, [base, base + 50]), (2000, [base + 100, base + 150, base + 200])],
                index,
            )
            sim = TwilioCallSimulator(
                f"ws://127.0.0.1:{port}/twilio/media",
                auth_token=AUTH_TOKEN,
                public_url=public,
                stream_secret=STREAM_SECRET,
            )
            calls.append(
                (sim, base, asyncio.create_task(sim.run(inbound=audio, speed=1.0, end="none")))
            )
        # Signal while every call is live: the second utterance is mid-way (≈ 2.6 s in).
        await asyncio.sleep(2.6)
        proc.send_signal(signal.SIGTERM)
        async with aiohttp.ClientSession() as http:
            for _ in range(20):
                try:
                    async with http.get(f"{public}/healthz") as response:
                        if response.status == 503:
                            break
                except aiohttp.ClientError:
                    break
                await asyncio.sleep(0.02)
        exit_code = await asyncio.to_thread(proc.wait, 30)
        output = proc.stdout.read().decode() if proc.stdout else ""
        assert exit_code == 0, output
        serving = [
            json.loads(line) for line in output.splitlines() if '"callbridge.serving"' in line
        ]
        assert serving and serving[0]["event_loop"] == "uvloop"  # the default, where installed
        assert serving[0]["frozen_objects"] > 10_000  # start-up objects kept out of full GCs
        for sim, _, task in calls:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await sim.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with sqlite3.connect(db) as conn:
        for sim, base, _ in calls:
            texts = [
                row[0]
                for row in conn.execute(
                    "SELECT text FROM segments WHERE call_sid = ? ORDER BY sequence",
                    (sim.call_sid,),
                )
                if row[0]
            ]
            spoken_before_signal = [f"tone{base}", f"tone{base + 50}"]
            heard = " ".join(texts).split()
            # Everything spoken before the signal is there (and what followed, up to the cut).
            assert heard[:2] == spoken_before_signal, (sim.call_sid, texts)
            assert f"tone{base + 100}" in heard
            status = conn.execute(
                "SELECT status, end_reason FROM calls WHERE call_sid = ?", (sim.call_sid,)
            ).fetchone()
            assert status == ("ended", "shutdown")


async def test_sigkill_with_events_pending_then_restart_delivers_every_event(
    tmp_path: Path, emulator: ScribeEmulator
) -> None:
    """The server is killed while its webhook receiver is down; after a restart and the
    receiver coming back, every event arrives, each always under the same webhook-id."""
    from callbridge.testing.webhook_receiver import WebhookReceiver

    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    hook_port = free_port()
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    db = tmp_path / "bridge.db"
    env = serve_env(
        emulator.url,
        port,
        db,
        CALLBRIDGE_WEBHOOK_URLS=f"http://127.0.0.1:{hook_port}/hooks",
        CALLBRIDGE_WEBHOOK_SECRET=secret,
        CALLBRIDGE_WEBHOOK_TIMEOUT_S="1",
        CALLBRIDGE_WEBHOOK_BACKOFF_INITIAL_S="0.05",
        CALLBRIDGE_WEBHOOK_BACKOFF_MAX_S="0.3",
        CALLBRIDGE_TURNS_MIN_COMMIT_INTERVAL_MS="20",
        CALLBRIDGE_TURNS_CATCHUP_SPEED="1000",
        CALLBRIDGE_LOGGING_LEVEL="warning",
    )

    def start_server() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "callbridge", "serve"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    proc = start_server()
    try:
        await wait_healthy(public, proc)
        sids = []
        for index in range(2):
            audio = track(5000, [(300, [500 + 100 * index, 550]), (2500, [700, 750, 800])], index)
            sim = TwilioCallSimulator(
                f"ws://127.0.0.1:{port}/twilio/media",
                auth_token=AUTH_TOKEN,
                public_url=public,
                stream_secret=STREAM_SECRET,
            )
            await sim.run(inbound=audio, speed=0)
            sids.append(sim.call_sid)
        # Wait until both calls ended (their call.ended events are in the outbox), then kill.
        for _ in range(200):
            with sqlite3.connect(db) as conn:
                ended = conn.execute("SELECT COUNT(*) FROM calls WHERE status = 'ended'").fetchone()
            if ended[0] == 2:
                break
            await asyncio.sleep(0.05)
        proc.kill()
        proc.wait()
        with sqlite3.connect(db) as conn:
            stored = {row[0] for row in conn.execute("SELECT event_id FROM events")}
        assert len(stored) == 2 * 4  # started, two segments, ended per call

        async with WebhookReceiver(secret=secret, port=hook_port) as receiver:
            proc = start_server()
            await wait_healthy(public, proc)
            received = await receiver.wait_for(len(stored), timeout=25)
            delivered = receiver.delivered()
            assert {r.webhook_id for r in delivered} == stored
            assert all(r.signature_valid for r in receiver.requests)
            # Duplicates only ever with the same id: one body per id.
            bodies: dict[str | None, bytes] = {}
            for request in receiver.requests:
                assert bodies.setdefault(request.webhook_id, request.body) == request.body
            for sid in sids:
                sequence = [
                    r.data.get("sequence")
                    for r in delivered
                    if r.event_type == "transcript.committed" and r.data.get("call_sid") == sid
                ]
                assert sequence == [1, 2]
            assert received
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 30)


def _alive(pids: list[int]) -> bool:
    return any(Path(f"/proc/{pid}").exists() for pid in pids)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(part) for part in text.split()]


async def test_two_workers_share_the_port_and_send_every_event_once(
    tmp_path: Path, emulator: ScribeEmulator
) -> None:
    from callbridge.testing.webhook_receiver import WebhookReceiver

    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    async with WebhookReceiver(secret=secret) as receiver:
        proc = subprocess.Popen(  # noqa: ASYNC220 (starting the server under test is instant)
            [sys.executable, "-m", "callbridge", "serve", "--workers", "2"],
            env=serve_env(
                emulator.url,
                port,
                tmp_path / "bridge.db",
                CALLBRIDGE_WEBHOOK_URLS=receiver.url,
                CALLBRIDGE_WEBHOOK_SECRET=secret,
                CALLBRIDGE_TURNS_MIN_COMMIT_INTERVAL_MS="20",
                CALLBRIDGE_TURNS_CATCHUP_SPEED="1000",
                CALLBRIDGE_LOGGING_LEVEL="warning",
            ),
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            await wait_healthy(public, proc)
            for _ in range(100):
                if len(_children(proc.pid)) >= 2:
                    break
                await asyncio.sleep(0.05)
            workers = _children(proc.pid)
            assert len(workers) >= 2, workers
            sims = []
            runs = []
            for index in range(8):
                base = 400 + 100 * index
                audio = track(3000, [(300, [base, base + 50])], index)
                sim = TwilioCallSimulator(
                    f"ws://127.0.0.1:{port}/twilio/media",
                    auth_token=AUTH_TOKEN,
                    public_url=public,
                    stream_secret=STREAM_SECRET,
                )
                sims.append((sim, base))
                runs.append(sim.run(inbound=audio, speed=0))
            await asyncio.gather(*runs)
            # Each call: call.started, one segment, call.ended.
            await receiver.wait_for(3 * len(sims), timeout=30)
            await asyncio.sleep(0.5)  # room for any duplicate to show up
            ids = [r.webhook_id for r in receiver.requests]
            assert len(ids) == len(set(ids)) == 3 * len(sims)
            assert all(r.signature_valid for r in receiver.requests)
            for sim, base in sims:
                texts = [
                    r.data["text"]
                    for r in receiver.requests
                    if r.event_type == "transcript.committed" and r.data["call_sid"] == sim.call_sid
                ]
                assert texts == [f"tone{base} tone{base + 50}"]
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 30) == 0
            for _ in range(50):  # the parent is gone; its children follow (helpers too)
                if not _alive(workers):
                    break
                await asyncio.sleep(0.1)
            assert not _alive(workers)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
