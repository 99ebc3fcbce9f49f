"""ScribeOptions: the connect URL and audio framing."""

from __future__ import annotations

import pytest

from callbridge.call.session import scribe_options
from callbridge.config import ScribeSettings
from callbridge.scribe import ScribeOptions

BASE = "wss://api.elevenlabs.io/v1/speech-to-text/realtime"


def test_connect_url_matches_the_reference_encoding() -> None:
    options = ScribeOptions(
        url=BASE, api_key="k", language_code="en", keyterms=("Acme Corp", "Zelda")
    )
    assert options.connect_url() == (
        f"{BASE}?model_id=scribe_v2_realtime&audio_format=ulaw_8000&commit_strategy=manual"
        "&language_code=en&include_timestamps=true&keyterms=Acme%20Corp&keyterms=Zelda"
    )


def test_auto_detect_leaves_out_language_code() -> None:
    options = ScribeOptions(url=BASE, api_key="k", include_timestamps=False)
    assert options.connect_url() == (
        f"{BASE}?model_id=scribe_v2_realtime&audio_format=ulaw_8000&commit_strategy=manual"
        "&include_timestamps=false"
    )
    assert "k" not in options.connect_url().split("?")[1].split("=")  # the key is a header


def test_the_call_session_maps_the_settings_to_the_clients_options() -> None:
    settings = ScribeSettings(
        api_key="secret",
        url="ws://localhost:1/v1/speech-to-text/realtime",
        audio_format="pcm_8000",
        language="de",
        include_timestamps=False,
        keyterms=("a",),
        connect_timeout_s=2.5,
    )
    options = scribe_options(settings)
    assert options == ScribeOptions(
        url=settings.url,
        api_key="secret",
        audio_format="pcm_8000",
        language_code="de",
        include_timestamps=False,
        keyterms=("a",),
        connect_timeout_s=2.5,
    )


@pytest.mark.parametrize(("fmt", "per_ms", "frame"), [("ulaw_8000", 8, 160), ("pcm_8000", 16, 320)])
def test_framing(fmt: str, per_ms: int, frame: int) -> None:
    options = ScribeOptions(url=BASE, api_key="k", audio_format=fmt)
    assert (options.sample_rate, options.bytes_per_ms, options.frame_bytes) == (8000, per_ms, frame)
