"""The live transcript page: static HTML, CSS and JavaScript served by the bridge at ``/live``.

The page holds no data of its own and needs no build step or third-party code: it asks for
an API token (kept in the tab's ``sessionStorage``), lists live and recent calls from
``GET /v1/calls``, and shows one call as a conversation that follows
``GET /v1/calls/{sid}/events``, read with ``fetch()`` so the token travels in the
``Authorization`` header (an ``EventSource`` could only carry it in the URL). The files are
public; every answer carries a strict Content-Security-Policy (same-origin scripts, styles
and requests only, no framing, no form posts).
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web
from aiohttp.typedefs import Handler

LIVE_PATH = "/live"
_ASSETS = {
    "": ("index.html", "text/html"),
    "/live.js": ("live.js", "text/javascript"),
    "/live.css": ("live.css", "text/css"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _asset_handler(body: bytes, content_type: str) -> Handler:
    async def serve(request: web.Request) -> web.Response:
        return web.Response(
            body=body, content_type=content_type, charset="utf-8", headers=SECURITY_HEADERS
        )

    return serve


async def _to_page(request: web.Request) -> web.Response:
    raise web.HTTPFound(LIVE_PATH)


def setup_live_page(app: web.Application) -> None:
    """Serve the page at ``/live`` (and send ``/`` there)."""
    folder = resources.files("callbridge.live_page") / "static"
    for suffix, (name, content_type) in _ASSETS.items():
        body = (folder / name).read_bytes()
        app.router.add_get(LIVE_PATH + suffix, _asset_handler(body, content_type))
    app.router.add_get("/", _to_page)
