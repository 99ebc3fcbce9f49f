"""Bearer-token authentication and JSON errors for every ``/v1`` route.

:func:`v1_middleware` guards every request whose path is ``/v1`` or starts with ``/v1/``
(matched routes and unknown ones alike, so nothing about ``/v1`` leaks without a token).
The presented token is compared in constant time with every configured
``ApiSettings.tokens`` entry; with no tokens configured everyone gets ``401``. The
middleware also turns aiohttp's own HTTP errors (unknown route, wrong method) and
unexpected exceptions under ``/v1`` into the one JSON error shape.
"""

from __future__ import annotations

import hmac

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from callbridge.context import SETTINGS
from callbridge.http_errors import json_error
from callbridge.store.base import StoreError

API_PREFIX = "/v1"
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="callbridge"'}

_log = structlog.get_logger("callbridge.api")


def is_api_path(path: str) -> bool:
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")


def bearer_token(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None


def token_is_valid(presented: str, configured: tuple[str, ...]) -> bool:
    """Constant-time comparison against every configured token (no early exit). A header
    that is not text (aiohttp keeps undecodable bytes as surrogates) is simply not a token."""
    try:
        given = presented.encode("utf-8")
    except UnicodeEncodeError:
        return False
    valid = False
    for token in configured:
        if token and hmac.compare_digest(given, token.encode("utf-8")):
            valid = True
    return valid


def unauthorized(message: str) -> web.Response:
    return json_error(401, "unauthorized", message, headers=CHALLENGE)


def check_bearer(request: web.Request) -> web.Response | None:
    """None when the request carries a configured token, else the ``401`` to answer."""
    tokens = request.config_dict[SETTINGS].api.tokens
    if not any(tokens):
        return unauthorized("the API is disabled: no API tokens are configured")
    presented = bearer_token(request)
    if presented is None:
        return unauthorized("missing 'Authorization: Bearer <token>' header")
    if not token_is_valid(presented, tokens):
        return unauthorized("invalid bearer token")
    return None


@web.middleware
async def v1_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not is_api_path(request.path):
        return await handler(request)
    refusal = check_bearer(request)
    if refusal is not None:
        return refusal
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_") if exc.reason else "http_error"
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return json_error(exc.status, code, exc.reason or "HTTP error", headers=headers)
    except StoreError as exc:
        _log.error("api.store_error", path=request.path, error=str(exc))
        return json_error(503, "store_unavailable", "the call store is unavailable")
    except Exception:
        _log.exception("api.unexpected_error", path=request.path)
        return json_error(500, "internal_error", "internal error")
