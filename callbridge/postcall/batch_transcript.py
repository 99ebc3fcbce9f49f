"""Scribe batch answers → the call's ``batch`` transcript: segments per speaker, redacted.

Each track was sent on its own, so every word's speaker is exact. A track's words (times
mapped back to the stream clock by :class:`~callbridge.postcall.request_audio.TimeMap`)
are cut into segments at pauses of ``split_gap_ms`` or more; the two tracks' segments are
merged in the order of speech and numbered 1, 2, 3 ….

Redaction, when ``CALLBRIDGE_REDACT`` is set: first the entities Scribe found
(``entity_detection``), by their character positions in the answer's text: every word
they touch becomes the kind's marker (``[PCI]`` …), one marker per entity; then the local
redactor (:mod:`callbridge.redaction`) over each speaker's segments together, as a second
net. Entity types map to kinds by name: ``ssn``/``social_security`` → ssn; ``birth``/``dob``
→ dob; ``card``, ``cvv``, ``cvc``, ``expir``, ``payment`` → pci; others (names, e-mails, the
rest of the PII category) are left alone.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from callbridge.models import CommittedSegment, Track, Word
from callbridge.postcall.batch_client import BatchTranscription, BatchWord
from callbridge.postcall.request_audio import TimeMap
from callbridge.redaction import RedactionKind, Redactor

SPLIT_GAP_MS = 700


def entity_kind(entity_type: str, kinds: Collection[RedactionKind]) -> RedactionKind | None:
    """The redaction kind of a Scribe entity type, if it is one of ``kinds``."""
    name = entity_type.lower()
    if "ssn" in name or "social_security" in name:
        kind = RedactionKind.SSN
    elif "birth" in name or name.endswith("dob"):
        kind = RedactionKind.DOB
    elif any(part in name for part in ("card", "cvv", "cvc", "expir", "payment", "pci")):
        kind = RedactionKind.PCI
    else:
        return None
    return kind if kind in kinds else None


@dataclass(frozen=True, slots=True)
class TrackResult:
    """One track's answer and where its times go."""

    track: Track
    speaker: str
    transcription: BatchTranscription
    time_map: TimeMap


@dataclass(slots=True)
class _Draft:
    track: Track
    speaker: str
    words: list[Word]


def _word_offsets(transcription: BatchTranscription) -> list[tuple[int, int]]:
    """Each word's ``[start, end)`` in the answer's ``text`` (found in order)."""
    offsets: list[tuple[int, int]] = []
    text = transcription.text
    joined = "".join(word.text for word in transcription.words)
    if joined == text:
        position = 0
        for word in transcription.words:
            offsets.append((position, position + len(word.text)))
            position += len(word.text)
        return offsets
    position = 0
    for word in transcription.words:
        found = text.find(word.text, position) if word.text else -1
        if found < 0:
            offsets.append((position, position))
        else:
            offsets.append((found, found + len(word.text)))
            position = found + len(word.text)
    return offsets


def _marked_words(
    result: TrackResult, kinds: Collection[RedactionKind]
) -> list[tuple[BatchWord, RedactionKind | None, int]]:
    """Every word (spacing left out) with the kind of the entity it is in and the entity's
    index (``-1`` for none)."""
    transcription = result.transcription
    offsets = _word_offsets(transcription)
    entities = [
        (entity.start_char, entity.end_char, kind)
        for entity in transcription.entities
        if (kind := entity_kind(entity.entity_type, kinds)) is not None
    ]
    marked: list[tuple[BatchWord, RedactionKind | None, int]] = []
    for word, (start, end) in zip(transcription.words, offsets, strict=True):
        if word.type == "spacing" or not word.text.strip():
            continue
        hit = next(
            (i for i, (s, e, _) in enumerate(entities) if start < e and s < end),
            None,
        )
        marked.append((word, entities[hit][2], hit) if hit is not None else (word, None, -1))
    return marked


def _track_drafts(result: TrackResult, kinds: Collection[RedactionKind]) -> list[_Draft]:
    drafts: list[_Draft] = []
    previous_end: int | None = None
    previous_entity = -1
    to_stream = result.time_map.to_stream
    for word, kind, entity in _marked_words(result, kinds):
        start_ms = to_stream(word.start_s * 1000.0)
        end_ms = max(start_ms, to_stream(word.end_s * 1000.0))
        if previous_end is None or start_ms - previous_end >= SPLIT_GAP_MS:
            drafts.append(_Draft(result.track, result.speaker, []))
            previous_entity = -1
        words = drafts[-1].words
        if kind is not None and entity == previous_entity and words:
            marker = words[-1]
            words[-1] = Word(marker.text, marker.start_ms, end_ms, "word")
        elif kind is not None:
            words.append(Word(kind.marker, start_ms, end_ms, "word"))
        else:
            word_type = word.type if word.type in ("word", "audio_event") else "word"
            words.append(Word(word.text.strip(), start_ms, end_ms, word_type, word.logprob))
        previous_entity = entity if kind is not None else -1
        previous_end = end_ms
    return [draft for draft in drafts if draft.words]


def batch_segments(
    results: Sequence[TrackResult],
    *,
    call_sid: str,
    stream_sid: str,
    kinds: Collection[RedactionKind],
    committed_at: datetime,
) -> tuple[CommittedSegment, ...]:
    """The ``batch`` transcript of the call, numbered in the order of speech."""
    redactor = Redactor(kinds)
    finished: list[tuple[_Draft, str, tuple[Word, ...], str | None]] = []
    for result in results:
        drafts = _track_drafts(result, kinds)
        texts = [(" ".join(w.text for w in d.words), tuple(d.words)) for d in drafts]
        second_net = redactor.redact("", "", texts, final=True).segments if kinds else None
        for index, draft in enumerate(drafts):
            text, words = texts[index]
            if second_net is not None:
                text, words = second_net[index].text, second_net[index].words
            finished.append((draft, text, words, result.transcription.language_code))
    finished.sort(key=lambda item: (item[2][0].start_ms, item[0].track != Track.INBOUND))
    return tuple(
        CommittedSegment(
            call_sid=call_sid,
            stream_sid=stream_sid,
            sequence=number,
            speaker=draft.speaker,
            track=draft.track,
            text=text,
            start_ms=words[0].start_ms,
            end_ms=words[-1].end_ms,
            language_code=language_code,
            words=words,
            committed_at=committed_at,
        )
        for number, (draft, text, words, language_code) in enumerate(finished, start=1)
    )
