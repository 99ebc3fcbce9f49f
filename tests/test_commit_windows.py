"""The commit-window ledger, driven synchronously: replay, matching, word times, retention,
and the 0.3 s commit rule as an invariant of whatever the sender is handed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from callbridge.audio.ulaw import BYTES_PER_MS, FRAME_BYTES, SILENCE_BYTE
from callbridge.call.commit_windows import CommitWindowLedger, SegmentTranscript, Step
from callbridge.call.turns import PlannedSegment
from callbridge.models import Track
from callbridge.scribe.commit_rule import COMMIT_FLOOR_MS
from callbridge.scribe.messages import CommittedTranscript, ScribeWord

FLOOR_BYTES = COMMIT_FLOOR_MS * BYTES_PER_MS
SILENCE = bytes([SILENCE_BYTE])


def seg(seg_id: int, start_ms: int, ms: int = 1000) -> PlannedSegment:
    return PlannedSegment(seg_id, Track.INBOUND, start_ms, start_ms + ms, start_ms, start_ms + ms)


def frames(ms: int, byte: int = 0x11) -> list[bytes]:
    return [bytes([byte]) * FRAME_BYTES] * (ms // 20)


def say(ledger: CommitWindowLedger, segment: PlannedSegment, ms: int, byte: int = 0x11) -> None:
    for frame in frames(ms, byte):
        ledger.audio(frame, segment)


def pump(ledger: CommitWindowLedger, flush: bool = True) -> list[tuple[str, bytes]]:
    """Everything the sender may take now, as it would send it."""
    out: list[tuple[str, bytes]] = []
    while True:
        step = ledger.next_step(flush)
        if step is Step.AUDIO:
            out.append(("audio", ledger.take_audio()))
        elif step is Step.COMMIT:
            padding = ledger.take_commit()
            if padding:
                out.append(("audio", padding))
            out.append(("commit", b""))
        else:
            return out


def answer(text: str, words: list[tuple[str, float, float]] | None = None) -> CommittedTranscript:
    return CommittedTranscript(
        text=text,
        words=tuple(ScribeWord(t, s, e, "word") for t, s, e in words or []),
        with_timestamps=words is not None,
    )


def new_ledger(**kwargs: object) -> tuple[CommitWindowLedger, list[SegmentTranscript]]:
    delivered: list[SegmentTranscript] = []
    ledger = CommitWindowLedger(delivered.append, **kwargs)  # type: ignore[arg-type]
    return ledger, delivered


# ---------------------------------------------------------------------------- replay


def test_a_new_connection_replays_unanswered_windows_whole_and_primed() -> None:
    ledger, delivered = new_ledger(include_timestamps=False)
    assert ledger.connection_opened() is None  # nothing said yet: no context
    first, second = seg(1, 0), seg(2, 2000)
    say(ledger, first, 400)
    ledger.commit(first)
    ledger.audio(SILENCE * FRAME_BYTES, None)  # idle silence between the turns
    ledger.commit(None)
    say(ledger, second, 500, 0x22)
    sent = pump(ledger, flush=False)
    assert [k for k, _ in sent].count("commit") == 2 and sent[-1][0] == "audio"
    ledger.committed(answer("first words"))
    assert [t.text for t in delivered] == ["first words"]
    ledger.connection_lost()  # before the idle window and the second segment are answered
    say(ledger, second, 100, 0x22)  # frames that arrive while disconnected wait in the window
    ledger.commit(second)
    context = ledger.connection_opened()
    assert context == "first words"
    replay = pump(ledger)
    # The second segment's audio again, whole, in frames; its commit; no idle silence.
    assert [k for k, _ in replay] == ["audio"] * 6 + ["commit"]
    assert b"".join(d for _, d in replay[:6]) == b"\x22" * 600 * BYTES_PER_MS
    ledger.committed(answer("second words"))
    assert [t.segment for t in delivered] == [first, second]
    assert ledger.finished is False and ledger.unanswered == 0
    ledger.close()
    assert ledger.finished


def test_audio_never_sent_on_a_connection_is_not_replayed_twice() -> None:
    ledger, delivered = new_ledger(include_timestamps=False)
    first = seg(1, 0)
    say(ledger, first, 400)  # before any connection: kept, not queued
    ledger.commit(first)
    ledger.connection_opened()
    sent = pump(ledger)
    assert b"".join(d for k, d in sent if k == "audio") == b"\x11" * 400 * BYTES_PER_MS
    ledger.committed(answer("once"))
    assert [t.text for t in delivered] == ["once"]
    ledger.connection_lost()
    ledger.connection_opened()
    assert pump(ledger) == []  # answered windows are gone


# -------------------------------------------------------------------------- matching


def test_answers_match_commits_in_order_and_a_plain_answer_waits_for_its_twin() -> None:
    ledger, delivered = new_ledger(include_timestamps=True)
    ledger.connection_opened()
    a, b = seg(1, 0), seg(2, 1000)
    for s in (a, b):
        say(ledger, s, 400)
        ledger.commit(s)
    pump(ledger)
    ledger.committed(answer("alpha"))
    assert delivered == []  # the plain one waits for the timestamped twin
    ledger.committed(answer("alpha", [("alpha", 0.1, 0.3)]))
    ledger.committed(answer("beta"))
    ledger.connection_lost()
    ledger.settle()  # the twin will not come: the plain answer is delivered as it is
    assert [(t.segment, t.text) for t in delivered] == [(a, "alpha"), (b, "beta")]
    assert len(delivered[0].words) == 1 and delivered[1].words == ()


def test_an_auto_commit_answers_what_was_sent_of_the_oldest_window() -> None:
    ledger, delivered = new_ledger(include_timestamps=False)
    ledger.connection_opened()
    long_turn = seg(1, 0, 3000)
    say(ledger, long_turn, 2000)
    pump(ledger)
    ledger.committed(answer("first half"))  # nothing was committed: the service's own
    assert delivered == []
    say(ledger, long_turn, 1000)
    ledger.commit(long_turn)
    ledger.connection_lost()  # the answered first half is not replayed
    ledger.connection_opened()
    replay = pump(ledger)
    assert b"".join(d for k, d in replay if k == "audio") == b"\x11" * 1000 * BYTES_PER_MS
    ledger.committed(answer("second half"))
    assert [t.text for t in delivered] == ["first half second half"]


# ------------------------------------------------------------------------ word times


def test_word_times_map_back_to_the_stream_across_inserted_silence() -> None:
    ledger, delivered = new_ledger(include_timestamps=True)
    ledger.connection_opened()
    ledger.take_keepalive()  # 100 ms of session audio before the window: session 0-100
    turn = seg(1, 5000)
    say(ledger, turn, 500)
    pump(ledger)  # the window starts at session 100 ms
    ledger.take_keepalive()  # 100 ms inside the window, at session 600 ms
    say(ledger, turn, 500)
    ledger.commit(turn)
    pump(ledger)
    ledger.committed(answer("a b"))
    ledger.committed(answer("a b", [("a", 0.35, 0.5), ("b", 0.8, 0.9)]))
    (got,) = delivered
    # Word a: 250 ms into the window. Word b: 700 ms into the session's window, of which
    # 100 ms were keepalive: 600 ms into the segment.
    assert [(w.start_ms, w.end_ms) for w in got.words] == [(5250, 5400), (5600, 5700)]


def test_word_times_of_a_replayed_window_whose_head_was_dropped() -> None:
    ledger, delivered = new_ledger(include_timestamps=True, retain_limit_ms=500)
    turn = seg(1, 5000)
    say(ledger, turn, 800)  # disconnected: the oldest 300 ms go (lost, counted)
    ledger.commit(turn)
    assert ledger.lost_ms == 300 and ledger.degraded is not None
    ledger.connection_opened()
    sent = pump(ledger)
    assert sum(len(d) for k, d in sent if k == "audio") == 500 * BYTES_PER_MS  # no padding
    ledger.committed(answer("w"))
    ledger.committed(answer("w", [("w", 0.1, 0.2)]))
    (got,) = delivered
    # Session 0 is stream 5300 (the first kept byte), so session 100 ms is stream 5400.
    assert (got.words[0].start_ms, got.words[0].end_ms) == (5400, 5500)


# -------------------------------------------------------------------------- retention


def test_retention_puts_sent_audio_at_risk_and_loses_it_only_if_unanswered() -> None:
    ledger, delivered = new_ledger(include_timestamps=False, retain_limit_ms=500)
    ledger.connection_opened()
    turn = seg(1, 0, 2000)
    say(ledger, turn, 800)  # 300 ms past the limit, all of it queued on the connection
    assert ledger.lost_ms == 0 and ledger.degraded is None
    ledger.commit(turn)
    pump(ledger)
    ledger.connection_lost()  # the connection dies without answering: the 300 ms are lost
    ledger.connection_opened()
    assert ledger.lost_ms == 300
    pump(ledger)
    ledger.committed(answer("rest"))
    assert [t.text for t in delivered] == ["rest"]


def test_give_up_keeps_auto_committed_text_and_counts_every_turn_once() -> None:
    ledger, delivered = new_ledger(include_timestamps=False)
    ledger.connection_opened()
    a, b, c = seg(1, 0), seg(2, 2000), seg(3, 4000)
    say(ledger, a, 400)
    pump(ledger)
    ledger.committed(answer("partly heard"))  # auto-commit: a's text so far
    ledger.commit(a)
    say(ledger, b, 400)
    ledger.give_up("scribe auth_error: no")
    ledger.commit(b)  # b was on air when Scribe went: counted by give_up, not again
    say(ledger, c, 200)
    ledger.commit(c)
    assert [t.text for t in delivered] == ["partly heard"]
    assert ledger.untranscribed == 2  # b and c
    assert ledger.lost_ms == 400 + 200  # b's retained audio and c's
    assert ledger.degraded == "scribe auth_error: no"


# ------------------------------------------------------------- the 0.3 s commit rule

operations = st.lists(
    st.one_of(
        st.tuples(st.just("speech"), st.integers(1, 40)),  # frames of the current turn
        st.tuples(st.just("idle"), st.integers(1, 10)),  # frames of idle silence
        st.tuples(st.just("commit"), st.booleans()),  # end the turn (or an idle window)
        st.tuples(st.just("send"), st.booleans()),  # the sender takes what it may (flush?)
        st.tuples(st.just("keepalive"), st.just(0)),
        st.tuples(st.just("answer"), st.just(0)),  # the oldest commit is answered
        st.tuples(st.just("auto"), st.just(0)),  # the service commits by itself
        st.tuples(st.just("reconnect"), st.just(0)),
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(ops=operations)
def test_every_commit_handed_out_carries_the_floor(ops: list[tuple[str, int]]) -> None:
    """Whatever the order of speech, idle silence, keepalive, answers, auto-commits and lost
    connections: the audio the sender is handed between two commits (padding included) is
    never under the floor, and no turn is delivered twice."""
    ledger, delivered = new_ledger(include_timestamps=False, retain_limit_ms=3000)
    ledger.connection_opened()
    since_commit = 0  # what the service counts: audio since its previous commit of any kind
    awaiting = 0
    next_id = 1
    turn: PlannedSegment | None = None

    def send(flush: bool) -> None:
        nonlocal since_commit, awaiting
        for kind, data in pump(ledger, flush):
            if kind == "audio":
                since_commit += len(data)
            else:
                assert since_commit >= FLOOR_BYTES
                since_commit = 0
                awaiting += 1

    for op, arg in ops:
        if op == "speech":
            if turn is None:
                turn = seg(next_id, next_id * 10_000, 5000)
                next_id += 1
            for frame in frames(20 * arg):
                ledger.audio(frame, turn)
        elif op == "idle":
            ledger.audio(SILENCE * FRAME_BYTES * arg, None)
        elif op == "commit" and (turn is not None or arg):
            ledger.commit(turn)
            turn = None
        elif op == "send":
            send(bool(arg))
        elif op == "keepalive" and ledger.next_step(False) is Step.IDLE:
            since_commit += len(ledger.take_keepalive())
        elif op == "answer" and awaiting:
            ledger.committed(answer(f"t{awaiting}"))
            awaiting -= 1
        elif op == "auto" and not awaiting:  # (an answer to no commit of ours)
            ledger.committed(answer("auto"))
            since_commit = 0
        elif op == "reconnect":
            ledger.connection_lost()
            ledger.connection_opened()
            since_commit = awaiting = 0
    if turn is not None:
        ledger.commit(turn)
    send(True)
    segments = [t.segment.id for t in delivered]
    assert len(segments) == len(set(segments))
