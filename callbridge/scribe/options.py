"""Connection options for one Scribe v2 realtime session and the URL they produce.

All Scribe configuration travels in the query string of the websocket URL; this module
owns building that URL exactly as the reference describes (``urlencode`` with ``quote``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, urlencode

from callbridge.audio.ulaw import FRAME_MS

AudioFormat = Literal["ulaw_8000", "pcm_8000"]
"""The formats the bridge can send (the settings are checked against this at start-up)."""

BYTES_PER_MS: dict[AudioFormat, int] = {"ulaw_8000": 8, "pcm_8000": 16}


@dataclass(frozen=True, slots=True)
class ScribeOptions:
    """Everything needed to open one Scribe realtime session.

    ``language_code`` empty means auto-detect (the parameter is then left out).
    """

    url: str
    api_key: str
    model_id: str = "scribe_v2_realtime"
    audio_format: AudioFormat = "ulaw_8000"
    language_code: str = ""
    include_timestamps: bool = True
    keyterms: tuple[str, ...] = ()
    connect_timeout_s: float = 10.0
    previous_text_max: int = 50

    def __post_init__(self) -> None:
        if self.connect_timeout_s <= 0:
            raise ValueError("connect_timeout_s must be positive")

    def query_params(self) -> list[tuple[str, Any]]:
        """The query parameters, in the order they are sent."""
        params: list[tuple[str, Any]] = [
            ("model_id", self.model_id),
            ("audio_format", self.audio_format),
            ("commit_strategy", "manual"),
        ]
        if self.language_code:
            params.append(("language_code", self.language_code))
        params.append(("include_timestamps", "true" if self.include_timestamps else "false"))
        if self.keyterms:
            params.append(("keyterms", list(self.keyterms)))
        return params

    def connect_url(self) -> str:
        """The websocket URL with every setting in its query string."""
        query = urlencode(self.query_params(), doseq=True, quote_via=quote)
        separator = "&" if "?" in self.url else "?"
        return f"{self.url}{separator}{query}"

    @property
    def sample_rate(self) -> int:
        return 8000

    @property
    def bytes_per_ms(self) -> int:
        return BYTES_PER_MS[self.audio_format]

    @property
    def frame_bytes(self) -> int:
        """Bytes in one 20 ms frame: 160 for μ-law, 320 for 16-bit PCM."""
        return FRAME_MS * self.bytes_per_ms
