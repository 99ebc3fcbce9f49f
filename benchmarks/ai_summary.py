"""AI summary cost benchmark: tokens, requests and time, against the bundled LLM emulator.

    .venv/bin/python benchmarks/ai_summary.py [--runs 5] [--llm-latency-ms 0]
        [--long-minutes 60] [--budget 8000] [--json FILE]

1. **Sample call, end to end.** The bundled sample call (37.6 s, nine turns) is played
   through the real bridge ``--runs`` times (Scribe emulator, LLM emulator, a local webhook
   receiver, SQLite). Per run: the ``ai.usage`` the bridge stored, and the time from the
   ``call.ended`` webhook arriving to the ``call.summarized`` webhook arriving. The
   emulator answers at once (plus ``--llm-latency-ms``), so that time is the bridge's own
   cost: the job claim, reading the call, the request, validation, storing, the webhook.
   The Scribe emulator reports ``[emulated: 2.6 s of speech]`` for each segment, so these
   tokens are those of that text.
2. **The sample call's words.** The script of the same call (what a real transcript holds)
   through the summarizer: the tokens a real transcript of it costs.
3. **A long call.** The script repeated to ``--long-minutes``, summarised in parts within
   ``--budget`` estimated tokens per request and combined.

Token counts are the emulator's (words and punctuation marks, about what a BPE tokenizer
gives for English; a real model counts its own) next to the bridge's estimate, which
decides the parts and errs high on purpose. Completion tokens are those of the emulator's
answer, close in size to a real model's summary.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from callbridge.ai_summary.job import speaker_roles
from callbridge.ai_summary.llm import ChatLLM, LLMOptions
from callbridge.ai_summary.prompt import (
    CallTranscript,
    Line,
    estimate_message_tokens,
    whole_call_messages,
)
from callbridge.ai_summary.summarizer import CallSummarizer
from callbridge.app import create_app
from callbridge.config import Settings, SpeakerSettings, SummarySettings
from callbridge.demo import _listening_socket, demo_settings
from callbridge.logs import configure_logging
from callbridge.simulate import Bridge, load_call_audio, play_call, sample_call_path
from callbridge.testing.llm_emulator import LLMEmulator
from callbridge.testing.scribe_emulator import ScribeEmulator
from callbridge.testing.twilio_simulator import new_call_sid
from callbridge.testing.webhook_receiver import ReceivedRequest, WebhookReceiver

ROLES = speaker_roles(SpeakerSettings())


def script_lines() -> list[Line]:
    script = json.loads(sample_call_path().with_name("sample_call.json").read_text())
    turns = sorted(script["turns"], key=lambda turn: turn["start_ms"])
    return [Line(turn["speaker"], turn["text"]) for turn in turns]


async def sample_call_end_to_end(runs: int, latency_s: float) -> dict[str, Any]:
    tracks = load_call_audio(sample_call_path())
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    async with (
        ScribeEmulator(api_key="bench", transcriber="duration") as scribe,
        LLMEmulator(latency_s=latency_s) as llm,
        WebhookReceiver(secret=secret) as receiver,
    ):
        with tempfile.TemporaryDirectory() as workdir:
            sock = _listening_socket()
            settings = demo_settings(
                Settings(),
                port=sock.getsockname()[1],
                scribe_url=scribe.url,
                scribe_key="bench",
                webhook_url=receiver.url,
                webhook_secret=secret,
                twilio_token="bench-twilio",
                api_token="bench-api",
                database_path=Path(workdir) / "bench.db",
                speed=0,
                log_level="warning",
                summary=SummarySettings(
                    llm_url=llm.url, llm_model=llm.model, llm_key=llm.api_key or ""
                ),
            )
            runner = web.AppRunner(create_app(settings), access_log=None, handle_signals=False)
            await runner.setup()
            await web.SockSite(runner, sock).start()
            bridge = Bridge(settings.server.public_url, settings.server.public_url, "bench-twilio")
            samples = []
            try:
                async with aiohttp.ClientSession() as session:
                    for _ in range(runs):
                        call_sid = new_call_sid()
                        await play_call(session, bridge, tracks, call_sid=call_sid, speed=0)

                        def event(kind: str, sid: str = call_sid) -> Any:
                            def match(r: ReceivedRequest) -> bool:
                                return r.event_type == kind and r.data.get("call_sid") == sid

                            return match

                        [ended] = await receiver.wait_for(1, 60, event("call.ended"))
                        [done] = await receiver.wait_for(1, 60, event("call.summarized"))
                        ai = done.data["ai"]
                        assert ai["status"] == "ready", ai
                        samples.append(
                            {
                                "ms": (done.received_monotonic - ended.received_monotonic) * 1000,
                                "usage": ai["usage"],
                                "segments": ended.data["segments"],
                            }
                        )
            finally:
                await runner.cleanup()
    times = [s["ms"] for s in samples]
    return {
        "runs": runs,
        "llm_latency_ms": latency_s * 1000,
        "usage": samples[-1]["usage"],
        "segments": samples[-1]["segments"],
        "ended_to_summarized_ms": {
            "median": round(statistics.median(times), 1),
            "max": round(max(times), 1),
            "all": [round(t, 1) for t in times],
        },
    }


async def summarise(lines: list[Line], duration_ms: int, budget: int, runs: int) -> dict[str, Any]:
    transcript = CallTranscript(tuple(lines), duration_ms, "en", ROLES)
    async with LLMEmulator() as llm:
        chat = ChatLLM(LLMOptions(base_url=llm.url, model=llm.model, api_key=llm.api_key or ""))
        summarizer = CallSummarizer(chat, input_budget_tokens=budget)
        times, written = [], None
        for _ in range(runs):
            started = time.perf_counter()
            written = await summarizer.summarize(transcript)
            times.append((time.perf_counter() - started) * 1000)
        await chat.aclose()
    assert written is not None
    estimate = sum(
        estimate_message_tokens(r.json["messages"])
        for r in llm.chat_requests[: written.usage.requests]
    )
    return {
        "lines": len(lines),
        "words": sum(len(line.text.split()) for line in lines),
        "budget_tokens": budget,
        "whole_call_estimate_tokens": estimate_message_tokens(whole_call_messages(transcript)),
        "parts": written.parts,
        "usage": written.usage.to_json(),
        "estimated_prompt_tokens": estimate,
        "ms": {"median": round(statistics.median(times), 1), "max": round(max(times), 1)},
    }


def print_report(report: dict[str, Any]) -> None:
    e2e = report["sample_call_end_to_end"]
    usage = e2e["usage"]
    took = e2e["ended_to_summarized_ms"]
    print(
        f"Sample call through the bridge ({e2e['runs']} runs, {e2e['segments']} segments, "
        f"LLM emulator latency {e2e['llm_latency_ms']:.0f} ms):"
    )
    print(
        f"  {usage['requests']} request, {usage['prompt_tokens']} prompt + "
        f"{usage['completion_tokens']} completion tokens"
    )
    print(f"  call.ended → call.summarized: median {took['median']} ms, max {took['max']} ms")
    for key, title in (
        ("sample_call_words", "The sample call's words"),
        ("long_call", "Long call"),
    ):
        part = report[key]
        usage = part["usage"]
        print(
            f"{title} ({part['lines']} lines, {part['words']} words, budget "
            f"{part['budget_tokens']}; whole call estimated at "
            f"{part['whole_call_estimate_tokens']} tokens):"
        )
        print(
            f"  {part['parts']} part(s), {usage['requests']} request(s), "
            f"{usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion tokens "
            f"(bridge's estimate of the prompts: {part['estimated_prompt_tokens']})"
        )
        print(f"  summarizer time: median {part['ms']['median']} ms, max {part['ms']['max']} ms")


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    lines = script_lines()
    repeats = max(1, round(args.long_minutes * 60 / 37.6))
    long_lines = [
        Line(line.speaker, f"{line.text} (minute {round(i * 37.6 / 60)})")
        for i in range(repeats)
        for line in lines
    ]
    return {
        "sample_call_end_to_end": await sample_call_end_to_end(
            args.runs, args.llm_latency_ms / 1000
        ),
        "sample_call_words": await summarise(lines, 37_600, args.budget, args.runs),
        "long_call": await summarise(
            long_lines, round(args.long_minutes * 60_000), args.budget, max(1, args.runs // 2)
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--llm-latency-ms", type=float, default=0.0)
    parser.add_argument("--long-minutes", type=float, default=60.0)
    parser.add_argument("--budget", type=int, default=8000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    configure_logging("console", "warning")
    report = asyncio.run(main_async(args))
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
