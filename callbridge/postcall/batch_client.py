"""A client for ElevenLabs Scribe batch: ``POST /v1/speech-to-text`` and its transcripts.

:meth:`ScribeBatchClient.transcribe` sends one WAV as ``multipart/form-data`` with
``xi-api-key`` and the parameters of :class:`BatchOptions` (repeated fields for
``keyterms`` and ``entity_detection``, as the official SDK sends lists), and parses the
``SpeechToTextChunkResponseModel``. :meth:`~ScribeBatchClient.get` and
:meth:`~ScribeBatchClient.delete` use ``transcripts_url`` (the SDK's
``/v1/speech-to-text/transcripts/{transcription_id}`` by default; a 404 on delete means it
is gone already).

Failures raise :class:`BatchError`, which says whether retrying can help: 429 (with its
``Retry-After``), 408, 5xx, timeouts and network errors can; 4xx such as 401 (key), 400 or
422 (a bad request) cannot.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from callbridge.webhooks.dispatcher import parse_retry_after

USER_AGENT = "callbridge-postcall/1"
_MAX_ERROR_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class BatchOptions:
    url: str = "https://api.elevenlabs.io/v1/speech-to-text"
    transcripts_url: str = ""  # "{transcription_id}" in it; empty: <url>/transcripts/{…}
    api_key: str = ""
    model_id: str = "scribe_v2"
    language_code: str = ""
    tag_audio_events: bool = True
    timestamps_granularity: str = "word"
    keyterms: tuple[str, ...] = ()
    entity_detection: tuple[str, ...] = ()
    enable_logging: bool = True
    timeout_s: float = 300.0

    def transcript_url(self, transcription_id: str) -> str:
        template = self.transcripts_url or self.url.rstrip("/") + "/transcripts/{transcription_id}"
        return template.replace("{transcription_id}", quote(transcription_id, safe=""))


class BatchError(Exception):
    """A failed batch request; ``retryable`` says whether trying again can help."""

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.retryable = retryable
        self.status = status
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class BatchWord:
    text: str
    start_s: float
    end_s: float
    type: str  # word, spacing, audio_event
    speaker_id: str | None = None
    logprob: float | None = None


@dataclass(frozen=True, slots=True)
class BatchEntity:
    text: str
    entity_type: str
    start_char: int
    end_char: int


@dataclass(frozen=True, slots=True)
class BatchTranscription:
    transcription_id: str
    text: str
    language_code: str | None
    words: tuple[BatchWord, ...]
    entities: tuple[BatchEntity, ...]
    audio_duration_secs: float | None


def parse_transcription(raw: Any) -> BatchTranscription:
    """The single-channel response, parsed tolerantly; ``BatchError`` if it is not one."""
    if not isinstance(raw, Mapping) or "transcripts" in raw:
        raise BatchError("protocol", "not a single-channel transcription", retryable=False)
    try:
        words = tuple(
            BatchWord(
                text=str(word.get("text", "")),
                start_s=float(word.get("start") or 0.0),
                end_s=float(word.get("end") or word.get("start") or 0.0),
                type=str(word.get("type") or "word"),
                speaker_id=word.get("speaker_id"),
                logprob=None if word.get("logprob") is None else float(word["logprob"]),
            )
            for word in raw.get("words") or ()
        )
        entities = tuple(
            BatchEntity(
                text=str(entity.get("text", "")),
                entity_type=str(entity.get("entity_type", "")),
                start_char=int(entity["start_char"]),
                end_char=int(entity["end_char"]),
            )
            for entity in raw.get("entities") or ()
        )
        duration = raw.get("audio_duration_secs")
        return BatchTranscription(
            transcription_id=str(raw.get("transcription_id") or ""),
            text=str(raw.get("text") or ""),
            language_code=raw.get("language_code"),
            words=words,
            entities=entities,
            audio_duration_secs=None if duration is None else float(duration),
        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise BatchError("protocol", f"unreadable transcription: {exc}", retryable=False) from None


class ScribeBatchClient:
    """One per process; pass ``session`` to share an ``aiohttp.ClientSession``."""

    def __init__(self, options: BatchOptions, session: aiohttp.ClientSession | None = None):
        self.options = options
        self._session = session
        self._owns_session = session is None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": USER_AGENT}, cookie_jar=aiohttp.DummyCookieJar()
            )
        return self._session

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def form(self, wav: bytes, filename: str) -> aiohttp.FormData:
        """The multipart body of one request (one speaker: a track of the call)."""
        o = self.options
        form = aiohttp.FormData()
        form.add_field("model_id", o.model_id)
        form.add_field("file", wav, filename=filename, content_type="audio/wav")
        if o.language_code:
            form.add_field("language_code", o.language_code)
        form.add_field("tag_audio_events", _bool(o.tag_audio_events))
        form.add_field("diarize", "false")
        form.add_field("num_speakers", "1")
        form.add_field("timestamps_granularity", o.timestamps_granularity)
        for term in o.keyterms:
            form.add_field("keyterms", term)
        for entity in o.entity_detection:
            form.add_field("entity_detection", entity)
        return form

    async def transcribe(self, wav: bytes, filename: str) -> BatchTranscription:
        params = {} if self.options.enable_logging else {"enable_logging": "false"}
        raw = await self._request(
            "POST", self.options.url, data=self.form(wav, filename), params=params
        )
        return parse_transcription(raw)

    async def get(self, transcription_id: str) -> BatchTranscription | None:
        """A transcription made earlier (None: the service no longer has it)."""
        try:
            raw = await self._request("GET", self.options.transcript_url(transcription_id))
        except BatchError as exc:
            if exc.status == 404:
                return None
            raise
        return parse_transcription(raw)

    async def delete(self, transcription_id: str) -> bool:
        """Delete a transcription at ElevenLabs; False when it was gone already (404)."""
        try:
            await self._request("DELETE", self.options.transcript_url(transcription_id))
        except BatchError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def _request(
        self,
        method: str,
        url: str,
        *,
        data: aiohttp.FormData | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        headers = {"xi-api-key": self.options.api_key, "Accept": "application/json"}
        timeout = aiohttp.ClientTimeout(total=self.options.timeout_s)
        try:
            async with self._http().request(
                method, url, data=data, params=params, headers=headers, timeout=timeout
            ) as response:
                if 200 <= response.status < 300:
                    try:
                        return await response.json(content_type=None)
                    except ValueError:
                        raise BatchError(
                            "protocol", "the answer is not JSON", retryable=True
                        ) from None
                detail = _detail(await response.content.read(_MAX_ERROR_BYTES))
                raise _status_error(response.status, detail, response.headers.get("Retry-After"))
        except BatchError:
            raise
        except TimeoutError:
            raise BatchError(
                "timeout", f"no answer in {self.options.timeout_s:g} s", retryable=True
            ) from None
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, OSError) as exc:
            raise BatchError(
                "network", f"{type(exc).__name__}: {exc}"[:300], retryable=True
            ) from None


def _status_error(status: int, detail: str, retry_after: str | None) -> BatchError:
    if status == 429:
        return BatchError(
            "rate_limited",
            detail,
            retryable=True,
            status=status,
            retry_after_s=parse_retry_after(retry_after, time.time()),
        )
    if status >= 500 or status == 408:
        return BatchError(
            "server_error",
            f"HTTP {status}: {detail}",
            retryable=True,
            status=status,
            retry_after_s=parse_retry_after(retry_after, time.time()),
        )
    code = "auth" if status in (401, 403) else "rejected"
    return BatchError(code, f"HTTP {status}: {detail}", retryable=False, status=status)


def _detail(body: bytes) -> str:
    """The service's reason (``detail.message``, ``detail.status`` or the validation
    list), short; never more than 300 characters."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:300] or "no detail"
    detail = parsed.get("detail") if isinstance(parsed, dict) else parsed
    if isinstance(detail, dict):
        text = str(detail.get("message") or detail.get("status") or detail)
    elif isinstance(detail, list):
        text = "; ".join(
            f"{'.'.join(str(p) for p in item.get('loc', []))}: {item.get('msg', '')}"
            if isinstance(item, dict)
            else str(item)
            for item in detail
        )
    else:
        text = str(detail)
    return text[:300]


def _bool(value: bool) -> str:
    return "true" if value else "false"


def entity_categories(kinds: Sequence[str]) -> tuple[str, ...]:
    """The ``entity_detection`` values for redaction kinds: ``pci`` asks for the PCI
    category; ``ssn`` and ``dob`` are in the PII category."""
    wanted: list[str] = []
    for kind in kinds:
        category = "pci" if kind == "pci" else "pii"
        if category not in wanted:
            wanted.append(category)
    return tuple(wanted)
