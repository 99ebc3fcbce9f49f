"""Re-framing payloads of any size into whole 20 ms frames, byte for byte."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from callbridge.audio.framing import FrameAligner
from callbridge.audio.ulaw import FRAME_BYTES, SILENCE_BYTE


def test_whole_frames_pass_through_untouched() -> None:
    aligner = FrameAligner()
    frame = bytes(range(160))
    assert aligner.push(40, frame) == [(40, frame)]
    assert aligner.push(60, frame)[0][1] is frame  # no copy on the hot path
    assert aligner.flush() == [] and aligner.odd_payloads == 0


def test_a_163_byte_payload_is_reframed_and_nothing_is_lost() -> None:
    aligner = FrameAligner()
    data = bytes(i % 251 for i in range(163 * 5))
    frames = []
    for index in range(5):  # five 163-byte payloads at a 20 ms cadence
        frames += aligner.push(index * 20, data[index * 163 : (index + 1) * 163])
    frames += aligner.flush()
    joined = b"".join(frame for _, frame in frames)
    assert joined[: len(data)] == data and set(joined[len(data) :]) == {SILENCE_BYTE}
    assert all(len(frame) == FRAME_BYTES for _, frame in frames)
    assert [start for start, _ in frames] == [0, 20, 40, 60, 80, 100]
    assert aligner.odd_payloads == 5


def test_empty_payloads_are_counted_and_skipped() -> None:
    aligner = FrameAligner()
    assert aligner.push(0, b"") == []
    assert aligner.push(0, b"\x01" * 100) == []
    assert aligner.push(13, b"") == []
    assert aligner.push(13, b"\x02" * 60) == [(0, b"\x01" * 100 + b"\x02" * 60)]
    assert aligner.empty_payloads == 2


def test_a_timestamp_jump_completes_the_remainder_and_restarts_at_the_new_time() -> None:
    aligner = FrameAligner()
    assert aligner.push(0, b"\x01" * 100) == []
    frames = aligner.push(200, b"\x02" * 160)  # 180 ms lost after the remainder
    assert frames[0] == (0, b"\x01" * 100 + bytes([SILENCE_BYTE]) * 60)
    assert frames[1] == (200, b"\x02" * 160)


@given(sizes=st.lists(st.integers(0, 900), max_size=40))
def test_any_sizes_give_whole_consecutive_frames_holding_every_byte(sizes: list[int]) -> None:
    aligner = FrameAligner()
    sent = bytearray()
    frames = []
    for index, size in enumerate(sizes):
        payload = bytes((index + i) % 256 for i in range(size))
        frames += aligner.push(len(sent) // 8, payload)  # timestamps follow the audio
        sent += payload
    frames += aligner.flush()
    joined = b"".join(frame for _, frame in frames)
    assert all(len(frame) == FRAME_BYTES for _, frame in frames)
    assert joined[: len(sent)] == bytes(sent)
    assert len(joined) - len(sent) < FRAME_BYTES
    starts = [start for start, _ in frames]
    assert starts == [20 * i for i in range(len(frames))] or not sizes
