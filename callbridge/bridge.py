"""The media websocket: one Twilio stream per socket, one :class:`CallSession` per call.

``GET /twilio/media`` checks Twilio's signature before the upgrade, then reads the
Media Streams messages and drives the call's session. Every way a stream can go wrong ends
that socket alone, with a close code and a reason: malformed or binary messages, media
before ``start``, a media format other than 8 kHz μ-law, an oversized message. The call's
session is then finished as for a hang-up, so no speech that already arrived is lost.

:class:`LiveCallRegistry` knows the calls open in this process, for the status callback
(``completed`` ends a call whose socket never closed) and for graceful shutdown.
"""

from __future__ import annotations

import asyncio
import os

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from callbridge.context import EVENT_WRITERS, LIVE_CALLS, SETTINGS, SINK
from callbridge.http_errors import json_error
from callbridge.models import EndReason
from callbridge.session import INTERNAL_PARAMETER_PREFIX, CallSession, StreamDescription
from callbridge.twilio.protocol import (
    MediaFrame,
    ProtocolError,
    Stop,
    StreamStart,
    check_media_format,
    parse_message,
)
from callbridge.twilio.routes import SIGNATURE_CHECKER

MEDIA_PATH = "/twilio/media"
log = structlog.get_logger("callbridge.bridge")


class LiveCallRegistry:
    """The calls whose media stream is open in this process."""

    def __init__(self) -> None:
        self._calls: dict[str, tuple[CallSession, web.WebSocketResponse]] = {}
        self.draining = False

    def add(self, session: CallSession, ws: web.WebSocketResponse) -> bool:
        sid = session.stream.call_sid
        if sid in self._calls:
            return False
        self._calls[sid] = (session, ws)
        return True

    def remove(self, session: CallSession) -> None:
        sid = session.stream.call_sid
        if self._calls.get(sid, (None,))[0] is session:
            del self._calls[sid]

    def is_live(self, call_sid: str) -> bool:
        return call_sid in self._calls

    def __len__(self) -> int:
        return len(self._calls)

    async def end_call(self, call_sid: str, reason: EndReason) -> bool:
        entry = self._calls.get(call_sid)
        if entry is None:
            return False
        session, ws = entry
        await session.finish(reason)
        await ws.close(code=WSCloseCode.OK, message=b"call ended")
        return True

    async def end_all(self, reason: EndReason, timeout_s: float) -> None:
        """Finish every live call at once (shutdown), bounded by ``timeout_s``."""
        calls = list(self._calls)
        if not calls:
            return
        log.info("bridge.ending_live_calls", calls=len(calls), reason=str(reason))
        results = asyncio.gather(
            *(self.end_call(sid, reason) for sid in calls), return_exceptions=True
        )
        try:
            await asyncio.wait_for(results, timeout_s)
        except TimeoutError:
            log.error("bridge.shutdown_timeout", calls=len(self._calls), timeout_s=timeout_s)


REGISTRY = web.AppKey("live_call_registry", LiveCallRegistry)


def _close_reason(text: str) -> bytes:
    return text.encode("utf-8")[:120]


async def media_websocket(request: web.Request) -> web.StreamResponse:
    app = request.app
    registry = app[REGISTRY]
    if registry.draining:
        return json_error(503, "draining", "the bridge is shutting down; no new streams")
    if not app[SIGNATURE_CHECKER].check_websocket(request):
        log.warning("media.signature_rejected", peer=request.remote)
        return json_error(403, "invalid_signature", "missing or wrong X-Twilio-Signature")

    settings = app[SETTINGS]
    ws = web.WebSocketResponse(max_msg_size=settings.server.max_message_bytes, autoping=True)
    await ws.prepare(request)
    session: CallSession | None = None
    reason = EndReason.HANGUP
    bound = log
    try:
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                try:
                    event = parse_message(message.data)
                    if isinstance(event, MediaFrame):
                        if session is None:
                            raise ProtocolError("media before start")
                        session.on_media(event.track, event.timestamp_ms, event.payload)
                    elif isinstance(event, StreamStart):
                        if session is not None:
                            raise ProtocolError("a second start on one stream")
                        session = _start_session(app, event, ws)
                        bound = session.log
                    elif isinstance(event, Stop):
                        reason = EndReason.STOP
                        break
                    # connected, dtmf, mark and unknown events carry nothing for the bridge
                except ProtocolError as exc:
                    code = (
                        WSCloseCode.UNSUPPORTED_DATA
                        if exc.reason.startswith(("unsupported", "media format"))
                        else WSCloseCode.PROTOCOL_ERROR
                    )
                    bound.warning("media.protocol_error", reason=exc.reason)
                    reason = EndReason.ERROR
                    await ws.close(code=code, message=_close_reason(exc.reason))
                    break
                except _StreamRefused as exc:
                    bound.warning("media.stream_refused", reason=str(exc))
                    await ws.close(
                        code=WSCloseCode.POLICY_VIOLATION, message=_close_reason(str(exc))
                    )
                    break
            elif message.type is WSMsgType.BINARY:
                bound.warning("media.binary_frame")
                reason = EndReason.ERROR
                await ws.close(
                    code=WSCloseCode.UNSUPPORTED_DATA,
                    message=b"binary frames are not part of the Media Streams protocol",
                )
                break
            elif message.type is WSMsgType.ERROR:
                bound.warning("media.socket_error", error=str(ws.exception()))
                reason = EndReason.ERROR
                break
    finally:
        if session is not None:
            try:
                await asyncio.shield(session.finish(reason))
            finally:
                registry.remove(session)
    if not ws.closed:
        await ws.close(code=WSCloseCode.OK, message=b"stream ended")
    return ws


class _StreamRefused(Exception):
    pass


def _start_session(
    app: web.Application, start: StreamStart, ws: web.WebSocketResponse
) -> CallSession:
    check_media_format(start)
    registry = app[REGISTRY]
    if not start.tracks:
        raise ProtocolError("start.tracks is empty")
    params = start.custom_parameters
    session = CallSession(
        app[SETTINGS],
        StreamDescription(
            call_sid=start.call_sid,
            stream_sid=start.stream_sid,
            account_sid=start.account_sid,
            tracks=start.tracks,
            custom_parameters=params,
        ),
        app[SINK],
        writers=app[EVENT_WRITERS],
    )
    if not registry.add(session, ws):
        raise _StreamRefused("this call already has a media stream open")
    session.start(
        params.get(f"{INTERNAL_PARAMETER_PREFIX}from"), params.get(f"{INTERNAL_PARAMETER_PREFIX}to")
    )
    return session


async def healthz(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    if registry.draining:
        return web.json_response({"status": "draining"}, status=503)
    return web.json_response({"status": "ok", "live_calls": len(registry), "pid": os.getpid()})


def setup_bridge_routes(app: web.Application) -> LiveCallRegistry:
    """Add the media websocket and ``/healthz``; the registry also serves as ``LIVE_CALLS``."""
    registry = LiveCallRegistry()
    app[REGISTRY] = registry
    app[LIVE_CALLS] = registry
    app.router.add_get(MEDIA_PATH, media_websocket)
    app.router.add_get("/healthz", healthz)
    return registry
