"""``callbridge simulate``: play a recording into a running bridge as a Twilio call would.

It POSTs a signed ``/twilio/voice``, opens ``/twilio/media`` with a signed handshake,
streams the audio (caller on the inbound track, agent on the outbound one) as 20 ms μ-law
frames, sends ``stop`` and the ``completed`` status callback, and meanwhile prints the
committed segments from the API, then the post-call summary. Every failure the user can
cause (a missing or unreadable file, no bridge, a wrong token) ends with one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import struct
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import numpy as np

from callbridge.audio.ulaw import FRAME_BYTES, SAMPLE_RATE, audioop
from callbridge.models import Track
from callbridge.testing.twilio_simulator import (
    SimulatorHandshakeError,
    TwilioCallSimulator,
    new_account_sid,
    new_call_sid,
    post_status,
    post_voice,
)
from callbridge.twilio.paths import MEDIA_PATH
from callbridge.twilio.signatures import public_base, websocket_base

DEFAULT_URL = "http://127.0.0.1:8080"
SAMPLE_CALL = "sample_call.wav"
SUMMARY_WAIT_S = 30.0
POLL_INTERVAL_S = 0.5

# WAVE format tags
_PCM, _FLOAT, _ALAW, _MULAW, _EXTENSIBLE = 0x0001, 0x0003, 0x0006, 0x0007, 0xFFFE


class SimulateError(Exception):
    """A problem the user can fix; ``str()`` is one line."""


# --- audio files --------------------------------------------------------------------------


def sample_call_path() -> Path:
    """The bundled two-speaker sample call (8 kHz μ-law stereo WAV)."""
    return Path(str(resources.files("callbridge") / "data" / SAMPLE_CALL))


@dataclass(frozen=True, slots=True)
class WavAudio:
    """A WAV file decoded to one 8 kHz μ-law byte string per channel."""

    channels: list[bytes]

    @property
    def duration_s(self) -> float:
        return max((len(c) for c in self.channels), default=0) / SAMPLE_RATE


def _chunks(data: bytes) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = {}
    offset = 12
    while offset + 8 <= len(data):
        chunk_id, size = struct.unpack_from("<4sI", data, offset)
        body = data[offset + 8 : offset + 8 + size]  # a truncated last chunk keeps what is there
        found.setdefault(chunk_id, body)
        offset += 8 + size + (size & 1)
    return found


def read_wav(path: str | os.PathLike[str]) -> WavAudio:
    """Read a PCM (8–32 bit), float, A-law or μ-law WAV, mono or stereo, at any rate.

    The stdlib :mod:`wave` reads only integer PCM, so the RIFF chunks are parsed here.
    8 kHz μ-law passes through untouched; everything else is converted to it.
    """
    name = os.fspath(path)
    try:
        data = Path(name).read_bytes()
    except FileNotFoundError:
        raise SimulateError(f"no such file: {name}") from None
    except IsADirectoryError:
        raise SimulateError(f"{name} is a directory, not a WAV file") from None
    except OSError as exc:
        raise SimulateError(f"cannot read {name}: {exc.strerror or exc}") from None
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise SimulateError(f"{name} is not a WAV file (no RIFF/WAVE header)")
    chunks = _chunks(data)
    fmt, frames = chunks.get(b"fmt "), chunks.get(b"data")
    if fmt is None or len(fmt) < 16 or frames is None:
        raise SimulateError(f"{name} is not a valid WAV file (no fmt or data chunk)")
    tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == _EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack_from("<H", fmt, 24)[0]  # the first two bytes of the SubFormat GUID
    if channels not in (1, 2):
        raise SimulateError(f"{name} has {channels} channels; only mono or stereo is supported")
    if rate <= 0 or block_align <= 0 or block_align % channels:
        raise SimulateError(f"{name} has an invalid WAV format header")
    width = block_align // channels
    frames = frames[: len(frames) - len(frames) % block_align]
    if tag == _MULAW and width == 1:
        if rate == SAMPLE_RATE:
            return WavAudio([frames[i::channels] for i in range(channels)])
        pcm = audioop.ulaw2lin(frames, 2)
    elif tag == _ALAW and width == 1:
        pcm = audioop.alaw2lin(frames, 2)
    elif tag == _PCM and width in (1, 2, 3, 4):
        pcm = audioop.bias(frames, 1, -128) if width == 1 else frames  # 8-bit WAV is unsigned
        pcm = audioop.lin2lin(pcm, width, 2) if width != 2 else pcm
    elif tag == _FLOAT and width in (4, 8):
        samples = np.frombuffer(frames, dtype="<f4" if width == 4 else "<f8")
        pcm = np.clip(np.nan_to_num(samples) * 32767.0, -32768, 32767).astype("<i2").tobytes()
    else:
        raise SimulateError(
            f"{name}: unsupported WAV encoding (format tag {tag:#06x}, {bits} bits); "
            "use PCM, float, A-law or μ-law"
        )
    mono = [pcm] if channels == 1 else [audioop.tomono(pcm, 2, 1, 0), audioop.tomono(pcm, 2, 0, 1)]
    return WavAudio([_to_mulaw_8k(channel, rate) for channel in mono])


def _to_mulaw_8k(pcm16: bytes, rate: int) -> bytes:
    if rate != SAMPLE_RATE:
        pcm16, _ = audioop.ratecv(pcm16, 2, 1, rate, SAMPLE_RATE, None)
    return bytes(audioop.lin2ulaw(pcm16, 2))


def load_call_audio(
    wav: str | os.PathLike[str] | None = None,
    caller: str | os.PathLike[str] | None = None,
    agent: str | os.PathLike[str] | None = None,
) -> dict[Track, bytes]:
    """The two Twilio tracks as 8 kHz μ-law: ``wav`` (mono = caller only; stereo = caller
    left, agent right) or separate mono ``caller`` and ``agent`` files."""
    if wav is not None:
        if caller is not None or agent is not None:
            raise SimulateError("give either --wav or --caller/--agent, not both")
        audio = read_wav(wav)
        tracks = {Track.INBOUND: audio.channels[0]}
        if len(audio.channels) == 2:
            tracks[Track.OUTBOUND] = audio.channels[1]
    else:
        if caller is None:
            raise SimulateError("--agent needs --caller (or give a stereo file with --wav)")
        tracks = {Track.INBOUND: _mono(caller, "--caller")}
        if agent is not None:
            tracks[Track.OUTBOUND] = _mono(agent, "--agent")
    if not any(tracks.values()):
        raise SimulateError("the audio is empty")
    return tracks


def _mono(path: str | os.PathLike[str], option: str) -> bytes:
    audio = read_wav(path)
    if len(audio.channels) != 1:
        raise SimulateError(f"{option} takes a mono file; {os.fspath(path)} is stereo")
    return audio.channels[0]


# --- output -------------------------------------------------------------------------------


def clock(ms: int) -> str:
    """``mm:ss.s`` on the call clock."""
    minutes, ms = divmod(max(0, ms), 60_000)
    return f"{minutes:02d}:{ms / 1000:04.1f}"


def segment_line(segment: Mapping[str, Any]) -> str:
    """``[mm:ss.s] speaker: text`` for a committed segment (API or webhook shape)."""
    text = " ".join(str(segment.get("text", "")).split())
    return f"[{clock(int(segment.get('start_ms', 0)))}] {segment.get('speaker', '?')}: {text}"


def _seconds(ms: Any) -> str:
    return f"{(ms or 0) / 1000:.1f} s"


def summary_lines(summary: Mapping[str, Any]) -> list[str]:
    """The post-call summary, readable on a terminal."""
    lines = [
        f"Summary: {_seconds(summary.get('duration_ms'))} call, "
        f"{summary.get('segments', 0)} segments, {summary.get('turns', 0)} turns, "
        f"language {summary.get('language_code') or 'unknown'}, "
        f"ended by {summary.get('reason', '?')}"
    ]
    speakers: Mapping[str, Mapping[str, Any]] = summary.get("speakers") or {}
    ratios: Mapping[str, float] = summary.get("talk_ratio") or {}
    width = max((len(name) for name in speakers), default=0)
    for name, stats in speakers.items():
        lines.append(
            f"  {name:<{width}}  talk {_seconds(stats.get('talk_ms'))} "
            f"({ratios.get(name, 0.0) * 100:.0f}%), {stats.get('turns', 0)} turns, "
            f"{stats.get('words', 0)} words, {stats.get('words_per_minute', 0.0):.0f} words/min"
        )
    longest = summary.get("longest_turn_speaker")
    lines.append(
        f"  overlap {_seconds(summary.get('overlap_ms'))}, "
        f"silence {_seconds(summary.get('silence_ms'))}, "
        f"longest turn {_seconds(summary.get('longest_turn_ms'))}"
        + (f" ({longest})" if longest else "")
    )
    return lines


class Console:
    """Segments on stdout; a one-line progress on stderr when stderr is a terminal."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.show_progress = self.err.isatty()
        self._progress_shown = False

    def line(self, text: str) -> None:
        self._clear_progress()
        print(text, file=self.out, flush=True)

    def note(self, text: str) -> None:
        self._clear_progress()
        print(text, file=self.err, flush=True)

    def progress(self, text: str) -> None:
        if self.show_progress:
            self.err.write("\r\033[K" + text)
            self.err.flush()
            self._progress_shown = True

    def _clear_progress(self) -> None:
        if self._progress_shown:
            self.err.write("\r\033[K")
            self.err.flush()
            self._progress_shown = False


# --- one simulated call -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bridge:
    """Where the bridge listens and what it is configured with."""

    url: str  # where it really listens, e.g. http://127.0.0.1:8080
    public_url: str  # its CALLBRIDGE_PUBLIC_URL, which the signatures are computed over
    auth_token: str  # its TWILIO_AUTH_TOKEN

    @property
    def media_url(self) -> str:
        return websocket_base(self.url) + MEDIA_PATH


def stream_parameters(twiml: str) -> dict[str, str]:
    """The ``<Parameter>``s of the TwiML's ``<Stream>``, which Twilio hands back in ``start``."""
    try:
        root = ElementTree.fromstring(twiml)
    except ElementTree.ParseError:
        raise SimulateError("the bridge answered /twilio/voice with something not TwiML") from None
    stream = root.find(".//Stream")
    if stream is None:
        raise SimulateError("the bridge's TwiML has no <Stream>; nothing would be transcribed")
    return {
        p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter") if p.get("name")
    }


def _unreachable(bridge: Bridge) -> SimulateError:
    return SimulateError(
        f"cannot reach the bridge at {bridge.url} (is `callbridge serve` running there?)"
    )


async def play_call(
    session: aiohttp.ClientSession,
    bridge: Bridge,
    tracks: Mapping[Track, bytes],
    *,
    call_sid: str,
    speed: float = 1.0,
    from_number: str = "+15005550006",
    to_number: str = "+15005550001",
    on_progress: Callable[[float, float], None] | None = None,
) -> None:
    """One whole call as Twilio would make it: voice webhook, media stream, status callback.

    ``on_progress(sent_s, total_s)`` is called about five times a second while streaming.
    The stream carries the TwiML's ``<Parameter>``s, the stream token among them, so the
    voice webhook and the stream name the same account.
    """
    account_sid = new_account_sid()
    try:
        twiml = await post_voice(
            session,
            bridge.url,
            bridge.public_url,
            bridge.auth_token,
            call_sid,
            from_number,
            to_number,
            account_sid=account_sid,
        )
    except aiohttp.ClientResponseError as exc:
        if exc.status == 403:
            raise SimulateError(
                "the bridge refused /twilio/voice with 403: the Twilio signature does not "
                "match (check TWILIO_AUTH_TOKEN and that --public-url equals the bridge's "
                "CALLBRIDGE_PUBLIC_URL)"
            ) from None
        raise SimulateError(f"the bridge answered /twilio/voice with HTTP {exc.status}") from None
    except (aiohttp.ClientConnectionError, OSError):
        raise _unreachable(bridge) from None
    simulator = TwilioCallSimulator(
        bridge.media_url,
        auth_token=bridge.auth_token,
        public_url=bridge.public_url,
        call_sid=call_sid,
        account_sid=account_sid,
        custom_parameters=stream_parameters(twiml),
        session=session,
    )
    try:
        await simulator.connect()
    except SimulatorHandshakeError as exc:
        if exc.status == 403:
            raise SimulateError(
                "the bridge refused the media websocket with 403: the Twilio signature "
                "does not match (check TWILIO_AUTH_TOKEN and --public-url)"
            ) from None
        raise SimulateError(
            f"the bridge refused the media websocket with HTTP {exc.status}"
        ) from None
    except (aiohttp.ClientConnectionError, OSError, TimeoutError):
        raise _unreachable(bridge) from None

    total_s = max(len(audio) for audio in tracks.values()) / SAMPLE_RATE
    reporter: asyncio.Task[None] | None = None
    if on_progress is not None:
        reporter = asyncio.create_task(_report_progress(simulator, total_s, on_progress))
    started = time.monotonic()
    try:
        result = await simulator.run(
            tracks.get(Track.INBOUND), tracks.get(Track.OUTBOUND), speed=speed
        )
    finally:
        if reporter is not None:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
    if result.server_closed_early:
        raise SimulateError(
            f"the bridge closed the media stream early (code {result.close_code}, "
            f"{result.close_reason or 'no reason given'}); see the bridge's log"
        )
    duration_s = max(1, round(max(total_s, time.monotonic() - started)))
    with contextlib.suppress(aiohttp.ClientError, OSError):
        await post_status(
            session,
            bridge.url,
            bridge.public_url,
            bridge.auth_token,
            call_sid,
            "completed",
            duration_s=duration_s,
        )


async def _report_progress(
    simulator: TwilioCallSimulator, total_s: float, on_progress: Callable[[float, float], None]
) -> None:
    while True:
        sent_s = simulator.frames_sent[Track.INBOUND] * FRAME_BYTES / SAMPLE_RATE
        on_progress(min(sent_s, total_s), total_s)
        await asyncio.sleep(0.2)


def speed_text(speed: float) -> str:
    return f"{speed:g}x" if speed > 0 else "full speed"


def progress_text(sent_s: float, total_s: float, width: int = 30) -> str:
    done = int(width * sent_s / total_s) if total_s else width
    return f"streaming [{'#' * done}{'.' * (width - done)}] {sent_s:5.1f} / {total_s:.1f} s"


# --- the API side ---------------------------------------------------------------------------


class TranscriptFollower:
    """Polls ``/v1/calls/{sid}/transcript`` and prints every new segment once, in order."""

    def __init__(
        self, session: aiohttp.ClientSession, bridge: Bridge, api_token: str, call_sid: str
    ) -> None:
        self.session = session
        self.base = public_base(bridge.url)
        self.bridge = bridge
        self.headers = {"Authorization": f"Bearer {api_token}"}
        self.call_sid = call_sid
        self.printed = 0
        self.status: str | None = None

    async def get(self, path: str) -> tuple[int, Any]:
        try:
            async with self.session.get(self.base + path, headers=self.headers) as response:
                status, text = response.status, await response.text()
        except (aiohttp.ClientConnectionError, OSError):
            raise _unreachable(self.bridge) from None
        try:
            body = json.loads(text) if text else None
        except ValueError:
            body = None
        if status == 401:
            raise SimulateError(
                "the bridge's API answered 401: the API token is wrong "
                "(use one of the bridge's CALLBRIDGE_API_TOKENS with --api-token)"
            )
        return status, body

    async def check_token(self) -> None:
        """Fail fast, before any call is made, when the API token is wrong."""
        await self.get("/v1/calls?limit=1")

    async def poll(self, console: Console) -> None:
        status, body = await self.get(f"/v1/calls/{self.call_sid}/transcript")
        if status != 200 or not isinstance(body, dict):
            return  # 404 until the call is recorded
        self.status = body.get("status")
        segments = [s for s in body.get("segments", []) if str(s.get("text", "")).strip()]
        for segment in segments[self.printed :]:
            console.line(segment_line(segment))
        self.printed = max(self.printed, len(segments))

    async def follow(self, console: Console) -> None:
        """Poll until cancelled."""
        while True:
            await self.poll(console)
            await asyncio.sleep(POLL_INTERVAL_S)

    async def summary(self, console: Console, wait_s: float = SUMMARY_WAIT_S) -> dict[str, Any]:
        """Print the remaining segments and wait for the summary (409 while the call is live)."""
        deadline = time.monotonic() + wait_s
        while True:
            await self.poll(console)
            status, body = await self.get(f"/v1/calls/{self.call_sid}/summary")
            if status == 200 and isinstance(body, dict):
                await self.poll(console)
                return body
            if time.monotonic() > deadline:
                raise SimulateError(
                    f"no summary after {wait_s:.0f} s (last answer HTTP {status}); "
                    "see the bridge's log"
                )
            await asyncio.sleep(POLL_INTERVAL_S)


async def simulate(
    bridge: Bridge,
    tracks: Mapping[Track, bytes],
    *,
    api_token: str | None,
    call_sid: str,
    speed: float,
    console: Console,
) -> None:
    async with aiohttp.ClientSession() as session:
        follower = None
        if api_token:
            follower = TranscriptFollower(session, bridge, api_token, call_sid)
            await follower.check_token()
        else:
            console.note(
                "callbridge simulate: no API token (--api-token or CALLBRIDGE_API_TOKENS), "
                "so only streaming; segments are not shown"
            )
        total_s = max(len(audio) for audio in tracks.values()) / SAMPLE_RATE
        console.line(
            f"callbridge simulate: call {call_sid}, {total_s:.1f} s of audio "
            f"({', '.join(str(t) for t in tracks)}) at {speed_text(speed)} into {bridge.url}"
        )
        following = asyncio.create_task(follower.follow(console)) if follower else None
        try:
            await play_call(
                session,
                bridge,
                tracks,
                call_sid=call_sid,
                speed=speed,
                on_progress=lambda sent, total: console.progress(progress_text(sent, total)),
            )
        finally:
            if following is not None:
                following.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await following
        console.progress("")
        if follower is None:
            console.line("callbridge simulate: call streamed and ended")
            return
        summary = await follower.summary(console)
        console.line("")
        for line in summary_lines(summary):
            console.line(line)


# --- command line ---------------------------------------------------------------------------


def add_simulate_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "simulate",
        help="play a WAV file into a running bridge as a Twilio call and print the transcript",
        description=(
            "Play audio into a running bridge exactly as Twilio would: a signed /twilio/voice "
            "webhook, then a signed media stream (8 kHz μ-law, both tracks), stop, and the "
            "completed status callback. Prints the committed segments and the summary "
            "from the API. Without a file it plays the bundled sample call."
        ),
    )
    source = parser.add_argument_group("audio (any WAV: PCM, float, μ-law, A-law; any rate)")
    source.add_argument(
        "--wav", metavar="FILE", help="mono = caller only; stereo = caller left, agent right"
    )
    source.add_argument("--caller", metavar="FILE", help="the caller (inbound track), mono")
    source.add_argument("--agent", metavar="FILE", help="the agent (outbound track), mono")
    parser.add_argument(
        "--url", default=DEFAULT_URL, help=f"where the bridge listens (default {DEFAULT_URL})"
    )
    parser.add_argument(
        "--public-url",
        default=None,
        help="the bridge's CALLBRIDGE_PUBLIC_URL (default $CALLBRIDGE_PUBLIC_URL, else --url)",
    )
    parser.add_argument(
        "--auth-token", default=None, help="the bridge's Twilio auth token ($TWILIO_AUTH_TOKEN)"
    )
    parser.add_argument(
        "--api-token",
        default=None,
        help="bearer token for /v1 (default: the first of $CALLBRIDGE_API_TOKENS)",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="1 = real time (default), 4 = four times faster, 0 = as fast as possible; above "
        "about 4 the bridge needs a higher CALLBRIDGE_TURNS_CATCHUP_SPEED and a lower "
        "CALLBRIDGE_TURNS_MIN_COMMIT_INTERVAL_MS, or transcripts lag behind",
    )
    parser.add_argument("--call-sid", default=None, help="the CallSid (default: a fresh CA…)")
    parser.set_defaults(handler=run_simulate_command)


def run_simulate_command(args: argparse.Namespace) -> int:
    console = Console()
    try:
        return _run(args, console)
    except SimulateError as exc:
        console.note(f"callbridge simulate: {exc}")
        return 1


def _run(args: argparse.Namespace, console: Console) -> int:
    url = args.url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise SimulateError(f"--url {args.url!r} must be an http(s) URL")
    auth_token = args.auth_token or os.environ.get("TWILIO_AUTH_TOKEN", "")
    if not auth_token:
        raise SimulateError("no Twilio auth token: set TWILIO_AUTH_TOKEN or pass --auth-token")
    public_url = args.public_url or os.environ.get("CALLBRIDGE_PUBLIC_URL") or url
    if not public_url.startswith(("http://", "https://")):
        raise SimulateError(f"public URL {public_url!r} must be an http(s) URL")
    if not args.speed >= 0:
        raise SimulateError("--speed must be 0 (as fast as possible) or more")
    api_token = args.api_token
    if api_token is None:
        tokens = [t.strip() for t in os.environ.get("CALLBRIDGE_API_TOKENS", "").split(",")]
        api_token = next((t for t in tokens if t), None)
    if args.wav is None and args.caller is None and args.agent is None:
        args.wav = sample_call_path()
    tracks = load_call_audio(args.wav, args.caller, args.agent)
    bridge = Bridge(url=url, public_url=public_url, auth_token=auth_token)
    call_sid = args.call_sid or new_call_sid()
    try:
        asyncio.run(
            simulate(
                bridge,
                tracks,
                api_token=api_token,
                call_sid=call_sid,
                speed=args.speed,
                console=console,
            )
        )
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise SimulateError(f"talking to the bridge failed: {exc or type(exc).__name__}") from None
    return 0
