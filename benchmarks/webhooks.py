"""Webhook delivery benchmark on SQLite: sustained throughput and commit-to-POST latency.

    .venv/bin/python benchmarks/webhooks.py [--calls 100 --segments 30 --rate 300 --seconds 10]
        [--same-process] [--json out.json]
    .venv/bin/python benchmarks/webhooks.py --variant A=/checkout/a --variant B=/checkout/b \
        --pairs 5 [the options above]

Throughput: ``--calls`` calls commit ``--segments`` segments each as fast as they can
(interleaved, each call in order) through :class:`StoreSink`; events/s is every event
delivered to a healthy local receiver divided by the time from the first commit to the
last arrival. Latency: segments are committed at ``--rate`` per second spread over the
calls for ``--seconds``; each sample is the time from calling
``StoreSink.segment_committed`` to the signed POST arriving at the receiver. The receiver
runs in its own process (as a real one would; ``--same-process`` puts it on the bridge's
event loop instead) and reports arrivals on ``CLOCK_MONOTONIC``, which all processes share.

CPU: this process's CPU (all threads, and the event loop's thread alone) over the latency run,
per segment; then the same segments are stored again, into a fresh file with no webhook
target (no events, no deliveries), and the difference is what delivering a webhook costs.
Both figures include this benchmark's own work per segment (building it, pacing the calls).

Variants: with ``--variant NAME=PATH`` (two or more), this script runs itself ``--pairs``
times per variant, interleaved (A B A B …), each run a fresh process with ``PYTHONPATH=PATH``
(so ``callbridge`` is imported from that checkout), and prints every run's figures and, per
variant, their median and range: two builds compared on the same machine in the same hour.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from callbridge import event_loop
from callbridge.config import WebhookSettings
from callbridge.logs import configure_logging
from callbridge.models import CallEnded, CallInfo, CommittedSegment, EndReason, Track, Word
from callbridge.store.factory import open_store
from callbridge.testing.webhook_receiver import ReceivedRequest, Reply, WebhookReceiver
from callbridge.webhooks.dispatcher import WebhookDispatcher
from callbridge.webhooks.sink import StoreSink

SECRET = "whsec_" + base64.b64encode(b"benchmark-secret-0123456789abcdef").decode()
TEXT = "thanks for calling, how can I help you with your account today"


def summarize(ended: CallEnded, segments: Sequence[CommittedSegment]) -> dict[str, Any]:
    return {"call_sid": ended.call_sid, "segments": len(segments)}


def call_info(call_sid: str) -> CallInfo:
    return CallInfo(
        call_sid, "MZ" + call_sid[2:], "AC1", "+1555", "+1666", ("inbound", "outbound"), {},
        datetime.now(UTC),
    )  # fmt: skip


def segment(call_sid: str, sequence: int) -> CommittedSegment:
    words = tuple(Word(w, i * 300, i * 300 + 250) for i, w in enumerate(TEXT.split()))
    return CommittedSegment(
        call_sid, "MZ" + call_sid[2:], sequence, "caller", Track.INBOUND, TEXT,
        sequence * 4000, sequence * 4000 + 3500, "en", words,
    )  # fmt: skip


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass(frozen=True, slots=True)
class Arrival:
    call_sid: str
    sequence: int | None
    event_type: str
    at: float  # time.perf_counter() (CLOCK_MONOTONIC) on arrival
    valid: bool


class Arrivals:
    """What the receiver saw, from this process or streamed by the receiver process.

    Lines from the receiver process are kept raw and parsed when read, so that this process
    spends next to nothing per arrival while its CPU is measured."""

    def __init__(self) -> None:
        self._records: list[Arrival | bytes] = []
        self._waiter: tuple[int, asyncio.Future[None]] | None = None

    def add(self, arrival: Arrival | bytes) -> None:
        self._records.append(arrival)
        if self._waiter is not None and len(self._records) >= self._waiter[0]:
            if not self._waiter[1].done():
                self._waiter[1].set_result(None)
            self._waiter = None

    def __len__(self) -> int:
        return len(self._records)

    @property
    def records(self) -> list[Arrival]:
        self._records = [
            Arrival(**json.loads(r)) if isinstance(r, bytes) else r for r in self._records
        ]
        return self._records  # type: ignore[return-value]  # all parsed now

    async def wait_for(self, count: int, within_s: float) -> None:
        if len(self._records) >= count:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = (count, waiter)
        async with asyncio.timeout(within_s):
            await waiter


def arrival_of(request: ReceivedRequest) -> Arrival:
    return Arrival(
        call_sid=str(request.data.get("call_sid")),
        sequence=request.data.get("sequence"),
        event_type=str(request.event_type),
        at=request.received_monotonic,
        valid=bool(request.signature_valid),
    )


async def run_receiver_process() -> None:
    """``--receiver-only``: serve, print the URL, then one JSON line per request."""
    out = sys.stdout

    def record(request: ReceivedRequest) -> Reply:
        out.write(json.dumps(dataclasses.asdict(arrival_of(request))) + "\n")
        out.flush()
        return Reply(200)

    async with WebhookReceiver(secret=SECRET) as receiver:
        receiver.set_responder(record)
        out.write(f"URL {receiver.url}\n")
        out.flush()
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


@asynccontextmanager
async def receiver_process(arrivals: Arrivals) -> AsyncIterator[str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--receiver-only",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stdin is not None
    first = (await process.stdout.readline()).decode().split()
    url = first[1]

    async def pump() -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            arrivals.add(line)

    pumping = asyncio.create_task(pump())
    try:
        yield url
    finally:
        process.stdin.close()
        await process.wait()
        pumping.cancel()


@asynccontextmanager
async def receiver_here(arrivals: Arrivals) -> AsyncIterator[str]:
    async def record(request: ReceivedRequest) -> Reply:
        arrivals.add(arrival_of(request))
        return Reply(200)

    async with WebhookReceiver(secret=SECRET) as receiver:
        receiver.set_responder(record)
        yield receiver.url


Figures = dict[str, float]


async def throughput(
    sink: StoreSink, receiver: Arrivals, calls: int, segments: int, figures: Figures
) -> None:
    async def one_call(index: int) -> None:
        call_sid = f"CT{index:032d}"
        await sink.call_started(call_info(call_sid))
        for sequence in range(1, segments + 1):
            await sink.segment_committed(segment(call_sid, sequence))
        await sink.call_ended(
            CallEnded(call_sid, "MZ", datetime.now(UTC), 60_000, EndReason.STOP, segments, ())
        )

    total = calls * (segments + 2)
    started = time.perf_counter()
    await asyncio.gather(*(one_call(i) for i in range(calls)))
    committed = time.perf_counter()
    await receiver.wait_for(total, within_s=300)
    finished = receiver.records[-1].at
    invalid = sum(1 for r in receiver.records if not r.valid)
    print(f"throughput: {total} events ({calls} calls × {segments + 2}) delivered")
    print(f"  commits: {total / (committed - started):8.0f} events/s")
    print(
        f"  delivery: {total / (finished - started):8.0f} events/s sustained"
        " (first commit → last POST)"
    )
    print(f"  invalid signatures: {invalid}")
    figures["burst_events_per_s"] = total / (finished - started)


@dataclass
class CpuMeter:
    """CPU seconds of this process (every thread) and of the event loop's thread."""

    process: float = 0.0
    loop: float = 0.0

    def __enter__(self) -> CpuMeter:
        self._start = (time.process_time(), time.thread_time())
        return self

    def __exit__(self, *exc: object) -> None:
        self.process = time.process_time() - self._start[0]
        self.loop = time.thread_time() - self._start[1]


async def latency(
    sink: StoreSink,
    receiver: Arrivals | None,
    calls: int,
    rate: float,
    seconds: float,
    figures: Figures | None = None,
) -> tuple[int, CpuMeter]:
    """Segments at ``rate``; with a receiver, their commit → arrival latency. Returns the
    number of segments and the CPU this process spent committing (and delivering) them."""
    committed_at: dict[tuple[str, int], float] = {}
    interval = calls / rate  # each call commits every `interval` seconds
    deadline = time.perf_counter() + seconds

    async def one_call(index: int) -> None:
        call_sid = f"CL{index:032d}"
        await sink.call_started(call_info(call_sid))
        await asyncio.sleep(interval * index / calls)  # spread the calls over one interval
        sequence = 0
        next_at = time.perf_counter()
        while time.perf_counter() < deadline:
            sequence += 1
            committed_at[(call_sid, sequence)] = time.perf_counter()
            await sink.segment_committed(segment(call_sid, sequence))
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    before = len(receiver) if receiver is not None else 0
    with CpuMeter() as cpu:
        await asyncio.gather(*(one_call(i) for i in range(calls)))
        expected = len(committed_at) + calls
        if receiver is not None:
            await receiver.wait_for(before + expected, within_s=60)
    if receiver is None:
        return len(committed_at), cpu
    samples = [
        (r.at - committed_at[(r.call_sid, r.sequence)]) * 1000
        for r in receiver.records[before:]
        if r.event_type == "transcript.committed" and r.sequence is not None
    ]
    print(f"latency: {len(samples)} segments at {rate:g}/s over {calls} calls for {seconds:g} s")
    print(
        f"  commit → POST arrival: p50 {statistics.median(samples):.2f} ms, "
        f"p99 {percentile(samples, 0.99):.2f} ms, max {max(samples):.2f} ms"
    )
    if figures is not None:
        figures["p50_ms"] = statistics.median(samples)
        figures["p99_ms"] = percentile(samples, 0.99)
    return len(committed_at), cpu


def per_event_us(cpu: CpuMeter, events: int) -> str:
    return (
        f"{1e6 * cpu.process / events:.0f} µs per segment "
        f"(event loop thread {1e6 * cpu.loop / events:.0f} µs)"
    )


async def store_only(db: Path, calls: int, rate: float, seconds: float) -> tuple[int, CpuMeter]:
    """The latency run's segments stored with no webhook target: no events, no deliveries."""
    store = open_store(f"sqlite:///{db}")
    await store.open()
    try:
        return await latency(StoreSink(store, summarize, lambda: None), None, calls, rate, seconds)
    finally:
        await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--segments", type=int, default=30)
    parser.add_argument("--rate", type=float, default=300.0, help="segments/s in the latency run")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--db", type=Path, default=None, help="SQLite file (default: a temp dir)")
    parser.add_argument("--same-process", action="store_true", help="receiver on this loop")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument(
        "--variant", action="append", default=[], metavar="NAME=PATH",
        help="run once per variant with PYTHONPATH=PATH, --pairs times, interleaved",
    )  # fmt: skip
    parser.add_argument("--pairs", type=int, default=3, help="runs per variant (3)")
    parser.add_argument("--receiver-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    configure_logging("console", "warning")
    if args.receiver_only:
        await run_receiver_process()
        return
    if args.variant:
        await compare_variants(args)
        return

    figures: Figures = {}
    arrivals = Arrivals()
    receiver = receiver_here(arrivals) if args.same_process else receiver_process(arrivals)
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "bench.db"
        async with receiver as url:
            store = open_store(f"sqlite:///{db}", webhook_targets=[url])
            await store.open()
            dispatcher = WebhookDispatcher(store, WebhookSettings(urls=(url,), secret=SECRET))
            await dispatcher.start()
            sink = StoreSink(store, summarize, dispatcher.notify)
            where = "this process" if args.same_process else "its own process"
            try:
                print(f"python {sys.version.split()[0]}, SQLite at {db}, receiver in {where}")
                await throughput(sink, arrivals, args.calls, args.segments, figures)
                events, cpu = await latency(
                    sink, arrivals, args.calls, args.rate, args.seconds, figures
                )
            finally:
                await dispatcher.stop(5)
                await store.close()
        # the same segments stored alone, into a fresh file: what webhooks add is the rest
        alone, cpu_alone = await store_only(
            Path(tmp) / "store-only.db", args.calls, args.rate, args.seconds
        )
    receiver_note = "" if not args.same_process else " (and the receiver's)"
    print(f"CPU of this process{receiver_note} in the latency run:")
    print(f"  stored and delivered: {per_event_us(cpu, events)}")
    print(f"  stored only (no webhook target): {per_event_us(cpu_alone, alone)}")
    extra = CpuMeter(
        cpu.process / events - cpu_alone.process / alone, cpu.loop / events - cpu_alone.loop / alone
    )
    print(f"  webhook delivery adds: {per_event_us(extra, 1)}")
    figures["delivery_cpu_us"] = 1e6 * extra.process
    if args.json is not None:
        args.json.write_text(json.dumps(figures))


FIGURES = (
    ("burst_events_per_s", "burst events/s", "{:.0f}"),
    ("p50_ms", "commit → POST p50 ms", "{:.2f}"),
    ("p99_ms", "p99 ms", "{:.2f}"),
    ("delivery_cpu_us", "delivery CPU µs", "{:.0f}"),
)


async def compare_variants(args: argparse.Namespace) -> None:
    """``--variant``: each variant in its own process, ``--pairs`` rounds of A B …"""
    variants = [item.partition("=")[::2] for item in args.variant]
    passed = _without_values(sys.argv[1:], ("--variant", "--pairs", "--json"))
    runs: dict[str, list[Figures]] = {name: [] for name, _ in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(1, args.pairs + 1):
            for name, path in variants:
                out = Path(tmp) / f"{name}-{round_}.json"
                env = {**os.environ, "PYTHONPATH": path}
                command = [sys.executable, __file__, *passed, "--json", str(out)]
                print(f"round {round_}, {name} ({path}) …", flush=True)
                await asyncio.to_thread(
                    subprocess.run, command, env=env, check=True, stdout=subprocess.DEVNULL
                )
                figures = json.loads(out.read_text())
                runs[name].append(figures)
                print("  " + ", ".join(
                    f"{label} {fmt.format(figures[key])}" for key, label, fmt in FIGURES
                ), flush=True)  # fmt: skip
    print(f"\n{args.pairs} runs per variant, interleaved; median (min–max):")
    for name, _ in variants:
        cells = []
        for key, label, fmt in FIGURES:
            values = [run[key] for run in runs[name]]
            cells.append(
                f"{label} {fmt.format(statistics.median(values))} "
                f"({fmt.format(min(values))}–{fmt.format(max(values))})"
            )
        print(f"  {name}: " + "; ".join(cells))
    if args.json is not None:
        args.json.write_text(json.dumps(runs))


def _without_values(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """``argv`` without ``options`` and their values (``--opt value`` or ``--opt=value``)."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in options:
            skip = True
        elif not arg.startswith(tuple(f"{option}=" for option in options)):
            kept.append(arg)
    return kept


if __name__ == "__main__":
    event_loop.run(main(), "auto")  # the server's loop (uvloop where installed)
