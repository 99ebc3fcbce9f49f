"""The media websocket: one Twilio stream per socket, one :class:`CallSession` per call.

``GET /twilio/media`` checks Twilio's signature before the upgrade, then reads the
Media Streams messages and drives the call's session. Every way a stream can go wrong ends
that socket alone, with a close code and a reason: malformed or binary messages, media
before ``start``, a media format other than 8 kHz μ-law, an oversized message. The call's
session is then finished as for a hang-up, so no speech that already arrived is lost.

A ``start`` is accepted only when its ``cb_token`` is the call's stream token
(:mod:`callbridge.twilio.stream_auth`) and the call's live-call claim could be taken in the
store (:mod:`callbridge.call.stream_claims`): a call that has ended, or whose stream is live in
any process sharing the store, is refused with ``1008`` and a reason. The bridge's own
parameters (``cb_*``) stop here: the call session gets the numbers and the caller's own
parameters as plain values (:class:`~callbridge.call.session.StreamDescription`).

Limits (``[limits]``, README "Security"): beyond ``max_calls`` open media sockets a new one
is refused with ``503`` before the upgrade; a socket that sends no ``start`` within
``start_timeout_s`` is closed ``1008``; a quiet socket is pinged every ``ws_heartbeat_s``
(aiohttp's heartbeat: only when nothing arrived meanwhile, so a live stream is never pinged)
and closed when no answer comes. Calls without media or past the longest call are ended by
:func:`~callbridge.call.live_calls.watch_call_limits`. The calls open here are in
:class:`~callbridge.call.live_calls.LiveCallRegistry`.
"""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import WSCloseCode, WSMessage, WSMsgType, web

from callbridge.call.session import CallSession, StreamDescription
from callbridge.context import (
    AUDIO_SPOOL,
    CLAIMS,
    EVENT_WRITERS,
    LIVE_FEED,
    METRICS,
    REGISTRY,
    SETTINGS,
    SINK,
)
from callbridge.http_errors import json_error
from callbridge.models import EndReason
from callbridge.store.base import StoreError, StreamClaim
from callbridge.twilio.protocol import (
    MediaFrame,
    ProtocolError,
    Stop,
    StreamStart,
    TwilioMessage,
    check_media_format,
    parse_message,
)
from callbridge.twilio.signatures import SIGNATURE_CHECKER
from callbridge.twilio.stream_auth import StreamParameters, split_parameters, token_matches

log = structlog.get_logger("callbridge.twilio.media_route")

_CLOSED = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED)


def _close_reason(text: str) -> bytes:
    return text.encode("utf-8")[:120]


async def media_websocket(request: web.Request) -> web.StreamResponse:
    app = request.app
    registry = app[REGISTRY]
    if registry.draining:
        registry.refused["draining"] += 1
        return json_error(503, "draining", "the bridge is shutting down; no new streams")
    if not app[SIGNATURE_CHECKER].check_websocket(request):
        registry.refused["signature"] += 1
        log.warning("media.signature_rejected", peer=request.remote)
        return json_error(403, "invalid_signature", "missing or wrong X-Twilio-Signature")
    settings = app[SETTINGS]
    limits = settings.limits
    if limits.max_calls and registry.sockets >= limits.max_calls:
        registry.refused["max_calls"] += 1
        log.warning("media.stream_refused", reason="max_calls", max_calls=limits.max_calls)
        return json_error(
            503,
            "too_many_calls",
            f"this process takes at most {limits.max_calls} calls (CALLBRIDGE_MAX_CALLS)",
        )
    registry.sockets += 1
    try:
        return await _serve_media_socket(app, request)
    finally:
        registry.sockets -= 1


async def _serve_media_socket(app: web.Application, request: web.Request) -> web.StreamResponse:
    settings = app[SETTINGS]
    limits = settings.limits
    ws = web.WebSocketResponse(
        max_msg_size=settings.server.max_message_bytes,
        autoping=True,
        heartbeat=limits.ws_heartbeat_s or None,
    )
    await ws.prepare(request)
    stream = _MediaStream(app, ws, request.remote)
    try:
        await stream.run(asyncio.get_running_loop().time() + limits.start_timeout_s)
    finally:
        if stream.session is not None:
            await asyncio.shield(_end_session(app, stream.session, stream.reason))
    if not ws.closed:
        await ws.close(code=WSCloseCode.OK, message=b"stream ended")
    return ws


class _MediaStream:
    """One socket's Media Streams messages, read until the stream ends: :attr:`session`
    once ``start`` came, :attr:`reason` how the call's stream ended."""

    def __init__(self, app: web.Application, ws: web.WebSocketResponse, peer: str | None) -> None:
        self._app = app
        self._ws = ws
        self._peer = peer
        self._log: structlog.stdlib.BoundLogger = log  # bound to the call once it started
        self.session: CallSession | None = None
        self.reason = EndReason.HANGUP

    async def run(self, start_by: float) -> None:
        ws = self._ws
        session = self.session  # a local on the per-frame path; only _event() changes it
        while True:
            if session is not None:
                message = await ws.receive()
            else:
                received = await self._receive_start(start_by)
                if received is None:
                    return
                message = received
            if message.type is WSMsgType.TEXT:
                try:
                    event = parse_message(message.data)
                    if isinstance(event, MediaFrame):  # the per-frame path, kept inline
                        if session is None:
                            raise ProtocolError("media before start")
                        session.on_media(event.track, event.timestamp_ms, event.payload)
                    elif not await self._event(event):
                        return
                    else:
                        session = self.session
                except ProtocolError as exc:
                    await self._protocol_error(exc)
                    return
                except _StreamRefused as exc:
                    await self._refuse(exc)
                    return
            elif not await self._other(message):
                return

    async def _receive_start(self, start_by: float) -> WSMessage | None:
        """The next message while no ``start`` came, or None: none came in time."""
        try:
            return await self._ws.receive(start_by - asyncio.get_running_loop().time())
        except TimeoutError:
            limits = self._app[SETTINGS].limits
            self._app[REGISTRY].refused["start_timeout"] += 1
            log.warning(
                "media.start_timeout", peer=self._peer, start_timeout_s=limits.start_timeout_s
            )
            text = f"no start within {limits.start_timeout_s:g} s"
            await self._ws.close(code=WSCloseCode.POLICY_VIOLATION, message=_close_reason(text))
            return None

    async def _event(self, event: TwilioMessage) -> bool:
        """Any message but media; False: the stream has ended."""
        if isinstance(event, StreamStart):
            if self.session is not None:
                raise ProtocolError("a second start on one stream")
            self.session = await _start_session(self._app, event, self._ws)
            self._log = self.session.log
        elif isinstance(event, Stop):
            self.reason = EndReason.STOP
            return False
        # connected, dtmf, mark and unknown events carry nothing for the bridge
        return True

    async def _protocol_error(self, exc: ProtocolError) -> None:
        code = (
            WSCloseCode.UNSUPPORTED_DATA
            if exc.reason.startswith(("unsupported", "media format"))
            else WSCloseCode.PROTOCOL_ERROR
        )
        self._log.warning("media.protocol_error", reason=exc.reason)
        self.reason = EndReason.ERROR
        await self._ws.close(code=code, message=_close_reason(exc.reason))

    async def _refuse(self, exc: _StreamRefused) -> None:
        self._app[REGISTRY].refused[exc.kind] += 1
        self._log.warning("media.stream_refused", reason=exc.kind, detail=exc.message, **exc.call)
        await self._ws.close(code=exc.code, message=_close_reason(exc.message))

    async def _other(self, message: WSMessage) -> bool:
        """A message that is not text; False: the stream has ended."""
        if message.type is WSMsgType.BINARY:
            self._log.warning("media.binary_frame")
            self.reason = EndReason.ERROR
            await self._ws.close(
                code=WSCloseCode.UNSUPPORTED_DATA,
                message=b"binary frames are not part of the Media Streams protocol",
            )
            return False
        if message.type is WSMsgType.ERROR:
            self._log.warning("media.socket_error", error=str(self._ws.exception()))
            self.reason = EndReason.ERROR
            return False
        return message.type not in _CLOSED


async def _end_session(app: web.Application, session: CallSession, reason: EndReason) -> None:
    """Finish the call, take it off the registry, then give its claim up."""
    try:
        await session.finish(reason)
    finally:
        app[REGISTRY].remove(session)
        await app[CLAIMS].release(session.stream.call_sid)


class _StreamRefused(Exception):
    """A ``start`` that may not go ahead: closes the socket with ``code`` and ``message``."""

    def __init__(
        self,
        kind: str,
        message: str,
        start: StreamStart,
        code: int = WSCloseCode.POLICY_VIOLATION,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.code = code
        self.call = {"call_sid": start.call_sid, "stream_sid": start.stream_sid}


async def _start_session(
    app: web.Application, start: StreamStart, ws: web.WebSocketResponse
) -> CallSession:
    check_media_format(start)
    if not start.tracks:
        raise ProtocolError("start.tracks is empty")
    settings = app[SETTINGS]
    params = split_parameters(start.custom_parameters)
    if not token_matches(
        settings.twilio.stream_secret, start.account_sid, start.call_sid, params.token
    ):
        raise _StreamRefused(
            "stream_token", "missing or wrong stream token (cb_token) for this call", start
        )
    registry = app[REGISTRY]
    call_sid = start.call_sid
    if not registry.reserve(call_sid):
        raise _StreamRefused("duplicate", "this call already has a media stream open", start)
    claims = app[CLAIMS]
    claim: StreamClaim | None = None
    try:
        try:
            claim = await claims.claim(call_sid)
        except StoreError as exc:
            # The call's events survive a store outage, so the stream does too: its claim
            # is taken by the heartbeat once the store answers.
            log.error("media.claim_failed", call_sid=call_sid, error=str(exc))
            claims.defer(call_sid)
        if claim is StreamClaim.ENDED:
            raise _StreamRefused("call_ended", "this call has ended", start)
        if claim is StreamClaim.LIVE_ELSEWHERE:
            raise _StreamRefused(
                "live_elsewhere", "this call has a live media stream in another process", start
            )
        session = _new_session(app, start, params)
        registry.add(session, ws)
    except BaseException:
        registry.unreserve(call_sid)
        if claim is StreamClaim.CLAIMED or claim is None:
            await claims.release(call_sid)
        raise
    session.start()
    return session


def _new_session(app: web.Application, start: StreamStart, params: StreamParameters) -> CallSession:
    """The call's session: the stream as plain values, the bridge's parameters taken out."""
    spool = app.get(AUDIO_SPOOL)
    return CallSession(
        app[SETTINGS],
        StreamDescription(
            call_sid=start.call_sid,
            stream_sid=start.stream_sid,
            account_sid=start.account_sid,
            tracks=start.tracks,
            custom_parameters=params.custom,
            from_number=params.from_number,
            to_number=params.to_number,
        ),
        app[SINK],
        writers=app[EVENT_WRITERS],
        metrics=app[METRICS],
        partials=app[LIVE_FEED].partial,
        audio=spool.open(start.call_sid, [str(t) for t in start.tracks])
        if spool is not None
        else None,
    )
