"""Ending a lost process's calls: the end made from what the store holds, and the reaper's
rules (when it may take calls over, what it ends here). The store here is a stand-in that
records what the reaper asked; the store's own take-over is in test_store_contract, and the
whole story, with a process killed, in test_instance_lost."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from callbridge.call.lost_calls import LostCallReaper, lost_call_end
from callbridge.models import CallEnded, CommittedSegment, EndReason, Track
from callbridge.store.base import CallRecord, CallStatus, LostStream
from callbridge.summary import summarize

T0 = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def record(call_sid: str = "CA1", **changes: Any) -> CallRecord:
    fields: dict[str, Any] = {
        "call_sid": call_sid,
        "status": CallStatus.LIVE,
        "stream_sid": "MZ1",
        "account_sid": "AC1",
        "from_number": None,
        "to_number": None,
        "tracks": ("inbound", "outbound"),
        "custom_parameters": {},
        "created_at": T0,
        "started_at": T0,
        "ended_at": None,
        "duration_ms": None,
        "end_reason": None,
        "twilio_status": None,
        "twilio_duration_s": None,
        "segments": 3,
        "language_code": "en",
        "degraded": None,
        "summary": None,
    }
    fields.update(changes)
    return CallRecord(**fields)


def segment(sequence: int, track: Track, start_ms: int, end_ms: int) -> CommittedSegment:
    return CommittedSegment(
        call_sid="CA1",
        stream_sid="MZ1",
        sequence=sequence,
        speaker="caller" if track is Track.INBOUND else "agent",
        track=track,
        text=f"words of segment {sequence}",
        start_ms=start_ms,
        end_ms=end_ms,
        language_code="en",
    )


SEGMENTS = [
    segment(1, Track.INBOUND, 500, 2500),
    segment(2, Track.OUTBOUND, 3000, 6000),
    segment(3, Track.INBOUND, 7000, 9000),
]


def test_a_lost_call_ends_with_what_the_store_holds() -> None:
    # The lost process last renewed at T0+20 s (lease 15 s, expired at T0+35 s).
    lost = LostStream(record(), "host:41:abc", T0 + timedelta(seconds=35))
    ended = lost_call_end(lost, SEGMENTS, 15.0, T0 + timedelta(seconds=36))
    assert ended.reason is EndReason.BRIDGE_LOST
    assert ended.degraded is not None and "host:41:abc" in ended.degraded
    assert (ended.segments, ended.language_code, ended.stream_sid) == (3, "en", "MZ1")
    assert ended.ended_at == T0 + timedelta(seconds=36)
    # Known alive for 20 s, past its last segment (9 s): what follows that is lost.
    assert ended.duration_ms == 20_000
    assert ended.audio_lost_ms == 11_000
    # Talk times come from the segments' spans, one track each.
    summary = summarize(ended, SEGMENTS)
    assert summary["reason"] == "bridge_lost"
    assert summary["speakers"]["caller"]["talk_ms"] == 4000
    assert summary["speakers"]["agent"]["talk_ms"] == 3000
    assert summary["transcript"].splitlines()[0] == "caller: words of segment 1"


def test_twilios_duration_wins_when_its_callback_arrived() -> None:
    lost = LostStream(
        record(twilio_status="completed", twilio_duration_s=42),
        "host:41:abc",
        T0 + timedelta(seconds=35),
    )
    ended = lost_call_end(lost, SEGMENTS, 15.0, T0 + timedelta(seconds=36))
    assert (ended.duration_ms, ended.audio_lost_ms) == (42_000, 33_000)


def test_a_call_lost_before_any_segment_still_ends() -> None:
    lost = LostStream(record(segments=0), "host:41:abc", T0 + timedelta(seconds=16))
    ended = lost_call_end(lost, [], 15.0, T0 + timedelta(seconds=17))
    assert (ended.duration_ms, ended.segments, ended.activity) == (1000, 0, ())
    assert summarize(ended, [])["transcript"] == ""


class StandInStore:
    """Answers the reaper's three questions from lists; ``fail`` makes every call raise."""

    def __init__(self) -> None:
        self.lost: list[LostStream] = []
        self.twilio_ended: set[str] = set()
        self.fail = False
        self.take_overs = 0

    def _check(self) -> None:
        if self.fail:
            raise ConnectionError("the store is down")

    async def calls_ended_by_twilio(self, owner: str) -> set[str]:
        self._check()
        return set(self.twilio_ended)

    async def take_over_lost_streams(
        self, owner: str, lease_s: float, limit: int
    ) -> list[LostStream]:
        self._check()
        self.take_overs += 1
        taken, self.lost = self.lost[:limit], self.lost[limit:]
        return taken

    async def get_segments(self, call_sid: str) -> list[CommittedSegment]:
        self._check()
        return SEGMENTS if call_sid == "CA1" else []


class RecordingSink:
    def __init__(self, failing: frozenset[str] = frozenset()) -> None:
        self.ended: list[CallEnded] = []
        self.failing = failing

    async def call_ended(self, ended: CallEnded) -> None:
        if ended.call_sid in self.failing:
            raise ConnectionError("store write failed")
        self.ended.append(ended)


class LiveHere:
    def __init__(self, live: set[str]) -> None:
        self.live = live
        self.ended: list[tuple[str, EndReason]] = []

    def is_live(self, call_sid: str) -> bool:
        return call_sid in self.live

    def end_in_background(self, call_sid: str, reason: EndReason) -> None:
        self.ended.append((call_sid, reason))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def reaper(
    store: StandInStore, sink: RecordingSink, live: LiveHere, clock: Clock
) -> LostCallReaper:
    return LostCallReaper(
        store,  # type: ignore[arg-type]
        sink,  # type: ignore[arg-type]
        live,
        owner="host:1:me",
        lease_s=3.0,
        clock=clock,
    )


def lost(call_sid: str) -> LostStream:
    return LostStream(record(call_sid), "host:2:gone", T0)


async def test_the_reaper_takes_over_only_after_reaching_the_store_for_a_heartbeat() -> None:
    store, sink, live, clock = StandInStore(), RecordingSink(), LiveHere(set()), Clock()
    store.lost = [lost("CA1"), lost("CA2")]
    subject = reaper(store, sink, live, clock)  # sweeps every 1 s (a third of the lease)
    assert await subject.sweep() == 0  # just started: live owners renew first
    clock.now += 1.0
    assert await subject.sweep() == 0
    assert store.take_overs == 0
    clock.now += 0.6
    assert await subject.sweep() == 2
    assert [e.call_sid for e in sink.ended] == ["CA1", "CA2"]
    assert all(e.reason is EndReason.BRIDGE_LOST for e in sink.ended)

    # An outage of the store: once it is back, wait a heartbeat again before taking over.
    store.fail = True
    clock.now += 5
    assert await subject.sweep() == 0
    store.fail = False
    store.lost = [lost("CA3")]
    clock.now += 1
    assert await subject.sweep() == 0
    clock.now += 1.6
    assert await subject.sweep() == 1
    assert subject.ended == 3


async def test_a_failed_end_is_left_for_a_later_sweep_and_the_others_still_end() -> None:
    store, sink, live, clock = (
        StandInStore(),
        RecordingSink(frozenset({"CA1"})),
        LiveHere(set()),
        Clock(),
    )
    subject = reaper(store, sink, live, clock)
    await subject.sweep()
    clock.now += 2
    store.lost = [lost("CA1"), lost("CA2")]
    assert await subject.sweep() == 1
    assert [e.call_sid for e in sink.ended] == ["CA2"]


async def test_calls_twilio_ended_are_ended_here_when_they_are_live_here() -> None:
    store, sink, live, clock = StandInStore(), RecordingSink(), LiveHere({"CA1"}), Clock()
    store.twilio_ended = {"CA1", "CA-not-here"}
    await reaper(store, sink, live, clock).sweep()
    assert live.ended == [("CA1", EndReason.COMPLETED)]
