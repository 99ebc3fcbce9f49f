"""A fake Scribe connection and helpers for driving a SegmentTranscriber in unit tests.

The transcriber runs on the event loop's clock here (``clock=loop.time``), so tests marked
``looptime`` run its timers, pacing and backoff on fast-forwarded loop time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from callbridge.call.commit_windows import SegmentTranscript
from callbridge.call.transcriber import SegmentTranscriber, TranscriberSettings
from callbridge.call.turns import PlannedSegment
from callbridge.models import Track
from callbridge.scribe.errors import ScribeError
from callbridge.scribe.messages import CommittedTranscript
from callbridge.scribe.options import ScribeOptions


class FakeConnection:
    """Answers every commit with the number of audio bytes since the previous commit."""

    def __init__(self, fail_after_commits: int | None = None) -> None:
        self.sent: list[tuple[str, bytes, str | None]] = []
        self._inbox: asyncio.Queue[CommittedTranscript | ScribeError] = asyncio.Queue()
        self._pending = 0
        self._fail_after_commits = fail_after_commits
        self.closed = False

    async def send_audio(self, audio: bytes, *, previous_text: str | None = None) -> None:
        if previous_text is not None and self.sent:
            raise ValueError("previous_text is only allowed on the connection's first chunk")
        self.sent.append(("audio", audio, previous_text))
        self._pending += len(audio)

    async def commit(self) -> None:
        self.sent.append(("commit", b"", None))
        commits = sum(1 for kind, _, _ in self.sent if kind == "commit")
        if self._fail_after_commits is not None and commits > self._fail_after_commits:
            self._inbox.put_nowait(ScribeError("closed", "dropped", retryable=True))
            return
        self._inbox.put_nowait(CommittedTranscript(text=f"bytes{self._pending}"))
        self._pending = 0

    def fail(self, error: ScribeError) -> None:
        self._inbox.put_nowait(error)

    async def receive(self) -> CommittedTranscript:
        item = await self._inbox.get()
        if isinstance(item, ScribeError):
            raise item
        return item

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = True

    def kinds(self) -> list[str]:
        return [kind for kind, _, _ in self.sent]


def options(**overrides: Any) -> ScribeOptions:
    values: dict[str, Any] = {"url": "ws://unused", "api_key": "k", "include_timestamps": False}
    return ScribeOptions(**(values | overrides))


def segment(seg_id: int, start_ms: int, track: Track = Track.INBOUND) -> PlannedSegment:
    return PlannedSegment(seg_id, track, start_ms, start_ms + 200, start_ms, start_ms + 200)


def transcriber_on_loop_clock(
    settings: TranscriberSettings,
    on_segment: Callable[[SegmentTranscript], None],
    connections: list[FakeConnection],
    make: Callable[[int], FakeConnection] = lambda _: FakeConnection(),
    **kwargs: Any,
) -> SegmentTranscriber:
    """A transcriber whose every connection is a new FakeConnection (``make(index)``)."""

    async def connect(_: ScribeOptions) -> Any:
        conn = make(len(connections))
        connections.append(conn)
        return conn

    return SegmentTranscriber(
        kwargs.pop("scribe_options", options()),
        settings,
        on_segment,
        connect=connect,
        clock=asyncio.get_running_loop().time,
        **kwargs,
    )


async def live_transcriber(
    settings: TranscriberSettings,
) -> tuple[SegmentTranscriber, FakeConnection]:
    connections: list[FakeConnection] = []
    transcriber = transcriber_on_loop_clock(settings, lambda _: None, connections)
    transcriber.start()
    await asyncio.sleep(0.02)  # connected
    assert len(connections) == 1
    return transcriber, connections[0]
