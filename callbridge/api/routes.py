"""The ``/v1`` retrieval API (interface §3) and ``GET /openapi.json``.

:func:`setup_api` adds the routes and the bearer-token middleware to an application that
already carries ``SETTINGS`` and ``STORE`` (``LIVE_CALLS`` is optional). Decisions beyond
the interface:

* ``GET /v1/calls``: ``limit`` 1…``ApiSettings.max_page_size`` (default 50), ``cursor`` as
  returned in ``next_cursor``, ``status`` (``ringing``, ``live``, ``ended``) to list only
  calls in that state; anything else is ``400``.
* ``GET /v1/calls/{sid}/events``: Server-Sent Events, see
  :mod:`callbridge.api.event_stream`.
* ``GET /v1/calls/{sid}/summary``: ``409 call_not_ended`` while the call is ringing or live;
  ``ai`` (the AI summary's state) is added when the call has one.
* ``?version=batch`` on the transcript and the summary, and ``postcall`` on a call: the
  post-call batch pass (:mod:`callbridge.api.postcall_views`).
* ``DELETE /v1/calls/{sid}``: ``409 call_live`` while the call is live (erasing it would
  race the bridge still writing its segments); ``?force=true`` erases a call that is
  recorded as live but whose stream is not open in this process (e.g. after a crash).
  Ringing and ended calls are erased at once. What is kept outside the store (the audio for
  the batch pass, transcripts at ElevenLabs) is erased first; if that fails the call stays
  and the answer is ``503 erasure_incomplete`` (try again).
* A query parameter a route does not know, or one given twice, is ``400 invalid_query``.
* A store failure is ``503 store_unavailable``.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from callbridge.api.auth import v1_middleware
from callbridge.api.event_stream import stream_call_events
from callbridge.api.formats import (
    CONTENT_TYPES,
    TEXT_RENDERERS,
    TRANSCRIPT_FORMATS,
    call_to_json,
    summary_to_json,
    transcript_to_json,
)
from callbridge.api.live_feed import LiveFeed
from callbridge.api.openapi import openapi_document
from callbridge.api.postcall_views import (
    VERSIONS,
    batch_record,
    invalid_version,
    postcall_state,
)
from callbridge.context import CALL_ERASERS, LIVE_CALLS, LIVE_FEED, SETTINGS, STORE
from callbridge.http_errors import json_error
from callbridge.store.base import CallRecord, CallStatus

log = structlog.get_logger(__name__)

DEFAULT_PAGE_SIZE = 50
CALL_STATUSES = tuple(status.value for status in CallStatus)

OPENAPI_DOCUMENT = web.AppKey("openapi_document", dict)


def _call_sid(request: web.Request) -> str:
    return request.match_info["call_sid"]


def call_not_found(call_sid: str) -> web.Response:
    return json_error(404, "call_not_found", f"no call {call_sid!r}")


async def _find_call(request: web.Request) -> CallRecord | web.Response:
    call_sid = _call_sid(request)
    call = await request.config_dict[STORE].get_call(call_sid)
    return call if call is not None else call_not_found(call_sid)


def _is_live_here(request: web.Request, call_sid: str) -> bool:
    live_calls = request.config_dict.get(LIVE_CALLS)
    return live_calls is not None and live_calls.is_live(call_sid)


def query_params(*allowed: str) -> Callable[[Handler], Handler]:
    """Answer ``400 invalid_query`` for a query parameter the route does not know or one
    given twice, before the handler runs (a typo such as ``?fromat=vtt`` must not silently
    fall back to a default)."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def checked(request: web.Request) -> web.StreamResponse:
            for name in request.query:
                if name not in allowed:
                    known = ", ".join(allowed) or "none"
                    return json_error(
                        400, "invalid_query", f"unknown query parameter {name!r} (known: {known})"
                    )
                if len(request.query.getall(name)) > 1:
                    return json_error(400, "invalid_query", f"{name} may be given only once")
            return await handler(request)

        return checked

    return decorate


def parse_limit(raw: str | None, max_page_size: int) -> int | None:
    """The page size, or None when ``raw`` is not a whole number in 1…max_page_size."""
    if raw is None:
        return min(DEFAULT_PAGE_SIZE, max_page_size)
    text = raw.strip()
    if not text.isdigit() or not text.isascii():
        return None
    limit = int(text)
    return limit if 1 <= limit <= max_page_size else None


@query_params("limit", "cursor", "status")
async def list_calls(request: web.Request) -> web.Response:
    max_page_size = request.config_dict[SETTINGS].api.max_page_size
    limit = parse_limit(request.query.get("limit"), max_page_size)
    if limit is None:
        return json_error(
            400, "invalid_limit", f"limit must be a whole number from 1 to {max_page_size}"
        )
    raw_status = request.query.get("status")
    status = None
    if raw_status is not None:
        if raw_status not in CALL_STATUSES:
            return json_error(
                400, "invalid_status", f"status must be one of {', '.join(CALL_STATUSES)}"
            )
        status = CallStatus(raw_status)
    cursor = request.query.get("cursor") or None
    try:
        calls, next_cursor = await request.config_dict[STORE].list_calls(limit, cursor, status)
    except ValueError:
        return json_error(400, "invalid_cursor", "cursor is not one this API returned")
    return web.json_response(
        {"calls": [call_to_json(call) for call in calls], "next_cursor": next_cursor}
    )


@query_params()
async def get_call(request: web.Request) -> web.Response:
    found = await _find_call(request)
    if isinstance(found, web.Response):
        return found
    postcall = await postcall_state(request.config_dict[STORE], found.call_sid)
    return web.json_response({**call_to_json(found), "postcall": postcall})


@query_params("format", "version")
async def get_transcript(request: web.Request) -> web.Response:
    output = request.query.get("format", "json")
    if output not in TRANSCRIPT_FORMATS:
        return json_error(
            400, "invalid_format", f"format must be one of {', '.join(TRANSCRIPT_FORMATS)}"
        )
    version = request.query.get("version", "live")
    if version not in VERSIONS:
        return invalid_version()
    found = await _find_call(request)
    if isinstance(found, web.Response):
        return found
    if version == "batch":
        record = await batch_record(request, found)
        if isinstance(record, web.Response):
            return record
        segments = list(record.segments)
    else:
        segments = await request.config_dict[STORE].get_segments(found.call_sid)
    if output == "json":
        return web.json_response({**transcript_to_json(found, segments), "version": version})
    return web.Response(
        text=TEXT_RENDERERS[output](segments),
        content_type=CONTENT_TYPES[output],
        charset="utf-8",
    )


@query_params("version")
async def get_summary(request: web.Request) -> web.Response:
    version = request.query.get("version", "live")
    if version not in VERSIONS:
        return invalid_version()
    found = await _find_call(request)
    if isinstance(found, web.Response):
        return found
    if found.status != CallStatus.ENDED:
        return json_error(
            409,
            "call_not_ended",
            f"call {found.call_sid!r} is {found.status}; its summary exists once it has ended",
        )
    if version == "batch":
        record = await batch_record(request, found)
        if isinstance(record, web.Response):
            return record
        batch_summary = dict(record.summary or {})
        if found.ai_summary is not None:
            batch_summary["ai"] = dict(found.ai_summary)
        return web.json_response(batch_summary)
    summary = summary_to_json(found)
    if summary is None:
        return json_error(404, "summary_not_found", f"call {found.call_sid!r} has no summary")
    return web.json_response(summary)


@query_params("force")
async def delete_call(request: web.Request) -> web.Response:
    found = await _find_call(request)
    if isinstance(found, web.Response):
        return found
    raw_force = request.query.get("force", "false")
    if raw_force not in {"true", "false"}:
        return json_error(400, "invalid_force", "force must be true or false")
    force = raw_force == "true"
    live_here = _is_live_here(request, found.call_sid)
    if live_here or (found.status == CallStatus.LIVE and not force):
        return json_error(
            409,
            "call_live",
            f"call {found.call_sid!r} is live; erase it after it ends"
            + ("" if live_here else " (or with ?force=true if its stream is gone)"),
        )
    for erase in request.config_dict.get(CALL_ERASERS, ()):
        try:
            await erase(found.call_sid)  # kept elsewhere: the audio, transcripts at ElevenLabs
        except Exception as exc:
            log.warning("api.erasure_incomplete", call_sid=found.call_sid, error=str(exc)[:300])
            return json_error(
                503,
                "erasure_incomplete",
                f"call {found.call_sid!r} was not erased: {str(exc)[:200]}; try again",
            )
    if not await request.config_dict[STORE].delete_call(found.call_sid):
        return call_not_found(found.call_sid)
    return web.Response(status=204)


async def get_openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI_DOCUMENT])


async def _run_live_feed(app: web.Application) -> AsyncIterator[None]:
    feed = app[LIVE_FEED]
    feed.start()
    yield
    await feed.stop()


async def _stop_live_feed(app: web.Application) -> None:
    # On shutdown, after live calls have ended: open event streams finish, so the server
    # need not wait for them (their clients resume elsewhere with Last-Event-ID).
    await app[LIVE_FEED].stop()


def setup_api(app: web.Application) -> None:
    """Add the ``/v1`` routes, their auth middleware and ``GET /openapi.json`` to ``app``.

    The events stream's :class:`~callbridge.api.live_feed.LiveFeed` runs with the application;
    it needs the store open while anyone watches."""
    app.middlewares.append(v1_middleware)
    app[OPENAPI_DOCUMENT] = openapi_document(app[SETTINGS])
    api = app[SETTINGS].api
    app[LIVE_FEED] = LiveFeed(
        app[STORE], poll_interval_s=api.events_poll_s, max_events=api.events_buffer
    )
    app.cleanup_ctx.append(_run_live_feed)
    app.on_shutdown.append(_stop_live_feed)
    app.router.add_get(
        "/v1/calls/{call_sid}/events", query_params()(stream_call_events), name="v1_call_events"
    )
    app.router.add_get("/v1/calls", list_calls, name="v1_list_calls")
    app.router.add_get("/v1/calls/{call_sid}", get_call, name="v1_get_call")
    app.router.add_get("/v1/calls/{call_sid}/transcript", get_transcript, name="v1_get_transcript")
    app.router.add_get("/v1/calls/{call_sid}/summary", get_summary, name="v1_get_summary")
    app.router.add_delete("/v1/calls/{call_sid}", delete_call, name="v1_delete_call")
    app.router.add_get("/openapi.json", get_openapi, name="openapi")
