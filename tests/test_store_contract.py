"""The store contract, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from callbridge.models import CallEnded, CallInfo, CommittedSegment, EndReason, Track, Word
from callbridge.store.base import (
    CallStatus,
    DurableStore,
    OutboxEvent,
    StoreError,
    StreamClaim,
    decode_cursor,
    encode_cursor,
    from_micros,
)
from callbridge.store.factory import open_store, sqlite_path
from callbridge.store.postgres import PostgresStore
from callbridge.store.sqlite import SqliteStore
from callbridge.webhooks.events import (
    call_ended_event,
    call_started_event,
    call_summarized_event,
    transcript_committed_event,
)

PG_URL = os.environ.get("CALLBRIDGE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
TARGETS = ("http://a.example/hook", "http://b.example/hook")
T0 = datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


class FakeClock:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def _with_query(url: str, **params: str) -> str:
    glue = "&" if "?" in url else "?"
    return url + glue + "&".join(f"{key}={value}" for key, value in params.items())


class Backend:
    """Builds stores on one database and can count raw rows, for erasure checks."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.schema = f"cb_test_{uuid.uuid4().hex[:12]}"
        self.clock = FakeClock()

    async def setup(self) -> None:
        if self.kind == "postgres":
            try:
                conn = await asyncpg.connect(PG_URL, timeout=5)
            except (OSError, asyncpg.PostgresError) as exc:
                pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {exc}")
            await conn.execute(f"CREATE SCHEMA {self.schema}")
            await conn.close()

    async def teardown(self) -> None:
        if self.kind == "postgres":
            conn = await asyncpg.connect(PG_URL)
            await conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
            await conn.close()

    @property
    def url(self) -> str:
        if self.kind == "sqlite":
            return f"sqlite:///{self.tmp_path / 'callbridge.db'}"
        return _with_query(PG_URL, search_path=self.schema)

    def store(self, targets: tuple[str, ...] = TARGETS) -> DurableStore:
        if self.kind == "sqlite":
            return SqliteStore(
                self.tmp_path / "callbridge.db", webhook_targets=targets, clock=self.clock
            )
        return PostgresStore(self.url, webhook_targets=targets, clock=self.clock)

    async def raw_count(self, table: str, call_sid: str) -> int:
        if self.kind == "sqlite":
            with sqlite3.connect(self.tmp_path / "callbridge.db") as conn:
                row = conn.execute(
                    f"SELECT count(*) FROM {table} WHERE call_sid = ?", (call_sid,)
                ).fetchone()
                return int(row[0])
        conn = await asyncpg.connect(self.url)
        try:
            return int(
                await conn.fetchval(f"SELECT count(*) FROM {table} WHERE call_sid = $1", call_sid)
            )
        finally:
            await conn.close()

    async def set_schema_version(self, version: int) -> None:
        if self.kind == "sqlite":
            with sqlite3.connect(self.tmp_path / "callbridge.db") as conn:
                conn.execute(f"PRAGMA user_version = {version}")
            return
        conn = await asyncpg.connect(self.url)
        try:
            await conn.execute("INSERT INTO callbridge_schema VALUES ($1)", version)
        finally:
            await conn.close()


def call_info(call_sid: str = "CA1", started_at: datetime = T0) -> CallInfo:
    return CallInfo(
        call_sid=call_sid,
        stream_sid=f"MZ{call_sid}",
        account_sid="AC1",
        from_number="+15550001",
        to_number="+15550002",
        tracks=("inbound", "outbound"),
        custom_parameters={"campaign": "spring", "ünïcode": "✓"},
        started_at=started_at,
    )


def segment(call_sid: str, sequence: int, text: str = "hello there") -> CommittedSegment:
    return CommittedSegment(
        call_sid=call_sid,
        stream_sid=f"MZ{call_sid}",
        sequence=sequence,
        speaker="caller" if sequence % 2 else "agent",
        track=Track.INBOUND if sequence % 2 else Track.OUTBOUND,
        text=text,
        start_ms=sequence * 1000,
        end_ms=sequence * 1000 + 800,
        language_code="en",
        words=(Word("hello", sequence * 1000, sequence * 1000 + 300, logprob=-0.1),),
        committed_at=T0 + timedelta(seconds=sequence),
    )


def ended(call_sid: str, segments: int) -> CallEnded:
    return CallEnded(
        call_sid=call_sid,
        stream_sid=f"MZ{call_sid}",
        ended_at=T0 + timedelta(minutes=1),
        duration_ms=60_000,
        reason=EndReason.STOP,
        segments=segments,
        activity=(),
        language_code="en",
    )


async def run_call(store: DurableStore, call_sid: str, segments: int = 3) -> None:
    info = call_info(call_sid)
    await store.call_started(info, [call_started_event(info)])
    for sequence in range(1, segments + 1):
        seg = segment(call_sid, sequence)
        await store.segment_committed(seg, [transcript_committed_event(seg)])
    end = ended(call_sid, segments)
    summary = {"call_sid": call_sid, "segments": segments}
    await store.call_ended(end, summary, [call_ended_event(end, summary)])


# calls and segments -----------------------------------------------------------------------


async def test_call_lifecycle_round_trips(store: DurableStore) -> None:
    await store.call_requested("CA1", "AC1", "+15550001", "+15550002")
    record = await store.get_call("CA1")
    assert record is not None and record.status == CallStatus.RINGING
    await store.twilio_status("CA1", "in-progress", None)

    info = call_info("CA1")
    await store.call_started(info, [call_started_event(info)])
    record = await store.get_call("CA1")
    assert record is not None
    assert record.status == CallStatus.LIVE
    assert record.stream_sid == "MZCA1"
    assert record.tracks == ("inbound", "outbound")
    assert record.custom_parameters == {"campaign": "spring", "ünïcode": "✓"}
    assert record.started_at == T0
    assert record.created_at == T0

    for sequence in (1, 2):
        seg = segment("CA1", sequence)
        await store.segment_committed(seg, [transcript_committed_event(seg)])
    assert (await store.get_segments("CA1")) == [segment("CA1", 1), segment("CA1", 2)]

    end = ended("CA1", 2)
    await store.call_ended(end, {"talk_ratio": 0.5}, [call_ended_event(end, {})])
    await store.twilio_status("CA1", "completed", 61)
    record = await store.get_call("CA1")
    assert record is not None
    assert record.status == CallStatus.ENDED
    assert record.segments == 2
    assert record.duration_ms == 60_000
    assert record.end_reason == "stop"
    assert record.summary == {"talk_ratio": 0.5}
    assert record.twilio_status == "completed"
    assert record.twilio_duration_s == 61
    assert record.from_number == "+15550001"
    assert record.language_code == "en"
    assert await store.get_call("CA-unknown") is None


async def test_the_ai_summary_is_stored_with_the_call_and_its_event(
    store: DurableStore, backend: Backend
) -> None:
    await run_call(store, "CA1")
    assert (await store.get_call("CA1")).ai_summary is None  # type: ignore[union-attr]
    pending = {"status": "pending", "created_at": "2025-01-02T03:04:05.123Z"}
    end = ended("CA2", 0)
    summary = {"talk_ratio": 0, "ai": pending}
    await store.call_ended(end, summary, [call_ended_event(end, summary)])
    record = await store.get_call("CA2")
    assert record is not None and record.ai_summary == pending  # its own column
    assert record.summary == {"talk_ratio": 0}
    events_before = await backend.raw_count("events", "CA2")
    ready = {"status": "ready", "created_at": "2025-01-02T03:05:00.000Z", "gist": "Ünïcode ✓"}
    event = call_summarized_event("CA2", ready)
    assert await store.set_ai_summary("CA2", ready, [event])
    record = await store.get_call("CA2")
    assert record is not None and record.ai_summary == ready
    assert record.summary == {"talk_ratio": 0}  # the analytics summary is untouched
    assert await backend.raw_count("events", "CA2") == events_before + 1
    # a final state is written once: a second writer stores and sends nothing
    failed = {"status": "failed", "created_at": "2025-01-02T03:06:00.000Z"}
    assert not await store.set_ai_summary("CA2", failed, [call_summarized_event("CA2", failed)])
    assert (await store.get_call("CA2")).ai_summary == ready  # type: ignore[union-attr]
    assert await backend.raw_count("events", "CA2") == events_before + 1
    # an erased (or unknown) call stores nothing, and sends nothing
    assert await store.delete_call("CA2")
    assert not await store.set_ai_summary("CA2", ready, [call_summarized_event("CA2", ready)])
    assert await store.get_call("CA2") is None
    assert await backend.raw_count("events", "CA2") == 0


async def test_an_ended_call_is_never_written_again(store: DurableStore) -> None:
    """A replayed or forged stream for an ended call rewrites nothing and sends nothing."""
    await store.call_requested("CA1", "AC1", "+15550001", "+15550002")
    await run_call(store, "CA1", segments=2)
    before = await store.get_call("CA1")
    transcript = await store.get_segments("CA1")
    deliveries = await store.delivery_counts()
    assert before is not None and before.status == CallStatus.ENDED

    forged = CallInfo(
        call_sid="CA1",
        stream_sid="MZforged",
        account_sid="ACforged",
        from_number="+19990000",
        to_number="+19990001",
        tracks=("inbound",),
        custom_parameters={"campaign": "forged"},
        started_at=T0 + timedelta(hours=1),
    )
    await store.call_requested("CA1", "ACforged", "+19990000", "+19990001")
    await store.call_started(forged, [call_started_event(forged)])
    for sequence in (1, 3, 4):
        seg = segment("CA1", sequence, text="forged words")
        await store.segment_committed(seg, [transcript_committed_event(seg)])
    end = ended("CA1", 9)
    await store.call_ended(end, {"forged": True}, [call_ended_event(end, {"forged": True})])

    assert await store.get_call("CA1") == before
    assert await store.get_segments("CA1") == transcript
    assert await store.delivery_counts() == deliveries


async def test_twilio_status_replays_change_nothing(store: DurableStore) -> None:
    await store.call_requested("CA1", "AC1", None, None)
    await store.twilio_status("CA1", "in-progress", None)
    await store.twilio_status("CA1", "completed", 61)
    after_completed = await store.get_call("CA1")
    # Replays of the signed callbacks, in any order: nothing changes any more.
    await store.twilio_status("CA1", "completed", 61)
    await store.twilio_status("CA1", "in-progress", None)
    await store.twilio_status("CA1", "ringing", None)
    await store.twilio_status("CA1", "completed", None)
    assert await store.get_call("CA1") == after_completed
    assert after_completed is not None
    assert (after_completed.twilio_status, after_completed.twilio_duration_s) == ("completed", 61)


async def stream_lease(backend: Backend, call_sid: str) -> tuple[str | None, datetime | None]:
    """(owner, lease expiry) of a call's stream claim, read from the database."""
    if backend.kind == "sqlite":
        with sqlite3.connect(backend.tmp_path / "callbridge.db") as conn:
            row = conn.execute(
                "SELECT stream_owner, stream_lease_expires_at FROM calls WHERE call_sid = ?",
                (call_sid,),
            ).fetchone()
        expires = row[1]
        return row[0], None if expires is None else from_micros(expires)
    conn = await asyncpg.connect(backend.url)
    try:
        row = await conn.fetchrow(
            "SELECT stream_owner, stream_lease_expires_at FROM calls WHERE call_sid = $1",
            call_sid,
        )
    finally:
        await conn.close()
    return row[0], row[1]


async def test_stream_claim_is_one_owner_at_a_time_until_its_lease_expires(
    store: DurableStore, backend: Backend
) -> None:
    clock = backend.clock
    assert await store.claim_stream("CA1", "host:1:a", 30) == StreamClaim.CLAIMED
    record = await store.get_call("CA1")  # a stream may come before any voice webhook
    assert record is not None and record.status == CallStatus.RINGING
    assert await stream_lease(backend, "CA1") == ("host:1:a", T0 + timedelta(seconds=30))
    assert await store.claim_stream("CA1", "host:2:b", 30) == StreamClaim.LIVE_ELSEWHERE
    assert await store.claim_stream("CA1", "host:1:a", 30) == StreamClaim.LIVE_ELSEWHERE

    clock.advance(20)  # the owner's heartbeat: its own calls only
    assert await store.renew_stream_claims("host:1:a", ["CA1", "CA-other"], 30) == {"CA1"}
    assert await store.renew_stream_claims("host:2:b", ["CA1"], 30) == set()
    assert await stream_lease(backend, "CA1") == ("host:1:a", T0 + timedelta(seconds=50))
    clock.advance(29)
    assert await store.claim_stream("CA1", "host:2:b", 30) == StreamClaim.LIVE_ELSEWHERE

    clock.advance(2)  # the owner crashed: nobody renewed, the lease ran out
    assert await store.claim_stream("CA1", "host:2:b", 30) == StreamClaim.CLAIMED
    assert await store.renew_stream_claims("host:1:a", ["CA1"], 30) == set()  # lost
    await store.release_stream("CA1", "host:1:a")  # not its lease any more: nothing happens
    assert (await stream_lease(backend, "CA1"))[0] == "host:2:b"
    await store.release_stream("CA1", "host:2:b")
    assert await stream_lease(backend, "CA1") == (None, None)
    assert await store.claim_stream("CA1", "host:3:c", 30) == StreamClaim.CLAIMED


async def test_an_ended_call_cannot_be_claimed_and_its_end_releases_the_claim(
    store: DurableStore, backend: Backend
) -> None:
    assert await store.claim_stream("CA1", "host:1:a", 30) == StreamClaim.CLAIMED
    await run_call(store, "CA1", segments=1)
    assert await stream_lease(backend, "CA1") == (None, None)
    assert await store.claim_stream("CA1", "host:1:a", 30) == StreamClaim.ENDED
    assert await store.claim_stream("CA1", "host:2:b", 30) == StreamClaim.ENDED
    backend.clock.advance(3600)
    assert await store.claim_stream("CA1", "host:2:b", 30) == StreamClaim.ENDED


async def test_concurrent_claims_across_connections_give_one_owner(
    store: DurableStore, backend: Backend
) -> None:
    second = backend.store()
    await second.open()
    try:
        results = await asyncio.gather(
            *(
                (store if i % 2 else second).claim_stream(f"CA{i % 5}", f"host:{i}:x", 30)
                for i in range(40)
            )
        )
    finally:
        await second.close()
    claimed = [i for i, result in enumerate(results) if result == StreamClaim.CLAIMED]
    assert sorted(i % 5 for i in claimed) == [0, 1, 2, 3, 4]  # exactly one owner per call
    for i in claimed:
        assert (await stream_lease(backend, f"CA{i % 5}"))[0] == f"host:{i}:x"


async def test_a_lost_owners_live_calls_are_taken_over_once_their_lease_expired(
    store: DurableStore, backend: Backend
) -> None:
    clock = backend.clock
    for sid in ("CA-lost", "CA-renewed", "CA-ringing", "CA-mine", "CA-ended"):
        owner = "host:9:me" if sid == "CA-mine" else "host:1:a"
        assert await store.claim_stream(sid, owner, 30) == StreamClaim.CLAIMED
        if sid != "CA-ringing":  # claimed, its start never stored
            await store.call_started(call_info(sid), [call_started_event(call_info(sid))])
    await store.segment_committed(segment("CA-lost", 1), [])
    await store.call_ended(ended("CA-ended", 0), {}, [])
    assert await store.stream_lease_expiry("CA-lost") == T0 + timedelta(seconds=30)
    assert await store.stream_lease_expiry("CA-ended") is None  # ending released it

    clock.advance(29)
    assert await store.take_over_lost_streams("host:9:me", 30, 10) == []  # not expired yet
    assert await store.renew_stream_claims("host:1:a", ["CA-renewed"], 30) == {"CA-renewed"}
    assert await store.renew_stream_claims("host:9:me", ["CA-mine"], 30) == {"CA-mine"}
    clock.advance(2)
    taken = await store.take_over_lost_streams("host:9:me", 30, 10)
    # Only the live call of another owner whose lease ran out; not its own, not a ringing
    # claim, not a renewed one, not an ended call.
    assert [(t.call.call_sid, t.previous_owner) for t in taken] == [("CA-lost", "host:1:a")]
    assert taken[0].lease_expired_at == T0 + timedelta(seconds=30)
    assert taken[0].call.status == CallStatus.LIVE and taken[0].call.segments == 1
    assert await stream_lease(backend, "CA-lost") == (
        "host:9:me",
        clock.now + timedelta(seconds=30),
    )
    # Taken once: another survivor finds nothing; the lost owner's heartbeat learns it lost it.
    assert await store.take_over_lost_streams("host:7:other", 30, 10) == []
    assert await store.renew_stream_claims("host:1:a", ["CA-lost"], 30) == set()
    # The survivor's end releases the claim and is final.
    await store.call_ended(ended("CA-lost", 1), {}, [])
    assert await stream_lease(backend, "CA-lost") == (None, None)
    clock.advance(120)  # never its own calls: those its heartbeat renews
    taken = await store.take_over_lost_streams("host:9:me", 30, 10)
    assert [t.call.call_sid for t in taken] == ["CA-renewed"]
    taken = await store.take_over_lost_streams("host:7:other", 30, 10)
    assert [t.call.call_sid for t in taken] == ["CA-mine"]


async def test_concurrent_take_overs_give_each_lost_call_to_one_survivor(
    store: DurableStore, backend: Backend
) -> None:
    for i in range(12):
        sid = f"CA{i}"
        assert await store.claim_stream(sid, "host:1:dead", 30) == StreamClaim.CLAIMED
        await store.call_started(call_info(sid), [])
    backend.clock.advance(31)
    second = backend.store()
    await second.open()
    try:
        batches = await asyncio.gather(
            *(
                (store if i % 2 else second).take_over_lost_streams(f"host:{i}:x", 30, 5)
                for i in range(6)
            )
        )
    finally:
        await second.close()
    taken = [t.call.call_sid for batch in batches for t in batch]
    assert sorted(taken) == sorted(f"CA{i}" for i in range(12))  # each exactly once


async def test_calls_ended_by_twilio_are_those_of_the_owner_with_a_final_status(
    store: DurableStore,
) -> None:
    for sid, owner in (("CA1", "host:1:a"), ("CA2", "host:1:a"), ("CA3", "host:2:b")):
        assert await store.claim_stream(sid, owner, 30) == StreamClaim.CLAIMED
        await store.call_started(call_info(sid), [])
    await store.twilio_status("CA1", "completed", 42)
    await store.twilio_status("CA2", "in-progress", None)
    await store.twilio_status("CA3", "completed", 7)
    assert await store.calls_ended_by_twilio("host:1:a") == {"CA1"}
    assert await store.calls_ended_by_twilio("host:2:b") == {"CA3"}
    assert await store.calls_ended_by_twilio("host:3:c") == set()


async def test_every_event_gets_one_delivery_per_target(store: DurableStore) -> None:
    await run_call(store, "CA1", segments=3)
    counts = await store.delivery_counts()
    assert (counts.pending, counts.delivered, counts.failed) == (5 * len(TARGETS), 0, 0)
    assert await store.pending_deliveries_exist()


async def test_no_targets_means_no_deliveries_but_the_event_log_is_kept(
    backend: Backend,
) -> None:
    store = backend.store(targets=())
    await store.open()
    try:
        await run_call(store, "CA1")
        assert await backend.raw_count("deliveries", "CA1") == 0
        assert not await store.pending_deliveries_exist()
        logged = (await store.events_after({"CA1": 0}, 100))["CA1"]
        assert logged is not None and len(logged) == 5
    finally:
        await store.close()


async def test_segment_and_event_share_one_transaction(
    store: DurableStore, backend: Backend
) -> None:
    seg = segment("CA1", 1)
    broken = OutboxEvent("evt_broken", "CA1", "transcript.committed", None, T0)  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        await store.segment_committed(seg, [broken])
    assert await store.get_segments("CA1") == []
    assert await backend.raw_count("deliveries", "CA1") == 0
    # and the store is still usable afterwards
    await store.segment_committed(seg, [transcript_committed_event(seg)])
    assert len(await store.get_segments("CA1")) == 1


async def test_sequences_are_unique_and_repeats_enqueue_nothing(
    store: DurableStore, backend: Backend
) -> None:
    seg = segment("CA1", 1)
    await store.segment_committed(seg, [transcript_committed_event(seg)])
    await store.segment_committed(seg, [transcript_committed_event(seg)])  # a new event id
    assert len(await store.get_segments("CA1")) == 1
    assert await backend.raw_count("events", "CA1") == 1
    info = call_info("CA1")
    await store.call_started(info, [call_started_event(info)])
    await store.call_started(info, [call_started_event(info)])
    end = ended("CA1", 1)
    await store.call_ended(end, {}, [call_ended_event(end, {})])
    await store.call_ended(end, {}, [call_ended_event(end, {})])
    assert await backend.raw_count("events", "CA1") == 3
    record = await store.get_call("CA1")
    assert record is not None and record.segments == 1


async def test_list_calls_pages_without_duplicates_or_gaps(
    store: DurableStore, backend: Backend
) -> None:
    expected: list[str] = []
    for index in range(23):
        if index % 4 == 0:
            backend.clock.advance(1)  # groups of equal created_at exercise the tie-break
        call_sid = f"CA{index:03d}"
        await store.call_requested(call_sid, "AC1", None, None)
        expected.append(call_sid)
    newest_first = sorted(expected, key=lambda sid: (int(sid[2:]) // 4, sid), reverse=True)

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page, cursor = await store.list_calls(5, cursor)
        seen.extend(record.call_sid for record in page)
        pages += 1
        # new calls arriving meanwhile land before the cursor, never inside later pages
        backend.clock.advance(1)
        await store.call_requested(f"CB{pages:03d}", None, None, None)
        if cursor is None:
            break
    assert seen == newest_first
    assert pages == 5

    page, cursor = await store.list_calls(100, None)
    assert cursor is None and len(page) == 23 + pages


async def test_list_calls_by_status(store: DurableStore, backend: Backend) -> None:
    await store.call_requested("CA-ringing", None, None, None)
    for call_sid in ("CA-live-1", "CA-live-2", "CA-live-3"):
        backend.clock.advance(1)
        await store.call_started(call_info(call_sid), [])
    await run_call(store, "CA-ended")
    live, cursor = await store.list_calls(2, None, CallStatus.LIVE)
    assert [c.call_sid for c in live] == ["CA-live-3", "CA-live-2"] and cursor is not None
    rest, cursor = await store.list_calls(2, cursor, CallStatus.LIVE)
    assert [c.call_sid for c in rest] == ["CA-live-1"] and cursor is None
    ended_calls, _ = await store.list_calls(10, None, CallStatus.ENDED)
    assert [c.call_sid for c in ended_calls] == ["CA-ended"]
    ringing, _ = await store.list_calls(10, None, CallStatus.RINGING)
    assert [c.call_sid for c in ringing] == ["CA-ringing"]


async def test_list_calls_rejects_foreign_cursors(store: DurableStore) -> None:
    with pytest.raises(ValueError):
        await store.list_calls(10, "not-a-cursor")
    assert decode_cursor(encode_cursor(123, "CA1")) == (123, "CA1")


async def test_delete_call_erases_rows(store: DurableStore, backend: Backend) -> None:
    await run_call(store, "CA1")
    await run_call(store, "CA2")
    assert await store.delete_call("CA1")
    assert await store.get_call("CA1") is None
    assert await store.get_segments("CA1") == []
    for table in ("calls", "segments", "events", "deliveries"):
        assert await backend.raw_count(table, "CA1") == 0, table
        assert await backend.raw_count(table, "CA2") > 0, table
    assert not await store.delete_call("CA1")
    counts = await store.delivery_counts()
    assert counts.pending == 5 * len(TARGETS)


# the event log ----------------------------------------------------------------------------


async def test_event_log_numbers_each_calls_events_in_order(store: DurableStore) -> None:
    info = call_info("CA1")
    started = call_started_event(info)
    await store.call_started(info, [started])
    await run_call(store, "CA2", segments=1)
    sent = [started]
    for sequence in (1, 2):
        seg = segment("CA1", sequence)
        sent.append(transcript_committed_event(seg))
        await store.segment_committed(seg, sent[-1:])
    await store.segment_committed(segment("CA1", 3, text=""), [])  # no event: no position

    log = (await store.events_after({"CA1": 0}, 100))["CA1"]
    assert log is not None
    assert [e.position for e in log] == [1, 2, 3]
    assert [(e.event_id, e.event_type, e.body) for e in log] == [
        (event.event_id, event.event_type, event.body) for event in sent
    ]
    assert all(e.call_sid == "CA1" for e in log)
    # the same bytes as the webhook body
    assert log[1].body == sent[1].body

    after = await store.events_after({"CA1": 1, "CA2": 2, "CA-none": 0}, 1)
    first_after = after["CA1"]
    assert first_after is not None and [e.position for e in first_after] == [2]
    ca2 = after["CA2"]
    assert ca2 is not None and [e.event_type for e in ca2] == ["call.ended"]
    assert after["CA-none"] is None
    assert await store.events_after({}, 10) == {}

    assert await store.event_position("CA1", sent[2].event_id) == 3
    assert await store.event_position("CA2", sent[2].event_id) is None  # not that call's
    assert await store.event_position("CA1", "evt_unknown") is None


async def test_event_log_of_a_call_without_events_is_empty_not_missing(
    store: DurableStore,
) -> None:
    await store.call_requested("CA1", None, None, None)
    assert await store.events_after({"CA1": 0}, 10) == {"CA1": []}
    await store.delete_call("CA1")
    assert await store.events_after({"CA1": 0}, 10) == {"CA1": None}


async def test_events_stored_callback_runs_after_commits_that_stored_events(
    store: DurableStore,
) -> None:
    told: list[str] = []
    store.on_events_stored(told.append)
    await run_call(store, "CA1", segments=1)
    assert told == ["CA1"] * 3
    # (CA1 has ended, and an ended call takes no more segments: a live call's are written)
    await store.call_started(call_info("CA3"), [])
    await store.segment_committed(segment("CA3", 1, text=""), [])
    broken = OutboxEvent("evt_broken", "CA3", "transcript.committed", None, T0)  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        await store.segment_committed(segment("CA3", 2), [broken])
    assert told == ["CA1"] * 3  # nothing stored: nobody told
    store.on_events_stored(None)
    await run_call(store, "CA2", segments=0)
    assert told == ["CA1"] * 3


async def test_concurrent_writers_of_one_call_get_gap_free_positions(
    store: DurableStore, backend: Backend
) -> None:
    await store.call_started(call_info("CA1"), [])
    others = [backend.store() for _ in range(3)]
    for other in others:
        await other.open()
    try:
        writers = [store, *others]
        await asyncio.gather(
            *(
                writers[sequence % len(writers)].segment_committed(
                    segment("CA1", sequence), [transcript_committed_event(segment("CA1", sequence))]
                )
                for sequence in range(1, 25)
            )
        )
    finally:
        for other in others:
            await other.close()
    log = (await store.events_after({"CA1": 0}, 100))["CA1"]
    assert log is not None and [e.position for e in log] == list(range(1, 25))


async def test_delivery_backlog_per_target(store: DurableStore, backend: Backend) -> None:
    empty = await store.delivery_backlog()
    assert [(b.target, b.pending, b.oldest_created_at) for b in empty] == [
        (target, 0, None) for target in TARGETS
    ]
    first_at = backend.clock()
    await run_call(store, "CA1", segments=1)  # 3 events
    backend.clock.advance(5)
    await run_call(store, "CA2", segments=0)  # 2 events
    now = backend.clock()
    for delivery in await store.claim_deliveries(now, 10, "me", 60, target=TARGETS[0]):
        await store.mark_delivered(delivery.delivery_id, "me")  # the heads of both calls
    backlog = {b.target: b for b in await store.delivery_backlog()}
    assert backlog[TARGETS[0]].pending == 3
    assert backlog[TARGETS[0]].oldest_created_at == first_at
    assert backlog[TARGETS[1]].pending == 5
    assert backlog[TARGETS[1]].oldest_created_at == first_at
    # a target no longer configured still shows what waits for it
    fewer = backend.store(targets=TARGETS[:1])
    await fewer.open()
    try:
        assert [b.target for b in await fewer.delivery_backlog()] == list(TARGETS)
    finally:
        await fewer.close()


async def test_unfinished_jobs_of_a_call(store: DurableStore, backend: Backend) -> None:
    from callbridge.jobs.model import NewJob

    now = backend.clock()
    assert not await store.jobs.unfinished_for_call("CA1")
    await store.jobs.enqueue([NewJob("a", "CA1"), NewJob("b", "CA1"), NewJob("a", "CA2")], now)
    assert await store.jobs.unfinished_for_call("CA1")
    claimed = await store.jobs.claim("a", now, 10, "me", 60)
    assert {j.call_sid for j in claimed} == {"CA1", "CA2"}
    for job in claimed:
        assert await store.jobs.complete(job.job_id, "me", now)
    assert await store.jobs.unfinished_for_call("CA1")  # b is still pending
    assert not await store.jobs.unfinished_for_call("CA2")
    [b] = await store.jobs.claim("b", now, 10, "me", 60)
    assert await store.jobs.unfinished_for_call("CA1")  # running
    assert await store.jobs.fail(b.job_id, "me", now, "no")
    assert not await store.jobs.unfinished_for_call("CA1")


async def test_purge_keeps_the_event_log(store: DurableStore, backend: Backend) -> None:
    await run_call(store, "CA1", segments=0)
    now = backend.clock()
    for delivery in await store.claim_deliveries(now, 10, "me", 60):
        await store.mark_delivered(delivery.delivery_id, "me")
    assert await store.purge_finished_deliveries(now + timedelta(seconds=1)) == 2
    assert await backend.raw_count("events", "CA1") == 2


async def test_schema_1_events_are_numbered_in_stored_order_on_upgrade(backend: Backend) -> None:
    from callbridge.store.migrations import load_migrations

    schema_1 = load_migrations(backend.kind if backend.kind == "sqlite" else "postgres")[0]
    assert schema_1[0] == 1
    rows = [
        ("evt_b", "CA1", "call.started", 1),
        ("evt_a", "CA1", "transcript.committed", 2),
        ("evt_c", "CA2", "call.started", 3),
        ("evt_0", "CA1", "call.ended", 4),
    ]
    if backend.kind == "sqlite":
        with sqlite3.connect(backend.tmp_path / "callbridge.db") as conn:
            conn.executescript(schema_1[1])
            for event_id, call_sid, kind, at in rows:
                conn.execute(
                    "INSERT INTO events VALUES (?, ?, ?, ?, ?)",
                    (event_id, call_sid, kind, b"{}", at),
                )
            conn.execute("PRAGMA user_version = 1")
    else:
        conn = await asyncpg.connect(backend.url)
        try:
            await conn.execute(schema_1[1])
            await conn.execute("CREATE TABLE callbridge_schema (version INTEGER NOT NULL)")
            await conn.execute("INSERT INTO callbridge_schema VALUES (1)")
            for event_id, call_sid, kind, at in rows:
                await conn.execute(
                    "INSERT INTO events VALUES ($1, $2, $3, $4, $5)",
                    event_id,
                    call_sid,
                    kind,
                    b"{}",
                    T0 + timedelta(seconds=at),
                )
        finally:
            await conn.close()
    store = backend.store()
    await store.open()
    try:
        await store.call_requested("CA1", None, None, None)
        await store.call_requested("CA2", None, None, None)
        log = await store.events_after({"CA1": 0, "CA2": 0}, 10)
        assert [e.event_id for e in log["CA1"] or []] == ["evt_b", "evt_a", "evt_0"]
        assert [e.position for e in log["CA1"] or []] == [1, 2, 3]
        assert [e.position for e in log["CA2"] or []] == [1]
        # and new events carry on after them
        end = ended("CA2", 0)
        await store.call_ended(end, {}, [call_ended_event(end, {})])
        assert [e.position for e in (await store.events_after({"CA2": 0}, 10))["CA2"] or []] == [
            1,
            2,
        ]
    finally:
        await store.close()


# the outbox -------------------------------------------------------------------------------


async def test_only_the_oldest_unfinished_delivery_per_call_and_target_is_claimable(
    store: DurableStore, backend: Backend
) -> None:
    await run_call(store, "CA1", segments=2)  # 4 events
    await run_call(store, "CA2", segments=0)  # 2 events
    now = backend.clock()
    claimed = await store.claim_deliveries(now, 100, "me", 30, target=TARGETS[0])
    assert sorted((d.call_sid, d.event_type) for d in claimed) == [
        ("CA1", "call.started"),
        ("CA2", "call.started"),
    ]
    # nothing more for that target while those are in flight
    assert await store.claim_deliveries(now, 100, "me", 30, target=TARGETS[0]) == []
    # another owner never gets a leased delivery
    assert await store.claim_deliveries(now, 100, "other", 30, target=TARGETS[0]) == []

    first = next(d for d in claimed if d.call_sid == "CA1")
    assert not await store.mark_delivered(first.delivery_id, "other")
    assert await store.mark_delivered(first.delivery_id, "me")
    nxt = await store.claim_deliveries(now, 100, "me", 30, target=TARGETS[0])
    assert [(d.call_sid, d.event_type) for d in nxt] == [("CA1", "transcript.committed")]
    assert b'"sequence":1' in nxt[0].body

    # a retry keeps its place at the head of the call's queue until it is due
    later = now + timedelta(seconds=10)
    assert await store.mark_retry(nxt[0].delivery_id, "me", later, "HTTP 500")
    assert await store.claim_deliveries(now, 100, "me", 30, target=TARGETS[0]) == []
    again = await store.claim_deliveries(later, 100, "me", 30, target=TARGETS[0])
    assert [d.event_id for d in again] == [nxt[0].event_id]
    assert again[0].attempts == 1

    # a final failure lets the call move on
    assert await store.mark_failed(again[0].delivery_id, "me", "HTTP 400")
    rest = await store.claim_deliveries(later, 100, "me", 30, target=TARGETS[0])
    assert [b'"sequence":2' in d.body for d in rest if d.call_sid == "CA1"] == [True]
    counts = await store.delivery_counts()
    assert (counts.delivered, counts.failed) == (1, 1)


async def test_writes_lease_nothing_every_new_head_is_claimable_at_once_by_anyone(
    store: DurableStore, backend: Backend
) -> None:
    """The store only makes deliveries claimable; the dispatcher's claim query leases them.
    A new event with nothing pending before it, and the successor of a finished delivery,
    are claimable in the same moment by any owner (not leased to the writer)."""
    info = call_info("CA1")
    await store.call_started(info, [call_started_event(info)])
    now = backend.clock()
    started = await store.claim_deliveries(now, 10, "me", 30, target=TARGETS[0])
    assert [(d.call_sid, d.event_type, d.attempts) for d in started] == [("CA1", "call.started", 0)]
    first = segment("CA1", 1)
    await store.segment_committed(first, [transcript_committed_event(first)])
    # waits behind the unfinished call.started
    assert await store.claim_deliveries(now, 10, "other", 30, target=TARGETS[0]) == []
    assert await store.mark_delivered(started[0].delivery_id, "me")
    # the finisher holds no lease on the successor: another owner claims it
    successor = await store.claim_deliveries(now, 10, "other", 30, target=TARGETS[0])
    assert [d.event_type for d in successor] == ["transcript.committed"]
    assert b'"sequence":1' in successor[0].body
    assert await store.claim_deliveries(now, 10, "me", 30, target=TARGETS[0]) == []


async def test_expired_leases_are_claimable_again(store: DurableStore, backend: Backend) -> None:
    await run_call(store, "CA1", segments=0)
    now = backend.clock()
    claimed = await store.claim_deliveries(now, 10, "dead-process", 5)
    assert len(claimed) == len(TARGETS)  # the heads of both targets
    assert await store.claim_deliveries(now + timedelta(seconds=4), 10, "me", 5) == []
    reclaimed = await store.claim_deliveries(now + timedelta(seconds=6), 10, "me", 5)
    assert {d.event_id for d in reclaimed} == {d.event_id for d in claimed}
    assert not await store.mark_delivered(claimed[0].delivery_id, "dead-process")


async def test_release_claims_returns_leases(store: DurableStore, backend: Backend) -> None:
    await run_call(store, "CA1", segments=0)
    now = backend.clock()
    assert len(await store.claim_deliveries(now, 10, "stopping", 60)) == 2
    assert await store.release_claims("stopping") == 2
    assert len(await store.claim_deliveries(now, 10, "me", 60)) == 2


async def test_concurrent_claimers_never_share_a_delivery(
    store: DurableStore, backend: Backend
) -> None:
    for index in range(30):
        await run_call(store, f"CA{index:02d}", segments=0)
    second = backend.store()
    await second.open()
    try:
        now = backend.clock()
        results = await asyncio.gather(
            *(
                (store if i % 2 else second).claim_deliveries(now, 7, f"owner{i}", 60)
                for i in range(12)
            )
        )
    finally:
        await second.close()
    ids = [d.delivery_id for batch in results for d in batch]
    assert len(ids) == len(set(ids)) == 30 * len(TARGETS)


async def test_purge_finished_deliveries(store: DurableStore, backend: Backend) -> None:
    await run_call(store, "CA1", segments=0)
    now = backend.clock()
    for delivery in await store.claim_deliveries(now, 10, "me", 60):
        await store.mark_delivered(delivery.delivery_id, "me")
    assert await store.purge_finished_deliveries(now - timedelta(seconds=1)) == 0
    assert await store.purge_finished_deliveries(now + timedelta(seconds=1)) == 2
    counts = await store.delivery_counts()
    assert (counts.pending, counts.delivered) == (1 * len(TARGETS), 0)


# opening ----------------------------------------------------------------------------------


async def test_reopening_keeps_data(backend: Backend) -> None:
    store = backend.store()
    await store.open()
    await run_call(store, "CA1")
    await store.close()
    store = backend.store()
    await store.open()
    try:
        assert len(await store.get_segments("CA1")) == 3
    finally:
        await store.close()


async def test_newer_schema_version_is_refused(backend: Backend) -> None:
    store = backend.store()
    await store.open()
    await store.close()
    await backend.set_schema_version(999)
    with pytest.raises(StoreError, match=r"^DATABASE_URL: .*schema version 999"):
        await backend.store().open()


async def test_garbage_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database, just some bytes\n" * 200)
    with pytest.raises(StoreError, match=r"^DATABASE_URL: .*not a usable SQLite database"):
        await open_store(f"sqlite:///{path}").open()


async def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"^DATABASE_URL: cannot open"):
        await open_store(f"sqlite:///{tmp_path}/missing/dir/x.db").open()


@pytest.mark.postgres
async def test_unreachable_postgres_is_refused() -> None:
    store = open_store("postgresql://postgres:hunter2@127.0.0.1:1/test")
    with pytest.raises(StoreError, match=r"^DATABASE_URL: cannot connect") as info:
        await store.open()
    assert "hunter2" not in str(info.value)
    assert "\n" not in str(info.value)


def test_factory_reads_database_urls() -> None:
    assert sqlite_path("sqlite:///./callbridge.db") == Path("./callbridge.db")
    assert sqlite_path("sqlite:////var/lib/cb/x.db") == Path("/var/lib/cb/x.db")
    assert isinstance(open_store("sqlite:///./x.db"), SqliteStore)
    assert isinstance(open_store("postgres://u@h/db"), PostgresStore)
    assert isinstance(open_store("postgresql://u@h/db"), PostgresStore)
    with pytest.raises(StoreError, match="DATABASE_URL"):
        open_store("mysql://u@h/db")


@pytest.mark.postgres
async def test_postgres_store_warns_when_its_clock_and_the_databases_disagree(
    tmp_path: Path,
) -> None:
    import structlog

    backend = Backend("postgres", tmp_path)
    await backend.setup()
    try:
        for offset_s, warned in ((0.0, False), (30.0, True)):
            clock = FakeClock(datetime.now(UTC) + timedelta(seconds=offset_s))
            store = PostgresStore(backend.url, clock=clock)
            with structlog.testing.capture_logs() as logs:
                await store.open()
            await store.close()
            skews = [entry for entry in logs if entry["event"] == "store.clock_skew"]
            assert bool(skews) is warned, logs
            if warned:
                assert skews[0]["skew_s"] == pytest.approx(offset_s, abs=2.0)
    finally:
        await backend.teardown()
