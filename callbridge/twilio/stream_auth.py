"""Per-call stream authentication: the ``cb_token`` parameter and the bridge's own parameters.

Twilio signs the media websocket upgrade over the fixed ``<Stream url>``, so the upgrade's
``X-Twilio-Signature`` is the same for every call and cannot tell calls apart: whoever has
seen it once could open a stream for any ``CallSid``. The TwiML therefore also carries a
per-call token (interface §4), ``<Parameter name="cb_token">`` whose value is the hex
HMAC-SHA256 of ``"{AccountSid}:{CallSid}"`` keyed with ``CALLBRIDGE_STREAM_SECRET``,
which comes back in ``start.customParameters``; :func:`token_matches` checks it against the
``start`` message's own ``accountSid``/``callSid``, in constant time. TwiML made elsewhere
computes the same value with :func:`stream_token` (or ``callbridge stream-token``).

Parameters whose name starts with ``cb_`` belong to the bridge (``cb_token``, ``cb_from``,
``cb_to``); :func:`split_parameters` takes them out, so they are never passed on in
``custom_parameters``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field

BRIDGE_PARAMETER_PREFIX = "cb_"
TOKEN_PARAMETER = "cb_token"
FROM_PARAMETER = "cb_from"
TO_PARAMETER = "cb_to"


def stream_token(secret: str, account_sid: str, call_sid: str) -> str:
    """The ``cb_token`` of one call: hex HMAC-SHA256 of ``"{account_sid}:{call_sid}"``."""
    message = f"{account_sid}:{call_sid}".encode()
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def token_matches(secret: str, account_sid: str, call_sid: str, presented: str | None) -> bool:
    """Whether ``presented`` is the call's token, compared in constant time."""
    if not secret or not presented:
        return False
    expected = stream_token(secret, account_sid, call_sid).encode("ascii")
    return hmac.compare_digest(expected, presented.encode("utf-8", "replace"))


@dataclass(frozen=True, slots=True)
class StreamParameters:
    """A ``start`` message's ``customParameters``, the bridge's own taken out."""

    token: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    custom: Mapping[str, str] = field(default_factory=dict)  # passed on as custom_parameters


def split_parameters(parameters: Mapping[str, str]) -> StreamParameters:
    own = {k: v for k, v in parameters.items() if k.startswith(BRIDGE_PARAMETER_PREFIX)}
    return StreamParameters(
        token=own.get(TOKEN_PARAMETER) or None,
        from_number=own.get(FROM_PARAMETER) or None,
        to_number=own.get(TO_PARAMETER) or None,
        custom={k: v for k, v in parameters.items() if k not in own},
    )
