"""The AI summary with live redaction on, through the real server: the card number a caller
reads over several turns reaches the LLM as ``[PCI]``, never as digits, in any request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from callbridge.testing.llm_emulator import LLMEmulator
from callbridge.testing.scribe_emulator import ScribeEmulator
from callbridge.testing.webhook_receiver import WebhookReceiver
from tests.bridge_harness import running_bridge
from tests.test_ai_summary_e2e import ai_settings, of_type, summarized
from tests.test_redaction_e2e import SCRIPT, call_audio, has_card_digits, redacting


async def summarise_card_call(tmp_path: Path, kinds: list[str]) -> tuple[LLMEmulator, Any]:
    inbound, outbound = call_audio()
    async with (
        ScribeEmulator(transcriber="tones", script=SCRIPT) as scribe,
        LLMEmulator() as llm,
        WebhookReceiver() as receiver,
    ):
        settings = redacting(ai_settings(tmp_path, scribe.url, llm, receiver), kinds)
        async with running_bridge(settings) as bridge:
            sim = bridge.simulator()
            await sim.run(inbound=inbound, outbound=outbound, speed=0)
            await receiver.wait_for(1, 20, of_type("call.ended", sim.call_sid))
            ai = await summarized(receiver, sim.call_sid)
        assert any("4111" in text for s in scribe.sessions for text in s.committed)
    return llm, ai


async def test_no_raw_card_number_in_any_request_body(tmp_path: Path) -> None:
    llm, ai = await summarise_card_call(tmp_path, ["pci"])
    assert ai["status"] == "ready"
    bodies = [r.body.decode() for r in llm.requests]
    assert bodies and all(not has_card_digits(body) for body in bodies)
    user = llm.chat_requests[0].json["messages"][1]["content"]
    assert "caller: my card number is [PCI]" in user and "caller: [PCI]" in user
    assert not has_card_digits(str(ai))


async def test_without_redaction_the_llm_would_get_the_digits(tmp_path: Path) -> None:
    llm, _ = await summarise_card_call(tmp_path, [])
    assert any("4111 1111" in r.body.decode() for r in llm.chat_requests)
