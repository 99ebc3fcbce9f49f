"""The Media Streams message parser: every event, numbers as strings, and malformed input."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from callbridge.models import Track
from callbridge.twilio.protocol import (
    MAX_REASON_BYTES,
    Connected,
    Dtmf,
    Mark,
    MediaFrame,
    ProtocolError,
    Stop,
    StreamStart,
    UnknownEvent,
    check_media_format,
    parse_message,
)

AUDIO = bytes(range(160))
PAYLOAD = base64.b64encode(AUDIO).decode()


def media(**overrides: Any) -> dict[str, Any]:
    body = {"track": "inbound", "chunk": "2", "timestamp": "25", "payload": PAYLOAD}
    body.update(overrides)
    return {"event": "media", "sequenceNumber": "4", "media": body, "streamSid": "MZ1"}


def start(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "accountSid": "AC1",
        "streamSid": "MZ1",
        "callSid": "CA1",
        "tracks": ["inbound", "outbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": {"cb_from": "+1555", "cb_to": "+1666"},
    }
    body.update(overrides)
    return {"event": "start", "sequenceNumber": "1", "start": body, "streamSid": "MZ1"}


def raw(message: dict[str, Any]) -> str:
    return json.dumps(message)


def test_connected() -> None:
    assert parse_message('{"event":"connected","protocol":"Call","version":"1.0.0"}') == Connected(
        "Call", "1.0.0"
    )


def test_start() -> None:
    parsed = parse_message(raw(start()))
    assert parsed == StreamStart(
        stream_sid="MZ1",
        call_sid="CA1",
        account_sid="AC1",
        tracks=(Track.INBOUND, Track.OUTBOUND),
        encoding="audio/x-mulaw",
        sample_rate=8000,
        channels=1,
        custom_parameters={"cb_from": "+1555", "cb_to": "+1666"},
        sequence_number=1,
    )
    check_media_format(parsed)


def test_start_numbers_as_strings_and_no_custom_parameters() -> None:
    message = start(
        mediaFormat={"encoding": "audio/x-mulaw", "sampleRate": "8000", "channels": "1"}
    )
    del message["start"]["customParameters"]
    parsed = parse_message(raw(message).encode())
    assert isinstance(parsed, StreamStart)
    assert parsed.sample_rate == 8000 and parsed.channels == 1 and parsed.custom_parameters == {}


def test_media_numbers_as_strings_or_ints() -> None:
    expected = MediaFrame(Track.INBOUND, 2, 25, AUDIO, 4)
    assert parse_message(raw(media())) == expected
    ints = media(chunk=2, timestamp=25)
    ints["sequenceNumber"] = 4
    assert parse_message(raw(ints)) == expected
    outbound = parse_message(raw(media(track="outbound")))
    assert isinstance(outbound, MediaFrame) and outbound.track is Track.OUTBOUND


def test_empty_and_odd_payloads_parse() -> None:
    # Payloads "can be any length" (reference §2); an empty one carries no audio but is
    # well-formed: the session skips it instead of the parser ending the call over it.
    assert parse_message(raw(media(payload=""))) == MediaFrame(Track.INBOUND, 2, 25, b"", 4)
    odd = bytes(range(163))
    parsed = parse_message(raw(media(payload=base64.b64encode(odd).decode())))
    assert isinstance(parsed, MediaFrame) and parsed.payload == odd


def test_media_frame_is_frozen() -> None:
    frame = parse_message(raw(media()))
    assert isinstance(frame, MediaFrame)
    with pytest.raises(AttributeError):
        frame.chunk = 3  # type: ignore[misc]
    assert hash(frame) == hash(MediaFrame(Track.INBOUND, 2, 25, AUDIO, 4))


def test_dtmf_mark_stop_unknown() -> None:
    assert parse_message(
        '{"event":"dtmf","streamSid":"MZ1","sequenceNumber":"5","dtmf":{"track":"inbound_track","digit":"1"}}'
    ) == Dtmf(Track.INBOUND, "1", 5)
    assert parse_message('{"event":"mark","sequenceNumber":"4","mark":{"name":"utt-1"}}') == Mark(
        "utt-1", 4
    )
    assert parse_message(
        '{"event":"stop","sequenceNumber":"9","stop":{"accountSid":"AC1","callSid":"CA1"},"streamSid":"MZ1"}'
    ) == Stop("AC1", "CA1", 9)
    assert parse_message('{"event":"stop"}') == Stop("", "", None)
    assert parse_message('{"event":"clear","streamSid":"MZ1"}') == UnknownEvent("clear")


@pytest.mark.parametrize(
    ("data", "reason_part"),
    [
        ("not json", "not JSON"),
        (b"\xff\xfe\x00garbage", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"no_event": 1}', "no string 'event'"),
        ('{"event": 5}', "no string 'event'"),
        (raw(media(payload="@@not-base64@@")), "base64"),
        (raw(media(payload="AAE")), "base64"),  # bad padding
        (raw(media(payload="AA E=")), "base64"),  # whitespace inside
        (raw(media(payload=5)), "payload' is not a string"),
        (raw(media(track="mixed")), "unknown media.track"),
        (raw(media(chunk="two")), "whole number"),
        (raw(media(chunk=1.5)), "not a number"),
        (raw(media(chunk=True)), "not a number"),
        (raw(media(timestamp="-20")), "negative"),
        (raw({"event": "media", "sequenceNumber": "4"}), "missing 'media'"),
        (raw({"event": "media", "sequenceNumber": "4", "media": []}), "'media' is not an object"),
        (
            raw({k: v for k, v in media().items() if k != "sequenceNumber"}),
            "missing 'sequenceNumber'",
        ),
        (raw(media(payload=None)), "missing 'media.payload'"),
        (raw({"event": "start", "sequenceNumber": "1"}), "missing 'start'"),
        (raw(start(callSid=None)), "missing 'start.callSid'"),
        (raw(start(tracks=[])), "start.tracks"),
        (raw(start(tracks=["inbound", "sideways"])), "unknown track"),
        (raw(start(mediaFormat="mulaw")), "'start.mediaFormat' is not an object"),
        (raw(start(customParameters={"a": 1})), "customParameters value"),
        (raw({"event": "mark", "mark": {}}), "missing 'mark.name'"),
        (raw({"event": "dtmf", "dtmf": {"track": "inbound_track"}}), "missing 'dtmf.digit'"),
        (raw({"event": "stop", "stop": "now"}), "'stop' is not an object"),
    ],
)
def test_protocol_errors(data: str | bytes, reason_part: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_message(data)
    assert reason_part in caught.value.reason
    assert len(caught.value.reason.encode()) <= MAX_REASON_BYTES


def test_reason_is_capped_for_close_frames() -> None:
    error = ProtocolError("é" * 200)
    assert len(error.reason.encode()) <= MAX_REASON_BYTES
    assert str(error) == error.reason


@pytest.mark.parametrize(
    ("media_format", "reason_part"),
    [
        ({"encoding": "audio/l16", "sampleRate": 8000, "channels": 1}, "encoding"),
        ({"encoding": "audio/x-mulaw", "sampleRate": 16000, "channels": 1}, "sampleRate"),
        ({"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 2}, "channels"),
    ],
)
def test_wrong_media_format(media_format: dict[str, Any], reason_part: str) -> None:
    parsed = parse_message(raw(start(mediaFormat=media_format)))
    assert isinstance(parsed, StreamStart)
    with pytest.raises(ProtocolError) as caught:
        check_media_format(parsed)
    assert reason_part in caught.value.reason
