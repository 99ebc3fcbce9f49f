"""What the LLM emulator answers: a deterministic call summary derived from the transcript
in the request, every text marked ``[emulated]``.

Nothing is invented. The gist quotes how the call opened and closed, the reason quotes the
caller's first line, the outcome comes from keyword rules over the transcript (escalated
before follow-up before resolved, else unresolved) and says which word decided it, action
items are the sentences where someone says they will do something, and each speaker's
sentiment compares their positive and negative words. A request carrying part summaries
(the bridge's combining step) gets them combined: the first part's reason, the last part's
outcome and sentiment, every part's action items once.

Tokens are counted as words and punctuation marks (roughly what a BPE tokenizer gives for
English), independently of the bridge's own estimate.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from callbridge.testing.llm_requests import message_text

MARK = "[emulated]"
LINE = re.compile(r"^([^:\n]{1,40}): (.+)$", re.MULTILINE)
FACTS_SPEAKERS = re.compile(r"^- speaker labels: (.+)$", re.MULTILINE)
PART = re.compile(r"This is part (\d+) of (\d+)")
TOKEN = re.compile(r"\w+|[^\w\s]")
SENTENCE = re.compile(r"[^.!?]+[.!?]?")
COMBINED = re.compile(r"^(Combined from \d+ part summaries\. First: )+")

OUTCOME_RULES: Sequence[tuple[str, Sequence[str]]] = (
    ("escalated", ("escalat", "supervisor", "manager", "transfer you", "specialist")),
    (
        "follow_up",
        ("call you back", "follow up", "follow-up", "get back to you", "will send", "email you"),
    ),
    ("resolved", ("resolved", "sorted", "fixed", "all set", "that's everything", "thank you")),
)
PROMISES = re.compile(r"\b(i'll|i will|we'll|we will|i'm going to|we're going to)\b", re.IGNORECASE)
POSITIVE = ("thank", "great", "perfect", "good", "happy", "appreciate", "wonderful", "excellent")
NEGATIVE = (
    "problem",
    "issue",
    "wrong",
    "angry",
    "frustrat",
    "annoy",
    "terrible",
    "bad",
    "cancel",
    "complain",
    "broken",
    "not working",
)


def count_tokens(text: str) -> int:
    return len(TOKEN.findall(text))


def token_ends(text: str) -> list[int]:
    """The end offset of every token of ``text``, as :func:`count_tokens` counts them."""
    return [match.end() for match in TOKEN.finditer(text)]


def _quote(text: str, words: int) -> str:
    split = text.split()
    cut = " ".join(split[:words])
    return f"“{cut}{'…' if len(split) > words else ''}”"


def _source(messages: Sequence[Mapping[str, Any]]) -> str:
    """The last user message that carries a transcript or part summaries."""
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        text = message_text(message)
        if "Transcript:" in text or "Part summaries:" in text:
            return text
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message)
    return ""


def schema_speakers(response_format: Any) -> list[str] | None:
    """The sentiment labels a ``json_schema`` response format asks for, if it names them."""
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    schema = (response_format.get("json_schema") or {}).get("schema") or {}
    sentiment = (schema.get("properties") or {}).get("sentiment") or {}
    properties = sentiment.get("properties")
    return list(properties) if isinstance(properties, dict) else None


def _facts_speakers(text: str) -> list[str]:
    found = FACTS_SPEAKERS.search(text)
    if not found:
        return []
    return [item.split(" (", 1)[0].strip() for item in found.group(1).split(";") if item.strip()]


def _sentiment(lines: Sequence[tuple[str, str]], speakers: Sequence[str]) -> dict[str, str]:
    result = {}
    for label in speakers:
        said = " ".join(text for speaker, text in lines if speaker == label).lower()
        score = sum(said.count(w) for w in POSITIVE) - sum(said.count(w) for w in NEGATIVE)
        result[label] = "positive" if score > 0 else "negative" if score < 0 else "neutral"
    return result


def _outcome(lines: Sequence[tuple[str, str]]) -> dict[str, str]:
    said = " ".join(text for _, text in lines).lower()
    for status, words in OUTCOME_RULES:
        for word in words:
            if word in said:
                return {"status": status, "text": f"{MARK} Outcome rule: the call says “{word}”."}
    return {"status": "unresolved", "text": f"{MARK} Outcome rule: no closing words found."}


def _action_items(lines: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    items = []
    for speaker, text in lines:
        for sentence in SENTENCE.findall(text):
            if PROMISES.search(sentence):
                items.append({"owner": speaker, "text": f"{MARK} {sentence.strip()}"})
    return items[:5]


def summarize_transcript(text: str, speakers: Sequence[str]) -> dict[str, Any]:
    lines = [(m.group(1).strip(), m.group(2).strip()) for m in LINE.finditer(text)]
    lines = [(s, t) for s, t in lines if s not in ("- duration", "- language")]
    speakers = list(speakers) or list(dict.fromkeys(s for s, _ in lines))
    part = PART.search(text)
    where = f" (part {part.group(1)} of {part.group(2)})" if part else ""
    if not lines:
        return {
            "gist": f"{MARK} The transcript{where} is empty.",
            "reason": f"{MARK} Nothing was said.",
            "outcome": {"status": "unresolved", "text": f"{MARK} Nothing was said."},
            "action_items": [],
            "sentiment": dict.fromkeys(speakers, "neutral"),
        }
    first_speaker, first_text = lines[0]
    last_speaker, last_text = lines[-1]
    caller = speakers[0] if speakers else first_speaker
    caller_first = next((t for s, t in lines if s == caller), first_text)
    words = sum(len(t.split()) for _, t in lines)
    gist = (
        f"{MARK} {len(lines)} lines and {words} words{where} between "
        f"{' and '.join(speakers)}. {first_speaker} opened with {_quote(first_text, 12)} and "
        f"{last_speaker} closed with {_quote(last_text, 12)}."
    )
    return {
        "gist": gist,
        "reason": f"{MARK} {caller} said: {_quote(caller_first, 20)}",
        "outcome": _outcome(lines),
        "action_items": _action_items(lines),
        "sentiment": _sentiment(lines, speakers),
    }


def combine_summaries(text: str, speakers: Sequence[str]) -> dict[str, Any]:
    listing = text.split("Part summaries:", 1)[1]
    parts = json.loads(listing[listing.index("[") :])
    if not parts:
        return summarize_transcript("", speakers)
    first, last = parts[0], parts[-1]
    items: list[dict[str, str]] = []
    for part in parts:
        for item in part.get("action_items", []):
            if item not in items:
                items.append(item)
    first_gist = COMBINED.sub("", str(first.get("gist", "")).removeprefix(MARK).strip())
    return {
        "gist": f"{MARK} Combined from {len(parts)} part summaries. First: {first_gist}",
        "reason": first.get("reason", f"{MARK} unknown"),
        "outcome": last.get("outcome", {"status": "unresolved", "text": f"{MARK} unknown"}),
        "action_items": items,
        "sentiment": last.get("sentiment") or dict.fromkeys(speakers, "neutral"),
    }


def answer_for(messages: Sequence[Mapping[str, Any]], response_format: Any) -> dict[str, Any]:
    """The summary object this request gets."""
    text = _source(messages)
    speakers = schema_speakers(response_format) or _facts_speakers(text)
    if "Part summaries:" in text:
        return combine_summaries(text, speakers)
    return summarize_transcript(text.split("Transcript:", 1)[-1], speakers)
