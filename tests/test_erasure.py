"""Erasure leaves no trace: right after ``DELETE /v1/calls/{sid}`` answers 204, a distinctive
phrase of the call's transcript is in no file of the SQLite database's directory (the file,
its write-ahead log, its shared-memory index), while another call's phrase still is."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import aiohttp

from callbridge.context import SINK
from callbridge.models import (
    CallEnded,
    CallInfo,
    CommittedSegment,
    EndReason,
    Interval,
    Track,
    TrackActivity,
    Word,
    utc_now,
)
from callbridge.testing.twilio_simulator import new_call_sid
from callbridge.testing.webhook_receiver import WebhookReceiver
from tests.bridge_harness import (
    API_TOKEN,
    RunningBridge,
    bridge_settings,
    free_port,
    running_bridge,
)

ERASED_PHRASE = "quartz flamingo recites the ledger"
KEPT_PHRASE = "cobalt walrus hums a sonnet"


async def write_call(bridge: RunningBridge, call_sid: str, phrase: str, turns: int) -> None:
    """A call as the bridge stores it: started, ``turns`` segments holding ``phrase`` (text and
    words), ended with its summary, every event enqueued for the webhook target."""
    sink = bridge.app[SINK]
    started = utc_now()
    await sink.call_started(
        CallInfo(
            call_sid=call_sid,
            stream_sid="MZ" + call_sid[2:],
            account_sid="AC" + "1" * 32,
            from_number="+15550001111",
            to_number="+15550002222",
            tracks=("inbound", "outbound"),
            custom_parameters={"note": phrase},
            started_at=started,
        )
    )
    for sequence in range(1, turns + 1):
        start = sequence * 2000
        await sink.segment_committed(
            CommittedSegment(
                call_sid=call_sid,
                stream_sid="MZ" + call_sid[2:],
                sequence=sequence,
                speaker="caller" if sequence % 2 else "agent",
                track=Track.INBOUND if sequence % 2 else Track.OUTBOUND,
                text=f"{phrase} number {sequence}",
                start_ms=start,
                end_ms=start + 1500,
                language_code="en",
                words=tuple(
                    Word(word, start + 200 * i, start + 200 * i + 150)
                    for i, word in enumerate(phrase.split())
                ),
            )
        )
    await sink.call_ended(
        CallEnded(
            call_sid=call_sid,
            stream_sid="MZ" + call_sid[2:],
            ended_at=started + timedelta(seconds=30),
            duration_ms=(turns + 1) * 2000,
            reason=EndReason.STOP,
            segments=turns,
            activity=(
                TrackActivity(Track.INBOUND, "caller", (Interval(2000, 3500),)),
                TrackActivity(Track.OUTBOUND, "agent", (Interval(4000, 5500),)),
            ),
            language_code="en",
        )
    )


def files_holding(directory: Path, phrase: str) -> list[str]:
    needle = phrase.encode("utf-8")
    return sorted(
        path.name for path in directory.iterdir() if path.is_file() and needle in path.read_bytes()
    )


async def test_an_erased_calls_text_is_gone_from_every_file_of_the_database(
    tmp_path: Path,
) -> None:
    async with WebhookReceiver() as receiver:
        db_dir = tmp_path / "db"
        db_dir.mkdir()
        settings = bridge_settings(
            db_dir, "ws://127.0.0.1:9/unused", free_port(), webhook_urls=[receiver.url]
        )
        async with running_bridge(settings) as bridge:
            erased, kept = new_call_sid(), new_call_sid()
            await write_call(bridge, erased, ERASED_PHRASE, turns=8)
            await write_call(bridge, kept, KEPT_PHRASE, turns=3)
            # Every event delivered: each delivery row was written, then rewritten.
            await receiver.wait_for((8 + 2) + (3 + 2), timeout=15)
            await asyncio.sleep(0.3)
            holding = files_holding(db_dir, ERASED_PHRASE)
            assert "bridge.db-wal" in holding  # many copies, as the issue found

            headers = {"Authorization": f"Bearer {API_TOKEN}"}
            async with (
                aiohttp.ClientSession() as http,
                http.delete(f"{bridge.base_url}/v1/calls/{erased}", headers=headers) as response,
            ):
                assert response.status == 204

            assert files_holding(db_dir, ERASED_PHRASE) == []
            for word in ERASED_PHRASE.split():  # not even one word of it (as JSON, in words)
                assert files_holding(db_dir, f'"{word}"') == []
            assert files_holding(db_dir, KEPT_PHRASE)  # the other call is all there
            assert len(await bridge.store.get_segments(kept)) == 3
            assert await bridge.store.get_call(erased) is None
