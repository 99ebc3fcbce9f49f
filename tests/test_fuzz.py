"""Property-based tests (Hypothesis) of what hostile clients can send, against a real bridge.

* The API: arbitrary methods, paths, query strings (cursors holding any JSON, huge numbers),
  headers (``Authorization`` with bytes that are not UTF-8) and bodies, as raw HTTP/1.1 bytes.
* The media socket: arbitrary message sequences (JSON that is broken or of the wrong types,
  huge and negative numbers, timestamp and sequence jumps, payloads of odd sizes, binary
  frames, events out of order), with or without a valid signature and stream token.

Properties: never a 5xx, no unhandled exception or error logged, and a call running beside
the fuzzing is unharmed: it keeps its socket and every word it said is transcribed.

CI runs ``API_EXAMPLES`` (200) API requests and ``MEDIA_EXAMPLES`` (60) media sequences, in
about ten seconds; ``CALLBRIDGE_FUZZ_EXAMPLES=N`` multiplies both for a longer hunt.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import threading
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
import websockets.exceptions
import websockets.sync.client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callbridge.context import REGISTRY
from callbridge.testing.scribe_emulator import ScribeEmulator
from callbridge.testing.twilio_simulator import TwilioCallSimulator, new_call_sid, sign_request
from callbridge.twilio.signatures import public_websocket_url
from callbridge.twilio.stream_auth import stream_token
from tests.bridge_harness import (
    API_TOKEN,
    AUTH_TOKEN,
    STREAM_SECRET,
    RunningBridge,
    bridge_settings,
    free_port,
    running_bridge,
)
from tests.test_bridge_e2e import track

SCALE = int(os.environ.get("CALLBRIDGE_FUZZ_EXAMPLES", "1"))
API_EXAMPLES = 200 * SCALE
MEDIA_EXAMPLES = 60 * SCALE
BYSTANDER_WORDS = [f"tone{f}" for f in (400, 450, 500, 550, 600, 650)]


class Problems:
    """Errors seen while fuzzing: error-level log events, unhandled loop exceptions, and
    records of the stdlib loggers (aiohttp's "Error handling request")."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def structlog_processor(
        self, _: Any, level: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if level in ("error", "critical", "exception") or event.get("exc_info"):
            self.seen.append(f"{level}: {event.get('event')} {event}")
        return event

    def loop_handler(self, _: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.seen.append(f"loop: {context.get('message')} {context.get('exception')!r}")


class _RecordErrors(logging.Handler):
    def __init__(self, problems: Problems) -> None:
        super().__init__(logging.ERROR)
        self.problems = problems

    def emit(self, record: logging.LogRecord) -> None:
        self.problems.seen.append(f"{record.name}: {record.getMessage()}")


class FuzzedBridge:
    """A real bridge (and its Scribe emulator) on a loop of its own thread, so that the
    Hypothesis tests can drive it with blocking clients, and a bystander call on it."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.problems = Problems()
        self.bridge: RunningBridge | None = None
        self._stop: asyncio.Event | None = None
        self._running: asyncio.Future[None] | None = None
        self.bystander: TwilioCallSimulator | None = None
        self._bystander_task: asyncio.Task[Any] | None = None
        self.port = free_port()

    def run(self, coroutine: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self) -> None:
        self.thread.start()
        self.loop.set_exception_handler(self.problems.loop_handler)
        ready = self.run(self._ready())
        self._running = asyncio.run_coroutine_threadsafe(self._serve(ready), self.loop)
        self.run(self._started())

    async def _ready(self) -> asyncio.Event:
        self._stop = asyncio.Event()
        return asyncio.Event()

    async def _serve(self, ready: asyncio.Event) -> None:
        assert self._stop is not None
        async with ScribeEmulator(api_key="test-key", transcriber="tones") as emulator:
            settings = bridge_settings(self.tmp_path, emulator.url, self.port)
            async with running_bridge(settings) as bridge:
                self.bridge = bridge
                ready.set()
                await self._stop.wait()
                if self._bystander_task is not None:
                    self._bystander_task.cancel()

    async def _started(self) -> None:
        while self.bridge is None:  # noqa: ASYNC110 (set by another task of this loop)
            await asyncio.sleep(0.01)

    def start_bystander(self) -> None:
        """A normal call that talks, slowly, through all of the fuzzing."""

        async def start() -> None:
            assert self.bridge is not None
            words = [(300 + 1100 * i, [400 + 50 * i]) for i in range(len(BYSTANDER_WORDS))]
            audio = track(8000, words, seed=7)
            self.bystander = self.bridge.simulator()
            await self.bystander.connect()
            await self.bystander.send_start(("inbound",))
            self._bystander_task = asyncio.create_task(self.bystander.send_frames(audio, speed=1.0))

        self.run(start())

    def bystander_unharmed(self) -> list[str]:
        async def check() -> list[str]:
            bridge, sim, task = self.bridge, self.bystander, self._bystander_task
            assert bridge is not None and sim is not None and task is not None
            await asyncio.wait_for(task, 30)
            assert sim.is_open, (sim.close_code, sim.close_reason)
            await sim.send_stop()
            await sim.close()
            for _ in range(500):
                record = await bridge.store.get_call(sim.call_sid)
                if record is not None and str(record.status) == "ended":
                    break
                await asyncio.sleep(0.02)
            segments = await bridge.store.get_segments(sim.call_sid)
            return " ".join(s.text for s in segments).split()

        words: list[str] = self.run(check(), timeout=60)
        return words

    def stop(self) -> None:
        async def stop() -> None:
            assert self._stop is not None
            self._stop.set()

        self.run(stop())
        if self._running is not None:
            self._running.result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzedBridge]:
    bridge = FuzzedBridge(tmp_path_factory.mktemp("fuzz"))
    previous = structlog.get_config()["processors"]
    structlog.configure(processors=[bridge.problems.structlog_processor, *previous])
    recorder = _RecordErrors(bridge.problems)
    logging.getLogger().addHandler(recorder)
    bridge.start()
    bridge.start_bystander()
    try:
        yield bridge
    finally:
        logging.getLogger().removeHandler(recorder)
        bridge.stop()
        structlog.configure(processors=previous)


# --- the API ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=8,
)
header_bytes = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
cursors = st.one_of(
    st.text(max_size=30),
    json_values.map(lambda v: base64.urlsafe_b64encode(json.dumps(v).encode()).decode()),
    st.tuples(st.integers(), st.text(max_size=40)).map(
        lambda v: base64.urlsafe_b64encode(json.dumps(list(v)).encode()).decode().rstrip("=")
    ),
)
query_values = st.one_of(
    st.text(max_size=20),
    st.integers().map(str),
    st.sampled_from(["json", "txt", "vtt", "srt", "true", "false", "live", "ended", "0", "-1"]),
    cursors,
)
query_names = st.sampled_from(["limit", "cursor", "format", "status", "force", "x", "", "%ff"])


def percent_encoded(text: str) -> str:
    return "".join(
        c
        if c.isascii() and (c.isalnum() or c in "-_.~")
        else "".join(f"%{b:02X}" for b in c.encode())
        for c in text
    )


@st.composite
def api_requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["GET", "GET", "GET", "DELETE", "POST", "PUT", "HEAD"]))
    sid = draw(st.one_of(st.just("CA" + "0" * 32), st.text(min_size=1, max_size=40)))
    path = draw(
        st.sampled_from(
            [
                "/v1/calls",
                f"/v1/calls/{percent_encoded(sid)}",
                f"/v1/calls/{percent_encoded(sid)}/transcript",
                f"/v1/calls/{percent_encoded(sid)}/summary",
                f"/v1/calls/{percent_encoded(sid)}/events",
                "/v1",
                "/v1/unknown",
                "/openapi.json",
                "/healthz",
            ]
        )
    )
    pairs = draw(st.lists(st.tuples(query_names, query_values), max_size=4))
    raw_query = draw(st.booleans())
    if raw_query:  # unencoded, as a hostile client may send it
        query = "&".join(f"{n}={v}" for n, v in pairs)
        target = path.encode() + (b"?" + query.encode("utf-8", "replace") if pairs else b"")
        target = target.replace(b" ", b"%20").replace(b"\r", b"").replace(b"\n", b"")
    else:
        query = "&".join(f"{percent_encoded(n)}={percent_encoded(v)}" for n, v in pairs)
        target = (path + ("?" + query if pairs else "")).encode()
    auth = draw(
        st.one_of(
            st.just(f"Bearer {API_TOKEN}".encode()),
            st.just(f"Bearer {API_TOKEN}".encode()),
            header_bytes,
            header_bytes.map(lambda b: b"Bearer " + b),
            st.just(b"Bearer \xff\xfe\x80\xc3("),
            st.none(),
        )
    )
    headers = [b"Host: bridge", b"Connection: close"]
    if auth is not None:
        headers.append(b"Authorization: " + auth)
    for name, value in draw(
        st.lists(st.tuples(st.from_regex(r"\AX-[A-Za-z0-9-]{1,10}\Z"), header_bytes), max_size=3)
    ):
        headers.append(name.encode() + b": " + value)
    body = b""
    if method in ("POST", "PUT", "DELETE") and draw(st.booleans()):
        body = draw(
            st.one_of(json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=200))
        )
        headers.append(
            b"Content-Type: " + draw(st.sampled_from([b"application/json", b"text/plain"]))
        )
        headers.append(b"Content-Length: " + str(len(body)).encode())
    return (
        method.encode()
        + b" "
        + target
        + b" HTTP/1.1\r\n"
        + b"\r\n".join(headers)
        + b"\r\n\r\n"
        + body
    )


def send_raw(port: int, request: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    status_line = received.split(b"\r\n", 1)[0]
    return int(status_line.split()[1]), received


@settings(
    max_examples=API_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(request=api_requests())
def test_no_request_to_the_api_gets_a_5xx(fuzzed: FuzzedBridge, request: bytes) -> None:
    status, response = send_raw(fuzzed.port, request)
    assert status < 500, (request, response[:500])
    head = request.split(b"\r\n\r\n", 1)[0]
    valid = f"Authorization: Bearer {API_TOKEN}\r\n".encode() in head + b"\r\n"
    if b" /v1" in head.split(b"\r\n", 1)[0] and not valid and status != 400:
        assert status == 401, (request, response[:300])
    assert fuzzed.problems.seen == []


# --- the media socket ------------------------------------------------------------------------

numbers = st.one_of(
    st.integers(min_value=0, max_value=2_000),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.just(999_999_999_999),
    st.just(12 * 3600 * 1000),
).flatmap(lambda n: st.sampled_from([n, str(n)]))
loose = st.one_of(
    numbers,
    st.text(max_size=6),
    st.none(),
    st.floats(allow_nan=False),
    st.lists(st.integers(), max_size=2),
)
payloads = st.one_of(
    st.binary(min_size=0, max_size=500).map(lambda b: base64.b64encode(b).decode()),
    st.sampled_from([base64.b64encode(b"\xff" * 160).decode(), "not base64!", "", "===="]),
)


def media(
    track_name: Any, chunk: Any, timestamp: Any, payload: Any, sequence: Any
) -> dict[str, Any]:
    return {
        "event": "media",
        "sequenceNumber": sequence,
        "media": {"track": track_name, "chunk": chunk, "timestamp": timestamp, "payload": payload},
        "streamSid": "MZ" + "1" * 32,
    }


VALID_FORMAT = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}


@st.composite
def media_sequences(draw: st.DrawFn) -> tuple[str, bool, list[str | bytes]]:
    """Half the time a start that the bridge accepts (so media reaches a call), else a start
    with any field wrong; then any messages, sometimes shuffled."""
    call_sid = new_call_sid()
    account = "AC" + "2" * 32
    token = stream_token(STREAM_SECRET, account, call_sid)
    valid = draw(st.booleans())

    def field(good: Any, *bad: st.SearchStrategy[Any]) -> Any:
        return good if valid else draw(st.one_of(st.just(good), *bad))

    start_body: dict[str, Any] = {
        "accountSid": field(account, loose),
        "streamSid": "MZ" + "1" * 32,
        "callSid": field(call_sid, loose),
        "tracks": field(
            draw(st.sampled_from([["inbound", "outbound"], ["inbound"], ["outbound"]])),
            st.lists(st.sampled_from(["inbound", "outbound", "both", 3]), max_size=3),
            loose,
        ),
        "mediaFormat": field(
            VALID_FORMAT,
            st.fixed_dictionaries({"encoding": loose, "sampleRate": loose, "channels": loose}),
        ),
        "customParameters": field(
            {"cb_token": token, "cb_from": "+15550001111", "note": draw(st.text(max_size=8))},
            st.just({"cb_token": draw(st.text(max_size=64))}),
            st.dictionaries(st.text(max_size=8), st.one_of(st.text(max_size=8), loose), max_size=3),
            loose,
        ),
    }
    start = {
        "event": "start",
        "sequenceNumber": field("1", numbers),
        "start": start_body,
        "streamSid": "MZ" + "1" * 32,
    }
    steps = draw(
        st.lists(
            st.one_of(
                st.builds(
                    media,
                    st.sampled_from(["inbound", "outbound", "x"]),
                    numbers,
                    numbers,
                    payloads,
                    numbers,
                ),
                st.builds(media, loose, loose, loose, st.one_of(payloads, loose), loose),
                st.just({"event": "stop", "sequenceNumber": "9", "stop": {}}),
                st.just({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
                st.builds(
                    lambda d: {"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": d}},
                    loose,
                ),
                st.builds(lambda n: {"event": "mark", "mark": {"name": n}}, loose),
                st.builds(lambda e: {"event": e}, loose),
                json_values,
                st.just(start),
            ),
            max_size=12,
        )
    )
    messages: list[str | bytes] = [
        json.dumps(m) if not isinstance(m, str) else m for m in [start, *steps]
    ]
    first = 1 if valid else 0  # a valid start stays first, so that its call does start
    if draw(st.booleans()):
        messages.insert(draw(st.integers(first, len(messages))), draw(st.text(max_size=30)))
    if draw(st.booleans()):
        messages.insert(draw(st.integers(first, len(messages))), draw(st.binary(max_size=30)))
    if not valid and draw(st.booleans()):
        messages = draw(st.permutations(messages))
    signed = draw(st.integers(0, 7)) > 0
    return call_sid, signed, list(messages)


@settings(
    max_examples=MEDIA_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(sequence=media_sequences())
def test_no_media_message_sequence_hurts_the_bridge(
    fuzzed: FuzzedBridge, sequence: tuple[str, bool, list[str | bytes]]
) -> None:
    _, signed, messages = sequence
    public = f"http://127.0.0.1:{fuzzed.port}"
    headers = {}
    if signed:
        headers["X-Twilio-Signature"] = sign_request(
            AUTH_TOKEN, public_websocket_url(public, "/twilio/media"), []
        )
    try:
        conn = websockets.sync.client.connect(
            f"ws://127.0.0.1:{fuzzed.port}/twilio/media",
            additional_headers=headers,
            compression=None,
            open_timeout=10,
            close_timeout=2,
        )
    except websockets.exceptions.InvalidStatus as refused:
        status = refused.response.status_code
        assert status < 500 and (status == 403) == (not signed)
        return
    assert signed, "an unsigned upgrade was accepted"
    with conn:
        for message in messages:
            try:
                conn.send(message)
            except websockets.exceptions.ConnectionClosed:
                break
    assert fuzzed.problems.seen == []


def test_the_bystander_was_unharmed_by_the_fuzzing(fuzzed: FuzzedBridge) -> None:
    # Runs after both properties (same module fixture): the call beside them lost nothing.
    assert fuzzed.bystander_unharmed() == BYSTANDER_WORDS
    assert fuzzed.problems.seen == []
    # The sequences reached both stages: refused at the handshake, and calls that started
    # (and took whatever media followed) besides the bystander.
    refused = fuzzed.run(_refusals(fuzzed))
    calls = fuzzed.run(_calls_started(fuzzed))
    assert refused.get("signature", 0) > 0, refused
    assert calls >= 3, calls  # the bystander and at least two fuzzed calls


async def _refusals(fuzzed: FuzzedBridge) -> dict[str, int]:
    assert fuzzed.bridge is not None
    return dict(fuzzed.bridge.app[REGISTRY].refused)


async def _calls_started(fuzzed: FuzzedBridge) -> int:
    assert fuzzed.bridge is not None
    calls, _ = await fuzzed.bridge.store.list_calls(1000, None)
    return sum(1 for call in calls if call.started_at is not None)


# --- the two findings, as plain regression tests ---------------------------------------------


def test_authorization_that_is_not_utf8_is_401(fuzzed: FuzzedBridge) -> None:
    status, body = send_raw(
        fuzzed.port,
        b"GET /v1/calls HTTP/1.1\r\nHost: b\r\nConnection: close\r\n"
        b"Authorization: Bearer \xff\xfe\x80\r\n\r\n",
    )
    assert status == 401 and b'"unauthorized"' in body


@pytest.mark.parametrize("created_at", [10**30, -1, 2**63, True])
def test_a_cursor_with_an_impossible_position_is_400(fuzzed: FuzzedBridge, created_at: Any) -> None:
    cursor = base64.urlsafe_b64encode(json.dumps([created_at, "CA1"]).encode()).decode()
    status, body = send_raw(
        fuzzed.port,
        f"GET /v1/calls?cursor={cursor.rstrip('=')} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n"
        f"Authorization: Bearer {API_TOKEN}\r\n\r\n".encode(),
    )
    assert status == 400 and b'"invalid_cursor"' in body
