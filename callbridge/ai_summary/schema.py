"""The AI summary's JSON: what the LLM must answer, what the bridge stores and serves.

One definition serves three purposes:

* :func:`content_schema` with the call's speaker labels is the schema sent to the LLM as
  ``response_format`` (``json_schema``, ``strict``). It stays inside the subset that
  strict structured outputs accept everywhere: every object closed
  (``additionalProperties: false``) with every property required, no ``format``, no
  length or numeric bounds.
* :func:`validate_content` checks what comes back against that schema plus the bounds the
  strict subset cannot express (non-empty text, length limits), and the speaker labels.
* :data:`AI_SUMMARY_SCHEMA` is the stored and served ``ai`` object (interface §6), as
  published in the OpenAPI document.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from typing import Any

import jsonschema_rs

SCHEMA_NAME = "call_summary"


class AIStatus(enum.StrEnum):
    PENDING = "pending"  # waiting for (or in) its turn with the LLM, retries included
    READY = "ready"  # gist, reason, outcome, action_items and sentiment are there
    FAILED = "failed"  # finally failed; ``error`` says why


OUTCOMES = ("resolved", "unresolved", "escalated", "follow_up")
SENTIMENTS = ("negative", "neutral", "positive")
CONTENT_FIELDS = ("gist", "reason", "outcome", "action_items", "sentiment")

# Bounds beyond the strict subset, checked on return (generous: they catch garbage).
MAX_GIST_CHARS = 2000
MAX_TEXT_CHARS = 1000
MAX_ACTION_ITEMS = 50


def _text(description: str, max_chars: int | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "description": description}
    if max_chars is not None:
        schema |= {"minLength": 1, "maxLength": max_chars}
    return schema


def _closed(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _sentiment_value() -> dict[str, Any]:
    return {"type": "string", "enum": list(SENTIMENTS)}


def content_schema(speakers: Sequence[str] | None, *, bounded: bool = False) -> dict[str, Any]:
    """The JSON object the LLM answers.

    ``speakers``: the call's speaker labels, each a required ``sentiment`` key; None gives
    the general form (any label) for the OpenAPI document. ``bounded`` adds the length
    bounds that strict structured outputs do not accept (used to validate, not to ask).
    """
    gist_max = MAX_GIST_CHARS if bounded else None
    text_max = MAX_TEXT_CHARS if bounded else None
    if speakers is None:
        sentiment: dict[str, Any] = {
            "type": "object",
            "additionalProperties": _sentiment_value(),
        }
    else:
        sentiment = _closed({label: _sentiment_value() for label in speakers})
    sentiment["description"] = "each speaker label: negative, neutral or positive"
    action_items: dict[str, Any] = {
        "type": "array",
        "description": "what must happen next, in order; empty when nothing must",
        "items": _closed(
            {
                "owner": _text(
                    "who must do it: a speaker label, or another party named in the call",
                    text_max,
                ),
                "text": _text("what must be done, one sentence", text_max),
            }
        ),
    }
    if bounded:
        action_items["maxItems"] = MAX_ACTION_ITEMS
    return _closed(
        {
            "gist": _text(
                "two or three sentences: what the call was about and how it ended", gist_max
            ),
            "reason": _text("why the caller called, one sentence", text_max),
            "outcome": _closed(
                {
                    "status": {
                        "type": "string",
                        "enum": list(OUTCOMES),
                        "description": (
                            "resolved: the caller's need was met; unresolved: it was not; "
                            "escalated: handed to someone else; follow_up: something must "
                            "still happen"
                        ),
                    },
                    "text": _text("how the call ended, one sentence", text_max),
                }
            ),
            "action_items": action_items,
            "sentiment": sentiment,
        }
    )


class InvalidSummary(ValueError):
    """An LLM answer that is not the summary asked for; ``str()`` says what is wrong."""


def parse_json_object(content: str) -> dict[str, Any]:
    """The JSON object in an LLM answer.

    Servers without structured output often wrap JSON in a Markdown fence or add a line
    before it; the object from the first ``{`` to the last ``}`` is taken. Anything that
    is not then one JSON object raises :class:`InvalidSummary`.
    """
    text = content.strip()
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise InvalidSummary("the answer holds no JSON object")
    try:
        value = json.loads(text[start : end + 1])
    except json.JSONDecodeError as exc:
        raise InvalidSummary(f"the answer is not valid JSON ({exc.msg} at {exc.pos})") from None
    if not isinstance(value, dict):
        raise InvalidSummary("the answer is not a JSON object")
    return value


_VALIDATORS: dict[tuple[str, ...], Any] = {}


def _validator(speakers: Sequence[str]) -> Any:
    key = tuple(speakers)
    found = _VALIDATORS.get(key)
    if found is None:
        found = jsonschema_rs.Draft202012Validator(content_schema(key, bounded=True))
        if len(_VALIDATORS) < 64:  # labels are configured, so a handful of keys at most
            _VALIDATORS[key] = found
    return found


def validate_content(value: Mapping[str, Any], speakers: Sequence[str]) -> dict[str, Any]:
    """``value`` as a valid summary for a call with these speakers, or :class:`InvalidSummary`
    naming the first few problems (as JSON pointers, so they can be told to the LLM)."""
    problems = []
    for error in _validator(speakers).iter_errors(dict(value)):
        where = "/" + "/".join(str(part) for part in error.instance_path)
        problems.append(f"{where}: {error.message}")
        if len(problems) == 5:
            break
    if problems:
        raise InvalidSummary("; ".join(problems))
    for name in ("gist", "reason"):
        if not str(value[name]).strip():
            raise InvalidSummary(f"/{name}: is blank")
    return {name: value[name] for name in CONTENT_FIELDS}


# --- the stored and served ``ai`` object ----------------------------------------------------

_ERROR = {
    "type": "object",
    "properties": {
        "code": {
            "type": "string",
            "description": (
                "invalid_output (the LLM's answer failed validation twice), llm_unavailable "
                "(timeouts, 429, 5xx or connection errors past the retry time), llm_rejected "
                "(the LLM refused the request: key, model, URL), empty_transcript (nothing "
                "was said), internal_error"
            ),
        },
        "message": {"type": "string"},
    },
    "required": ["code", "message"],
}

_USAGE = {
    "type": "object",
    "description": "what the LLM reported, summed over every request of this summary",
    "properties": {
        "requests": {"type": "integer", "minimum": 0},
        "prompt_tokens": {"type": "integer", "minimum": 0},
        "completion_tokens": {"type": "integer", "minimum": 0},
    },
    "required": ["requests", "prompt_tokens", "completion_tokens"],
}


def _ai_summary_schema() -> dict[str, Any]:
    content = content_schema(None)
    properties: dict[str, Any] = {
        "status": {
            "type": "string",
            "enum": [str(s) for s in AIStatus],
            "description": "pending until the LLM answered (or finally failed)",
        },
        "created_at": {
            "type": "string",
            "format": "date-time",
            "description": "when it was requested (pending) or finished (ready, failed)",
        },
        "model": {
            "type": ["string", "null"],
            "description": "the model that wrote it, as the LLM named itself",
        },
        **content["properties"],
        "error": _ERROR,
        "usage": _USAGE,
        "parts": {
            "type": "integer",
            "minimum": 1,
            "description": "transcript parts summarised separately (long calls), then combined",
        },
    }
    return {
        "type": "object",
        "description": (
            "The AI summary (CALLBRIDGE_SUMMARY_LLM_URL): written by an LLM from the "
            "speaker-labelled, redacted transcript"
        ),
        "properties": properties,
        "required": ["status", "created_at"],
        "allOf": [
            {
                "if": {"properties": {"status": {"const": "ready"}}},
                "then": {"required": ["model", *CONTENT_FIELDS]},
            },
            {
                "if": {"properties": {"status": {"const": "failed"}}},
                "then": {"required": ["error"]},
            },
        ],
    }


AI_SUMMARY_SCHEMA = _ai_summary_schema()
