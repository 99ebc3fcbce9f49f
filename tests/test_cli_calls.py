"""``callbridge calls list|show|transcript`` against a real SQLite store."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import webvtt

from callbridge.cli_calls import add_calls_commands
from callbridge.models import (
    CallEnded,
    CallInfo,
    CommittedSegment,
    EndReason,
    Interval,
    Track,
    TrackActivity,
)
from callbridge.store.factory import open_store
from callbridge.summary import summarize

SID = "CA" + "d" * 32
AT = datetime(2025, 5, 6, 7, 8, 9, tzinfo=UTC)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="callbridge")
    top.add_argument("--config", default=None)
    add_calls_commands(top.add_subparsers(dest="command", required=True))
    return top


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    args = parser().parse_args(argv)
    code = args.handler(args)
    out, err = capsys.readouterr()
    return code, out, err


def segment(sequence: int, speaker: str, text: str, start: int) -> CommittedSegment:
    return CommittedSegment(
        call_sid=SID,
        stream_sid="MZ1",
        sequence=sequence,
        speaker=speaker,
        track=Track.INBOUND if speaker == "caller" else Track.OUTBOUND,
        text=text,
        start_ms=start,
        end_ms=start + 1000,
        language_code="en",
        committed_at=AT,
    )


async def seed(url: str) -> None:
    store = open_store(url)
    await store.open()
    try:
        await store.call_requested(SID, "AC1", "+15550001111", "+15550002222")
        await store.call_started(
            CallInfo(
                SID, "MZ1", "AC1", "+15550001111", "+15550002222", ("inbound", "outbound"), {}, AT
            ),
            [],
        )
        segments = [
            segment(1, "caller", "hello", 0),
            segment(2, "agent", "", 1000),
            segment(3, "agent", "hi there", 2000),
        ]
        for seg in segments:
            await store.segment_committed(seg, [])
        ended = CallEnded(
            SID,
            "MZ1",
            AT,
            4000,
            EndReason.STOP,
            3,
            (TrackActivity(Track.INBOUND, "caller", (Interval(0, 900),)),),
        )
        await store.call_ended(ended, summarize(ended, segments), [])
        for n in range(3):
            await store.call_requested(f"CA{n:032d}", None, None, None)
    finally:
        await store.close()


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    asyncio.run(seed(url))
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.delenv("CALLBRIDGE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no config/callbridge.toml here: defaults + environment
    return url


def test_list_table_and_paging(database: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["calls", "list", "--limit", "2"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["CALL", "SID", "STATUS"]
    assert len(lines) == 4  # header, two calls, the next-page hint
    assert lines[-1].startswith("more: --cursor ")
    cursor = lines[-1].split()[-1]

    code, out, _ = run(["calls", "list", "--limit", "10", "--cursor", cursor, "--json"], capsys)
    assert code == 0
    page = json.loads(out)
    assert page["next_cursor"] is None
    assert len(page["calls"]) == 2


def test_list_json_everything(database: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["calls", "list", "--json"], capsys)
    assert code == 0
    sids = [c["call_sid"] for c in json.loads(out)["calls"]]
    assert len(sids) == 4 and SID in sids


def test_list_by_status(database: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["calls", "list", "--status", "ended", "--json"], capsys)
    assert code == 0
    assert [c["call_sid"] for c in json.loads(out)["calls"]] == [SID]
    code, out, _ = run(["calls", "list", "--status", "ringing", "--json"], capsys)
    assert len(json.loads(out)["calls"]) == 3
    code, out, _ = run(["calls", "list", "--status", "live", "--json"], capsys)
    assert json.loads(out)["calls"] == []


def test_fresh_database_keeps_stdout_pure_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'fresh.db'}")
    code, out, _ = run(["calls", "list", "--json"], capsys)  # migrates, and may log that
    assert code == 0
    assert json.loads(out) == {"calls": [], "next_cursor": None}


def test_show(database: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["calls", "show", SID], capsys)
    assert code == 0
    shown = json.loads(out)
    assert shown["status"] == "ended"
    assert shown["from"] == "+15550001111"
    assert shown["summary"]["transcript"] == "caller: hello\nagent: hi there"


@pytest.mark.parametrize("output", ["txt", "json", "vtt", "srt"])
def test_transcript_formats(database: str, capsys: pytest.CaptureFixture[str], output: str) -> None:
    code, out, _ = run(["calls", "transcript", SID, "--format", output], capsys)
    assert code == 0
    if output == "txt":
        assert out == "caller: hello\nagent: hi there\n"
    elif output == "json":
        assert [s["sequence"] for s in json.loads(out)["segments"]] == [1, 2, 3]
    elif output == "vtt":
        assert [c.voice for c in webvtt.from_buffer(io.StringIO(out))] == ["caller", "agent"]
    else:
        assert out.startswith("1\n00:00:00,000 --> 00:00:01,000\ncaller: hello\n")


@pytest.mark.parametrize("command", ["show", "transcript"])
def test_unknown_call(database: str, capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, out, err = run(["calls", command, "CAnope"], capsys)
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1 and "CAnope" in err


def test_bad_cursor_is_one_line(database: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["calls", "list", "--cursor", "garbage"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "cursor" in err


def test_config_error_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", "mysql://nope")
    code, out, err = run(["calls", "list"], capsys)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and "DATABASE_URL" in err

    monkeypatch.delenv("DATABASE_URL")
    code, _, err = run(["--config", str(tmp_path / "missing.toml"), "calls", "list"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "missing.toml" in err


def test_store_error_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "not-a-db").write_text("this is not sqlite" * 100)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'not-a-db'}")
    code, _, err = run(["calls", "show", SID], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["calls", "--help"])
    out = capsys.readouterr().out
    for command in ("list", "show", "transcript"):
        assert command in out
