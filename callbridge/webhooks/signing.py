"""Standard Webhooks signatures: the three ``webhook-*`` headers of one attempt."""

from __future__ import annotations

import base64
import hashlib
import hmac

from callbridge.config import decode_webhook_secret


def sign(key: bytes, event_id: str, timestamp: int | str, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``."""
    signed = f"{event_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


class WebhookSigner:
    """Builds the headers of one attempt; without a secret, events go unsigned."""

    def __init__(self, secret: str | None) -> None:
        self._key = decode_webhook_secret(secret) if secret else None

    @property
    def signs(self) -> bool:
        return self._key is not None

    def headers(self, event_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        headers = {"webhook-id": event_id, "webhook-timestamp": str(timestamp)}
        if self._key is not None:
            headers["webhook-signature"] = sign(self._key, event_id, timestamp, body)
        return headers


def verify(key: bytes, event_id: str, timestamp: str, body: bytes, signature_header: str) -> bool:
    """True if any ``v1,`` signature in the (space-separated) header matches."""
    expected = sign(key, event_id, timestamp, body).encode()
    return any(
        hmac.compare_digest(candidate.encode(), expected)
        for candidate in signature_header.split()
        if candidate.startswith("v1,")
    )
