"""The post-call batch pass as a job (:mod:`callbridge.jobs`): ``CALLBRIDGE_POSTCALL=batch``.

At a call's end, in the same transaction, a ``postcall_batch`` job is enqueued with what
the pass needs later (the tracks' measured speech, the host that keeps the audio). The
runner then, at most ``postcall.concurrency`` at once per process:

1. reads the call's kept audio (:mod:`~callbridge.postcall.audio_spool`);
2. sends each track that has speech to Scribe v2 batch on its own (``diarize=false``,
   ``num_speakers=1``), by default only its speech (:mod:`~callbridge.postcall.request_audio`),
   with ``entity_detection`` for the kinds in ``CALLBRIDGE_REDACT``; each answer's
   ``transcription_id`` is saved in the job, so a retry or a restart fetches the answer
   (``GET …/transcripts/{id}``) instead of paying for it again;
3. builds the ``batch`` transcript (:mod:`~callbridge.postcall.batch_transcript`: exact
   speakers, entities and the local redactor applied), recomputes the summary from it, and
   stores both with ``call.transcript_final`` and any follow-up jobs (the AI summary) in one
   transaction;
4. deletes the transcripts at ElevenLabs (unless ``postcall.keep_remote``) and the audio.

429 (honouring ``Retry-After``), 5xx, timeouts and network errors are retried with
backoff for ``postcall.retry_for_s``; then, or at once for a request the service rejects,
the pass fails: the call's batch record says ``failed`` with the reason,
``call.postcall_failed`` is sent, the follow-ups run on the live transcript, and the audio
and any remote transcripts are deleted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import structlog

from callbridge.config import Settings
from callbridge.jobs import (
    Job,
    JobContext,
    JobKind,
    NewJob,
    PermanentJobError,
    RetryableJobError,
    RetryPolicy,
)
from callbridge.jobs.runner import LeaseLost
from callbridge.models import (
    BatchStatus,
    BatchTranscript,
    CallEnded,
    EndReason,
    Interval,
    Track,
    TrackActivity,
    utc_now,
)
from callbridge.postcall.audio_spool import AudioSpool
from callbridge.postcall.batch_client import BatchError, BatchTranscription, ScribeBatchClient
from callbridge.postcall.batch_transcript import TrackResult, batch_segments
from callbridge.postcall.request_audio import request_audio
from callbridge.redaction import parse_kinds
from callbridge.store.base import CallRecord, DurableStore
from callbridge.summary import summarize
from callbridge.webhooks.events import call_postcall_failed_event, call_transcript_final_event

log = structlog.get_logger(__name__)

POSTCALL_JOB = "postcall_batch"
LEASE_S = 60.0  # renewed every 20 s while a request runs
FollowUps = Callable[[str], Sequence[NewJob]]


def _as_job_error(exc: BatchError) -> Exception:
    if exc.retryable:
        return RetryableJobError(str(exc), exc.retry_after_s)
    return PermanentJobError(str(exc))


class BatchPass:
    """Runs the pass for one call at a time (see the module docstring)."""

    def __init__(
        self,
        store: DurableStore,
        settings: Settings,
        spool: AudioSpool,
        client: ScribeBatchClient,
        *,
        notify: Callable[[], None],
        follow_ups: Sequence[FollowUps] = (),
        jobs_enqueued: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.store = store
        self.settings = settings
        self.spool = spool
        self.client = client
        self.kinds = parse_kinds(settings.redaction.kinds)
        self._notify = notify
        self._follow_ups = follow_ups
        self._jobs_enqueued = jobs_enqueued
        self._clock = clock
        self._pending: set[asyncio.Future[Any]] = set()
        self._labels = {
            str(Track.INBOUND): settings.speakers.inbound_label,
            str(Track.OUTBOUND): settings.speakers.outbound_label,
        }

    # -- enqueueing --------------------------------------------------------------------------

    def after_call(self, ended: CallEnded) -> Sequence[NewJob]:
        payload: dict[str, Any] = {
            "host": self.spool.host,
            "duration_ms": ended.duration_ms,
            "audio_lost_ms": ended.audio_lost_ms,
            "activity": {
                str(activity.track): [[i.start_ms, i.end_ms] for i in activity.speech]
                for activity in ended.activity
            },
        }
        return [NewJob(POSTCALL_JOB, ended.call_sid, payload)]

    def kind(self) -> JobKind:
        p = self.settings.postcall
        return JobKind(
            name=POSTCALL_JOB,
            handler=self.run,
            concurrency=p.concurrency,
            lease_s=LEASE_S,
            retry=RetryPolicy(
                initial_s=p.backoff_initial_s, max_s=p.backoff_max_s, give_up_after_s=p.retry_for_s
            ),
            on_failed=self.failed,
        )

    # -- the pass ----------------------------------------------------------------------------

    async def run(self, context: JobContext) -> None:
        call_sid = context.job.call_sid
        call = await self.store.get_call(call_sid)
        if call is None or await self.store.get_batch_transcript(call_sid) is not None:
            # erased meanwhile, or stored before a crash kept the job from finishing
            self.spool.delete(call_sid)
            return
        payload = dict(context.payload)
        audio = self.spool.read(call_sid)
        if audio is None:
            host = str(payload.get("host") or "")
            if host and host != self.spool.host:
                raise RetryableJobError(f"audio_elsewhere: the call's audio is kept on {host}")
            raise PermanentJobError("audio_missing: no audio was kept for this call")
        if audio.incomplete:
            raise PermanentJobError(f"audio_incomplete: {audio.incomplete}")
        transcriptions: dict[str, str] = dict(payload.get("transcriptions") or {})
        billed: dict[str, float] = dict(payload.get("billed") or {})
        activity: Mapping[str, Any] = payload.get("activity") or {}
        results: list[TrackResult] = []
        for track_name, track in sorted(audio.tracks.items()):
            speech = None
            if self.settings.postcall.send == "speech" and track_name in activity:
                speech = [(int(s), int(e)) for s, e in activity[track_name]]
            sent = request_audio(track, speech)
            if sent is None:
                continue  # nobody spoke on this track: nothing to send, nothing billed
            transcription = None
            try:
                if track_name in transcriptions:
                    transcription = await self.client.get(transcriptions[track_name])
                if transcription is None:
                    transcription = await self._transcribe(sent.wav, f"{call_sid}-{track_name}.wav")
                    transcriptions[track_name] = transcription.transcription_id
                    billed[track_name] = transcription.audio_duration_secs or sent.seconds
                    payload.update(transcriptions=transcriptions, billed=billed)
                    try:
                        await context.save_progress(payload)
                    except LeaseLost:
                        # Erased meanwhile (the job went with the call), or the job is
                        # another runner's now: this transcript will never be used.
                        self._forget(transcription.transcription_id)
                        raise
            except BatchError as exc:
                raise _as_job_error(exc) from exc
            results.append(
                TrackResult(
                    Track(track_name),
                    self._labels.get(track_name, track_name),
                    transcription,
                    sent.time_map,
                )
            )
        now = self._clock()
        segments = batch_segments(
            results,
            call_sid=call_sid,
            stream_sid=call.stream_sid or "",
            kinds=self.kinds,
            committed_at=now,
        )
        summary = {**summarize(self._ended(call, payload, len(segments)), segments)}
        summary["version"] = "batch"
        record = BatchTranscript(
            call_sid=call_sid,
            status=BatchStatus.DONE,
            segments=segments,
            summary=summary,
            transcription_ids=tuple(transcriptions.values()),
            audio_seconds=round(sum(billed.values()), 3),
            model_id=self.client.options.model_id,
            created_at=now,
        )
        stored = await self.store.set_batch_transcript(
            record, [call_transcript_final_event(record)], self._follow_up_jobs(call_sid)
        )
        if stored:
            self._announce()
            log.info(
                "postcall.stored",
                call_sid=call_sid,
                segments=len(segments),
                audio_seconds_billed=record.audio_seconds,
            )
        if not stored or not self.settings.postcall.keep_remote:
            # erased meanwhile (nothing must stay at ElevenLabs), or not to be kept there
            await self._delete_remote(call_sid, transcriptions.values())
        self.spool.delete(call_sid)

    async def failed(self, job: Job, reason: str) -> None:
        """The runner's clean-up for a pass that failed for good (idempotent)."""
        call_sid = job.call_sid
        ids = tuple(dict(job.payload.get("transcriptions") or {}).values())
        if await self.store.get_call(call_sid) is not None:
            record = BatchTranscript(
                call_sid=call_sid,
                status=BatchStatus.FAILED,
                error=reason[:1000],
                transcription_ids=ids,
                created_at=self._clock(),
            )
            if await self.store.set_batch_transcript(
                record, [call_postcall_failed_event(record)], self._follow_up_jobs(call_sid)
            ):
                self._announce()
                log.warning("postcall.failed", call_sid=call_sid, error=reason[:300])
        await self._delete_remote(call_sid, ids)
        self.spool.delete(call_sid)

    async def erase(self, call_sid: str) -> None:
        """Before a call is erased: its audio here and its transcripts at ElevenLabs.
        Raises :class:`BatchError` if a remote transcript could not be deleted."""
        ids: list[str] = []
        record = await self.store.get_batch_transcript(call_sid)
        if record is not None:
            ids += record.transcription_ids
        job = await self.store.jobs.get(POSTCALL_JOB, call_sid)
        if job is not None:
            ids += [i for i in dict(job.payload.get("transcriptions") or {}).values() if i]
        for transcription_id in dict.fromkeys(ids):
            await self.client.delete(transcription_id)
        self.spool.delete(call_sid)

    # -- helpers -----------------------------------------------------------------------------

    async def _transcribe(self, wav: bytes, filename: str) -> BatchTranscription:
        """One request that, if this pass is cancelled while it runs (the call erased, the
        lease lost, the server stopping), still finishes and has its transcript deleted at
        ElevenLabs: nothing would ever use it."""
        request = asyncio.ensure_future(self.client.transcribe(wav, filename))
        try:
            return await asyncio.shield(request)
        except asyncio.CancelledError:
            request.add_done_callback(self._abandoned)
            self._pending.add(request)
            raise

    def _abandoned(self, request: asyncio.Future[BatchTranscription]) -> None:
        self._pending.discard(request)
        if not request.cancelled() and request.exception() is None:
            self._forget(request.result().transcription_id)

    def _forget(self, transcription_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._delete_remote("", [transcription_id]))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109
        """Give abandoned requests and their clean-up ``timeout`` seconds (at shutdown)."""
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=timeout)

    def _follow_up_jobs(self, call_sid: str) -> list[NewJob]:
        return [job for follow_up in self._follow_ups for job in follow_up(call_sid)]

    def _announce(self) -> None:
        self._notify()
        if self._follow_ups:
            self._jobs_enqueued()

    async def _delete_remote(self, call_sid: str, ids: Sequence[str] | Any) -> None:
        for transcription_id in ids:
            try:
                await self.client.delete(transcription_id)
            except BatchError as exc:
                # It stays listed with the call; erasing the call tries again.
                log.warning("postcall.remote_delete_failed", call_sid=call_sid, error=str(exc))

    def _ended(self, call: CallRecord, payload: Mapping[str, Any], segments: int) -> CallEnded:
        """The call's end as the summary needs it, from the record and the job."""
        activity = tuple(
            TrackActivity(
                Track(track),
                self._labels.get(track, track),
                tuple(Interval(int(s), int(e)) for s, e in spans),
            )
            for track, spans in (payload.get("activity") or {}).items()
            if track in (Track.INBOUND, Track.OUTBOUND)
        )
        try:
            reason = EndReason(call.end_reason or "stop")
        except ValueError:
            reason = EndReason.STOP
        return CallEnded(
            call_sid=call.call_sid,
            stream_sid=call.stream_sid or "",
            ended_at=call.ended_at or self._clock(),
            duration_ms=call.duration_ms or int(payload.get("duration_ms") or 0),
            reason=reason,
            segments=segments,
            activity=activity,
            language_code=None,
            degraded=call.degraded,
            audio_lost_ms=int(payload.get("audio_lost_ms") or 0),
        )
