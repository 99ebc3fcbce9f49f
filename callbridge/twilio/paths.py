"""The bridge's Twilio URLs, each path written once: the two webhooks and the media websocket.

Twilio reaches them at the public base URL (``server.public_url``) plus the path; the TwiML
names the status callback and the ``<Stream url>`` with them, and Twilio's signatures are
checked over those same public URLs (:mod:`callbridge.twilio.signatures`).
"""

VOICE_PATH = "/twilio/voice"  # POST: the call's TwiML
STATUS_PATH = "/twilio/status"  # POST: call and stream status callbacks
MEDIA_PATH = "/twilio/media"  # GET, websocket: the call's Media Stream
