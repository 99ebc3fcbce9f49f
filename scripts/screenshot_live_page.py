"""Screenshots of the live page for the README: the sample call's script, played live.

    .venv/bin/python scripts/screenshot_live_page.py [--out docs]

Everything runs for real on this machine: the bridge, the Scribe emulator, the LLM emulator
(the AI summary) and Debian's Chromium driven by Playwright. The call is the bundled sample
call's script (``callbridge/data/sample_call.json``): each turn is played as tone-burst
speech on its speaker's track, and the Scribe emulator, given the script
(:mod:`callbridge.testing.speech_script`), "hears" the turn's words. The bridge decides the
turns, commits them and streams them as it would any call. Two pictures: ``live-page.png``
while the call is live (a segment on air as a partial), ``live-page-ended.png`` after it,
with the summary and the emulated AI summary.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import secrets
import tempfile
from pathlib import Path

from playwright.async_api import async_playwright, expect

from callbridge.app import create_app
from callbridge.config import (
    ApiSettings,
    DatabaseSettings,
    JobSettings,
    ScribeSettings,
    ServerSettings,
    Settings,
    SummarySettings,
    TurnSettings,
    TwilioSettings,
)
from callbridge.http_limits import runner_options
from callbridge.simulate import sample_call_path
from callbridge.testing.browser import CHROMIUM, CHROMIUM_FLAGS
from callbridge.testing.llm_emulator import LLMEmulator
from callbridge.testing.scribe_emulator import ScribeEmulator
from callbridge.testing.speech import build_track, pcm16_to_ulaw
from callbridge.testing.speech_script import SpeechScript
from callbridge.testing.twilio_simulator import TwilioCallSimulator
from callbridge.twilio.paths import MEDIA_PATH
from callbridge.twilio.stream_auth import FROM_PARAMETER, TO_PARAMETER

TWILIO_TOKEN = "screenshot-twilio-token"
STREAM_SECRET = "screenshot-stream-secret-0123456789"
PAUSE_MS = 700
SPEED = 3.0


def scripted_call() -> tuple[SpeechScript, bytes, bytes]:
    """The sample script's turns, one after the other, as scripted tone speech per track."""
    turns = json.loads(sample_call_path().with_name("sample_call.json").read_text())["turns"]
    turns = sorted(turns, key=lambda turn: turn["start_ms"])
    keys = [400 + 200 * index for index in range(len(turns))]
    script = SpeechScript({key: turn["text"] for key, turn in zip(keys, turns, strict=True)})
    placements: dict[str, list[tuple[int, object]]] = {"caller": [], "agent": []}
    at = 500
    for key, turn in zip(keys, turns, strict=True):
        audio = script.audio(key)
        placements[turn["speaker"]].append((at, audio))
        at += len(audio) * 1000 // 8000 + PAUSE_MS
    duration = at + 1500
    caller = pcm16_to_ulaw(build_track(duration, placements["caller"], seed=1))  # type: ignore[arg-type]
    agent = pcm16_to_ulaw(build_track(duration, placements["agent"], seed=2))  # type: ignore[arg-type]
    return script, caller, agent


async def run(out: Path) -> None:
    script, caller, agent = scripted_call()
    api_token = secrets.token_urlsafe(16)
    async with (
        ScribeEmulator(api_key="k", transcriber="tones", script=script) as scribe,
        LLMEmulator(latency_s=2.0) as llm,
    ):
        with tempfile.TemporaryDirectory() as tmp:
            import socket

            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            base = f"http://127.0.0.1:{port}"
            settings = Settings(
                server=ServerSettings(host="127.0.0.1", port=port, public_url=base),
                twilio=TwilioSettings(auth_token=TWILIO_TOKEN, stream_secret=STREAM_SECRET),
                scribe=ScribeSettings(api_key="k", url=scribe.url),
                turns=dataclasses.replace(TurnSettings(), catchup_speed=4.0 * SPEED),
                api=ApiSettings(tokens=(api_token,)),
                database=DatabaseSettings(url=f"sqlite:///{tmp}/page.db", journal_dir=tmp),
                summary=SummarySettings(
                    llm_url=llm.url, llm_model=llm.model, llm_key=llm.api_key or ""
                ),
                jobs=JobSettings(poll_interval_s=0.1),
            )
            from aiohttp import web

            runner = web.AppRunner(create_app(settings), **runner_options(settings))
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            try:
                await screenshots(base, api_token, caller, agent, out)
            finally:
                await runner.cleanup()


async def screenshots(base: str, token: str, caller: bytes, agent: bytes, out: Path) -> None:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=list(CHROMIUM_FLAGS)
        )
        page = await browser.new_page(viewport={"width": 1280, "height": 860})
        await page.goto(f"{base}/live")
        await page.get_by_label("API token").fill(token)
        await page.get_by_role("button", name="Connect").click()
        sim = TwilioCallSimulator(
            base.replace("http", "ws") + MEDIA_PATH,
            auth_token=TWILIO_TOKEN,
            public_url=base,
            stream_secret=STREAM_SECRET,
            custom_parameters={FROM_PARAMETER: "+14155550123", TO_PARAMETER: "+18005550199"},
        )
        playing = asyncio.ensure_future(sim.run(inbound=caller, outbound=agent, speed=SPEED))
        link = page.locator("#live-calls a")
        for _ in range(100):
            await page.get_by_role("button", name="Refresh").click()
            if await link.count():
                break
            await asyncio.sleep(0.1)
        await link.first.click()
        # Live: five segments in and the sixth on air.
        await expect(page.locator('#transcript li[data-sequence="5"]')).to_be_visible(
            timeout=60_000
        )
        await expect(page.locator("#partial")).to_be_visible(timeout=30_000)
        await page.screenshot(path=str(out / "live-page.png"))
        await playing
        await expect(page.locator("#ai-gist")).to_be_visible(timeout=60_000)
        await page.screenshot(path=str(out / "live-page-ended.png"), full_page=True)
        await browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    asyncio.run(run(args.out))
    print(f"wrote {args.out / 'live-page.png'} and {args.out / 'live-page-ended.png'}")


if __name__ == "__main__":
    main()
