"""The commit ledger: every commit a connection sends carries at least the floor of audio."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callbridge.scribe.commit_rule import (
    COMMIT_FLOOR_MS,
    MIN_COMMIT_AUDIO_MS,
    CommitLedger,
)

ULAW = (8, 160)  # bytes per ms, bytes per frame
PCM = (16, 320)

# A connection's life: audio of any size (keepalive, replay, odd lengths), commits, and
# the service's own auto-commits, in any order.
steps = st.lists(
    st.one_of(
        st.tuples(st.just("audio"), st.integers(0, 6000)),
        st.tuples(st.just("commit"), st.just(0)),
        st.tuples(st.just("auto"), st.just(0)),
    ),
    max_size=60,
)


@pytest.mark.parametrize("fmt", [ULAW, PCM])
@given(steps=steps)
def test_every_commit_carries_the_floor_whatever_came_before(
    fmt: tuple[int, int], steps: list[tuple[str, int]]
) -> None:
    bytes_per_ms, frame_bytes = fmt
    ledger = CommitLedger(bytes_per_ms, frame_bytes)
    service_count = 0  # what the service counts: audio since its last commit of any kind
    for kind, size in steps:
        if kind == "audio":
            ledger.sent(size)
            service_count += size
        elif kind == "auto":
            ledger.service_committed()
            service_count = 0
        else:
            padding = ledger.padding_bytes()
            assert padding % frame_bytes == 0
            assert padding < COMMIT_FLOOR_MS * bytes_per_ms + frame_bytes
            ledger.sent(padding)
            service_count += padding
            assert service_count >= MIN_COMMIT_AUDIO_MS * bytes_per_ms
            assert service_count >= COMMIT_FLOOR_MS * bytes_per_ms
            ledger.committed(padding // bytes_per_ms)
            service_count = 0


def test_padding_is_only_what_is_missing_in_whole_frames() -> None:
    ledger = CommitLedger(8, 160)
    assert ledger.padding_bytes() == COMMIT_FLOOR_MS * 8  # an empty window: all silence
    ledger.sent(2000)  # 250 ms
    assert ledger.padding_bytes() == 800  # 90 ms missing → 5 whole frames (100 ms)
    ledger.sent(800)
    assert ledger.padding_bytes() == 0
    ledger.committed(100)
    assert ledger.uncommitted_bytes == 0 and ledger.commits == 1 and ledger.padded_ms == 100
    ledger.sent(COMMIT_FLOOR_MS * 8 + 1)
    assert ledger.padding_bytes() == 0


def test_a_commit_without_the_padding_is_a_bug_caught_at_once() -> None:
    ledger = CommitLedger(8, 160)
    ledger.sent(100)
    with pytest.raises(AssertionError):
        ledger.committed()


def test_the_floor_cannot_be_set_below_the_service_rule() -> None:
    with pytest.raises(ValueError):
        CommitLedger(8, 160, floor_ms=250)
