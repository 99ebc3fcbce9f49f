"""The OpenAPI 3.1 document served at ``GET /openapi.json``.

It describes every ``/v1`` route (parameters, responses, the JSON error shape, bearer
security) and, under ``webhooks``, the webhook event payloads of interface §5, which
the events stream also carries (beside its own ``transcript.partial``). The AI summary's
schema (``AISummary``) is the one the bridge validates LLM answers against
(:mod:`callbridge.ai_summary.schema`). The
schemas mirror :mod:`callbridge.api.formats` and :mod:`callbridge.summary`; the API tests
validate real responses against them.
"""

from __future__ import annotations

from typing import Any

from callbridge import __version__ as _package_version
from callbridge.ai_summary.schema import AI_SUMMARY_SCHEMA, AIStatus
from callbridge.api.formats import CONTENT_TYPES, TRANSCRIPT_FORMATS
from callbridge.config import Settings

JSON = "application/json"
EVENT_STREAM = "text/event-stream"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(type_name: str, **extra: Any) -> dict[str, Any]:
    return {"type": [type_name, "null"], **extra}


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
    }


DATE_TIME = {"type": "string", "format": "date-time"}
NULLABLE_DATE_TIME = _nullable("string", format="date-time")
MS = {"type": "integer", "minimum": 0, "description": "milliseconds"}
STREAM_MS = {"type": "integer", "description": "milliseconds on the Twilio stream clock"}

WORD = _obj(
    {
        "text": {"type": "string"},
        "start_ms": STREAM_MS,
        "end_ms": STREAM_MS,
        "type": {"type": "string", "description": "word, spacing or audio_event"},
        "logprob": {"type": "number"},
    },
    required=["text", "start_ms", "end_ms", "type"],
)

SEGMENT_FIELDS: dict[str, Any] = {
    "call_sid": {"type": "string"},
    "stream_sid": {"type": "string"},
    "sequence": {"type": "integer", "minimum": 1, "description": "1, 2, 3 … per call"},
    "speaker": {"type": "string", "description": "the configured label of the track"},
    "track": {"type": "string", "enum": ["inbound", "outbound"]},
    "text": {"type": "string", "description": "this speaker's words only; may be empty"},
    "start_ms": STREAM_MS,
    "end_ms": STREAM_MS,
    "language_code": _nullable("string"),
    "words": {"type": "array", "items": _ref("Word")},
}

SEGMENT = _obj({**SEGMENT_FIELDS, "committed_at": DATE_TIME})

CALL = _obj(
    {
        "call_sid": {"type": "string"},
        "status": {"type": "string", "enum": ["ringing", "live", "ended"]},
        "stream_sid": _nullable("string"),
        "account_sid": _nullable("string"),
        "from": _nullable("string"),
        "to": _nullable("string"),
        "tracks": {"type": "array", "items": {"type": "string"}},
        "custom_parameters": {"type": "object", "additionalProperties": {"type": "string"}},
        "created_at": DATE_TIME,
        "started_at": NULLABLE_DATE_TIME,
        "ended_at": NULLABLE_DATE_TIME,
        "duration_ms": _nullable("integer", minimum=0),
        "reason": _nullable("string", description="why transcription ended (stop, hangup, …)"),
        "twilio_status": _nullable("string", description="last Twilio CallStatus"),
        "twilio_duration_s": _nullable("integer", minimum=0),
        "segments": {"type": "integer", "minimum": 0},
        "language_code": _nullable("string"),
        "degraded": _nullable("string", description="why transcription was incomplete"),
        "summary_available": {"type": "boolean"},
        "ai_summary_status": {
            "type": ["string", "null"],
            "enum": [*(str(s) for s in AIStatus), None],
            "description": "the AI summary's status; null when the call has none",
        },
    }
)

POSTCALL = {
    "type": ["object", "null"],
    "description": (
        "the post-call batch pass (CALLBRIDGE_POSTCALL=batch); null when none was enqueued"
    ),
    "properties": {
        "status": {"type": "string", "enum": ["pending", "running", "done", "failed"]},
        "error": _nullable("string", description="the last error, or why the pass failed"),
        "audio_seconds_billed": _nullable("number", minimum=0),
        "segments": _nullable("integer", minimum=0),
        "finished_at": NULLABLE_DATE_TIME,
    },
    "required": ["status", "error", "audio_seconds_billed", "segments", "finished_at"],
}

SPEAKER_STATS = _obj(
    {
        "talk_ms": {**MS, "description": "measured speech (voice activity) of this speaker"},
        "turns": {"type": "integer", "minimum": 0},
        "words": {"type": "integer", "minimum": 0},
        "words_per_minute": {"type": "number", "minimum": 0},
    }
)

SUMMARY = _obj(
    {
        "call_sid": {"type": "string"},
        "stream_sid": {"type": "string"},
        "ended_at": DATE_TIME,
        "duration_ms": MS,
        "reason": {"type": "string"},
        "degraded": _nullable("string"),
        "audio_lost_ms": MS,
        "language_code": _nullable("string"),
        "segments": {"type": "integer", "minimum": 0},
        "speakers": {"type": "object", "additionalProperties": _ref("SpeakerStats")},
        "talk_ratio": {
            "type": "object",
            "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1},
            "description": "each speaker's share of the total talk time",
        },
        "talk_ms": MS,
        "speech_ms": {**MS, "description": "time in which anyone speaks"},
        "overlap_ms": {**MS, "description": "time in which two or more speakers speak"},
        "silence_ms": {**MS, "description": "time in which nobody speaks"},
        "turns": {"type": "integer", "minimum": 0},
        "longest_turn_ms": MS,
        "longest_turn_speaker": _nullable("string"),
        "transcript": {"type": "string", "description": "one 'speaker: text' line per segment"},
        "ai": _ref("AISummary"),
        "version": {
            "type": "string",
            "enum": ["batch"],
            "description": "only in the summary made from the batch transcript",
        },
    },
    required=[
        "call_sid",
        "duration_ms",
        "speakers",
        "talk_ratio",
        "overlap_ms",
        "silence_ms",
        "longest_turn_ms",
        "segments",
        "language_code",
        "transcript",
    ],
)

ERROR = _obj(
    {
        "error": _obj(
            {
                "code": {"type": "string", "description": "machine-readable, snake_case"},
                "message": {"type": "string"},
            }
        )
    }
)


def _event(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    return _obj(
        {
            "type": {"const": event_type},
            "timestamp": {**DATE_TIME, "description": "RFC 3339 UTC"},
            "data": data,
        }
    )


CALL_STARTED = _event(
    "call.started",
    _obj(
        {
            "call_sid": {"type": "string"},
            "stream_sid": {"type": "string"},
            "account_sid": {"type": "string"},
            "from": _nullable("string"),
            "to": _nullable("string"),
            "tracks": {"type": "array", "items": {"type": "string"}},
            "custom_parameters": {
                "type": "object",
                "additionalProperties": {"type": "string"},
            },
            "started_at": DATE_TIME,
        }
    ),
)

TRANSCRIPT_COMMITTED = _event("transcript.committed", _obj(SEGMENT_FIELDS))

TRANSCRIPT_PARTIAL = _event(
    "transcript.partial",
    _obj(
        {
            "call_sid": {"type": "string"},
            "speaker": {"type": "string", "description": "the label of the segment on air"},
            "track": {"type": "string", "enum": ["inbound", "outbound"]},
            "text": {"type": "string", "description": "the segment's text so far; may change"},
        }
    ),
)

EVENTS_DESCRIPTION = (
    "Server-Sent Events. Each stored webhook event of the call, in order, as `id: "
    "<webhook-id>`, `event: <type>` and one `data:` line holding the exact JSON body the "
    "webhooks carry (schemas under `webhooks`); from the first event, or after the one named "
    "by `Last-Event-ID`, then live as events are committed. While the call is held by the "
    "process that answers, `event: transcript.partial` messages (no `id:`, never stored; "
    "schema `TranscriptPartialEvent`) carry the interim text of the segment on air. Comment "
    "lines (`: keep-alive`) keep idle streams open. The stream ends after `call.ended`, "
    "once no post-call work that stores more events for the call is pending."
)

CALL_ENDED = _event(
    "call.ended",
    _obj(
        {
            "call_sid": {"type": "string"},
            "ended_at": DATE_TIME,
            "duration_ms": MS,
            "segments": {"type": "integer", "minimum": 0},
            "reason": {"type": "string"},
            "summary": _ref("Summary"),
        }
    ),
)


CALL_TRANSCRIPT_FINAL = _event(
    "call.transcript_final",
    _obj(
        {
            "call_sid": {"type": "string"},
            "version": {"const": "batch"},
            "segments": {"type": "array", "items": _obj(SEGMENT_FIELDS)},
            "summary": _ref("Summary"),
            "audio_seconds_billed": {"type": "number", "minimum": 0},
        }
    ),
)

CALL_POSTCALL_FAILED = _event(
    "call.postcall_failed",
    _obj(
        {
            "call_sid": {"type": "string"},
            "version": {"const": "batch"},
            "error": {"type": "string"},
        }
    ),
)

CALL_SUMMARIZED = _event(
    "call.summarized",
    _obj({"call_sid": {"type": "string"}, "ai": _ref("AISummary")}),
)


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref("Error")}}}


UNAUTHORIZED = {
    "description": "missing or invalid bearer token (or no tokens configured)",
    "headers": {
        "WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer challenge"}
    },
    "content": {JSON: {"schema": _ref("Error")}},
}

CALL_SID_PARAMETER = {
    "name": "call_sid",
    "in": "path",
    "required": True,
    "description": "the Twilio Call SID",
    "schema": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[A-Za-z0-9_-]+$"},
}

VERSION_PARAMETER = {
    "name": "version",
    "in": "query",
    "required": False,
    "description": (
        "live: the realtime transcript; batch: the post-call batch pass's "
        "(CALLBRIDGE_POSTCALL=batch)"
    ),
    "schema": {"type": "string", "enum": ["live", "batch"], "default": "live"},
}


def _operation(
    operation_id: str,
    summary: str,
    responses: dict[str, Any],
    parameters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": summary,
        "tags": ["calls"],
        "parameters": parameters or [],
        "responses": {
            "400": _error_response("unknown or repeated query parameter"),
            **responses,
            "401": {"$ref": "#/components/responses/Unauthorized"},
            "503": _error_response("the call store is unavailable"),
        },
    }


def _webhook(summary: str, schema_name: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "description": (
                "POSTed to every CALLBRIDGE_WEBHOOK_URLS target, signed per Standard Webhooks "
                "(webhook-id, webhook-timestamp, webhook-signature); a 2xx answer is success."
            ),
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref(schema_name)}}},
            "responses": {"2XX": {"description": "delivered"}},
        }
    }


def openapi_document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document; ``settings`` supplies the page-size bound."""
    max_page_size = settings.api.max_page_size
    not_found = _error_response("unknown call")
    text_formats = {
        CONTENT_TYPES[name]: {"schema": {"type": "string"}}
        for name in TRANSCRIPT_FORMATS
        if name != "json"
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "callbridge",
            "version": _package_version,
            "description": (
                "Retrieval API of callbridge: calls, their committed transcripts and post-call "
                'summaries. Errors are JSON: {"error": {"code": "...", "message": "..."}}.'
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "tags": [{"name": "calls"}],
        "paths": {
            "/v1/calls": {
                "get": _operation(
                    "listCalls",
                    "Calls, newest first, paginated",
                    {
                        "200": {
                            "description": "one page of calls",
                            "content": {JSON: {"schema": _ref("CallPage")}},
                        },
                        "400": _error_response(
                            "invalid limit, cursor or status, unknown or repeated query parameter"
                        ),
                    },
                    [
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": max_page_size,
                                "default": min(50, max_page_size),
                            },
                        },
                        {
                            "name": "cursor",
                            "in": "query",
                            "required": False,
                            "description": "next_cursor of the previous page (opaque)",
                            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]*$"},
                        },
                        {
                            "name": "status",
                            "in": "query",
                            "required": False,
                            "description": "only calls in this state (live: streaming now)",
                            "schema": {"type": "string", "enum": ["ringing", "live", "ended"]},
                        },
                    ],
                )
            },
            "/v1/calls/{call_sid}": {
                "get": _operation(
                    "getCall",
                    "One call: status, parties, times, counts",
                    {
                        "200": {
                            "description": "the call",
                            "content": {JSON: {"schema": _ref("CallDetail")}},
                        },
                        "404": not_found,
                    },
                    [CALL_SID_PARAMETER],
                ),
                "delete": _operation(
                    "deleteCall",
                    "Erase the call, its segments and its pending webhook events",
                    {
                        "204": {"description": "erased"},
                        "404": not_found,
                        "400": _error_response(
                            "force is not true or false, unknown or repeated query parameter"
                        ),
                        "409": _error_response(
                            "the call is live (force=true erases a call whose stream is gone)"
                        ),
                        "503": _error_response(
                            "the store is unavailable, or what is kept outside it (audio for "
                            "the batch pass, transcripts at ElevenLabs) could not be erased "
                            "(erasure_incomplete): nothing was erased, try again"
                        ),
                    },
                    [
                        CALL_SID_PARAMETER,
                        {
                            "name": "force",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "boolean", "default": False},
                        },
                    ],
                ),
            },
            "/v1/calls/{call_sid}/transcript": {
                "get": _operation(
                    "getTranscript",
                    "Committed segments in order (so far, while the call is live)",
                    {
                        "200": {
                            "description": (
                                "json: every segment; txt: 'speaker: text' lines; vtt: WebVTT "
                                "with <v speaker> voice spans; srt: SubRip. The text formats "
                                "leave out segments with empty text."
                            ),
                            "content": {JSON: {"schema": _ref("Transcript")}, **text_formats},
                        },
                        "400": _error_response(
                            "unknown format or version, unknown or repeated query parameter"
                        ),
                        "404": _error_response(
                            "unknown call; version=batch: no batch transcript (batch_not_found) "
                            "or the pass failed (batch_failed, with the reason)"
                        ),
                        "409": _error_response(
                            "version=batch: the batch pass has not finished (batch_pending)"
                        ),
                    },
                    [
                        CALL_SID_PARAMETER,
                        {
                            "name": "format",
                            "in": "query",
                            "required": False,
                            "schema": {
                                "type": "string",
                                "enum": list(TRANSCRIPT_FORMATS),
                                "default": "json",
                            },
                        },
                        VERSION_PARAMETER,
                    ],
                )
            },
            "/v1/calls/{call_sid}/summary": {
                "get": _operation(
                    "getSummary",
                    "The post-call summary",
                    {
                        "200": {
                            "description": (
                                "the summary; with the AI summary on (CALLBRIDGE_SUMMARY_LLM_URL) "
                                "it also has ai: pending, then ready or failed"
                            ),
                            "content": {JSON: {"schema": _ref("Summary")}},
                        },
                        "404": _error_response(
                            "unknown call; version=batch: no batch transcript or the pass failed"
                        ),
                        "409": _error_response(
                            "the call has not ended yet; version=batch: the pass has not finished"
                        ),
                    },
                    [
                        CALL_SID_PARAMETER,
                        VERSION_PARAMETER,
                    ],
                )
            },
            "/v1/calls/{call_sid}/events": {
                "get": _operation(
                    "streamCallEvents",
                    "The call's events as Server-Sent Events, replayed then live",
                    {
                        "200": {
                            "description": EVENTS_DESCRIPTION,
                            "content": {EVENT_STREAM: {"schema": {"type": "string"}}},
                        },
                        "204": {
                            "description": (
                                "Last-Event-ID names the call's last event and nothing more "
                                "will come: an EventSource stops reconnecting"
                            )
                        },
                        "400": _error_response(
                            "Last-Event-ID is not an event of this call, or a query parameter"
                        ),
                        "404": not_found,
                    },
                    [
                        CALL_SID_PARAMETER,
                        {
                            "name": "Last-Event-ID",
                            "in": "header",
                            "required": False,
                            "description": "resume after this event (its webhook-id)",
                            "schema": {"type": "string"},
                        },
                    ],
                )
            },
        },
        "webhooks": {
            "call.started": _webhook("A call's media stream started", "CallStartedEvent"),
            "transcript.committed": _webhook(
                "A speaker's segment was committed (not sent for empty text)",
                "TranscriptCommittedEvent",
            ),
            "call.ended": _webhook("A call's transcription ended", "CallEndedEvent"),
            "call.summarized": _webhook(
                "A call's AI summary is ready, or has finally failed (ai.status)",
                "CallSummarizedEvent",
            ),
            "call.transcript_final": _webhook(
                "A call's batch transcript is stored (CALLBRIDGE_POSTCALL=batch)",
                "CallTranscriptFinalEvent",
            ),
            "call.postcall_failed": _webhook(
                "Extension: a call's batch pass finally failed (the live transcript stays)",
                "CallPostcallFailedEvent",
            ),
        },
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "one of CALLBRIDGE_API_TOKENS",
                }
            },
            "responses": {"Unauthorized": UNAUTHORIZED},
            "schemas": {
                "Error": ERROR,
                "Word": WORD,
                "Segment": SEGMENT,
                "Call": CALL,
                "CallDetail": {
                    "allOf": [_ref("Call"), _obj({"postcall": POSTCALL})],
                },
                "CallPage": _obj(
                    {
                        "calls": {"type": "array", "items": _ref("Call")},
                        "next_cursor": _nullable(
                            "string", description="pass as cursor for the next page"
                        ),
                    }
                ),
                "Transcript": _obj(
                    {
                        "call_sid": {"type": "string"},
                        "status": {"type": "string", "enum": ["ringing", "live", "ended"]},
                        "segments": {"type": "array", "items": _ref("Segment")},
                        "version": {"type": "string", "enum": ["live", "batch"]},
                    }
                ),
                "SpeakerStats": SPEAKER_STATS,
                "Summary": SUMMARY,
                "AISummary": AI_SUMMARY_SCHEMA,
                "CallStartedEvent": CALL_STARTED,
                "TranscriptCommittedEvent": TRANSCRIPT_COMMITTED,
                "CallEndedEvent": CALL_ENDED,
                "TranscriptPartialEvent": TRANSCRIPT_PARTIAL,
                "CallSummarizedEvent": CALL_SUMMARIZED,
                "CallTranscriptFinalEvent": CALL_TRANSCRIPT_FINAL,
                "CallPostcallFailedEvent": CALL_POSTCALL_FAILED,
            },
        },
    }
