"""Per-frame CPU of the bridge's own code, without sockets: the bridge against a bare relay.

The load benchmark (``benchmarks/load.py``) measures the whole server process; on a shared
machine its figures move by ±20 % between runs. This one isolates what the bridge adds per
Twilio frame, in one process, alternating the two systems so that both see the same machine:

* **bridge**: ``parse_message`` → ``CallSession.on_media`` (gap fill, voice activity, turn
  taking) → ``SegmentTranscriber`` (windows, 100 ms chunks, commits) → the real
  ``ScribeConnection`` serialising each message, onto a websocket double that answers every
  commit with a ``committed_transcript`` and writes nothing to a socket.
* **bridge+metrics**: the same with the application's metrics on (a ``BridgeMetrics`` for
  the session and its transcriber, the sink's metrics branch), to show what instrumentation
  costs per frame: nothing on the per-frame path itself, a few counters and histograms per
  commit and segment (the load benchmark's ``bridge-nometrics`` adds the scrapes and the
  process monitor).
* **relay**: ``orjson.loads`` of the Twilio message, one ``input_audio_chunk`` per frame with
  the payload passed through, ``orjson.dumps``, onto the same websocket double (the same
  JSON library the bridge parses with, so the ratio measures the work, not the library).

Both replay the bundled two-speaker sample call (real speech, 37.6 s, both tracks) as N
concurrent calls, frame by frame in stream order, yielding to the event loop once per 20 ms
tick. Figures are CPU time (``time.process_time``) per Twilio frame; the ratio is what to
compare across machines.

    .venv/bin/python benchmarks/pipeline.py [--calls 20] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import orjson

from callbridge.call.session import CallSession, StreamDescription
from callbridge.call.sink import CallEventSink, FanOutSink
from callbridge.config import Settings
from callbridge.logs import configure_logging
from callbridge.metrics import DISABLED, BridgeMetrics
from callbridge.metrics.call_sink import CallMetricsSink
from callbridge.models import EndReason, Track
from callbridge.scribe.connection import ScribeConnection
from callbridge.scribe.messages import SessionStarted
from callbridge.scribe.options import ScribeOptions
from callbridge.simulate import load_call_audio, sample_call_path
from callbridge.testing.twilio_simulator import media_message
from callbridge.twilio.protocol import MediaFrame, parse_message

FRAME_BYTES = 160
COMMITTED = '{"message_type":"committed_transcript","text":"hello there"}'
COMMITTED_WITH_TIMESTAMPS = json.dumps(
    {
        "message_type": "committed_transcript_with_timestamps",
        "text": "hello there",
        "language_code": "en",
        "words": [
            {"text": "hello", "start": 0.1, "end": 0.4, "type": "word"},
            {"text": " ", "start": 0.4, "end": 0.45, "type": "spacing"},
            {"text": "there", "start": 0.45, "end": 0.8, "type": "word"},
        ],
    }
)


class AnsweringWebsocket:
    """Stands in for the Scribe websocket: takes every message, answers each commit."""

    def __init__(self) -> None:
        self.sent = 0
        self._answers: asyncio.Queue[str] = asyncio.Queue()
        self.close_code: int | None = None
        self.close_reason = ""

    async def send(self, message: str) -> None:
        self.sent += 1
        if '"commit":true' in message:
            self._answers.put_nowait(COMMITTED)
            self._answers.put_nowait(COMMITTED_WITH_TIMESTAMPS)

    async def recv(self) -> str:
        return await self._answers.get()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.close_code = code

    async def wait_closed(self) -> None:
        return None


class NullSink(CallEventSink):
    """Counts committed segments; stores nothing."""

    def __init__(self) -> None:
        self.segments = 0

    async def call_started(self, info: Any) -> None:
        return None

    async def segment_committed(self, segment: Any) -> None:
        self.segments += 1

    async def call_ended(self, ended: Any) -> None:
        return None


def twilio_messages(tracks: dict[Track, bytes]) -> list[list[str]]:
    """Per 20 ms tick, the Twilio ``media`` messages of every track, as Twilio words them."""
    length = min(len(audio) for audio in tracks.values()) // FRAME_BYTES
    ticks: list[list[str]] = []
    sequence = 2
    for index in range(length):
        tick = []
        for track, audio in tracks.items():
            payload = audio[index * FRAME_BYTES : (index + 1) * FRAME_BYTES]
            sequence += 1
            tick.append(media_message(sequence, track, index + 1, index * 20, payload, "MZbench"))
        ticks.append(tick)
    return ticks


async def run_bridge(
    ticks: list[list[str]], calls: int, metrics: BridgeMetrics = DISABLED
) -> tuple[float, int, int]:
    # The replay runs far faster than real time: relax the two wall-clock limits (commit
    # spacing, catch-up speed) so that every chunk and commit is sent inside the timed loop.
    defaults = Settings()
    settings = defaults.replace(
        turns=dataclasses.replace(defaults.turns, min_commit_interval_ms=0, catchup_speed=1e6)
    )
    sockets: list[AnsweringWebsocket] = []

    async def connect(opts: ScribeOptions) -> ScribeConnection:
        ws = AnsweringWebsocket()
        sockets.append(ws)
        started = SessionStarted("bench", {"audio_format": opts.audio_format})
        return ScribeConnection(ws, opts, started)  # type: ignore[arg-type]

    sink = NullSink()
    fanout = FanOutSink([sink, CallMetricsSink(metrics)]) if metrics.enabled else sink
    sessions = [
        CallSession(
            settings,
            StreamDescription(
                f"CA{i:032d}", f"MZ{i:032d}", "AC0", (Track.INBOUND, Track.OUTBOUND), {}
            ),
            fanout,
            connect=connect,
            metrics=metrics,
        )
        for i in range(calls)
    ]
    for session in sessions:
        session.start()
    await asyncio.sleep(0)
    frames = 0
    started = time.process_time()
    for tick in ticks:
        for session in sessions:
            for raw in tick:
                event = parse_message(raw)
                assert isinstance(event, MediaFrame)
                session.on_media(event.track, event.timestamp_ms, event.payload)
                frames += 1
        await asyncio.sleep(0)
    elapsed = time.process_time() - started
    await asyncio.gather(*(session.finish(EndReason.STOP) for session in sessions))
    assert sink.segments, "no committed segment came back"
    return elapsed, frames, sum(ws.sent for ws in sockets)


async def run_relay(ticks: list[list[str]], calls: int) -> tuple[float, int, int]:
    sockets = [AnsweringWebsocket() for _ in range(calls)]
    loads, dumps = orjson.loads, orjson.dumps
    frames = 0
    started = time.process_time()
    for tick in ticks:
        for ws in sockets:
            for raw in tick:
                event = loads(raw)
                if event.get("event") == "media":
                    chunk = {
                        "message_type": "input_audio_chunk",
                        "audio_base_64": event["media"]["payload"],
                        "commit": False,
                        "sample_rate": 8000,
                    }
                    await ws.send(dumps(chunk).decode())
                frames += 1
        await asyncio.sleep(0)
    elapsed = time.process_time() - started
    return elapsed, frames, sum(ws.sent for ws in sockets)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=20, help="concurrent calls (20)")
    parser.add_argument("--repeats", type=int, default=5, help="alternating runs of each (5)")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    configure_logging("console", "warning")
    ticks = twilio_messages(load_call_audio(sample_call_path()))
    figures: dict[str, list[float]] = {"bridge": [], "bridge+metrics": [], "relay": []}
    sent: dict[str, int] = {}
    runners = {
        "bridge": run_bridge,
        "bridge+metrics": lambda ticks, calls: run_bridge(ticks, calls, BridgeMetrics()),
        "relay": run_relay,
    }
    for _ in range(args.repeats):
        for name, runner in runners.items():
            gc.collect()
            elapsed, frames, messages = asyncio.run(runner(ticks, args.calls))
            figures[name].append(elapsed / frames * 1e6)
            sent[name] = messages
    bridge = statistics.median(figures["bridge"])
    with_metrics = statistics.median(figures["bridge+metrics"])
    relay = statistics.median(figures["relay"])
    print(
        f"python {sys.version.split()[0]}; {args.calls} calls × {len(ticks) * 0.02:.1f} s of the "
        f"sample call, {args.repeats} alternating runs each; CPU µs per Twilio frame (median)"
    )
    for name, value in (("bridge", bridge), ("bridge+metrics", with_metrics), ("relay", relay)):
        runs = " ".join(f"{v:.1f}" for v in figures[name])
        print(f"  {name:14}  {value:6.2f} µs   (runs: {runs}; {sent[name]} messages to Scribe)")
    print(f"  ratio           {bridge / relay:6.2f}  (bridge ÷ relay)")
    paired = [m / b for m, b in zip(figures["bridge+metrics"], figures["bridge"], strict=True)]
    print(
        f"  metrics cost    {statistics.median(paired):6.3f}  (bridge+metrics ÷ bridge, median of "
        f"the runs paired in order: {' '.join(f'{r:.3f}' for r in paired)})"
    )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {
                    "calls": args.calls,
                    "us_per_frame": figures,
                    "ratio": bridge / relay,
                    "metrics_cost": statistics.median(paired),
                },
                out,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
