"""What the media socket's heartbeat (``CALLBRIDGE_LIMITS_WS_HEARTBEAT_S``) costs per frame.

    .venv/bin/python benchmarks/ws_heartbeat.py

With a heartbeat, aiohttp's server websocket notes every chunk of data the socket receives:
it schedules a callback that moves the ping deadline (``WebSocketResponse._on_data_received``
→ ``_reset_heartbeat``). Without one it does nothing. A Twilio stream sends about 100
messages a second (20 ms frames, two tracks), each normally its own read. This measures, in
one process on the bridge's event loop (uvloop when installed), the CPU of that bookkeeping
per received chunk: each round runs the same loop (the notification, then one pass of the
event loop, which runs the scheduled callback) with the heartbeat off and at 30 s,
alternating, and the difference of the medians is the heartbeat's cost. It is what the load
benchmark cannot resolve on a shared machine (a few percent, inside its run-to-run noise).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

from aiohttp import web

from callbridge.event_loop import resolve, run

CHUNKS_PER_CALL_SECOND = 100  # two tracks of 20 ms frames


async def per_chunk_us(heartbeat: float | None, chunks: int) -> float:
    """CPU µs per received chunk: the heartbeat's notification and one loop pass."""
    ws = web.WebSocketResponse(heartbeat=heartbeat)
    ws._loop = asyncio.get_running_loop()  # what prepare() sets; no socket needed
    notify = ws._on_data_received
    started = time.process_time()
    for _ in range(chunks):
        notify()
        await asyncio.sleep(0)  # the loop pass in which the scheduled reset runs
    elapsed = time.process_time() - started
    ws._cancel_heartbeat()
    return elapsed / chunks * 1e6


async def measure(chunks: int, rounds: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"off": [], "on": []}
    await per_chunk_us(None, min(chunks, 10_000))  # warm-up
    for index in range(rounds):
        order = ("off", "on") if index % 2 == 0 else ("on", "off")
        for mode in order:
            results[mode].append(await per_chunk_us(30.0 if mode == "on" else None, chunks))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=200_000, help="chunks per measurement")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    results = run(measure(args.chunks, args.rounds), "auto")
    off, on = statistics.median(results["off"]), statistics.median(results["on"])
    added_us = on - off
    per_call_second_ms = added_us * CHUNKS_PER_CALL_SECOND / 1000
    print(f"event loop: {resolve('auto')}; {args.chunks} chunks × {args.rounds} rounds")
    for label, mode, median in (("heartbeat off", "off", off), ("heartbeat 30 s", "on", on)):
        values = ", ".join(f"{v:.3f}" for v in results[mode])
        print(f"{label}: {values} µs per chunk (median {median:.3f})")
    print(f"added by the heartbeat: {added_us:.3f} µs per received chunk")
    print(
        f"at {CHUNKS_PER_CALL_SECOND} chunks per call-second: {per_call_second_ms:.4f} ms of CPU "
        "per call-second"
    )
    if args.json is not None:
        figures = {
            "chunks": args.chunks,
            "rounds": args.rounds,
            "us_per_chunk": results,
            "added_us_per_chunk": added_us,
            "added_ms_per_call_second": per_call_second_ms,
        }
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
