"""Deadlines for plain HTTP: a request's head and its body arrive in bounded time.

A client that opens a connection and sends nothing, drips a request head, or drips a body
(slowloris) would otherwise hold a connection, and the handler reading it, for as long as it
likes. Two deadlines close it:

* **The request head** (``limits.header_timeout_s``): aiohttp's keep-alive timer, which
  aiohttp (3.14.4 and later) arms when a connection opens as well as after each response,
  closes a connection still waiting for a complete request head when it runs out. So a
  connection must deliver its first request head within this time of opening, and each
  later one within this time of the previous response; an idle keep-alive connection is
  closed after it too. (aiohttp has no separate header timeout.)
* **The body** (``limits.body_timeout_s``): :func:`body_deadline` reads a request's body
  before its handler runs, within the deadline; a body that does not arrive in time is
  ``408`` and the connection is closed at once (no lingering read of the rest). The body is
  kept, so handlers read it as usual.

A websocket upgrade has no body, and once upgraded the socket is the media handler's (its
own start, media and heartbeat timeouts apply: :mod:`callbridge.twilio.media_route`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from callbridge.config import Settings
from callbridge.context import SETTINGS
from callbridge.http_errors import json_error

log = structlog.get_logger("callbridge.http")

_NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def runner_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for :class:`aiohttp.web.AppRunner`: the request-head deadline, and
    no lingering: a response sent before its request's body was read (a 408 from
    :func:`body_deadline`, a 413) closes the connection at once instead of reading and
    dropping whatever the client still drips, for up to ten more seconds."""
    return {"keepalive_timeout": settings.limits.header_timeout_s, "lingering_time": 0}


@web.middleware
async def body_deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Read the request body within ``limits.body_timeout_s`` before the handler runs."""
    if request.method in _NO_BODY_METHODS or not request.body_exists:
        return await handler(request)
    timeout_s = request.config_dict[SETTINGS].limits.body_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            await request.read()  # kept: the handler's post()/text()/json() use it
    except TimeoutError:
        log.warning("http.body_timeout", path=request.path, peer=request.remote)
        response = json_error(
            408, "body_timeout", f"the request body did not arrive within {timeout_s:g} s"
        )
        response.force_close()
        return response
    return await handler(request)


def setup_http_limits(app: web.Application) -> None:
    """Put :func:`body_deadline` in front of every route (needs ``app[SETTINGS]``)."""
    app.middlewares.insert(0, body_deadline)
