"""Typed Scribe errors that say whether reconnecting can help.

Every failure of a Scribe session surfaces as one :class:`ScribeError`. ``kind`` is the
Scribe ``message_type`` for errors the server reports, or one of the local kinds below;
``retryable`` tells the caller whether to reconnect with backoff (True) or to stop and
fix configuration (False).
"""

from __future__ import annotations

# Local kinds (not Scribe message types).
HANDSHAKE_REJECTED = "handshake_rejected"
CONNECT_FAILED = "connect_failed"
CONNECT_TIMEOUT = "connect_timeout"
CLOSED = "closed"
AUDIO_FORMAT_MISMATCH = "audio_format_mismatch"
PROTOCOL = "protocol"

NON_RETRYABLE_MESSAGE_TYPES = frozenset(
    {
        "auth_error",
        "quota_exceeded",
        "quota_exceeded_error",
        "unaccepted_terms",
        "unaccepted_terms_error",
        "invalid_request",
        "input_error",
        "chunk_size_exceeded",
    }
)
"""Server errors that a reconnect cannot fix: configuration, account or client bugs."""

RETRYABLE_MESSAGE_TYPES = frozenset(
    {
        "error",
        "rate_limited",
        "queue_overflow",
        "resource_exhausted",
        "transcriber_error",
        "session_time_limit_exceeded",
        "insufficient_audio_activity",
        "commit_throttled",
    }
)
"""Server errors after which a new session (with backoff) is expected to work."""

ERROR_MESSAGE_TYPES = NON_RETRYABLE_MESSAGE_TYPES | RETRYABLE_MESSAGE_TYPES

_ERROR_LOOKING_SUFFIXES = ("_exceeded", "_throttled", "_limited", "_overflow", "_exhausted")


class ScribeError(Exception):
    """A Scribe session failed (or could not start).

    Attributes:
        kind: the Scribe error ``message_type`` or a local kind (``handshake_rejected``,
            ``connect_failed``, ``connect_timeout``, ``closed``, ``audio_format_mismatch``,
            ``protocol``).
        detail: human-readable text (the server's ``error`` field for server errors).
        retryable: whether reconnecting with backoff can help.
        close_code: the websocket close code, when the socket closed.
        http_status: the HTTP status of a rejected handshake.
    """

    def __init__(
        self,
        kind: str,
        detail: str = "",
        *,
        retryable: bool,
        close_code: int | None = None,
        http_status: int | None = None,
    ) -> None:
        self.kind = kind
        self.detail = detail
        self.retryable = retryable
        self.close_code = close_code
        self.http_status = http_status
        super().__init__(self._render())

    def _render(self) -> str:
        parts = [self.kind]
        if self.detail:
            parts.append(f": {self.detail}")
        extras = []
        if self.http_status is not None:
            extras.append(f"http {self.http_status}")
        if self.close_code is not None:
            extras.append(f"close code {self.close_code}")
        extras.append("retryable" if self.retryable else "not retryable")
        return "".join(parts) + f" ({', '.join(extras)})"

    def with_close_code(self, close_code: int | None) -> ScribeError:
        """A copy of this error carrying ``close_code``."""
        return ScribeError(
            self.kind,
            self.detail,
            retryable=self.retryable,
            close_code=close_code,
            http_status=self.http_status,
        )

    def __repr__(self) -> str:
        return (
            f"ScribeError(kind={self.kind!r}, detail={self.detail!r}, retryable={self.retryable},"
            f" close_code={self.close_code!r}, http_status={self.http_status!r})"
        )


def is_error_message_type(message_type: str) -> bool:
    """Whether a server ``message_type`` reports an error (known or error-looking)."""
    return (
        message_type in ERROR_MESSAGE_TYPES
        or "error" in message_type
        or message_type.endswith(_ERROR_LOOKING_SUFFIXES)
    )


def error_from_message(message_type: str, text: str) -> ScribeError:
    """The typed error for a server error message; unknown error types are retryable."""
    return ScribeError(
        message_type, text, retryable=message_type not in NON_RETRYABLE_MESSAGE_TYPES
    )


def handshake_error(status: int, detail: str = "") -> ScribeError:
    """The typed error for an HTTP status that rejected the websocket upgrade.

    401/403 (bad key) and other client errors are final; 408, 429 and 5xx are retryable.
    """
    retryable = status >= 500 or status in (408, 429) or status < 400
    return ScribeError(
        HANDSHAKE_REJECTED,
        detail or f"websocket upgrade rejected with HTTP {status}",
        retryable=retryable,
        http_status=status,
    )
