"""What live redaction adds to end-of-speech → transcript latency, on the real bridge.

    .venv/bin/python benchmarks/redaction_latency.py [--calls 3 --hold-ms 2500 --speed 1]

The same scripted call (a caller pays by card: reads the number in two turns, the agent
says "go on" between them, the caller reads the expiry and CVV in a third, later an order
number; the agent answers in between) is played in real
time through the real bridge against the Scribe emulator, which answers every commit after
0.3 s (the live service's usual), first with redaction off, then with
``CALLBRIDGE_REDACT=pci,ssn,dob``. ``--calls`` calls run at once in each mode. For every
``transcript.committed`` webhook the latency is its arrival at a local receiver minus the
moment the utterance's speech ended (known from the script, on the simulator's clock).

The bridge uses its production turn settings. Figures: per utterance, the median over the
calls of each mode, and the worst of all; the "held" column says which segments redaction
held back (a segment ending in a number that may go on) and why, and which waited behind
a held one (segments leave in commit order).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from callbridge import event_loop
from callbridge.app import create_app
from callbridge.config import (
    ApiSettings,
    DatabaseSettings,
    RedactionSettings,
    ScribeSettings,
    ServerSettings,
    Settings,
    TwilioSettings,
    WebhookSettings,
)
from callbridge.logs import configure_logging
from callbridge.models import Track
from callbridge.testing.scribe_emulator import ScribeEmulator
from callbridge.testing.speech import build_track, pcm16_to_ulaw
from callbridge.testing.speech_script import SpeechScript
from callbridge.testing.twilio_simulator import TwilioCallSimulator
from callbridge.testing.webhook_receiver import WebhookReceiver
from callbridge.twilio.paths import MEDIA_PATH

AUTH_TOKEN = "bench-auth-token"
STREAM_SECRET = "bench-stream-secret-0123456789"
SCRIPT = SpeechScript(
    {
        400: "hi I'd like to pay my bill",
        700: "it's 4111 1111",
        1000: "1111 1111",
        1300: "12 27 and 737",
        1600: "great my order number is 4521",
        2000: "sure what's the card number",
        2300: "and the expiry and code",
        2600: "thank you the payment went through",
        2900: "you're welcome goodbye",
        3200: "go on",
    }
)
# (start_ms, track, key, why it is held with redaction on)
UTTERANCES: list[tuple[int, Track, int, str]] = [
    (500, Track.INBOUND, 400, ""),
    (2500, Track.OUTBOUND, 2000, ""),
    (4500, Track.INBOUND, 700, "card, first groups"),
    (6100, Track.OUTBOUND, 3200, "waits behind the caller's held segment"),
    (7000, Track.INBOUND, 1000, ""),
    (9500, Track.OUTBOUND, 2300, ""),
    (11500, Track.INBOUND, 1300, ""),
    (14000, Track.OUTBOUND, 2600, ""),
    (16500, Track.INBOUND, 1600, "ends in a number (hold runs out)"),
    (20000, Track.OUTBOUND, 2900, ""),
]
DURATION_MS = 23_000
WORD_MS, GAP_MS = 220, 90


def speech_end_ms(start_ms: int, key: int) -> int:
    tokens = len(SCRIPT.freqs(key))
    return start_ms + tokens * WORD_MS + (tokens - 1) * GAP_MS


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def tracks() -> tuple[bytes, bytes]:
    def track(which: Track, seed: int) -> bytes:
        placements = [(at, SCRIPT.audio(key)) for at, t, key, _ in UTTERANCES if t is which]
        return pcm16_to_ulaw(build_track(DURATION_MS, placements, seed=seed))

    return track(Track.INBOUND, 1), track(Track.OUTBOUND, 2)


def settings(port: int, scribe_url: str, hook: str, folder: Path, kinds: Sequence[str]) -> Settings:
    return Settings(
        server=ServerSettings(host="127.0.0.1", port=port, public_url=f"http://127.0.0.1:{port}"),
        twilio=TwilioSettings(auth_token=AUTH_TOKEN, stream_secret=STREAM_SECRET),
        scribe=ScribeSettings(api_key="bench-key", url=scribe_url),
        webhook=WebhookSettings(urls=(hook,)),
        api=ApiSettings(tokens=("bench",)),
        redaction=RedactionSettings(kinds=tuple(kinds)),
        database=DatabaseSettings(
            url=f"sqlite:///{folder / 'bench.db'}", journal_dir=str(folder / "journal")
        ),
    )


async def one_call(base: str, inbound: bytes, outbound: bytes, speed: float) -> tuple[str, float]:
    sim = TwilioCallSimulator(
        base.replace("http", "ws") + MEDIA_PATH,
        auth_token=AUTH_TOKEN,
        public_url=base,
        stream_secret=STREAM_SECRET,
    )
    await sim.connect()
    await sim.send_start(("inbound", "outbound"))
    started = time.perf_counter()
    await sim.send_frames(inbound, outbound, speed=speed)
    await sim.send_stop()
    await sim.close()
    return sim.call_sid, started


async def run_mode(
    kinds: Sequence[str], calls: int, speed: float, hold_ms: int
) -> dict[str, list[tuple[float, str]]]:
    """Per call: the latency (s) and text of each committed segment, in order per track."""

    inbound, outbound = tracks()
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            ScribeEmulator(api_key="bench-key", transcriber="tones", script=SCRIPT) as emulator,
            WebhookReceiver() as receiver,
        ):
            emulator.commit_delay_s = 0.3
            port = free_port()
            runner_settings = settings(port, emulator.url, receiver.url, Path(tmp), kinds)
            runner_settings = runner_settings.replace(
                redaction=dataclasses.replace(runner_settings.redaction, hold_ms=hold_ms)
            )
            app = create_app(runner_settings)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            try:
                base = f"http://127.0.0.1:{port}"
                results = await asyncio.gather(
                    *(one_call(base, inbound, outbound, speed) for _ in range(calls))
                )
                expected = calls * len(UTTERANCES)
                await receiver.wait_for(
                    expected, timeout=60, predicate=lambda r: r.event_type == "transcript.committed"
                )
            finally:
                await runner.cleanup()
            per_call: dict[str, list[tuple[float, str]]] = {}
            for call_sid, started in results:
                arrivals = [
                    r
                    for r in receiver.requests
                    if r.event_type == "transcript.committed" and r.data["call_sid"] == call_sid
                ]
                ends = {
                    track: [speech_end_ms(at, key) for at, t, key, _ in UTTERANCES if t is track]
                    for track in (Track.INBOUND, Track.OUTBOUND)
                }
                seen = {Track.INBOUND: 0, Track.OUTBOUND: 0}
                rows = []
                for request in sorted(arrivals, key=lambda r: r.data["sequence"]):
                    track = Track(request.data["track"])
                    end_s = ends[track][seen[track]] / 1000.0 / speed
                    seen[track] += 1
                    rows.append(
                        (request.received_monotonic - (started + end_s), request.data["text"])
                    )
                per_call[call_sid] = rows
            return per_call


def report(off: dict[str, list[tuple[float, str]]], on: dict[str, list[tuple[float, str]]]) -> None:
    def by_utterance(runs: dict[str, list[tuple[float, str]]]) -> list[list[tuple[float, str]]]:
        rows = list(runs.values())
        return [list(column) for column in zip(*rows, strict=True)]

    order = sorted(range(len(UTTERANCES)), key=lambda i: UTTERANCES[i][0])
    off_cols, on_cols = by_utterance(off), by_utterance(on)
    heading = "utterance (speaker: text as delivered with redaction on)"
    print(f"{heading:64} {'off':>6} {'on':>6}  held")
    for index, (off_col, on_col) in enumerate(zip(off_cols, on_cols, strict=True)):
        _, track, _, why = UTTERANCES[order[index]]
        speaker = "caller" if track is Track.INBOUND else "agent"
        text = on_col[0][1]
        print(
            f"{speaker + ': ' + text:64} {statistics.median(x for x, _ in off_col):6.2f} "
            f"{statistics.median(x for x, _ in on_col):6.2f}  {why}"
        )
    worst_off = max(x for col in off_cols for x, _ in col)
    worst_on = max(x for col in on_cols for x, _ in col)
    print(f"worst end-of-speech → transcript: off {worst_off:.2f} s, on {worst_on:.2f} s")
    unheld = [i for i in range(len(UTTERANCES)) if not UTTERANCES[order[i]][3]]
    added = [
        statistics.median(x for x, _ in on_cols[i]) - statistics.median(x for x, _ in off_cols[i])
        for i in unheld
    ]
    print(f"segments not held: median change {statistics.median(added):+.2f} s")


async def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--hold-ms", type=int, default=2500)
    parser.add_argument("--speed", type=float, default=1.0, help="1 = real time")
    args = parser.parse_args(argv)
    configure_logging("json", "warning")
    print(
        f"{args.calls} calls at once per mode, {DURATION_MS / 1000:g} s each, "
        f"speed {args.speed:g}, Scribe answers after 0.3 s, hold {args.hold_ms} ms"
    )
    off = await run_mode([], args.calls, args.speed, args.hold_ms)
    on = await run_mode(["pci", "ssn", "dob"], args.calls, args.speed, args.hold_ms)
    report(off, on)
    return 0


if __name__ == "__main__":
    sys.exit(event_loop.run(main(sys.argv[1:]), "auto"))
