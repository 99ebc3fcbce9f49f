"""The retryable / final taxonomy of Scribe errors."""

from __future__ import annotations

import pytest

from callbridge.scribe.errors import ScribeError, error_from_message, handshake_error

FINAL = [
    "auth_error",
    "quota_exceeded",
    "quota_exceeded_error",
    "unaccepted_terms",
    "unaccepted_terms_error",
    "invalid_request",
    "input_error",
    "chunk_size_exceeded",
]
RETRYABLE = [
    "rate_limited",
    "queue_overflow",
    "resource_exhausted",
    "transcriber_error",
    "error",
    "session_time_limit_exceeded",
    "insufficient_audio_activity",
    "commit_throttled",
    "some_future_error",
]


@pytest.mark.parametrize("message_type", FINAL)
def test_final_server_errors(message_type: str) -> None:
    error = error_from_message(message_type, "text")
    assert (error.kind, error.detail, error.retryable) == (message_type, "text", False)


@pytest.mark.parametrize("message_type", RETRYABLE)
def test_retryable_server_errors(message_type: str) -> None:
    assert error_from_message(message_type, "").retryable


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(401, False), (403, False), (404, False), (429, True), (500, True), (503, True)],
)
def test_handshake_statuses(status: int, retryable: bool) -> None:
    error = handshake_error(status)
    assert (error.kind, error.http_status, error.retryable) == (
        "handshake_rejected",
        status,
        retryable,
    )


def test_with_close_code_copies() -> None:
    error = ScribeError("transcriber_error", "boom", retryable=True)
    coded = error.with_close_code(1011)
    assert (coded.kind, coded.detail, coded.retryable, coded.close_code) == (
        "transcriber_error",
        "boom",
        True,
        1011,
    )
    assert error.close_code is None
    assert "close code 1011" in str(coded) and "retryable" in str(coded)
