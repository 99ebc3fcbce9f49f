"""``callbridge calls …``: read stored calls and transcripts from the command line.

:func:`add_calls_commands` registers ``calls list [--limit N] [--cursor C] [--json]``,
``calls show SID`` and ``calls transcript SID [--format json|txt|vtt|srt]`` on the
top-level subparsers. Each sets ``handler`` (``args.handler(args) -> int``) and reads the
same store as the server (``--config``/``CALLBRIDGE_CONFIG``, ``DATABASE_URL``). Exit codes:
0 success, 1 unknown call, 2 configuration or store problem (one line on stderr, no
traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from callbridge.api.formats import (
    TEXT_RENDERERS,
    TRANSCRIPT_FORMATS,
    call_to_json,
    summary_to_json,
    transcript_to_json,
)
from callbridge.config import ConfigError, load_settings
from callbridge.store.base import CallStatus, Store, StoreError
from callbridge.store.factory import open_store

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_CONFIG = 2


class CallNotFound(Exception):
    def __init__(self, call_sid: str) -> None:
        super().__init__(f"no call {call_sid!r} in the store")


def add_calls_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    calls = subparsers.add_parser(
        "calls",
        help="list stored calls, show one, print a transcript",
        description="Read the calls the server stored (the same database as `serve`).",
    )
    commands = calls.add_subparsers(dest="calls_command", metavar="COMMAND", required=True)

    listing = commands.add_parser("list", help="calls, newest first")
    listing.add_argument("--limit", type=_positive_int, default=20, help="calls per page (20)")
    listing.add_argument("--cursor", default=None, help="next_cursor printed by a previous page")
    listing.add_argument(
        "--status",
        choices=[status.value for status in CallStatus],
        default=None,
        help="only calls in this state (live: streaming now)",
    )
    listing.add_argument("--json", action="store_true", help="print the API's JSON page")
    listing.set_defaults(handler=run_list)

    show = commands.add_parser("show", help="one call as JSON, with its summary once ended")
    show.add_argument("call_sid", metavar="SID")
    show.set_defaults(handler=run_show)

    transcript = commands.add_parser("transcript", help="a call's committed transcript")
    transcript.add_argument("call_sid", metavar="SID")
    transcript.add_argument(
        "--format", choices=TRANSCRIPT_FORMATS, default="txt", help="output format (txt)"
    )
    transcript.set_defaults(handler=run_transcript)


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def run_list(args: argparse.Namespace, out: TextIO | None = None) -> int:
    async def work(store: Store) -> str:
        try:
            status = CallStatus(args.status) if args.status else None
            calls, next_cursor = await store.list_calls(args.limit, args.cursor, status)
        except ValueError:
            raise StoreError("--cursor is not a cursor this command printed") from None
        if args.json:
            page = {"calls": [call_to_json(c) for c in calls], "next_cursor": next_cursor}
            return json.dumps(page, indent=2, ensure_ascii=False) + "\n"
        rows = [("CALL SID", "STATUS", "CREATED", "DURATION", "SEGMENTS", "FROM", "TO")]
        for call in calls:
            rows.append(
                (
                    call.call_sid,
                    str(call.status),
                    call.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                    f"{call.duration_ms / 1000:.1f}s" if call.duration_ms is not None else "-",
                    str(call.segments),
                    call.from_number or "-",
                    call.to_number or "-",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows
        ]
        if next_cursor:
            lines.append(f"more: --cursor {next_cursor}")
        return "\n".join(lines) + "\n"

    return _run(args, work, out)


def run_show(args: argparse.Namespace, out: TextIO | None = None) -> int:
    async def work(store: Store) -> str:
        call = await store.get_call(args.call_sid)
        if call is None:
            raise CallNotFound(args.call_sid)
        shown: dict[str, Any] = call_to_json(call)
        shown["summary"] = summary_to_json(call)
        return json.dumps(shown, indent=2, ensure_ascii=False) + "\n"

    return _run(args, work, out)


def run_transcript(args: argparse.Namespace, out: TextIO | None = None) -> int:
    async def work(store: Store) -> str:
        call = await store.get_call(args.call_sid)
        if call is None:
            raise CallNotFound(args.call_sid)
        segments = await store.get_segments(call.call_sid)
        if args.format == "json":
            document = transcript_to_json(call, segments)
            return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
        return TEXT_RENDERERS[args.format](segments)

    return _run(args, work, out)


def _run(
    args: argparse.Namespace,
    work: Callable[[Store], Awaitable[str]],
    out: TextIO | None,
) -> int:
    """Open the configured store, run ``work``, print its text; map failures to exit codes."""
    try:
        settings = load_settings(getattr(args, "config", None))
        # whatever the store logs (e.g. a schema migration) goes to stderr: stdout is data
        with contextlib.redirect_stdout(sys.stderr):
            text = asyncio.run(_with_store(settings.database.url, work))
    except CallNotFound as exc:
        print(f"callbridge calls: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except (ConfigError, StoreError) as exc:
        print(f"callbridge calls: {_one_line(exc)}", file=sys.stderr)
        return EXIT_CONFIG
    (out or sys.stdout).write(text)
    return EXIT_OK


async def _with_store(url: str, work: Callable[[Store], Awaitable[str]]) -> str:
    store = open_store(url)
    await store.open()
    try:
        return await work(store)
    finally:
        await store.close()


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
