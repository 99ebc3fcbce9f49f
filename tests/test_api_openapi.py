"""The OpenAPI document: it is served, it covers every route, real responses match its
schemas (validated with jsonschema-rs), and schemathesis fuzzing finds no 5xx."""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance
from schemathesis.core.parameters import ParameterLocation

from callbridge.ai_summary.records import failed_record, pending_record, ready_record
from callbridge.ai_summary.summarizer import Usage, WrittenSummary
from callbridge.api.openapi import openapi_document
from callbridge.api.routes import setup_api
from callbridge.config import ApiSettings, Settings
from callbridge.context import SETTINGS, STORE
from callbridge.models import (
    CallEnded,
    CallInfo,
    CommittedSegment,
    EndReason,
    Interval,
    Track,
    TrackActivity,
    Word,
    utc_now,
)
from callbridge.store.base import Store
from callbridge.store.sqlite import SqliteStore
from callbridge.summary import summarize

TOKEN = "openapi-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SETTINGS_UNDER_TEST = Settings(api=ApiSettings(tokens=(TOKEN,), max_page_size=25))
ENDED = "CA" + "a" * 32
LIVE = "CA" + "b" * 32
RINGING = "CA" + "c" * 32
SEEDED = [ENDED, LIVE, RINGING]
READY_AI = ready_record(
    WrittenSummary(
        content={
            "gist": "The caller said hello. The agent welcomed them.",
            "reason": "To say hello.",
            "outcome": {"status": "resolved", "text": "Both said hello."},
            "action_items": [{"owner": "agent", "text": "Send the welcome pack."}],
            "sentiment": {"caller": "neutral", "agent": "positive"},
        },
        model="gpt-4o-mini-2024-07-18",
        parts=1,
        usage=Usage(requests=1, prompt_tokens=420, completion_tokens=96),
    ),
    utc_now(),
)


def segment(call_sid: str, sequence: int, speaker: str, text: str, start: int) -> CommittedSegment:
    return CommittedSegment(
        call_sid=call_sid,
        stream_sid="MZ" + call_sid[2:],
        sequence=sequence,
        speaker=speaker,
        track=Track.INBOUND if speaker == "caller" else Track.OUTBOUND,
        text=text,
        start_ms=start,
        end_ms=start + 800,
        language_code="en",
        words=(Word(text.split()[0], start, start + 300, logprob=-0.5),) if text else (),
    )


async def seed(store: Store) -> None:
    for sid in (ENDED, LIVE):
        await store.call_requested(sid, "AC1", "+15550001111", "+15550002222")
        await store.call_started(
            CallInfo(
                call_sid=sid,
                stream_sid="MZ" + sid[2:],
                account_sid="AC1",
                from_number="+15550001111",
                to_number="+15550002222",
                tracks=("inbound", "outbound"),
                custom_parameters={"k": "v"},
                started_at=utc_now(),
            ),
            [],
        )
    segments = [
        segment(ENDED, 1, "caller", "hello there", 0),
        segment(ENDED, 2, "agent", "", 900),
        segment(ENDED, 3, "agent", "hi & <welcome>", 1000),
    ]
    for seg in segments:
        await store.segment_committed(seg, [])
    await store.segment_committed(segment(LIVE, 1, "caller", "so far", 0), [])
    ended = CallEnded(
        call_sid=ENDED,
        stream_sid="MZ" + ENDED[2:],
        ended_at=utc_now(),
        duration_ms=3000,
        reason=EndReason.STOP,
        segments=3,
        activity=(
            TrackActivity(Track.INBOUND, "caller", (Interval(0, 700),)),
            TrackActivity(Track.OUTBOUND, "agent", (Interval(1000, 1700),)),
        ),
        language_code="en",
    )
    await store.call_ended(ended, summarize(ended, segments), [])
    await store.set_ai_summary(ENDED, READY_AI, [])
    await store.call_requested(RINGING, None, None, None)


def build_app(store: Store) -> web.Application:
    app = web.Application()
    app[SETTINGS] = SETTINGS_UNDER_TEST
    app[STORE] = store
    setup_api(app)
    return app


# --- the document itself ---------------------------------------------------------------


def test_document_covers_every_route() -> None:
    document = openapi_document(SETTINGS_UNDER_TEST)
    assert document["openapi"] == "3.1.0"
    paths = document["paths"]
    assert set(paths) == {
        "/v1/calls",
        "/v1/calls/{call_sid}",
        "/v1/calls/{call_sid}/transcript",
        "/v1/calls/{call_sid}/summary",
        "/v1/calls/{call_sid}/events",
    }
    operations = [(path, method) for path, item in paths.items() for method in item]
    assert len(operations) == 6
    for path, method in operations:
        responses = paths[path][method]["responses"]
        assert "401" in responses
        if "{call_sid}" in path:
            assert "404" in responses
    assert "409" in paths["/v1/calls/{call_sid}/summary"]["get"]["responses"]
    assert "409" in paths["/v1/calls/{call_sid}"]["delete"]["responses"]
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert document["security"] == [{"bearerAuth": []}]
    assert set(document["webhooks"]) == {
        "call.started",
        "transcript.committed",
        "call.ended",
        "call.summarized",
        "call.transcript_final",
        "call.postcall_failed",
    }
    limit = paths["/v1/calls"]["get"]["parameters"][0]["schema"]
    assert limit["maximum"] == 25
    # every schema is itself valid JSON Schema 2020-12
    for name in document["components"]["schemas"]:
        validator(document, {"$ref": f"#/components/schemas/{name}"})


def test_webhook_schemas_accept_interface_payloads() -> None:
    document = openapi_document(SETTINGS_UNDER_TEST)
    ended, segments = _known_call()
    summary = summarize(ended, segments)
    started = {
        "type": "call.started",
        "timestamp": "2025-01-01T00:00:00.000Z",
        "data": {
            "call_sid": ENDED,
            "stream_sid": "MZ1",
            "account_sid": "AC1",
            "from": "+1555",
            "to": None,
            "tracks": ["inbound", "outbound"],
            "custom_parameters": {},
            "started_at": "2025-01-01T00:00:00.000Z",
        },
    }
    committed = {
        "type": "transcript.committed",
        "timestamp": "2025-01-01T00:00:01.000Z",
        "data": {
            "call_sid": ENDED,
            "stream_sid": "MZ1",
            "sequence": 1,
            "speaker": "caller",
            "track": "inbound",
            "text": "hello",
            "start_ms": 0,
            "end_ms": 800,
            "language_code": "en",
            "words": [],
        },
    }
    call_ended = {
        "type": "call.ended",
        "timestamp": "2025-01-01T00:00:03.000Z",
        "data": {
            "call_sid": ENDED,
            "ended_at": "2025-01-01T00:00:03.000Z",
            "duration_ms": 3000,
            "segments": 3,
            "reason": "stop",
            "summary": summary,
        },
    }
    failed = failed_record("llm_unavailable", "429: slow down (gave up)", utc_now())
    summarized = [
        {
            "type": "call.summarized",
            "timestamp": "2025-01-01T00:00:09.000Z",
            "data": {"call_sid": ENDED, "ai": ai},
        }
        for ai in (READY_AI, failed)
    ]
    call_ended["data"]["summary"] = {**summary, "ai": pending_record(utc_now())}
    for payload, name in [
        (started, "CallStartedEvent"),
        (committed, "TranscriptCommittedEvent"),
        (call_ended, "CallEndedEvent"),
        (summarized[0], "CallSummarizedEvent"),
        (summarized[1], "CallSummarizedEvent"),
    ]:
        validator(document, {"$ref": f"#/components/schemas/{name}"}).validate(payload)
    with pytest.raises(jsonschema_rs.ValidationError):
        validator(document, {"$ref": "#/components/schemas/CallEndedEvent"}).validate(
            {**call_ended, "type": "call.started"}
        )


def test_the_ai_summary_schema_requires_what_each_status_promises() -> None:
    document = openapi_document(SETTINGS_UNDER_TEST)
    ai = validator(document, {"$ref": "#/components/schemas/AISummary"})
    ai.validate(READY_AI)
    ai.validate(pending_record(utc_now()))
    bad = [
        {key: value for key, value in READY_AI.items() if key != "gist"},  # ready, no gist
        {**READY_AI, "outcome": {"status": "done", "text": "x"}},
        {**READY_AI, "sentiment": {"caller": "furious"}},
        {"status": "failed", "created_at": "2025-01-01T00:00:00.000Z"},  # failed, no error
        {"status": "thinking", "created_at": "2025-01-01T00:00:00.000Z"},
    ]
    for value in bad:
        with pytest.raises(jsonschema_rs.ValidationError):
            ai.validate(value)


def _known_call() -> tuple[CallEnded, list[CommittedSegment]]:
    segments = [segment(ENDED, 1, "caller", "hello there", 0)]
    ended = CallEnded(
        call_sid=ENDED,
        stream_sid="MZ1",
        ended_at=utc_now(),
        duration_ms=3000,
        reason=EndReason.STOP,
        segments=1,
        activity=(TrackActivity(Track.INBOUND, "caller", (Interval(0, 700),)),),
    )
    return ended, segments


# --- real responses against the document -----------------------------------------------


def validator(document: dict[str, Any], schema: dict[str, Any]) -> Any:
    root = {"components": document["components"], **schema}
    return jsonschema_rs.Draft202012Validator(root, validate_formats=True)


@dataclass
class Documented:
    document: dict[str, Any]

    def check(self, template: str, method: str, status: int, content_type: str, body: Any) -> None:
        operation = self.document["paths"][template][method]
        responses = operation["responses"]
        assert str(status) in responses, f"{method} {template} {status} is not documented"
        response = responses[str(status)]
        if "$ref" in response:
            response = self.document["components"]["responses"][response["$ref"].split("/")[-1]]
        if status == 204:
            assert "content" not in response
            return
        content = response["content"]
        assert content_type in content, f"{content_type} not documented for {template} {status}"
        validator(self.document, content[content_type]["schema"]).validate(body)


async def test_real_responses_match_the_document(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "doc.db")
    await store.open()
    await seed(store)
    client = TestClient(TestServer(build_app(store)))
    await client.start_server()
    try:
        document = await (await client.get("/openapi.json")).json()
        documented = Documented(document)
        checked = 0
        requests: list[tuple[str, str, str, dict[str, str]]] = [
            ("/v1/calls", "get", "/v1/calls", {}),
            ("/v1/calls", "get", "/v1/calls", {"limit": "1"}),
            ("/v1/calls", "get", "/v1/calls", {"limit": "0"}),
            ("/v1/calls", "get", "/v1/calls", {"cursor": "nope"}),
            ("/v1/calls", "get", "/v1/calls", {"Authorization": ""}),
        ]
        for sid in [*SEEDED, "CAmissing"]:
            requests += [
                ("/v1/calls/{call_sid}", "get", f"/v1/calls/{sid}", {}),
                ("/v1/calls/{call_sid}/summary", "get", f"/v1/calls/{sid}/summary", {}),
                ("/v1/calls/{call_sid}/transcript", "get", f"/v1/calls/{sid}/transcript", {}),
            ]
            for output in ("json", "txt", "vtt", "srt", "docx"):
                requests.append(
                    (
                        "/v1/calls/{call_sid}/transcript",
                        "get",
                        f"/v1/calls/{sid}/transcript",
                        {"format": output},
                    )
                )
        events = "/v1/calls/{call_sid}/events"
        requests += [
            (events, "get", f"/v1/calls/{ENDED}/events", {}),  # no events stored: ends at once
            (events, "get", "/v1/calls/CAmissing/events", {}),
            (events, "get", f"/v1/calls/{ENDED}/events", {"Last-Event-ID": "evt_unknown"}),
            ("/v1/calls/{call_sid}", "delete", f"/v1/calls/{LIVE}", {}),
            ("/v1/calls/{call_sid}", "delete", f"/v1/calls/{ENDED}", {}),
            ("/v1/calls/{call_sid}", "delete", f"/v1/calls/{ENDED}", {}),
        ]
        statuses: set[int] = set()
        for template, method, path, params in requests:
            headers = dict(AUTH)
            if "Authorization" in params:
                headers = {}
                params = {}
            if "Last-Event-ID" in params:
                headers["Last-Event-ID"] = params.pop("Last-Event-ID")
            response = await client.request(method.upper(), path, params=params, headers=headers)
            body: Any = None
            if response.status != 204:
                body = (
                    await response.json()
                    if response.content_type == "application/json"
                    else await asyncio.wait_for(response.text(), 10)
                )
            documented.check(template, method, response.status, response.content_type, body)
            statuses.add(response.status)
            checked += 1
        assert statuses == {200, 204, 400, 401, 404, 409}
        assert checked == len(requests)
    finally:
        await client.close()
        await store.close()


# --- schemathesis ----------------------------------------------------------------------


class ServerThread:
    """The API on a real local port, its event loop in a thread of its own, so that
    schemathesis's blocking HTTP client can call it."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self._store: SqliteStore | None = None

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)

    async def _start(self) -> None:
        self._store = SqliteStore(self.db_path)
        await self._store.open()
        await seed(self._store)
        self._runner = web.AppRunner(build_app(self._store))
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._store is not None:
            await self._store.close()


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    server = ServerThread(tmp_path_factory.mktemp("fuzz") / "fuzz.db")
    server.start()
    yield server
    server.stop()


def fuzz_document() -> dict[str, Any]:
    """The served document, with the seeded SIDs offered next to random ones.

    Without the events stream: a live call's stream never ends, which a blocking client
    cannot check (tests/test_event_stream.py covers it)."""
    document = copy.deepcopy(openapi_document(SETTINGS_UNDER_TEST))
    del document["paths"]["/v1/calls/{call_sid}/events"]
    for item in document["paths"].values():
        for operation in item.values():
            for parameter in operation["parameters"]:
                if parameter["name"] == "call_sid":
                    parameter["schema"] = {"anyOf": [{"enum": SEEDED}, parameter["schema"]]}
    return document


fuzz_schema = schemathesis.openapi.from_dict(fuzz_document())


@fuzz_schema.parametrize()
@settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_fuzz_api_from_the_document(case: schemathesis.Case, live_server: ServerThread) -> None:
    meta = case.meta
    # A negative case may have dropped or mangled Authorization on purpose: then it goes as
    # generated (and must be refused), not with the test's valid token put back.
    headers_negative = meta is not None and meta.is_negative_at(ParameterLocation.HEADER)
    auth = {} if headers_negative else AUTH
    response = case.call(base_url=live_server.base_url, headers=auth, timeout=10)
    assert response.status_code < 500, response.text
    excluded = []
    # a schema cannot say "a cursor this API returned": a made-up one is rightly a 400
    if case.query and "cursor" in case.query:
        excluded.append(positive_data_acceptance)
    case.validate_response(response, headers=auth, excluded_checks=excluded)
