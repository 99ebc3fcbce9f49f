"""Parsing of Scribe server messages into small immutable objects.

Parsing switches on ``message_type`` and is lenient about fields: missing or malformed
fields get sensible defaults, malformed words are dropped. Error messages become a
:class:`~callbridge.scribe.errors.ScribeError` (raised by :func:`parse_message`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from callbridge.scribe.errors import (
    PROTOCOL,
    ScribeError,
    error_from_message,
    is_error_message_type,
)

DOCUMENTED_IGNORED_TYPES = frozenset(
    {
        "committed_transcript_entities",
        "redacted_transcript",
        "edited_transcript",
        "diarized_transcript",
        "speakers_merged",
    }
)
"""Documented message types the bridge never asks for; they parse to UnknownMessage."""


@dataclass(frozen=True, slots=True)
class SessionStarted:
    """The first server message: the session id and the echo of the session config."""

    session_id: str
    config: Mapping[str, Any]

    @property
    def audio_format(self) -> str | None:
        value = self.config.get("audio_format")
        return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class PartialTranscript:
    """Interim text of the current segment; it may still change. Never store it."""

    text: str


@dataclass(frozen=True, slots=True)
class FinalTranscript:
    """Settled but not yet committed text (``final_transcript[_with_timestamps]``)."""

    text: str
    with_timestamps: bool = False


@dataclass(frozen=True, slots=True)
class ScribeWord:
    """One word (or spacing / audio event); times in seconds on the session audio clock."""

    text: str
    start_s: float
    end_s: float
    type: str = "word"
    logprob: float | None = None
    speaker_id: str | None = None


@dataclass(frozen=True, slots=True)
class CommittedTranscript:
    """The source of truth: the text of the audio since the previous commit.

    Both ``committed_transcript`` and ``committed_transcript_with_timestamps`` parse to this
    class; ``with_timestamps`` says which one it was. With timestamps on, every commit yields
    both, so consumers must count each commit once.
    """

    text: str
    language_code: str | None = None
    words: tuple[ScribeWord, ...] = ()
    with_timestamps: bool = False


@dataclass(frozen=True, slots=True)
class ServerWarning:
    """A non-fatal ``warning`` from the server."""

    text: str


@dataclass(frozen=True, slots=True)
class UnknownMessage:
    """A message type the bridge does not use (undocumented, or documented but not asked for)."""

    message_type: str
    raw: Mapping[str, Any] = field(default_factory=dict)


ServerMessage = (
    SessionStarted
    | PartialTranscript
    | FinalTranscript
    | CommittedTranscript
    | ServerWarning
    | UnknownMessage
)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def parse_word(raw: Any) -> ScribeWord | None:
    """One word, or None when it is unusable (no text, or times that are not numbers)."""
    if not isinstance(raw, Mapping):
        return None
    text = raw.get("text")
    if not isinstance(text, str):
        return None
    start = _number(raw.get("start")) if raw.get("start") is not None else 0.0
    end = _number(raw.get("end")) if raw.get("end") is not None else start
    if start is None or end is None:
        return None
    start = max(0.0, start)
    end = max(start, end)
    word_type = raw.get("type")
    speaker = raw.get("speaker_id")
    return ScribeWord(
        text=text,
        start_s=start,
        end_s=end,
        type=word_type if isinstance(word_type, str) and word_type else "word",
        logprob=_number(raw.get("logprob")),
        speaker_id=speaker if isinstance(speaker, str) else None,
    )


def parse_words(raw: Any) -> tuple[ScribeWord, ...]:
    if not isinstance(raw, list):
        return ()
    words = (parse_word(item) for item in raw)
    return tuple(word for word in words if word is not None)


def decode_json(frame: str | bytes) -> dict[str, Any]:
    """The JSON object in a frame; anything else is a retryable protocol error."""
    try:
        data = json.loads(frame)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ScribeError(PROTOCOL, f"server sent invalid JSON: {exc}", retryable=True) from None
    if not isinstance(data, dict):
        raise ScribeError(PROTOCOL, "server sent JSON that is not an object", retryable=True)
    return data


def message_from_dict(data: Mapping[str, Any]) -> ServerMessage:
    """The parsed message; raises :class:`ScribeError` for error messages."""
    message_type = data.get("message_type")
    if not isinstance(message_type, str):
        raise ScribeError(PROTOCOL, "server message without a message_type", retryable=True)
    match message_type:
        case "session_started":
            config = data.get("config")
            return SessionStarted(
                session_id=_text(data.get("session_id")),
                config=MappingProxyType(dict(config) if isinstance(config, Mapping) else {}),
            )
        case "partial_transcript":
            return PartialTranscript(_text(data.get("text")))
        case "committed_transcript" | "committed_transcript_with_timestamps":
            language = data.get("language_code")
            return CommittedTranscript(
                text=_text(data.get("text")),
                language_code=language if isinstance(language, str) and language else None,
                words=parse_words(data.get("words")),
                with_timestamps=message_type == "committed_transcript_with_timestamps",
            )
        case "final_transcript" | "final_transcript_with_timestamps":
            return FinalTranscript(
                _text(data.get("text")),
                with_timestamps=message_type == "final_transcript_with_timestamps",
            )
        case "warning":
            text = data.get("warning")
            if not isinstance(text, str):
                text = _text(data.get("error")) or _text(data.get("message"))
            return ServerWarning(text)
        case _ if is_error_message_type(message_type):
            raise error_from_message(message_type, _text(data.get("error")))
        case _:
            return UnknownMessage(message_type, MappingProxyType(dict(data)))


def parse_message(frame: str | bytes) -> ServerMessage:
    """Parse one websocket frame from Scribe; raises :class:`ScribeError` for errors."""
    return message_from_dict(decode_json(frame))
