"""Limits and timeouts: a cap on calls, start and media timeouts, the longest call, websocket
heartbeats, and request head and body deadlines (slowloris), each against the real bridge."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from callbridge.config import Settings
from callbridge.context import REGISTRY
from callbridge.testing.scribe_emulator import ScribeEmulator
from callbridge.testing.twilio_simulator import SimulatorHandshakeError
from tests.bridge_harness import RunningBridge, bridge_settings, free_port, running_bridge
from tests.test_bridge_e2e import track, wait_ended


@pytest.fixture
async def emulator() -> AsyncIterator[ScribeEmulator]:
    async with ScribeEmulator(api_key="test-key", transcriber="tones") as emu:
        yield emu


def limited(tmp_path: Path, emulator: ScribeEmulator, **limits: Any) -> Settings:
    settings = bridge_settings(tmp_path, emulator.url, free_port())
    return settings.replace(limits=dataclasses.replace(settings.limits, **limits))


async def healthz(bridge: RunningBridge) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{bridge.base_url}/healthz") as response,
    ):
        body: dict[str, Any] = await response.json()
        return body


async def wait_live(bridge: RunningBridge, count: int) -> None:
    for _ in range(200):
        if bridge.live_calls == count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{bridge.live_calls} live calls, not {count}")


# --- media sockets ---------------------------------------------------------------------------


async def test_a_socket_beyond_max_calls_is_refused_503_before_the_upgrade_and_counted(
    tmp_path: Path, emulator: ScribeEmulator
) -> None:
    async with running_bridge(limited(tmp_path, emulator, max_calls=2)) as bridge:
        first, second = bridge.simulator(), bridge.simulator()
        for sim in (first, second):
            await sim.connect()
            await sim.send_start()
        await wait_live(bridge, 2)
        third = bridge.simulator()
        with pytest.raises(SimulatorHandshakeError) as refused:
            await third.connect()
        assert refused.value.status == 503
        health = await healthz(bridge)
        assert health["refused"] == {"max_calls": 1} and health["max_calls"] == 2
        assert health["media_sockets"] == 2 and health["live_calls"] == 2
        # One ends: there is room again.
        await first.send_stop()
        await first.close()
        await wait_ended(bridge, first.call_sid)
        await wait_live(bridge, 1)
        fourth = bridge.simulator()
        await fourth.run(track(800, [(100, [500])], seed=1), speed=0)
        await wait_ended(bridge, fourth.call_sid)
        await second.close()


@pytest.mark.parametrize("sends", ["nothing", "connected"])
async def test_a_socket_that_sends_no_start_is_closed_1008_in_time(
    tmp_path: Path, emulator: ScribeEmulator, sends: str
) -> None:
    async with running_bridge(limited(tmp_path, emulator, start_timeout_s=0.5)) as bridge:
        sim = bridge.simulator()
        await sim.connect()
        started = time.monotonic()
        if sends == "connected":
            await sim.send_connected()
        assert await sim.wait_closed(5.0), "the socket was kept open without a start"
        assert time.monotonic() - started < 3.0
        await sim.close()
        assert (sim.close_code, sim.close_reason) == (1008, "no start within 0.5 s")
        assert bridge.app[REGISTRY].refused["start_timeout"] == 1
        assert bridge.app[REGISTRY].sockets == 0 and emulator.sessions == []


async def test_a_started_stream_without_media_ends_with_reason_timeout(
    tmp_path: Path, emulator: ScribeEmulator
) -> None:
    async with running_bridge(limited(tmp_path, emulator, media_timeout_s=1.0)) as bridge:
        sim = bridge.simulator()
        await sim.connect()
        await sim.send_start(("inbound",))
        await sim.send_frames(track(1500, [(200, [500, 550])], seed=2), speed=0)
        silent_from = time.monotonic()  # then nothing: no media, no stop, no close
        assert await sim.wait_closed(6.0), "a stream without media was kept open"
        assert time.monotonic() - silent_from < 4.0
        await sim.close()
        assert (sim.close_code, sim.close_reason) == (1000, "no media for 1 s")
        await wait_ended(bridge, sim.call_sid)
        record = await bridge.store.get_call(sim.call_sid)
        assert record is not None and record.end_reason == "timeout"
        segments = await bridge.store.get_segments(sim.call_sid)
        assert " ".join(s.text for s in segments).split() == ["tone500", "tone550"]
        assert all(session.closed for session in emulator.sessions)  # no keepalive forever


async def test_a_call_longer_than_max_call_s_ends_with_reason_max_duration(
    tmp_path: Path, emulator: ScribeEmulator
) -> None:
    async with running_bridge(limited(tmp_path, emulator, max_call_s=1.5)) as bridge:
        sim = bridge.simulator()
        audio = track(6000, [(100, [500, 550]), (4500, [700])], seed=3)
        started = time.monotonic()
        result = await sim.run(audio, speed=1.0)  # real time: the call would last 6 s
        assert result.server_closed_early and time.monotonic() - started < 4.5
        assert (result.close_code, result.close_reason) == (1000, "call longer than 1.5 s")
        await wait_ended(bridge, sim.call_sid)
        record = await bridge.store.get_call(sim.call_sid)
        assert record is not None and record.end_reason == "max_duration"
        segments = await bridge.store.get_segments(sim.call_sid)
        assert " ".join(s.text for s in segments).split() == ["tone500", "tone550"]


async def test_a_quiet_media_socket_is_pinged_and_closed_when_it_never_answers(
    tmp_path: Path, emulator: ScribeEmulator
) -> None:
    settings = limited(tmp_path, emulator, ws_heartbeat_s=0.4, media_timeout_s=60.0)
    async with running_bridge(settings) as bridge:
        # A live peer answers the pings (aiohttp's client does): it is never cut.
        alive = bridge.simulator()
        await alive.connect()
        await alive.send_start()
        await asyncio.sleep(1.5)
        assert alive.is_open

        # A dead peer does not: closed within the ping period and half of it again.
        sim = bridge.simulator()
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(
                bridge.ws_url, headers=sim.handshake_headers(), autoping=False, autoclose=False
            )
            start = {
                "event": "start",
                "sequenceNumber": "1",
                "start": {
                    "accountSid": sim.account_sid,
                    "streamSid": sim.stream_sid,
                    "callSid": sim.call_sid,
                    "tracks": ["inbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    "customParameters": sim.custom_parameters,
                },
                "streamSid": sim.stream_sid,
            }
            await ws.send_str(json.dumps(start))
            started = time.monotonic()
            kinds = []
            while not ws.closed and time.monotonic() - started < 5.0:
                message = await ws.receive(timeout=5.0)
                kinds.append(message.type)
                if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    break
            assert aiohttp.WSMsgType.PING in kinds
            assert time.monotonic() - started < 2.0, kinds
            await ws.close()
        await wait_ended(bridge, sim.call_sid)
        assert alive.is_open
        await alive.send_stop()
        await alive.close()


# --- plain HTTP: slowloris -------------------------------------------------------------------


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the server sent until it closed the connection (fails after ``seconds``)."""
    received = b""
    async with asyncio.timeout(seconds):
        try:
            while chunk := await reader.read(4096):
                received += chunk
        except ConnectionResetError:
            # Closed at once, with bytes the client still dripped unread: a reset, not a FIN.
            pass
    return received


@pytest.mark.parametrize("client", ["sends_nothing", "drips_headers"])
async def test_a_connection_without_a_whole_request_head_is_closed_in_time(
    tmp_path: Path, emulator: ScribeEmulator, client: str
) -> None:
    settings = limited(tmp_path, emulator, header_timeout_s=1.0)
    async with running_bridge(settings) as bridge:
        reader, writer = await asyncio.open_connection("127.0.0.1", settings.server.port)
        started = time.monotonic()
        dripping: asyncio.Task[None] | None = None
        if client == "drips_headers":

            async def drip() -> None:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: bridge\r\n")
                for n in range(100):
                    await asyncio.sleep(0.2)
                    writer.write(f"X-Slow-{n}: a\r\n".encode())

            dripping = asyncio.create_task(drip())
        try:
            received = await closed_within(reader, 4.0)
        finally:
            if dripping is not None:
                dripping.cancel()
            writer.close()
        assert time.monotonic() - started < 3.0
        assert b"200 OK" not in received  # the request never got to run
        assert bridge.live_calls == 0


async def test_a_dripped_body_is_408_and_the_connection_closed_in_time(
    tmp_path: Path, emulator: ScribeEmulator
) -> None:
    settings = limited(tmp_path, emulator, body_timeout_s=1.0)
    async with running_bridge(settings) as bridge:
        reader, writer = await asyncio.open_connection("127.0.0.1", settings.server.port)
        writer.write(
            b"POST /twilio/status HTTP/1.1\r\nHost: bridge\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 500\r\n\r\n"
        )
        started = time.monotonic()

        async def drip() -> None:
            for _ in range(500):
                writer.write(b"a")
                await asyncio.sleep(0.1)

        dripping = asyncio.create_task(drip())
        try:
            received = await closed_within(reader, 5.0)
        finally:
            dripping.cancel()
            writer.close()
        assert time.monotonic() - started < 3.5
        assert received.startswith(b"HTTP/1.1 408") and b"body_timeout" in received
        assert bridge.app[REGISTRY].sockets == 0


async def test_the_deadlines_do_not_cut_a_long_call_or_a_prompt_request(
    tmp_path: Path, emulator: ScribeEmulator
) -> None:
    settings = limited(tmp_path, emulator, header_timeout_s=0.5, body_timeout_s=0.5)
    async with running_bridge(settings) as bridge:
        sim = bridge.simulator()
        audio = track(2000, [(200, [500, 550])], seed=4)
        result = await sim.run(audio, speed=1.0)  # 2 s on one connection: four deadlines
        assert not result.server_closed_early and result.close_code == 1000
        await wait_ended(bridge, sim.call_sid)
        assert (await healthz(bridge))["status"] == "ok"
