"""The Twilio Media Streams wire protocol: parse one websocket message into a typed value.

Hot path: every call sends about 100 ``media`` messages a second (both tracks), so
:func:`parse_message` is one ``orjson.loads`` plus a handful of dict look-ups, with no logging.
When a message is malformed, a slower pass works out a clear reason for the
:class:`ProtocolError` (the bridge uses it as the websocket close reason).

Numbers arrive as strings (``"sequenceNumber": "3"``) except ``mediaFormat.sampleRate`` and
``channels``; both spellings are accepted. Unknown ``event`` values parse to
:class:`UnknownEvent`, which the caller ignores.
"""

from __future__ import annotations

from binascii import Error as BinasciiError
from binascii import a2b_base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from callbridge.models import Track

__all__ = [
    "Connected",
    "Dtmf",
    "Mark",
    "MediaFrame",
    "ProtocolError",
    "Stop",
    "StreamStart",
    "TwilioMessage",
    "UnknownEvent",
    "check_media_format",
    "parse_message",
]

MAX_REASON_BYTES = 120
EXPECTED_ENCODING = "audio/x-mulaw"
EXPECTED_SAMPLE_RATE = 8000
EXPECTED_CHANNELS = 1


class ProtocolError(Exception):
    """A message that breaks the Media Streams protocol; ``reason`` fits a close frame."""

    def __init__(self, reason: str) -> None:
        encoded = reason.encode("utf-8")
        if len(encoded) > MAX_REASON_BYTES:
            reason = encoded[: MAX_REASON_BYTES - 3].decode("utf-8", "ignore") + "..."
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Connected:
    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class StreamStart:
    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[Track, ...]
    encoding: str
    sample_rate: int
    channels: int
    custom_parameters: dict[str, str]
    sequence_number: int


@dataclass(frozen=True, slots=True)
class MediaFrame:
    track: Track
    chunk: int
    timestamp_ms: int
    payload: bytes  # raw audio, base64-decoded (μ-law for audio/x-mulaw)
    sequence_number: int


@dataclass(frozen=True, slots=True)
class Dtmf:
    track: Track
    digit: str
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Mark:
    name: str
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Stop:
    account_sid: str
    call_sid: str
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    event: str


TwilioMessage = Connected | StreamStart | MediaFrame | Dtmf | Mark | Stop | UnknownEvent

# `media.track` says inbound/outbound, `dtmf.track` says inbound_track; accept both everywhere.
_TRACKS: dict[Any, Track] = {
    "inbound": Track.INBOUND,
    "outbound": Track.OUTBOUND,
    "inbound_track": Track.INBOUND,
    "outbound_track": Track.OUTBOUND,
}
_NUMBER_TYPES = (str, int)
_PARSE_FAILURES = (KeyError, TypeError, ValueError, AttributeError, BinasciiError)

# orjson: 0.55 µs for a media message where json.loads takes 2.2 µs, about a fifth of the
# bridge's own per-frame work (benchmarks/pipeline.py); it raises ValueError subclasses too.
_loads = orjson.loads
_int = int
# Building a frozen dataclass through its __init__ costs ~0.4 µs more than setting its slots
# directly; the hot path does the latter (the instance is still frozen afterwards).
_new_object = object.__new__
_set_track, _set_chunk, _set_timestamp, _set_payload, _set_sequence = (
    MediaFrame.__dict__[name].__set__
    for name in ("track", "chunk", "timestamp_ms", "payload", "sequence_number")
)


def parse_message(raw: str | bytes) -> TwilioMessage:
    """One Media Streams websocket message → a typed value; :class:`ProtocolError` if malformed."""
    try:
        message = _loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("message is not JSON") from None
    if type(message) is not dict:
        raise ProtocolError("message is not a JSON object")
    event = message.get("event")
    if event == "media":
        # Fast path: happy case only; any failure is re-examined by _media_error.
        try:
            media = message["media"]
            chunk = media["chunk"]
            timestamp = media["timestamp"]
            sequence = message["sequenceNumber"]
            if (
                type(chunk) in _NUMBER_TYPES
                and type(timestamp) in _NUMBER_TYPES
                and type(sequence) in _NUMBER_TYPES
            ):
                track = _TRACKS[media["track"]]
                payload = a2b_base64(media["payload"], strict_mode=True)
                chunk = _int(chunk)
                timestamp = _int(timestamp)
                sequence = _int(sequence)
                # An empty payload is well-formed (it carries no audio): the call session
                # skips it rather than ending the call over it.
                if chunk >= 0 and timestamp >= 0 and sequence >= 0:
                    frame = _new_object(MediaFrame)
                    _set_track(frame, track)
                    _set_chunk(frame, chunk)
                    _set_timestamp(frame, timestamp)
                    _set_payload(frame, payload)
                    _set_sequence(frame, sequence)
                    return frame
        except _PARSE_FAILURES:
            pass
        raise _media_error(message)
    if type(event) is not str:
        raise ProtocolError("message has no string 'event'")
    parser = _PARSERS.get(event)
    if parser is None:
        return UnknownEvent(event)
    return parser(message)


def check_media_format(start: StreamStart) -> None:
    """Raise :class:`ProtocolError` unless the stream is 8 kHz mono μ-law."""
    if start.encoding != EXPECTED_ENCODING:
        raise ProtocolError(f"unsupported mediaFormat.encoding {start.encoding[:40]!r}")
    if start.sample_rate != EXPECTED_SAMPLE_RATE:
        raise ProtocolError(f"unsupported mediaFormat.sampleRate {start.sample_rate}")
    if start.channels != EXPECTED_CHANNELS:
        raise ProtocolError(f"unsupported mediaFormat.channels {start.channels}")


# --- field helpers (slow path and rare events) ---------------------------------------------


def _object(parent: dict[str, Any], key: str, where: str = "") -> dict[str, Any]:
    value = parent.get(key)
    if type(value) is not dict:
        label = f"{where}.{key}" if where else key
        if value is None:
            raise ProtocolError(f"missing '{label}'")
        raise ProtocolError(f"'{label}' is not an object")
    return value


def _text(parent: dict[str, Any], key: str, where: str, *, required: bool = True) -> str:
    value = parent.get(key)
    if type(value) is str:
        return value
    label = f"{where}.{key}" if where else key
    if value is None:
        if required:
            raise ProtocolError(f"missing '{label}'")
        return ""
    raise ProtocolError(f"'{label}' is not a string")


def _number(parent: dict[str, Any], key: str, where: str, *, required: bool = True) -> int | None:
    value = parent.get(key)
    label = f"{where}.{key}" if where else key
    if value is None:
        if required:
            raise ProtocolError(f"missing '{label}'")
        return None
    if type(value) not in _NUMBER_TYPES:
        raise ProtocolError(f"'{label}' is not a number")
    try:
        number = int(value)
    except ValueError:
        raise ProtocolError(f"'{label}' is not a whole number") from None
    if number < 0:
        raise ProtocolError(f"'{label}' is negative")
    return number


def _required_number(parent: dict[str, Any], key: str, where: str) -> int:
    number = _number(parent, key, where)
    assert number is not None
    return number


def _track(parent: dict[str, Any], where: str) -> Track:
    name = _text(parent, "track", where)
    track = _TRACKS.get(name)
    if track is None:
        raise ProtocolError(f"unknown {where}.track {name[:40]!r}")
    return track


def _media_error(message: dict[str, Any]) -> ProtocolError:
    """Why a ``media`` message failed the fast path."""
    try:
        _required_number(message, "sequenceNumber", "")
        media = _object(message, "media")
        _track(media, "media")
        _required_number(media, "chunk", "media")
        _required_number(media, "timestamp", "media")
        payload = _text(media, "payload", "media")
        try:
            a2b_base64(payload, strict_mode=True)
        except (BinasciiError, ValueError):
            return ProtocolError("media.payload is not valid base64")
    except ProtocolError as error:
        return error
    return ProtocolError("malformed media message")


# --- the other events -----------------------------------------------------------------------


def _parse_connected(message: dict[str, Any]) -> Connected:
    return Connected(
        protocol=_text(message, "protocol", "", required=False),
        version=_text(message, "version", "", required=False),
    )


def _parse_start(message: dict[str, Any]) -> StreamStart:
    start = _object(message, "start")
    stream_sid = _text(start, "streamSid", "start", required=False) or _text(
        message, "streamSid", ""
    )
    tracks_raw = start.get("tracks")
    if type(tracks_raw) is not list or not tracks_raw:
        raise ProtocolError("'start.tracks' is not a non-empty list")
    tracks: list[Track] = []
    for name in tracks_raw:
        track = _TRACKS.get(name) if type(name) is str else None
        if track is None:
            raise ProtocolError(f"unknown track in start.tracks {str(name)[:40]!r}")
        if track not in tracks:
            tracks.append(track)
    media_format = _object(start, "mediaFormat", "start")
    custom_raw = start.get("customParameters", {})
    if custom_raw is None:
        custom_raw = {}
    if type(custom_raw) is not dict:
        raise ProtocolError("'start.customParameters' is not an object")
    custom: dict[str, str] = {}
    for key, value in custom_raw.items():
        if type(value) is not str:
            raise ProtocolError(f"customParameters value of {key[:40]!r} is not a string")
        custom[key] = value
    return StreamStart(
        stream_sid=stream_sid,
        call_sid=_text(start, "callSid", "start"),
        account_sid=_text(start, "accountSid", "start"),
        tracks=tuple(tracks),
        encoding=_text(media_format, "encoding", "mediaFormat"),
        sample_rate=_required_number(media_format, "sampleRate", "mediaFormat"),
        channels=_required_number(media_format, "channels", "mediaFormat"),
        custom_parameters=custom,
        sequence_number=_required_number(message, "sequenceNumber", ""),
    )


def _parse_dtmf(message: dict[str, Any]) -> Dtmf:
    dtmf = _object(message, "dtmf")
    return Dtmf(
        track=_track(dtmf, "dtmf"),
        digit=_text(dtmf, "digit", "dtmf"),
        sequence_number=_number(message, "sequenceNumber", "", required=False),
    )


def _parse_mark(message: dict[str, Any]) -> Mark:
    mark = _object(message, "mark")
    return Mark(
        name=_text(mark, "name", "mark"),
        sequence_number=_number(message, "sequenceNumber", "", required=False),
    )


def _parse_stop(message: dict[str, Any]) -> Stop:
    # Lenient on purpose: a `stop` must never turn a normal end into a protocol error.
    stop = message.get("stop")
    if stop is None:
        stop = {}
    elif type(stop) is not dict:
        raise ProtocolError("'stop' is not an object")
    return Stop(
        account_sid=_text(stop, "accountSid", "stop", required=False),
        call_sid=_text(stop, "callSid", "stop", required=False),
        sequence_number=_number(message, "sequenceNumber", "", required=False),
    )


_PARSERS: dict[str, Callable[[dict[str, Any]], TwilioMessage]] = {
    "connected": _parse_connected,
    "start": _parse_start,
    "dtmf": _parse_dtmf,
    "mark": _parse_mark,
    "stop": _parse_stop,
}
