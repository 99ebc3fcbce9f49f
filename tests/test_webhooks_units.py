"""Event bodies, signatures, backoff and Retry-After, without a network."""

from __future__ import annotations

import base64
import json
import random
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from callbridge.models import CallEnded, CallInfo, CommittedSegment, EndReason, Track, Word
from callbridge.webhooks.dispatcher import (
    backoff_delay,
    classify,
    parse_retry_after,
    target_label,
)
from callbridge.webhooks.events import (
    call_ended_event,
    call_started_event,
    new_event_id,
    transcript_committed_event,
)
from callbridge.webhooks.signing import WebhookSigner, sign, verify

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
NOW = datetime(2025, 6, 1, 12, 0, 0, 250000, tzinfo=UTC)


def test_call_started_body() -> None:
    call = CallInfo("CA1", "MZ1", "AC1", "+1555", None, ("inbound",), {"k": "v"}, NOW)
    event = call_started_event(call, now=NOW)
    body = json.loads(event.body)
    assert body == {
        "type": "call.started",
        "timestamp": "2025-06-01T12:00:00.250Z",
        "data": {
            "call_sid": "CA1",
            "stream_sid": "MZ1",
            "account_sid": "AC1",
            "from": "+1555",
            "to": None,
            "tracks": ["inbound"],
            "custom_parameters": {"k": "v"},
            "started_at": "2025-06-01T12:00:00.250Z",
        },
    }
    assert event.event_id.startswith("evt_") and event.event_type == "call.started"
    assert event.call_sid == "CA1" and event.created_at == NOW


def test_transcript_committed_body() -> None:
    words = (Word("héllo", 100, 400, logprob=-0.5), Word(" ", 400, 410, type="spacing"))
    seg = CommittedSegment("CA1", "MZ1", 3, "agent", Track.OUTBOUND, "héllo", 100, 410, "fr", words)
    data = json.loads(transcript_committed_event(seg).body)["data"]
    assert data == {
        "call_sid": "CA1",
        "stream_sid": "MZ1",
        "sequence": 3,
        "speaker": "agent",
        "track": "outbound",
        "text": "héllo",
        "start_ms": 100,
        "end_ms": 410,
        "language_code": "fr",
        "words": [word.to_json() for word in words],
    }


def test_call_ended_body() -> None:
    end = CallEnded("CA1", "MZ1", NOW, 61_000, EndReason.HANGUP, 7, ())
    data = json.loads(call_ended_event(end, {"call_sid": "CA1", "segments": 7}).body)["data"]
    assert data == {
        "call_sid": "CA1",
        "ended_at": "2025-06-01T12:00:00.250Z",
        "duration_ms": 61_000,
        "segments": 7,
        "empty_transcripts": 0,
        "reason": "hangup",
        "summary": {"call_sid": "CA1", "segments": 7},
    }


def test_event_ids_are_unique() -> None:
    ids = {new_event_id() for _ in range(10_000)}
    assert len(ids) == 10_000


def test_signatures_verify_with_the_standardwebhooks_package() -> None:
    body = b'{"type":"call.started","data":{"text":"\xc3\xa9"}}'
    headers = WebhookSigner(SECRET).headers("evt_1", 1_700_000_000, body)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    webhook = Webhook(SECRET)
    # standardwebhooks checks the timestamp tolerance against now, so sign with now
    fresh = WebhookSigner(SECRET).headers("evt_1", int(time.time()), body)
    assert webhook.verify(body, fresh) == json.loads(body)
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    assert verify(key, "evt_1", headers["webhook-timestamp"], body, headers["webhook-signature"])
    assert not verify(
        key, "evt_2", headers["webhook-timestamp"], body, headers["webhook-signature"]
    )
    assert headers["webhook-signature"] == sign(key, "evt_1", 1_700_000_000, body)


def test_no_secret_means_unsigned() -> None:
    headers = WebhookSigner(None).headers("evt_1", 1, b"{}")
    assert headers == {"webhook-id": "evt_1", "webhook-timestamp": "1"}


def test_backoff_is_exponential_with_full_jitter() -> None:
    class Top(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    assert [backoff_delay(n, 1.0, 600.0, Top()) for n in range(1, 6)] == [1, 2, 4, 8, 16]
    assert backoff_delay(30, 1.0, 600.0, Top()) == 600.0
    assert backoff_delay(10_000, 1.0, 600.0, Top()) == 600.0
    rng = random.Random(7)
    delays = [backoff_delay(4, 1.0, 600.0, rng) for _ in range(1000)]
    assert all(0 <= d <= 8 for d in delays) and max(delays) > 7 and min(delays) < 1


def test_retry_after_parsing() -> None:
    now = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 3 ", now) == 3.0
    assert parse_retry_after("Sun, 01 Jun 2025 12:00:30 GMT", now) == pytest.approx(30.0)
    assert parse_retry_after("Sun, 01 Jun 2025 11:00:00 GMT", now) == 0.0
    for garbage in (None, "", "soon", "-5", "1.5e9"):
        assert parse_retry_after(garbage, now) is None


def test_classification() -> None:
    assert classify(204, None).delivered
    for status in (500, 502, 503, 429, 408):
        outcome = classify(status, 5.0)
        assert outcome.retryable and outcome.retry_after_s == 5.0
    for status in (301, 302, 400, 401, 404, 410, 422):
        outcome = classify(status, 5.0)
        assert not outcome.delivered and not outcome.retryable


def test_target_label_hides_credentials_and_query() -> None:
    assert target_label("https://user:pw@hooks.example.com:8443/in?token=abc") == (
        "https://hooks.example.com:8443/in"
    )
