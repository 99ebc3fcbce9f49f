"""Hostile media streams: the per-call stream token, ended calls, and live calls elsewhere.

The media socket's handshake signature is the same for every call (Twilio signs the fixed
``<Stream url>``), so these tests replay a valid handshake, as an attacker who saw one would,
and check that only the call's own ``cb_token`` opens a stream, that an ended call stays as it
ended, and that a call live in one process cannot be opened in another sharing the store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from callbridge.context import CLAIMS, REGISTRY
from callbridge.models import Track
from callbridge.store.base import CallStatus, StoreError
from callbridge.testing.scribe_emulator import ScribeEmulator
from callbridge.testing.twilio_simulator import (
    TwilioCallSimulator,
    new_call_sid,
    sign_request,
)
from callbridge.testing.webhook_receiver import WebhookReceiver
from callbridge.twilio.stream_auth import stream_token
from tests.bridge_harness import (
    AUTH_TOKEN,
    STREAM_SECRET,
    RunningBridge,
    bridge_settings,
    free_port,
    running_bridge,
)
from tests.test_bridge_e2e import track, wait_ended

POLICY_VIOLATION = 1008
SECRET = "whsec_" + "c2VjdXJpdHktdGVzdC1zZWNyZXQtMDEyMzQ1Njc4OQ=="


@pytest.fixture
async def emulator() -> AsyncIterator[ScribeEmulator]:
    async with ScribeEmulator(api_key="test-key", transcriber="tones") as emu:
        yield emu


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver(secret=SECRET) as hooks:
        yield hooks


def speech(seed: int, base: int = 500) -> bytes:
    return track(2400, [(200, [base, base + 50, base + 100])], seed=seed)


async def refused_start(
    bridge: RunningBridge, call_sid: str, **kwargs: Any
) -> tuple[int | None, str | None]:
    """Open a stream, send start and a little audio; the close code and reason."""
    sim = bridge.simulator(call_sid=call_sid, **kwargs)
    await sim.connect()
    await sim.send_start()
    await sim.send_frames(speech(seed=9), speed=0)
    assert await sim.wait_closed(5.0), "the bridge kept a refused stream open"
    await sim.close()
    return sim.close_code, sim.close_reason


@pytest.mark.parametrize("token", ["missing", "other_call", "other_account", "other_secret"])
async def test_a_start_without_the_calls_own_token_is_refused(
    tmp_path: Path, emulator: ScribeEmulator, token: str
) -> None:
    settings = bridge_settings(tmp_path, emulator.url, free_port())
    async with running_bridge(settings) as bridge:
        call_sid, account_sid = new_call_sid(), "AC" + "1" * 32
        presented = {
            "missing": None,
            "other_call": stream_token(STREAM_SECRET, account_sid, new_call_sid()),
            "other_account": stream_token(STREAM_SECRET, "AC" + "2" * 32, call_sid),
            "other_secret": stream_token("not-the-bridge-secret", account_sid, call_sid),
        }[token]
        params = {"campaign": "x"} | ({"cb_token": presented} if presented else {})
        code, reason = await refused_start(
            bridge,
            call_sid,
            account_sid=account_sid,
            custom_parameters=params,
            stream_secret=None,
        )
        assert code == POLICY_VIOLATION
        assert reason is not None and "cb_token" in reason
        # Refused before any work: no row, no Scribe session.
        assert await bridge.store.get_call(call_sid) is None
        assert emulator.sessions == []
        assert bridge.app[REGISTRY].refused["stream_token"] == 1


async def test_a_replayed_start_for_an_ended_call_is_refused_and_changes_nothing(
    tmp_path: Path, emulator: ScribeEmulator, receiver: WebhookReceiver
) -> None:
    settings = bridge_settings(
        tmp_path, emulator.url, free_port(), webhook_urls=[receiver.url], webhook_secret=SECRET
    )
    async with running_bridge(settings) as bridge:
        call_sid, account_sid = new_call_sid(), "AC" + "3" * 32
        token = stream_token(STREAM_SECRET, account_sid, call_sid)
        genuine = bridge.simulator(
            call_sid=call_sid,
            account_sid=account_sid,
            custom_parameters={
                "cb_token": token,
                "cb_from": "+15550001111",
                "cb_to": "+15550002222",
                "campaign": "spring",
            },
        )
        await genuine.run(speech(seed=1), speed=0)
        await wait_ended(bridge, call_sid)
        await receiver.wait_for(3, timeout=10)  # call.started, one segment, call.ended
        before = await bridge.store.get_call(call_sid)
        transcript_before = await bridge.store.get_segments(call_sid)
        assert before is not None and before.status == CallStatus.ENDED
        assert len(transcript_before) == 1

        # The whole start replayed (its cb_token included), with other parties and audio.
        code, reason = await refused_start(
            bridge,
            call_sid,
            account_sid=account_sid,
            custom_parameters={
                "cb_token": token,
                "cb_from": "+19990000000",
                "campaign": "forged",
            },
        )
        assert code == POLICY_VIOLATION and reason == "this call has ended"
        await asyncio.sleep(0.3)
        assert await bridge.store.get_call(call_sid) == before
        assert await bridge.store.get_segments(call_sid) == transcript_before
        kinds = [request.event_type for request in receiver.requests]
        assert kinds == ["call.started", "transcript.committed", "call.ended"]
        assert len(emulator.sessions) == 1


async def test_a_call_live_in_one_process_is_refused_in_another(
    tmp_path: Path, emulator: ScribeEmulator
) -> None:
    """Two bridges on one database are two processes sharing the store (as
    ``serve --workers 2`` is, or two machines on one PostgreSQL)."""
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(
            running_bridge(bridge_settings(tmp_path, emulator.url, free_port()))
        )
        second = await stack.enter_async_context(
            running_bridge(bridge_settings(tmp_path, emulator.url, free_port()))
        )
        call_sid = new_call_sid()
        live = first.simulator(call_sid=call_sid)
        await live.connect()
        await live.send_start()
        audio = speech(seed=2)
        half = len(audio) // 2
        await live.send_frames(audio[:half], speed=0)
        for _ in range(100):
            if first.live_calls == 1:
                break
            await asyncio.sleep(0.02)

        code, reason = await refused_start(second, call_sid)
        assert code == POLICY_VIOLATION
        assert reason == "this call has a live media stream in another process"
        assert second.live_calls == 0

        # The live call is unharmed: it carries on and ends normally in the first process.
        await live.send_frames(audio[half:], speed=0, start_timestamp_ms=half // 8)
        await live.send_stop()
        await live.close()
        await wait_ended(first, call_sid)
        record = await first.store.get_call(call_sid)
        assert record is not None and record.end_reason == "stop"
        segments = await first.store.get_segments(call_sid)
        assert " ".join(s.text for s in segments).split() == ["tone500", "tone550", "tone600"]
        assert live.close_code == 1000 and not live.server_closed

        # And once it has ended, neither process opens it again.
        code, reason = await refused_start(second, call_sid)
        assert (code, reason) == (POLICY_VIOLATION, "this call has ended")


@dataclasses.dataclass(frozen=True)
class CapturedRequest:
    """A signed Twilio request as it went over the wire, to be sent again byte for byte."""

    body: bytes
    headers: dict[str, str]

    @classmethod
    def status_callback(cls, bridge: RunningBridge, **params: str) -> CapturedRequest:
        url = bridge.settings.server.public_url + "/twilio/status"
        body = urlencode(params).encode()
        return cls(
            body,
            {
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Twilio-Signature": sign_request(AUTH_TOKEN, url, params),
            },
        )

    async def send(self, http: aiohttp.ClientSession, bridge: RunningBridge) -> int:
        url = bridge.base_url + "/twilio/status"
        async with http.post(url, data=self.body, headers=self.headers) as response:
            return response.status


@pytest.mark.parametrize("ended_by", ["status_callback", "stream_stop"])
async def test_a_replayed_status_callback_changes_nothing(
    tmp_path: Path, emulator: ScribeEmulator, receiver: WebhookReceiver, ended_by: str
) -> None:
    """Twilio's HTTP signatures carry no time or nonce, so whoever captured a status callback
    can send it again at will. Replayed after the call's end, every one of them (the final
    ``completed``, an earlier ``in-progress``, the stream's ``stream-stopped``) is accepted
    and changes nothing: no second ``call.ended``, no event, the call's row as it was."""
    settings = bridge_settings(
        tmp_path, emulator.url, free_port(), webhook_urls=[receiver.url], webhook_secret=SECRET
    )
    async with running_bridge(settings) as bridge, aiohttp.ClientSession() as http:
        call_sid, account_sid = new_call_sid(), "AC" + "4" * 32
        sim = bridge.simulator(call_sid=call_sid, account_sid=account_sid)
        call = {"CallSid": call_sid, "AccountSid": account_sid}
        in_progress = CapturedRequest.status_callback(bridge, **call, CallStatus="in-progress")
        completed = CapturedRequest.status_callback(
            bridge, **call, CallStatus="completed", CallDuration="7"
        )
        stream_stopped = CapturedRequest.status_callback(
            bridge,
            **call,
            StreamSid=sim.stream_sid,
            StreamName="callbridge",
            StreamEvent="stream-stopped",
            Timestamp="Tue, 01 Sep 2026 12:00:00 +0000",
        )

        await sim.connect()
        await sim.send_start()
        assert await in_progress.send(http, bridge) == 204
        await sim.send_frames(speech(seed=5), speed=0)
        if ended_by == "stream_stop":
            await sim.send_stop()
            await sim.close()
            await wait_ended(bridge, call_sid)
            assert await stream_stopped.send(http, bridge) == 204
            assert await completed.send(http, bridge) == 204
        else:  # Twilio's completed comes first and ends the live call
            assert await completed.send(http, bridge) == 204
            assert await sim.wait_closed(5.0)
            await sim.close()
            await wait_ended(bridge, call_sid)
            assert await stream_stopped.send(http, bridge) == 204
        await receiver.wait_for(3, timeout=10)  # call.started, one segment, call.ended
        await asyncio.sleep(0.3)
        before = await bridge.store.get_call(call_sid)
        assert before is not None and before.status == CallStatus.ENDED
        assert before.twilio_status == "completed" and before.twilio_duration_s == 7
        assert before.end_reason == ("stop" if ended_by == "stream_stop" else "completed")
        segments_before = await bridge.store.get_segments(call_sid)
        events_before = await bridge.store.events_after({call_sid: 0}, 100)

        for _ in range(3):
            for captured in (completed, in_progress, stream_stopped):
                assert await captured.send(http, bridge) == 204
        await asyncio.sleep(0.5)  # room for any end-of-call work a replay might set off

        assert await bridge.store.get_call(call_sid) == before
        assert await bridge.store.get_segments(call_sid) == segments_before
        assert await bridge.store.events_after({call_sid: 0}, 100) == events_before
        kinds = [request.event_type for request in receiver.requests]
        assert kinds == ["call.started", "transcript.committed", "call.ended"]
        assert len(emulator.sessions) == 1
        assert bridge.live_calls == 0


def lease(db: Path, call_sid: str) -> tuple[str | None, int | None]:
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT stream_owner, stream_lease_expires_at FROM calls WHERE call_sid = ?",
            (call_sid,),
        ).fetchone()
    return (row[0], row[1]) if row else (None, None)


async def test_one_heartbeat_renews_every_live_call_and_the_end_releases_it(
    tmp_path: Path, emulator: ScribeEmulator
) -> None:
    settings = bridge_settings(tmp_path, emulator.url, free_port())
    settings = settings.replace(server=dataclasses.replace(settings.server, stream_lease_s=0.6))
    db = tmp_path / "bridge.db"
    async with running_bridge(settings) as bridge:
        store = bridge.store
        renewals: list[list[str]] = []
        renew = store.renew_stream_claims

        async def counting(owner: str, call_sids: Any, lease_s: float) -> set[str]:
            renewals.append(sorted(call_sids))
            return await renew(owner, call_sids, lease_s)

        store.renew_stream_claims = counting  # type: ignore[method-assign]
        sims = [bridge.simulator() for _ in range(3)]
        for sim in sims:
            await sim.connect()
            await sim.send_start()
        for _ in range(100):
            if bridge.live_calls == 3:
                break
            await asyncio.sleep(0.02)
        first = {sim.call_sid: lease(db, sim.call_sid) for sim in sims}
        every_call = sorted(sim.call_sid for sim in sims)
        for _ in range(500):  # five beats of 0.2 s with all three calls live
            if renewals.count(every_call) >= 5:
                break
            await asyncio.sleep(0.02)
        owners = {lease(db, sim.call_sid)[0] for sim in sims}
        assert len(owners) == 1 and None not in owners  # one owner: this process
        for sim in sims:  # every lease moved on, well past what was first taken
            _, expires = lease(db, sim.call_sid)
            assert expires is not None and expires >= first[sim.call_sid][1] + 600_000  # type: ignore[operator]
        # One store call per beat for all three calls together, never one per call.
        assert renewals[renewals.index(every_call) :] == [every_call] * len(
            renewals[renewals.index(every_call) :]
        )
        assert renewals.count(every_call) >= 5
        for sim in sims:
            await sim.send_stop()
            await sim.close()
        for sim in sims:
            await wait_ended(bridge, sim.call_sid)
            assert lease(db, sim.call_sid) == (None, None)


async def test_a_call_whose_lease_another_process_took_is_ended_here(
    tmp_path: Path, emulator: ScribeEmulator
) -> None:
    settings = bridge_settings(tmp_path, emulator.url, free_port())
    settings = settings.replace(server=dataclasses.replace(settings.server, stream_lease_s=0.6))
    db = tmp_path / "bridge.db"
    async with running_bridge(settings) as bridge:
        sim = bridge.simulator()
        await sim.connect()
        await sim.send_start()
        await sim.send_frames(speech(seed=3), speed=0)
        for _ in range(100):
            if lease(db, sim.call_sid)[0] is not None:
                break
            await asyncio.sleep(0.02)
        with sqlite3.connect(db) as conn:  # as if this lease had expired and been taken
            conn.execute(
                "UPDATE calls SET stream_owner = 'elsewhere:1:abc' WHERE call_sid = ?",
                (sim.call_sid,),
            )
        assert await sim.wait_closed(3.0), "the call kept running without its lease"
        await sim.close()
        assert bridge.live_calls == 0
        await wait_ended(bridge, sim.call_sid)


async def test_bridge_parameters_are_not_passed_on(
    tmp_path: Path, emulator: ScribeEmulator
) -> None:
    settings = bridge_settings(tmp_path, emulator.url, free_port())
    async with running_bridge(settings) as bridge:
        sim = bridge.simulator(
            custom_parameters={"cb_from": "+1555", "cb_extra": "x", "campaign": "spring"}
        )
        await sim.run(speech(seed=4), speed=0)
        await wait_ended(bridge, sim.call_sid)
        record = await bridge.store.get_call(sim.call_sid)
        assert record is not None
        assert dict(record.custom_parameters) == {"campaign": "spring"}
        assert record.from_number == "+1555"
        assert Track.INBOUND.value in record.tracks


async def test_the_simulator_sends_the_token_the_bridge_expects() -> None:
    sim = TwilioCallSimulator(
        "ws://127.0.0.1:1/twilio/media",
        auth_token="t",
        public_url="http://127.0.0.1:1",
        stream_secret=STREAM_SECRET,
    )
    expected = stream_token(STREAM_SECRET, sim.account_sid, sim.call_sid)
    assert sim.custom_parameters == {"cb_token": expected}


def test_stream_token_command_prints_the_token_twiml_made_elsewhere_needs(tmp_path: Path) -> None:
    args = ["stream-token", "--account-sid", "AC" + "1" * 32, "--call-sid", "CA" + "2" * 32]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLBRIDGE_")}

    def command(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "callbridge", *args],
            env=env | extra,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    done = command(CALLBRIDGE_STREAM_SECRET=STREAM_SECRET)
    assert done.returncode == 0, done.stderr
    assert done.stdout == stream_token(STREAM_SECRET, "AC" + "1" * 32, "CA" + "2" * 32) + "\n"
    refused = command()  # a random start-up secret cannot be known elsewhere
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "CALLBRIDGE_STREAM_SECRET" in refused.stderr


@pytest.mark.parametrize("meanwhile", ["nothing", "ended_elsewhere"])
async def test_a_claim_the_store_could_not_take_at_start_is_taken_by_the_heartbeat(
    tmp_path: Path, emulator: ScribeEmulator, meanwhile: str
) -> None:
    settings = bridge_settings(tmp_path, emulator.url, free_port())
    settings = settings.replace(server=dataclasses.replace(settings.server, stream_lease_s=0.6))
    db = tmp_path / "bridge.db"
    async with running_bridge(settings) as bridge:
        store = bridge.store
        claim = store.claim_stream

        async def unreachable(*_: Any) -> Any:
            raise StoreError("PostgreSQL error: connection refused")

        store.claim_stream = unreachable  # type: ignore[method-assign]
        sim = bridge.simulator()
        await sim.connect()
        await sim.send_start()
        await sim.send_frames(speech(seed=5), speed=0)
        for _ in range(100):
            if bridge.live_calls == 1:
                break
            await asyncio.sleep(0.02)
        assert bridge.live_calls == 1 and sim.is_open  # the call goes ahead, unclaimed
        assert lease(db, sim.call_sid) == (None, None)
        if meanwhile == "ended_elsewhere":
            with sqlite3.connect(db) as conn:
                conn.execute(
                    "UPDATE calls SET status = 'ended' WHERE call_sid = ?", (sim.call_sid,)
                )
        store.claim_stream = claim  # type: ignore[method-assign]
        if meanwhile == "nothing":
            for _ in range(100):
                if lease(db, sim.call_sid)[0] is not None:
                    break
                await asyncio.sleep(0.02)
            assert lease(db, sim.call_sid)[0] == bridge.app[CLAIMS].owner
            await sim.send_stop()
            await sim.close()
            await wait_ended(bridge, sim.call_sid)
            assert lease(db, sim.call_sid) == (None, None)
        else:
            assert await sim.wait_closed(3.0), "a call that ended elsewhere kept running"
            await sim.close()
            assert bridge.live_calls == 0
