"""The post-call batch pass through the real server, against the realtime and batch
emulators: the batch transcript and its event, redaction, retries, final failure, erasure
(and an erasure ElevenLabs cannot confirm), the concurrency limit, a restart in the middle of
a pass, the AI summary after it, and the event stream."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from callbridge.config import (
    JobSettings,
    PostcallSettings,
    RedactionSettings,
    Settings,
    SummarySettings,
)
from callbridge.context import JOBS
from callbridge.jobs import JobStatus
from callbridge.postcall.batch_pass import POSTCALL_JOB
from callbridge.testing.llm_emulator import LLMEmulator
from callbridge.testing.scribe_batch_emulator import BatchFault, ScribeBatchEmulator
from callbridge.testing.scribe_emulator import ScribeEmulator
from callbridge.testing.speech import build_track, pcm16_to_ulaw
from callbridge.testing.speech_script import ScriptedUtterance, SpeechScript
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
        500: ScriptedUtterance(
            "my card is 4111 1111",
            batch_text="My card is 4111 1111",
            entities=(("credit_card", "4111 1111"),),
        ),
        800: ScriptedUtterance(
            "1111 1111 thanks",
            batch_text="1111 1111, thanks.",
            entities=(("credit_card", "1111 1111"),),
        ),
        1600: ScriptedUtterance("sure go a head", batch_text="Sure, go ahead."),
    }
)
DURATION_MS = 8000


def call_audio() -> tuple[bytes, bytes]:
    inbound = build_track(
        DURATION_MS, [(300, SCRIPT.audio(500)), (3300, SCRIPT.audio(800))], seed=1
    )
    outbound = build_track(DURATION_MS, [(2000, SCRIPT.audio(1600))], seed=2)
    return pcm16_to_ulaw(inbound), pcm16_to_ulaw(outbound)


def postcall_settings(
    tmp_path: Path,
    scribe: ScribeEmulator,
    batch: ScribeBatchEmulator,
    receiver: WebhookReceiver,
    **postcall: Any,
) -> Settings:
    settings = bridge_settings(tmp_path, scribe.url, free_port(), webhook_urls=(receiver.url,))
    options: dict[str, Any] = {
        "mode": "batch",
        "audio_dir": str(tmp_path / "audio"),
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.2,
        "retry_for_s": 30.0,
        "timeout_s": 5.0,
    }
    options.update(postcall)
    return settings.replace(
        redaction=RedactionSettings(kinds=("pci",)),
        postcall=PostcallSettings(**options),
        jobs=JobSettings(poll_interval_s=0.05, shutdown_grace_s=0.2),
        scribe=dataclasses.replace(settings.scribe, batch_url=batch.url),
    )


@pytest.fixture
async def scribe() -> AsyncIterator[ScribeEmulator]:
    async with ScribeEmulator(transcriber="tones", script=SCRIPT) as emulator:
        yield emulator


@pytest.fixture
async def batch() -> AsyncIterator[ScribeBatchEmulator]:
    async with ScribeBatchEmulator(script=SCRIPT) as emulator:
        yield emulator


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as hooks:
        yield hooks


async def play_call(bridge: RunningBridge) -> str:
    inbound, outbound = call_audio()
    sim = bridge.simulator()
    await sim.run(inbound=inbound, outbound=outbound, speed=0)
    await wait_ended(bridge, sim.call_sid)
    return sim.call_sid


async def api(bridge: RunningBridge, method: str, path: str) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, bridge.base_url + path, headers=headers) as response,
    ):
        return response.status, await response.text()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:  # noqa: ASYNC109
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def event_of(receiver: WebhookReceiver, event_type: str, call_sid: str) -> dict[str, Any]:
    found = [
        r.data
        for r in receiver.requests
        if r.event_type == event_type and r.data.get("call_sid") == call_sid
    ]
    assert len(found) == 1, (event_type, len(found))
    return found[0]


def kept_audio(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "audio"
    return list(folder.iterdir()) if folder.exists() else []


async def test_the_batch_transcript_is_stored_redacted_and_announced(
    tmp_path: Path,
    scribe: ScribeEmulator,
    batch: ScribeBatchEmulator,
    receiver: WebhookReceiver,
) -> None:
    settings = postcall_settings(tmp_path, scribe, batch, receiver)
    async with running_bridge(settings) as bridge:
        call_sid = await play_call(bridge)
        await receiver.wait_for(1, predicate=lambda r: r.event_type == "call.transcript_final")
        await eventually(lambda: _async(len(batch.deleted) == 2 and not kept_audio(tmp_path)))
        transcripts = {
            fmt: await api(
                bridge, "GET", f"/v1/calls/{call_sid}/transcript?version=batch&format={fmt}"
            )
            for fmt in ("json", "txt", "vtt", "srt")
        }
        live = json.loads((await api(bridge, "GET", f"/v1/calls/{call_sid}/transcript"))[1])
        summary = await api(bridge, "GET", f"/v1/calls/{call_sid}/summary?version=batch")
        call = json.loads((await api(bridge, "GET", f"/v1/calls/{call_sid}"))[1])
    final = event_of(receiver, "call.transcript_final", call_sid)
    assert final["version"] == "batch"
    # exact speakers, the batch model's text, the card redacted (entities and second net)
    assert [(s["sequence"], s["speaker"], s["text"]) for s in final["segments"]] == [
        (1, "caller", "My card is [PCI]"),
        (2, "agent", "Sure, go ahead."),
        (3, "caller", "[PCI] thanks."),
    ]
    assert final["summary"]["version"] == "batch"
    assert final["summary"]["transcript"] == (
        "caller: My card is [PCI]\nagent: Sure, go ahead.\ncaller: [PCI] thanks."
    )
    assert final["summary"]["speakers"]["agent"]["words"] == 3
    first = final["segments"][0]
    assert abs(first["start_ms"] - 300) <= 60  # word times on the stream clock
    # the live transcript is as it was
    assert [s["text"] for s in live["segments"]] == [
        "my card is [PCI]",
        "sure go a head",
        "[PCI] thanks",
    ]
    status, body = transcripts["json"]
    assert status == 200 and json.loads(body)["version"] == "batch"
    assert [s["text"] for s in json.loads(body)["segments"]] == [
        s["text"] for s in final["segments"]
    ]
    assert transcripts["txt"][1] == (
        "caller: My card is [PCI]\nagent: Sure, go ahead.\ncaller: [PCI] thanks.\n"
    )
    assert "<v agent>Sure, go ahead.</v>" in transcripts["vtt"][1]
    assert "agent: Sure, go ahead." in transcripts["srt"][1]
    assert summary[0] == 200 and json.loads(summary[1])["version"] == "batch"
    assert call["postcall"]["status"] == "done" and call["postcall"]["segments"] == 3
    # only each track's speech was sent and billed: far less than both tracks in full
    billed = call["postcall"]["audio_seconds_billed"]
    assert 2.0 < billed < DURATION_MS / 1000
    assert final["audio_seconds_billed"] == billed
    # one request per track, with the seed's parameters
    assert len(batch.requests) == 2
    for request in batch.requests:
        assert request.field("model_id") == "scribe_v2"
        assert request.field("diarize") == "false" and request.field("num_speakers") == "1"
        assert request.fields["entity_detection"] == ["pci"]
        assert request.files["file"][1] == "audio/wav"
    # nothing kept afterwards: not the audio, not the transcripts at ElevenLabs
    assert kept_audio(tmp_path) == [] and batch.transcripts == {}
    for request in receiver.requests:
        assert "4111" not in request.body.decode()


async def _async(value: bool) -> bool:
    return value


async def test_transient_failures_are_retried_until_the_pass_succeeds(
    tmp_path: Path,
    scribe: ScribeEmulator,
    batch: ScribeBatchEmulator,
    receiver: WebhookReceiver,
) -> None:
    batch.inject(BatchFault.rate_limit("1"), BatchFault.server_error(503), BatchFault.disconnect())
    settings = postcall_settings(tmp_path, scribe, batch, receiver)
    async with running_bridge(settings) as bridge:
        call_sid = await play_call(bridge)
        await receiver.wait_for(
            1, timeout=15, predicate=lambda r: r.event_type == "call.transcript_final"
        )

        async def done() -> bool:
            found = await bridge.store.jobs.get(POSTCALL_JOB, call_sid)
            return found is not None and found.status is JobStatus.DONE

        await eventually(done)
        job = await bridge.store.jobs.get(POSTCALL_JOB, call_sid)
    assert [r.status for r in batch.requests][:3] == [429, 503, 0]
    assert len(batch.answered) == 2
    assert job is not None and job.status is JobStatus.DONE and job.attempts == 4
    # the 429's Retry-After (1 s) was waited for
    assert batch.requests[1].received_at - batch.requests[0].received_at >= 0.95


async def test_a_pass_that_keeps_failing_ends_failed_with_its_reason(
    tmp_path: Path,
    scribe: ScribeEmulator,
    batch: ScribeBatchEmulator,
    receiver: WebhookReceiver,
) -> None:
    batch.inject(*[BatchFault.server_error(500)] * 200)
    settings = postcall_settings(tmp_path, scribe, batch, receiver, retry_for_s=1.0)
    async with running_bridge(settings) as bridge:
        call_sid = await play_call(bridge)
        await receiver.wait_for(
            1, timeout=15, predicate=lambda r: r.event_type == "call.postcall_failed"
        )
        transcript = await api(bridge, "GET", f"/v1/calls/{call_sid}/transcript?version=batch")
        call = json.loads((await api(bridge, "GET", f"/v1/calls/{call_sid}"))[1])
        await eventually(lambda: _async(not kept_audio(tmp_path)))
    failed = event_of(receiver, "call.postcall_failed", call_sid)
    assert failed["error"].startswith("server_error: HTTP 500")
    # the same message whether given up at a retry or when claimed past the second
    assert "(gave up after " in failed["error"] and " attempts in 1 s)" in failed["error"]
    assert transcript[0] == 404 and json.loads(transcript[1])["error"]["code"] == "batch_failed"
    assert call["postcall"]["status"] == "failed" and "HTTP 500" in call["postcall"]["error"]
    assert len(batch.requests) > 2  # retried for the second it had


async def test_a_request_the_service_refuses_fails_at_once(
    tmp_path: Path, scribe: ScribeEmulator, receiver: WebhookReceiver
) -> None:
    async with ScribeBatchEmulator(api_key="another-key", script=SCRIPT) as strict:
        settings = postcall_settings(tmp_path, scribe, strict, receiver)
        async with running_bridge(settings) as bridge:
            call_sid = await play_call(bridge)
            await receiver.wait_for(1, predicate=lambda r: r.event_type == "call.postcall_failed")
        assert len(strict.requests) == 1
    assert event_of(receiver, "call.postcall_failed", call_sid)["error"].startswith(
        "auth: HTTP 401"
    )


async def test_delete_erases_the_audio_and_the_transcripts_at_elevenlabs(
    tmp_path: Path,
    scribe: ScribeEmulator,
    batch: ScribeBatchEmulator,
    receiver: WebhookReceiver,
) -> None:
    settings = postcall_settings(tmp_path, scribe, batch, receiver, keep_remote=True)
    async with running_bridge(settings) as bridge:
        done_sid = await play_call(bridge)
        await receiver.wait_for(1, predicate=lambda r: r.event_type == "call.transcript_final")
        assert len(batch.transcripts) == 2 and batch.deleted == []  # kept, as configured
        assert (await api(bridge, "DELETE", f"/v1/calls/{done_sid}"))[0] == 204
        assert len(batch.deleted) == 2 and batch.transcripts == {}
        # erased while its pass is waiting on a slow answer: audio gone at once, and the
        # transcript made after the erasure is deleted when the pass finds the call gone
        batch.inject(BatchFault.slow(0.5))
        pending_sid = await play_call(bridge)
        await eventually(lambda: _async(batch.in_flight == 1))
        assert kept_audio(tmp_path) != []
        assert (await api(bridge, "DELETE", f"/v1/calls/{pending_sid}"))[0] == 204
        assert kept_audio(tmp_path) == []
        # the slow answer came (a transcript was made) and was deleted right away
        await eventually(lambda: _async(len(batch.answered) == 3 and batch.transcripts == {}))
        assert len(batch.deleted) == 3
        assert (await api(bridge, "GET", f"/v1/calls/{pending_sid}"))[0] == 404
    assert not any(r.event_type == "call.transcript_final" and r.data["call_sid"] == pending_sid
                   for r in receiver.requests)  # fmt: skip


async def test_an_erasure_elevenlabs_cannot_confirm_keeps_the_call_until_it_can(
    tmp_path: Path,
    scribe: ScribeEmulator,
    batch: ScribeBatchEmulator,
    receiver: WebhookReceiver,
) -> None:
    settings = postcall_settings(tmp_path, scribe, batch, receiver, keep_remote=True)
    async with running_bridge(settings) as bridge:
        call_sid = await play_call(bridge)
        await receiver.wait_for(1, predicate=lambda r: r.event_type == "call.transcript_final")
        made = set(batch.transcripts)
        assert len(made) == 2
        await batch.stop()  # ElevenLabs cannot be reached
        status, body = await api(bridge, "DELETE", f"/v1/calls/{call_sid}")
        assert status == 503 and json.loads(body)["error"]["code"] == "erasure_incomplete"
        # nothing of the call was erased: it can be read, and erased again later
        batch_txt = f"/v1/calls/{call_sid}/transcript?version=batch&format=txt"
        assert (await api(bridge, "GET", batch_txt))[0] == 200
        await batch.start()  # same port, same transcripts
        assert (await api(bridge, "DELETE", f"/v1/calls/{call_sid}"))[0] == 204
        assert (await api(bridge, "GET", f"/v1/calls/{call_sid}"))[0] == 404
    assert set(batch.deleted) == made and batch.transcripts == {}


@pytest.mark.parametrize("concurrency", [1, 2])
async def test_at_most_the_configured_number_of_passes_run_at_once(
    tmp_path: Path,
    scribe: ScribeEmulator,
    batch: ScribeBatchEmulator,
    receiver: WebhookReceiver,
    concurrency: int,
) -> None:
    calls = 3
    # every answer takes a second, so passes that are allowed to overlap do
    batch.inject(*[BatchFault.slow(1.0)] * (2 * calls))
    settings = postcall_settings(tmp_path, scribe, batch, receiver, concurrency=concurrency)
    async with running_bridge(settings) as bridge:
        call_sids = await asyncio.gather(*(play_call(bridge) for _ in range(calls)))
        await receiver.wait_for(
            calls, timeout=30, predicate=lambda r: r.event_type == "call.transcript_final"
        )
    # a pass sends its tracks one after the other: requests at once = passes at once
    assert batch.max_in_flight == concurrency
    assert len(batch.answered) == 2 * calls
    for call_sid in call_sids:
        assert len(event_of(receiver, "call.transcript_final", call_sid)["segments"]) == 3


async def test_a_restart_resumes_the_pass_without_paying_twice(
    tmp_path: Path,
    scribe: ScribeEmulator,
    batch: ScribeBatchEmulator,
    receiver: WebhookReceiver,
) -> None:
    settings = postcall_settings(tmp_path, scribe, batch, receiver)
    # the first track is transcribed; the second hangs until the server stops
    batch.inject(None, BatchFault.slow(30.0))
    async with running_bridge(settings) as bridge:
        call_sid = await play_call(bridge)
        await eventually(lambda: _async(len(batch.answered) == 1 and batch.in_flight == 1))
    first_id = next(iter(batch.transcripts))
    async with running_bridge(settings) as again:
        await receiver.wait_for(
            1, timeout=15, predicate=lambda r: r.event_type == "call.transcript_final"
        )

        async def done() -> bool:
            found = await again.store.jobs.get(POSTCALL_JOB, call_sid)
            return found is not None and found.status is JobStatus.DONE

        await eventually(done)
    # one POST after the restart (the second track): the first was fetched by its id
    assert [r.status for r in batch.requests] == [200, 200]
    assert first_id in batch.deleted
    assert len(event_of(receiver, "call.transcript_final", call_sid)["segments"]) == 3


async def test_the_ai_summary_waits_for_the_pass_and_reads_its_transcript(
    tmp_path: Path,
    scribe: ScribeEmulator,
    batch: ScribeBatchEmulator,
    receiver: WebhookReceiver,
) -> None:
    async with LLMEmulator() as llm:
        settings = postcall_settings(tmp_path, scribe, batch, receiver)
        settings = settings.replace(
            summary=SummarySettings(
                llm_url=llm.url, llm_model=llm.model, llm_key=llm.api_key or "", llm_timeout_s=5.0
            )
        )
        async with running_bridge(settings) as bridge:
            call_sid = await play_call(bridge)
            await receiver.wait_for(1, predicate=lambda r: r.event_type == "call.summarized")
            assert bridge.app[JOBS].kinds == ("ai_summary", POSTCALL_JOB)
        (request,) = llm.chat_requests
    order = [r.event_type for r in receiver.requests if r.data.get("call_sid") == call_sid]
    assert order.index("call.transcript_final") < order.index("call.summarized")
    prompt = json.dumps(request.json)
    assert "Sure, go ahead." in prompt  # the batch model's words, not "sure go a head"
    assert "go a head" not in prompt and "4111" not in prompt and "[PCI]" in prompt
    ended = event_of(receiver, "call.ended", call_sid)
    assert ended["summary"]["ai"]["status"] == "pending"


async def test_the_event_stream_stays_open_until_the_batch_transcript(
    tmp_path: Path,
    scribe: ScribeEmulator,
    batch: ScribeBatchEmulator,
    receiver: WebhookReceiver,
) -> None:
    batch.inject(BatchFault.slow(1.0))
    settings = postcall_settings(tmp_path, scribe, batch, receiver)
    async with running_bridge(settings) as bridge:
        call_sid = await play_call(bridge)
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        types: list[str] = []
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{bridge.base_url}/v1/calls/{call_sid}/events", headers=headers) as response,
        ):
            async for line in response.content:
                if line.startswith(b"event: "):
                    types.append(line.decode().strip().removeprefix("event: "))
    assert types[-2:] == ["call.ended", "call.transcript_final"]
