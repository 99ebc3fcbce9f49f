"""The /twilio/voice TwiML: a both-tracks <Start><Stream> to the public wss URL, then more TwiML."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from callbridge.config import ServerSettings, Settings, TwilioSettings
from callbridge.twilio.stream_auth import stream_token, token_matches
from callbridge.twilio.twiml import build_stream_twiml

SECRET = "twiml-test-stream-secret"


def _settings(public_url: str = "https://bridge.example.com", **twilio: object) -> Settings:
    return Settings(
        server=ServerSettings(public_url=public_url),
        twilio=TwilioSettings(auth_token="t", stream_secret=SECRET, **twilio),  # type: ignore[arg-type]
    )


def _parse(twiml: str) -> ET.Element:
    root = ET.fromstring(twiml)
    assert root.tag == "Response"
    return root


def test_stream_then_pause() -> None:
    root = _parse(
        build_stream_twiml(
            _settings(pause_seconds=1800),
            account_sid="AC1",
            call_sid="CA1",
            from_number="+15551230000",
            to_number="+15559870000",
        )
    )
    start, pause = list(root)
    assert start.tag == "Start" and pause.tag == "Pause"
    assert pause.get("length") == "1800"
    (stream,) = list(start)
    assert stream.tag == "Stream"
    assert stream.get("url") == "wss://bridge.example.com/twilio/media"
    assert "?" not in stream.get("url", "")
    assert stream.get("track") == "both_tracks"
    assert stream.get("name") == "callbridge"
    assert stream.get("statusCallback") == "https://bridge.example.com/twilio/status"
    assert stream.get("statusCallbackMethod") == "POST"
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params == {
        "cb_token": stream_token(SECRET, "AC1", "CA1"),
        "cb_from": "+15551230000",
        "cb_to": "+15559870000",
    }


def test_dial_and_missing_parties() -> None:
    root = _parse(
        build_stream_twiml(
            _settings(continue_with="dial", dial_number="+15550001111"),
            account_sid="AC1",
            call_sid="CA1",
            from_number=None,
            to_number="",
        )
    )
    start, dial = list(root)
    assert dial.tag == "Dial" and dial.text == "+15550001111"
    assert [p.get("name") for p in start.findall("Stream/Parameter")] == ["cb_token"]


def test_none_and_dev_scheme() -> None:
    root = _parse(
        build_stream_twiml(
            _settings("http://localhost:8080/", continue_with="none"),
            account_sid="AC1",
            call_sid="CA1",
            from_number="+1",
            to_number=None,
        )
    )
    (start,) = list(root)
    stream = start.find("Stream")
    assert stream is not None
    assert stream.get("url") == "ws://localhost:8080/twilio/media"
    assert stream.get("statusCallback") == "http://localhost:8080/twilio/status"
    assert [p.get("name") for p in stream.findall("Parameter")] == ["cb_token", "cb_from"]


@pytest.mark.parametrize("public_url", ["https://example.com/bridge", "https://example.com:8443"])
def test_public_url_path_and_port_kept(public_url: str) -> None:
    root = _parse(
        build_stream_twiml(
            _settings(public_url),
            account_sid="AC1",
            call_sid="CA1",
            from_number=None,
            to_number=None,
        )
    )
    stream = root.find("Start/Stream")
    assert stream is not None
    assert stream.get("url") == public_url.replace("https", "wss") + "/twilio/media"


def test_stream_token_is_hmac_sha256_of_account_and_call() -> None:
    # An independent computation: hex HMAC-SHA256 keyed with the secret, of "AC:CA".
    import hashlib
    import hmac

    expected = hmac.new(SECRET.encode(), b"AC1:CA1", hashlib.sha256).hexdigest()
    assert stream_token(SECRET, "AC1", "CA1") == expected
    assert token_matches(SECRET, "AC1", "CA1", expected)
    assert not token_matches(SECRET, "AC1", "CA2", expected)  # another call
    assert not token_matches(SECRET, "AC2", "CA1", expected)  # another account
    assert not token_matches("another-secret-value", "AC1", "CA1", expected)
    assert not token_matches(SECRET, "AC1", "CA1", None)
    assert not token_matches(SECRET, "AC1", "CA1", "")
    assert not token_matches(SECRET, "AC1", "CA1", expected.upper() + "é")  # never raises
    assert not token_matches("", "AC1", "CA1", stream_token("", "AC1", "CA1"))


def test_no_stream_secret_no_twiml() -> None:
    settings = Settings(
        server=ServerSettings(public_url="https://bridge.example.com"),
        twilio=TwilioSettings(auth_token="t"),
    )
    with pytest.raises(ValueError, match="stream secret"):
        build_stream_twiml(
            settings, account_sid="AC1", call_sid="CA1", from_number=None, to_number=None
        )
