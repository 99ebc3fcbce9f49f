"""A local stand-in for the ElevenLabs Scribe v2 realtime websocket, for tests and benchmarks.

:class:`ScribeEmulator` speaks the wire protocol as strictly as the reference describes it:
query-string configuration, ``xi-api-key`` auth, ``session_started`` with a config echo,
strict validation of every ``input_audio_chunk``, manual commits (plus the 90 s
auto-commit), ``committed_transcript`` (+ ``_with_timestamps``), occasional partials, and
``{"message_type": <type>, "error": <text>}`` errors followed by a close.

The rules the reference marks *observed* on the live service are followed exactly: a
commit with less than 0.3 s of audio since the previous commit (an empty one included) is
answered with ``commit_throttled`` (the live text, with the actual seconds), no committed
transcript, and a close 1000 with reason ``commit_throttled``; ``auth_error`` is followed by
a close 1000 without a reason; a commit of 0.3 s or more without speech gets an empty
``committed_transcript``. Rules the reference does not support are off by default: chunks
of any size are accepted (the official SDK sends 8,192 bytes), and the chunk-size cap and a
commit-frequency throttle exist only as opt-in faults (``max_chunk_ms``,
``min_commit_interval_s``).

Recognition is synthetic (see :mod:`callbridge.testing.speech`): the emulator finds voiced
runs in the audio it received and reports them, never inventing words. In ``"tones"`` mode
each run is the word ``tone<freq>`` (e.g. ``tone550``); in ``"duration"`` mode the text is
``[emulated: 1.8 s of speech]`` and each run is the word ``speech``.

Only manual commits are emulated: ``commit_strategy=vad`` is accepted (and echoed) but the
emulator never commits on silence, only on client commits and the auto-commit.

Faults are injected deterministically (:meth:`ScribeEmulator.refuse_connections`,
:meth:`ScribeEmulator.fail_after_audio` and the timing attributes), and every session is
recorded in :attr:`ScribeEmulator.sessions` for assertions.

Example::

    async with ScribeEmulator(transcriber="tones") as emulator:
        options = ScribeOptions(url=emulator.url, api_key=emulator.api_key)
        ...
        assert emulator.sessions[0].committed == ["tone400 tone550"]

Standalone: ``python -m callbridge.testing.scribe_emulator --port 8765 --api-key K``.
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import collections
import contextlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from callbridge import event_loop
from callbridge.testing.speech import (
    DetectedWord,
    GrowingVoicing,
    Pcm16,
    detect_words,
    ulaw_to_pcm16,
)
from callbridge.testing.speech_script import SpeechScript, TimedToken

REALTIME_PATH = "/v1/speech-to-text/realtime"
MODEL_ID = "scribe_v2_realtime"
DEFAULT_AUDIO_FORMAT = "pcm_16000"
AUDIO_FORMAT_RATES: Mapping[str, int] = {
    "pcm_8000": 8000,
    "pcm_16000": 16000,
    "pcm_22050": 22050,
    "pcm_24000": 24000,
    "pcm_44100": 44100,
    "pcm_48000": 48000,
    "ulaw_8000": 8000,
}
KNOWN_QUERY_PARAMS = frozenset(
    {
        "model_id",
        "audio_format",
        "commit_strategy",
        "language_code",
        "secondary_languages",
        "include_timestamps",
        "include_language_detection",
        "vad_silence_threshold_secs",
        "vad_threshold",
        "min_speech_duration_ms",
        "min_silence_duration_ms",
        "keyterms",
        "no_verbatim",
        "entity_detection",
        "entity_redaction",
        "entity_redaction_mode",
        "transcript_edit",
        "filter_background_audio",
        "enable_logging",
        "token",
        "max_tokens_to_recompute",
    }
)
CLIENT_FIELDS = frozenset(
    {"message_type", "audio_base_64", "commit", "sample_rate", "previous_text"}
)
AUTH_ERROR_TEXT = "You must be authenticated to use this endpoint."
MIN_COMMIT_AUDIO_S = 0.3  # observed on the live service (reference §2.2)
COMMIT_THROTTLED_TEXT = (
    "Commit request ignored: only {seconds}s of uncommitted audio. "
    "You need at least 0.3s of uncommitted audio before committing."
)
MAX_KEYTERMS = 50
MAX_KEYTERM_CHARS = 20
SERVER_FAULT_TYPES = frozenset(
    {"error", "transcriber_error", "queue_overflow", "resource_exhausted"}
)

Transcriber = Literal["duration", "tones"]


@dataclass(frozen=True, slots=True)
class ReceivedChunk:
    """One valid ``input_audio_chunk`` as the emulator received it (audio decoded)."""

    audio: bytes
    commit: bool
    previous_text: str | None
    received_at: float  # event-loop time


@dataclass(slots=True)
class EmulatedSession:
    """Everything one websocket session did, for assertions.

    ``commits`` holds the byte offset into :attr:`audio` of every client commit;
    ``auto_commits`` those of the emulator's own 90 s commits; ``throttled_commits`` those of
    client commits refused with ``commit_throttled``. ``committed`` holds the text
    of every committed transcript sent (client and auto commits, in order).
    """

    session_id: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    audio_format: str = DEFAULT_AUDIO_FORMAT
    ignored_params: list[str] = field(default_factory=list)
    chunks: list[ReceivedChunk] = field(default_factory=list)
    commits: list[int] = field(default_factory=list)
    auto_commits: list[int] = field(default_factory=list)
    throttled_commits: list[int] = field(default_factory=list)
    committed: list[str] = field(default_factory=list)
    partials: list[str] = field(default_factory=list)
    messages_sent: list[dict[str, Any]] = field(default_factory=list)
    errors_sent: list[dict[str, Any]] = field(default_factory=list)
    closed_code: int | None = None
    closed_reason: str | None = None
    _audio: bytearray = field(default_factory=bytearray, repr=False)
    _closed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _runner: _SessionRunner | None = field(default=None, repr=False)

    @property
    def audio(self) -> bytes:
        """All audio bytes received, concatenated."""
        return bytes(self._audio)

    @property
    def audio_bytes(self) -> int:
        return len(self._audio)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        """Wait until the websocket of this session is closed."""
        await self._closed.wait()

    def push(self, message: Mapping[str, Any]) -> None:
        """Send an arbitrary server message (e.g. an unknown type) after those queued."""
        if self._runner is None or self.closed:
            raise RuntimeError("the session is not running")
        self._runner.send(dict(message))


@dataclass(frozen=True, slots=True)
class _AudioFault:
    after_ms: float
    error_type: str | None
    close_code: int | None


@dataclass(frozen=True, slots=True)
class _Outgoing:
    message: dict[str, Any] | None
    not_before: float = 0.0
    close_code: int | None = None
    close_reason: str = ""
    close: bool = False  # close after sending; close_code None then means an abrupt abort


class ScribeEmulator:
    """A Scribe v2 realtime websocket server on 127.0.0.1 (port 0 picks a free port).

    Args:
        api_key: the accepted ``xi-api-key``; None accepts any key.
        transcriber: ``"tones"`` (``tone<freq>`` words) or ``"duration"``.
        auth_failure: ``"message"`` (upgrade, send ``auth_error``, close) or ``"handshake"``
            (reject the upgrade with HTTP 403).
        max_chunk_ms: larger chunks get ``chunk_size_exceeded`` (an opt-in fault: the live
            maximum is not published; None accepts any size).
        auto_commit_s: uncommitted audio after which the emulator commits by itself.
        commit_delay_s: delay before committed transcripts are sent.
        min_commit_interval_s: client commits closer together (wall clock) also get
            ``commit_throttled`` (an opt-in fault: whether the live service limits commit
            frequency is unknown). The observed 0.3 s audio rule always applies.
        session_time_limit_s: audio seconds per session before ``session_time_limit_exceeded``.
        idle_timeout_s: no client message for this long closes the socket with 1000.
        echo_audio_format: report this ``audio_format`` in ``session_started`` instead of
            the one in use (to test a client's echo check).
        partial_interval_ms: audio between partial transcripts (0 turns partials off).
        script: scripted text for keyed utterances (see
            :mod:`callbridge.testing.speech_script`).

    The timing and fault attributes are plain attributes: change them between sessions.
    """

    def __init__(
        self,
        api_key: str | None = "test-key",
        transcriber: Transcriber = "duration",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        auth_failure: Literal["message", "handshake"] = "message",
        max_chunk_ms: int | None = None,
        auto_commit_s: float = 90.0,
        commit_delay_s: float = 0.0,
        min_commit_interval_s: float | None = None,
        session_time_limit_s: float | None = None,
        idle_timeout_s: float | None = None,
        echo_audio_format: str | None = None,
        partial_interval_ms: int = 500,
        default_language_code: str = "en",
        script: SpeechScript | None = None,
    ) -> None:
        if transcriber not in ("duration", "tones"):
            raise ValueError(f"transcriber must be 'duration' or 'tones', not {transcriber!r}")
        self.api_key = api_key
        self.transcriber: Transcriber = transcriber
        self.host = host
        self.port = port
        self.auth_failure = auth_failure
        self.max_chunk_ms = max_chunk_ms
        self.auto_commit_s = auto_commit_s
        self.commit_delay_s = commit_delay_s
        self.min_commit_interval_s = min_commit_interval_s
        self.session_time_limit_s = session_time_limit_s
        self.idle_timeout_s = idle_timeout_s
        self.echo_audio_format = echo_audio_format
        self.partial_interval_ms = partial_interval_ms
        self.default_language_code = default_language_code
        self.script = script
        self.sessions: list[EmulatedSession] = []
        self.connection_attempts = 0
        self._refusals: collections.deque[int] = collections.deque()
        self._audio_faults: collections.deque[_AudioFault] = collections.deque()
        self._server: Server | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening; :attr:`url` is valid afterwards."""
        if self._server is not None:
            return
        self._server = await serve(
            self._run_session,
            self.host,
            self.port,
            process_request=self._check_handshake,
            max_size=16 * 1024 * 1024,  # large chunks must reach chunk_size_exceeded
            ping_interval=None,
            close_timeout=2.0,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close every session (code 1001) and stop listening."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        await server.wait_closed()

    async def __aenter__(self) -> ScribeEmulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:PORT/v1/speech-to-text/realtime`` (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        return f"ws://{self.host}:{self.port}{REALTIME_PATH}"

    # -- fault injection -------------------------------------------------------------------

    def refuse_connections(self, count: int = 1, status: int = 503) -> None:
        """Reject the next ``count`` websocket upgrades with HTTP ``status``."""
        self._refusals.extend([status] * count)

    def fail_after_audio(
        self,
        ms: float,
        error_type: str | None = "transcriber_error",
        close_code: int | None = 1011,
        sessions: int = 1,
    ) -> None:
        """Make each of the next ``sessions`` sessions fail once it received ``ms`` of audio.

        With ``error_type`` the emulator sends that error, then closes with ``close_code``.
        With ``error_type=None`` it closes abruptly: with ``close_code`` and no error message,
        or, if ``close_code`` is None too, by dropping the TCP connection (the client sees 1006).
        """
        self._audio_faults.extend([_AudioFault(ms, error_type, close_code)] * sessions)

    # -- handshake -------------------------------------------------------------------------

    def _authorized(self, headers: Headers) -> bool:
        return self.api_key is None or headers.get("xi-api-key") == self.api_key

    def _check_handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        self.connection_attempts += 1
        if self._refusals:
            status = self._refusals.popleft()
            return connection.respond(status, f"{_phrase(status)}\n")
        if urlsplit(request.path).path != REALTIME_PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        if self.auth_failure == "handshake" and not self._authorized(request.headers):
            return connection.respond(HTTPStatus.FORBIDDEN, f"{AUTH_ERROR_TEXT}\n")
        return None

    async def _run_session(self, connection: ServerConnection) -> None:
        request = connection.request
        assert request is not None  # set once the handshake succeeded
        parts = urlsplit(request.path)
        session = EmulatedSession(
            session_id=uuid.uuid4().hex,
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers={name.lower(): value for name, value in request.headers.raw_items()},
        )
        self.sessions.append(session)
        fault = self._audio_faults.popleft() if self._audio_faults else None
        session._runner = _SessionRunner(self, connection, session, fault)
        try:
            await session._runner.run()
        finally:
            session._runner = None
            session.closed_code = connection.close_code
            session.closed_reason = connection.close_reason
            session._closed.set()


class _SessionRunner:
    """The protocol state of one emulated session."""

    def __init__(
        self,
        emulator: ScribeEmulator,
        connection: ServerConnection,
        session: EmulatedSession,
        fault: _AudioFault | None,
    ) -> None:
        self.emulator = emulator
        self.connection = connection
        self.session = session
        self.fault = fault
        self.loop = asyncio.get_running_loop()
        self.outbox: asyncio.Queue[_Outgoing] = asyncio.Queue()
        self.finished = False  # a close is queued; later client messages are discarded
        self.sample_rate = 16000
        self.bytes_per_ms = 32
        self.include_timestamps = False
        self.language_code = ""
        self.commit_strategy = "manual"
        self.keyterms: list[str] = []
        self.messages_received = 0
        self.segment: list[Pcm16] = []
        self.segment_bytes = 0
        self.segment_start_ms = 0.0
        self.voicing = GrowingVoicing(self.sample_rate)  # the segment's, kept between partials
        self.audio_since_partial_ms = 0.0
        self.last_partial = ""
        self.last_client_commit_at: float | None = None

    # -- plumbing --------------------------------------------------------------------------

    async def run(self) -> None:
        writer = asyncio.create_task(self._write_loop())
        try:
            request = self.connection.request
            assert request is not None  # the handshake is done
            if not self.emulator._authorized(request.headers):
                # Observed: the live service closes with 1000 (no reason) after auth_error.
                self._fail("auth_error", AUTH_ERROR_TEXT, close_code=1000, close_reason="")
            elif (problem := self._configure()) is not None:
                self._fail("invalid_request", problem)
            else:
                self.send(self._session_started())
            await self._read_loop()
        finally:
            if self.finished:
                with contextlib.suppress(ConnectionClosed):
                    await writer
            else:
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)

    async def _read_loop(self) -> None:
        idle_timeout = self.emulator.idle_timeout_s
        while True:
            try:
                if idle_timeout is not None and not self.finished:
                    async with asyncio.timeout(idle_timeout):
                        frame = await self.connection.recv()
                else:
                    frame = await self.connection.recv()
            except TimeoutError:
                self._close(1000, "idle timeout")
                continue
            except ConnectionClosed:
                return
            if not self.finished:
                self._handle_frame(frame)

    async def _write_loop(self) -> None:
        while True:
            item = await self.outbox.get()
            delay = item.not_before - self.loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if item.message is not None:
                await self.connection.send(json.dumps(item.message))
                self.session.messages_sent.append(item.message)
            if item.close:
                if item.close_code is None:
                    self.connection.transport.abort()
                else:
                    await self.connection.close(item.close_code, item.close_reason)
                return

    def send(self, message: dict[str, Any], delay_s: float = 0.0) -> None:
        self.outbox.put_nowait(_Outgoing(message, not_before=self.loop.time() + delay_s))

    def _close(self, code: int | None, reason: str) -> None:
        self.finished = True
        self.outbox.put_nowait(_Outgoing(None, close=True, close_code=code, close_reason=reason))

    def _fail(
        self,
        error_type: str,
        text: str,
        close_code: int | None = None,
        close_reason: str | None = None,
    ) -> None:
        """Send ``{"message_type": error_type, "error": text}``, then close (reason: the type)."""
        message = {"message_type": error_type, "error": text}
        self.session.errors_sent.append(message)
        self.send(message)
        if close_code is None:
            close_code = 1011 if error_type in SERVER_FAULT_TYPES else 1008
        self._close(close_code, error_type if close_reason is None else close_reason)

    # -- session set-up --------------------------------------------------------------------

    def _configure(self) -> str | None:
        """Apply the query string; a problem is returned as ``invalid_request`` text."""
        query = self.session.query
        self.session.ignored_params = sorted(set(query) - KNOWN_QUERY_PARAMS)

        def first(name: str) -> str | None:
            values = query.get(name)
            return values[0] if values else None

        model_id = first("model_id")
        if model_id is None:
            return "model_id is required"
        if model_id != MODEL_ID:
            return f"Invalid model_id {model_id!r}"
        audio_format = first("audio_format") or DEFAULT_AUDIO_FORMAT
        if audio_format not in AUDIO_FORMAT_RATES:
            return f"Invalid audio_format {audio_format!r}"
        commit_strategy = first("commit_strategy") or "manual"
        if commit_strategy not in ("manual", "vad"):
            return f"Invalid commit_strategy {commit_strategy!r}"
        include_timestamps = first("include_timestamps") or "false"
        if include_timestamps not in ("true", "false"):
            return f"include_timestamps must be true or false, not {include_timestamps!r}"
        keyterms = query.get("keyterms", [])
        if len(keyterms) > MAX_KEYTERMS:
            return f"At most {MAX_KEYTERMS} keyterms are allowed"
        if any(len(term) > MAX_KEYTERM_CHARS for term in keyterms):
            return f"Keyterms must be at most {MAX_KEYTERM_CHARS} characters"
        self.session.audio_format = audio_format
        self.sample_rate = AUDIO_FORMAT_RATES[audio_format]
        self.voicing = GrowingVoicing(self.sample_rate)
        bytes_per_sample = 1 if audio_format.startswith("ulaw") else 2
        self.bytes_per_ms = self.sample_rate * bytes_per_sample // 1000
        self.include_timestamps = include_timestamps == "true"
        self.language_code = first("language_code") or ""
        self.commit_strategy = commit_strategy
        self.keyterms = keyterms
        return None

    def _session_started(self) -> dict[str, Any]:
        echo_format = self.emulator.echo_audio_format or self.session.audio_format
        return {
            "message_type": "session_started",
            "session_id": self.session.session_id,
            "config": {
                "sample_rate": self.sample_rate,
                "audio_format": echo_format,
                "language_code": self.language_code or None,
                # The live service names this vad_commit_strategy and has sent it as a bool.
                "vad_commit_strategy": self.commit_strategy == "vad",
                "vad_silence_threshold_secs": 1.5,
                "vad_threshold": 0.4,
                "min_speech_duration_ms": 100,
                "min_silence_duration_ms": 100,
                "max_tokens_to_recompute": 5,
                "model_id": MODEL_ID,
                "disable_logging": False,
                "include_timestamps": self.include_timestamps,
                "include_language_detection": False,
                "keyterms": list(self.keyterms),
                "no_verbatim": False,
            },
        }

    # -- client messages -------------------------------------------------------------------

    def _handle_frame(self, frame: str | bytes) -> None:
        first_message = self.messages_received == 0
        self.messages_received += 1
        if isinstance(frame, bytes):
            self._fail("input_error", "Binary frames are not supported; send JSON text messages")
            return
        try:
            message = json.loads(frame)
        except ValueError:
            self._fail("input_error", "Message is not valid JSON")
            return
        if not isinstance(message, dict):
            self._fail("input_error", "Message must be a JSON object")
            return
        problem = _message_problem(message, self.sample_rate, first_message)
        if problem is not None:
            self._fail("input_error", problem)
            return
        try:
            audio = binascii.a2b_base64(message["audio_base_64"], strict_mode=True)
        except (binascii.Error, ValueError):
            self._fail("input_error", "audio_base_64 is not valid base64")
            return
        if self.session.audio_format != "ulaw_8000" and len(audio) % 2:
            self._fail("input_error", "PCM audio must hold whole 16-bit samples")
            return
        chunk_ms = len(audio) / self.bytes_per_ms
        max_chunk_ms = self.emulator.max_chunk_ms
        if max_chunk_ms is not None and chunk_ms > max_chunk_ms:
            self._fail(
                "chunk_size_exceeded",
                f"Audio chunk of {chunk_ms:.0f} ms exceeds the maximum of {max_chunk_ms} ms",
            )
            return
        commit = bool(message["commit"])
        previous_text = message.get("previous_text")
        self.session.chunks.append(ReceivedChunk(audio, commit, previous_text, self.loop.time()))
        if audio:
            self._accept_audio(audio)
            if self.finished:
                return
        if commit:
            self._client_commit()
        elif audio:
            self._maybe_partial(chunk_ms)

    def _accept_audio(self, audio: bytes) -> None:
        self.session._audio.extend(audio)
        total_ms = self.session.audio_bytes / self.bytes_per_ms
        limit_s = self.emulator.session_time_limit_s
        if limit_s is not None and total_ms > limit_s * 1000:
            self._fail(
                "session_time_limit_exceeded",
                "Maximum session duration reached. Please start a new session "
                "or upgrade your subscription.",
            )
            return
        if self.fault is not None and total_ms >= self.fault.after_ms:
            fault, self.fault = self.fault, None
            if fault.error_type is not None:
                self._fail(fault.error_type, "Emulated failure", fault.close_code)
            else:
                self._close(fault.close_code, "emulated abrupt close")
            return
        if self.session.audio_format == "ulaw_8000":
            pcm = ulaw_to_pcm16(audio)
        else:
            pcm = np.frombuffer(audio, dtype="<i2").astype(np.int16)
        self.segment.append(pcm)
        self.segment_bytes += len(audio)
        if self.segment_bytes >= self.emulator.auto_commit_s * 1000 * self.bytes_per_ms:
            self.session.auto_commits.append(self.session.audio_bytes)
            self._commit()

    def _client_commit(self) -> None:
        uncommitted_s = self.segment_bytes / self.bytes_per_ms / 1000
        if uncommitted_s < MIN_COMMIT_AUDIO_S:
            # The live text shows two decimals; truncated here so that 0.299 s never reads
            # as "only 0.30s ... at least 0.3s".
            seconds = f"{int(uncommitted_s * 100) / 100:.2f}"
            self.session.throttled_commits.append(self.session.audio_bytes)
            self._fail(
                "commit_throttled",
                COMMIT_THROTTLED_TEXT.format(seconds=seconds),
                close_code=1000,
            )
            return
        now = self.loop.time()
        interval = self.emulator.min_commit_interval_s
        if (
            interval is not None
            and self.last_client_commit_at is not None
            and now - self.last_client_commit_at < interval
        ):
            self.session.throttled_commits.append(self.session.audio_bytes)
            self._fail(
                "commit_throttled", "Too many commits in a short period of time", close_code=1000
            )
            return
        self.last_client_commit_at = now
        self.session.commits.append(self.session.audio_bytes)
        self._commit()

    # -- recognition -----------------------------------------------------------------------

    def _recognise(self) -> tuple[str, list[DetectedWord]]:
        if not self.segment:
            return "", []
        pcm = np.concatenate(self.segment)
        words = detect_words(
            pcm,
            sample_rate=self.sample_rate,
            require_key=self.emulator.transcriber == "tones",
            voicing=self.voicing,
        )
        return transcript_text(words, self.emulator.transcriber), words

    def _spoken(self, text: str, words: list[DetectedWord]) -> tuple[str, list[TimedToken]]:
        """The transcript and its timed words, scripted where the script says so."""
        transcriber = self.emulator.transcriber
        script = self.emulator.script
        if script is None:
            return text, [
                TimedToken(_word_text(w, transcriber), w.start_ms, w.end_ms) for w in words
            ]
        rendered = script.render(words, lambda w: _word_text(w, transcriber))
        timed = [token for token, _ in rendered]
        if any(utterance is not None for _, utterance in rendered):
            text = " ".join(token.text for token in timed)
        return text, timed

    def _commit(self) -> None:
        text, words = self._spoken(*self._recognise())
        delay = self.emulator.commit_delay_s
        self.session.committed.append(text)
        self.send({"message_type": "committed_transcript", "text": text}, delay)
        if self.include_timestamps:
            offset_s = self.segment_start_ms / 1000
            self.send(
                {
                    "message_type": "committed_transcript_with_timestamps",
                    "text": text,
                    "language_code": self.language_code or self.emulator.default_language_code,
                    "words": [
                        {
                            "text": word.text,
                            "start": round(offset_s + word.start_ms / 1000, 3),
                            "end": round(offset_s + word.end_ms / 1000, 3),
                            "type": "word",
                            "logprob": 0.0,
                        }
                        for word in words
                    ],
                },
                delay,
            )
        self.segment_start_ms += self.segment_bytes / self.bytes_per_ms
        self.segment = []
        self.segment_bytes = 0
        self.voicing = GrowingVoicing(self.sample_rate)
        self.audio_since_partial_ms = 0.0
        self.last_partial = ""

    def _maybe_partial(self, chunk_ms: float) -> None:
        interval = self.emulator.partial_interval_ms
        if interval <= 0:
            return
        self.audio_since_partial_ms += chunk_ms
        if self.audio_since_partial_ms < interval:
            return
        self.audio_since_partial_ms = 0.0
        text, _ = self._spoken(*self._recognise())
        if text and text != self.last_partial:
            self.last_partial = text
            self.session.partials.append(text)
            self.send({"message_type": "partial_transcript", "text": text})


def transcript_text(words: list[DetectedWord], transcriber: Transcriber) -> str:
    """The transcript the emulator reports for ``words`` (empty when there is no speech)."""
    if not words:
        return ""
    if transcriber == "tones":
        return " ".join(_word_text(word, transcriber) for word in words)
    voiced_s = sum(word.duration_ms for word in words) / 1000
    return f"[emulated: {voiced_s:.1f} s of speech]"


def _word_text(word: DetectedWord, transcriber: Transcriber) -> str:
    return f"tone{word.freq_hz}" if transcriber == "tones" else "speech"


def _message_problem(message: dict[str, Any], sample_rate: int, first_message: bool) -> str | None:
    """Why ``message`` is not a valid ``input_audio_chunk`` (None when it is)."""
    message_type = message.get("message_type")
    if message_type != "input_audio_chunk":
        return f"Unsupported message_type {message_type!r}; only input_audio_chunk is accepted"
    unknown = sorted(set(message) - CLIENT_FIELDS)
    if unknown:
        return f"Unknown fields: {', '.join(unknown)}"
    if not isinstance(message.get("audio_base_64"), str):
        return "audio_base_64 is required and must be a string"
    if type(message.get("commit")) is not bool:
        return "commit is required and must be a boolean"
    rate = message.get("sample_rate")
    if type(rate) is not int:
        return "sample_rate is required and must be an integer"
    if rate != sample_rate:
        return f"sample_rate {rate} does not match the session's audio format ({sample_rate} Hz)"
    previous_text = message.get("previous_text")
    if previous_text is not None:
        if not isinstance(previous_text, str):
            return "previous_text must be a string"
        if not first_message:
            return "previous_text is only allowed on the first audio chunk"
    return None


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


async def _serve(args: argparse.Namespace) -> None:
    emulator = ScribeEmulator(
        api_key=args.api_key, transcriber=args.transcriber, host=args.host, port=args.port
    )
    async with emulator:
        print(f"Scribe emulator listening on {emulator.url}", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    """Run the emulator standalone until interrupted."""
    parser = argparse.ArgumentParser(description="Local emulator of ElevenLabs Scribe v2 realtime")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", default="test-key", help="accepted xi-api-key")
    parser.add_argument("--transcriber", choices=["duration", "tones"], default="duration")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        event_loop.run(_serve(args), "auto")


if __name__ == "__main__":
    main()
