"""A local stand-in for ElevenLabs Scribe batch (``POST /v1/speech-to-text``), for tests and
the demo.

:class:`ScribeBatchEmulator` takes ``multipart/form-data`` as the live API does and
validates every documented field (reference §6) the way its request model does: ``model_id``
is required and one of the known models; exactly one of ``file``, ``cloud_storage_url`` or
``source_url``; booleans, ``num_speakers`` (1–32), ``timestamps_granularity``,
``file_format``, ``diarization_threshold`` (only with ``diarize`` and no ``num_speakers``),
``temperature``, ``seed``, ``keyterms`` (at most 1000, each under 50 characters and at most
5 words) and ``entity_detection`` (a category or a type name) — a bad request gets ``422``
with a ``detail`` list, as FastAPI answers; a bad key ``401``. Fields it does not know are
ignored (recorded in :attr:`BatchRequest.ignored_fields`), as the live service ignores them.

The answer has the documented shape (``language_code`` in ISO 639-3, ``text``, ``words``
with ``spacing`` entries, ``transcription_id``, ``entities``, ``audio_duration_secs``), from
the same synthetic recogniser as the realtime emulator: tone-burst words, or the text of a
:class:`~callbridge.testing.speech_script.SpeechScript` (its ``batch_text`` and
``entities``), or, given ``lines`` (what was said, per track: a key found in the file's name,
e.g. ``{"inbound": [...], "outbound": [...]}``), those lines laid on the voiced stretches it
hears: the demo's sample call comes back as its script. Without either, ``transcriber``
says what it heard: ``tones`` names tone-burst words (``tone550``), ``duration`` reports each
stretch of sound as ``[emulated batch: 1.8 s of sound]``. It decodes WAV (PCM, any rate) and
``file_format=pcm_s16le_16``; any other container is answered ``400 invalid_audio`` (the
live service decodes most formats).

``GET``/``DELETE /v1/speech-to-text/transcripts/{id}`` return or delete what it made (404
once gone). Faults are injected per request, in order (:meth:`ScribeBatchEmulator.inject`):
429 with ``Retry-After``, 5xx, slow answers, dropped connections. ``max_in_flight`` is the
most transcription requests it was answering at once.

    async with ScribeBatchEmulator(script=script) as batch:
        batch.inject(BatchFault.rate_limit("2"))
        ...  # CALLBRIDGE_SCRIBE_BATCH_URL=batch.url, ELEVENLABS_API_KEY=batch.api_key
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import re
import secrets
import time
import wave
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from aiohttp import BodyPartReader, web

from callbridge import event_loop
from callbridge.testing.local_server import HttpFault, LocalHttpServer
from callbridge.testing.speech import detect_words, frame_levels_dbfs
from callbridge.testing.speech_script import ScriptedUtterance, SpeechScript, TimedToken

BATCH_PATH = "/v1/speech-to-text"
TRANSCRIPTS_PATH = BATCH_PATH + "/transcripts/{transcription_id}"
DEFAULT_API_KEY = "test-key"
MODELS = frozenset({"scribe_v1", "scribe_v1_experimental", "scribe_v2", "scribe_v2_medical",
                    "scribe_v3"})  # fmt: skip
ENTITY_CATEGORIES = frozenset({"all", "pii", "phi", "pci", "other", "offensive_language"})
ENTITY_CATEGORY_OF = {
    "credit_card": "pci",
    "credit_card_number": "pci",
    "credit_card_expiration": "pci",
    "cvv": "pci",
    "bank_account": "pci",
    "ssn": "pii",
    "date_of_birth": "pii",
    "name": "pii",
    "email_address": "pii",
    "phone_number": "pii",
}
BOOLEANS = {"true": True, "1": True, "yes": True, "on": True,
            "false": False, "0": False, "no": False, "off": False}  # fmt: skip
ISO_639_3 = {"en": "eng", "es": "spa", "fr": "fra", "de": "deu", "it": "ita", "pt": "por"}
NO_KEY_TEXT = "Neither authorization header nor xi-api-key received, please provide one."
NOT_MULTIPART_TEXT = "Expected multipart/form-data"
RATE_LIMIT_TEXT = "Too many concurrent requests (emulated)"
SERVER_ERROR_TEXT = "An internal error occurred (emulated)"
BOOLEAN_TEXT = "Input should be a valid boolean, unable to interpret input"
ONE_SOURCE_TEXT = "Exactly one of the file or cloud_storage_url parameters must be provided."
THRESHOLD_TEXT = "diarization_threshold can only be set when diarize=True and num_speakers=None"


@dataclass(frozen=True, slots=True)
class BatchFault(HttpFault):
    """One injected fault: ``rate_limit``, ``server_error``, ``slow`` or ``disconnect``."""


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """One transcription request as received (fields with repeats, the file's bytes)."""

    headers: dict[str, str]
    query: dict[str, str]
    fields: dict[str, list[str]]
    files: dict[str, tuple[str | None, str | None, bytes]]  # name → (filename, type, bytes)
    ignored_fields: tuple[str, ...]
    status: int  # what was answered (0: nothing, the connection was dropped or abandoned)
    fault: str | None
    received_at: float = field(default_factory=time.time)

    def field(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[0] if values else None


KNOWN_FIELDS = frozenset(
    {
        "model_id", "file", "cloud_storage_url", "source_url", "language_code",
        "secondary_language_codes", "numbers_format", "tag_audio_events", "num_speakers",
        "diarize", "diarization_threshold", "timestamps_granularity", "file_format",
        "additional_formats", "webhook", "webhook_id", "webhook_metadata", "temperature",
        "seed", "use_multi_channel", "multichannel_output_style", "entity_detection",
        "entity_redaction", "entity_redaction_mode", "keyterms", "no_verbatim",
        "detect_speaker_roles", "use_speaker_library", "transcript_edit",
    }
)  # fmt: skip


class _Invalid(Exception):
    def __init__(self, field_name: str, message: str, kind: str = "value_error") -> None:
        super().__init__(message)
        self.field_name = field_name
        self.message = message
        self.kind = kind


class ScribeBatchEmulator(LocalHttpServer):
    """The emulator server (see the module docstring). ``port=0`` picks a free port."""

    def __init__(
        self,
        *,
        api_key: str | None = DEFAULT_API_KEY,
        script: SpeechScript | None = None,
        lines: Mapping[str, Sequence[str]] | None = None,
        transcriber: Literal["tones", "duration"] = "tones",
        port: int = 0,
    ) -> None:
        super().__init__(port)
        self.api_key = api_key
        self.script = script
        self.transcriber = transcriber
        self.lines = dict(lines or {})
        self.requests: list[BatchRequest] = []
        self.transcripts: dict[str, dict[str, Any]] = {}
        self.deleted: list[str] = []
        self.in_flight = 0  # transcription requests being answered now
        self.max_in_flight = 0  # the most answered at once so far
        self._faults: deque[BatchFault | None] = deque()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT/v1/speech-to-text`` (after start)."""
        return f"http://127.0.0.1:{self.port}{BATCH_PATH}"

    def inject(self, *faults: BatchFault | None) -> None:
        """Faults for the next transcription requests, in order (None: answer normally)."""
        self._faults.extend(faults)

    @property
    def answered(self) -> list[BatchRequest]:
        return [request for request in self.requests if request.status == 200]

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024 * 1024)
        app.router.add_post(BATCH_PATH, self._transcribe)
        app.router.add_get(TRANSCRIPTS_PATH, self._get)
        app.router.add_delete(TRANSCRIPTS_PATH, self._delete)
        return app

    # -- auth and errors ---------------------------------------------------------------------

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self.api_key is None:
            return None
        key = request.headers.get("xi-api-key")
        if key is None:
            return _detail(401, "needs_authorization", NO_KEY_TEXT)
        if key != self.api_key:
            return _detail(401, "invalid_api_key", "Invalid API key")
        return None

    # -- transcripts -------------------------------------------------------------------------

    async def _get(self, request: web.Request) -> web.Response:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        found = self.transcripts.get(request.match_info["transcription_id"])
        if found is None:
            return _detail(404, "transcript_not_found", "Transcript not found")
        return web.json_response(found)

    async def _delete(self, request: web.Request) -> web.Response:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        transcription_id = request.match_info["transcription_id"]
        if self.transcripts.pop(transcription_id, None) is None:
            return _detail(404, "transcript_not_found", "Transcript not found")
        self.deleted.append(transcription_id)
        return web.json_response({"status": "ok"})

    async def _transcribe(self, request: web.Request) -> web.StreamResponse:
        fault = self._faults.popleft() if self._faults else None
        fields: dict[str, list[str]] = {}
        files: dict[str, tuple[str | None, str | None, bytes]] = {}
        status = 0  # until an answer goes out (0: none did, the connection was dropped)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            denied = self._unauthorized(request)
            if denied is not None:
                status = denied.status
                return denied
            if not request.content_type.startswith("multipart/form-data"):
                status = 422
                return _validation([("body", "file", NOT_MULTIPART_TEXT, "value_error")])
            reader = await request.multipart()
            async for part in reader:
                if not isinstance(part, BodyPartReader) or part.name is None:
                    continue
                data = bytes(await part.read())
                if part.filename is not None:
                    files[part.name] = (part.filename, part.headers.get("Content-Type"), data)
                else:
                    fields.setdefault(part.name, []).append(data.decode("utf-8"))
            if fault is not None and fault.kind == "slow":
                await asyncio.sleep(fault.delay_s)  # then answer as usual
            elif fault is not None:
                response = await self._fault(request, fault)
                status = response.status if isinstance(response, web.Response) else 0
                return response
            try:
                options = _check(fields, files)
            except _Invalid as invalid:
                status = 422
                return _validation([("body", invalid.field_name, invalid.message, invalid.kind)])
            answer = self._recognise(options, files.get("file"))
            if isinstance(answer, web.Response):
                status = answer.status
                return answer
            self.transcripts[answer["transcription_id"]] = answer
            status = 200
            if options.get("webhook"):
                return web.json_response(
                    {
                        "message": "Request accepted (emulated)",
                        "request_id": secrets.token_hex(8),
                        "transcription_id": answer["transcription_id"],
                    }
                )
            return web.json_response(answer)
        finally:
            self.in_flight -= 1
            self.requests.append(
                BatchRequest(
                    headers=dict(request.headers),
                    query=dict(request.query),
                    fields=fields,
                    files=files,
                    ignored_fields=tuple(sorted(set(fields) - KNOWN_FIELDS)),
                    status=status,
                    fault=fault.kind if fault is not None else None,
                )
            )

    async def _fault(self, request: web.Request, fault: BatchFault) -> web.StreamResponse:
        if fault.kind == "disconnect":
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=0)
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        if fault.kind == "rate_limit":
            return _detail(429, "rate_limit_exceeded", RATE_LIMIT_TEXT, headers)
        return _detail(fault.status, "internal_error", SERVER_ERROR_TEXT, headers)

    # -- recognition -------------------------------------------------------------------------

    def _recognise(
        self, options: Mapping[str, Any], upload: tuple[str | None, str | None, bytes] | None
    ) -> dict[str, Any] | web.Response:
        if upload is None:
            return _detail(400, "invalid_audio", "The emulator only transcribes uploaded files")
        try:
            pcm, rate = _decode(upload[2], str(options.get("file_format") or "other"))
        except ValueError as exc:
            return _detail(400, "invalid_audio", f"Could not decode the audio: {exc}")
        detected = detect_words(pcm, sample_rate=rate) if len(pcm) else []
        script = self.script
        lines = next((v for k, v in self.lines.items() if k in (upload[0] or "")), None)
        rendered: list[tuple[TimedToken, ScriptedUtterance | None]]
        if lines is not None:
            rendered = [(token, None) for token in _said(_loud_stretches(pcm, rate), lines)]
        elif script is not None:
            rendered = script.render(detected, lambda w: f"tone{w.freq_hz}", batch=True)
        elif self.transcriber == "duration":
            rendered = [(token, None) for token in _durations(_loud_stretches(pcm, rate))]
        else:
            rendered = [
                (TimedToken(f"tone{w.freq_hz}", w.start_ms, w.end_ms), None) for w in detected
            ]
        speaker = "speaker_0"
        words: list[dict[str, Any]] = []
        text = ""
        occurrences: list[tuple[int, ScriptedUtterance]] = []
        previous: ScriptedUtterance | None = None
        granularity = str(options.get("timestamps_granularity") or "word")
        for index, (token, utterance) in enumerate(rendered):
            if index:
                gap_start = rendered[index - 1][0].end_ms
                words.append(_word(" ", gap_start, token.start_ms, "spacing", speaker))
                text += " "
            if utterance is not None and utterance is not previous:
                occurrences.append((len(text), utterance))
            previous = utterance
            word = _word(token.text, token.start_ms, token.end_ms, "word", speaker)
            if granularity == "character":
                step = (token.end_ms - token.start_ms) / max(1, len(token.text)) / 1000
                word["characters"] = [
                    {"text": c, "start": round(token.start_ms / 1000 + i * step, 3),
                     "end": round(token.start_ms / 1000 + (i + 1) * step, 3)}
                    for i, c in enumerate(token.text)
                ]  # fmt: skip
            words.append(word)
            text += token.text
        requested = options.get("entity_detection") or []
        entities: list[dict[str, Any]] | None = None
        if requested:
            entities = []
            for start, utterance in occurrences:
                for entity_type, entity_text in utterance.entities:
                    category = ENTITY_CATEGORY_OF.get(entity_type, "other")
                    if not ({"all", category, entity_type} & set(requested)):
                        continue
                    at = text.find(entity_text, start)
                    if at >= 0:
                        entities.append(
                            {"text": entity_text, "entity_type": entity_type,
                             "start_char": at, "end_char": at + len(entity_text)}
                        )  # fmt: skip
        language = str(options.get("language_code") or "en")
        return {
            "language_code": ISO_639_3.get(language, language),
            "language_probability": 0.99,
            "text": text,
            "words": [] if granularity == "none" else words,
            "channel_index": None,
            "additional_formats": None,
            "transcription_id": "tr_" + secrets.token_hex(10),
            "entities": entities,
            "audio_duration_secs": round(len(pcm) / rate, 3) if rate else 0.0,
            "edited_transcript": None,
        }


def _loud_stretches(pcm: np.ndarray, rate: int, floor_dbfs: float = -45.0) -> list[tuple[int, int]]:
    """``[start_ms, end_ms)`` of every stretch of 10 ms frames above ``floor_dbfs`` (any
    sound, not only tone-burst words: the demo plays real speech)."""
    loud = frame_levels_dbfs(pcm, rate) > floor_dbfs
    stretches: list[tuple[int, int]] = []
    for index, on in enumerate(loud.tolist()):
        if not on:
            continue
        at = index * 10
        if stretches and at - stretches[-1][1] <= 50:
            stretches[-1] = (stretches[-1][0], at + 10)
        else:
            stretches.append((at, at + 10))
    return stretches


def _durations(heard: Sequence[tuple[int, int]], pause_ms: int = 700) -> list[TimedToken]:
    """What the ``duration`` transcriber reports: each stretch of sound between pauses as
    ``[emulated batch: 1.8 s of sound]``, never words it did not hear."""
    groups: list[list[int]] = []
    for start, end in heard:
        if groups and start - groups[-1][1] < pause_ms:
            groups[-1][1] = end
        else:
            groups.append([start, end])
    tokens: list[TimedToken] = []
    for start, end in groups:
        words = f"[emulated batch: {(end - start) / 1000:.1f} s of sound]".split()
        step = (end - start) / len(words)
        tokens += [
            TimedToken(word, round(start + i * step), round(start + (i + 1) * step))
            for i, word in enumerate(words)
        ]
    return tokens


def _said(heard: Sequence[tuple[int, int]], lines: Sequence[str]) -> list[TimedToken]:
    """``lines`` (what was said, in order) laid on the stretches heard: they are cut into as
    many utterances as there are lines at the longest pauses, and each line's words share
    its utterance's time evenly."""
    if not heard or not lines:
        return []
    count = min(len(lines), len(heard))
    gaps = sorted(range(1, len(heard)), key=lambda i: heard[i][0] - heard[i - 1][1], reverse=True)
    cuts = sorted(gaps[: count - 1])
    tokens: list[TimedToken] = []
    for line, start, end in zip(lines, [0, *cuts], [*cuts, len(heard)], strict=False):
        words = line.split()
        begin, finish = heard[start][0], heard[end - 1][1]
        step = (finish - begin) / max(1, len(words))
        tokens += [
            TimedToken(word, round(begin + i * step), round(begin + (i + 1) * step))
            for i, word in enumerate(words)
        ]
    return tokens


def _word(text: str, start_ms: int, end_ms: int, kind: str, speaker: str) -> dict[str, Any]:
    return {"text": text, "start": round(start_ms / 1000, 3), "end": round(end_ms / 1000, 3),
            "type": kind, "speaker_id": speaker, "logprob": 0.0}  # fmt: skip


def _decode(data: bytes, file_format: str) -> tuple[np.ndarray, int]:
    """16-bit PCM samples and their rate, from a WAV (or raw pcm_s16le_16)."""
    if file_format == "pcm_s16le_16":
        if len(data) % 2:
            raise ValueError("pcm_s16le_16 audio must hold whole 16-bit samples")
        return np.frombuffer(data, dtype="<i2").astype(np.int16), 16000
    try:
        with wave.open(io.BytesIO(data), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        raise ValueError(str(exc) or "not a WAV file") from None
    if width != 2:
        raise ValueError(f"{8 * width}-bit WAV (the emulator decodes 16-bit PCM)")
    samples = np.frombuffer(frames, dtype="<i2").astype(np.int16)
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return samples, rate


def _boolean(fields: Mapping[str, list[str]], name: str) -> bool | None:
    value = _one(fields, name)
    if value is None:
        return None
    parsed = BOOLEANS.get(value.strip().lower())
    if parsed is None:
        raise _Invalid(name, BOOLEAN_TEXT, "bool_parsing")
    return parsed


def _number(fields: Mapping[str, list[str]], name: str, kind: type, low: float, high: float) -> Any:
    value = _one(fields, name)
    if value is None:
        return None
    try:
        parsed = kind(value)
    except ValueError:
        message = f"Input should be a valid {kind.__name__}"
        raise _Invalid(name, message, f"{kind.__name__}_parsing") from None
    if not low <= parsed <= high:
        raise _Invalid(name, f"Input should be between {low:g} and {high:g}")
    return parsed


def _one(fields: Mapping[str, list[str]], name: str) -> str | None:
    values = fields.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise _Invalid(name, "Expected a single value")
    return values[0]


def _check(
    fields: Mapping[str, list[str]], files: Mapping[str, tuple[str | None, str | None, bytes]]
) -> dict[str, Any]:
    """The validated options; :class:`_Invalid` for the first problem."""
    model_id = _one(fields, "model_id")
    if model_id is None:
        raise _Invalid("model_id", "Field required", "missing")
    if model_id not in MODELS:
        raise _Invalid("model_id", f"Input should be one of {', '.join(sorted(MODELS))}", "enum")
    sources = [name for name in ("cloud_storage_url", "source_url") if _one(fields, name)]
    if "file" in fields:
        raise _Invalid("file", "Expected UploadFile, received: <class 'str'>", "value_error")
    if len(sources) + ("file" in files) != 1:
        raise _Invalid("file", ONE_SOURCE_TEXT)
    options: dict[str, Any] = {"model_id": model_id}
    language = _one(fields, "language_code")
    if language is not None and language and not re.fullmatch(r"[A-Za-z]{2,3}", language):
        raise _Invalid("language_code", "Invalid language code: use ISO 639-1 or ISO 639-3")
    options["language_code"] = language or None
    for name in ("tag_audio_events", "diarize", "use_multi_channel", "webhook", "no_verbatim"):
        options[name] = _boolean(fields, name)
    options["num_speakers"] = _number(fields, "num_speakers", int, 1, 32)
    options["diarization_threshold"] = _number(fields, "diarization_threshold", float, 0.1, 0.4)
    if options["diarization_threshold"] is not None and (
        not options["diarize"] or options["num_speakers"] is not None
    ):
        raise _Invalid("diarization_threshold", THRESHOLD_TEXT)
    options["temperature"] = _number(fields, "temperature", float, 0.0, 2.0)
    options["seed"] = _number(fields, "seed", int, 0, 2147483647)
    granularity = _one(fields, "timestamps_granularity")
    if granularity is not None and granularity not in ("none", "word", "character"):
        message = "Input should be 'none', 'word' or 'character'"
        raise _Invalid("timestamps_granularity", message, "enum")
    options["timestamps_granularity"] = granularity
    file_format = _one(fields, "file_format")
    if file_format is not None and file_format not in ("pcm_s16le_16", "other"):
        raise _Invalid("file_format", "Input should be 'pcm_s16le_16' or 'other'", "enum")
    options["file_format"] = file_format
    keyterms = fields.get("keyterms", [])
    if len(keyterms) > 1000:
        raise _Invalid("keyterms", "At most 1000 keyterms are allowed")
    for term in keyterms:
        if len(term) >= 50 or len(term.split()) > 5 or not term.strip():
            message = f"Invalid keyterm {term!r}: under 50 characters and at most 5 words"
            raise _Invalid("keyterms", message)
    entity_detection = fields.get("entity_detection", [])
    for value in entity_detection:
        if value not in ENTITY_CATEGORIES and not re.fullmatch(r"[a-z][a-z_.]*", value):
            raise _Invalid("entity_detection", f"Unknown entity type or category {value!r}")
    options["entity_detection"] = entity_detection
    metadata = _one(fields, "webhook_metadata")
    if metadata is not None:
        if len(metadata.encode()) > 16 * 1024:
            raise _Invalid("webhook_metadata", "webhook_metadata must be at most 16KB")
        try:
            json.loads(metadata)
        except ValueError:
            raise _Invalid("webhook_metadata", "webhook_metadata must be a JSON string") from None
    return options


def _detail(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"detail": {"status": code, "message": message}}, status=status, headers=headers
    )


def _validation(problems: list[tuple[str, str, str, str]]) -> web.Response:
    return web.json_response(
        {"detail": [{"loc": [where, name], "msg": msg, "type": kind}
                    for where, name, msg, kind in problems]},
        status=422,
    )  # fmt: skip


async def _serve(args: argparse.Namespace) -> None:
    async with ScribeBatchEmulator(api_key=args.api_key, port=args.port) as emulator:
        print(f"Scribe batch emulator listening on {emulator.url}", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    """Run the batch emulator standalone until interrupted."""
    parser = argparse.ArgumentParser(description="Local emulator of ElevenLabs Scribe batch")
    parser.add_argument("--port", type=int, default=8767)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY, help="accepted xi-api-key")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        event_loop.run(_serve(args), "auto")


if __name__ == "__main__":
    main()
