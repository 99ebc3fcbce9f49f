"""The send pacer on a clock the test holds: token bucket, commit spacing, flush and keepalive."""

from __future__ import annotations

import pytest

from callbridge.call.send_pacer import BURST_MS, TICK_S, SendPacer


def pacer(**overrides: float) -> SendPacer:
    values = {"max_send_speed": 4.0, "min_commit_interval_s": 1.0, "keepalive_after_s": 1.0}
    return SendPacer(**(values | overrides))


def test_a_backlog_goes_out_in_one_burst_then_at_the_catch_up_speed() -> None:
    p = pacer()
    p.start(100.0)
    now = 100.0
    waits = []
    for _ in range(90):  # 9 s of audio queued at once, 100 ms chunks
        wait = p.audio_wait(100, now)
        waits.append(wait)
        now += wait
        p.sent(now)
    assert waits[: int(BURST_MS / 100)] == [0.0] * 10  # the first second at once
    assert all(w == pytest.approx(0.025) for w in waits[11:])  # then 100 ms per 25 ms
    assert now - 100.0 == pytest.approx(8.0 / 4.0)


def test_the_bucket_refills_with_real_time_and_never_above_the_burst() -> None:
    p = pacer(max_send_speed=2.0)
    p.start(0.0)
    assert p.audio_wait(BURST_MS, 0.0) == 0.0
    assert p.audio_wait(100, 0.0) == pytest.approx(0.05)  # 100 ms at 2× real time
    # After an hour idle the bucket holds one burst, not an hour.
    assert p.audio_wait(BURST_MS, 3600.0) == 0.0
    assert p.audio_wait(200, 3600.0) == pytest.approx(0.1)


def test_commits_are_spaced() -> None:
    p = pacer(min_commit_interval_s=1.0)
    p.start(10.0)
    assert p.commit_wait(10.0) == 0.0  # the first commit of a connection goes at once
    p.committed(10.0)
    assert p.commit_wait(10.4) == pytest.approx(0.6)
    assert p.commit_wait(11.0) == 0.0
    p.start(11.2)  # a new connection starts afresh
    assert p.commit_wait(11.2) == 0.0


def test_a_short_chunk_is_flushed_after_a_quiet_tick() -> None:
    p = pacer(keepalive_after_s=10.0)
    p.start(0.0)
    assert p.tick_s == TICK_S
    p.sent(1.0)
    assert not p.tick(1.1, backlog=True) and not p.flush_due  # sent just now: wait
    assert p.tick(1.0 + TICK_S, backlog=True) and p.flush_due
    p.audio_wait(60, 1.3)  # the short chunk goes
    assert not p.flush_due


def test_keepalive_is_due_only_after_the_session_is_quiet_for_the_set_time() -> None:
    p = pacer(keepalive_after_s=0.3)
    assert p.tick_s == pytest.approx(0.15)  # half the keepalive time, so it is never late
    p.start(0.0)
    assert not p.tick(0.15, backlog=False)
    assert not p.keepalive_now(0.15)
    assert p.tick(0.3, backlog=False) and p.keepalive_due
    p.sent(0.31)  # the sender sent audio meanwhile: the session is no longer quiet
    assert not p.keepalive_now(0.32) and not p.keepalive_due
    assert p.tick(0.61, backlog=False)
    assert p.keepalive_now(0.61)
    # With audio queued, a quiet tick flushes it; no keepalive silence goes before it.
    assert p.tick(0.61, backlog=True) and p.flush_due and not p.keepalive_due


def test_settings_that_could_never_send_are_refused() -> None:
    with pytest.raises(ValueError):
        pacer(max_send_speed=0.0)
    with pytest.raises(ValueError):
        pacer(keepalive_after_s=0.0)
