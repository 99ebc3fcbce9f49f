"""The ElevenLabs Scribe v2 realtime client: options, typed errors, messages, one connection."""

from callbridge.scribe.connection import ReceivedMessage, ScribeConnection
from callbridge.scribe.errors import ScribeError, error_from_message, handshake_error
from callbridge.scribe.messages import (
    CommittedTranscript,
    FinalTranscript,
    PartialTranscript,
    ScribeWord,
    ServerMessage,
    ServerWarning,
    SessionStarted,
    UnknownMessage,
    parse_message,
)
from callbridge.scribe.options import ScribeOptions

__all__ = [
    "CommittedTranscript",
    "FinalTranscript",
    "PartialTranscript",
    "ReceivedMessage",
    "ScribeConnection",
    "ScribeError",
    "ScribeOptions",
    "ScribeWord",
    "ServerMessage",
    "ServerWarning",
    "SessionStarted",
    "UnknownMessage",
    "error_from_message",
    "handshake_error",
    "parse_message",
]
