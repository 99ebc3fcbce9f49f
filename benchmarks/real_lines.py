"""End of speech → transcript on a bad line, in real time, through the real bridge.

    .venv/bin/python benchmarks/real_lines.py [--call noisy|short] [--scribe-answer-s 0.3]

Plays :func:`callbridge.testing.lines.noisy_call` (30 s: babble 13 dB under the caller,
street noise under the agent, 12 s of hold music on the agent's track while the caller keeps
talking, DTMF, coughs, short answers, double talk, a click before hang-up) as a Twilio call
in real time into the bridge (production turn and commit settings), against the strict
Scribe emulator answering each commit after ``--scribe-answer-s``. For every utterance of
the script it prints the time from the end of its speech (known from the script) to the
arrival of the ``transcript.committed`` webhook holding its last word, and the worst.
It also checks what the tests check: every word once on its track, no other word, no
``commit_throttled``, one Scribe session.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from aiohttp import web

from callbridge.app import create_app
from callbridge.config import (
    ApiSettings,
    DatabaseSettings,
    ScribeSettings,
    ServerSettings,
    Settings,
    TwilioSettings,
    WebhookSettings,
)
from callbridge.testing.lines import ScriptedLine, noisy_call, short_noisy_call
from callbridge.testing.scribe_emulator import ScribeEmulator
from callbridge.testing.twilio_simulator import TwilioCallSimulator
from callbridge.testing.webhook_receiver import WebhookReceiver
from callbridge.twilio.paths import MEDIA_PATH

AUTH_TOKEN = "bench-auth-token"
STREAM_SECRET = "bench-stream-secret-0123456789"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def measure(call: ScriptedLine, answer_s: float) -> int:
    async with (
        ScribeEmulator(transcriber="tones", commit_delay_s=answer_s, partial_interval_ms=0) as emu,
        WebhookReceiver() as receiver,
    ):
        port = free_port()
        workdir = Path(tempfile.mkdtemp(prefix="callbridge-real-lines-"))
        settings = Settings(
            server=ServerSettings(
                host="127.0.0.1", port=port, public_url=f"http://127.0.0.1:{port}"
            ),
            twilio=TwilioSettings(auth_token=AUTH_TOKEN, stream_secret=STREAM_SECRET),
            scribe=ScribeSettings(api_key=emu.api_key or "k", url=emu.url),
            webhook=WebhookSettings(urls=(receiver.url,), backoff_initial_s=0.05),
            api=ApiSettings(tokens=("bench",)),
            database=DatabaseSettings(
                url=f"sqlite:///{workdir / 'bench.db'}", journal_dir=str(workdir / "journal")
            ),
        )
        runner = web.AppRunner(create_app(settings), handle_signals=False, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            sim = TwilioCallSimulator(
                f"ws://127.0.0.1:{port}{MEDIA_PATH}",
                auth_token=AUTH_TOKEN,
                public_url=settings.server.public_url,
                stream_secret=STREAM_SECRET,
            )
            await sim.connect()
            await sim.send_start(["inbound", "outbound"])
            started = asyncio.get_running_loop().time()
            await sim.send_frames(call.inbound, call.outbound, speed=1.0)
            await sim.send_stop()
            await sim.close()
            await receiver.wait_for(1, timeout=30, predicate=lambda r: r.event_type == "call.ended")
        finally:
            await runner.cleanup()
    committed = [r for r in receiver.requests if r.event_type == "transcript.committed"]
    print(f"{'utterance':>28}  {'track':8}  {'speech end':>10}  {'transcript':>10}  latency")
    worst = 0.0
    problems = []
    for start, track, freqs in call.utterances:
        end_ms = call.speech_end_ms(start, len(freqs))
        last = f"tone{freqs[-1]}"
        holding = [r for r in committed if r.data["track"] == track and last in r.data["text"]]
        if not holding:
            problems.append(f"{track} {freqs} never transcribed")
            continue
        arrival_s = holding[0].received_monotonic - started
        latency = arrival_s - end_ms / 1000
        worst = max(worst, latency)
        words = " ".join(str(f) for f in freqs)
        print(f"{words:>28}  {track:8}  {end_ms / 1000:9.2f}s  {arrival_s:9.2f}s  {latency:6.2f} s")
    heard = {t: [w for r in committed if r.data["track"] == t for w in r.data["text"].split()]
             for t in ("inbound", "outbound")}  # fmt: skip
    for track in heard:
        said = [f"tone{f}" for _, t, freqs in call.utterances if t == track for f in freqs]
        if heard[track] != said:
            problems.append(f"{track}: heard {heard[track]}, said {said}")
    throttled = sum(len(s.throttled_commits) for s in emu.sessions)
    sequences = [r.data["sequence"] for r in committed]
    print(
        f"\nworst end of speech → transcript.committed: {worst:.2f} s "
        f"(Scribe answering in {answer_s} s); segments {len(committed)}, sequences "
        f"{'1..n without gaps' if sequences == list(range(1, len(committed) + 1)) else sequences}"
        f"; Scribe sessions {len(emu.sessions)}; commit_throttled {throttled}"
    )
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return 1 if problems or throttled else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--call", choices=("noisy", "short"), default="noisy")
    parser.add_argument("--scribe-answer-s", type=float, default=0.3)
    args = parser.parse_args(argv)
    call = noisy_call() if args.call == "noisy" else short_noisy_call()
    return asyncio.run(measure(call, args.scribe_answer_s))


if __name__ == "__main__":
    sys.exit(main())
