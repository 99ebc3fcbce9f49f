"""The Scribe batch emulator against the bridge's own client: the documented request and
answer, validation as strict as the API's request model, errors, faults, transcripts."""

from __future__ import annotations

import aiohttp
import numpy as np
import pytest

from callbridge.postcall.batch_client import BatchError, BatchOptions, ScribeBatchClient
from callbridge.postcall.request_audio import pcm16_wav
from callbridge.testing.scribe_batch_emulator import BatchFault, ScribeBatchEmulator
from callbridge.testing.speech import build_track, pcm16_to_ulaw
from callbridge.testing.speech_script import ScriptedUtterance, SpeechScript

SCRIPT = SpeechScript(
    {
        500: ScriptedUtterance(
            "my card is 4111 1111 1111 1111",
            batch_text="My card is 4111 1111 1111 1111.",
            entities=(("credit_card", "4111 1111 1111 1111"),),
        ),
        900: ScriptedUtterance(
            "born july 4 1980", "Born July 4, 1980.", (("date_of_birth", "July 4, 1980"),)
        ),
    }
)


def speech_wav() -> bytes:
    placements = [(200, SCRIPT.audio(500)), (3000, SCRIPT.audio(900))]
    return pcm16_wav(pcm16_to_ulaw(build_track(5000, placements, seed=1)))


async def post(
    emulator: ScribeBatchEmulator, form: aiohttp.FormData, key: str = "test-key"
) -> tuple[int, dict]:  # type: ignore[type-arg]
    async with (
        aiohttp.ClientSession() as http,
        http.post(emulator.url, data=form, headers={"xi-api-key": key}) as response,
    ):
        return response.status, await response.json()


def form(**fields: str | list[str]) -> aiohttp.FormData:
    data = aiohttp.FormData()
    data.add_field("file", speech_wav(), filename="call.wav", content_type="audio/wav")
    for name, value in fields.items():
        for item in value if isinstance(value, list) else [value]:
            data.add_field(name, item)
    return data


async def test_the_documented_answer_with_entities_for_the_categories_asked() -> None:
    async with ScribeBatchEmulator(script=SCRIPT) as emulator:
        client = ScribeBatchClient(
            BatchOptions(url=emulator.url, api_key="test-key", entity_detection=("pci",))
        )
        try:
            result = await client.transcribe(speech_wav(), "call.wav")
            again = await client.get(result.transcription_id)
            assert again is not None and again.text == result.text
            assert await client.delete(result.transcription_id)
            assert not await client.delete(result.transcription_id)  # 404: gone already
            assert await client.get(result.transcription_id) is None
        finally:
            await client.close()
        (request,) = emulator.requests
    assert result.text == "My card is 4111 1111 1111 1111. Born July 4, 1980."
    assert result.language_code == "eng" and result.audio_duration_secs == 5.0
    words = [w for w in result.words if w.type == "word"]
    assert [w.text for w in words][:3] == ["My", "card", "is"]
    assert any(w.type == "spacing" for w in result.words)
    assert "".join(w.text for w in result.words) == result.text
    # only the PCI entity: date_of_birth is in the PII category, which was not asked for
    (entity,) = result.entities
    assert entity.entity_type == "credit_card"
    assert result.text[entity.start_char : entity.end_char] == "4111 1111 1111 1111"
    # what the client sent, as the SDK sends it
    assert request.field("model_id") == "scribe_v2"
    assert request.field("diarize") == "false" and request.field("num_speakers") == "1"
    assert request.field("timestamps_granularity") == "word"
    assert request.field("tag_audio_events") == "true"
    assert request.fields["entity_detection"] == ["pci"]
    assert request.files["file"][:2] == ("call.wav", "audio/wav")
    assert request.headers["xi-api-key"] == "test-key"
    assert request.ignored_fields == ()


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        ({"model_id": "scribe_v9"}, "model_id"),
        ({}, "model_id"),
        ({"model_id": "scribe_v2", "timestamps_granularity": "sentence"}, "timestamps_granularity"),
        ({"model_id": "scribe_v2", "num_speakers": "33"}, "num_speakers"),
        ({"model_id": "scribe_v2", "num_speakers": "two"}, "num_speakers"),
        ({"model_id": "scribe_v2", "diarize": "maybe"}, "diarize"),
        ({"model_id": "scribe_v2", "diarization_threshold": "0.2"}, "diarization_threshold"),
        ({"model_id": "scribe_v2", "file_format": "ulaw_8000"}, "file_format"),
        ({"model_id": "scribe_v2", "cloud_storage_url": "https://x.example/a.wav"}, "file"),
        ({"model_id": "scribe_v2", "keyterms": ["x" * 50]}, "keyterms"),
        ({"model_id": "scribe_v2", "keyterms": ["one two three four five six"]}, "keyterms"),
        ({"model_id": "scribe_v2", "entity_detection": ["Credit Card!"]}, "entity_detection"),
        ({"model_id": "scribe_v2", "language_code": "english"}, "language_code"),
        ({"model_id": "scribe_v2", "temperature": "3"}, "temperature"),
    ],
)
async def test_bad_requests_are_refused_like_the_api_does(
    fields: dict[str, str | list[str]], field_name: str
) -> None:
    async with ScribeBatchEmulator() as emulator:
        status, body = await post(emulator, form(**fields))
    assert status == 422
    (problem,) = body["detail"]
    assert problem["loc"] == ["body", field_name] and problem["msg"]


async def test_unknown_fields_are_ignored_as_the_service_ignores_them() -> None:
    async with ScribeBatchEmulator() as emulator:
        status, body = await post(emulator, form(model_id="scribe_v2", colour="blue"))
        assert emulator.requests[0].ignored_fields == ("colour",)
    assert status == 200 and body["entities"] is None


async def test_keys_and_audio_are_checked() -> None:
    async with ScribeBatchEmulator() as emulator:
        assert (await post(emulator, form(model_id="scribe_v2"), key="nope"))[0] == 401
        bad = aiohttp.FormData()
        bad.add_field("model_id", "scribe_v2")
        bad.add_field("file", b"not audio", filename="x.mp3", content_type="audio/mpeg")
        status, body = await post(emulator, bad)
        assert status == 400 and body["detail"]["status"] == "invalid_audio"
        raw = aiohttp.FormData()
        raw.add_field("model_id", "scribe_v2")
        raw.add_field("file_format", "pcm_s16le_16")
        raw.add_field("file", np.zeros(16000, "<i2").tobytes(), filename="x.pcm")
        status, body = await post(emulator, raw)
        assert status == 200 and body["audio_duration_secs"] == 1.0 and body["text"] == ""


async def test_faults_come_in_order_and_the_client_classifies_them() -> None:
    async with ScribeBatchEmulator(script=SCRIPT) as emulator:
        emulator.inject(
            BatchFault.rate_limit("7"), BatchFault.server_error(503), BatchFault.disconnect()
        )
        client = ScribeBatchClient(BatchOptions(url=emulator.url, api_key="test-key"))
        wrong_key = ScribeBatchClient(BatchOptions(url=emulator.url, api_key="wrong"))
        bad_model = ScribeBatchClient(
            BatchOptions(url=emulator.url, api_key="test-key", model_id="scribe_v0")
        )
        errors = []
        try:
            for _ in range(3):
                with pytest.raises(BatchError) as caught:
                    await client.transcribe(speech_wav(), "call.wav")
                errors.append(caught.value)
            result = await client.transcribe(speech_wav(), "call.wav")
            for failing in (wrong_key, bad_model):
                with pytest.raises(BatchError) as caught:
                    await failing.transcribe(speech_wav(), "call.wav")
                errors.append(caught.value)
        finally:
            for c in (client, wrong_key, bad_model):
                await c.close()
    assert [(e.code, e.retryable) for e in errors] == [
        ("rate_limited", True),
        ("server_error", True),
        ("network", True),
        ("auth", False),
        ("rejected", False),
    ]
    assert errors[0].retry_after_s == 7.0
    assert "model_id" in str(errors[4])
    assert result.text.startswith("My card is")


async def test_a_slow_answer_times_the_client_out() -> None:
    async with ScribeBatchEmulator() as emulator:
        emulator.inject(BatchFault.slow(2.0))
        client = ScribeBatchClient(
            BatchOptions(url=emulator.url, api_key="test-key", timeout_s=0.3)
        )
        try:
            with pytest.raises(BatchError) as caught:
                await client.transcribe(speech_wav(), "call.wav")
        finally:
            await client.close()
    assert caught.value.code == "timeout" and caught.value.retryable
