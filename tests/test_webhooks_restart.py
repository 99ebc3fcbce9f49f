"""Delivery survives a SIGKILL: a new process on the same SQLite file sends everything."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import sqlite3
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from callbridge.testing.webhook_receiver import Reply, WebhookReceiver
from tests.bridge_harness import free_port

SECRET = "whsec_" + base64.b64encode(b"restart-test-secret-0123456789ab").decode()
WORKER = Path(__file__).with_name("webhooks_restart_worker.py")
CALLS, SEGMENTS = 6, 12
EVENTS = CALLS * (SEGMENTS + 2)


async def spawn(mode: str, db: Path, target: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKER),
        mode,
        "--db",
        str(db),
        "--target",
        target,
        "--secret",
        SECRET,
        "--calls",
        str(CALLS),
        "--segments",
        str(SEGMENTS),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )


async def read_until(process: asyncio.subprocess.Process, word: bytes, within_s: float) -> None:
    assert process.stdout is not None
    async with asyncio.timeout(within_s):
        while True:
            line = await process.stdout.readline()
            if not line:
                raise AssertionError(f"worker exited before printing {word!r}")
            if line.strip() == word:
                return


@pytest.mark.slow
async def test_pending_events_survive_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "bridge.db"
    port = free_port()
    receiver = WebhookReceiver(secret=SECRET, port=port, default=Reply(200, delay_s=0.02))

    # Phase 1: the receiver is up for a few events, then goes down; the bridge is killed.
    await receiver.start()
    first = await spawn("enqueue", db, receiver.url)
    try:
        await receiver.wait_for(5, timeout=20)
        await receiver.stop()
        await read_until(first, b"ENQUEUED", within_s=30)
        await asyncio.sleep(0.5)  # retries against the dead port are in progress
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()
    assert first.returncode == -signal.SIGKILL
    before = len(receiver.requests)
    assert before < EVENTS

    with sqlite3.connect(db) as conn:
        stored = dict(conn.execute("SELECT event_id, body FROM events").fetchall())
        pending = conn.execute(
            "SELECT count(*) FROM deliveries WHERE status = 'pending'"
        ).fetchone()[0]
    assert len(stored) == EVENTS
    assert pending > 0

    # Phase 2: the receiver is back; a fresh process delivers the rest and exits.
    receiver.set_default(200)
    await receiver.start()
    try:
        second = await spawn("drain", db, receiver.url)
        await read_until(second, b"DRAINED", within_s=60)
        assert await second.wait() == 0
    finally:
        await receiver.stop()

    webhook = Webhook(SECRET)
    ids_by_event: dict[tuple[str, str, object], set[str]] = defaultdict(set)
    seen: set[str] = set()
    for request in receiver.requests:
        assert request.signature_valid
        webhook.verify(request.body, dict(request.headers))
        event_id = request.webhook_id
        assert event_id is not None
        assert stored[event_id] == request.body  # what is sent is what was stored and signed
        seen.add(event_id)
        key = (request.data["call_sid"], str(request.event_type), request.data.get("sequence"))
        ids_by_event[key].add(event_id)
    assert seen == set(stored)  # every event at least once
    assert all(len(ids) == 1 for ids in ids_by_event.values())  # never one event, two ids
    assert len(ids_by_event) == EVENTS

    # per call, the first deliveries came in order
    order: dict[str, list[object]] = defaultdict(list)
    for request in receiver.requests:
        sequence = request.data.get("sequence")
        marker = {"call.started": 0, "call.ended": SEGMENTS + 1}.get(str(request.event_type))
        position = marker if marker is not None else sequence
        calls = order[request.data["call_sid"]]
        if position not in calls:
            calls.append(position)
    assert all(positions == list(range(SEGMENTS + 2)) for positions in order.values())
