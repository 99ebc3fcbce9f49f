"""One websocket to Scribe v2 realtime: open and verify, send audio and commits, receive.

:class:`ScribeConnection` is deliberately thin: no reconnect, no buffering, no pacing.
The bridge owns those policies; this class owns the wire protocol and turns every
failure into a typed :class:`~callbridge.scribe.errors.ScribeError`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from types import TracebackType
from typing import Any

import orjson
import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from callbridge.scribe.errors import (
    AUDIO_FORMAT_MISMATCH,
    CLOSED,
    CONNECT_FAILED,
    CONNECT_TIMEOUT,
    PROTOCOL,
    ScribeError,
    handshake_error,
)
from callbridge.scribe.messages import (
    DOCUMENTED_IGNORED_TYPES,
    CommittedTranscript,
    FinalTranscript,
    PartialTranscript,
    ServerWarning,
    SessionStarted,
    UnknownMessage,
    parse_message,
)
from callbridge.scribe.options import ScribeOptions

log = structlog.get_logger(__name__)

ReceivedMessage = PartialTranscript | FinalTranscript | CommittedTranscript | ServerWarning
"""What :meth:`ScribeConnection.receive` returns."""

MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # a 90 s committed transcript with timestamps is ~100 KB
PING_INTERVAL_S = 20.0
PING_TIMEOUT_S = 60.0  # generous: only a dead peer misses pongs for a minute
CLOSE_TIMEOUT_S = 3.0
SERVER_CLOSE_WAIT_S = 1.0  # after an error message, how long to wait for the server's close
MAX_TRACKED_UNKNOWN_TYPES = 64


class ScribeConnection:
    """An open, verified Scribe realtime session. Create it with :meth:`open`."""

    def __init__(
        self, websocket: ClientConnection, options: ScribeOptions, started: SessionStarted
    ) -> None:
        self._ws = websocket
        self.options = options
        self.session_id = started.session_id
        self.config = started.config
        self.chunks_sent = 0
        self.audio_bytes_sent = 0
        self.commits_sent = 0
        self._messages_sent = 0
        self._closing = False
        self._failure: ScribeError | None = None  # the error that ended this session
        self._unknown_types_logged: set[str] = set()

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, options: ScribeOptions) -> ScribeConnection:
        """Connect, wait for ``session_started`` and check the echoed audio format.

        The whole sequence is bounded by ``options.connect_timeout_s``. Raises
        :class:`ScribeError` on any failure.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + options.connect_timeout_s
        websocket = await _connect(options)
        try:
            started = await _await_session_started(websocket, deadline)
        except BaseException:
            await _abandon(websocket)
            raise
        connection = cls(websocket, options, started)
        echoed = started.audio_format
        log.info(
            "scribe.session_started",
            session_id=started.session_id,
            requested_audio_format=options.audio_format,
            config=dict(started.config),
        )
        if echoed != options.audio_format:
            await connection.close(reason="audio format mismatch")
            raise ScribeError(
                AUDIO_FORMAT_MISMATCH,
                f"requested audio_format {options.audio_format!r}, the session runs {echoed!r}",
                retryable=False,
            )
        return connection

    # -- sending ---------------------------------------------------------------------------

    async def send_audio(self, audio: bytes, *, previous_text: str | None = None) -> None:
        """Send one ``input_audio_chunk`` (the bridge sends whole 20 ms frames; the service
        takes any size, but 16-bit PCM must hold whole samples).

        ``previous_text`` (context for the model) is only allowed on the connection's first
        message; it is trimmed to its last ``previous_text_max`` characters.
        """
        if self.options.bytes_per_ms == 16 and len(audio) % 2:
            raise ValueError(f"PCM audio of {len(audio)} bytes is not whole 16-bit samples")
        payload: dict[str, Any] = {
            "message_type": "input_audio_chunk",
            "audio_base_64": base64.b64encode(audio).decode("ascii"),
            "commit": False,
            "sample_rate": self.options.sample_rate,
        }
        if previous_text is not None:
            if self._messages_sent:
                raise ValueError("previous_text is only allowed on the connection's first chunk")
            trimmed = previous_text[-self.options.previous_text_max :].lstrip()
            if trimmed:
                payload["previous_text"] = trimmed
        await self._send(payload)
        self.chunks_sent += 1
        self.audio_bytes_sent += len(audio)

    async def commit(self) -> None:
        """Close the current segment; its ``committed_transcript`` follows.

        The service refuses a commit with less than 0.3 s of audio since the previous one
        (``commit_throttled``, and the session is lost): the caller keeps that rule, see
        :class:`~callbridge.call.commit_windows.CommitWindowLedger`.
        """
        await self._send(
            {
                "message_type": "input_audio_chunk",
                "audio_base_64": "",
                "commit": True,
                "sample_rate": self.options.sample_rate,
            }
        )
        self.commits_sent += 1

    async def _send(self, payload: dict[str, Any]) -> None:
        if self._failure is not None:
            raise self._failure.with_close_code(self._failure.close_code) from None
        if self._closing:
            raise ScribeError(CLOSED, "the connection was closed by the client", retryable=False)
        try:
            await self._ws.send(orjson.dumps(payload).decode())
        except ConnectionClosed:
            raise self._closed_error() from None
        self._messages_sent += 1

    # -- receiving -------------------------------------------------------------------------

    async def receive(self) -> ReceivedMessage:
        """The next message worth acting on.

        Unknown and unused message types are logged once per type and skipped. Server
        errors raise their typed :class:`ScribeError`; a close this side did not ask for
        raises a retryable ``closed`` error; after :meth:`close`, a non-retryable one.
        """
        while True:
            try:
                frame = await self._ws.recv()
            except ConnectionClosed:
                raise self._closed_error() from None
            try:
                message = parse_message(frame)
            except ScribeError as error:
                if error.kind == PROTOCOL:
                    self._failure = error
                    await self.close(code=1002, reason="protocol error")
                    raise
                self._failure = error
                self._failure = error.with_close_code(await self._await_server_close())
                raise self._failure from None
            if isinstance(message, UnknownMessage | SessionStarted):
                self._note_skipped(message)
                continue
            return message

    def _note_skipped(self, message: UnknownMessage | SessionStarted) -> None:
        message_type = (
            message.message_type if isinstance(message, UnknownMessage) else "session_started"
        )
        if message_type in self._unknown_types_logged:
            return
        if len(self._unknown_types_logged) < MAX_TRACKED_UNKNOWN_TYPES:
            self._unknown_types_logged.add(message_type)
        documented = message_type in DOCUMENTED_IGNORED_TYPES
        (log.debug if documented else log.warning)(
            "scribe.message_skipped",
            session_id=self.session_id,
            message_type=message_type,
            documented=documented,
        )

    async def _await_server_close(self) -> int | None:
        """After an error message: the server's close code if it closes soon; then close."""
        close_code = await _await_close_code(
            self._ws, asyncio.get_running_loop().time() + SERVER_CLOSE_WAIT_S
        )
        await self.close(reason="server reported an error")
        return close_code

    def _closed_error(self) -> ScribeError:
        if self._failure is not None:
            return self._failure.with_close_code(self._failure.close_code)
        code = self._ws.close_code
        if self._closing:
            return ScribeError(
                CLOSED, "the connection was closed by the client", retryable=False, close_code=code
            )
        reason = self._ws.close_reason or ""
        detail = f"server closed the connection{f': {reason}' if reason else ''}"
        return ScribeError(CLOSED, detail, retryable=True, close_code=code)

    # -- closing ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closing or self._ws.close_code is not None

    async def close(self, code: int = 1000, reason: str = "session ended") -> None:
        """Close the websocket (idempotent). Commit and await the transcript first."""
        if self._closing:
            return
        self._closing = True
        await self._ws.close(code, reason)

    async def __aenter__(self) -> ScribeConnection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


async def _connect(options: ScribeOptions) -> ClientConnection:
    try:
        return await connect(
            options.connect_url(),
            additional_headers={"xi-api-key": options.api_key},
            open_timeout=options.connect_timeout_s,
            ping_interval=PING_INTERVAL_S,
            ping_timeout=PING_TIMEOUT_S,
            close_timeout=CLOSE_TIMEOUT_S,
            max_size=MAX_MESSAGE_BYTES,
            # μ-law audio in base64 barely compresses; deflate cost ~8 % of the bridge's CPU.
            compression=None,
        )
    except InvalidStatus as exc:
        raise handshake_error(exc.response.status_code) from None
    except InvalidURI as exc:
        raise ScribeError(CONNECT_FAILED, f"invalid Scribe URL: {exc}", retryable=False) from None
    except TimeoutError:
        raise ScribeError(
            CONNECT_TIMEOUT,
            f"no websocket upgrade within {options.connect_timeout_s} s",
            retryable=True,
        ) from None
    except (OSError, InvalidHandshake, ConnectionClosed) as exc:
        raise ScribeError(CONNECT_FAILED, f"{type(exc).__name__}: {exc}", retryable=True) from None


async def _await_session_started(websocket: ClientConnection, deadline: float) -> SessionStarted:
    """Wait for ``session_started``, skipping warnings and unknown messages before it."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout_at(deadline):
            while True:
                try:
                    frame = await websocket.recv()
                except ConnectionClosed:
                    raise ScribeError(
                        CLOSED,
                        "server closed the connection before session_started",
                        retryable=True,
                        close_code=websocket.close_code,
                    ) from None
                try:
                    message = parse_message(frame)
                except ScribeError as error:
                    if error.kind == PROTOCOL:
                        raise
                    close_code = await _await_close_code(
                        websocket, loop.time() + SERVER_CLOSE_WAIT_S
                    )
                    raise error.with_close_code(close_code) from None
                if isinstance(message, SessionStarted):
                    return message
                if isinstance(message, ServerWarning | UnknownMessage):
                    log.warning("scribe.message_before_session_started", message=repr(message))
                    continue
                raise ScribeError(
                    PROTOCOL,
                    f"expected session_started, got {type(message).__name__}",
                    retryable=True,
                )
    except TimeoutError:
        raise ScribeError(CONNECT_TIMEOUT, "no session_started in time", retryable=True) from None


async def _await_close_code(websocket: ClientConnection, deadline: float) -> int | None:
    try:
        async with asyncio.timeout_at(deadline):
            await websocket.wait_closed()
    except TimeoutError:
        return None
    return websocket.close_code


async def _abandon(websocket: ClientConnection) -> None:
    """Close a socket that never became a session, without letting that fail the caller."""
    with contextlib.suppress(Exception):  # the original failure matters more
        await websocket.close(1000, "session not started")
