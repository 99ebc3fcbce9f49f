"""The one JSON error shape of every HTTP route: ``{"error": {"code": …, "message": …}}``."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web


def json_error(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )
