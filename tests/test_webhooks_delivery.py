"""Webhook delivery end to end: SQLite store, dispatcher, StoreSink, a real local receiver."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook

from callbridge.config import WebhookSettings
from callbridge.models import CallEnded, CallInfo, CommittedSegment, EndReason, Track
from callbridge.store.base import DurableStore
from callbridge.store.factory import open_store
from callbridge.testing.webhook_receiver import ReceivedRequest, Reply, WebhookReceiver
from callbridge.webhooks.dispatcher import WebhookDispatcher
from callbridge.webhooks.sink import StoreSink

SECRET = "whsec_" + base64.b64encode(b"callbridge-test-secret-32-bytes!").decode()
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def summarize(ended: CallEnded, segments: Sequence[CommittedSegment]) -> dict[str, Any]:
    return {"call_sid": ended.call_sid, "segments": len(segments)}


def call_info(call_sid: str) -> CallInfo:
    return CallInfo(call_sid, f"MZ{call_sid}", "AC1", "+1555", "+1666", ("inbound",), {}, NOW)


def segment(call_sid: str, sequence: int, text: str | None = None) -> CommittedSegment:
    return CommittedSegment(
        call_sid,
        f"MZ{call_sid}",
        sequence,
        "caller",
        Track.INBOUND,
        f"segment {sequence}" if text is None else text,
        sequence * 100,
        sequence * 100 + 50,
        "en",
    )


def call_end(call_sid: str, segments: int) -> CallEnded:
    return CallEnded(call_sid, f"MZ{call_sid}", NOW, 5000, EndReason.STOP, segments, ())


@dataclass
class Harness:
    store: DurableStore
    dispatcher: WebhookDispatcher
    sink: StoreSink
    receivers: list[WebhookReceiver] = field(default_factory=list)

    async def run_call(self, call_sid: str, segments: int) -> None:
        await self.sink.call_started(call_info(call_sid))
        for sequence in range(1, segments + 1):
            await self.sink.segment_committed(segment(call_sid, sequence))
        await self.sink.call_ended(call_end(call_sid, segments))


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as stack:
        yield stack


async def make_harness(
    stack: AsyncExitStack,
    tmp_path: Path,
    receivers: Sequence[WebhookReceiver] | None = None,
    targets: Sequence[str] | None = None,
    **overrides: Any,
) -> Harness:
    receivers = list(receivers) if receivers is not None else [WebhookReceiver(secret=SECRET)]
    for receiver in receivers:
        await stack.enter_async_context(receiver)
    urls = tuple(targets) if targets is not None else tuple(r.url for r in receivers)
    store = open_store(f"sqlite:///{tmp_path / 'cb.db'}", webhook_targets=urls)
    await store.open()
    stack.push_async_callback(store.close)
    values: dict[str, Any] = {
        "urls": urls,
        "secret": SECRET,
        "timeout_s": 2.0,
        "backoff_initial_s": 0.02,
        "backoff_max_s": 0.1,
    }
    values.update(overrides)
    dispatcher = WebhookDispatcher(
        store, WebhookSettings(**values), poll_interval_s=0.2, rng=random.Random(1)
    )
    await dispatcher.start()
    stack.push_async_callback(dispatcher.stop, 2.0)
    sink = StoreSink(store, summarize, dispatcher.notify)
    return Harness(store, dispatcher, sink, receivers)


def sequences(requests: list[ReceivedRequest]) -> list[tuple[str | None, Any]]:
    return [(r.event_type, r.data.get("sequence")) for r in requests]


def expected_sequence(segments: int) -> list[tuple[str | None, Any]]:
    return [
        ("call.started", None),
        *(("transcript.committed", n) for n in range(1, segments + 1)),
        ("call.ended", None),
    ]


async def test_events_arrive_in_order_with_valid_signatures(
    stack: AsyncExitStack, tmp_path: Path
) -> None:
    harness = await make_harness(stack, tmp_path)
    receiver = harness.receivers[0]
    await harness.run_call("CA1", 3)
    requests = await receiver.wait_for(5, timeout=5)
    assert sequences(requests) == expected_sequence(3)
    webhook = Webhook(SECRET)
    for request in requests:
        assert request.signature_valid
        assert request.headers["content-type"] == "application/json"
        assert request.webhook_id and request.webhook_id.startswith("evt_")
        assert webhook.verify(request.body, dict(request.headers)) == json.loads(request.body)
        assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 5
    assert len({r.webhook_id for r in requests}) == 5
    ended = requests[-1].data
    assert ended["summary"] == {"call_sid": "CA1", "segments": 3}
    await asyncio.sleep(0.05)
    counts = await harness.store.delivery_counts()
    assert (counts.pending, counts.delivered, counts.failed) == (0, 5, 0)


async def test_empty_segments_are_stored_but_not_sent(
    stack: AsyncExitStack, tmp_path: Path
) -> None:
    harness = await make_harness(stack, tmp_path)
    await harness.sink.call_started(call_info("CA1"))
    await harness.sink.segment_committed(segment("CA1", 1, text="  "))
    await harness.sink.segment_committed(segment("CA1", 2))
    await harness.sink.call_ended(call_end("CA1", 2))
    requests = await harness.receivers[0].wait_for(3, timeout=5)
    assert sequences(requests) == [
        ("call.started", None),
        ("transcript.committed", 2),
        ("call.ended", None),
    ]
    assert [s.sequence for s in await harness.store.get_segments("CA1")] == [1, 2]


async def test_server_errors_are_retried_with_the_same_id_and_order_holds(
    stack: AsyncExitStack, tmp_path: Path
) -> None:
    receiver = WebhookReceiver(secret=SECRET)
    receiver.reply(500, 502, 503, Reply(500, body=b"<html>oops"), 504)
    harness = await make_harness(stack, tmp_path, [receiver])
    await harness.run_call("CA1", 4)
    await receiver.wait_for(6, timeout=10, predicate=lambda r: r.status == 200)
    delivered = receiver.delivered()
    assert sequences(delivered) == expected_sequence(4)
    # every attempt of an event carries the same id; five failures went to the first event
    by_body: dict[bytes, set[str | None]] = defaultdict(set)
    for request in receiver.requests:
        by_body[request.body].add(request.webhook_id)
        assert request.signature_valid
    assert all(len(ids) == 1 for ids in by_body.values())
    first_id = delivered[0].webhook_id
    assert [r.webhook_id for r in receiver.requests[:6]] == [first_id] * 6
    assert harness.dispatcher.stats.retried == 5


async def test_retry_after_is_honoured(stack: AsyncExitStack, tmp_path: Path) -> None:
    receiver = WebhookReceiver(secret=SECRET)
    receiver.reply(Reply.retry_after(1))
    harness = await make_harness(stack, tmp_path, [receiver])
    await harness.sink.call_started(call_info("CA1"))
    first, second = await receiver.wait_for(2, timeout=5)
    assert first.status == 429 and second.status == 200
    assert first.webhook_id == second.webhook_id
    assert second.received_monotonic - first.received_monotonic >= 0.95


async def test_retry_after_http_date_is_honoured(stack: AsyncExitStack, tmp_path: Path) -> None:
    receiver = WebhookReceiver(secret=SECRET)
    from email.utils import formatdate

    receiver.set_responder(
        lambda r: (
            Reply(503, {"Retry-After": formatdate(time.time() + 2, usegmt=True)})
            if len(receiver.requests) == 0
            else Reply(200)
        )
    )
    harness = await make_harness(stack, tmp_path, [receiver])
    await harness.sink.call_started(call_info("CA1"))
    first, second = await receiver.wait_for(2, timeout=6)
    assert second.received_monotonic - first.received_monotonic >= 0.9


@pytest.mark.parametrize("answer", [400, 404, 410, 302])
async def test_client_errors_and_redirects_fail_without_retry(
    stack: AsyncExitStack, tmp_path: Path, answer: int
) -> None:
    receiver = WebhookReceiver(secret=SECRET)
    receiver.reply(Reply(answer, {"Location": "/elsewhere"}) if answer == 302 else answer)
    harness = await make_harness(stack, tmp_path, [receiver])
    await harness.run_call("CA1", 1)
    requests = await receiver.wait_for(3, timeout=5)
    await asyncio.sleep(0.2)
    assert len(receiver.requests) == 3  # the failed event was not tried again
    assert sequences(requests) == expected_sequence(1)
    assert [r.status for r in requests] == [answer, 200, 200]
    assert all(r.path == "/hooks" for r in receiver.requests)  # the redirect was not followed
    counts = await harness.store.delivery_counts()
    assert (counts.pending, counts.delivered, counts.failed) == (0, 2, 1)
    assert harness.dispatcher.stats.failed == 1


async def test_retries_stop_after_retry_for_s(stack: AsyncExitStack, tmp_path: Path) -> None:
    receiver = WebhookReceiver(secret=SECRET, default=Reply(503))
    harness = await make_harness(stack, tmp_path, [receiver], retry_for_s=0.3)
    await harness.sink.call_started(call_info("CA1"))
    for _ in range(100):
        counts = await harness.store.delivery_counts()
        if counts.failed:
            break
        await asyncio.sleep(0.05)
    assert (counts.pending, counts.failed) == (0, 1)
    assert len(receiver.requests) >= 2


async def test_a_dead_or_slow_target_does_not_delay_a_healthy_one(
    stack: AsyncExitStack, tmp_path: Path
) -> None:
    healthy = WebhookReceiver(secret=SECRET)
    slow = WebhookReceiver(secret=SECRET, default=Reply(200, delay_s=5))
    harness = await make_harness(
        stack,
        tmp_path,
        [healthy, slow],
        timeout_s=3.0,
        max_in_flight=4,
    )
    started = time.perf_counter()
    await asyncio.gather(*(harness.run_call(f"CA{n}", 5) for n in range(10)))
    await healthy.wait_for(70, timeout=5)
    assert time.perf_counter() - started < 3.0
    assert len(slow.requests) <= 4  # its budget, not the healthy target's
    by_call: dict[str, list[Any]] = defaultdict(list)
    for request in healthy.requests:
        by_call[request.data["call_sid"]].append((request.event_type, request.data.get("sequence")))
    assert all(events == expected_sequence(5) for events in by_call.values())


async def test_a_refusing_target_does_not_delay_a_healthy_one(
    stack: AsyncExitStack, tmp_path: Path
) -> None:
    healthy = WebhookReceiver(secret=SECRET)
    await stack.enter_async_context(healthy)
    dead = "http://127.0.0.1:9/hooks"  # the discard port: connection refused
    harness = await make_harness(stack, tmp_path, [], targets=[healthy.url, dead])
    started = time.perf_counter()
    await asyncio.gather(*(harness.run_call(f"CA{n}", 3) for n in range(10)))
    await healthy.wait_for(50, timeout=5)
    assert time.perf_counter() - started < 2.0
    assert harness.dispatcher.stats.retried > 0


async def test_order_holds_per_call_when_many_calls_interleave_and_targets_flake(
    stack: AsyncExitStack, tmp_path: Path
) -> None:
    receiver = WebhookReceiver(secret=SECRET)
    flaky = random.Random(42)
    receiver.set_responder(
        lambda r: Reply(flaky.choice([200, 200, 500, 503, 429]), delay_s=flaky.random() * 0.01)
    )
    harness = await make_harness(stack, tmp_path, [receiver], max_in_flight=8)
    calls, segments = 25, 8
    await asyncio.gather(*(harness.run_call(f"CA{n:02d}", segments) for n in range(calls)))
    await receiver.wait_for(calls * (segments + 2), timeout=30, predicate=lambda r: r.status == 200)
    by_call: dict[str, list[Any]] = defaultdict(list)
    for request in receiver.delivered():
        by_call[request.data["call_sid"]].append((request.event_type, request.data.get("sequence")))
    assert len(by_call) == calls
    assert all(events == expected_sequence(segments) for events in by_call.values())
    # never a later event of a call before an earlier one was delivered (attempts included)
    position: dict[str | None, int] = {}
    for index, request in enumerate(receiver.requests):
        position.setdefault(request.webhook_id, index)
    ids_in_order = [r.webhook_id for r in receiver.delivered()]
    delivered_at = {r.webhook_id: i for i, r in enumerate(receiver.requests) if r.status == 200}
    per_call: dict[str, list[str | None]] = defaultdict(list)
    for request in receiver.delivered():
        per_call[request.data["call_sid"]].append(request.webhook_id)
    for ids in per_call.values():
        for earlier, later in itertools.pairwise(ids):
            assert delivered_at[earlier] < position[later]
    assert len(ids_in_order) == calls * (segments + 2)


async def test_garbage_responses_do_not_crash_the_dispatcher(
    stack: AsyncExitStack, tmp_path: Path
) -> None:
    answers = iter([b"garbage\r\n\r\n", b"HTTP/1.1 20", b"\x00\xff" * 100])
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.read(65536))
        writer.write(next(answers, b"HTTP/1.1 204 No Content\r\n\r\n"))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    stack.push_async_callback(server.wait_closed)
    stack.callback(server.close)
    port = server.sockets[0].getsockname()[1]
    harness = await make_harness(stack, tmp_path, [], targets=[f"http://127.0.0.1:{port}/x"])
    await harness.sink.call_started(call_info("CA1"))
    for _ in range(100):
        if (await harness.store.delivery_counts()).delivered:
            break
        await asyncio.sleep(0.05)
    assert (await harness.store.delivery_counts()).delivered == 1
    assert len(seen) == 4 and harness.dispatcher.stats.retried == 3


async def test_stop_leaves_undelivered_events_pending_for_the_next_start(
    stack: AsyncExitStack, tmp_path: Path
) -> None:
    receiver = WebhookReceiver(secret=SECRET, default=Reply(200, delay_s=0.3))
    harness = await make_harness(stack, tmp_path, [receiver], max_in_flight=1)
    await harness.run_call("CA1", 3)
    await receiver.wait_for(1, timeout=5)
    await harness.dispatcher.stop(timeout=2)  # the in-flight request finishes
    counts = await harness.store.delivery_counts()
    assert counts.delivered >= 1 and counts.pending == 5 - counts.delivered
    receiver.set_default(200)
    settings = WebhookSettings(urls=(receiver.url,), secret=SECRET)
    again = WebhookDispatcher(harness.store, settings, poll_interval_s=0.2)
    await again.start()
    stack.push_async_callback(again.stop, 2.0)
    await receiver.wait_for(5, timeout=5, predicate=lambda r: r.status == 200)
    assert sequences(receiver.delivered()) == expected_sequence(3)


async def test_stop_with_a_hung_target_releases_the_lease(
    stack: AsyncExitStack, tmp_path: Path
) -> None:
    receiver = WebhookReceiver(secret=SECRET, default=Reply(200, delay_s=30))
    harness = await make_harness(stack, tmp_path, [receiver], timeout_s=60)
    await harness.sink.call_started(call_info("CA1"))
    await receiver.wait_for(1, timeout=5)
    started = time.perf_counter()
    await harness.dispatcher.stop(timeout=0.2)
    assert time.perf_counter() - started < 2
    claimed = await harness.store.claim_deliveries(datetime.now(UTC), 10, "next", 60)
    assert len(claimed) == 1  # released, not stuck behind a lease


async def test_unsigned_without_a_secret(stack: AsyncExitStack, tmp_path: Path) -> None:
    harness = await make_harness(stack, tmp_path, secret="")
    await harness.sink.call_started(call_info("CA1"))
    (request,) = await harness.receivers[0].wait_for(1, timeout=5)
    assert "webhook-signature" not in request.headers
    assert request.webhook_id and request.headers["webhook-timestamp"].isdigit()


async def test_a_failing_summary_still_ends_the_call(stack: AsyncExitStack, tmp_path: Path) -> None:
    harness = await make_harness(stack, tmp_path)

    def broken(ended: CallEnded, segments: Sequence[CommittedSegment]) -> dict[str, Any]:
        raise RuntimeError("boom")

    sink = StoreSink(harness.store, broken, harness.dispatcher.notify)
    await sink.call_ended(call_end("CA1", 0))
    (request,) = await harness.receivers[0].wait_for(1, timeout=5)
    assert request.data["summary"]["error"] == "summary_failed"
    record = await harness.store.get_call("CA1")
    assert record is not None and record.summary is not None


async def test_deliveries_are_claimed_on_notify_and_after_each_finish_not_on_the_poll(
    stack: AsyncExitStack, tmp_path: Path
) -> None:
    """A new event is looked for when the writer notifies the dispatcher; a call's next
    event when the one before it finishes. Neither waits for the poll (30 s here)."""
    receiver = WebhookReceiver(secret=SECRET)
    await stack.enter_async_context(receiver)
    store = open_store(f"sqlite:///{tmp_path / 'cb.db'}", webhook_targets=[receiver.url])
    await store.open()
    stack.push_async_callback(store.close)
    settings = WebhookSettings(urls=(receiver.url,), secret=SECRET)
    dispatcher = WebhookDispatcher(store, settings, poll_interval_s=30.0)
    await dispatcher.start()
    stack.push_async_callback(dispatcher.stop, 2.0)
    await asyncio.sleep(0.1)  # the start-up claim query has found nothing

    silent = StoreSink(store, summarize)  # commits without telling the dispatcher
    await silent.call_started(call_info("CA0"))
    await asyncio.sleep(0.5)
    assert receiver.requests == []  # nothing looks before the poll
    dispatcher.notify()
    await receiver.wait_for(1, timeout=2)

    harness = Harness(store, dispatcher, StoreSink(store, summarize, dispatcher.notify))
    started = time.perf_counter()
    await asyncio.gather(*(harness.run_call(f"CA{n}", 3) for n in range(1, 6)))
    await receiver.wait_for(26, timeout=5)
    assert time.perf_counter() - started < 5.0
    for n in range(1, 6):
        calls = [r for r in receiver.requests if r.data["call_sid"] == f"CA{n}"]
        assert sequences(calls) == expected_sequence(3)
    assert len({r.webhook_id for r in receiver.requests}) == 26 == len(receiver.requests)


async def test_deliveries_beyond_max_in_flight_wait_their_turn(
    stack: AsyncExitStack, tmp_path: Path
) -> None:
    receiver = WebhookReceiver(secret=SECRET, default=Reply(200, delay_s=0.05))
    harness = await make_harness(stack, tmp_path, [receiver], max_in_flight=2)
    await asyncio.gather(*(harness.run_call(f"CA{n}", 2) for n in range(6)))
    await receiver.wait_for(24, timeout=10)
    assert receiver.max_concurrent <= 2
    for n in range(6):
        calls = [r for r in receiver.requests if r.data["call_sid"] == f"CA{n}"]
        assert sequences(calls) == expected_sequence(2)


async def test_deliveries_left_to_the_claim_query_never_wait_for_the_poll(
    stack: AsyncExitStack, tmp_path: Path
) -> None:
    """With every slot busy, the claim query finds more than it can take. It must run again as
    slots free up, however many are waiting, not on the next poll (made 30 s long here)."""
    receiver = WebhookReceiver(secret=SECRET, default=Reply(200, delay_s=0.02))
    await stack.enter_async_context(receiver)
    store = open_store(f"sqlite:///{tmp_path / 'cb.db'}", webhook_targets=[receiver.url])
    await store.open()
    stack.push_async_callback(store.close)
    settings = WebhookSettings(urls=(receiver.url,), secret=SECRET, max_in_flight=2)
    dispatcher = WebhookDispatcher(store, settings, poll_interval_s=30.0)
    await dispatcher.start()
    stack.push_async_callback(dispatcher.stop, 2.0)
    harness = Harness(store, dispatcher, StoreSink(store, summarize, dispatcher.notify))
    started = time.perf_counter()
    await asyncio.gather(*(harness.run_call(f"CA{n}", 3) for n in range(8)))
    await receiver.wait_for(40, timeout=10)
    assert time.perf_counter() - started < 5.0
    assert receiver.max_concurrent <= 2
    for n in range(8):
        calls = [r for r in receiver.requests if r.data["call_sid"] == f"CA{n}"]
        assert sequences(calls) == expected_sequence(3)
