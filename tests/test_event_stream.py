"""``GET /v1/calls/{sid}/events`` through the real bridge: replay, live, resume, bounds."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from callbridge.config import Settings
from callbridge.context import LIVE_FEED, STORE
from callbridge.jobs.model import NewJob
from callbridge.models import CommittedSegment, Track, utc_now
from callbridge.store.base import StoredEvent
from callbridge.testing.scribe_emulator import ScribeEmulator
from callbridge.testing.webhook_receiver import WebhookReceiver
from callbridge.webhooks.events import call_summarized_event, transcript_committed_event
from tests.bridge_harness import (
    API_TOKEN,
    RunningBridge,
    bridge_settings,
    free_port,
    running_bridge,
)
from tests.live_call import play_ended_call, started_call, two_party_call
from tests.sse import SseMessage, SseReader

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def settings_for(tmp_path: Path, emulator: ScribeEmulator, **api: object) -> Settings:
    settings = bridge_settings(tmp_path, emulator.url, free_port())
    return settings.replace(api=dataclasses.replace(settings.api, **api))


@pytest.fixture
async def emulator() -> AsyncIterator[ScribeEmulator]:
    async with ScribeEmulator(api_key="test-key", transcriber="tones") as emu:
        yield emu


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def open_stream(
    http: aiohttp.ClientSession, bridge: RunningBridge, call_sid: str, **headers: str
) -> SseReader:
    response = await http.get(
        f"{bridge.base_url}/v1/calls/{call_sid}/events", headers={**AUTH, **headers}
    )
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert "no-cache" in response.headers["Cache-Control"]
    return SseReader(response)


# --- replay and the exact webhook bytes --------------------------------------------------


async def test_an_ended_call_replays_exactly_the_webhook_events_then_ends(
    tmp_path: Path, emulator: ScribeEmulator, http: aiohttp.ClientSession
) -> None:
    async with WebhookReceiver() as receiver:
        settings = bridge_settings(tmp_path, emulator.url, free_port(), webhook_urls=[receiver.url])
        async with running_bridge(settings) as bridge:
            call_sid = await play_ended_call(bridge)
            await receiver.wait_for(5, timeout=10)  # started, three segments, ended
            reader = await open_stream(http, bridge, call_sid)
            messages = await asyncio.wait_for(reader.collect(), 10)  # returns: the stream ended
    assert reader.retry == 3000
    webhooks = receiver.delivered()
    assert [m.id for m in messages] == [w.webhook_id for w in webhooks]
    assert [m.event for m in messages] == [w.event_type for w in webhooks]
    assert [m.data.encode() for m in messages] == [w.body for w in webhooks]
    assert [m.event for m in messages] == ["call.started"] + ["transcript.committed"] * 3 + [
        "call.ended"
    ]
    speakers = [json.loads(m.data)["data"]["speaker"] for m in messages[1:4]]
    assert speakers == ["caller", "agent", "caller"]


async def test_last_event_id_resumes_after_that_event_and_204_after_the_last(
    tmp_path: Path, emulator: ScribeEmulator, http: aiohttp.ClientSession
) -> None:
    async with running_bridge(bridge_settings(tmp_path, emulator.url, free_port())) as bridge:
        call_sid = await play_ended_call(bridge)
        everything = await (await open_stream(http, bridge, call_sid)).collect()
        assert len(everything) == 5

        resumed = await (
            await open_stream(http, bridge, call_sid, **{"Last-Event-ID": str(everything[1].id)})
        ).collect()
        assert [m.id for m in resumed] == [m.id for m in everything[2:]]

        url = f"{bridge.base_url}/v1/calls/{call_sid}/events"
        after_last = await http.get(url, headers={**AUTH, "Last-Event-ID": str(everything[-1].id)})
        assert after_last.status == 204  # nothing more will come: EventSource stops

        unknown = await http.get(url, headers={**AUTH, "Last-Event-ID": "evt_not_this_calls"})
        assert unknown.status == 400
        assert (await unknown.json())["error"]["code"] == "unknown_event_id"


async def test_a_pending_ai_summary_keeps_the_stream_until_call_summarized(
    tmp_path: Path, emulator: ScribeEmulator, http: aiohttp.ClientSession
) -> None:
    async with running_bridge(bridge_settings(tmp_path, emulator.url, free_port())) as bridge:
        call_sid = await play_ended_call(bridge)
        assert await bridge.store.set_ai_summary(call_sid, {"status": "pending"}, [])
        reader = await open_stream(http, bridge, call_sid)
        messages = reader.messages()
        replayed = [await asyncio.wait_for(anext(messages), 5) for _ in range(5)]
        assert replayed[-1].event == "call.ended"
        following = asyncio.ensure_future(anext(messages))
        await asyncio.sleep(0.3)
        assert not following.done()  # still open: the AI summary is on its way
        ready = {"status": "ready", "gist": "A parcel went missing."}
        summarized = call_summarized_event(call_sid, ready)
        assert await bridge.store.set_ai_summary(call_sid, ready, [summarized])
        last = await asyncio.wait_for(following, 5)
        assert (last.event, last.id) == ("call.summarized", summarized.event_id)
        assert last.data.encode() == summarized.body
        assert await asyncio.wait_for(reader.collect(), 5) == []  # and then it ends
        url = f"{bridge.base_url}/v1/calls/{call_sid}/events"
        again = await http.get(url, headers={**AUTH, "Last-Event-ID": summarized.event_id})
        assert again.status == 204


async def test_unfinished_post_call_jobs_keep_the_stream_until_they_are_done(
    tmp_path: Path, emulator: ScribeEmulator, http: aiohttp.ClientSession
) -> None:
    settings = settings_for(tmp_path, emulator, events_poll_s=0.1)
    async with running_bridge(settings) as bridge:
        call_sid = await play_ended_call(bridge)
        jobs = bridge.app[STORE].jobs
        now = utc_now()
        await jobs.enqueue([NewJob("test_postcall", call_sid)], now)
        reader = await open_stream(http, bridge, call_sid)
        collecting = asyncio.ensure_future(reader.collect())
        await asyncio.sleep(0.5)
        assert not collecting.done()  # replayed through call.ended, and waiting
        [job] = await jobs.claim("test_postcall", now, 1, "test-runner", 60)
        await asyncio.sleep(0.3)
        assert not collecting.done()  # running is not done
        assert await jobs.complete(job.job_id, "test-runner", now)
        replayed = await asyncio.wait_for(collecting, 5)  # ends soon after the work is done
        assert [m.event for m in replayed][-1] == "call.ended"


async def test_refusals_are_json_errors(
    tmp_path: Path, emulator: ScribeEmulator, http: aiohttp.ClientSession
) -> None:
    async with running_bridge(bridge_settings(tmp_path, emulator.url, free_port())) as bridge:
        url = f"{bridge.base_url}/v1/calls/CA{'0' * 32}/events"
        assert (await http.get(url)).status == 401
        assert (await http.get(url, headers={"Authorization": "Bearer nope"})).status == 401
        missing = await http.get(url, headers=AUTH)
        assert missing.status == 404
        assert (await missing.json())["error"]["code"] == "call_not_found"
        bad_query = await http.get(url + "?from=1", headers=AUTH)
        assert bad_query.status == 400
        assert (await bad_query.json())["error"]["code"] == "invalid_query"


# --- live ---------------------------------------------------------------------------------


def tone_speaker(text: str) -> str:
    """Who said these tone words: the caller's are below 1000 Hz, the agent's above."""
    frequencies = {int(word.removeprefix("tone")) for word in text.split()}
    assert frequencies, text
    speakers = {"caller" if f < 1000 else "agent" for f in frequencies}
    assert len(speakers) == 1, text
    return speakers.pop()


async def test_a_live_call_streams_each_event_as_it_is_committed_and_its_partials(
    tmp_path: Path, emulator: ScribeEmulator, http: aiohttp.ClientSession
) -> None:
    async with running_bridge(bridge_settings(tmp_path, emulator.url, free_port())) as bridge:
        caller, agent = two_party_call()
        sim = await started_call(bridge)
        reader = await open_stream(http, bridge, sim.call_sid)
        messages = reader.messages()
        partials: list[SseMessage] = []

        async def next_stored() -> SseMessage:
            while True:
                message = await asyncio.wait_for(anext(messages), 10)
                if message.event != "transcript.partial":
                    return message
                partials.append(message)

        assert (await next_stored()).event == "call.started"
        half = len(caller) // 2  # the first two turns, then wait with the call live
        resume_at = await sim.send_frames(caller[:half], agent[:half], speed=0)
        first, second = await next_stored(), await next_stored()
        assert (first.event, second.event) == ("transcript.committed", "transcript.committed")
        assert [json.loads(m.data)["data"]["speaker"] for m in (first, second)] == [
            "caller",
            "agent",
        ]
        record = await bridge.store.get_call(sim.call_sid)
        assert record is not None and record.status == "live"  # streamed while live

        await sim.send_frames(caller[half:], agent[half:], speed=0, start_timestamp_ms=resume_at)
        await sim.send_stop()
        rest = [m for m in await asyncio.wait_for(reader.collect(), 10)]
        partials += [m for m in rest if m.event == "transcript.partial"]
        assert [m.event for m in rest if m.event != "transcript.partial"] == [
            "transcript.committed",
            "call.ended",
        ]
        await sim.close()
    # Partials: not stored (no id), and each on the speaker whose words it has so far.
    assert partials
    for partial in partials:
        assert partial.id is None
        body = json.loads(partial.data)
        assert body["type"] == "transcript.partial"
        data = body["data"]
        assert data["call_sid"] == sim.call_sid
        assert data["speaker"] == tone_speaker(data["text"])
        assert data["track"] == ("inbound" if data["speaker"] == "caller" else "outbound")


async def test_a_call_held_by_another_process_streams_through_the_store(
    tmp_path: Path, emulator: ScribeEmulator, http: aiohttp.ClientSession
) -> None:
    # Two bridges on one database: the call lives in the first, the client asks the second.
    first = settings_for(tmp_path, emulator, events_poll_s=0.05)
    second = first.replace(
        server=dataclasses.replace(first.server, port=free_port()),
    )
    async with running_bridge(first) as holder, running_bridge(second) as other:
        caller, agent = two_party_call()
        sim = await started_call(holder, seen_by=other)
        reader = await open_stream(http, other, sim.call_sid)
        messages = reader.messages()
        assert (await asyncio.wait_for(anext(messages), 5)).event == "call.started"
        await sim.send_frames(caller, agent, speed=0)
        segment = await asyncio.wait_for(anext(messages), 10)
        assert segment.event == "transcript.committed"
        await sim.send_stop()
        rest = await asyncio.wait_for(reader.collect(), 10)
        assert [m.event for m in rest][-1] == "call.ended"
        assert len(rest) == 3  # two more segments, then the end; no partials from afar
        await sim.close()


async def test_an_idle_stream_gets_heartbeat_comments(
    tmp_path: Path, emulator: ScribeEmulator, http: aiohttp.ClientSession
) -> None:
    settings = settings_for(tmp_path, emulator, events_heartbeat_s=0.1)
    async with running_bridge(settings) as bridge:
        await bridge.store.call_requested("CA" + "7" * 32, None, None, None)  # ringing
        reader = await open_stream(http, bridge, "CA" + "7" * 32)

        async def first_heartbeat() -> bytes:
            while True:
                line = await reader.response.content.readline()
                if line.startswith(b":"):
                    return line

        assert await asyncio.wait_for(first_heartbeat(), 5) == b": keep-alive\n"
        reader.response.close()


async def test_erasing_the_call_ends_its_streams(
    tmp_path: Path, emulator: ScribeEmulator, http: aiohttp.ClientSession
) -> None:
    settings = settings_for(tmp_path, emulator, events_poll_s=0.05)
    async with running_bridge(settings) as bridge:
        call_sid = "CA" + "5" * 32
        await bridge.store.call_requested(call_sid, None, None, None)
        reader = await open_stream(http, bridge, call_sid)
        collecting = asyncio.ensure_future(reader.collect())
        await asyncio.sleep(0.2)
        assert not collecting.done()
        deleted = await http.delete(f"{bridge.base_url}/v1/calls/{call_sid}", headers=AUTH)
        assert deleted.status == 204
        assert await asyncio.wait_for(collecting, 5) == []


# --- bounded cost and buffering -------------------------------------------------------------


def big_segment(call_sid: str, sequence: int, size: int) -> CommittedSegment:
    return CommittedSegment(
        call_sid=call_sid,
        stream_sid="MZ" + call_sid[2:],
        sequence=sequence,
        speaker="caller",
        track=Track.INBOUND,
        text="word " * (size // 5),
        start_ms=sequence * 1000,
        end_ms=sequence * 1000 + 500,
        language_code="en",
    )


def small_window_socket(addr_info: tuple[Any, ...]) -> socket.socket:
    """A client socket whose receive buffer stays at 8 KiB (no autotuning up to 32 MB)."""
    sock = socket.socket(addr_info[0], addr_info[1], addr_info[2])
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    return sock


async def test_a_client_that_does_not_read_is_dropped_not_buffered(
    tmp_path: Path, emulator: ScribeEmulator
) -> None:
    settings = settings_for(tmp_path, emulator, events_buffer=4, events_write_timeout_s=60.0)
    connector = aiohttp.TCPConnector(socket_factory=small_window_socket)
    client = aiohttp.ClientSession(connector=connector)
    async with running_bridge(settings) as bridge, client as http:
        call_sid = "CA" + "6" * 32
        await bridge.store.call_requested(call_sid, None, None, None)
        feed = bridge.app[LIVE_FEED]
        response = await http.get(f"{bridge.base_url}/v1/calls/{call_sid}/events", headers=AUTH)
        assert response.status == 200
        for _ in range(100):
            if feed.subscribers:
                break
            await asyncio.sleep(0.01)
        # 12 MB of events while the client reads nothing: the socket buffers fill (4 MB at
        # most on the server's side), the server's write blocks, the client's buffer of 4
        # events overflows and it is dropped.
        stored = 0
        for sequence in range(1, 97):
            segment = big_segment(call_sid, sequence, 128 * 1024)
            await bridge.store.segment_committed(segment, [transcript_committed_event(segment)])
            stored += len(segment.text)
            await asyncio.sleep(0.001)
            if not feed.subscribers:
                break
        for _ in range(200):
            if not feed.subscribers:
                break
            await asyncio.sleep(0.02)
        assert feed.subscribers == 0
        received = 0
        with contextlib.suppress(aiohttp.ClientPayloadError):
            while chunk := await response.content.read(1 << 20):
                received += len(chunk)
        assert received < stored  # the stream was cut, not buffered to the end


async def test_many_clients_of_one_call_cost_one_query_per_fetch(
    tmp_path: Path, emulator: ScribeEmulator, http: aiohttp.ClientSession
) -> None:
    settings = settings_for(tmp_path, emulator, events_poll_s=30.0)
    async with running_bridge(settings) as bridge:
        call_sid = "CA" + "8" * 32
        await bridge.store.call_requested(call_sid, None, None, None)
        store = bridge.app[LIVE_FEED]._store
        queries: list[int] = []
        real = store.events_after

        async def counted(
            positions: dict[str, int], limit: int
        ) -> dict[str, list[StoredEvent] | None]:
            queries.append(len(positions))
            return await real(positions, limit)

        store.events_after = counted  # type: ignore[method-assign]
        readers = [await open_stream(http, bridge, call_sid) for _ in range(20)]
        feed = bridge.app[LIVE_FEED]
        for _ in range(100):
            if feed.subscribers == 20:
                break
            await asyncio.sleep(0.01)
        before = len(queries)
        streams = [r.messages() for r in readers]
        for sequence in range(1, 6):
            segment = big_segment(call_sid, sequence, 100)
            await bridge.store.segment_committed(segment, [transcript_committed_event(segment)])
            got: list[SseMessage] = await asyncio.wait_for(
                asyncio.gather(*(anext(s) for s in streams)), 5
            )
            assert {m.id for m in got} == {got[0].id}
        # The feed read each new event once for all 20 clients.
        assert len(queries) - before <= 5
        for reader in readers:
            reader.response.close()


# --- listing live calls ------------------------------------------------------------------


async def test_list_live_calls(
    tmp_path: Path, emulator: ScribeEmulator, http: aiohttp.ClientSession
) -> None:
    async with running_bridge(bridge_settings(tmp_path, emulator.url, free_port())) as bridge:
        ended_sid = await play_ended_call(bridge)
        sim = await started_call(bridge)
        listed = await http.get(f"{bridge.base_url}/v1/calls?status=live", headers=AUTH)
        live = await listed.json()
        assert [c["call_sid"] for c in live["calls"]] == [sim.call_sid]
        ended = await (
            await http.get(f"{bridge.base_url}/v1/calls?status=ended", headers=AUTH)
        ).json()
        assert [c["call_sid"] for c in ended["calls"]] == [ended_sid]
        bad = await http.get(f"{bridge.base_url}/v1/calls?status=busy", headers=AUTH)
        assert bad.status == 400
        assert (await bad.json())["error"]["code"] == "invalid_status"
        await sim.send_stop()
        await sim.close()
