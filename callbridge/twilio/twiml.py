"""The TwiML answer of ``/twilio/voice``: fork both call tracks to the bridge, keep the call up.

``<Start><Stream track="both_tracks">`` is a one-way fork and TwiML carries on past it, so it is
followed by the configured continuation (``<Pause>``, ``<Dial>`` or nothing, which hangs up).
The stream URL never carries a query string (Twilio drops it or fails the handshake);
per-call data travels in ``<Parameter>``s and comes back in ``start.customParameters``.
"""

from __future__ import annotations

from twilio.twiml.voice_response import VoiceResponse

from callbridge.config import Settings
from callbridge.twilio.signatures import public_base, public_websocket_url

MEDIA_PATH = "/twilio/media"
STATUS_PATH = "/twilio/status"
PARAM_FROM = "cb_from"
PARAM_TO = "cb_to"


def build_stream_twiml(
    settings: Settings,
    *,
    call_sid: str,
    from_number: str | None,
    to_number: str | None,
) -> str:
    """TwiML forking ``call_sid``'s audio (both tracks) to ``wss://<public host>/twilio/media``."""
    del call_sid  # the stream's `start` message carries the CallSid itself
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
    if from_number:
        stream.parameter(name=PARAM_FROM, value=from_number)
    if to_number:
        stream.parameter(name=PARAM_TO, value=to_number)

    if twilio.continue_with == "pause":
        response.pause(length=twilio.pause_seconds)
    elif twilio.continue_with == "dial":
        response.dial(twilio.dial_number)
    return str(response.to_xml(xml_declaration=True))
