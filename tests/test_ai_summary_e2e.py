"""The AI summary end to end: real bridge, Twilio simulator, Scribe emulator, LLM emulator
and webhook receiver. A call's end enqueues its summary; the summary is written in the
background, stored, served and announced (``call.summarized``); LLM failures are retried
or fail clearly without touching anything else; a restart resumes it."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from callbridge.ai_summary.schema import validate_content
from callbridge.config import JobSettings, Settings, SummarySettings
from callbridge.jobs import JobStatus
from callbridge.testing.llm_emulator import LLMEmulator, LLMFault
from callbridge.testing.scribe_emulator import ScribeEmulator
from callbridge.testing.speech import build_track, pcm16_to_ulaw, synth_utterance
from callbridge.testing.webhook_receiver import ReceivedRequest, WebhookReceiver
from tests.bridge_harness import (
    API_TOKEN,
    RunningBridge,
    bridge_settings,
    free_port,
    running_bridge,
)
from tests.metrics_scrape import scrape
from tests.sse import SseReader

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
DURATION_MS = 6000


def call_audio() -> tuple[bytes, bytes]:
    """The caller speaks twice, the agent once in between (tone words the emulator names)."""
    caller = build_track(
        DURATION_MS,
        [(300, synth_utterance([400, 450, 500])), (3800, synth_utterance([550, 600]))],
        noise_dbfs=-60.0,
        seed=1,
    )
    agent = build_track(
        DURATION_MS, [(1800, synth_utterance([1200, 1250, 1300]))], noise_dbfs=-60.0, seed=2
    )
    return pcm16_to_ulaw(caller), pcm16_to_ulaw(agent)


def ai_settings(
    tmp_path: Path,
    scribe_url: str,
    llm: LLMEmulator | None,
    receiver: WebhookReceiver,
    **summary: Any,
) -> Settings:
    settings = bridge_settings(tmp_path, scribe_url, free_port(), webhook_urls=(receiver.url,))
    options: dict[str, Any] = {
        "llm_url": llm.url if llm else f"http://127.0.0.1:{free_port()}/v1",
        "llm_model": llm.model if llm else "callbridge-emulated-llm",
        "llm_key": (llm.api_key or "") if llm else "",
        "llm_timeout_s": 5.0,
        "backoff_initial_s": 0.1,
        "backoff_max_s": 0.5,
        "retry_for_s": 30.0,
    }
    options.update(summary)
    return settings.replace(
        summary=SummarySettings(**options),
        jobs=JobSettings(poll_interval_s=0.05, shutdown_grace_s=0.2),
    )


@pytest.fixture
async def scribe() -> AsyncIterator[ScribeEmulator]:
    async with ScribeEmulator(api_key="test-key", transcriber="tones") as emulator:
        yield emulator


@pytest.fixture
async def llm() -> AsyncIterator[LLMEmulator]:
    async with LLMEmulator() as emulator:
        yield emulator


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as hooks:
        yield hooks


async def play_call(bridge: RunningBridge) -> str:
    caller, agent = call_audio()
    sim = bridge.simulator()
    await sim.run(inbound=caller, outbound=agent, speed=0)
    return sim.call_sid


def of_type(event_type: str, call_sid: str) -> Any:
    def match(request: ReceivedRequest) -> bool:
        return request.event_type == event_type and request.data.get("call_sid") == call_sid

    return match


async def summarized(receiver: WebhookReceiver, call_sid: str, timeout: float = 20.0) -> Any:  # noqa: ASYNC109
    found = await receiver.wait_for(1, timeout, of_type("call.summarized", call_sid))
    return found[0].data["ai"]


async def get_summary(bridge: RunningBridge, call_sid: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{bridge.base_url}/v1/calls/{call_sid}/summary", headers=AUTH) as resp,
    ):
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def test_a_call_gets_its_ai_summary_after_call_ended(
    tmp_path: Path, scribe: ScribeEmulator, llm: LLMEmulator, receiver: WebhookReceiver
) -> None:
    settings = ai_settings(tmp_path, scribe.url, llm, receiver)
    async with running_bridge(settings) as bridge:
        call_sid = await play_call(bridge)
        ai = await summarized(receiver, call_sid)
        summary = await get_summary(bridge, call_sid)
        segments = [s for s in await bridge.store.get_segments(call_sid) if s.text]

    ended = (await receiver.wait_for(1, 5, of_type("call.ended", call_sid)))[0]
    assert ended.data["summary"]["ai"]["status"] == "pending"  # the summary is on its way
    order = [r.event_type for r in receiver.requests if r.data.get("call_sid") == call_sid]
    assert order.index("call.ended") < order.index("call.summarized")

    assert ai["status"] == "ready" and ai["model"] == llm.model
    assert ai["gist"].startswith("[emulated]") and ai["parts"] == 1
    validate_content(
        {k: ai[k] for k in ("gist", "reason", "outcome", "action_items", "sentiment")},
        ("caller", "agent"),
    )
    assert ai["usage"]["requests"] == 1 and ai["usage"]["prompt_tokens"] > 0
    assert summary["ai"] == ai
    # the analytics summary is what call.ended carried, untouched
    analytics = {k: v for k, v in summary.items() if k != "ai"}
    assert analytics == {k: v for k, v in ended.data["summary"].items() if k != "ai"}

    # what left the bridge: the speaker-labelled stored transcript, nothing else of the call
    [request] = llm.chat_requests
    user = request.json["messages"][1]["content"]
    transcript = user.split("Transcript:\n", 1)[1]
    assert transcript == "\n".join(f"{s.speaker}: {s.text}" for s in segments)
    assert len(segments) == 3 and transcript.startswith("caller: tone400")
    assert call_sid not in request.body.decode() and "+1555" not in request.body.decode()
    assert request.headers["authorization"] == f"Bearer {llm.api_key}"


async def test_429_5xx_timeouts_and_dropped_connections_are_retried(
    tmp_path: Path, scribe: ScribeEmulator, llm: LLMEmulator, receiver: WebhookReceiver
) -> None:
    llm.inject(
        LLMFault.rate_limit(retry_after="1"),
        LLMFault.server_error(502),
        LLMFault.slow(3.0),
        LLMFault.disconnect(),
        LLMFault.invalid_json(),
    )
    settings = ai_settings(tmp_path, scribe.url, llm, receiver, llm_timeout_s=0.5)
    async with running_bridge(settings) as bridge, aiohttp.ClientSession() as http:
        call_sid = await play_call(bridge)
        ai = await summarized(receiver, call_sid)
        job = await bridge.store.jobs.get("ai_summary", call_sid)
        metrics = await scrape(http, bridge.base_url)
    assert ai["status"] == "ready"
    requests = llm.chat_requests
    faults = ["rate_limit", "server_error", "slow", "disconnect", "invalid_json", None]
    assert [r.fault for r in requests] == faults
    assert requests[1].received_at - requests[0].received_at >= 1.0  # Retry-After: 1
    assert requests[3].received_at - requests[2].received_at < 2.5  # the timeout, not 3 s
    assert job is not None and job.status is JobStatus.DONE and job.attempts == 5
    assert ai["usage"]["requests"] == 2  # the invalid answer and its retry, in one attempt
    # every request and its outcome is counted
    requests_by = {
        dict(labels)["result"]: value
        for labels, value in metrics.matching("callbridge_llm_requests_total").items()
    }
    assert requests_by == {
        "rate_limited": 1,
        "server_error": 1,
        "timeout": 1,
        "connection": 1,
        "ok": 2,
    }
    assert metrics.value("callbridge_llm_invalid_answers_total") == 1
    assert metrics.value("callbridge_llm_request_seconds_count") == 6
    outcome = ai["outcome"]["status"]
    summaries = {"status": "ready", "result": outcome}
    assert metrics.value("callbridge_ai_summaries_total", summaries) == 1
    assert metrics.value("callbridge_ai_summary_latency_seconds_count") == 1
    tokens = {"kind": "prompt"}
    assert metrics.value("callbridge_llm_tokens_total", tokens) == ai["usage"]["prompt_tokens"]


async def test_an_llm_that_stays_down_fails_the_summary_and_nothing_else(
    tmp_path: Path, scribe: ScribeEmulator, llm: LLMEmulator, receiver: WebhookReceiver
) -> None:
    llm.default_fault = LLMFault.server_error(503)
    settings = ai_settings(tmp_path, scribe.url, llm, receiver, retry_for_s=1.5)
    async with running_bridge(settings) as bridge:
        call_sid = await play_call(bridge)
        ai = await summarized(receiver, call_sid)
        summary = await get_summary(bridge, call_sid)
        segments = await bridge.store.get_segments(call_sid)
    assert ai["status"] == "failed" and ai["error"]["code"] == "llm_unavailable"
    assert "503" in ai["error"]["message"] and "gave up" in ai["error"]["message"]
    assert len(llm.chat_requests) >= 2  # retried before giving up
    assert summary["ai"] == ai
    assert summary["transcript"].startswith("caller: tone400")  # analytics intact
    assert len([s for s in segments if s.text]) == 3  # transcript intact
    assert len(receiver.delivered()) == len(receiver.requests)  # every webhook went out


@pytest.mark.parametrize(
    ("faults", "key", "code", "requests"),
    [
        ([LLMFault.invalid_json(), LLMFault.truncated()], None, "invalid_output", 2),
        ([], "sk-wrong", "llm_rejected", 1),
    ],
)
async def test_final_failures_fail_at_once(
    tmp_path: Path,
    scribe: ScribeEmulator,
    llm: LLMEmulator,
    receiver: WebhookReceiver,
    faults: list[LLMFault],
    key: str | None,
    code: str,
    requests: int,
) -> None:
    llm.inject(*faults)
    settings = ai_settings(tmp_path, scribe.url, llm, receiver)
    if key is not None:
        settings = settings.replace(summary=dataclasses.replace(settings.summary, llm_key=key))
    async with running_bridge(settings) as bridge, aiohttp.ClientSession() as http:
        call_sid = await play_call(bridge)
        ai = await summarized(receiver, call_sid)
        await asyncio.sleep(0.3)  # no retry follows
        job = await bridge.store.jobs.get("ai_summary", call_sid)
        metrics = await scrape(http, bridge.base_url)
    assert ai["status"] == "failed" and ai["error"]["code"] == code
    failed = {"status": "failed", "result": code}
    assert metrics.value("callbridge_ai_summaries_total", failed) == 1
    assert len(llm.chat_requests) == requests
    assert job is not None and job.status is JobStatus.FAILED
    summaries = receiver.requests
    assert len([r for r in summaries if r.event_type == "call.summarized"]) == 1
    if key is not None:
        assert "sk-wrong" not in ai["error"]["message"]


async def test_a_restart_resumes_a_pending_summary(
    tmp_path: Path, scribe: ScribeEmulator, receiver: WebhookReceiver
) -> None:
    port = free_port()
    down = ai_settings(tmp_path, scribe.url, None, receiver)
    down = down.replace(
        summary=dataclasses.replace(
            down.summary, llm_url=f"http://127.0.0.1:{port}/v1", llm_key="sk-emulated-test-key"
        )
    )
    async with running_bridge(down) as bridge:
        call_sid = await play_call(bridge)
        await receiver.wait_for(1, 10, of_type("call.ended", call_sid))
        await asyncio.sleep(0.5)  # a few refused connections, retried
        job = await bridge.store.jobs.get("ai_summary", call_sid)
        assert job is not None and job.status is not JobStatus.DONE and job.attempts >= 1
        assert (await get_summary(bridge, call_sid))["ai"]["status"] == "pending"
    # the bridge is down; the LLM comes up where it was configured; a new process resumes
    async with LLMEmulator(port=port) as llm, running_bridge(down) as again:
        ai = await summarized(receiver, call_sid)
        assert (await get_summary(again, call_sid))["ai"] == ai
    assert ai["status"] == "ready" and len(llm.chat_requests) == 1


async def test_summaries_run_with_bounded_concurrency_and_delay_no_webhook(
    tmp_path: Path, scribe: ScribeEmulator, receiver: WebhookReceiver
) -> None:
    async with LLMEmulator(latency_s=1.0) as llm:
        settings = ai_settings(tmp_path, scribe.url, llm, receiver, concurrency=1)
        async with running_bridge(settings) as bridge:
            started = time.monotonic()
            calls = await asyncio.gather(*(play_call(bridge) for _ in range(3)))
            ended_at = time.monotonic()
            for call_sid in calls:
                await receiver.wait_for(1, 10, of_type("call.ended", call_sid))
            ended_delivered = time.monotonic()
            for call_sid in calls:
                await summarized(receiver, call_sid, timeout=30)
    assert llm.max_in_flight == 1 and len(llm.chat_requests) == 3
    # every call.ended went out while the first summary was still being written
    assert ended_delivered - ended_at < 1.0, (ended_delivered - ended_at, ended_at - started)
    first_summary = min(
        r.received_monotonic for r in receiver.requests if r.event_type == "call.summarized"
    )
    last_ended = max(
        r.received_monotonic for r in receiver.requests if r.event_type == "call.ended"
    )
    assert last_ended < first_summary


async def test_the_event_stream_stays_open_for_the_summary_then_ends(
    tmp_path: Path, scribe: ScribeEmulator, receiver: WebhookReceiver
) -> None:
    async with LLMEmulator(latency_s=1.0) as llm:
        settings = ai_settings(tmp_path, scribe.url, llm, receiver)
        async with running_bridge(settings) as bridge, aiohttp.ClientSession() as session:
            call_sid = await play_call(bridge)
            await receiver.wait_for(1, 10, of_type("call.ended", call_sid))
            url = f"{bridge.base_url}/v1/calls/{call_sid}/events"
            async with session.get(url, headers=AUTH) as response:
                assert response.status == 200
                messages = await asyncio.wait_for(SseReader(response).collect(), 20)
            async with session.get(
                url, headers={**AUTH, "Last-Event-ID": messages[-1].id or ""}
            ) as again:
                assert again.status == 204  # nothing more will come
    types = [m.event for m in messages]
    assert types[-2:] == ["call.ended", "call.summarized"]
    hooks = {r.webhook_id: r.body.decode() for r in receiver.requests}
    assert all(hooks[m.id] == m.data for m in messages if m.id)  # the webhook bodies
