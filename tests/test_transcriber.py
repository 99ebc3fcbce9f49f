"""The connection loop on a fast-forwarded clock: backoff, reconnect and replay, the sender's
wake-up rules, keepalive, pcm conversion. A fake connection stands in for Scribe; the
end-to-end fault tests through the real server are in ``tests/test_faults.py``."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from callbridge.audio.ulaw import FRAME_BYTES, SILENCE_BYTE, ulaw_to_pcm16
from callbridge.call.commit_windows import SegmentTranscript
from callbridge.call.transcriber import SegmentTranscriber, TranscriberSettings
from callbridge.scribe.commit_rule import COMMIT_FLOOR_MS
from callbridge.scribe.errors import ScribeError
from callbridge.scribe.options import ScribeOptions
from tests.transcriber_harness import (
    FakeConnection,
    live_transcriber,
    options,
    segment,
    transcriber_on_loop_clock,
)

pytestmark = pytest.mark.looptime

FLOOR_BYTES = COMMIT_FLOOR_MS * 8


async def test_backoff_is_exponential_with_jitter_and_capped() -> None:
    refusals = 9
    sleeps: list[float] = []

    async def connect(_: ScribeOptions) -> Any:
        if len(sleeps) < refusals:
            raise ScribeError("handshake_rejected", "503", retryable=True, http_status=503)
        raise ScribeError("auth_error", "stop here", retryable=False)

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    settings = TranscriberSettings(backoff_initial_s=0.25, backoff_max_s=8.0)
    transcriber = SegmentTranscriber(
        options(),
        settings,
        lambda _: None,
        connect=connect,
        sleep=fake_sleep,
        rng=random.Random(7),
    )
    first = segment(1, 0)
    transcriber.audio(b"\x11" * FRAME_BYTES, first)
    transcriber.commit(first)
    transcriber.start()
    await transcriber.drain(5.0)
    reference = random.Random(7)
    expected = []
    for failure in range(1, refusals + 1):
        ceiling = min(8.0, 0.25 * 2 ** (failure - 1))
        expected.append(reference.uniform(ceiling / 2, ceiling))
    assert sleeps == expected
    for failure, delay in enumerate(sleeps, start=1):
        ceiling = min(8.0, 0.25 * 2 ** (failure - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert max(sleeps) <= 8.0 and sleeps[-1] >= 4.0  # capped, and the cap is reached
    assert transcriber.degraded is not None and "auth_error" in transcriber.degraded
    assert transcriber.untranscribed == 1


async def test_backoff_restarts_after_a_connection_that_made_progress() -> None:
    """A long call that rolls over many times must not creep up to the maximum backoff."""
    connections: list[FakeConnection] = []
    delivered: list[str] = []
    sleeps: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await asyncio.sleep(seconds)

    transcriber = transcriber_on_loop_clock(
        TranscriberSettings(min_commit_interval_s=0.0, backoff_initial_s=0.25),
        lambda t: delivered.append(t.text),
        connections,
        lambda _: FakeConnection(fail_after_commits=1),
        sleep=recording_sleep,
        rng=random.Random(3),
    )
    transcriber.start()
    for index in range(6):  # each connection answers one commit, then drops
        seg = segment(index + 1, index * 1000)
        transcriber.audio(b"\x11" * FRAME_BYTES * 5, seg)
        transcriber.commit(seg)
        await asyncio.sleep(1.0)
    await transcriber.drain(5.0)
    # 100 ms of audio, padded to the commit floor before each commit.
    assert delivered == [f"bytes{FLOOR_BYTES}"] * 6
    backoffs = [s for s in sleeps if s != transcriber._pacer.tick_s]
    assert len(backoffs) >= 5 and max(backoffs) <= 0.25
    assert transcriber.reconnects >= 5 and transcriber.degraded is None


async def test_a_lost_connection_replays_the_unanswered_window_once() -> None:
    """The first connection takes two windows' audio and dies before answering the second:
    the next one gets the second window again, whole, primed with the first's text, and
    each segment is delivered once, in order."""
    connections: list[FakeConnection] = []
    delivered: list[SegmentTranscript] = []
    transcriber = transcriber_on_loop_clock(
        TranscriberSettings(min_commit_interval_s=0.0),
        delivered.append,
        connections,
        lambda index: FakeConnection(fail_after_commits=1 if index == 0 else None),
    )
    transcriber.start()
    first, second = segment(1, 0), segment(2, 1000)
    transcriber.audio(b"\x11" * FLOOR_BYTES, first)
    transcriber.commit(first)
    transcriber.audio(b"\x22" * FLOOR_BYTES, second)
    transcriber.commit(second)
    await transcriber.drain(10.0)
    assert [t.segment for t in delivered] == [first, second]
    assert [t.text for t in delivered] == [f"bytes{FLOOR_BYTES}"] * 2
    assert len(connections) == 2 and transcriber.reconnects == 1
    replay = connections[1].sent
    assert replay[0] == ("audio", b"", f"bytes{FLOOR_BYTES}")  # context first, no audio
    assert b"".join(audio for kind, audio, _ in replay if kind == "audio") == b"\x22" * FLOOR_BYTES
    assert connections[1].kinds()[-1] == "commit" and transcriber.degraded is None


async def test_previous_text_leads_a_new_connection_even_when_keepalive_comes_first() -> None:
    """After a reconnect with nothing to replay, the first audio can be keepalive silence.
    ``previous_text`` is only allowed on a connection's first chunk, so it must not ride on
    the next real chunk (that used to kill the call's stream with a ValueError)."""
    connections: list[FakeConnection] = []
    delivered: list[str] = []
    transcriber = transcriber_on_loop_clock(
        TranscriberSettings(min_commit_interval_s=0.0, keepalive_after_s=0.1),
        lambda t: delivered.append(t.text),
        connections,
        lambda index: FakeConnection(fail_after_commits=1 if index == 0 else None),
        sleep=asyncio.sleep,
        rng=random.Random(1),
    )
    transcriber.start()
    await asyncio.sleep(0.05)  # connected
    first, second = segment(1, 0), segment(2, 2000)
    transcriber.audio(b"\x11" * FRAME_BYTES * 5, first)
    transcriber.commit(first)
    transcriber.audio(b"\xff" * FRAME_BYTES, None)
    transcriber.commit(None)  # an idle commit the first connection never answers
    await asyncio.sleep(0.6)  # the second connection idles: keepalive silence goes first
    assert len(connections) == 2
    prime, keepalive = connections[1].sent[:2]
    assert prime == ("audio", b"", f"bytes{FLOOR_BYTES}")  # context first, no audio
    assert keepalive[0] == "audio" and keepalive[2] is None and keepalive[1]
    transcriber.audio(b"\x22" * FRAME_BYTES * 5, second)
    transcriber.commit(second)
    await transcriber.drain(3.0)
    assert len(delivered) == 2 and delivered[0] == f"bytes{FLOOR_BYTES}"
    assert delivered[1].startswith("bytes")  # answered, not given up on
    assert transcriber.degraded is None


async def test_a_fatal_error_mid_call_gives_the_call_up_and_counts_the_rest() -> None:
    connections: list[FakeConnection] = []
    delivered: list[str] = []
    transcriber = transcriber_on_loop_clock(
        TranscriberSettings(min_commit_interval_s=0.0),
        lambda t: delivered.append(t.text),
        connections,
    )
    transcriber.start()
    await asyncio.sleep(0.05)
    first, second = segment(1, 0), segment(2, 1000)
    transcriber.audio(b"\x11" * FLOOR_BYTES, first)
    transcriber.commit(first)
    await asyncio.sleep(0.5)
    transcriber.audio(b"\x22" * 800, second)
    connections[0].fail(ScribeError("input_error", "bad audio", retryable=False))
    await asyncio.sleep(0.5)
    transcriber.commit(second)
    transcriber.audio(b"\x33" * 800, segment(3, 2000))
    await transcriber.drain(2.0)
    assert delivered == [f"bytes{FLOOR_BYTES}"]
    assert transcriber.degraded is not None and "input_error" in transcriber.degraded
    assert transcriber.untranscribed == 1 and transcriber.lost_ms == 100 + 100
    assert len(connections) == 1 and connections[0].closed


# ------------------------------------------------------------ the sender's wake-up rules


async def test_full_chunks_go_at_once_and_a_paused_streams_tail_within_a_tick() -> None:
    transcriber, conn = await live_transcriber(
        TranscriberSettings(chunk_ms=100, keepalive_after_s=10.0)
    )
    seg = segment(1, 0)
    for _ in range(5):  # one full 100 ms chunk
        transcriber.audio(b"\x11" * FRAME_BYTES, seg)
    await asyncio.sleep(0.01)
    assert [(kind, len(audio)) for kind, audio, _ in conn.sent] == [("audio", 5 * FRAME_BYTES)]
    for _ in range(3):  # 60 ms, then the stream pauses mid-chunk
        transcriber.audio(b"\x22" * FRAME_BYTES, seg)
    await asyncio.sleep(0.1)
    assert len(conn.sent) == 1  # a short chunk waits for the rest of its frames...
    await asyncio.sleep(0.45)
    assert conn.sent[1] == ("audio", b"\x22" * 3 * FRAME_BYTES, None)  # ...but not forever
    transcriber.commit(seg)
    await transcriber.drain(2.0)
    # 160 ms of audio: the commit goes after 180 ms of padding silence (the 0.3 s floor).
    assert conn.kinds() == ["audio", "audio", "audio", "commit"]
    assert conn.sent[2][1] == bytes([SILENCE_BYTE]) * (FLOOR_BYTES - 8 * FRAME_BYTES)


async def test_keepalive_silence_only_after_the_session_is_quiet_for_the_set_time() -> None:
    transcriber, conn = await live_transcriber(
        TranscriberSettings(chunk_ms=100, keepalive_after_s=0.3)
    )
    await asyncio.sleep(0.2)
    assert conn.sent == []  # not quiet long enough yet
    await asyncio.sleep(0.35)
    assert conn.sent and conn.sent[0][0] == "audio" and set(conn.sent[0][1]) == {0xFF}
    assert len(conn.sent) <= 2  # one per quiet period, not a stream of silence
    await asyncio.sleep(10.0)
    # Ten seconds of quiet: one keepalive per 0.3 s quiet period, give or take a tick.
    assert 20 <= len(conn.sent) <= 34
    await transcriber.drain(1.0)


async def test_a_backlog_goes_out_paced_at_the_catch_up_speed() -> None:
    loop = asyncio.get_running_loop()
    transcriber, conn = await live_transcriber(
        TranscriberSettings(chunk_ms=100, keepalive_after_s=10.0, max_send_speed=4.0)
    )
    seg = segment(1, 0)
    started = loop.time()
    transcriber.audio(b"\x11" * 8 * 9000, seg)  # a 9 s backlog at once (a held segment)
    transcriber.commit(seg)
    await transcriber.drain(30.0)
    took = loop.time() - started
    # The first second goes at once, the other 8 s at 4× real time: 2 s.
    assert took == pytest.approx(2.0, abs=0.15)
    assert conn.kinds().count("audio") == 90


async def test_pcm_sessions_get_every_byte_converted_keepalive_and_padding_included() -> None:
    connections: list[FakeConnection] = []
    transcriber = transcriber_on_loop_clock(
        TranscriberSettings(keepalive_after_s=0.3),
        lambda _: None,
        connections,
        scribe_options=options(audio_format="pcm_8000"),
    )
    transcriber.start()
    await asyncio.sleep(0.5)  # a keepalive
    seg = segment(1, 0)
    transcriber.audio(b"\x11" * 800, seg)
    transcriber.commit(seg)
    await transcriber.drain(2.0)
    (conn,) = connections
    audio = [a for kind, a, _ in conn.sent if kind == "audio"]
    keepalive, speech, padding = audio
    assert keepalive == bytes(1600)  # 100 ms of PCM silence, not μ-law bytes sent as PCM
    assert speech == ulaw_to_pcm16(b"\x11" * 800)
    assert padding == bytes(2 * (FLOOR_BYTES - 800 - 800))  # the keepalive counted too


async def test_idle_silence_waits_for_nothing_and_queues_in_chunks() -> None:
    transcriber, conn = await live_transcriber(
        TranscriberSettings(chunk_ms=100, keepalive_after_s=10.0, max_send_speed=1.0)
    )
    silence = bytes([SILENCE_BYTE]) * FRAME_BYTES * 50  # a gap's second of silence
    for _ in range(50):  # far faster than it can be sent at 1x
        transcriber.audio(silence, None)
    queued = transcriber.backlog_ms  # the sender is pacing: most is still queued
    assert queued <= 1000 + 1000, queued  # bounded: idle silence stops at 1 s of backlog
    await asyncio.sleep(0.3)
    sent = [audio for kind, audio, _ in conn.sent if kind == "audio"]
    assert sent and max(len(audio) for audio in sent) <= 100 * 8  # never an outsized chunk
    await transcriber.abort()
