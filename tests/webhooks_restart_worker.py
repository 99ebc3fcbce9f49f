"""A bridge-like process for the webhook restart test (run as a subprocess, not collected).

``enqueue``: open the SQLite store, start the dispatcher, commit CALLS×SEGMENTS calls through
StoreSink, print ``ENQUEUED`` and keep delivering until killed.
``drain``: open the same store, start the dispatcher, exit 0 once nothing is pending.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path

from callbridge.config import WebhookSettings
from callbridge.models import CallEnded, CallInfo, CommittedSegment, EndReason, Track
from callbridge.store.factory import open_store
from callbridge.webhooks.dispatcher import WebhookDispatcher
from callbridge.webhooks.sink import StoreSink


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["enqueue", "drain"])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--secret", default="")
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--segments", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()

    store = open_store(f"sqlite:///{args.db}", webhook_targets=[args.target])
    await store.open()
    settings = WebhookSettings(
        urls=(args.target,),
        secret=args.secret,
        timeout_s=2.0,
        backoff_initial_s=0.05,
        backoff_max_s=0.3,
    )
    dispatcher = WebhookDispatcher(store, settings, poll_interval_s=0.2, lease_s=1.0)
    await dispatcher.start()
    if args.mode == "enqueue":
        sink = StoreSink(
            store, lambda ended, segments: {"segments": len(segments)}, dispatcher.notify
        )
        now = datetime.now(UTC)
        for call in range(args.calls):
            await sink.call_started(
                CallInfo(
                    f"CA{call:032d}",
                    f"MZ{call:032d}",
                    "AC1",
                    "+1555",
                    "+1666",
                    ("inbound", "outbound"),
                    {},
                    now,
                )
            )
        for sequence in range(1, args.segments + 1):
            for call in range(args.calls):
                await sink.segment_committed(
                    CommittedSegment(
                        f"CA{call:032d}",
                        f"MZ{call:032d}",
                        sequence,
                        "caller",
                        Track.INBOUND,
                        f"words {sequence}",
                        0,
                        10,
                        "en",
                    )
                )
        for call in range(args.calls):
            await sink.call_ended(
                CallEnded(
                    f"CA{call:032d}", f"MZ{call:032d}", now, 1000, EndReason.STOP, args.segments, ()
                )
            )
        print("ENQUEUED", flush=True)
        await asyncio.sleep(3600)
        return 1
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout
    while await store.pending_deliveries_exist():
        if loop.time() > deadline:
            print("TIMEOUT", flush=True)
            return 1
        await asyncio.sleep(0.1)
    await dispatcher.stop(5)
    await store.close()
    print("DRAINED", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
