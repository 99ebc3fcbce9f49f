"""The Twilio routes: ``POST /twilio/voice`` (TwiML), ``POST /twilio/status`` and the media
websocket (:mod:`callbridge.twilio.media_route`), at the paths of :mod:`callbridge.twilio.paths`.

Every one checks ``X-Twilio-Signature`` before doing any work (403 + JSON error otherwise),
with the app's one checker, ``app[SIGNATURE_CHECKER]`` (:mod:`callbridge.twilio.signatures`).

Nothing here makes Twilio wait: the voice answer does not hang on a slow store (Twilio gives
up after 15 s), and a finished call is ended in a background task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog
from aiohttp import web

from callbridge.context import LIVE_CALLS, LOST_CALLS, SETTINGS, STORE
from callbridge.http_errors import json_error
from callbridge.models import EndReason
from callbridge.store.base import FINAL_TWILIO_STATUSES
from callbridge.twilio.media_route import media_websocket
from callbridge.twilio.paths import MEDIA_PATH, STATUS_PATH, VOICE_PATH
from callbridge.twilio.signatures import SIGNATURE_CHECKER, TwilioSignatureChecker
from callbridge.twilio.twiml import build_stream_twiml

log = structlog.get_logger(__name__)

BACKGROUND_TASKS: web.AppKey[set[asyncio.Task[None]]] = web.AppKey("twilio_background_tasks")

# How long the voice webhook waits for the store before answering anyway.
VOICE_STORE_WAIT_S = 3.0
# Stream events (stream status callback `StreamEvent`) that end the call's transcription.
ENDING_STREAM_EVENTS = {"stream-stopped": EndReason.STOP}
SHUTDOWN_WAIT_S = 5.0


def setup_twilio_routes(app: web.Application) -> None:
    """Add the voice and status webhooks, the media websocket and the signature checker
    (needs ``app[SETTINGS]``; the media websocket also ``REGISTRY`` and ``CLAIMS``)."""
    settings = app[SETTINGS]
    app[SIGNATURE_CHECKER] = TwilioSignatureChecker.from_settings(settings)
    app[BACKGROUND_TASKS] = set()
    app.router.add_post(VOICE_PATH, voice_webhook)
    app.router.add_post(STATUS_PATH, status_callback)
    app.router.add_get(MEDIA_PATH, media_websocket)
    app.on_cleanup.append(_finish_background_tasks)


def _spawn(app: web.Application, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """Run ``coroutine`` in the background, referenced until done."""
    task = asyncio.get_running_loop().create_task(coroutine)
    tasks = app[BACKGROUND_TASKS]
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task


async def _finish_background_tasks(app: web.Application) -> None:
    running: set[asyncio.Task[None]] = app[BACKGROUND_TASKS]
    tasks = set(running)
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_WAIT_S)
    for task in pending:
        task.cancel()


def _forbidden() -> web.Response:
    return json_error(403, "invalid_signature", "missing or invalid X-Twilio-Signature")


def _optional(form: Any, key: str) -> str | None:
    value = form.get(key)
    return value if isinstance(value, str) and value else None


async def voice_webhook(request: web.Request) -> web.Response:
    """Twilio's voice webhook: record the call, answer TwiML forking its audio to the bridge."""
    app = request.app
    form = await app[SIGNATURE_CHECKER].check_form_request(request)
    if form is None:
        return _forbidden()
    call_sid = _optional(form, "CallSid")
    if call_sid is None:
        return json_error(400, "missing_call_sid", "the request has no CallSid")
    account_sid = _optional(form, "AccountSid")
    if account_sid is None:
        return json_error(400, "missing_account_sid", "the request has no AccountSid")
    from_number = _optional(form, "From")
    to_number = _optional(form, "To")
    bound = log.bind(call_sid=call_sid)

    store_task = _spawn(
        app, _record_call_requested(app, call_sid, account_sid, from_number, to_number)
    )
    _, pending = await asyncio.wait({store_task}, timeout=VOICE_STORE_WAIT_S)
    if pending:
        bound.warning("twilio.voice_store_slow", waited_s=VOICE_STORE_WAIT_S)

    try:
        twiml = build_stream_twiml(
            app[SETTINGS],
            account_sid=account_sid,
            call_sid=call_sid,
            from_number=from_number,
            to_number=to_number,
        )
    except ValueError:
        bound.exception("twilio.voice_twiml_failed")
        return json_error(500, "twiml_failed", "cannot build the TwiML answer")
    bound.info("twilio.voice_answered", direction=_optional(form, "Direction"))
    return web.Response(text=twiml, content_type="application/xml", charset="utf-8")


async def _record_call_requested(
    app: web.Application,
    call_sid: str,
    account_sid: str | None,
    from_number: str | None,
    to_number: str | None,
) -> None:
    try:
        await app[STORE].call_requested(call_sid, account_sid, from_number, to_number)
    except Exception:
        log.exception("twilio.voice_store_failed", call_sid=call_sid)


async def status_callback(request: web.Request) -> web.Response:
    """Twilio's call and stream status callbacks: record, and end the call when it is over."""
    app = request.app
    form = await app[SIGNATURE_CHECKER].check_form_request(request)
    if form is None:
        return _forbidden()
    call_sid = _optional(form, "CallSid")
    if call_sid is None:
        return json_error(400, "missing_call_sid", "the request has no CallSid")
    bound = log.bind(call_sid=call_sid)

    stream_event = _optional(form, "StreamEvent")
    if stream_event is not None:
        fields = {
            "stream_sid": _optional(form, "StreamSid"),
            "stream_name": _optional(form, "StreamName"),
            "stream_error": _optional(form, "StreamError"),
        }
        if stream_event == "stream-error":
            bound.warning("twilio.stream_error", **fields)
        else:
            bound.info("twilio.stream_event", stream_event=stream_event, **fields)
        reason = ENDING_STREAM_EVENTS.get(stream_event)
        if reason is not None:
            _schedule_end_call(app, call_sid, reason)
        return web.Response(status=204)

    call_status = _optional(form, "CallStatus")
    if call_status is None:
        bound.info("twilio.status_without_call_status")
        return web.Response(status=204)
    duration_s = _duration(form.get("CallDuration"))
    bound.info("twilio.call_status", call_status=call_status, duration_s=duration_s)
    if call_status in FINAL_TWILIO_STATUSES:
        _schedule_end_call(app, call_sid, EndReason.COMPLETED)
    try:
        await app[STORE].twilio_status(call_sid, call_status, duration_s)
    except Exception:
        bound.exception("twilio.status_store_failed", call_status=call_status)
    else:
        live_calls, lost_calls = app.get(LIVE_CALLS), app.get(LOST_CALLS)
        live_here = live_calls is not None and live_calls.is_live(call_sid)
        if call_status in FINAL_TWILIO_STATUSES and lost_calls is not None and not live_here:
            # Live in another process, or in one that is gone: see lost_calls.
            lost_calls.watch(call_sid)
    return web.Response(status=204)


def _duration(raw: Any) -> int | None:
    if not isinstance(raw, str) or not raw.strip():
        return None
    try:
        return max(0, int(raw.strip()))
    except ValueError:
        return None


def _schedule_end_call(app: web.Application, call_sid: str, reason: EndReason) -> None:
    live_calls = app.get(LIVE_CALLS)
    if live_calls is None:
        log.warning("twilio.no_live_calls_registry", call_sid=call_sid)
        return

    async def end_call() -> None:
        try:
            ended = await live_calls.end_call(call_sid, reason)
        except Exception:
            log.exception("twilio.end_call_failed", call_sid=call_sid, reason=str(reason))
            return
        log.info("twilio.end_call", call_sid=call_sid, reason=str(reason), was_live=ended)

    _spawn(app, end_call())
