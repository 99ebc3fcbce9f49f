"""Structured logging: structlog, JSON in production, readable on a terminal.

Secrets never reach a log line: settings are logged only through
:func:`callbridge.config.redacted`, and the processors below mask any value logged under
a key that names a secret, and the credentials of every URL in any logged text, exception
messages and tracebacks included (:mod:`callbridge.masking`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from aiohttp.http_exceptions import HttpProcessingError

from callbridge.masking import MASK, mask_text

_SECRET_WORDS = ("token", "secret", "api_key", "authorization", "password", "signature")


def _mask_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if not value:
            continue
        if any(word in key.lower() for word in _SECRET_WORDS):
            event[key] = MASK
        elif isinstance(value, str) and "://" in value:
            event[key] = mask_text(value)
    return event


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    """Set up structlog and the stdlib root logger once per process."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        # Masking comes after the traceback is rendered: an exception's message may quote a URL.
        processors=[*shared, structlog.processors.format_exc_info, _mask_secrets, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_MaskingFormatter("%(message)s"))
    logging.basicConfig(level=max(numeric, logging.WARNING), handlers=[handler])


class _MaskingFormatter(logging.Formatter):
    """Libraries' own log records (aiohttp's tracebacks …) get their URLs masked too."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_text(super().format(record))


class _ClientErrorsAreWarnings(logging.Filter):
    """aiohttp logs a malformed request (a 400: bad header bytes, a broken request line) as
    an error with a traceback. That is the client's fault, and anyone could fill the log
    with them: it becomes one warning line, without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and (exc.code or 500) < 500:
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            first_line = exc.message.splitlines()[0] if exc.message else ""
            record.msg = "http.bad_request from %s: %s %r"
            record.args = (peer, exc.code, first_line)
            record.exc_info = record.exc_text = None
        return True


_CLIENT_ERRORS = _ClientErrorsAreWarnings()


def quiet_client_errors() -> None:
    """Install :class:`_ClientErrorsAreWarnings` on aiohttp's server logger (once)."""
    server_log = logging.getLogger("aiohttp.server")
    if _CLIENT_ERRORS not in server_log.filters:
        server_log.addFilter(_CLIENT_ERRORS)
