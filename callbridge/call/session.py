"""One call, end to end: Twilio frames in, committed segments out, through one Scribe stream.

Per frame (the hot path) a :class:`CallSession` re-frames the payload into whole 20 ms
frames when it is not one already (:class:`~callbridge.audio.framing.FrameAligner`),
places each frame on its track's clock (:class:`TrackClock` fills timestamp gaps with μ-law
silence), and hands it to the
:class:`~callbridge.call.turns.TurnSegmenter`, which decides turns and feeds the
:class:`~callbridge.call.transcriber.SegmentTranscriber`. No logging, tasks or I/O happen per
frame. Transcripts come back, are redacted (``CALLBRIDGE_REDACT``, see
:mod:`callbridge.redaction`; a segment ending in a number that may go on waits a bounded
time for the speaker's next one) *before* they get their gap-free sequence numbers (a
transcript with empty text is not a segment: it is counted, not numbered), and leave as
:class:`~callbridge.models.CommittedSegment` through the call's
:class:`~callbridge.call.event_writer.CallEventWriter` to its
:class:`~callbridge.call.sink.CallEventSink`, in order, never dropped, in bounded memory.
Nothing downstream (store, journal, webhooks, API, logs) ever sees the text before redaction.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from callbridge.audio.framing import FrameAligner
from callbridge.audio.ulaw import BYTES_PER_MS, FRAME_BYTES, FRAME_MS, silence
from callbridge.call.commit_windows import SegmentTranscript
from callbridge.call.event_writer import CallEventWriter, EventWriters, WriterSettings
from callbridge.call.sink import CallEventSink
from callbridge.call.transcriber import Connect, SegmentTranscriber, TranscriberSettings
from callbridge.call.turns import PlannedSegment, TurnSegmenter
from callbridge.config import ScribeSettings, Settings
from callbridge.metrics import DISABLED, BridgeMetrics
from callbridge.models import (
    CallEnded,
    CallInfo,
    CommittedSegment,
    EndReason,
    LivePartial,
    Track,
    TrackActivity,
    Word,
    utc_now,
)
from callbridge.postcall.audio_spool import CallAudioRecorder
from callbridge.redaction import Redacted, Redactor, SegmentRedactionStage, parse_kinds
from callbridge.scribe.connection import ScribeConnection
from callbridge.scribe.options import ScribeOptions


@dataclass(frozen=True, slots=True)
class StreamDescription:
    """The call and its media stream, as plain values (the Twilio layer reads them from the
    stream's ``start`` message)."""

    call_sid: str
    stream_sid: str
    account_sid: str
    tracks: tuple[Track, ...]
    custom_parameters: Mapping[str, str]  # stored and sent as the call's custom_parameters
    from_number: str | None = None
    to_number: str | None = None


# The most silence one timestamp gap is filled with. A gap is audio that never came:
# Twilio's delivery jitter (up to ~233 ms) never shows in the timestamps, so a gap is audio
# Twilio dropped (31930, congestion) or a track that stopped sending during silence, which
# Twilio may do. Either way there is nothing in it to transcribe. One second of silence
# ends any turn the gap interrupted (hangover and turn end are 840 ms), as real silence
# would; the rest of a longer gap is counted (``skipped_ms``) and not filled: the track's
# clock jumps with Twilio's timestamps. Filling it all would only send Scribe silence and
# hold up what follows: a 12-hour jump was 2.16 million frames of it. It is not a protocol
# error either: a track that resumes after silence is a real call.
GAP_FILL_LIMIT_MS = 1000


class TrackClock:
    """Places one track's frames on the stream clock and fills timestamp gaps with silence
    (at most :data:`GAP_FILL_LIMIT_MS` per gap)."""

    __slots__ = ("duplicates", "filled_ms", "next_ms", "skipped_ms")

    def __init__(self) -> None:
        self.next_ms: int | None = None
        self.filled_ms = 0
        self.skipped_ms = 0
        self.duplicates = 0

    def place(self, timestamp_ms: int, payload: bytes) -> tuple[int, int] | None:
        """Returns (fill_start_ms, fill_ms) for the silence owed before this frame, or None
        to drop a duplicate or late frame. The frame itself then starts at
        ``fill_start_ms + fill_ms`` and :attr:`next_ms` moves past it. Beyond the fill
        limit, the fill is the gap's last :data:`GAP_FILL_LIMIT_MS`."""
        expected = self.next_ms
        if expected is None:
            expected = timestamp_ms
        gap = timestamp_ms - expected
        if gap <= -FRAME_MS:
            self.duplicates += 1
            return None
        fill = 0
        if gap >= FRAME_MS:
            fill = (gap + FRAME_MS // 2) // FRAME_MS * FRAME_MS  # whole frames only
            if fill > GAP_FILL_LIMIT_MS:
                self.skipped_ms += fill - GAP_FILL_LIMIT_MS
                expected += fill - GAP_FILL_LIMIT_MS
                fill = GAP_FILL_LIMIT_MS
            self.filled_ms += fill
        self.next_ms = expected + fill + len(payload) // BYTES_PER_MS
        return expected, fill


def scribe_options(settings: ScribeSettings) -> ScribeOptions:
    """The Scribe client's options from the (already checked) settings."""
    return ScribeOptions(
        url=settings.url,
        api_key=settings.api_key,
        model_id=settings.model_id,
        audio_format=settings.audio_format,
        language_code=settings.language,
        include_timestamps=settings.include_timestamps,
        keyterms=tuple(settings.keyterms),
        connect_timeout_s=settings.connect_timeout_s,
    )


def _transcriber_settings(settings: Settings) -> TranscriberSettings:
    return TranscriberSettings(
        chunk_ms=settings.scribe.chunk_ms,
        min_commit_interval_s=settings.turns.min_commit_interval_ms / 1000.0,
        max_send_speed=settings.turns.catchup_speed,
        retain_limit_ms=settings.turns.backlog_limit_s * 1000,
    )


_CommitSegment = Callable[[PlannedSegment, str, tuple[Word, ...], str | None], None]


class _RedactionHold:
    """The call's redaction stage (``CALLBRIDGE_REDACT``) and its one timer: segments are
    committed redacted, in order; one ending in a number that may go on waits at most the
    hold for the speaker's next one."""

    def __init__(self, redactor: Redactor, hold_s: float, commit: _CommitSegment) -> None:
        self._stage: SegmentRedactionStage[tuple[PlannedSegment, str | None]] = (
            SegmentRedactionStage(redactor, hold_s)
        )
        self._commit = commit
        self._timer: asyncio.TimerHandle | None = None

    def push(
        self,
        segment: PlannedSegment,
        text: str,
        words: tuple[Word, ...],
        language_code: str | None,
    ) -> None:
        now = asyncio.get_running_loop().time()
        self._release(
            self._stage.push((segment, language_code), str(segment.track), text, words, now)
        )

    def _release(self, released: list[tuple[tuple[PlannedSegment, str | None], Redacted]]) -> None:
        for (segment, language_code), redacted in released:
            self._commit(segment, redacted.text, redacted.words, language_code)
        self._schedule_expiry()

    def _schedule_expiry(self) -> None:
        """One timer per call, at the earliest hold's end (not per frame: per held segment)."""
        self.cancel()
        deadline = self._stage.next_deadline
        if deadline is not None:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._timer = None
        self._release(self._stage.expire(asyncio.get_running_loop().time()))

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def flush(self, log: structlog.stdlib.BoundLogger) -> None:
        """At the call's end: every held segment leaves (redacted to be safe)."""
        self.cancel()
        now = asyncio.get_running_loop().time()
        for (segment, language_code), redacted in self._stage.flush(now):
            self._commit(segment, redacted.text, redacted.words, language_code)
        stats = self._stage.stats
        if stats.found or stats.held:
            log.info(
                "redaction.summary",
                found={str(kind): count for kind, count in stats.found.items()},
                held=stats.held,
                hold_expired=stats.expired,
                max_added_ms=round(stats.max_added_s * 1000),
            )


class CallSession:
    """Runs one call's pipeline; created on Twilio's ``start``, finished exactly once."""

    def __init__(
        self,
        settings: Settings,
        stream: StreamDescription,
        sink: CallEventSink,
        *,
        connect: Connect | None = None,
        transcriber_settings: TranscriberSettings | None = None,
        writers: EventWriters | None = None,
        metrics: BridgeMetrics = DISABLED,
        partials: Callable[[LivePartial], None] | None = None,
        audio: CallAudioRecorder | None = None,
    ) -> None:
        self.settings = settings
        self.stream = stream
        self._sink = sink
        self.log = structlog.get_logger("callbridge.call").bind(
            call_sid=stream.call_sid, stream_sid=stream.stream_sid
        )
        self._labels = {
            Track.INBOUND: settings.speakers.inbound_label,
            Track.OUTBOUND: settings.speakers.outbound_label,
        }
        self._metrics = metrics
        self._partials = partials
        self._transcriber = SegmentTranscriber(
            scribe_options(settings.scribe),
            transcriber_settings or _transcriber_settings(settings),
            self._on_transcript,
            connect=connect or ScribeConnection.open,
            log=self.log,
            metrics=metrics,
            on_partial=self._on_partial if partials is not None else None,
        )
        self._segmenter = TurnSegmenter(stream.tracks, settings.turns, self._transcriber)
        self._clocks = {track: TrackClock() for track in stream.tracks}
        self._aligners = {track: FrameAligner() for track in stream.tracks}
        self._audio = audio  # the call's audio kept for the post-call batch pass, if on
        self._sequence = 0
        self._empty_transcripts = 0
        kinds = parse_kinds(settings.redaction.kinds)
        self._redaction = (
            _RedactionHold(Redactor(kinds), settings.redaction.hold_ms / 1000.0, self._commit)
            if kinds
            else None
        )
        if writers is None:
            writers = EventWriters(WriterSettings(journal_dir=Path(settings.database.journal_dir)))
        self._writers = writers
        self._events: CallEventWriter | None = None
        self._finished: asyncio.Future[CallEnded] | None = None
        self._started_at = utc_now()
        self._stream_end_ms = 0
        self._stream_stopped_at: float | None = None  # time.monotonic() when frames stopped
        self.frames = 0
        self.ignored_frames = 0

    # ------------------------------------------------------------- lifecycle
    def start(self) -> None:
        info = CallInfo(
            call_sid=self.stream.call_sid,
            stream_sid=self.stream.stream_sid,
            account_sid=self.stream.account_sid,
            from_number=self.stream.from_number,
            to_number=self.stream.to_number,
            tracks=tuple(str(t) for t in self.stream.tracks),
            custom_parameters=self.stream.custom_parameters,
            started_at=self._started_at,
        )
        self._events = self._writers.open(self._sink, self.stream.call_sid, self.log)
        self._emit(info)
        self._transcriber.start()
        self.log.info("call.stream_started", tracks=info.tracks)

    def on_media(self, track: Track, timestamp_ms: int, payload: bytes) -> None:
        """One Twilio media frame. The hot path: no logging, no tasks, no I/O."""
        clock = self._clocks.get(track)
        if clock is None or self._finished is not None:
            self.ignored_frames += 1
            return
        aligner = self._aligners[track]
        if len(payload) == FRAME_BYTES and not aligner.pending:
            self._place(track, clock, timestamp_ms, payload)
            return
        for start_ms, frame in aligner.push(timestamp_ms, payload):
            self._place(track, clock, start_ms, frame)

    def _place(self, track: Track, clock: TrackClock, timestamp_ms: int, payload: bytes) -> None:
        placed = clock.place(timestamp_ms, payload)
        if placed is None:
            return
        start_ms, fill_ms = placed
        push = self._segmenter.push
        if fill_ms:
            push(track, start_ms, silence(fill_ms))  # one step, however long (bounded)
            start_ms += fill_ms
        push(track, start_ms, payload)
        if self._audio is not None:
            self._audio.append(track, start_ms, payload)  # a buffer append (see audio_spool)
        self.frames += 1
        end_ms = start_ms + len(payload) // BYTES_PER_MS
        if end_ms > self._stream_end_ms:
            self._stream_end_ms = end_ms

    async def finish(self, reason: EndReason) -> CallEnded:
        """Commit the last turn, await its transcript (bounded), close Scribe, emit the end.

        Safe to call more than once and from several places (``stop``, socket close, status
        callback, shutdown): the first call does the work, the others wait for it.
        """
        if self._finished is not None:
            return await asyncio.shield(self._finished)
        self._finished = asyncio.get_running_loop().create_future()
        self._stream_stopped_at = time.monotonic()
        try:
            for track, aligner in self._aligners.items():
                for start_ms, frame in aligner.flush():
                    self._place(track, self._clocks[track], start_ms, frame)
            self._segmenter.finish()
            await self._transcriber.drain(self._drain_timeout())
            if self._redaction is not None:
                self._redaction.flush(self.log)
            if self._audio is not None:
                await self._audio.close()  # written and fsync-ed before the pass is enqueued
            ended = self._ended(reason)
            self._emit(ended)
            await self._settle_events()
            self._log_finished(ended)
            self._finished.set_result(ended)
            return ended
        except BaseException as exc:
            if self._redaction is not None:
                self._redaction.cancel()
            if self._audio is not None:
                await asyncio.shield(self._audio.close())
            self._finished.set_exception(exc)
            if self._events is not None:
                await self._events.stop()  # journals what it holds
            await self._transcriber.abort()
            raise

    def _ended(self, reason: EndReason) -> CallEnded:
        degraded = self._transcriber.degraded
        return CallEnded(
            call_sid=self.stream.call_sid,
            stream_sid=self.stream.stream_sid,
            ended_at=utc_now(),
            duration_ms=self._stream_end_ms,
            reason=EndReason.ERROR if degraded and reason is EndReason.STOP else reason,
            segments=self._sequence,
            empty_transcripts=self._empty_transcripts,
            untranscribed_turns=self._transcriber.untranscribed,
            activity=tuple(
                TrackActivity(t, self._labels[t], self._segmenter.activity(t))
                for t in self._segmenter.tracks
            ),
            language_code=self._transcriber.language_code,
            degraded=degraded,
            audio_lost_ms=self._segmenter.lost_ms + self._transcriber.lost_ms,
        )

    async def _settle_events(self) -> None:
        """Close the call's events: stored, or journaled while the store is down (then the
        writer carries on in the background): the call's end never waits for a store outage."""
        if self._events is None:
            return
        self._events.close()
        if not await self._events.settled():
            self.log.warning("call.events_pending_store", journaled=True)

    def _log_finished(self, ended: CallEnded) -> None:
        degraded, lost_ms = ended.degraded, ended.audio_lost_ms
        if degraded or lost_ms:
            self.log.warning("call.degraded", degraded=degraded, audio_lost_ms=lost_ms)
        clocks, aligners = self._clocks.values(), self._aligners.values()
        self.log.info(
            "call.finished",
            reason=str(ended.reason),
            segments=ended.segments,
            empty_transcripts=ended.empty_transcripts,
            duration_ms=ended.duration_ms,
            degraded=degraded,
            audio_lost_ms=lost_ms,
            gap_filled_ms=sum(c.filled_ms for c in clocks),
            gap_skipped_ms=sum(c.skipped_ms for c in clocks),
            duplicate_frames=sum(c.duplicates for c in clocks),
            ignored_frames=self.ignored_frames,
            odd_payloads=sum(a.odd_payloads for a in aligners),
            empty_payloads=sum(a.empty_payloads for a in aligners),
            reconnects=self._transcriber.reconnects,
        )

    def _drain_timeout(self) -> float:
        s = self.settings
        backlog_s = self._segmenter.held_bytes / BYTES_PER_MS / 1000.0
        return s.scribe.final_transcript_timeout_s + backlog_s / s.turns.catchup_speed + 2.0

    # -------------------------------------------------------------- results
    def _on_transcript(self, transcript: SegmentTranscript) -> None:
        segment, text, words = transcript.segment, transcript.text, transcript.words
        language_code = transcript.language_code
        if not text.strip():
            # Silence, noise, music, a tone: not a segment (interface §5). No number, not
            # stored, not sent; counted for the call's figures.
            self._empty_transcripts += 1
            return
        if self._redaction is None:
            self._commit(segment, text, words, language_code)
        else:
            self._redaction.push(segment, text, words, language_code)

    def _commit(
        self,
        segment: PlannedSegment,
        text: str,
        words: tuple[Word, ...],
        language_code: str | None,
    ) -> None:
        """Number the segment and send it on its way (text already redacted)."""
        self._sequence += 1
        committed = CommittedSegment(
            call_sid=self.stream.call_sid,
            stream_sid=self.stream.stream_sid,
            sequence=self._sequence,
            speaker=self._labels[segment.track],
            track=segment.track,
            text=text,
            start_ms=segment.speech_start_ms,
            end_ms=segment.speech_end_ms,
            language_code=language_code,
            words=words,
            speech_ended_at=self._moment_of(segment.speech_end_ms),
        )
        self._emit(committed)

    def _moment_of(self, stream_ms: int) -> float:
        """When (``time.monotonic()``) the stream reached ``stream_ms``: Twilio sends in real
        time, so that is as long before the newest frame as the stream time between them."""
        newest = self._stream_stopped_at or time.monotonic()
        return newest - max(0, self._stream_end_ms - stream_ms) / 1000.0

    def _on_partial(self, segment: PlannedSegment, text: str) -> None:
        if self._partials is not None:
            self._partials(
                LivePartial(
                    self.stream.call_sid, self._labels[segment.track], str(segment.track), text
                )
            )

    def _emit(self, event: CallInfo | CommittedSegment | CallEnded) -> None:
        if self._events is not None:
            self._events.put(event)
