"""The TwiML answer of ``/twilio/voice``: fork both call tracks to the bridge, keep the call up.

``<Start><Stream track="both_tracks">`` is a one-way fork and TwiML carries on past it, so it is
followed by the configured continuation (``<Pause>``, ``<Dial>`` or nothing, which hangs up).
The stream URL never carries a query string (Twilio drops it or fails the handshake);
per-call data travels in ``<Parameter>``s and comes back in ``start.customParameters``.
"""

from __future__ import annotations

from twilio.twiml.voice_response import VoiceResponse

from callbridge.config import Settings
from callbridge.twilio.paths import MEDIA_PATH, STATUS_PATH
from callbridge.twilio.signatures import public_base, public_websocket_url
from callbridge.twilio.stream_auth import (
    FROM_PARAMETER,
    TO_PARAMETER,
    TOKEN_PARAMETER,
    stream_token,
)


def build_stream_twiml(
    settings: Settings,
    *,
    account_sid: str,
    call_sid: str,
    from_number: str | None,
    to_number: str | None,
) -> str:
    """TwiML forking ``call_sid``'s audio (both tracks) to ``wss://<public host>/twilio/media``,
    with the call's stream token (``settings.twilio.stream_secret`` must be set)."""
    if not settings.twilio.stream_secret:
        raise ValueError("no stream secret: the TwiML cannot carry a stream token")
    public_url = settings.server.public_url
    twilio = settings.twilio
    stream_url = public_websocket_url(public_url, MEDIA_PATH)
    if "?" in stream_url:  # pragma: no cover - config.check_values forbids a query
        raise ValueError("the <Stream url> must not carry a query string")

    response = VoiceResponse()
    start = response.start()
    stream = start.stream(
        name=twilio.stream_name,
        url=stream_url,
        track="both_tracks",
        status_callback=public_base(public_url) + STATUS_PATH,
        status_callback_method="POST",
    )
    token = stream_token(twilio.stream_secret, account_sid, call_sid)
    stream.parameter(name=TOKEN_PARAMETER, value=token)
    if from_number:
        stream.parameter(name=FROM_PARAMETER, value=from_number)
    if to_number:
        stream.parameter(name=TO_PARAMETER, value=to_number)

    if twilio.continue_with == "pause":
        response.pause(length=twilio.pause_seconds)
    elif twilio.continue_with == "dial":
        response.dial(twilio.dial_number)
    return str(response.to_xml(xml_declaration=True))
