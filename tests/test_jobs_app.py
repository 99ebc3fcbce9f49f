"""The job runner inside the server: post-call jobs enqueued at a call's end run in the
background, and a stopping server hands interrupted jobs back to the queue."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from aiohttp import web

from callbridge.context import AFTER_CALL, JOBS, STORE
from callbridge.jobs import JobContext, JobKind, JobStatus, NewJob
from callbridge.models import CallEnded, utc_now
from callbridge.testing.scribe_emulator import ScribeEmulator
from callbridge.testing.speech import build_track, pcm16_to_ulaw, synth_utterance
from tests.bridge_harness import bridge_settings, free_port, running_bridge


def caller_audio() -> bytes:
    return pcm16_to_ulaw(build_track(2500, [(300, synth_utterance([500, 600]))], seed=1))


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:  # noqa: ASYNC109
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_a_call_end_enqueues_and_runs_its_post_call_job(tmp_path: Path) -> None:
    ran: list[tuple[str, int]] = []

    async def handle(context: JobContext) -> None:
        ran.append((context.job.call_sid, int(context.payload["segments"])))

    def after_call(ended: CallEnded) -> Sequence[NewJob]:
        return [NewJob("test.after_call", ended.call_sid, {"segments": ended.segments})]

    def configure(app: web.Application) -> None:
        app[JOBS].register(JobKind("test.after_call", handle))
        app[AFTER_CALL].append(after_call)

    async with ScribeEmulator(transcriber="tones") as emulator:
        settings = bridge_settings(tmp_path, emulator.url, free_port())
        async with running_bridge(settings, configure) as bridge:
            sim = bridge.simulator()
            await sim.run(inbound=caller_audio(), speed=0)
            store = bridge.app[STORE]

            async def done() -> bool:
                job = await store.jobs.get("test.after_call", sim.call_sid)
                return job is not None and job.status is JobStatus.DONE

            await wait_for(done)
            assert ran == [(sim.call_sid, 1)]


async def test_stopping_the_server_hands_running_jobs_back(tmp_path: Path) -> None:
    started = asyncio.Event()

    async def hang(context: JobContext) -> None:
        started.set()
        await asyncio.Event().wait()

    def configure(app: web.Application) -> None:
        app[JOBS].register(JobKind("test.hang", hang))

    async with ScribeEmulator(transcriber="tones") as emulator:
        settings = bridge_settings(tmp_path, emulator.url, free_port())
        settings = settings.replace(jobs=dataclasses.replace(settings.jobs, shutdown_grace_s=0.1))
        async with running_bridge(settings, configure) as bridge:
            store = bridge.app[STORE]
            await store.jobs.enqueue([NewJob("test.hang", "CA1")], utc_now())
            bridge.app[JOBS].notify()
            await asyncio.wait_for(started.wait(), 10)
        # The server has stopped (cleanup ran): the job is pending again, attempt not counted.
        async with running_bridge(settings) as again:
            job = await again.app[STORE].jobs.get("test.hang", "CA1")
            assert job is not None
            assert job.status is JobStatus.PENDING and job.attempts == 0
            assert job.lease_owner is None
