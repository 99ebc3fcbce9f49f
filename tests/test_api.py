"""The ``/v1`` API over the real SQLite store: routes, formats, auth, paging, erasure."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import webvtt
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from callbridge.api.routes import setup_api
from callbridge.config import ApiSettings, Settings
from callbridge.context import LIVE_CALLS, SETTINGS, STORE
from callbridge.models import (
    CallEnded,
    CallInfo,
    CommittedSegment,
    EndReason,
    Interval,
    Track,
    TrackActivity,
    Word,
)
from callbridge.store.base import OutboxEvent, Store
from callbridge.store.factory import open_store
from callbridge.summary import summarize

PG_URL = os.environ.get("CALLBRIDGE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
TOKEN = "test-token-1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENDED = "CA" + "e" * 32
LIVE = "CA" + "1" * 32
RINGING = "CA" + "2" * 32
AT = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)


def make_segment(
    call_sid: str,
    sequence: int,
    speaker: str,
    text: str,
    start: int,
    end: int,
    words: tuple[Word, ...] = (),
) -> CommittedSegment:
    return CommittedSegment(
        call_sid=call_sid,
        stream_sid="MZ" + call_sid[2:],
        sequence=sequence,
        speaker=speaker,
        track=Track.INBOUND if speaker == "caller" else Track.OUTBOUND,
        text=text,
        start_ms=start,
        end_ms=end,
        language_code="en",
        words=words,
        committed_at=AT,
    )


def ended_segments(call_sid: str) -> list[CommittedSegment]:
    return [
        make_segment(
            call_sid,
            1,
            "caller",
            "Hi <there> & welcome",
            0,
            1500,
            words=(Word("Hi", 0, 300, logprob=-0.1), Word(" ", 300, 320, "spacing")),
        ),
        make_segment(call_sid, 2, "agent", "", 1500, 1600),
        make_segment(call_sid, 3, "agent", "Hello, how can I help?", 1600, 4000),
    ]


async def start_call(store: Store, call_sid: str) -> None:
    await store.call_requested(call_sid, "AC1", "+15550001111", "+15550002222")
    info = CallInfo(
        call_sid=call_sid,
        stream_sid="MZ" + call_sid[2:],
        account_sid="AC1",
        from_number="+15550001111",
        to_number="+15550002222",
        tracks=("inbound", "outbound"),
        custom_parameters={"campaign": "spring"},
        started_at=AT,
    )
    await store.call_started(info, [])


def event_for(segment: CommittedSegment) -> list[OutboxEvent]:
    if not segment.text:
        return []
    body = json.dumps({"type": "transcript.committed", "data": {"text": segment.text}})
    return [
        OutboxEvent(
            event_id=f"evt_{segment.call_sid}_{segment.sequence}",
            call_sid=segment.call_sid,
            event_type="transcript.committed",
            body=body.encode(),
            created_at=AT,
        )
    ]


async def add_segments(store: Store, segments: Iterable[CommittedSegment]) -> None:
    for segment in segments:
        await store.segment_committed(segment, event_for(segment))


async def end_call(store: Store, call_sid: str, segments: list[CommittedSegment]) -> dict[str, Any]:
    ended = CallEnded(
        call_sid=call_sid,
        stream_sid="MZ" + call_sid[2:],
        ended_at=AT,
        duration_ms=5000,
        reason=EndReason.STOP,
        segments=len(segments),
        activity=(
            TrackActivity(Track.INBOUND, "caller", (Interval(0, 1400),)),
            TrackActivity(Track.OUTBOUND, "agent", (Interval(1300, 3900),)),
        ),
        language_code="en",
    )
    summary = summarize(ended, segments)
    await store.call_ended(ended, summary, [])
    return summary


class FakeLiveCalls:
    def __init__(self, live: set[str]) -> None:
        self.live = live

    def is_live(self, call_sid: str) -> bool:
        return call_sid in self.live

    async def end_call(self, call_sid: str, reason: EndReason) -> bool:
        return False


class Database:
    """One empty database (a SQLite file, or a fresh schema on the local PostgreSQL) that
    tests can also read directly, to see that erased data is really gone."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.path = tmp_path / "api.db"
        self.schema = f"cb_api_{uuid.uuid4().hex[:12]}"

    @property
    def url(self) -> str:
        if self.kind == "sqlite":
            return f"sqlite:///{self.path}"
        glue = "&" if "?" in PG_URL else "?"
        return f"{PG_URL}{glue}search_path={self.schema}"

    async def admin(self, statement: str) -> None:
        conn = await asyncpg.connect(PG_URL, timeout=5)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    async def rows_for(self, call_sid: str) -> dict[str, int]:
        """Row count per table with a ``call_sid`` column."""
        if self.kind == "sqlite":
            with sqlite3.connect(self.path) as db:
                tables = [
                    r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
                ]
                counts = {}
                for table in tables:
                    columns = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
                    if "call_sid" in columns:
                        counts[table] = db.execute(
                            f"SELECT COUNT(*) FROM {table} WHERE call_sid = ?", (call_sid,)
                        ).fetchone()[0]
            return counts
        conn = await asyncpg.connect(self.url)
        try:
            tables = await conn.fetch(
                "SELECT table_name FROM information_schema.columns "
                "WHERE table_schema = $1 AND column_name = 'call_sid'",
                self.schema,
            )
            return {
                row["table_name"]: await conn.fetchval(
                    f"SELECT count(*) FROM {row['table_name']} WHERE call_sid = $1", call_sid
                )
                for row in tables
            }
        finally:
            await conn.close()

    async def text_anywhere(self, needle: str) -> bool:
        """Whether ``needle`` appears in any stored row."""
        if self.kind == "sqlite":
            with sqlite3.connect(self.path) as db:
                return needle in "\n".join(db.iterdump())
        conn = await asyncpg.connect(self.url)
        try:
            for table in ("calls", "segments", "events", "deliveries"):
                rows = await conn.fetch(f"SELECT t::text AS row FROM {table} t")
                if any(needle in row["row"] for row in rows):
                    return True
            return False
        finally:
            await conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(request.param, tmp_path)
    if database.kind == "postgres":
        try:
            await database.admin(f"CREATE SCHEMA {database.schema}")
        except (OSError, asyncpg.PostgresError) as exc:
            pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {exc}")
    yield database
    if database.kind == "postgres":
        await database.admin(f"DROP SCHEMA IF EXISTS {database.schema} CASCADE")


@pytest.fixture
async def store(database: Database) -> AsyncIterator[Store]:
    opened = open_store(database.url, webhook_targets=("http://hooks.example/events",))
    await opened.open()
    yield opened
    await opened.close()


def build_app(
    store: Store, tokens: tuple[str, ...] = (TOKEN, "second-token"), max_page_size: int = 200
) -> web.Application:
    app = web.Application()
    app[SETTINGS] = Settings(api=ApiSettings(tokens=tokens, max_page_size=max_page_size))
    app[STORE] = store
    app[LIVE_CALLS] = FakeLiveCalls({LIVE})
    setup_api(app)
    return app


async def client_for(app: web.Application) -> TestClient[web.Request, web.Application]:
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
async def seeded(store: Store) -> dict[str, Any]:
    segments = ended_segments(ENDED)
    await start_call(store, ENDED)
    await add_segments(store, segments)
    summary = await end_call(store, ENDED, segments)
    await start_call(store, LIVE)
    await add_segments(store, [make_segment(LIVE, 1, "caller", "still talking", 0, 900)])
    await store.call_requested(RINGING, "AC1", "+1555", "+1666")
    return {"summary": summary}


@pytest.fixture
async def client(
    store: Store, seeded: dict[str, Any]
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    client = await client_for(build_app(store))
    yield client
    await client.close()


# --- auth ------------------------------------------------------------------------------

V1_REQUESTS = [
    ("GET", "/v1/calls"),
    ("GET", f"/v1/calls/{ENDED}"),
    ("GET", f"/v1/calls/{ENDED}/transcript"),
    ("GET", f"/v1/calls/{ENDED}/summary"),
    ("DELETE", f"/v1/calls/{ENDED}"),
    ("GET", "/v1/nothing-here"),
]


@pytest.mark.parametrize(("method", "path"), V1_REQUESTS)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {TOKEN}x"},
    ],
    ids=["missing", "wrong", "basic", "empty", "prefix"],
)
async def test_every_v1_route_needs_a_valid_token(
    client: TestClient[web.Request, web.Application],
    method: str,
    path: str,
    headers: dict[str, str],
) -> None:
    response = await client.request(method, path, headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    body = await response.json()
    assert body["error"]["code"] == "unauthorized"
    assert body["error"]["message"]


async def test_second_configured_token_works(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get("/v1/calls", headers={"Authorization": "Bearer second-token"})
    assert response.status == 200


async def test_no_tokens_configured_refuses_everyone(store: Store, seeded: dict[str, Any]) -> None:
    client = await client_for(build_app(store, tokens=()))
    try:
        for headers in ({}, AUTH, {"Authorization": "Bearer "}):
            response = await client.get("/v1/calls", headers=headers)
            assert response.status == 401
            assert "WWW-Authenticate" in response.headers
        # the erasure route too: nothing was deleted
        assert (await client.delete(f"/v1/calls/{ENDED}", headers=AUTH)).status == 401
        assert await store.get_call(ENDED) is not None
    finally:
        await client.close()


async def test_openapi_needs_no_token(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/openapi.json")
    assert response.status == 200
    document = await response.json()
    assert document["openapi"].startswith("3.1")


# --- calls -----------------------------------------------------------------------------


async def test_list_calls_newest_first(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/v1/calls", headers=AUTH)
    assert response.status == 200
    body = await response.json()
    assert [c["call_sid"] for c in body["calls"]] == [RINGING, LIVE, ENDED]
    assert body["next_cursor"] is None


async def test_get_call(client: TestClient[web.Request, web.Application]) -> None:
    body = await (await client.get(f"/v1/calls/{ENDED}", headers=AUTH)).json()
    assert body["call_sid"] == ENDED
    assert body["status"] == "ended"
    assert body["from"] == "+15550001111"
    assert body["to"] == "+15550002222"
    assert body["stream_sid"] == "MZ" + "e" * 32
    assert body["tracks"] == ["inbound", "outbound"]
    assert body["custom_parameters"] == {"campaign": "spring"}
    assert body["started_at"] == "2025-03-04T05:06:07.000Z"
    assert body["ended_at"] == "2025-03-04T05:06:07.000Z"
    assert body["duration_ms"] == 5000
    assert body["segments"] == 3
    assert body["reason"] == "stop"
    assert body["language_code"] == "en"
    assert body["degraded"] is None
    assert body["summary_available"] is True

    live = await (await client.get(f"/v1/calls/{LIVE}", headers=AUTH)).json()
    assert live["status"] == "live"
    assert live["ended_at"] is None
    ringing = await (await client.get(f"/v1/calls/{RINGING}", headers=AUTH)).json()
    assert ringing["status"] == "ringing"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/calls/CAunknown",
        "/v1/calls/CAunknown/transcript",
        "/v1/calls/CAunknown/transcript?format=vtt",
        "/v1/calls/CAunknown/summary",
    ],
)
async def test_unknown_call_is_404(
    client: TestClient[web.Request, web.Application], path: str
) -> None:
    response = await client.get(path, headers=AUTH)
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "call_not_found"


async def test_unknown_call_delete_is_404(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.delete("/v1/calls/CAunknown", headers=AUTH)
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "call_not_found"


async def test_unknown_route_and_method_are_json(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get("/v1/elsewhere", headers=AUTH)
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"
    response = await client.post("/v1/calls", headers=AUTH)
    assert response.status == 405
    assert (await response.json())["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/calls?fromat=vtt"),
        ("GET", f"/v1/calls/{ENDED}?x=1"),
        ("GET", f"/v1/calls/{ENDED}/transcript?fromat=vtt"),
        ("GET", f"/v1/calls/{ENDED}/summary?format=json"),
        ("DELETE", f"/v1/calls/{ENDED}?forse=true"),
        ("DELETE", f"/v1/calls/{ENDED}?force=false&force=true"),
    ],
)
async def test_unknown_or_repeated_query_parameter_is_400(
    client: TestClient[web.Request, web.Application], store: Store, method: str, path: str
) -> None:
    response = await client.request(method, path, headers=AUTH)
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "invalid_query"
    assert await store.get_call(ENDED) is not None


# --- transcript ------------------------------------------------------------------------


async def test_transcript_json(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get(f"/v1/calls/{ENDED}/transcript", headers=AUTH)
    assert response.status == 200
    assert response.content_type == "application/json"
    body = await response.json()
    assert body["call_sid"] == ENDED
    assert body["status"] == "ended"
    assert [s["sequence"] for s in body["segments"]] == [1, 2, 3]
    first = body["segments"][0]
    assert first == {
        "call_sid": ENDED,
        "stream_sid": "MZ" + "e" * 32,
        "sequence": 1,
        "speaker": "caller",
        "track": "inbound",
        "text": "Hi <there> & welcome",
        "start_ms": 0,
        "end_ms": 1500,
        "language_code": "en",
        "words": [
            {"text": "Hi", "start_ms": 0, "end_ms": 300, "type": "word", "logprob": -0.1},
            {"text": " ", "start_ms": 300, "end_ms": 320, "type": "spacing"},
        ],
        "committed_at": "2025-03-04T05:06:07.000Z",
    }
    assert body["segments"][1]["text"] == ""  # empty segments are kept in json


async def test_transcript_txt(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get(f"/v1/calls/{ENDED}/transcript?format=txt", headers=AUTH)
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert await response.text() == (
        "caller: Hi <there> & welcome\nagent: Hello, how can I help?\n"
    )


async def test_transcript_vtt(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get(f"/v1/calls/{ENDED}/transcript?format=vtt", headers=AUTH)
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/vtt; charset=utf-8"
    text = await response.text()
    assert text.startswith("WEBVTT\n\n")
    captions = webvtt.from_buffer(io.StringIO(text))
    assert [(c.start, c.end, c.voice) for c in captions] == [
        ("00:00:00.000", "00:00:01.500", "caller"),
        ("00:00:01.600", "00:00:04.000", "agent"),
    ]
    assert "<v caller>Hi &lt;there&gt; &amp; welcome</v>" in text


async def test_transcript_srt(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get(f"/v1/calls/{ENDED}/transcript?format=srt", headers=AUTH)
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/x-subrip; charset=utf-8"
    assert await response.text() == (
        "1\n00:00:00,000 --> 00:00:01,500\ncaller: Hi <there> & welcome\n\n"
        "2\n00:00:01,600 --> 00:00:04,000\nagent: Hello, how can I help?\n"
    )


@pytest.mark.parametrize(
    "query", ["format=pdf", "format=JSONX", "format=VTT", "format=vtt%20", "format=txt&format=vtt"]
)
async def test_transcript_unknown_format_is_400(
    client: TestClient[web.Request, web.Application], query: str
) -> None:
    response = await client.get(f"/v1/calls/{ENDED}/transcript?{query}", headers=AUTH)
    assert response.status == 400
    expected = "invalid_query" if query.count("format=") > 1 else "invalid_format"
    assert (await response.json())["error"]["code"] == expected


async def test_live_call_transcript_so_far_and_summary_409(
    client: TestClient[web.Request, web.Application], store: Store
) -> None:
    body = await (await client.get(f"/v1/calls/{LIVE}/transcript", headers=AUTH)).json()
    assert body["status"] == "live"
    assert [s["text"] for s in body["segments"]] == ["still talking"]

    await add_segments(store, [make_segment(LIVE, 2, "agent", "go on", 900, 1500)])
    text = await (await client.get(f"/v1/calls/{LIVE}/transcript?format=txt", headers=AUTH)).text()
    assert text == "caller: still talking\nagent: go on\n"

    for sid in (LIVE, RINGING):
        response = await client.get(f"/v1/calls/{sid}/summary", headers=AUTH)
        assert response.status == 409
        assert (await response.json())["error"]["code"] == "call_not_ended"

    ringing = await (await client.get(f"/v1/calls/{RINGING}/transcript", headers=AUTH)).json()
    assert ringing == {
        "call_sid": RINGING,
        "status": "ringing",
        "segments": [],
        "version": "live",
    }


# --- summary ---------------------------------------------------------------------------


async def test_summary_of_ended_call(
    client: TestClient[web.Request, web.Application], seeded: dict[str, Any]
) -> None:
    response = await client.get(f"/v1/calls/{ENDED}/summary", headers=AUTH)
    assert response.status == 200
    body = await response.json()
    assert body == seeded["summary"]
    assert body["speakers"]["caller"]["talk_ms"] == 1400
    assert body["speakers"]["agent"]["talk_ms"] == 2600
    assert body["overlap_ms"] == 100
    assert body["silence_ms"] == 5000 - 3900
    assert body["transcript"] == "caller: Hi <there> & welcome\nagent: Hello, how can I help?"


async def test_summary_carries_the_ai_summary_as_it_progresses(
    client: TestClient[web.Request, web.Application], store: Store, seeded: dict[str, Any]
) -> None:
    url = f"/v1/calls/{ENDED}/summary"
    assert "ai" not in await (await client.get(url, headers=AUTH)).json()  # AI summary off
    call = await (await client.get(f"/v1/calls/{ENDED}", headers=AUTH)).json()
    assert call["ai_summary_status"] is None
    for ai in (
        {"status": "pending", "created_at": "2025-03-04T05:06:08.000Z"},
        {
            "status": "failed",
            "created_at": "2025-03-04T05:07:08.000Z",
            "model": None,
            "error": {"code": "llm_unavailable", "message": "timeout (gave up)"},
        },
    ):
        assert await store.set_ai_summary(ENDED, ai, [])
        body = await (await client.get(url, headers=AUTH)).json()
        assert body["ai"] == ai
        assert {k: v for k, v in body.items() if k != "ai"} == seeded["summary"]
        call = await (await client.get(f"/v1/calls/{ENDED}", headers=AUTH)).json()
        assert call["ai_summary_status"] == ai["status"]


# --- paging ----------------------------------------------------------------------------


async def test_pagination_visits_every_call_once(store: Store) -> None:
    sids = [f"CA{n:032d}" for n in range(23)]
    for sid in sids:
        await store.call_requested(sid, "AC1", None, None)
    client = await client_for(build_app(store, max_page_size=10))
    try:
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            params = {"limit": "4"} | ({"cursor": cursor} if cursor else {})
            response = await client.get("/v1/calls", params=params, headers=AUTH)
            assert response.status == 200
            body = await response.json()
            assert len(body["calls"]) <= 4
            seen.extend(c["call_sid"] for c in body["calls"])
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
            # a call arriving between pages shows up on no later page and disturbs nothing
            if pages == 2:
                await store.call_requested("CA" + "f" * 32, "AC1", None, None)
        assert pages == 6
        assert len(seen) == len(set(seen)) == 23
        assert set(seen) == set(sids)

        created = [
            (await (await client.get(f"/v1/calls/{sid}", headers=AUTH)).json())["created_at"]
            for sid in seen
        ]
        assert created == sorted(created, reverse=True)

        default = await (await client.get("/v1/calls", headers=AUTH)).json()
        assert len(default["calls"]) == 10  # default 50, bounded by max_page_size
    finally:
        await client.close()


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "-1"},
        {"limit": "201"},
        {"limit": "ten"},
        {"limit": "1.5"},
        {"limit": ""},
        {"limit": "٣"},
        [("limit", "5"), ("limit", "6")],
    ],
)
async def test_invalid_limit_is_400(
    client: TestClient[web.Request, web.Application], params: Any
) -> None:
    response = await client.get("/v1/calls", params=params, headers=AUTH)
    assert response.status == 400
    expected = "invalid_query" if isinstance(params, list) else "invalid_limit"
    assert (await response.json())["error"]["code"] == expected


@pytest.mark.parametrize("cursor", ["garbage", "!!!", "WzEsMl0", "bnVsbA"])
async def test_invalid_cursor_is_400(
    client: TestClient[web.Request, web.Application], cursor: str
) -> None:
    response = await client.get("/v1/calls", params={"cursor": cursor}, headers=AUTH)
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "invalid_cursor"


# --- erasure ---------------------------------------------------------------------------


async def test_delete_erases_the_call_from_the_database(
    client: TestClient[web.Request, web.Application], store: Store, database: Database
) -> None:
    before = await database.rows_for(ENDED)
    assert await database.text_anywhere("welcome")
    assert before["calls"] == 1
    assert before["segments"] == 3
    assert before["events"] == 2  # the two non-empty segments' pending webhook events
    assert before["deliveries"] == 2

    response = await client.delete(f"/v1/calls/{ENDED}", headers=AUTH)
    assert response.status == 204
    assert await response.read() == b""

    assert set((await database.rows_for(ENDED)).values()) == {0}
    assert not await database.text_anywhere("welcome")
    assert not await database.text_anywhere("Hello, how can I help")
    assert await database.text_anywhere("still talking")  # the live call's text remains
    assert await store.get_call(ENDED) is None
    assert await store.get_segments(ENDED) == []

    assert (await client.get(f"/v1/calls/{ENDED}", headers=AUTH)).status == 404
    assert (await client.delete(f"/v1/calls/{ENDED}", headers=AUTH)).status == 404
    # other calls are untouched
    assert (await database.rows_for(LIVE))["segments"] == 1


async def test_delete_live_call_is_409(
    client: TestClient[web.Request, web.Application], store: Store
) -> None:
    for query in ("", "?force=true"):  # live in this process: never erased under the bridge
        response = await client.delete(f"/v1/calls/{LIVE}{query}", headers=AUTH)
        assert response.status == 409
        assert (await response.json())["error"]["code"] == "call_live"
    assert await store.get_call(LIVE) is not None


async def test_delete_stale_live_call_needs_force(store: Store) -> None:
    stale = "CA" + "5" * 32
    await start_call(store, stale)  # recorded live, but no stream here (e.g. after a crash)
    client = await client_for(build_app(store))
    try:
        response = await client.delete(f"/v1/calls/{stale}", headers=AUTH)
        assert response.status == 409
        response = await client.delete(f"/v1/calls/{stale}?force=yes", headers=AUTH)
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "invalid_force"
        response = await client.delete(f"/v1/calls/{stale}?force=true", headers=AUTH)
        assert response.status == 204
        assert await store.get_call(stale) is None
    finally:
        await client.close()


async def test_delete_ringing_call(
    client: TestClient[web.Request, web.Application], store: Store
) -> None:
    assert (await client.delete(f"/v1/calls/{RINGING}", headers=AUTH)).status == 204
    assert await store.get_call(RINGING) is None


async def test_store_failure_is_503(store: Store, seeded: dict[str, Any]) -> None:
    from callbridge.store.base import StoreError

    class BrokenStore:
        def on_events_stored(self, callback: Any) -> None:
            pass  # the one synchronous method: registering a callback touches no database

        def __getattr__(self, name: str) -> Any:
            async def fail(*args: Any, **kwargs: Any) -> Any:
                raise StoreError("database is locked")

            return fail

    client = await client_for(build_app(BrokenStore()))  # type: ignore[arg-type]
    try:
        response = await client.get(f"/v1/calls/{ENDED}", headers=AUTH)
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "store_unavailable"
    finally:
        await client.close()
