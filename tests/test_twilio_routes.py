"""POST /twilio/voice and /twilio/status: signatures first, TwiML, status recording, call end."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from callbridge.config import ServerSettings, Settings, TwilioSettings
from callbridge.context import LIVE_CALLS, SETTINGS, STORE
from callbridge.models import EndReason
from callbridge.testing.twilio_simulator import (
    post_signed_form,
    post_status,
    post_stream_status,
    post_voice,
    sign_request,
)
from callbridge.twilio import routes
from callbridge.twilio.routes import BACKGROUND_TASKS, setup_twilio_routes
from callbridge.twilio.signatures import SIGNATURE_CHECKER
from callbridge.twilio.stream_auth import stream_token

TOKEN = "route-test-token"
PUBLIC = "https://bridge.example.com"
STREAM_SECRET = "route-test-stream-secret"


@dataclass
class RecordingStore:
    """Implements only what the Twilio routes use."""

    requested: list[tuple[str, str | None, str | None, str | None]] = field(default_factory=list)
    statuses: list[tuple[str, str, int | None]] = field(default_factory=list)
    fail: bool = False
    delay_s: float = 0.0

    async def call_requested(
        self, call_sid: str, account_sid: str | None, from_number: str | None, to_number: str | None
    ) -> None:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("database down")
        self.requested.append((call_sid, account_sid, from_number, to_number))

    async def twilio_status(self, call_sid: str, status: str, duration_s: int | None) -> None:
        if self.fail:
            raise RuntimeError("database down")
        self.statuses.append((call_sid, status, duration_s))


@dataclass
class RecordingLiveCalls:
    ended: list[tuple[str, EndReason]] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def is_live(self, call_sid: str) -> bool:
        return True

    async def end_call(self, call_sid: str, reason: EndReason) -> bool:
        self.ended.append((call_sid, reason))
        self.event.set()
        return True


@dataclass
class Bridge:
    client: TestClient[web.Request, web.Application]
    store: RecordingStore
    live: RecordingLiveCalls

    @property
    def base_url(self) -> str:
        return str(self.client.make_url("/"))

    @property
    def session(self) -> aiohttp.ClientSession:
        return self.client.session


def _settings(**twilio: object) -> Settings:
    return Settings(
        server=ServerSettings(public_url=PUBLIC),
        twilio=TwilioSettings(auth_token=TOKEN, stream_secret=STREAM_SECRET, **twilio),  # type: ignore[arg-type]
    )


@pytest.fixture
async def bridge() -> AsyncIterator[Bridge]:
    store, live = RecordingStore(), RecordingLiveCalls()
    app = web.Application()
    app[SETTINGS] = _settings()
    app[STORE] = store  # type: ignore[misc]
    app[LIVE_CALLS] = live
    setup_twilio_routes(app)
    async with TestClient(TestServer(app)) as client:
        yield Bridge(client, store, live)


async def test_voice_returns_stream_twiml_and_records_call(bridge: Bridge) -> None:
    twiml = await post_voice(
        bridge.session,
        bridge.base_url,
        PUBLIC,
        TOKEN,
        "CA100",
        "+15551230000",
        "+15559870000",
        account_sid="AC1",
    )
    root = ET.fromstring(twiml)
    stream = root.find("Start/Stream")
    assert stream is not None
    assert stream.get("url") == "wss://bridge.example.com/twilio/media"
    assert stream.get("track") == "both_tracks"
    assert {p.get("name"): p.get("value") for p in stream.findall("Parameter")} == {
        "cb_token": stream_token(STREAM_SECRET, "AC1", "CA100"),
        "cb_from": "+15551230000",
        "cb_to": "+15559870000",
    }
    assert [child.tag for child in root] == ["Start", "Pause"]
    assert bridge.store.requested == [("CA100", "AC1", "+15551230000", "+15559870000")]


async def test_voice_content_type(bridge: Bridge) -> None:
    params = {"CallSid": "CA1", "AccountSid": "AC1", "From": "+1", "To": "+2"}
    headers = {"X-Twilio-Signature": sign_request(TOKEN, PUBLIC + "/twilio/voice", params)}
    url = bridge.base_url + "twilio/voice"
    async with bridge.session.post(url, data=params, headers=headers) as response:
        assert response.status == 200
        assert response.content_type == "application/xml"


@pytest.mark.parametrize("signature", ["missing", "wrong"])
async def test_bad_signature_is_403_and_does_nothing(bridge: Bridge, signature: str) -> None:
    for path, params in [
        ("/twilio/voice", {"CallSid": "CA1", "From": "+1", "To": "+2"}),
        ("/twilio/status", {"CallSid": "CA1", "CallStatus": "completed", "CallDuration": "3"}),
    ]:
        status, body = await post_signed_form(
            bridge.session,
            bridge.base_url,
            PUBLIC,
            TOKEN,
            path,
            params,
            signature=signature,  # type: ignore[arg-type]
        )
        assert status == 403
        assert '"code": "invalid_signature"' in body
    await asyncio.sleep(0.01)
    assert bridge.store.requested == [] and bridge.store.statuses == []
    assert bridge.live.ended == []


async def test_signature_for_internal_url_is_rejected(bridge: Bridge) -> None:
    # Signed for the URL the bridge sees (http://127.0.0.1:port), not the public one → 403.
    status, _ = await post_signed_form(
        bridge.session, bridge.base_url, bridge.base_url, TOKEN, "/twilio/voice", {"CallSid": "CA1"}
    )
    assert status == 403


async def test_missing_call_sid_is_400(bridge: Bridge) -> None:
    for path in ["/twilio/voice", "/twilio/status"]:
        status, body = await post_signed_form(
            bridge.session, bridge.base_url, PUBLIC, TOKEN, path, {"From": "+1"}
        )
        assert status == 400
        assert "missing_call_sid" in body


async def test_voice_without_account_sid_is_400(bridge: Bridge) -> None:
    # The stream token covers AccountSid:CallSid; without one no token can be made.
    status, body = await post_signed_form(
        bridge.session, bridge.base_url, PUBLIC, TOKEN, "/twilio/voice", {"CallSid": "CA1"}
    )
    assert status == 400 and "missing_account_sid" in body
    assert bridge.store.requested == []


async def test_voice_answers_when_store_fails_or_hangs(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    bridge.store.fail = True
    twiml = await post_voice(bridge.session, bridge.base_url, PUBLIC, TOKEN, "CA2", "+1", "+2")
    assert "<Stream" in twiml
    bridge.store.fail = False
    bridge.store.delay_s = 1.0
    monkeypatch.setattr(routes, "VOICE_STORE_WAIT_S", 0.05)
    loop = asyncio.get_running_loop()
    began = loop.time()
    twiml = await post_voice(bridge.session, bridge.base_url, PUBLIC, TOKEN, "CA3", "+1", "+2")
    assert "<Stream" in twiml and loop.time() - began < 0.9
    assert bridge.client.app[BACKGROUND_TASKS]  # still running, referenced
    await asyncio.sleep(1.1)
    assert [r[0] for r in bridge.store.requested] == ["CA3"]
    assert not bridge.client.app[BACKGROUND_TASKS]


async def test_status_completed_records_and_ends_call(bridge: Bridge) -> None:
    status = await post_status(
        bridge.session, bridge.base_url, PUBLIC, TOKEN, "CA5", "completed", duration_s=42
    )
    assert status == 204
    assert bridge.store.statuses == [("CA5", "completed", 42)]
    await asyncio.wait_for(bridge.live.event.wait(), 2)
    assert bridge.live.ended == [("CA5", EndReason.COMPLETED)]


@pytest.mark.parametrize("final", ["busy", "failed", "no-answer", "canceled"])
async def test_other_final_statuses_end_call(bridge: Bridge, final: str) -> None:
    assert await post_status(bridge.session, bridge.base_url, PUBLIC, TOKEN, "CA6", final) == 204
    await asyncio.wait_for(bridge.live.event.wait(), 2)
    assert bridge.live.ended == [("CA6", EndReason.COMPLETED)]


async def test_progress_status_does_not_end_call(bridge: Bridge) -> None:
    assert (
        await post_status(bridge.session, bridge.base_url, PUBLIC, TOKEN, "CA7", "in-progress")
        == 204
    )
    await asyncio.sleep(0.02)
    assert bridge.store.statuses == [("CA7", "in-progress", None)]
    assert bridge.live.ended == []


async def test_status_store_failure_still_ends_call(bridge: Bridge) -> None:
    bridge.store.fail = True
    assert (
        await post_status(bridge.session, bridge.base_url, PUBLIC, TOKEN, "CA8", "completed") == 204
    )
    await asyncio.wait_for(bridge.live.event.wait(), 2)
    assert bridge.live.ended == [("CA8", EndReason.COMPLETED)]


async def test_stream_events(bridge: Bridge) -> None:
    for event in ["stream-started", "stream-error"]:
        status = await post_stream_status(
            bridge.session,
            bridge.base_url,
            PUBLIC,
            TOKEN,
            "CA9",
            event,
            stream_error="31921 close error" if event == "stream-error" else None,
        )
        assert status == 204
    await asyncio.sleep(0.02)
    assert bridge.live.ended == []
    assert bridge.store.statuses == []  # stream events are not call statuses
    assert (
        await post_stream_status(
            bridge.session, bridge.base_url, PUBLIC, TOKEN, "CA9", "stream-stopped"
        )
        == 204
    )
    await asyncio.wait_for(bridge.live.event.wait(), 2)
    assert bridge.live.ended == [("CA9", EndReason.STOP)]


async def test_checker_is_on_the_app(bridge: Bridge) -> None:
    checker = bridge.client.app[SIGNATURE_CHECKER]
    assert checker.enabled


async def test_validation_disabled() -> None:
    app = web.Application()
    app[SETTINGS] = Settings(
        server=ServerSettings(public_url=PUBLIC),
        twilio=TwilioSettings(auth_token="", validate=False, stream_secret=STREAM_SECRET),
    )
    app[STORE] = RecordingStore()  # type: ignore[misc]
    setup_twilio_routes(app)
    async with TestClient(TestServer(app)) as client:
        response = await client.post("/twilio/voice", data={"CallSid": "CA1", "AccountSid": "AC1"})
        assert response.status == 200
        # No LIVE_CALLS registry yet: a completed status is still answered.
        response = await client.post(
            "/twilio/status", data={"CallSid": "CA1", "CallStatus": "completed"}
        )
        assert response.status == 204
