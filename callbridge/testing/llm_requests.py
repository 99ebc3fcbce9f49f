"""Request validation of the LLM emulator: chat-completions bodies checked the way the
OpenAI API checks them, with its error bodies, statuses, ``param`` and ``code`` values.

What is checked: a JSON object body; every top-level parameter known (an unknown one is
``Unrecognized request argument supplied``); ``model`` present and served; ``messages`` a
non-empty array of objects with a known ``role``, the fields that role allows and the
``content`` it needs (a string or an array of content parts); the number ranges of
``temperature``, ``top_p``, ``n``, ``max_tokens``/``max_completion_tokens``; and
``response_format``: its ``type``, a ``json_schema`` with a valid ``name`` and a
``schema``, which under ``strict: true`` must keep to the strict subset (every object
closed with ``additionalProperties: false``, every property in ``required``, an object at
the root, at most 10 levels and 5000 properties); ``json_object`` needs the word "json"
somewhere in the messages. The context window is the model's: a request estimated above
it is refused with ``context_length_exceeded``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ROLES = ("system", "assistant", "user", "function", "tool", "developer")
ROLE_FIELDS: Mapping[str, frozenset[str]] = {
    "system": frozenset({"role", "content", "name"}),
    "developer": frozenset({"role", "content", "name"}),
    "user": frozenset({"role", "content", "name"}),
    "assistant": frozenset(
        {"role", "content", "name", "refusal", "tool_calls", "function_call", "audio"}
    ),
    "tool": frozenset({"role", "content", "tool_call_id"}),
    "function": frozenset({"role", "content", "name"}),
}
KNOWN_PARAMETERS = frozenset(
    {
        "model",
        "messages",
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "metadata",
        "modalities",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "service_tier",
        "stop",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "verbosity",
        "web_search_options",
    }
)
RESPONSE_FORMATS = ("text", "json_object", "json_schema")
SCHEMA_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_SCHEMA_DEPTH = 10
MAX_SCHEMA_PROPERTIES = 5000


@dataclass(frozen=True, slots=True)
class ApiError(Exception):
    """An error answer: HTTP status and the OpenAI error object."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None
    type: str = "invalid_request_error"

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _invalid_type(param: str, expected: str, value: Any) -> ApiError:
    return ApiError(
        400,
        f"Invalid type for '{param}': expected {expected}, but got {_type_name(value)} instead.",
        param,
        "invalid_type",
    )


def _missing(param: str) -> ApiError:
    return ApiError(
        400, f"Missing required parameter: '{param}'.", param, "missing_required_parameter"
    )


def _supported(values: Sequence[str]) -> str:
    quoted = [f"'{value}'" for value in values]
    return ", ".join(quoted[:-1]) + f", and {quoted[-1]}"


def _number(body: Mapping[str, Any], name: str, low: float, high: float | None) -> None:
    if name not in body or body[name] is None:
        return
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid_type(name, "a decimal", value)
    if value < low:
        raise ApiError(
            400,
            f"Invalid '{name}': decimal below minimum value. Expected a value >= {low:g}, "
            f"but got {value} instead.",
            name,
            "decimal_below_min_value",
        )
    if high is not None and value > high:
        raise ApiError(
            400,
            f"Invalid '{name}': decimal above maximum value. Expected a value <= {high:g}, "
            f"but got {value} instead.",
            name,
            "decimal_above_max_value",
        )


def _integer(body: Mapping[str, Any], name: str, low: int) -> None:
    if name not in body or body[name] is None:
        return
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid_type(name, "an integer", value)
    if value < low:
        raise ApiError(
            400,
            f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, "
            f"but got {value} instead.",
            name,
            "integer_below_min_value",
        )


def _check_content(param: str, content: Any, role: str) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _invalid_type(param, "one of a string or array of objects", content)
    allowed = {"text"} if role != "user" else {"text", "image_url", "input_audio", "file"}
    for index, part in enumerate(content):
        where = f"{param}[{index}]"
        if not isinstance(part, dict):
            raise _invalid_type(where, "an object", part)
        kind = part.get("type")
        if kind not in allowed:
            raise ApiError(
                400,
                f"Invalid value: '{kind}'. Supported values are: {_supported(sorted(allowed))}.",
                f"{where}.type",
                "invalid_value",
            )
        if kind == "text" and not isinstance(part.get("text"), str):
            raise _missing(f"{where}.text")


def check_messages(messages: Any) -> None:
    if not isinstance(messages, list):
        raise _invalid_type("messages", "an array", messages)
    if not messages:
        raise ApiError(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but "
            "got an empty array instead.",
            "messages",
            "empty_array",
        )
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _invalid_type(where, "an object", message)
        role = message.get("role")
        if role is None:
            raise _missing(f"{where}.role")
        if role not in ROLES:
            raise ApiError(
                400,
                f"Invalid value: '{role}'. Supported values are: {_supported(ROLES)}.",
                f"{where}.role",
                "invalid_value",
            )
        extra = sorted(set(message) - ROLE_FIELDS[role])
        if extra:
            raise ApiError(
                400,
                f"Additional properties are not allowed ('{extra[0]}' was unexpected) - "
                f"'messages.{index}'",
                None,
                None,
            )
        content = message.get("content")
        needs_content = role != "assistant" or not (
            message.get("tool_calls") or message.get("function_call")
        )
        if content is None and needs_content:
            raise _missing(f"{where}.content")
        if content is not None:
            _check_content(f"{where}.content", content, role)
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise _missing(f"{where}.tool_call_id")


def message_text(message: Mapping[str, Any]) -> str:
    """A message's text (the text parts of an array content)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _walk(
    schema: Any, path: tuple[str, ...], depth: int
) -> Iterator[tuple[Any, tuple[str, ...], int]]:
    if not isinstance(schema, dict):
        return
    yield schema, path, depth
    for key in ("properties", "$defs", "definitions"):
        children = schema.get(key)
        if isinstance(children, dict):
            for name, child in children.items():
                yield from _walk(child, (*path, key, name), depth + (key == "properties"))
    items = schema.get("items")
    if isinstance(items, dict):
        yield from _walk(items, (*path, "items"), depth)
    for key in ("anyOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list):
            for index, child in enumerate(options):
                yield from _walk(child, (*path, key, str(index)), depth)


def check_strict_schema(name: str, schema: Any) -> None:
    """The strict-mode rules, with the API's wording (``In context=(…)``)."""

    def fail(path: tuple[str, ...], problem: str) -> ApiError:
        context = "(" + ", ".join(f"'{p}'" for p in path) + ("," if len(path) == 1 else "") + ")"
        return ApiError(
            400,
            f"Invalid schema for response_format '{name}': In context={context}, {problem}",
            "response_format",
            None,
        )

    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise fail((), "schema must be a JSON Schema of 'type: \"object\"', got 'type: \"None\"'.")
    properties = 0
    for node, path, depth in _walk(schema, (), 1):
        if depth > MAX_SCHEMA_DEPTH:
            raise fail(path, f"schema exceeds the maximum nesting depth of {MAX_SCHEMA_DEPTH}.")
        node_type = node.get("type")
        is_object = node_type == "object" or (isinstance(node_type, list) and "object" in node_type)
        if not is_object:
            continue
        if node.get("additionalProperties") is not False:
            raise fail(path, "'additionalProperties' is required to be supplied and to be false.")
        props = node.get("properties", {})
        properties += len(props) if isinstance(props, dict) else 0
        required = node.get("required")
        missing = [key for key in props if not isinstance(required, list) or key not in required]
        if missing:
            raise fail(
                path,
                "'required' is required to be supplied and to be an array including every "
                f"key in properties. Missing '{missing[0]}'.",
            )
        extra = [key for key in required or [] if key not in props]
        if extra:
            raise fail(path, f"'required' names '{extra[0]}', which is not in properties.")
    if properties > MAX_SCHEMA_PROPERTIES:
        raise fail((), f"schema has more than {MAX_SCHEMA_PROPERTIES} object properties.")


def check_response_format(
    response_format: Any, messages: Sequence[Mapping[str, Any]], supported: Sequence[str]
) -> None:
    if response_format is None:
        return
    if not isinstance(response_format, dict):
        raise _invalid_type("response_format", "an object", response_format)
    kind = response_format.get("type")
    if kind is None:
        raise _missing("response_format.type")
    if kind not in RESPONSE_FORMATS:
        raise ApiError(
            400,
            f"Invalid value: '{kind}'. Supported values are: {_supported(RESPONSE_FORMATS)}.",
            "response_format.type",
            "invalid_value",
        )
    if kind not in supported:
        # How a server without this mode answers (the real API has every mode).
        raise ApiError(
            400,
            f"response_format type '{kind}' is not supported by this server",
            "response_format",
            None,
        )
    if kind == "json_object":
        if not any("json" in message_text(m).lower() for m in messages):
            raise ApiError(
                400,
                "'messages' must contain the word 'json' in some form, to use "
                "'response_format' of type 'json_object'.",
                "messages",
                None,
            )
        return
    if kind != "json_schema":
        return
    spec = response_format.get("json_schema")
    if spec is None:
        raise _missing("response_format.json_schema")
    if not isinstance(spec, dict):
        raise _invalid_type("response_format.json_schema", "an object", spec)
    extra = sorted(set(spec) - {"name", "schema", "strict", "description"})
    if extra:
        raise ApiError(
            400,
            f"Unrecognized request argument supplied: response_format.json_schema.{extra[0]}",
        )
    name = spec.get("name")
    if name is None:
        raise _missing("response_format.json_schema.name")
    if not isinstance(name, str) or not SCHEMA_NAME.match(name):
        raise ApiError(
            400,
            f"Invalid 'response_format.json_schema.name': string does not match pattern. "
            f"Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$', got '{name}'.",
            "response_format.json_schema.name",
            "invalid_value",
        )
    strict = spec.get("strict", False)
    if strict is not None and not isinstance(strict, bool):
        raise _invalid_type("response_format.json_schema.strict", "a boolean", strict)
    schema = spec.get("schema")
    if schema is not None and not isinstance(schema, dict):
        raise _invalid_type("response_format.json_schema.schema", "an object", schema)
    if strict:
        check_strict_schema(name, schema)


def check_request(
    body: Any,
    *,
    models: Sequence[str],
    response_formats: Sequence[str],
) -> None:
    """Raise :class:`ApiError` for a body the API would refuse (model last but one, as the
    API reports an unknown model only for an otherwise well-formed request)."""
    if not isinstance(body, dict):
        raise ApiError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means "
            "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
            "payload, but what was sent was not valid JSON.)",
        )
    unknown = sorted(set(body) - KNOWN_PARAMETERS)
    if unknown:
        raise ApiError(400, f"Unrecognized request argument supplied: {unknown[0]}")
    if "model" not in body:
        raise ApiError(400, "you must provide a model parameter")
    if not isinstance(body["model"], str):
        raise _invalid_type("model", "a string", body["model"])
    if "messages" not in body:
        raise _missing("messages")
    check_messages(body["messages"])
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _number(body, "frequency_penalty", -2, 2)
    _number(body, "presence_penalty", -2, 2)
    _integer(body, "n", 1)
    _integer(body, "max_tokens", 1)
    _integer(body, "max_completion_tokens", 1)
    if "stream" in body and body["stream"] is not None and not isinstance(body["stream"], bool):
        raise _invalid_type("stream", "a boolean", body["stream"])
    check_response_format(body.get("response_format"), body["messages"], response_formats)
    if body["model"] not in models:
        raise ApiError(
            404,
            f"The model `{body['model']}` does not exist or you do not have access to it.",
            None,
            "model_not_found",
        )
