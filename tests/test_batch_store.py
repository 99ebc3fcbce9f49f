"""Batch transcripts in the store (SQLite and PostgreSQL), and the sweeper that deletes kept
audio no pass will use."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from callbridge.jobs import NewJob
from callbridge.models import BatchStatus, BatchTranscript, Word
from callbridge.postcall.audio_spool import AudioSpool
from callbridge.postcall.batch_pass import POSTCALL_JOB
from callbridge.postcall.setup import sweep_once
from callbridge.store.base import DurableStore
from callbridge.webhooks.events import call_postcall_failed_event, call_transcript_final_event
from tests.test_store_contract import T0, Backend, call_info, run_call, segment


def record(call_sid: str, status: BatchStatus = BatchStatus.DONE) -> BatchTranscript:
    first = segment(call_sid, 1, "My card is [PCI]")
    second = segment(call_sid, 2, "Go ahead.")
    return BatchTranscript(
        call_sid=call_sid,
        status=status,
        segments=(first, second) if status is BatchStatus.DONE else (),
        summary={"call_sid": call_sid, "version": "batch"} if status is BatchStatus.DONE else None,
        error=None if status is BatchStatus.DONE else "server_error: HTTP 500",
        transcription_ids=("tr_1", "tr_2"),
        audio_seconds=12.5,
        model_id="scribe_v2",
        created_at=T0 + timedelta(minutes=2),
    )


async def test_a_batch_transcript_round_trips_and_is_written_once(
    store: DurableStore, backend: Backend
) -> None:
    await run_call(store, "CA1", segments=1)
    done = record("CA1")
    follow_up = NewJob("ai_summary", "CA1")
    assert await store.set_batch_transcript(done, [call_transcript_final_event(done)], [follow_up])
    found = await store.get_batch_transcript("CA1")
    assert found == done
    assert found.segments[0].words == (Word("hello", 1000, 1300, logprob=-0.1),)
    assert await store.jobs.get("ai_summary", "CA1") is not None
    assert await backend.raw_count("events", "CA1") == 4  # started, committed, ended, final
    # written once: a failure recorded later (a runner that lost its lease) changes nothing
    failed = record("CA1", BatchStatus.FAILED)
    assert not await store.set_batch_transcript(failed, [call_postcall_failed_event(failed)])
    assert (await store.get_batch_transcript("CA1")) == done
    assert await backend.raw_count("events", "CA1") == 4
    # erasing the call erases it
    assert await store.delete_call("CA1")
    assert await store.get_batch_transcript("CA1") is None
    assert await backend.raw_count("batch_transcripts", "CA1") == 0


async def test_no_batch_transcript_for_a_call_the_store_does_not_hold(
    store: DurableStore, backend: Backend
) -> None:
    gone = record("CA-erased")
    assert not await store.set_batch_transcript(gone, [call_transcript_final_event(gone)])
    assert await store.get_batch_transcript("CA-erased") is None
    assert await backend.raw_count("events", "CA-erased") == 0
    failed = record("CA2", BatchStatus.FAILED)
    await store.call_started(call_info("CA2"), [])
    assert await store.set_batch_transcript(failed, [call_postcall_failed_event(failed)])
    stored = await store.get_batch_transcript("CA2")
    assert stored is not None and stored.status is BatchStatus.FAILED and stored.segments == ()
    assert stored.error == "server_error: HTTP 500"


async def test_the_sweeper_deletes_only_audio_no_pass_will_use(
    store: DurableStore, tmp_path: Path
) -> None:
    spool = AudioSpool(tmp_path / "audio", 2**20)
    for sid in ("CA-live", "CA-pending", "CA-done", "CA-erased", "CA-fresh", "CA-nojob"):
        recorder = spool.open(sid, ["inbound"])
        assert recorder is not None
        await recorder.close()
    now = T0.timestamp() + 3600
    await store.call_started(call_info("CA-live"), [])
    for sid in ("CA-pending", "CA-done", "CA-nojob"):
        await run_call(store, sid, segments=0)
    await store.jobs.enqueue(
        [NewJob(POSTCALL_JOB, "CA-pending"), NewJob(POSTCALL_JOB, "CA-done")], T0
    )
    (claimed,) = [
        j for j in await store.jobs.claim(POSTCALL_JOB, T0, 5, "r", 60.0) if j.call_sid == "CA-done"
    ] or [None]
    assert claimed is not None and await store.jobs.complete(claimed.job_id, "r", T0)
    await store.jobs.release("r")
    created = {sid: now - 120 for sid, _ in spool.kept()}
    created["CA-fresh"] = now - 5  # just started: its rows may not be written yet
    for sid, at in created.items():
        meta = spool.folder / sid / "meta.json"
        meta.write_text(meta.read_text().replace(str(_created(meta)), str(at)))
    removed = await sweep_once(store, spool, now=now, grace_s=600.0)
    kept = sorted(sid for sid, _ in spool.kept())
    # ended long ago with no job at all (postcall was off): grace passed, deleted too
    assert kept == ["CA-fresh", "CA-live", "CA-pending"]
    assert removed == 3


def _created(meta: Path) -> float:
    import json

    return float(json.loads(meta.read_text())["created_at"])
