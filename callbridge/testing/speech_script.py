"""Scripted speech: tone-burst utterances that the Scribe emulators "hear" as given text.

The emulators' recogniser (:mod:`callbridge.testing.speech`) only knows tone-burst words by
their frequency. A :class:`SpeechScript` gives some utterances real words: the utterance
keyed ``key`` is played as tones ``key, key+10, key+20 …`` (one per token of its text,
:meth:`SpeechScript.audio`), and an emulator that detects a word at ``key`` reports the
scripted text instead, one token per tone with the tones' times. Tests can then have a
caller say "my card is 4111 1111" in one turn and "1111 1111" in the next.

An utterance can say something else to the batch model (``batch_text``, e.g. the words the
realtime model got wrong) and carry the entities a batch ``entity_detection`` would find
(``entities``: ``(entity_type, exact text)`` pairs within ``batch_text``).

Words the script does not cover keep the emulator's own names (``tone550``), so an
utterance cut in two by a turn boundary shows up rather than being papered over.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from callbridge.testing.speech import DetectedWord, Pcm16, synth_utterance

STEP_HZ = 10
MATCH_HZ = 4  # detected frequencies are rounded to 10 Hz


@dataclass(frozen=True, slots=True)
class ScriptedUtterance:
    text: str
    batch_text: str | None = None
    entities: tuple[tuple[str, str], ...] = ()

    @property
    def tokens(self) -> list[str]:
        return self.text.split()

    def text_for(self, batch: bool) -> str:
        return self.batch_text if batch and self.batch_text is not None else self.text


@dataclass(frozen=True, slots=True)
class TimedToken:
    text: str
    start_ms: int
    end_ms: int


class SpeechScript:
    """Utterances keyed by the frequency of their first tone (Hz, a multiple of 10)."""

    def __init__(self, utterances: Mapping[int, ScriptedUtterance | str]) -> None:
        self.utterances: dict[int, ScriptedUtterance] = {
            key: value if isinstance(value, ScriptedUtterance) else ScriptedUtterance(value)
            for key, value in utterances.items()
        }
        ranges = sorted((key, key + STEP_HZ * len(u.tokens)) for key, u in self.utterances.items())
        for (key, end), (next_key, _) in itertools.pairwise(ranges):
            if next_key < end + STEP_HZ:
                raise ValueError(
                    f"scripted utterances {key} Hz and {next_key} Hz overlap: keys must be at "
                    f"least {STEP_HZ} Hz per token apart"
                )
        for key, utterance in self.utterances.items():
            if key % STEP_HZ or not utterance.tokens:
                raise ValueError(f"utterance {key} Hz: key a multiple of 10, text not empty")
            for _, entity in utterance.entities:
                if entity not in utterance.text_for(batch=True):
                    raise ValueError(f"utterance {key} Hz: entity {entity!r} not in its text")

    def freqs(self, key: int) -> list[int]:
        """The tones that say utterance ``key``, one per token of its text."""
        return [key + STEP_HZ * i for i in range(len(self.utterances[key].tokens))]

    def audio(
        self, key: int, word_ms: int = 220, gap_ms: int = 90, level_dbfs: float = -14.0
    ) -> Pcm16:
        """Utterance ``key`` as speech audio (see :func:`synth_utterance`)."""
        return synth_utterance(
            self.freqs(key), word_ms=word_ms, gap_ms=gap_ms, level_dbfs=level_dbfs
        )

    def _key_of(self, freq_hz: int) -> int | None:
        for key in self.utterances:
            if abs(freq_hz - key) <= MATCH_HZ:
                return key
        return None

    def render(
        self,
        words: Sequence[DetectedWord],
        fallback: Callable[[DetectedWord], str],
        *,
        batch: bool = False,
    ) -> list[tuple[TimedToken, ScriptedUtterance | None]]:
        """What ``words`` (in time order) say: scripted tokens for keyed utterances, each
        with its utterance, and ``fallback(word)`` for the others."""
        out: list[tuple[TimedToken, ScriptedUtterance | None]] = []
        index = 0
        while index < len(words):
            word = words[index]
            key = self._key_of(word.freq_hz)
            if key is None:
                out.append((TimedToken(fallback(word), word.start_ms, word.end_ms), None))
                index += 1
                continue
            utterance = self.utterances[key]
            last_hz = key + STEP_HZ * (len(utterance.tokens) - 1)
            group = [word]
            index += 1
            while (
                index < len(words)
                and key < words[index].freq_hz <= last_hz + MATCH_HZ
                and self._key_of(words[index].freq_hz) is None
            ):
                group.append(words[index])
                index += 1
            out.extend(
                (token, utterance) for token in _timed(utterance.text_for(batch).split(), group)
            )
        return out


def _timed(tokens: list[str], group: Sequence[DetectedWord]) -> list[TimedToken]:
    """One tone per token gets the tone's times; otherwise tokens share the span evenly."""
    if len(tokens) == len(group):
        return [TimedToken(t, w.start_ms, w.end_ms) for t, w in zip(tokens, group, strict=True)]
    start, end = group[0].start_ms, group[-1].end_ms
    step = (end - start) / max(1, len(tokens))
    return [
        TimedToken(t, round(start + i * step), round(start + (i + 1) * step))
        for i, t in enumerate(tokens)
    ]
