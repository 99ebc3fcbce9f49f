"""Load benchmark: the real bridge process under N concurrent two-track calls, against a relay.

    .venv/bin/python benchmarks/load.py [--calls 10,50 --duration 15 --rounds 3 --json out.json]

For every N, once per system of ``--systems`` (``bridge`` = ``python -m callbridge serve``;
``bridge-nometrics`` = the same with ``CALLBRIDGE_METRICS_ENABLED=false``; ``bridge-b`` = the
same with ``--b-env`` added, e.g. ``PYTHONPATH`` pointing at another checkout, to compare two
builds in one run; ``relay`` = the minimal pass-through relay below; optionally ``receive``,
the relay's floor), on 127.0.0.1 only:

* a *fixtures* process runs the Scribe emulator (``callbridge.testing.scribe_emulator``,
  default ``duration`` transcriber, partials off unless ``--partials-ms``) and a webhook
  receiver that timestamps every POST;
* the server under test runs as its own process, configured through the environment
  (``--instances K``: K bridge servers, each its own port and directory, sharing one
  database, SQLite by default or ``--database postgresql://…``; call i goes to server i mod K);
* this process (the *load generator*, asyncio, one shared ``aiohttp.ClientSession``) plays N
  calls with :class:`~callbridge.testing.twilio_simulator.TwilioCallSimulator`, starts
  staggered over ``--stagger`` s, each ``--duration`` s of interleaved inbound/outbound
  20 ms μ-law frames paced in real time: tone-burst utterances from
  :mod:`callbridge.testing.speech` alternating between the tracks, a quarter of the turns
  cutting in on the other party (double talk), on -60 dBFS line noise.

Method (also printed with the results):

* CPU: ``utime + stime`` of the server process (all its threads, from ``/proc/PID/stat``)
  over the *steady window* — from ``--stagger`` + warm-up after the first call started, when
  all N calls are live, to just before the first call ends — divided by N × window seconds.
  ``calls/core`` is the inverse. The generator's, the fixtures' and the whole machine's CPU
  over the same window are reported too: on a small machine they compete with the server.
* Forward latency: every frame carries an 8-byte tag in its first samples (quiet μ-law codes,
  at most -48 dBFS: a magic pair, then call index, track and frame number). The generator
  records ``time.monotonic()`` just before sending each frame; the emulator records
  ``loop.time()`` (the same system-wide CLOCK_MONOTONIC) when each ``input_audio_chunk``
  arrives; the tags in the chunk's audio identify the frames it carries. ``fwd`` is the
  latency of every speech frame sent in the window (a frame ≥ -40 dBFS, by the untagged
  audio, in a voiced run ≥ 100 ms: runs cut shorter by the call's first or last frame, which
  a 60 ms VAD onset cannot catch by design, are counted apart as ``speech_cut_at_call_edges``);
  it includes the bridge's chunking (``scribe.chunk_ms``, 100 ms), VAD onset/pre-roll and the
  holding of double-talk turns. ``lag`` is, per chunk, the latency of the *newest* frame in
  it: the pipeline's own queueing and processing, without the batching wait.
* Frames lost: speech frames sent (whole run) minus distinct speech frames whose tag reached
  the emulator. Silence the bridge generates (idle fill, 0xFF) carries no tag and is counted
  apart; duplicates (e.g. replays after a reconnect) are counted apart too.
* Commit → webhook: the emulator stamps the moment it has written each committed transcript
  (the ``_with_timestamps`` one when timestamps are on: that is the one the bridge acts
  on); the receiver stamps each ``transcript.committed`` POST. The k-th non-empty commit of
  a Scribe session (mapped to its call by the tags it received) is matched with the call's
  k-th webhook in ``sequence`` order; commits sent in the steady window are reported.
* PostgreSQL (``--database postgresql://…``): ``utime + stime`` of every ``postgres``
  process of the machine over the same window (the server's own CPU, whatever else uses it
  meanwhile), and of the backends serving the bridge's connections (``application_name``
  ``callbridge-bench`` in ``pg_stat_activity``); each run gets a fresh schema.
* RSS: ``VmRSS`` of the server (summed over its process tree) sampled every 0.2 s; *idle* is
  taken before the first call; ``RSS/call`` = (peak during the calls − idle) / N; ``VmHWM`` is
  reported too.
* Rounds (``--rounds R``, R ≥ 2): the same server process (and fixtures) runs the N calls R
  times in a row, each round a fresh set of N calls (new call SIDs) of the same shape; before
  the next round the server must report 0 live calls and (bridge) every ``call.ended`` webhook
  must have arrived. Per round: peak ``VmRSS`` during the calls and ``VmRSS`` once settled
  (1 s after that); spread = (max − min) / min over the rounds (no leak: ≤ 5 %), leaving out
  the first ``--warmup-rounds W`` (the allocator's pools and the store's caches grow over the
  first rounds, then stay). Every other figure is from round 1 alone: the emulator's data are
  dumped before round 2 starts.
* Neither server compresses its Scribe websocket (``compression=None``, no permessage-deflate).
* Metrics: ``bridge`` runs with its metrics on and the generator scrapes its ``/metrics``
  every ``--scrape-interval`` s (5 s: three times Prometheus's usual rate, so the scrapes'
  cost is in the figure); ``bridge-nometrics`` runs with them off. ``metrics cost`` is bridge ÷
  bridge-nometrics CPU per call-second, both measured in the same run.

The relay (``python benchmarks/load.py _relay``) parses each Twilio JSON message and forwards
each frame's base64 payload, as is, as one ``input_audio_chunk`` (both tracks, one Scribe
websocket per call, a ``websockets`` client without compression as in the bridge), with the
bridge's JSON library (``orjson``) and event loop (``--server-env
CALLBRIDGE_SERVER_EVENT_LOOP=...`` applies to both): no VAD, no batching, no storage, no
webhooks. ``--systems receive`` runs the same server with ``--receive-only``: it parses
each message and decodes its payload, then drops it (no Scribe session at all), the floor of
this stack (aiohttp's websocket receive on the event loop) that every system pays.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from binascii import a2b_base64
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
from aiohttp import web
from cpu_cap import CpuCap, CpuCapError  # beside this script

from callbridge import event_loop
from callbridge.models import Track
from callbridge.testing.speech import build_track, pcm16_to_ulaw, synth_utterance, ulaw_to_pcm16
from callbridge.twilio.paths import MEDIA_PATH

METHOD = (__doc__ or "").split("(also printed with the results):")[-1].split("The relay")[0]
METHOD = METHOD.strip()
API_KEY = "bench-key"
AUTH_TOKEN = "bench-auth-token"
STREAM_SECRET = "bench-stream-secret-0123456789"
WEBHOOK_SECRET = "whsec_YmVuY2htYXJrLXNlY3JldC0wMTIzNDU2Nzg5YWJjZGVm"
FRAME_MS = 20
FRAME_BYTES = 160
CYCLE_S = 60  # the conversation every call plays, from its own offset
SPEECH_DBFS = -40.0
MIN_WORD_FRAMES = 5
HELD_MS = 500.0
TAG_MAGIC = (0xF5, 0x7A)
TAG_BYTES = 8  # magic (2) + 6 × 5 bits: call (10 bits), track (1), frame (19)
MAX_CALLS = 1024
TRACKS = (Track.INBOUND, Track.OUTBOUND)
SYSTEMS = ("bridge", "bridge-b", "bridge-nometrics", "relay", "receive")
CLK_TCK = os.sysconf("SC_CLK_TCK")
HERE = Path(__file__).resolve()


# --- frame tags -------------------------------------------------------------------------------


def _quiet_code(value: int) -> int:
    """0..31 → one of the 32 quietest μ-law codes (|sample| ≤ 120 of 32768)."""
    return 0xF0 + value if value < 16 else 0x70 + value - 16


def frame_tag(call: int, track: int, frame: int) -> bytes:
    value = (call << 20) | (track << 19) | frame
    data = [_quiet_code((value >> (5 * (5 - j))) & 31) for j in range(6)]
    return bytes((*TAG_MAGIC, *data))


def decode_tags(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(n, 160) uint8 frames → (tagged mask, call, track, frame) arrays."""
    head = frames[:, :TAG_BYTES].astype(np.int64)
    data = head[:, 2:]
    high = data >= 0xF0
    low = (data >= 0x70) & (data <= 0x7F)
    ok = (head[:, 0] == TAG_MAGIC[0]) & (head[:, 1] == TAG_MAGIC[1]) & np.all(high | low, axis=1)
    values = np.where(high, data - 0xF0, data - 0x70 + 16)
    value = np.zeros(len(frames), dtype=np.int64)
    for j in range(6):
        value = (value << 5) | values[:, j]
    return ok, value >> 20, (value >> 19) & 1, value & 0x7FFFF


# --- the conversation -------------------------------------------------------------------------


@dataclass
class Conversation:
    """One ``CYCLE_S`` two-party conversation, as 152-byte frame bodies (after the tag)."""

    bodies: tuple[list[bytes], list[bytes]]
    speech: np.ndarray  # (2, frames) bool: the frame is speech (≥ SPEECH_DBFS)
    utterances: int
    overlaps: int

    @property
    def frames(self) -> int:
        return len(self.bodies[0])


def build_conversation(seed: int = 7) -> Conversation:
    rng = random.Random(seed)
    cycle_ms = CYCLE_S * 1000
    placements: tuple[list[Any], list[Any]] = ([], [])
    t, speaker, utterances, overlaps = 400, 0, 0, 0
    while t < cycle_ms - 4000:
        words = rng.randint(3, 9)
        pcm = synth_utterance(
            [rng.randrange(300, 1800, 10) for _ in range(words)],
            word_ms=rng.randint(180, 260),
            gap_ms=rng.randint(60, 120),
            level_dbfs=rng.uniform(-18.0, -10.0),
        )
        placements[speaker].append((t, pcm))
        utterances += 1
        start, end = t, t + len(pcm) // 8
        draw = rng.random()
        if draw < 0.25:  # the other party cuts in before this turn ends
            t = max(start + 300, end - rng.randint(300, 900))
            speaker ^= 1
            overlaps += 1
        elif draw < 0.4:  # the same party carries on after a pause
            t = end + rng.randint(700, 1500)
        else:
            t = end + rng.randint(250, 1000)
            speaker ^= 1
    bodies: tuple[list[bytes], list[bytes]] = ([], [])
    speech = np.zeros((2, cycle_ms // FRAME_MS), dtype=bool)
    for index in (0, 1):
        ulaw = pcm16_to_ulaw(build_track(cycle_ms, placements[index], -60.0, seed + index))
        pcm = ulaw_to_pcm16(ulaw).astype(np.float64).reshape(-1, FRAME_BYTES)
        rms = np.sqrt(np.mean(pcm * pcm, axis=1))
        speech[index] = 20 * np.log10(np.maximum(rms, 1e-3) / 32768.0) >= SPEECH_DBFS
        bodies[index].extend(
            ulaw[i + TAG_BYTES : i + FRAME_BYTES] for i in range(0, len(ulaw), FRAME_BYTES)
        )
    return Conversation(bodies, speech, utterances, overlaps)


# --- /proc ------------------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a whole process (every thread), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_mem_kb(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


def tree_pids(pid: int) -> list[int]:
    """``pid`` and all its descendants (a `serve --workers N` parent and its workers)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        with contextlib.suppress(OSError), open(f"/proc/{current}/task/{current}/children") as f:
            todo.extend(int(child) for child in f.read().split())
    return out


def worker_pids(pid: int, workers: int, timeout_s: float = 20.0) -> list[int]:
    """The processes that serve calls: ``pid`` itself for one worker, else its
    ``serve --workers N`` children (multiprocessing spawn; not its resource tracker)."""
    if workers <= 1:
        return [pid]
    deadline = time.monotonic() + timeout_s
    while True:
        found = []
        for member in tree_pids(pid)[1:]:
            with contextlib.suppress(OSError), open(f"/proc/{member}/cmdline", "rb") as f:
                if b"spawn_main" in f.read():
                    found.append(member)
        if len(found) >= workers or time.monotonic() > deadline:
            return sorted(found)
        time.sleep(0.05)


def cpu_or_zero(pid: int) -> float:
    """:func:`proc_cpu_s`, or 0 for a process that has just exited."""
    try:
        return proc_cpu_s(pid)
    except OSError:
        return 0.0


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its descendants (workers exit only at the end)."""
    return sum(cpu_or_zero(member) for member in tree_pids(pid))


def tree_mem_kb(pid: int) -> dict[str, int]:
    """VmRSS/VmHWM summed over a process tree (shared pages count once per process)."""
    out: dict[str, int] = {}
    for member in tree_pids(pid):
        try:
            for key, value in proc_mem_kb(member).items():
                out[key] = out.get(key, 0) + value
        except OSError:
            pass
    return out


def postgres_pids() -> list[int]:
    """Every process of the local PostgreSQL server (postmaster, backends, background)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
    return pids


class PostgresCpu:
    """PostgreSQL's own CPU over a window, from ``/proc``: the whole local server, and the
    backends serving the benchmark's connections (``application_name``, from
    ``pg_stat_activity``; pooled, so they live through the window). The server figure also
    counts anything else using this PostgreSQL meanwhile."""

    def __init__(self, admin_url: str, application_name: str) -> None:
        self.admin_url = admin_url
        self.application_name = application_name

    async def backend_pids(self) -> list[int]:
        import asyncpg

        conn = await asyncpg.connect(self.admin_url, timeout=5)
        try:
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
                self.application_name,
            )
        finally:
            await conn.close()
        return [row["pid"] for row in rows]

    async def sample(self) -> tuple[dict[int, float], dict[int, float]]:
        """(CPU seconds per server process, CPU seconds per benchmark backend)."""
        backends = await self.backend_pids()
        server = {pid: cpu_or_zero(pid) for pid in postgres_pids()}
        return server, {pid: cpu_or_zero(pid) for pid in backends}

    @staticmethod
    def delta(
        before: tuple[dict[int, float], dict[int, float]],
        after: tuple[dict[int, float], dict[int, float]],
    ) -> tuple[float, float, int]:
        """(server CPU s, benchmark backends' CPU s, backends) between two samples.

        Per process: a backend that ended during the window (another client's connection)
        takes its whole CPU with it, so sums of the two samples could even go negative; one
        that started counts from zero."""
        server = _grew(before[0], after[0])
        return server, _grew(before[1], after[1]), len(after[1])


def _grew(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds the processes alive at the end used since the first sample (or their start)."""
    return sum(max(0.0, cpu - before.get(pid, 0.0)) for pid, cpu in after.items())


def trees_mem_kb(pids: Sequence[int]) -> dict[str, int]:
    """:func:`tree_mem_kb` summed over several servers."""
    out: dict[str, int] = {}
    for pid in pids:
        for key, value in tree_mem_kb(pid).items():
            out[key] = out.get(key, 0) + value
    return out


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return float(total - idle), float(total)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def percentiles(samples: Any, *qs: float) -> dict[str, float | None]:
    array = np.asarray(samples, dtype=np.float64)
    if array.size == 0:
        return {f"p{q:g}": None for q in qs} | {"max": None, "n": 0}
    out: dict[str, float | None] = {f"p{q:g}": round(float(np.percentile(array, q)), 3) for q in qs}
    return out | {"max": round(float(array.max()), 3), "n": int(array.size)}


# --- the fixtures process: Scribe emulator + webhook receiver ----------------------------------


async def _fixtures(args: argparse.Namespace) -> None:
    from callbridge.testing import scribe_emulator

    commit_times: dict[str, list[tuple[str, float]]] = defaultdict(list)

    class TimedList(list[dict[str, Any]]):
        """``messages_sent``: appended right after a message was written to the socket."""

        def __init__(self, session_id: str) -> None:
            super().__init__()
            self.session_id = session_id

        def append(self, message: dict[str, Any]) -> None:
            kind = message.get("message_type", "")
            if kind.startswith("committed_transcript"):
                commit_times[self.session_id].append((kind, time.monotonic()))
            super().append(message)

    class TimedRunner(scribe_emulator._SessionRunner):
        def __init__(self, emulator: Any, connection: Any, session: Any, fault: Any) -> None:
            super().__init__(emulator, connection, session, fault)
            session.messages_sent = TimedList(session.session_id)

    scribe_emulator._SessionRunner = TimedRunner  # type: ignore[misc]
    emulator = scribe_emulator.ScribeEmulator(
        api_key=API_KEY, transcriber="duration", partial_interval_ms=args.partials_ms
    )
    await emulator.start()
    hooks: list[tuple[float, bytes]] = []
    ended = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal ended
        body = await request.read()
        hooks.append((time.monotonic(), body))
        if body.startswith(b'{"type":"call.ended"'):
            ended += 1
        return web.Response(status=200)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(
            {"hooks": len(hooks), "call_ended": ended, "sessions": len(emulator.sessions)}
        )

    async def dump(request: web.Request) -> web.Response:
        path = Path((await request.json())["path"])
        _dump(emulator.sessions, commit_times, hooks, path)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hooks", hook)
    app.router.add_get("/stats", stats)
    app.router.add_post("/dump", dump)
    port = free_port()
    endpoints = {"scribe_url": emulator.url, "http": f"http://127.0.0.1:{port}"}
    await _serve_until_signal(app, port, announce=json.dumps(endpoints))
    await emulator.stop()


async def _serve_until_signal(app: web.Application, port: int, announce: str = "") -> None:
    """Serve ``app`` on 127.0.0.1:``port`` until SIGTERM or SIGINT; print ``announce`` once
    it is listening."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    if announce:
        print(announce, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


def _dump(
    sessions: Sequence[Any],
    commit_times: dict[str, list[tuple[str, float]]],
    hooks: list[tuple[float, bytes]],
    path: Path,
) -> None:
    """Decode the tags of every received frame (after the run, not while measuring)."""
    audio: list[bytes] = []
    chunk_times: list[float] = []
    chunk_frames: list[int] = []
    chunk_session: list[int] = []
    meta_sessions = []
    for index, session in enumerate(sessions):
        for chunk in session.chunks:
            if chunk.audio:
                audio.append(chunk.audio)
                chunk_times.append(chunk.received_at)
                chunk_frames.append(len(chunk.audio) // FRAME_BYTES)
                chunk_session.append(index)
        timestamps = session.query.get("include_timestamps", ["false"])[0] == "true"
        wanted = "committed_transcript_with_timestamps" if timestamps else "committed_transcript"
        meta_sessions.append(
            {
                "texts": list(session.committed),
                "commit_times": [
                    t for kind, t in commit_times[session.session_id] if kind == wanted
                ],
                "audio_bytes": session.audio_bytes,
                "closed_code": session.closed_code,
            }
        )
    raw = b"".join(audio)
    frames = np.frombuffer(raw[: len(raw) - len(raw) % FRAME_BYTES], dtype=np.uint8)
    frames = frames.reshape(-1, FRAME_BYTES)
    counts = np.asarray(chunk_frames, dtype=np.int64)
    chunk_ids = np.repeat(np.arange(len(counts)), counts)[: len(frames)]
    tagged, call, track, frame = decode_tags(frames)
    np.savez(
        path.with_suffix(".npz"),
        recv=np.repeat(np.asarray(chunk_times), counts)[: len(frames)][tagged],
        chunk=chunk_ids[tagged],
        session=np.repeat(np.asarray(chunk_session, dtype=np.int64), counts)[: len(frames)][tagged],
        call=call[tagged],
        track=track[tagged],
        frame=frame[tagged],
    )
    hook_rows = []
    for at, body in hooks:
        with contextlib.suppress(ValueError):
            event = json.loads(body)
            data = event.get("data", {})
            hook_rows.append([at, event.get("type"), data.get("call_sid"), data.get("sequence")])
    path.with_suffix(".json").write_text(
        json.dumps(
            {
                "sessions": meta_sessions,
                "hooks": hook_rows,
                "untagged_frames": int(len(frames) - tagged.sum()),
                "chunks": len(counts),
            }
        )
    )


# --- the baseline: a minimal pass-through relay -----------------------------------------------


async def _relay(args: argparse.Namespace) -> None:
    from websockets.asyncio.client import connect

    live = 0
    scribe_url = f"{args.scribe_url}?model_id=scribe_v2_realtime&audio_format=ulaw_8000"

    async def drain(upstream: Any) -> None:
        with contextlib.suppress(Exception):
            async for _ in upstream:
                pass

    async def media(request: web.Request) -> web.StreamResponse:
        nonlocal live
        ws = web.WebSocketResponse(max_msg_size=64 * 1024)
        await ws.prepare(request)
        upstream = None
        reader = None
        live += 1
        try:
            async for message in ws:
                if message.type is not aiohttp.WSMsgType.TEXT:
                    break
                event = orjson.loads(message.data)
                kind = event.get("event")
                if kind == "media":
                    if args.receive_only:
                        a2b_base64(event["media"]["payload"])  # decoded, then dropped
                    elif upstream is not None:
                        chunk = {
                            "message_type": "input_audio_chunk",
                            "audio_base_64": event["media"]["payload"],
                            "commit": False,
                            "sample_rate": 8000,
                        }
                        await upstream.send(orjson.dumps(chunk).decode())
                elif kind == "start" and not args.receive_only:
                    upstream = await connect(
                        scribe_url, additional_headers={"xi-api-key": API_KEY}, compression=None
                    )
                    reader = asyncio.create_task(drain(upstream))
                elif kind == "stop":
                    break
        finally:
            live -= 1
            if upstream is not None:
                await upstream.close()
            if reader is not None:
                await reader
        return ws

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "live_calls": live})

    app = web.Application()
    app.router.add_get(MEDIA_PATH, media)
    app.router.add_get("/healthz", healthz)
    await _serve_until_signal(app, args.port)


# --- one measured phase -----------------------------------------------------------------------


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CALLBRIDGE_", "TWILIO_"))}
    for name in ("ELEVENLABS_API_KEY", "DATABASE_URL", "HOST", "PORT"):
        env.pop(name, None)
    env.update(extra)
    return env


def _py_spy() -> str:
    """py-spy from this interpreter's environment, else from PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else "py-spy"


def spawn(command: list[str], *, log: Path | None = None, **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a helper process (stdout to ``log`` when given)."""
    if log is None:
        return subprocess.Popen(command, **kwargs)
    with open(log, "wb") as log_file:
        return subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, **kwargs)


def pin(pid: int, cpus: set[int] | None) -> None:
    if cpus:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, cpus)


@dataclass
class Phase:
    system: str
    calls: int
    args: argparse.Namespace
    conversation: Conversation
    workdir: Path
    send_times: np.ndarray = field(init=False)
    started_at: np.ndarray = field(init=False)
    failures: list[str] = field(default_factory=list)
    call_sids: dict[int, str] = field(default_factory=dict)
    closed_early: int = 0
    worker_pids: list[int] = field(default_factory=list)
    cpu_cap: CpuCap | None = None
    schema: str | None = None  # --database postgresql://: this run's schema
    scrapes: int = 0  # /metrics scrapes made during the run (bridge with metrics on)

    def __post_init__(self) -> None:
        frames = int(self.args.duration * 1000) // FRAME_MS
        self.send_times = np.full((self.calls, 2, frames), np.nan)
        self.started_at = np.full(self.calls, np.nan)

    @property
    def frames(self) -> int:
        return self.send_times.shape[2]

    def offset(self, call: int) -> int:
        return (call * 1237 + 311) % self.conversation.frames


async def _start_fixtures(
    args: argparse.Namespace,
) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    proc = spawn(
        [sys.executable, str(HERE), "_fixtures", "--partials-ms", str(args.partials_ms)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=base_env(),
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
    if not line:
        raise RuntimeError("the fixtures process did not start")
    return proc, json.loads(line)


async def _wait_healthy(
    http: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes]
) -> None:
    for _ in range(400):
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before it was healthy")
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with http.get(f"{url}/healthz") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise RuntimeError("the server did not become healthy")


async def _live_calls(http: aiohttp.ClientSession, url: str) -> int | None:
    with contextlib.suppress(aiohttp.ClientError, OSError, ValueError, asyncio.TimeoutError):
        async with http.get(f"{url}/healthz", timeout=aiohttp.ClientTimeout(total=5)) as response:
            return int((await response.json())["live_calls"])
    return None


BENCH_APPLICATION = "callbridge-bench"


@contextlib.asynccontextmanager
async def bridge_database(phase: Phase) -> AsyncIterator[tuple[str, PostgresCpu | None]]:
    """The bridge's ``DATABASE_URL`` for one phase: a fresh SQLite file, or with
    ``--database postgresql://…`` a fresh schema (``phase.schema``, dropped after) and
    PostgreSQL's CPU meter."""
    url = phase.args.database
    if not url.startswith(("postgresql://", "postgres://")):
        yield f"sqlite:///{phase.workdir / f'bridge-{phase.calls}.db'}", None
        return
    import asyncpg

    schema = phase.schema = f"cb_bench_{os.urandom(6).hex()}"
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    glue = "&" if "?" in url else "?"
    try:
        yield (
            f"{url}{glue}search_path={schema}&application_name={BENCH_APPLICATION}",
            PostgresCpu(url, BENCH_APPLICATION),
        )
    finally:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await conn.close()


async def run_phase(phase: Phase) -> dict[str, Any]:
    async with bridge_database(phase) as (database_url, postgres):
        result = await _run_phase(phase, database_url, postgres)
    result["postgres_schema"] = phase.schema
    return result


async def _run_phase(
    phase: Phase, database_url: str, postgres: PostgresCpu | None
) -> dict[str, Any]:
    args = phase.args
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus = {cpus[-1]} if args.pin and len(cpus) > 1 else None
    other_cpus = set(cpus[:-1]) if server_cpus else None
    fixtures, endpoints = await _start_fixtures(args)
    pin(fixtures.pid, other_cpus)
    pin(os.getpid(), other_cpus)
    # Separate `serve` processes (bridge only), each its own port and directory, one database.
    instances = args.instances if is_bridge(phase.system) else 1
    ports = [free_port() for _ in range(instances)]
    bases = [f"http://127.0.0.1:{port}" for port in ports]
    servers: list[subprocess.Popen[bytes]] = []
    log_paths = []
    for index, port in enumerate(ports):
        suffix = f"-{index}" if instances > 1 else ""
        log_paths.append(phase.workdir / f"{phase.system}-{phase.calls}{suffix}.log")
        cwd = phase.workdir / f"instance-{index}" if instances > 1 else phase.workdir
        cwd.mkdir(parents=True, exist_ok=True)
        if is_bridge(phase.system):
            env = base_env(
                ELEVENLABS_API_KEY=API_KEY,
                CALLBRIDGE_SCRIBE_URL=endpoints["scribe_url"],
                TWILIO_AUTH_TOKEN=AUTH_TOKEN,
                CALLBRIDGE_STREAM_SECRET=STREAM_SECRET,
                CALLBRIDGE_MAX_CALLS=str(phase.calls),  # any one process may take every call
                CALLBRIDGE_PUBLIC_URL=bases[index],
                CALLBRIDGE_API_TOKENS="bench-api-token",
                PORT=str(port),
                HOST="127.0.0.1",
                DATABASE_URL=database_url,
                CALLBRIDGE_WEBHOOK_URLS=endpoints["http"] + "/hooks",
                CALLBRIDGE_WEBHOOK_SECRET=WEBHOOK_SECRET,
                CALLBRIDGE_LOGGING_LEVEL="warning",
                CALLBRIDGE_LOGGING_FORMAT="console",
            )
            if phase.system == "bridge-nometrics":
                env["CALLBRIDGE_METRICS_ENABLED"] = "false"
            extra = args.server_env + (args.b_env if phase.system == "bridge-b" else [])
            for item in extra:
                key, _, value = item.partition("=")
                env[key] = value
            command = [sys.executable, "-m", "callbridge", "serve", "--workers", str(args.workers)]
        else:
            env = base_env()
            command = [sys.executable, str(HERE), "_relay", "--port", str(port)]
            command += ["--scribe-url", endpoints["scribe_url"]]
            if phase.system == "receive":
                command.append("--receive-only")
            # The same event loop as the bridge, so that the ratio compares like with like.
            loops = [v for k, _, v in (e.partition("=") for e in args.server_env)
                     if k == "CALLBRIDGE_SERVER_EVENT_LOOP"]  # fmt: skip
            command += ["--event-loop", loops[-1] if loops else "auto"]
        server = spawn(command, log=log_paths[-1], env=env, cwd=cwd)
        pin(server.pid, server_cpus)
        servers.append(server)
    pids = [server.pid for server in servers]
    profiler: subprocess.Popen[bytes] | None = None
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            for base, server in zip(bases, servers, strict=True):
                await _wait_healthy(http, base, server)
            workers = args.workers if is_bridge(phase.system) else 1
            for pid in pids:
                phase.worker_pids += await asyncio.to_thread(worker_pids, pid, workers)
            if args.worker_cpu:
                phase.cpu_cap = CpuCap(args.worker_cpu)
                for pid in phase.worker_pids:
                    phase.cpu_cap.apply(pid)
            await asyncio.sleep(1.0)
            idle = trees_mem_kb(pids)
            scraper = None
            if phase.system in ("bridge", "bridge-b"):
                scraper = asyncio.create_task(_scrape_metrics(http, bases, phase))
            try:
                result, profiler = await _generate(
                    phase, http, bases, pids, fixtures.pid, idle, postgres=postgres
                )
            finally:
                if scraper is not None:
                    scraper.cancel()
                    await asyncio.gather(scraper, return_exceptions=True)
            result["metrics_scrapes"] = phase.scrapes
            ended = phase.calls - len(phase.failures)
            await _settle(phase, http, bases, endpoints["http"], ended)
            result["rss"]["hwm_kb"] = trees_mem_kb(pids).get("VmHWM")
            # Dump now: later rounds add sessions and webhooks the analysis must not see.
            dump = phase.workdir / f"{phase.system}-{phase.calls}"
            async with http.post(endpoints["http"] + "/dump", json={"path": str(dump)}) as response:
                response.raise_for_status()
            if args.rounds > 1:
                n = phase.calls
                rounds = [await _round_rss(1, result, pids, phase)]
                for number in range(2, args.rounds + 1):
                    # a fresh set of calls: new SIDs, its own send times and failures
                    again = Phase(phase.system, n, args, phase.conversation, phase.workdir)
                    measured, _ = await _generate(
                        again, http, bases, pids, fixtures.pid, idle, profile=False
                    )
                    ended += again.calls - len(again.failures)
                    await _settle(again, http, bases, endpoints["http"], ended)
                    rounds.append(await _round_rss(number, measured, pids, again))
                result["rounds"] = rounds
                measured_rounds = rounds[args.warmup_rounds :]
                result["rss_flatness"] = {
                    "warmup_rounds": args.warmup_rounds,
                    "peak_spread_pct": spread_pct([r["peak_rss_kb"] for r in measured_rounds]),
                    "settled_spread_pct": spread_pct(
                        [r["settled_rss_kb"] for r in measured_rounds]
                    ),
                }
    finally:
        if profiler is not None:
            await asyncio.to_thread(_wait, profiler, 60)
        for server in servers:
            server.send_signal(signal.SIGTERM)
        exit_codes = [await asyncio.to_thread(_wait, server, 30) for server in servers]
        if phase.cpu_cap is not None:
            phase.cpu_cap.remove()
        fixtures.send_signal(signal.SIGTERM)
        await asyncio.to_thread(_wait, fixtures, 10)
        pin(os.getpid(), set(cpus))
    exit_code = next((code for code in exit_codes if code != 0), 0)
    result["server_exit_code"] = exit_code
    result["instances"] = instances
    for code, log_path in zip(exit_codes, log_paths, strict=True):
        if code != 0:
            tail = log_path.read_text(errors="replace")[-2000:]
            print(f"  {phase.system} exited with {code}; log tail:\n{tail}", file=sys.stderr)
    np.save(phase.workdir / f"{phase.system}-{phase.calls}-sent.npy", phase.send_times)
    _analyse(phase, dump, result)
    return result


def is_bridge(system: str) -> bool:
    return system in ("bridge", "bridge-b", "bridge-nometrics")


async def _scrape_metrics(http: aiohttp.ClientSession, bases: Sequence[str], phase: Phase) -> None:
    """Scrape every server's /metrics every ``--scrape-interval`` s, as Prometheus would."""
    headers = {"Authorization": "Bearer bench-api-token"}
    while True:
        await asyncio.sleep(phase.args.scrape_interval)
        for base in bases:
            async with http.get(base + "/metrics", headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"/metrics answered {response.status}")
            phase.scrapes += 1


async def _settle(
    phase: Phase,
    http: aiohttp.ClientSession,
    bases: Sequence[str],
    fixtures_url: str,
    ended: int,
) -> None:
    """Let the servers finish every call and (bridge) deliver ``ended`` call.ended webhooks."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        live = [await _live_calls(http, base) for base in bases]
        if all(count == 0 for count in live):
            break
        await asyncio.sleep(0.2)
    if is_bridge(phase.system):
        while time.monotonic() < deadline:
            async with http.get(fixtures_url + "/stats") as response:
                if (await response.json())["call_ended"] >= ended:
                    break
            await asyncio.sleep(0.2)


async def _round_rss(
    number: int, measured: dict[str, Any], server_pids: Sequence[int], phase: Phase
) -> dict[str, Any]:
    """One round's RSS: its peak, and VmRSS 1 s after the round settled."""
    await asyncio.sleep(1.0)
    return {
        "round": number,
        "peak_rss_kb": measured["rss"]["peak_kb"],
        "settled_rss_kb": trees_mem_kb(server_pids).get("VmRSS", 0),
        "per_call_kb": measured["rss"]["per_call_kb"],
        "cpu_s_per_call_s": measured["cpu_s_per_call_s"],
        "failed_calls": len(phase.failures),
    }


def spread_pct(values: Sequence[float]) -> float | None:
    """(max - min) / min, in percent."""
    low = min(values, default=0)
    return round(100 * (max(values) - low) / low, 2) if low > 0 else None


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


async def _generate(
    phase: Phase,
    http: aiohttp.ClientSession,
    bases: Sequence[str],
    server_pids: Sequence[int],
    fixtures_pid: int,
    idle: dict[str, int],
    *,
    profile: bool = True,
    postgres: PostgresCpu | None = None,
) -> tuple[dict[str, Any], subprocess.Popen[bytes] | None]:
    """Play the phase's calls, call i on server ``i % len(bases)``; measure the window."""
    from callbridge.testing.twilio_simulator import TwilioCallSimulator

    args = phase.args
    loop = asyncio.get_running_loop()
    n = phase.calls
    stagger = args.stagger
    warmup = min(1.0, args.duration * 0.1)
    t_base = loop.time() + 0.3
    window = (t_base + stagger + warmup, t_base + args.duration - 0.2)
    ws_urls = [base.replace("http://", "ws://") + MEDIA_PATH for base in bases]
    bodies = phase.conversation.bodies
    cycle = phase.conversation.frames
    rss_peak = 0
    calls_done = asyncio.Event()

    async def one_call(i: int) -> None:
        await asyncio.sleep(max(0.0, t_base + stagger * i / n - loop.time()))
        server = i % len(bases)
        sim = TwilioCallSimulator(
            ws_urls[server],
            auth_token=AUTH_TOKEN,
            public_url=bases[server],
            session=http,
            record_audio=False,
            stream_secret=STREAM_SECRET,
        )
        phase.call_sids[i] = sim.call_sid
        try:
            await sim.connect()
            await sim.send_start(("inbound", "outbound"))
        except Exception as exc:
            phase.failures.append(f"call {i}: {type(exc).__name__}: {exc}")
            await sim.close()
            return
        times = phase.send_times[i]
        offset = phase.offset(i)
        t0 = loop.time()
        phase.started_at[i] = t0
        try:
            for k in range(phase.frames):
                delay = t0 + k * 0.02 - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                j = (k + offset) % cycle
                for track in (0, 1):
                    payload = frame_tag(i, track, k) + bodies[track][j]
                    times[track, k] = time.monotonic()
                    if not await sim.send_media(TRACKS[track], payload, k * FRAME_MS):
                        times[track, k] = np.nan
                        phase.closed_early += 1
                        return
            await sim.send_stop()
        finally:
            await sim.close()

    async def sample_rss() -> None:
        nonlocal rss_peak
        while not calls_done.is_set():
            with contextlib.suppress(OSError):
                rss_peak = max(rss_peak, trees_mem_kb(server_pids).get("VmRSS", 0))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(calls_done.wait(), 0.2)

    profiler: subprocess.Popen[bytes] | None = None

    async def sample_window() -> dict[str, Any]:
        nonlocal profiler
        await asyncio.sleep(max(0.0, window[0] - loop.time()))
        if args.py_spy and is_bridge(phase.system) and profile:
            out = f"{args.py_spy}-{n}.txt"
            profiler = spawn(
                [_py_spy(), "record", "--pid", str(server_pids[0]), "--duration",
                 str(max(1, int(window[1] - window[0]))), "--rate", "100", "--nonblocking",
                 "--format", "raw", "--output", out],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        pg_before = await postgres.sample() if postgres is not None else None
        before = (
            time.monotonic(), sum(map(tree_cpu_s, server_pids)), proc_cpu_s(os.getpid()),
            proc_cpu_s(fixtures_pid), machine_cpu(),
        )  # fmt: skip
        workers_before = [cpu_or_zero(pid) for pid in phase.worker_pids]
        throttled_before = phase.cpu_cap.throttled() if phase.cpu_cap else {}
        await asyncio.sleep(max(0.0, (window[0] + window[1]) / 2 - loop.time()))
        live_each = [await _live_calls(http, base) for base in bases]
        live_mid = None if None in live_each else sum(n or 0 for n in live_each)
        await asyncio.sleep(max(0.0, window[1] - loop.time()))
        after = (
            time.monotonic(), sum(map(tree_cpu_s, server_pids)), proc_cpu_s(os.getpid()),
            proc_cpu_s(fixtures_pid), machine_cpu(),
        )  # fmt: skip
        pg_after = await postgres.sample() if postgres is not None else None
        workers_after = [cpu_or_zero(pid) for pid in phase.worker_pids]
        throttled_after = phase.cpu_cap.throttled() if phase.cpu_cap else {}
        seconds = after[0] - before[0]
        server_cpu = after[1] - before[1]
        busy = (after[4][0] - before[4][0]) / max(1.0, after[4][1] - before[4][1])
        cap: dict[str, Any] | None = None
        if phase.cpu_cap is not None:
            cap = {
                "cores_per_worker": phase.cpu_cap.cores,
                "period_ms": phase.cpu_cap.period_us / 1000,
                "throttled_percent": [],
                "throttled_periods_percent": [],
            }
            for pid in phase.worker_pids:
                grew = {k: throttled_after[pid][k] - throttled_before[pid][k]
                        for k in throttled_after[pid]}  # fmt: skip
                cap["throttled_percent"].append(round(100 * grew["throttled_s"] / seconds, 1))
                cap["throttled_periods_percent"].append(
                    round(100 * grew["throttled_periods"] / max(1.0, grew["periods"]), 1)
                )
        pg: dict[str, Any] | None = None
        if pg_before is not None and pg_after is not None:
            pg_server, pg_backends, backends = PostgresCpu.delta(pg_before, pg_after)
            pg = {
                "server_percent": round(100 * pg_server / seconds, 1),
                "backends_percent": round(100 * pg_backends / seconds, 1),
                "backends": backends,
                "server_ms_per_call_s": round(1000 * pg_server / (n * seconds), 4),
            }
        return {
            "postgres_cpu": pg,
            "live_calls_per_server_mid_window": live_each,
            "cpu_cap": cap,
            "worker_cpu_percent": [
                round(100 * (a - b) / seconds, 1)
                for a, b in zip(workers_after, workers_before, strict=True)
            ],
            "window": (before[0], after[0]),
            "window_s": round(seconds, 3),
            "server_cpu_s": round(server_cpu, 3),
            "live_calls_mid_window": live_mid,
            "cpu_percent": {
                "server": round(100 * server_cpu / seconds, 1),
                "generator": round(100 * (after[2] - before[2]) / seconds, 1),
                "fixtures": round(100 * (after[3] - before[3]) / seconds, 1),
                "machine": round(100 * busy * os.cpu_count(), 1),  # type: ignore[operator]
            },
        }

    rss_task = asyncio.create_task(sample_rss())
    window_task = asyncio.create_task(sample_window())
    await asyncio.gather(*(one_call(i) for i in range(n)))
    calls_done.set()
    await rss_task
    measured = await window_task
    seconds, server_cpu = measured["window_s"], measured["server_cpu_s"]
    per_call_s = server_cpu / (n * seconds) if seconds > 0 else float("nan")
    idle_rss = idle.get("VmRSS", 0)
    result = {
        "calls": n,
        "duration_s": args.duration,
        **measured,
        "cpu_s_per_call_s": round(per_call_s, 6),
        "calls_per_core": round(1 / per_call_s, 1) if per_call_s > 0 else None,
        "rss": {
            "idle_kb": idle_rss,
            "peak_kb": rss_peak,
            "per_call_kb": round((rss_peak - idle_rss) / n, 1),
        },
    }
    return result, profiler


def whole_words(voiced: np.ndarray) -> np.ndarray:
    """Keep runs of voiced frames at least ``MIN_WORD_FRAMES`` long (along the last axis).

    Every synthetic word is ≥ 180 ms; a shorter run is a word cut by the call's first or last
    frame, which no VAD with a 60 ms onset is meant to catch.
    """
    keep = np.zeros_like(voiced)
    for index in np.ndindex(voiced.shape[:-1]):
        line = voiced[index].astype(np.int8)
        edges = np.flatnonzero(np.diff(np.concatenate(([0], line, [0]))))
        for start, end in zip(edges[::2], edges[1::2], strict=True):
            if end - start >= MIN_WORD_FRAMES:
                keep[index][start:end] = True
    return keep


def _analyse(phase: Phase, dump: Path, result: dict[str, Any]) -> None:
    data = np.load(dump.with_suffix(".npz"))
    meta = json.loads(dump.with_suffix(".json").read_text())
    send = phase.send_times
    n = phase.calls
    w0, w1 = result.pop("window")
    recv, call, track, frame, chunk = (data[k] for k in ("recv", "call", "track", "frame", "chunk"))
    valid = (call < n) & (frame < phase.frames)
    recv, call, track, frame, chunk = (a[valid] for a in (recv, call, track, frame, chunk))
    # speech[i, t, k]: frame k of call i's track t is speech
    offsets = np.array([phase.offset(i) for i in range(n)])
    ks = np.arange(phase.frames)
    cycle_index = (ks[None, :] + offsets[:, None]) % phase.conversation.frames
    voiced = np.stack([phase.conversation.speech[t][cycle_index] for t in (0, 1)], axis=1)
    speech = whole_words(voiced)
    sent = ~np.isnan(send)
    key = (call * 2 + track) * phase.frames + frame
    unique_keys, first = np.unique(key, return_index=True)
    received = np.zeros(send.size, dtype=bool)
    received[unique_keys] = True
    received = received.reshape(send.shape)
    speech_sent = int((speech & sent).sum())
    speech_received = int((speech & sent & received).sum())
    latency = (recv - send[call, track, frame]) * 1000.0
    in_window = (send[call, track, frame] >= w0) & (send[call, track, frame] <= w1)
    firsts = np.zeros(len(key), dtype=bool)
    firsts[first] = True
    speech_rows = speech[call, track, frame] & firsts & in_window
    fwd = latency[speech_rows]
    # per chunk: the newest frame it carries
    lag = []
    if len(chunk):
        order = np.argsort(chunk, kind="stable")
        sends = send[call, track, frame][order]
        chunks_sorted = chunk[order]
        bounds = np.flatnonzero(np.diff(chunks_sorted)) + 1
        starts = np.concatenate(([0], bounds))
        newest = np.maximum.reduceat(np.nan_to_num(sends, nan=-np.inf), starts)
        chunk_recv = recv[order][starts]
        keep = (newest >= w0) & (newest <= w1)
        lag = ((chunk_recv - newest) * 1000.0)[keep]
    scheduled = phase.started_at[:, None] + ks[None, :] * 0.02
    pacing = (send[:, 0, :] - scheduled) * 1000.0
    pacing = pacing[~np.isnan(pacing) & (send[:, 0, :] >= w0) & (send[:, 0, :] <= w1)]
    result["fwd_latency_ms"] = percentiles(fwd, 50, 99)
    result["held_over_500ms_fraction"] = (
        round(float((fwd > HELD_MS).mean()), 4) if fwd.size else None
    )
    result["fwd_latency_live_ms"] = percentiles(fwd[fwd <= HELD_MS], 50, 99)
    result["chunk_lag_ms"] = percentiles(lag, 50, 99)
    result["chunk_lag_live_ms"] = percentiles(np.asarray(lag)[np.asarray(lag) <= HELD_MS], 50, 99)
    result["generator_lag_ms"] = percentiles(pacing, 50, 99)
    result["frames"] = {
        "sent": int(sent.sum()),
        "speech_cut_at_call_edges": int((voiced & ~speech & sent).sum()),
        "speech_sent": speech_sent,
        "speech_received": speech_received,
        "speech_lost": speech_sent - speech_received,
        "tagged_received": len(key),
        "duplicates": int(len(key) - len(unique_keys)),
        "untagged_fill": meta["untagged_frames"],
        "scribe_chunks": meta["chunks"],
    }
    cpu = result["cpu_percent"]
    workers = phase.args.workers if is_bridge(phase.system) else 1
    result["workers"] = workers
    per_worker_core = (result.get("cpu_cap") or {}).get("cores_per_worker", 1.0)
    result["saturated"] = bool(
        cpu["server"] >= 90 * workers * per_worker_core
        or cpu["machine"] >= 95 * (os.cpu_count() or 1)
        or (result["generator_lag_ms"]["p99"] or 0) > 20
    )
    result["scribe_sessions"] = len(meta["sessions"])
    result["failed_calls"] = len(phase.failures)
    result["failures"] = phase.failures[:5]
    result["closed_early"] = phase.closed_early
    if not is_bridge(phase.system):
        result["commit_to_webhook_ms"] = None
        return
    # commit → webhook, matched per call in order
    session_call = {}
    for index in np.unique(data["session"]):
        calls_seen = data["call"][data["session"] == index]
        session_call[int(index)] = int(Counter(calls_seen.tolist()).most_common(1)[0][0])
    hooks: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for at, kind, call_sid, sequence in meta["hooks"]:
        if kind == "transcript.committed":
            hooks[call_sid].append((sequence, at))
    samples, unmatched, commits = [], 0, 0
    for index, info in enumerate(meta["sessions"]):
        i = session_call.get(index)
        if i is None:
            continue
        sid = phase.call_sids.get(i)
        times = [t for text, t in zip(info["texts"], info["commit_times"], strict=False) if text]
        posts = [at for _, at in sorted(hooks.get(sid, []))]
        commits += len(times)
        unmatched += abs(len(times) - len(posts))
        for committed_at, posted_at in zip(times, posts, strict=False):
            if w0 <= committed_at <= w1:
                samples.append((posted_at - committed_at) * 1000.0)
    result["commit_to_webhook_ms"] = percentiles(samples, 50, 99) | {
        "commits": commits,
        "unmatched": unmatched,
    }
    result["webhooks"] = len(meta["hooks"])


# --- output -----------------------------------------------------------------------------------

COLUMNS = (
    ("calls", 5), ("system", 16), ("CPU ms/call-s", 13), ("calls/core", 10), ("fwd p50", 8),
    ("fwd p99", 8), ("held%", 5), ("lag p50", 8), ("lag p99", 8), ("lost/speech", 13),
    ("hook p50", 8), ("hook p99", 8), ("peak RSS MB", 11), ("RSS/call KB", 11), ("srv%", 5),
    ("gen%", 5), ("fix%", 5), ("busy%", 6), ("pg%", 5),
)  # fmt: skip

LEGEND = """\
CPU ms/call-s  server CPU (utime+stime, all threads) per call-second, steady window
calls/core     1 / that: calls one fully used core would carry at this per-call cost
fwd p50/p99    ms from the generator sending a speech frame to the emulator receiving the chunk
               holding it (bridge: includes 100 ms chunking, VAD onset/pre-roll, double-talk holds)
held%          share of those speech frames that arrived > 500 ms late (double-talk holds)
lag p50/p99    ms from sending the newest frame of each chunk to its arrival (no batching wait)
lost/speech    speech frames never received / speech frames sent (whole run)
hook p50/p99   ms from the emulator writing a committed transcript to the transcript.committed POST
peak RSS MB    server VmRSS peak during the calls; RSS/call KB = (peak - idle) / calls
rss over R     --rounds R ≥ 2: the same server runs the N calls R times; VmRSS peak per round and
               settled after it, spread = (max - min) / min (the table is round 1 alone)
srv/gen/fix%   CPU of the server(s) / load generator / fixtures (emulator + receiver) processes,
               busy% the whole machine (100% = one core), all over the steady window
pg%            --database postgresql://: the local PostgreSQL server's processes, same window
!              saturated: server ≥ 90% of a core, machine ≥ 95% busy or generator late > 20 ms"""


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def row(result: dict[str, Any], system: str) -> list[str]:
    fwd, lag = result["fwd_latency_ms"], result["chunk_lag_ms"]
    hook = result.get("commit_to_webhook_ms") or {}
    frames, cpu, rss = result["frames"], result["cpu_percent"], result["rss"]
    pg = result.get("postgres_cpu")
    return [
        str(result["calls"]), system + ("!" if result.get("saturated") else ""),
        f"{result['cpu_s_per_call_s'] * 1000:.2f}",
        f"{result['calls_per_core'] or 0:.0f}", _ms(fwd["p50"]), _ms(fwd["p99"]),
        f"{100 * (result['held_over_500ms_fraction'] or 0):.1f}", _ms(lag["p50"]),
        _ms(lag["p99"]),
        "-" if system == "receive" else f"{frames['speech_lost']}/{frames['speech_sent']}",
        _ms(hook.get("p50")),
        _ms(hook.get("p99")), f"{rss['peak_kb'] / 1024:.1f}", f"{rss['per_call_kb']:.0f}",
        f"{cpu['server']:.0f}", f"{cpu['generator']:.0f}", f"{cpu['fixtures']:.0f}",
        f"{cpu['machine']:.0f}",
        "-" if not pg else f"{pg['server_percent']:.0f}",
    ]  # fmt: skip


def format_table(results: list[dict[str, Any]]) -> str:
    lines = ["  ".join(name.rjust(width) for name, width in COLUMNS)]
    for entry in results:
        for system in SYSTEMS:
            if system in entry:
                cells = row(entry[system], system)
                lines.append(
                    "  ".join(c.rjust(w) for c, (_, w) in zip(cells, COLUMNS, strict=True))
                )
        for key, label in (
            ("cpu_ratio_vs_relay", "relay"),
            ("cpu_ratio_vs_receive", "receive"),
            ("metrics_cost", "bridge-nometrics"),
        ):
            if entry.get(key) is not None:
                text = f"{entry[key]:>13.3f}  (bridge ÷ {label} CPU per call-s)"
                lines.append(f"{'':>5}  {'ratio':>16}  {text}")
    return "\n".join(lines)


def _flat(spread: float | None) -> str:
    return "-" if spread is None else "met" if spread <= 5 else "MISSED"


def _pct(spread: float | None) -> str:
    return "-" if spread is None else f"{spread:.1f}%"


def rounds_lines(results: list[dict[str, Any]]) -> list[str]:
    """One line per system run with ``--rounds`` ≥ 2: RSS per round and its spread."""
    out = []
    for entry in results:
        for system in SYSTEMS:
            rounds = (entry.get(system) or {}).get("rounds")
            if not rounds:
                continue
            flat = entry[system]["rss_flatness"]
            peaks = " / ".join(f"{r['peak_rss_kb'] / 1024:.1f}" for r in rounds)
            settled = " / ".join(f"{r['settled_rss_kb'] / 1024:.1f}" for r in rounds)
            warmup = flat.get("warmup_rounds", 0)
            over = f" over rounds {warmup + 1}-{len(rounds)}" if warmup else ""
            out.append(
                f"rss over {len(rounds)} rounds ({system}, N={entry['calls']}): peak {peaks} MB, "
                f"settled {settled} MB; spread{over} {_pct(flat['peak_spread_pct'])} "
                f"(settled {_pct(flat['settled_spread_pct'])}; "
                f"≤ 5%: {_flat(flat['peak_spread_pct'])})"
            )
    return out


def targets(results: list[dict[str, Any]]) -> list[str]:
    out = []
    for entry in results:
        bridge = entry.get("bridge")
        if bridge is None:
            continue
        n = entry["calls"]
        ratio = entry.get("cpu_ratio_vs_relay")
        p99 = bridge["fwd_latency_ms"]["p99"]
        hook = (bridge.get("commit_to_webhook_ms") or {}).get("p99")
        lost = bridge["frames"]["speech_lost"]
        verdict = [
            f"CPU ratio {'-' if ratio is None else f'{ratio:.2f}'} (≤ 1.5: "
            f"{'-' if ratio is None else 'met' if ratio <= 1.5 else 'MISSED'})",
            f"calls/core {bridge['calls_per_core']} (≥ 500: "
            f"{'met' if (bridge['calls_per_core'] or 0) >= 500 else 'MISSED'})",
            f"fwd p99 {_ms(p99)} ms (≤ 50: {'met' if p99 is not None and p99 <= 50 else 'MISSED'})",
            f"lost {lost} ({'met' if lost == 0 else 'MISSED'})",
            f"RSS/call {bridge['rss']['per_call_kb']:.0f} KB "
            f"(≤ 256: {'met' if bridge['rss']['per_call_kb'] <= 256 else 'MISSED'})",
        ]
        if bridge.get("rounds"):
            flat = bridge["rss_flatness"]
            warmup = flat.get("warmup_rounds", 0)
            measured = len(bridge["rounds"]) - warmup
            after = f" after {warmup} warm-up" if warmup else ""
            verdict.append(
                f"RSS flat ±5% over {measured} rounds{after}: "
                f"{_flat(flat['peak_spread_pct'])} (peak spread {_pct(flat['peak_spread_pct'])}, "
                f"settled {_pct(flat['settled_spread_pct'])})"
            )
        if n >= 200:
            verdict.append(
                f"hook p99 {_ms(hook)} ms (≤ 20 at 200 calls: "
                f"{'met' if hook is not None and hook <= 20 else 'MISSED'})"
            )
        out.append(f"  N={n}: " + "; ".join(verdict))
    return out


# --- main -------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    conversation = build_conversation()
    cores = os.cpu_count()
    meta = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "python": sys.version.split()[0],
        "cores": cores,
        "affinity": sorted(os.sched_getaffinity(0)),
        "pinned": bool(args.pin),
        "duration_s": args.duration,
        "stagger_s": args.stagger,
        "rounds": args.rounds,
        "emulator_partials_ms": args.partials_ms,
        "server_env": list(args.server_env),
        "b_env": list(args.b_env),
        "instances": args.instances,
        "database": "postgresql" if args.database != "sqlite" else "sqlite",
        "conversation": {
            "cycle_s": CYCLE_S,
            "utterances": conversation.utterances,
            "double_talk_turns": conversation.overlaps,
            "speech_fraction": round(float(conversation.speech.mean()), 3),
        },
        "method": METHOD,
    }  # fmt: skip
    print(f"python {meta['python']}, {cores} cores, {args.duration:g} s calls, "
          f"starts staggered over {args.stagger:g} s; conversation: {conversation.utterances} "
          f"utterances / {CYCLE_S} s, {conversation.overlaps} cut-ins, "
          f"{meta['conversation']['speech_fraction']:.0%} of frames speech")  # fmt: skip
    if args.pin:
        print(f"pinned: server on CPU {meta['affinity'][-1]}, generator + fixtures on the rest")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="callbridge-load-") as tmp:
        workdir = Path(args.keep) if args.keep else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for n in args.calls:
            entry: dict[str, Any] = {"calls": n}
            for system in args.systems:
                print(f"N={n}: {system} …", flush=True)
                phase = Phase(system, n, args, conversation, workdir)
                entry[system] = await run_phase(phase)
            bridge = entry.get("bridge")
            for baseline in ("relay", "receive"):
                other = entry.get(baseline)
                ratio = None
                if bridge and other and other["cpu_s_per_call_s"] > 0:
                    ratio = round(bridge["cpu_s_per_call_s"] / other["cpu_s_per_call_s"], 2)
                if baseline == "relay" or other is not None:
                    entry[f"cpu_ratio_vs_{baseline}"] = ratio
            without = entry.get("bridge-nometrics")
            if bridge and without and without["cpu_s_per_call_s"] > 0:
                entry["metrics_cost"] = round(
                    bridge["cpu_s_per_call_s"] / without["cpu_s_per_call_s"], 3
                )
            results.append(entry)
            print(format_table([entry]).split("\n", 1)[1], flush=True)
            for line in rounds_lines([entry]):
                print(line, flush=True)
    return {"meta": meta, "results": results, "targets": targets(results)}


def profile_summary(path: Path, top: int = 15) -> list[str]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f.split(" (")[0] + " (" + f.split("(")[-1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  for f in stack.split(";")]  # fmt: skip
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if not total:
        return ["  (no samples)"]
    lines = [f"  {total} samples; top self time:"]
    lines += [f"    {100 * c / total:5.1f}%  {name}" for name, c in own.most_common(top)]
    lines.append("  top inclusive:")
    lines += [f"    {100 * c / total:5.1f}%  {name}" for name, c in inclusive.most_common(top)]
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Load benchmark: the bridge process under N concurrent calls vs a relay.",
        epilog=LEGEND,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--calls", default="10,50", help="comma-separated call counts (10,50)")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per call (15)")
    parser.add_argument("--stagger", type=float, default=1.0, help="call starts spread (1 s)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--systems",
        default="bridge,relay",
        help="bridge,relay (the default), or any of bridge, bridge-b (with --b-env), "
        "bridge-nometrics (metrics off), relay and receive (the floor: receive and decode each "
        "Twilio frame, forward nothing)",
    )
    parser.add_argument(
        "--partials-ms", type=int, default=0, help="emulator partial interval (0: none)"
    )
    parser.add_argument(
        "--scrape-interval", type=float, default=5.0, metavar="S",
        help="bridge (metrics on): scrape /metrics every S seconds during the run (5)",
    )  # fmt: skip
    parser.add_argument(
        "--server-env", action="append", default=[], metavar="KEY=VALUE",
        help="extra environment for the bridge (e.g. CALLBRIDGE_SCRIBE_CHUNK_MS=20)",
    )  # fmt: skip
    parser.add_argument(
        "--b-env", action="append", default=[], metavar="KEY=VALUE",
        help="bridge-b only, after --server-env (e.g. PYTHONPATH=/path/to/other/checkout)",
    )  # fmt: skip
    parser.add_argument(
        "--pin", action=argparse.BooleanOptionalAction, default=False,
        help="pin the server to the last CPU, generator and fixtures to the others",
    )  # fmt: skip
    parser.add_argument(
        "--py-spy", metavar="PREFIX", default=None,
        help="profile the bridge with py-spy over each steady window (PREFIX-N.txt)",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int, default=1, help="bridge worker processes (serve --workers N)"
    )
    parser.add_argument(
        "--instances", type=int, default=1, metavar="K",
        help="K separate bridge servers (each `serve` on its own port, in its own directory) "
        "sharing the database; call i goes to server i mod K (1)",
    )  # fmt: skip
    parser.add_argument(
        "--database", default="sqlite", metavar="URL",
        help="the bridge's database: sqlite (a fresh file per run, the default) or a "
        "postgresql:// URL (a fresh schema per run; PostgreSQL's own CPU is measured)",
    )  # fmt: skip
    parser.add_argument(
        "--worker-cpu", type=float, default=None, metavar="CORES",
        help="cap each server process (each bridge worker, the relay) at CORES of a core "
        "through a cgroup CPU quota, e.g. 0.35 (Linux, writable cgroups)",
    )  # fmt: skip
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="run the N calls R times on the same server: RSS per round, no leak (1)",
    )  # fmt: skip
    parser.add_argument(
        "--warmup-rounds", type=int, default=0, metavar="W",
        help="with --rounds: leave the first W rounds out of the RSS spread (0)",
    )  # fmt: skip
    parser.add_argument("--keep", metavar="DIR", default=None, help="keep logs, DBs and dumps")
    args = parser.parse_args(argv)
    args.calls = [int(c) for c in str(args.calls).split(",") if c.strip()]
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not args.calls or any(not 1 <= c <= MAX_CALLS for c in args.calls):
        parser.error(f"--calls: between 1 and {MAX_CALLS} each")
    if any(s not in SYSTEMS for s in args.systems):
        parser.error("--systems: one or more of " + ", ".join(SYSTEMS))
    if not 0 <= args.warmup_rounds <= args.rounds - 2 and args.warmup_rounds:
        parser.error("--warmup-rounds: leave at least two rounds to compare")
    if args.worker_cpu is not None:
        try:
            CpuCap(args.worker_cpu).check()
        except CpuCapError as exc:
            parser.error(f"--worker-cpu: {exc}")
    if not 1 <= args.instances <= 16:
        parser.error("--instances: between 1 and 16")
    if args.database != "sqlite" and not args.database.startswith(("postgresql://", "postgres://")):
        parser.error("--database: sqlite or a postgresql:// URL")
    if not 1 <= args.rounds <= 100:
        parser.error("--rounds: between 1 and 100")
    if not 2 <= args.duration <= 3600 or args.stagger < 0 or args.stagger >= args.duration / 2:
        parser.error("--duration between 2 and 3600 s, --stagger below half of it")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_fixtures":
        sub = argparse.ArgumentParser()
        sub.add_argument("--partials-ms", type=int, default=0)
        event_loop.run(_fixtures(sub.parse_args(argv[1:])), "auto")
        return 0
    if argv and argv[0] == "_relay":
        sub = argparse.ArgumentParser()
        sub.add_argument("--port", type=int, required=True)
        sub.add_argument("--scribe-url", required=True)
        sub.add_argument("--event-loop", default="auto")
        sub.add_argument("--receive-only", action="store_true")
        relay_args = sub.parse_args(argv[1:])
        event_loop.run(_relay(relay_args), relay_args.event_loop)
        return 0
    args = parse_args(argv)
    report = event_loop.run(run(args), "auto")  # the generator: as cheap as it can be
    print()
    print(format_table(report["results"]))
    for line in rounds_lines(report["results"]):
        print(line)
    print()
    print(LEGEND)
    print("\nMethod:\n" + "\n".join("  " + line for line in report["meta"]["method"].splitlines()))
    print("\nTargets (bridge):")
    print("\n".join(report["targets"]))
    cores = report["meta"]["cores"]
    print(
        f"\nNote: {cores} cores shared by the server, the load generator and the fixtures "
        "(see srv/gen/fix/busy%); figures near saturation measure the machine, not the bridge."
    )
    if args.py_spy:
        for n in args.calls:
            path = Path(f"{args.py_spy}-{n}.txt")
            if path.exists():
                print(f"\npy-spy, bridge at N={n} ({path}):")
                print("\n".join(profile_summary(path)))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
