"""``callbridge demo``: the whole product on one machine, in one command, in a few seconds.

It starts the real bridge in-process on a free local port (temporary SQLite database,
random Twilio and API tokens), a local webhook receiver that verifies the Standard
Webhooks signatures, and, without ``ELEVENLABS_API_KEY``, the bundled Scribe emulator.
Then it plays the bundled two-speaker sample call through the real code path as a Twilio
call, prints every ``transcript.committed`` event as the receiver gets it, the post-call
summary from the ``call.ended`` event, the batch transcript from ``call.transcript_final``
(the post-call pass: with ``CALLBRIDGE_POSTCALL=batch`` against ElevenLabs, or, without a
key, against the bundled batch emulator, which returns the call's script and is marked as
emulated), and the AI summary from ``call.summarized``: written by the LLM at
``CALLBRIDGE_SUMMARY_LLM_URL`` when it is set, else by the bundled LLM emulator (every text
marked ``[emulated]``). Then the same call on a bad line
(``noisy_call.wav``: babble, street noise, 12 s of hold music with the caller talking over
it, key presses, a cough, a click before hang-up), with a report of how the background was
handled, checked against the call's ground truth.

It also prints the address of the live page (``/live``) and the demo's API token, so the
calls can be watched in a browser as they are transcribed; the page stays up for a while
after the last call (``--linger``, 60 s when run from a terminal) or until Ctrl-C
(``--keep``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import json
import secrets
import signal
import socket
import sys
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from callbridge.app import create_app
from callbridge.config import (
    ApiSettings,
    DatabaseSettings,
    LoggingSettings,
    PostcallSettings,
    Settings,
    SummarySettings,
    TwilioSettings,
    WebhookSettings,
    load_settings,
)
from callbridge.http_limits import runner_options
from callbridge.live_page import LIVE_PATH
from callbridge.logs import configure_logging
from callbridge.simulate import (
    Bridge,
    Console,
    SimulateError,
    load_call_audio,
    play_call,
    progress_text,
    sample_call_path,
    segment_line,
    speed_text,
    summary_lines,
)
from callbridge.testing.llm_emulator import EMULATED_MODEL, LLMEmulator
from callbridge.testing.scribe_batch_emulator import ScribeBatchEmulator
from callbridge.testing.scribe_emulator import ScribeEmulator
from callbridge.testing.twilio_simulator import new_call_sid
from callbridge.testing.webhook_receiver import ReceivedRequest, Reply, WebhookReceiver

EMULATOR_SPEED = 4.0
EMULATOR_NOTICE = (
    "callbridge demo: no ELEVENLABS_API_KEY, using the bundled Scribe emulator "
    "(text shows what it heard, e.g. [emulated: 1.8 s of speech])"
)
LLM_EMULATOR_NOTICE = (
    "callbridge demo: no CALLBRIDGE_SUMMARY_LLM_URL, the AI summary comes from the bundled "
    "LLM emulator (every text marked [emulated])"
)
BATCH_EMULATOR_NOTICE = (
    "callbridge demo: the post-call batch pass uses the bundled Scribe batch emulator "
    "(EMULATED: it returns the sample call's script as the 'batch' transcript)"
)
CALL_END_WAIT_S = 60.0
BATCH_WAIT_S = 300.0  # a real batch pass of a long call, retried through a few failures
AI_SUMMARY_WAIT_S = 300.0  # a real LLM retried through a few failures
DEFAULT_LINGER_S = 60.0
NOISY_CALL = "noisy_call.wav"
AS_FAST_AS_POSSIBLE = 100.0  # what --speed 0 amounts to, for the turn settings


def demo_settings(
    base: Settings,
    *,
    port: int,
    scribe_url: str | None,
    scribe_key: str | None,
    webhook_url: str,
    webhook_secret: str,
    twilio_token: str,
    api_token: str,
    database_path: Path,
    speed: float,
    log_level: str,
    summary: SummarySettings | None = None,
    batch_url: str | None = None,
) -> Settings:
    """``base`` (the user's config) pointed at the local pieces of the demo (``batch_url``:
    the batch emulator, which turns the batch pass on)."""
    scribe = base.scribe
    if scribe_url is not None and scribe_key is not None:
        scribe = dataclasses.replace(scribe, url=scribe_url, api_key=scribe_key)
    postcall = base.postcall
    if batch_url is not None:
        scribe = dataclasses.replace(scribe, batch_url=batch_url)
        postcall = PostcallSettings(mode="batch", backoff_initial_s=0.2, backoff_max_s=2.0)
    if postcall.enabled:
        postcall = dataclasses.replace(postcall, audio_dir=str(database_path.parent / "audio"))
    turns = base.turns
    factor = speed if speed > 0 else AS_FAST_AS_POSSIBLE
    if factor > 1.0:
        # The simulator plays the call `factor` times faster than real time, so the stream
        # clock runs `factor` times faster than the wall clock. The two wall-clock limits of
        # the Scribe stream scale with it: the catch-up limit (how much faster than real
        # time held-back audio may be sent) grows `factor` times, and the minimum spacing
        # of commits shrinks `factor` times, else the transcripts lag behind the call. Only
        # with the emulator: the real service throttles commits closer than about 1 s, so
        # against it the commit spacing stays as configured.
        turns = dataclasses.replace(
            turns,
            catchup_speed=turns.catchup_speed * factor,
            min_commit_interval_ms=(
                turns.min_commit_interval_ms
                if scribe_url is None
                else max(10, round(turns.min_commit_interval_ms / factor))
            ),
        )
    public_url = f"http://127.0.0.1:{port}"
    return base.replace(
        server=dataclasses.replace(
            base.server, host="127.0.0.1", port=port, public_url=public_url, workers=1
        ),
        twilio=TwilioSettings(auth_token=twilio_token),
        scribe=scribe,
        turns=turns,
        webhook=WebhookSettings(urls=(webhook_url,), secret=webhook_secret, backoff_initial_s=0.2),
        api=ApiSettings(tokens=(api_token,)),
        summary=summary or base.summary,
        postcall=postcall,
        jobs=dataclasses.replace(base.jobs, poll_interval_s=0.1),
        database=DatabaseSettings(
            url=f"sqlite:///{database_path}", journal_dir=str(database_path.parent / "journal")
        ),
        logging=LoggingSettings(format=base.logging.format, level=log_level),
    )


class EventPrinter:
    """The webhook receiver's responder: prints each event once, as it arrives."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.seen: set[str] = set()
        self._expected: dict[tuple[str, str], asyncio.Future[dict[str, Any]]] = {}
        self.arrived: dict[tuple[str, str], float] = {}  # (call, event type) → first arrival
        self.segments: dict[str, list[dict[str, Any]]] = {}  # call → its segments, in order
        self.bad_signatures = 0

    def expect(self, call_sid: str, event_type: str) -> asyncio.Future[dict[str, Any]]:
        """The ``data`` of the call's first event of this type, once it arrives."""
        key = (call_sid, event_type)
        if key not in self._expected:
            self._expected[key] = asyncio.get_running_loop().create_future()
        return self._expected[key]

    def __call__(self, request: ReceivedRequest) -> Reply:
        if request.signature_valid is False:
            self.bad_signatures += 1
            self.console.note("callbridge demo: a webhook with an INVALID signature was refused")
            return Reply(401)
        webhook_id = request.webhook_id or ""
        if webhook_id in self.seen:  # at-least-once delivery: a retry of one already shown
            return Reply(200)
        self.seen.add(webhook_id)
        data = request.data
        key = (str(data.get("call_sid", "")), request.event_type or "")
        self.arrived.setdefault(key, request.received_monotonic)
        if request.event_type == "transcript.committed":
            self.console.line(segment_line(data))
            self.segments.setdefault(key[0], []).append(data)
        waiting = self.expect(*key)
        if not waiting.done():
            waiting.set_result(data)
        return Reply(200)


async def webhook_within(
    arrival: asyncio.Future[dict[str, Any]], event_type: str, wait_s: float
) -> dict[str, Any]:
    """The event's ``data`` once it arrives, or a :class:`SimulateError` after ``wait_s``."""
    try:
        async with asyncio.timeout(wait_s):
            return await arrival
    except TimeoutError:
        raise SimulateError(
            f"no {event_type} webhook within {wait_s:.0f} s of the call's end "
            "(run with --verbose to see the bridge's log)"
        ) from None


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def run_demo(args: argparse.Namespace, console: Console) -> int:
    base = load_settings(args.config)
    real_key = base.scribe.api_key.strip()
    speed = args.speed if args.speed is not None else (1.0 if real_key else EMULATOR_SPEED)
    if real_key:
        console.line(
            f"callbridge demo: ELEVENLABS_API_KEY is set, using ElevenLabs Scribe at "
            f"{base.scribe.url}"
        )
    else:
        console.line(EMULATOR_NOTICE)
    if base.summary.enabled:
        console.line(
            f"callbridge demo: the AI summary comes from {base.summary.llm_model} at "
            f"{base.summary.llm_url}"
        )
    else:
        console.line(LLM_EMULATOR_NOTICE)
    emulated_batch = not real_key
    if emulated_batch:
        console.line(BATCH_EMULATOR_NOTICE)
    elif base.postcall.enabled:
        console.line(
            f"callbridge demo: the batch pass uses Scribe batch at {base.scribe.batch_url}"
        )
    configure_logging(base.logging.format, "info" if args.verbose else "warning")
    calls = demo_calls(args)
    twilio_token = secrets.token_hex(16)
    api_token = secrets.token_urlsafe(24)
    webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode("ascii")
    printer = EventPrinter(console)

    async with AsyncExitStack() as stack:
        scribe_url = scribe_key = None
        if not real_key:
            scribe_key = secrets.token_hex(8)
            emulator = ScribeEmulator(api_key=scribe_key, transcriber="duration")
            await stack.enter_async_context(emulator)
            scribe_url = emulator.url
        summary_settings = None
        if not base.summary.enabled:
            llm_key = "sk-demo-" + secrets.token_hex(12)
            llm = await stack.enter_async_context(LLMEmulator(api_key=llm_key))
            summary_settings = SummarySettings(
                llm_url=llm.url, llm_model=EMULATED_MODEL, llm_key=llm_key
            )
        batch: ScribeBatchEmulator | None = None
        if emulated_batch:
            batch = await stack.enter_async_context(
                ScribeBatchEmulator(api_key=scribe_key, transcriber="duration")
            )
        receiver = WebhookReceiver(secret=webhook_secret)
        receiver.set_responder(printer)
        await stack.enter_async_context(receiver)
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="callbridge-")))
        sock = _listening_socket()
        port = sock.getsockname()[1]
        settings = demo_settings(
            base,
            port=port,
            scribe_url=scribe_url,
            scribe_key=scribe_key,
            webhook_url=receiver.url,
            webhook_secret=webhook_secret,
            twilio_token=twilio_token,
            api_token=api_token,
            database_path=workdir / "demo.db",
            speed=speed,
            log_level="info" if args.verbose else "warning",
            summary=summary_settings,
            batch_url=batch.url if batch is not None else None,
        )
        runner = web.AppRunner(
            create_app(settings),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=5.0,
            **runner_options(settings),
        )
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        await web.SockSite(runner, sock).start()
        bridge = Bridge(
            url=settings.server.public_url,
            public_url=settings.server.public_url,
            auth_token=twilio_token,
        )
        for number, (source, path, truth) in enumerate(calls, start=1):
            tracks = load_call_audio(path)
            total_s = max(len(audio) for audio in tracks.values()) / 8000
            if number > 1:
                console.line("")
                console.line("-" * 78)
            console.line(
                f"callbridge demo: bridge on {bridge.url}, webhooks to {receiver.url}; "
                f"playing {source} ({total_s:.1f} s, caller and agent) at {speed_text(speed)}"
            )
            console.line(
                f"callbridge demo: watch it live at {bridge.url}{LIVE_PATH} "
                f"(paste the API token {api_token})"
            )
            console.line("")
            call_sid = new_call_sid()
            ended_arrival = printer.expect(call_sid, "call.ended")
            summarized_arrival = printer.expect(call_sid, "call.summarized")
            batch_arrivals = [
                printer.expect(call_sid, kind)
                for kind in ("call.transcript_final", POSTCALL_FAILED)
            ]
            if batch is not None:
                # what the emulated batch model "hears": the call's script, per track
                batch.lines.update(script_lines(path, call_sid))
            async with aiohttp.ClientSession() as session:
                await play_call(
                    session,
                    bridge,
                    tracks,
                    call_sid=call_sid,
                    speed=speed,
                    on_progress=lambda sent, total: console.progress(progress_text(sent, total)),
                )
            console.progress("")
            ended = await webhook_within(ended_arrival, "call.ended", CALL_END_WAIT_S)
            summary = ended.get("summary") or {}
            console.line("")
            for line in summary_lines(summary):
                console.line(line)
            if truth is not None:
                console.line("")
                for line in bad_line_report(truth, printer.segments.get(call_sid, []), ended):
                    console.line(line)
            if settings.postcall.enabled:
                console.progress("Batch pass: waiting for Scribe batch…")
                kind, final = await first_of(batch_arrivals, BATCH_WAIT_S)
                console.progress("")
                console.line("")
                waited_s = (
                    printer.arrived[(call_sid, kind)] - printer.arrived[(call_sid, "call.ended")]
                )
                for line in batch_lines(kind, final, waited_s, emulated_batch):
                    console.line(line)
            console.progress("AI summary: waiting for the LLM…")
            summarized = await webhook_within(
                summarized_arrival, "call.summarized", AI_SUMMARY_WAIT_S
            )
            console.progress("")
            console.line("")
            waited_s = (
                printer.arrived[(call_sid, "call.summarized")]
                - printer.arrived[(call_sid, "call.ended")]
            )
            for line in ai_summary_lines(summarized.get("ai") or {}, waited_s):
                console.line(line)
            if summary.get("reason") == "error" or summary.get("degraded"):
                raise SimulateError(
                    "the call was not fully transcribed "
                    f"({summary.get('degraded') or 'ended by ' + str(summary.get('reason'))}); "
                    "check ELEVENLABS_API_KEY and the network, and run with --verbose"
                )
        signed = "all signatures valid" if not printer.bad_signatures else "SIGNATURE ERRORS"
        console.line("")
        console.line(
            f"callbridge demo: {len(printer.seen)} webhook events received ({signed}) for "
            f"{len(calls)} call(s). Next: `callbridge serve` for real calls (see the README)."
        )
        await keep_serving(console, f"{bridge.url}{LIVE_PATH}", args.keep, linger_s(args))
    return 0 if not printer.bad_signatures else 1


DemoCall = tuple[str, Path, dict[str, Any] | None]


def demo_calls(args: argparse.Namespace) -> list[DemoCall]:
    """(what to call it, WAV, ground truth for the bad-line report) of each call to play."""
    if args.wav:
        return [(Path(args.wav).name, Path(args.wav), None)]
    sample = sample_call_path()
    noisy = sample.with_name(NOISY_CALL)
    chosen: list[DemoCall] = []
    if args.call in ("sample", "both"):
        chosen.append(("the bundled sample call", sample, None))
    if args.call in ("noisy", "both"):
        truth = json.loads(noisy.with_suffix(".json").read_text(encoding="utf-8"))
        chosen.append(("the sample call on a bad line (noisy_call.wav)", noisy, truth))
    return chosen


def bad_line_report(
    truth: dict[str, Any], segments: list[dict[str, Any]], ended: dict[str, Any]
) -> list[str]:
    """What the bridge made of the noisy call's background, against its ground truth."""
    hold = truth["hold_music"]
    in_hold = [
        s for s in segments if hold["start_ms"] <= int(s.get("start_ms", 0)) < hold["end_ms"]
    ]
    agent_in_hold = [s for s in in_hold if s.get("track") == "outbound"]
    answer = next(t for t in truth["turns"] if hold["start_ms"] <= t["start_ms"] < hold["end_ms"])
    answered = [
        s
        for s in in_hold
        if s.get("track") == "inbound"
        and int(s.get("start_ms", 0)) <= answer["end_ms"]
        and int(s.get("end_ms", 0)) >= answer["start_ms"]
    ]
    summary = ended.get("summary") or {}
    sequences = [int(s.get("sequence", 0)) for s in segments]
    gap_free = sequences == list(range(1, len(sequences) + 1))
    return [
        "Bad line, checked against noisy_call.json:",
        f"  hold music {hold['start_ms'] / 1000:.1f}–{hold['end_ms'] / 1000:.1f} s on the "
        f"agent's track: {len(agent_in_hold)} agent segments in it",
        f"  the caller talking over the music ({answer['start_ms'] / 1000:.1f}–"
        f"{answer['end_ms'] / 1000:.1f} s): {len(answered)} caller segment(s), "
        "not held back behind the music",
        "  babble, street noise, DTMF, a cough, a click before hang-up: "
        f"{summary.get('empty_transcripts', 0)} commits answered empty, none numbered",
        f"  segments {len(segments)}, sequence 1..{len(segments)} "
        f"{'without gaps' if gap_free else 'WITH GAPS'}; every segment one speaker",
    ]


TRANSCRIPT_FINAL = "call.transcript_final"
POSTCALL_FAILED = "call.postcall_failed"


async def first_of(
    arrivals: list[asyncio.Future[dict[str, Any]]], wait_s: float
) -> tuple[str, dict[str, Any]]:
    """``(event type, data)`` of whichever of the batch pass's two events comes first."""
    done, _ = await asyncio.wait(arrivals, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
    if not done:
        raise SimulateError(
            f"no call.transcript_final webhook within {wait_s:.0f} s of the call's end "
            "(run with --verbose to see the bridge's log)"
        )
    first = next(iter(done))
    kind = TRANSCRIPT_FINAL if first is arrivals[0] else POSTCALL_FAILED
    return kind, first.result()


def script_lines(path: Path, call_sid: str) -> dict[str, list[str]]:
    """The lines each party says in a bundled call (its ``.json`` ground truth), keyed by
    the names the batch pass gives the call's files. None for a call without a script, or
    with a noisy background (the emulator could not tell the lines from the noise)."""
    truth_path = path.with_suffix(".json")
    if not truth_path.exists():
        return {}
    truth = json.loads(truth_path.read_text(encoding="utf-8"))
    if "background" in truth or "hold_music" in truth:
        return {}
    turns = sorted(truth.get("turns", []), key=lambda turn: turn["start_ms"])
    return {
        f"{call_sid}-inbound": [t["text"] for t in turns if t["speaker"] == "caller"],
        f"{call_sid}-outbound": [t["text"] for t in turns if t["speaker"] == "agent"],
    }


def batch_lines(kind: str, data: dict[str, Any], waited_s: float, emulated: bool) -> list[str]:
    """The post-call batch transcript (or why there is none), readable on a terminal."""
    source = "Scribe v2 batch, EMULATED" if emulated else "Scribe v2 batch"
    if kind != TRANSCRIPT_FINAL:
        return [f"Batch pass FAILED ({waited_s:.2f} s after call.ended): {data.get('error')}"]
    segments = data.get("segments") or []
    lines = [
        f"Batch transcript ({source}; {len(segments)} segments, "
        f"{data.get('audio_seconds_billed', 0):.1f} s of audio billed, "
        f"{waited_s:.2f} s after call.ended):"
    ]
    lines += [f"  {segment_line(segment)}" for segment in segments]
    return lines


def ai_summary_lines(ai: dict[str, Any], waited_s: float) -> list[str]:
    """The AI summary, readable on a terminal."""
    usage = ai.get("usage") or {}
    cost = (
        f"{usage.get('requests', 0)} request(s), {usage.get('prompt_tokens', 0)} prompt + "
        f"{usage.get('completion_tokens', 0)} completion tokens, {waited_s:.2f} s after call.ended"
    )
    if ai.get("status") != "ready":
        error = ai.get("error") or {}
        return [
            f"AI summary FAILED ({error.get('code', ai.get('status'))}): "
            f"{error.get('message', '')}",
            f"  ({cost})",
        ]
    outcome = ai.get("outcome") or {}
    lines = [
        f"AI summary by {ai.get('model')} ({cost}):",
        f"  Gist: {ai.get('gist')}",
        f"  Reason: {ai.get('reason')}",
        f"  Outcome: {outcome.get('status')}: {outcome.get('text')}",
    ]
    items = ai.get("action_items") or []
    lines.append("  Action items:" + ("" if items else " none"))
    lines += [f"    - {item.get('owner')}: {item.get('text')}" for item in items]
    sentiment = ai.get("sentiment") or {}
    lines.append("  Sentiment: " + ", ".join(f"{k} {v}" for k, v in sentiment.items()))
    return lines


def linger_s(args: argparse.Namespace) -> float:
    """How long the page stays up after the call: ``--linger``, else 60 s on a terminal."""
    if args.linger is not None:
        return float(args.linger)
    return DEFAULT_LINGER_S if sys.stdout.isatty() else 0.0


async def keep_serving(console: Console, page_url: str, forever: bool, linger: float) -> None:
    """Leave the bridge (and its page) up after the call: until Ctrl-C, or ``linger`` s."""
    if not forever and linger <= 0:
        return
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        if forever:
            console.line(f"callbridge demo: {page_url} is up until Ctrl-C")
            await stop.wait()
        else:
            console.line(
                f"callbridge demo: {page_url} stays up for {linger:g} s (Ctrl-C ends it; "
                "--keep keeps it up)"
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), linger)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def add_demo_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "demo",
        help="run a bridge, a webhook receiver and a sample call locally; print the transcript",
        description=(
            "Start the real bridge in-process with a temporary database, a local webhook "
            "receiver (signatures verified) and, without ELEVENLABS_API_KEY, the bundled "
            "Scribe emulator; play the bundled two-speaker call through it as a Twilio call, "
            "then the same call on a bad line (babble, hold music, key presses); "
            "print each transcript.committed webhook, the post-call summary, the batch "
            "transcript of the post-call pass (without a key: from the bundled Scribe batch "
            "emulator, marked EMULATED) and the AI summary (from CALLBRIDGE_SUMMARY_LLM_URL if "
            "set, else from the bundled LLM emulator). It prints the address of the live page "
            "(/live) and the API token to watch the call in a browser. No network is needed "
            "without a key or an LLM URL."
        ),
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=None,
        help=f"playback speed ({EMULATOR_SPEED:g} with the emulator, 1 = real time, the "
        "default with ELEVENLABS_API_KEY)",
    )
    parser.add_argument(
        "--call",
        choices=("both", "sample", "noisy"),
        default="both",
        help="the bundled calls to play: the sample call, the same call on a bad line "
        "(babble, street noise, hold music, key presses), or both (the default)",
    )
    parser.add_argument(
        "--wav", metavar="FILE", default=None, help="play this WAV instead of the bundled calls"
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="after the call, keep the bridge and its live page up until Ctrl-C",
    )
    parser.add_argument(
        "--linger",
        type=float,
        metavar="SECONDS",
        default=None,
        help=f"after the call, keep the live page up this long ({DEFAULT_LINGER_S:g} s when "
        "run from a terminal, else 0)",
    )
    parser.add_argument("--verbose", action="store_true", help="show the bridge's log")
    parser.set_defaults(handler=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    console = Console()
    if args.speed is not None and not args.speed >= 0:
        console.note("callbridge demo: --speed must be 0 (as fast as possible) or more")
        return 2
    if args.linger is not None and not args.linger >= 0:
        console.note("callbridge demo: --linger must be 0 or more seconds")
        return 2
    try:
        return asyncio.run(run_demo(args, console))
    except SimulateError as exc:
        console.note(f"callbridge demo: {exc}")
        return 1
