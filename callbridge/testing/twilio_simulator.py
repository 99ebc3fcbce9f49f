"""A Twilio simulator: signed webhooks and a Media Streams caller, for tests and benchmarks.

It plays Twilio's side of a call against a running bridge:

* :func:`post_voice` / :func:`post_status` POST form webhooks signed like Twilio
  (:func:`sign_request`);
* :class:`TwilioCallSimulator` opens ``/twilio/media`` with a signed upgrade and sends
  ``connected`` → ``start`` → interleaved ``media`` for both tracks → ``stop``, exactly as
  Twilio spells them (numbers as strings, per-socket ``sequenceNumber``, per-track ``chunk``,
  one shared ``timestamp`` clock), paced in real time, faster, or as fast as possible.

Audio comes in as μ-law bytes, int16 numpy arrays at 8 kHz, or WAV files (mono → inbound;
stereo → left = inbound/caller, right = outbound/agent; any rate and sample width). Faults
on demand: dropped frames (timestamp gaps), silence not sent, raw bad messages, closing
without ``stop``, hanging up late. What was sent is recorded per track so tests can compare
it with what reached Scribe, and the server's close code and reason are collected.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import wave
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import numpy as np
from twilio.request_validator import HMAC_SHA256, RequestValidator

from callbridge.audio.ulaw import FRAME_BYTES, FRAME_MS, SAMPLE_RATE, SILENCE_BYTE, audioop
from callbridge.models import Track
from callbridge.twilio.paths import MEDIA_PATH, STATUS_PATH, VOICE_PATH
from callbridge.twilio.signatures import (
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    public_base,
    public_websocket_url,
)
from callbridge.twilio.stream_auth import TOKEN_PARAMETER, stream_token

__all__ = [
    "FrameDrop",
    "RawMessage",
    "SentFrame",
    "SimulationResult",
    "TrackRecord",
    "TwilioCallSimulator",
    "load_wav",
    "new_account_sid",
    "new_call_sid",
    "new_stream_sid",
    "post_status",
    "post_stream_status",
    "post_voice",
    "sign_request",
    "to_mulaw",
]

MULAW_SILENCE = SILENCE_BYTE
_SILENT_BYTES = frozenset({0xFF, 0x7F})  # μ-law +0 and -0

AudioSource = bytes | bytearray | memoryview | np.ndarray | str | os.PathLike[str]
SignatureMode = Literal["valid", "wrong", "missing"]
EndMode = Literal["stop", "close", "abort", "none"]


# --- SIDs and signing -----------------------------------------------------------------------


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def new_call_sid() -> str:
    """A fresh ``CA…`` call SID (34 characters, like Twilio's)."""
    return _sid("CA")


def new_stream_sid() -> str:
    """A fresh ``MZ…`` stream SID."""
    return _sid("MZ")


def new_account_sid() -> str:
    """A fresh ``AC…`` account SID."""
    return _sid("AC")


def sign_request(
    auth_token: str,
    url: str,
    params: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    *,
    algorithm: str | None = None,
) -> str:
    """``X-Twilio-Signature`` for ``url`` with POST ``params`` (pairs allow repeated keys)."""
    multi: dict[str, list[str]] = {}
    items = params.items() if isinstance(params, Mapping) else (params or ())
    for key, value in items:
        multi.setdefault(key, []).append(value)
    return str(RequestValidator(auth_token).compute_signature(url, _MultiParams(multi), algorithm))


class _MultiParams(dict[str, list[str]]):
    """What ``RequestValidator`` needs from a form: iteration over keys and ``getall``."""

    def getall(self, key: str) -> list[str]:
        return self[key]


def _signed_headers(
    auth_token: str,
    url: str,
    params: Sequence[tuple[str, str]],
    shared_key: tuple[str, str] | None,
) -> dict[str, str]:
    if shared_key is not None:
        key_id, secret = shared_key
        return {
            SIGNATURE_HEADER: sign_request(secret, url, params, algorithm=HMAC_SHA256),
            SIGNATURE_SETTINGS_HEADER: f"key={key_id},algorithm={HMAC_SHA256}",
        }
    return {SIGNATURE_HEADER: sign_request(auth_token, url, params)}


async def post_signed_form(
    session: aiohttp.ClientSession,
    base_url: str,
    public_url: str,
    auth_token: str,
    path: str,
    params: Mapping[str, str] | Sequence[tuple[str, str]],
    *,
    signature: SignatureMode = "valid",
    shared_key: tuple[str, str] | None = None,
) -> tuple[int, str]:
    """POST a form to ``base_url + path`` signed for ``public_url + path``; (status, body)."""
    pairs = list(params.items()) if isinstance(params, Mapping) else list(params)
    headers: dict[str, str] = {}
    if signature != "missing":
        headers = _signed_headers(auth_token, public_base(public_url) + path, pairs, shared_key)
        if signature == "wrong":
            headers[SIGNATURE_HEADER] = "AAAA" + headers[SIGNATURE_HEADER][4:]
    async with session.post(public_base(base_url) + path, data=pairs, headers=headers) as response:
        return response.status, await response.text()


async def post_voice(
    session: aiohttp.ClientSession,
    base_url: str,
    public_url: str,
    auth_token: str,
    call_sid: str,
    from_: str | None,
    to: str | None,
    *,
    account_sid: str | None = None,
    extra: Mapping[str, str] | None = None,
    signature: SignatureMode = "valid",
) -> str:
    """Twilio's voice webhook for a new inbound call; returns the TwiML (raises on non-200)."""
    params = {
        "CallSid": call_sid,
        "AccountSid": account_sid or new_account_sid(),
        "CallStatus": "ringing",
        "Direction": "inbound",
        "ApiVersion": "2010-04-01",
    }
    if from_ is not None:
        params["From"] = from_
    if to is not None:
        params["To"] = to
    params.update(extra or {})
    status, body = await post_signed_form(
        session, base_url, public_url, auth_token, VOICE_PATH, params, signature=signature
    )
    if status != 200:
        raise aiohttp.ClientResponseError(
            request_info=_no_request_info(base_url), history=(), status=status, message=body
        )
    return body


async def post_status(
    session: aiohttp.ClientSession,
    base_url: str,
    public_url: str,
    auth_token: str,
    call_sid: str,
    call_status: str = "completed",
    *,
    duration_s: int | None = None,
    account_sid: str | None = None,
    extra: Mapping[str, str] | None = None,
    signature: SignatureMode = "valid",
) -> int:
    """A call status callback (``CallStatus``, ``CallDuration``); returns the HTTP status."""
    params = {"CallSid": call_sid, "AccountSid": account_sid or new_account_sid()}
    params["CallStatus"] = call_status
    if duration_s is not None:
        params["CallDuration"] = str(duration_s)
    params.update(extra or {})
    status, _ = await post_signed_form(
        session, base_url, public_url, auth_token, STATUS_PATH, params, signature=signature
    )
    return status


async def post_stream_status(
    session: aiohttp.ClientSession,
    base_url: str,
    public_url: str,
    auth_token: str,
    call_sid: str,
    stream_event: str,
    *,
    stream_sid: str | None = None,
    stream_name: str = "callbridge",
    stream_error: str | None = None,
    signature: SignatureMode = "valid",
) -> int:
    """A stream status callback (``StreamEvent`` = stream-started|stream-stopped|stream-error)."""
    params = {
        "CallSid": call_sid,
        "AccountSid": new_account_sid(),
        "StreamSid": stream_sid or new_stream_sid(),
        "StreamName": stream_name,
        "StreamEvent": stream_event,
        "Timestamp": "Tue, 01 Sep 2026 12:00:00 +0000",
    }
    if stream_error is not None:
        params["StreamError"] = stream_error
    status, _ = await post_signed_form(
        session, base_url, public_url, auth_token, STATUS_PATH, params, signature=signature
    )
    return status


def media_message(
    sequence: int, track: Track, chunk: int, timestamp_ms: int, payload: bytes, stream_sid: str
) -> str:
    """A ``media`` message as Twilio words it (numbers as strings, payload in base64).

    Formatted directly rather than through ``json.dumps``: a simulated call sends 100 a
    second, and the fields need no escaping."""
    encoded = base64.b64encode(payload).decode("ascii")
    return (
        f'{{"event":"media","sequenceNumber":"{sequence}","media":{{"track":"{track.value}",'
        f'"chunk":"{chunk}","timestamp":"{timestamp_ms}","payload":"{encoded}"}},'
        f'"streamSid":"{stream_sid}"}}'
    )


def _no_request_info(url: str) -> aiohttp.RequestInfo:
    from multidict import CIMultiDict, CIMultiDictProxy
    from yarl import URL

    return aiohttp.RequestInfo(URL(url), "POST", CIMultiDictProxy(CIMultiDict()), URL(url))


# --- audio ----------------------------------------------------------------------------------


def _pcm16_to_mulaw(pcm: bytes, rate: int) -> bytes:
    if rate != SAMPLE_RATE:
        pcm, _ = audioop.ratecv(pcm, 2, 1, rate, SAMPLE_RATE, None)
    return bytes(audioop.lin2ulaw(pcm, 2))


def load_wav(path: str | os.PathLike[str]) -> dict[Track, bytes]:
    """A WAV file as 8 kHz μ-law per track: mono → inbound; stereo → left in, right out."""
    with wave.open(os.fspath(path), "rb") as wav:
        channels = wav.getnchannels()
        width = wav.getsampwidth()
        rate = wav.getframerate()
        frames = wav.readframes(wav.getnframes())
    if channels not in (1, 2):
        raise ValueError(f"{path}: {channels} channels; only mono or stereo WAV is supported")
    if width == 1:  # 8-bit WAV is unsigned
        frames = audioop.bias(frames, 1, -128)
    if width != 2:
        frames = audioop.lin2lin(frames, width, 2)
    if channels == 1:
        return {Track.INBOUND: _pcm16_to_mulaw(frames, rate)}
    left = audioop.tomono(frames, 2, 1, 0)
    right = audioop.tomono(frames, 2, 0, 1)
    return {
        Track.INBOUND: _pcm16_to_mulaw(left, rate),
        Track.OUTBOUND: _pcm16_to_mulaw(right, rate),
    }


def to_mulaw(source: AudioSource) -> bytes:
    """μ-law bytes (as is), an int16 numpy array at 8 kHz, or a mono WAV file → μ-law bytes."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    if isinstance(source, np.ndarray):
        if source.dtype != np.int16 or source.ndim != 1:
            raise TypeError("numpy audio must be a 1-D int16 array at 8 kHz")
        return bytes(audioop.lin2ulaw(source.astype("<i2", copy=False).tobytes(), 2))
    tracks = load_wav(source)
    if len(tracks) != 1:
        raise ValueError(f"{source}: a stereo WAV holds two tracks; pass it as wav=")
    return tracks[Track.INBOUND]


# --- what the simulator sends and records ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class SentFrame:
    track: Track
    chunk: int
    timestamp_ms: int
    payload: bytes
    sequence_number: int


@dataclass(slots=True)
class TrackRecord:
    """The media frames sent on one track, in order."""

    frames: list[SentFrame] = field(default_factory=list)

    @property
    def audio(self) -> bytes:
        """Every μ-law byte sent on this track, concatenated (gaps are simply absent)."""
        return b"".join(frame.payload for frame in self.frames)

    @property
    def timestamps(self) -> list[int]:
        return [frame.timestamp_ms for frame in self.frames]

    @property
    def chunks(self) -> list[int]:
        return [frame.chunk for frame in self.frames]


@dataclass(frozen=True, slots=True)
class FrameDrop:
    """Don't send ``track``'s frames whose timestamp is in ``[start_ms, end_ms)``.

    The receiver sees the timestamps jump. With ``advance_chunk`` the chunk counter jumps
    too (the frames were numbered, then lost); by default chunks stay consecutive.
    """

    track: Track
    start_ms: int
    end_ms: int
    advance_chunk: bool = False

    def covers(self, track: Track, timestamp_ms: int) -> bool:
        return track == self.track and self.start_ms <= timestamp_ms < self.end_ms


@dataclass(frozen=True, slots=True)
class RawMessage:
    """Arbitrary text or binary to send just before the first frame at ``at_ms`` or later."""

    at_ms: int
    data: str | bytes


@dataclass(frozen=True, slots=True)
class SimulationResult:
    call_sid: str
    stream_sid: str
    frames_sent: dict[Track, int]
    messages_sent: int
    close_code: int | None
    close_reason: str | None
    server_closed_early: bool  # the server closed the socket before the simulator was done


class SimulatorHandshakeError(Exception):
    """The bridge refused the websocket upgrade (e.g. 403 on a bad signature)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"websocket upgrade refused with HTTP {status}")
        self.status = status


class TwilioCallSimulator:
    """One Twilio Media Stream (one ``<Start><Stream>``) against a bridge's media websocket.

    ``ws_url`` is where the bridge really listens (``ws://127.0.0.1:8080/twilio/media``);
    the upgrade is signed for ``wss://<public host>/twilio/media`` built from ``public_url``.
    Pass ``session`` to share one ``aiohttp.ClientSession`` across many simulated calls, and
    ``record_audio=False`` for long load runs (then only frame counts are kept). With
    ``stream_secret`` (the bridge's ``CALLBRIDGE_STREAM_SECRET``) the ``start`` carries the
    call's ``cb_token`` as the bridge's TwiML would; without it, only what
    ``custom_parameters`` holds (a stream made from the bridge's TwiML carries it there).
    """

    def __init__(
        self,
        ws_url: str,
        *,
        auth_token: str,
        public_url: str,
        call_sid: str | None = None,
        stream_sid: str | None = None,
        account_sid: str | None = None,
        custom_parameters: Mapping[str, str] | None = None,
        signature: SignatureMode = "valid",
        shared_key: tuple[str, str] | None = None,
        session: aiohttp.ClientSession | None = None,
        media_path: str = MEDIA_PATH,
        connect_timeout_s: float = 10.0,
        record_audio: bool = True,
        stream_secret: str | None = None,
    ) -> None:
        self.ws_url = ws_url
        self.auth_token = auth_token
        self.public_url = public_url
        self.call_sid = call_sid or new_call_sid()
        self.stream_sid = stream_sid or new_stream_sid()
        self.account_sid = account_sid or new_account_sid()
        self.custom_parameters = dict(custom_parameters or {})
        if stream_secret is not None:
            # As the bridge's TwiML would have it (an explicit cb_token is sent as given).
            self.custom_parameters.setdefault(
                TOKEN_PARAMETER, stream_token(stream_secret, self.account_sid, self.call_sid)
            )
        self.signature = signature
        self.shared_key = shared_key
        self.media_path = media_path
        self.connect_timeout_s = connect_timeout_s
        self.record_audio = record_audio  # False keeps long load runs from holding all audio
        self.frames_sent: dict[Track, int] = dict.fromkeys(Track, 0)
        self.sent: dict[Track, TrackRecord] = {
            Track.INBOUND: TrackRecord(),
            Track.OUTBOUND: TrackRecord(),
        }
        self.raw_sent: list[str | bytes] = []
        self.received: list[str | bytes] = []  # anything the server sent (it should send nothing)
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.server_closed = False
        self._session = session
        self._owns_session = session is None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._sequence = 0
        self._chunks = {Track.INBOUND: 0, Track.OUTBOUND: 0}
        self._messages_sent = 0
        self._finished = False

    # --- connection --------------------------------------------------------------------
    def handshake_headers(self) -> dict[str, str]:
        """The upgrade headers: ``X-Twilio-Signature`` over the public ``wss://`` URL, no params."""
        if self.signature == "missing":
            return {}
        url = public_websocket_url(self.public_url, self.media_path)
        headers = _signed_headers(self.auth_token, url, [], self.shared_key)
        if self.signature == "wrong":
            headers[SIGNATURE_HEADER] = sign_request("not-the-token", url, [])
        return headers

    async def connect(self) -> None:
        """Open the websocket; :class:`SimulatorHandshakeError` if the bridge refuses."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                self._ws = await self._session.ws_connect(
                    self.ws_url,
                    headers=self.handshake_headers(),
                    timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                    autoping=True,
                    max_msg_size=0,
                )
        except aiohttp.WSServerHandshakeError as error:
            await self._close_session()
            raise SimulatorHandshakeError(error.status) from None
        except BaseException:
            await self._close_session()
            raise
        self._reader = asyncio.get_running_loop().create_task(self._read_until_closed())

    async def _read_until_closed(self) -> None:
        ws = self._ws
        assert ws is not None
        while True:
            message = await ws.receive()
            if message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                self.received.append(message.data)
                continue
            if message.type is aiohttp.WSMsgType.CLOSE and self.close_code is None:
                self.close_code = message.data
                self.close_reason = message.extra or ""
            break  # a close frame (answered automatically), a dead transport or an error
        if not self._finished:
            self.server_closed = True
        self._record_close(ws)

    def _record_close(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        if self.close_code is None and ws.close_code is not None:
            self.close_code = ws.close_code

    @property
    def is_open(self) -> bool:
        return self._ws is not None and not self._ws.closed and not self.server_closed

    async def _send(self, data: str | bytes) -> bool:
        """Send one frame; False (and nothing sent) once the socket is closed."""
        ws = self._ws
        if ws is None:
            raise RuntimeError("connect() first")
        if ws.closed or self.server_closed:
            return False
        try:
            if isinstance(data, str):
                await ws.send_str(data)
            else:
                await ws.send_bytes(data)
        except (ConnectionError, aiohttp.ClientError, RuntimeError):
            self.server_closed = True
            return False
        self._messages_sent += 1
        return True

    def _next_sequence(self) -> int:
        self._sequence += 1
        return self._sequence

    # --- messages ----------------------------------------------------------------------
    async def send_connected(self) -> bool:
        return await self._send('{"event":"connected","protocol":"Call","version":"1.0.0"}')

    async def send_start(
        self,
        tracks: Sequence[str] = ("inbound", "outbound"),
        *,
        media_format: Mapping[str, Any] | None = None,
    ) -> bool:
        """``start`` (sequenceNumber 1), also sending ``connected`` first if not yet sent."""
        if self._sequence == 0 and self._messages_sent == 0:
            await self.send_connected()
        message = {
            "event": "start",
            "sequenceNumber": str(self._next_sequence()),
            "start": {
                "accountSid": self.account_sid,
                "streamSid": self.stream_sid,
                "callSid": self.call_sid,
                "tracks": list(tracks),
                "mediaFormat": dict(
                    media_format
                    or {"encoding": "audio/x-mulaw", "sampleRate": SAMPLE_RATE, "channels": 1}
                ),
                "customParameters": self.custom_parameters,
            },
            "streamSid": self.stream_sid,
        }
        return await self._send(json.dumps(message, separators=(",", ":")))

    async def send_media(
        self, track: Track, payload: bytes, timestamp_ms: int, *, skip_chunk: int = 0
    ) -> bool:
        """One ``media`` message; the per-track chunk advances by ``1 + skip_chunk``."""
        self._chunks[track] += 1 + skip_chunk
        chunk = self._chunks[track]
        sequence = self._next_sequence()
        text = media_message(sequence, track, chunk, timestamp_ms, payload, self.stream_sid)
        if not await self._send(text):
            return False
        self.frames_sent[track] += 1
        if self.record_audio:
            self.sent[track].frames.append(SentFrame(track, chunk, timestamp_ms, payload, sequence))
        return True

    async def send_dtmf(self, digit: str) -> bool:
        sequence = self._next_sequence()
        return await self._send(
            f'{{"event":"dtmf","streamSid":"{self.stream_sid}","sequenceNumber":"{sequence}",'
            f'"dtmf":{{"track":"inbound_track","digit":"{digit}"}}}}'
        )

    async def send_raw(self, data: str | bytes) -> bool:
        """Arbitrary text or binary, as is (no sequence number is used up)."""
        self.raw_sent.append(data)
        return await self._send(data)

    async def send_stop(self) -> bool:
        sequence = self._next_sequence()
        return await self._send(
            f'{{"event":"stop","sequenceNumber":"{sequence}","stop":{{"accountSid":'
            f'"{self.account_sid}","callSid":"{self.call_sid}"}},"streamSid":"{self.stream_sid}"}}'
        )

    async def send_frames(
        self,
        inbound: AudioSource | None = None,
        outbound: AudioSource | None = None,
        *,
        speed: float = 1.0,
        start_timestamp_ms: int = 0,
        drops: Sequence[FrameDrop] = (),
        skip_silence: bool = False,
        raw_messages: Sequence[RawMessage] = (),
        pad_tracks: bool = True,
    ) -> int:
        """Send both tracks as interleaved 20 ms frames; returns the last timestamp + 20 ms.

        ``speed`` 1.0 is real time (sleeping to each frame's deadline, so pacing does not
        drift), N is N× real time, 0 is as fast as possible. With ``pad_tracks`` the shorter
        track is padded with μ-law silence (Twilio sends both tracks continuously); a last
        partial frame is always padded to 160 bytes.
        """
        audio: dict[Track, bytes] = {}
        if inbound is not None:
            audio[Track.INBOUND] = to_mulaw(inbound)
        if outbound is not None:
            audio[Track.OUTBOUND] = to_mulaw(outbound)
        frame_counts = {track: -(-len(data) // FRAME_BYTES) for track, data in audio.items()}
        total_frames = max(frame_counts.values(), default=0)
        pending_raw = sorted(raw_messages, key=lambda raw: raw.at_ms)
        loop = asyncio.get_running_loop()
        started = loop.time()
        silence = bytes([MULAW_SILENCE]) * FRAME_BYTES

        for index in range(total_frames):
            timestamp = start_timestamp_ms + index * FRAME_MS
            if speed > 0:
                delay = started + (index * FRAME_MS / 1000.0) / speed - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)  # let the reader (server close frames) and others run
            while pending_raw and pending_raw[0].at_ms <= timestamp - start_timestamp_ms:
                await self.send_raw(pending_raw.pop(0).data)
            for track, data in audio.items():
                if index >= frame_counts[track]:
                    if not pad_tracks:
                        continue
                    frame = silence
                else:
                    frame = data[index * FRAME_BYTES : (index + 1) * FRAME_BYTES]
                    if len(frame) < FRAME_BYTES:
                        frame += silence[len(frame) :]
                drop = next((d for d in drops if d.covers(track, timestamp)), None)
                if drop is not None:
                    if drop.advance_chunk:
                        self._chunks[track] += 1
                    continue
                if skip_silence and _SILENT_BYTES.issuperset(frame):
                    continue
                if not await self.send_media(track, frame, timestamp):
                    return timestamp
        for raw in pending_raw:
            await self.send_raw(raw.data)
        return start_timestamp_ms + total_frames * FRAME_MS

    async def close(self, *, abort: bool = False) -> None:
        """Close the socket (a normal close frame; ``abort`` drops the TCP connection instead)."""
        ws = self._ws
        if ws is not None and not ws.closed:
            await asyncio.sleep(0)  # let the reader take a close frame that already arrived
        self._finished = True
        if ws is not None:
            if abort:
                if ws._response.connection is not None:  # no close frame, like a dead tunnel
                    ws._response.connection.transport.abort()  # type: ignore[union-attr]
            elif not ws.closed:
                with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
                    await ws.close()
            if self._reader is not None:
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(self._reader, timeout=5.0)
            self._record_close(ws)
        await self._close_session()

    async def wait_closed(self, timeout_s: float = 5.0) -> bool:
        """Wait for the server to close the socket; True if it did within ``timeout_s``."""
        if self._reader is None:
            return True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._reader), timeout=timeout_s)
        return self._reader.done()

    async def _close_session(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> TwilioCallSimulator:
        await self.connect()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    # --- one whole call ----------------------------------------------------------------
    async def run(
        self,
        inbound: AudioSource | None = None,
        outbound: AudioSource | None = None,
        *,
        wav: str | os.PathLike[str] | None = None,
        tracks: Sequence[str] | None = None,
        speed: float = 1.0,
        end: EndMode = "stop",
        hangup_after_ms: int = 0,
        drops: Sequence[FrameDrop] = (),
        skip_silence: bool = False,
        raw_messages: Sequence[RawMessage] = (),
        pad_tracks: bool = True,
        wait_for_server_close_s: float = 0.0,
    ) -> SimulationResult:
        """Connect, ``connected``, ``start``, all the audio, then end the call.

        ``end``: ``stop`` sends ``stop`` and closes; ``close`` closes without ``stop``;
        ``abort`` drops the connection without a close frame; ``none`` leaves the socket open
        (call :meth:`close` later). ``hangup_after_ms`` waits that long (scaled by ``speed``)
        after the last audio. ``wait_for_server_close_s`` waits, after ``stop``, for the
        bridge to close the socket itself.
        """
        if wav is not None:
            loaded = load_wav(wav)
            inbound = loaded.get(Track.INBOUND, inbound)
            outbound = loaded.get(Track.OUTBOUND, outbound)
        if tracks is None:
            tracks = ("inbound", "outbound") if outbound is not None else ("inbound",)
        if self._ws is None:
            await self.connect()
        try:
            await self.send_start(tracks)
            await self.send_frames(
                inbound,
                outbound,
                speed=speed,
                drops=drops,
                skip_silence=skip_silence,
                raw_messages=raw_messages,
                pad_tracks=pad_tracks,
            )
            if hangup_after_ms > 0:
                await asyncio.sleep(hangup_after_ms / 1000.0 / (speed if speed > 0 else 1.0))
            if end == "stop":
                await self.send_stop()
                if wait_for_server_close_s > 0:
                    await self.wait_closed(wait_for_server_close_s)
        finally:
            if end != "none":
                await self.close(abort=end == "abort")
        return self.result()

    def result(self) -> SimulationResult:
        return SimulationResult(
            call_sid=self.call_sid,
            stream_sid=self.stream_sid,
            frames_sent=dict(self.frames_sent),
            messages_sent=self._messages_sent,
            close_code=self.close_code,
            close_reason=self.close_reason,
            server_closed_early=self.server_closed,
        )
