"""The live page in a real browser: Debian's Chromium driven by Playwright, a real bridge,
a call played through it. The page must show each segment on its speaker while the call is
live, and the summary after."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from callbridge.config import JobSettings, SummarySettings
from callbridge.testing.browser import CHROMIUM, CHROMIUM_FLAGS
from callbridge.testing.llm_emulator import LLMEmulator
from callbridge.testing.scribe_emulator import ScribeEmulator
from tests.bridge_harness import (
    API_TOKEN,
    RunningBridge,
    bridge_settings,
    free_port,
    running_bridge,
)
from tests.live_call import started_call, two_party_call

pytestmark = pytest.mark.slow
WAIT_MS = 10_000


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert shutil.which(CHROMIUM), f"{CHROMIUM} is missing: apt-get install -y chromium"
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=list(CHROMIUM_FLAGS)
        )
        yield launched
        await launched.close()


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[RunningBridge]:
    """The bridge with the AI summary on, written by the LLM emulator a second after the
    call (so the page first shows it pending)."""
    async with (
        ScribeEmulator(api_key="test-key", transcriber="tones") as emulator,
        LLMEmulator(latency_s=1.0) as llm,
    ):
        settings = bridge_settings(tmp_path, emulator.url, free_port())
        settings = settings.replace(
            summary=SummarySettings(
                llm_url=llm.url, llm_model=llm.model, llm_key=llm.api_key or ""
            ),
            jobs=JobSettings(poll_interval_s=0.05),
        )
        async with running_bridge(settings) as running:
            yield running


async def connected_page(browser: Browser, bridge: RunningBridge) -> Page:
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on(
        "response",
        lambda response: (
            errors.append(f"{response.status} {response.url}") if response.status >= 400 else None
        ),
    )
    await page.goto(f"{bridge.base_url}/live")
    await page.get_by_label("API token").fill(API_TOKEN)
    await page.get_by_role("button", name="Connect").click()
    await expect(page.get_by_role("heading", name="Calls", exact=True)).to_be_visible()
    page.errors = errors  # type: ignore[attr-defined]
    return page


def turn(page: Page, sequence: int) -> object:
    return page.locator(f'#transcript li[data-sequence="{sequence}"]')


async def test_the_page_follows_a_live_call_speaker_by_speaker_then_shows_the_summary(
    browser: Browser, bridge: RunningBridge
) -> None:
    page = await connected_page(browser, bridge)
    caller, agent = two_party_call()
    sim = await started_call(bridge)
    live_link = page.locator(f'#live-calls a[data-call-sid="{sim.call_sid}"]')
    for _ in range(50):  # the list refreshes every 5 s; the button at once
        await page.get_by_role("button", name="Refresh").click()
        if await live_link.count():
            break
        await asyncio.sleep(0.1)
    await live_link.click()  # keyboard users: the same link, focused and Enter
    await expect(page.get_by_role("heading", level=2, name=f"Call {sim.call_sid}")).to_be_visible()
    # Every text the partial line shows, as it changes (partials come and go quickly here).
    await page.evaluate(
        """() => {
            window.partialsSeen = [];
            const box = document.getElementById("partial");
            new MutationObserver(() => {
                if (!box.hidden && box.textContent) {
                    window.partialsSeen.push([box.dataset.speaker, box.textContent]);
                }
            }).observe(box, {childList: true, characterData: true, subtree: true,
                             attributes: true});
        }"""
    )

    half = len(caller) // 2  # two turns, then the call stays live
    resume_at = await sim.send_frames(caller[:half], agent[:half], speed=0)
    first, second = turn(page, 1), turn(page, 2)
    await expect(first).to_have_attribute("data-speaker", "caller", timeout=WAIT_MS)
    await expect(first.locator(".text")).to_have_text("tone400 tone450 tone500")
    await expect(first.locator(".speaker")).to_have_text("caller")
    await expect(second).to_have_attribute("data-speaker", "agent", timeout=WAIT_MS)
    await expect(second.locator(".text")).to_have_text("tone1200 tone1250 tone1300")
    record = await bridge.store.get_call(sim.call_sid)
    assert record is not None and record.status == "live"  # shown while the call is live
    await expect(page.locator("#summary")).to_be_hidden()

    await sim.send_frames(caller[half:], agent[half:], speed=0, start_timestamp_ms=resume_at)
    await sim.send_stop()
    third = turn(page, 3)
    await expect(third).to_have_attribute("data-speaker", "caller", timeout=WAIT_MS)
    await expect(third.locator(".text")).to_have_text("tone650 tone700")
    summary = page.get_by_role("region", name="Summary")
    await expect(summary).to_be_visible(timeout=WAIT_MS)
    speakers = summary.get_by_role("table", name="Speakers")
    await expect(speakers.get_by_role("rowheader")).to_have_text(["caller", "agent"])
    await expect(summary.locator("#summary-facts")).to_contain_text("Segments3")

    # The AI summary is written after the call (a second here): pending, then shown.
    await expect(summary.locator("#ai-status")).to_have_text("The AI summary is being written…")
    await expect(summary.locator("#ai-gist")).to_be_visible(timeout=WAIT_MS)
    await expect(summary.locator("#ai-status")).to_be_hidden()
    record = await bridge.store.get_call(sim.call_sid)
    assert record is not None and record.ai_summary is not None
    ai = record.ai_summary
    assert ai["status"] == "ready"
    await expect(summary.locator("#ai-gist")).to_have_text(ai["gist"])
    outcome = ai["outcome"]
    await expect(summary.locator("#ai-details")).to_contain_text(
        f"Outcome{outcome['status']}: {outcome['text']}"
    )
    items = [f"{item['owner']}: {item['text']}" for item in ai["action_items"]]
    await expect(summary.get_by_role("list", name="Action items").locator("li")).to_have_text(items)
    await expect(page.get_by_role("status")).to_have_text(
        "The call has ended; nothing more will come.", timeout=WAIT_MS
    )
    await expect(page.locator("#call-meta")).to_contain_text(f"{sim.call_sid} · ended")
    await sim.close()
    assert page.errors == []  # type: ignore[attr-defined]
    partials = await page.evaluate("window.partialsSeen")
    assert partials, "no partial transcript was shown"
    for speaker, text in partials:
        assert text.startswith(f"{speaker} is saying: tone")
        words = text.split(": ", 1)[1].split()
        assert {"caller" if int(w[4:]) < 1000 else "agent" for w in words} == {speaker}


async def test_a_wrong_token_is_refused_and_the_token_never_enters_a_url(
    browser: Browser, bridge: RunningBridge
) -> None:
    page = await browser.new_page()
    seen: list[str] = []
    page.on("request", lambda request: seen.append(request.url))
    await page.goto(f"{bridge.base_url}/live")
    await expect(page.get_by_role("navigation", name="Calls")).to_be_hidden()  # not before
    await page.get_by_label("API token").fill("not-the-token")
    await page.keyboard.press("Enter")  # the form works from the keyboard
    await expect(page.get_by_role("alert")).to_contain_text("not accepted")
    stored = await page.evaluate("sessionStorage.getItem('callbridge.apiToken')")
    assert stored is None
    await page.get_by_label("API token").fill(API_TOKEN)
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Calls", exact=True)).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('callbridge.apiToken')") == API_TOKEN
    assert seen and not any(API_TOKEN in url or "not-the-token" in url for url in seen)


async def test_the_page_is_served_with_a_strict_content_security_policy(
    bridge: RunningBridge,
) -> None:
    async with aiohttp.ClientSession() as http:
        for path, kind in [("/live", "text/html"), ("/live/live.js", "text/javascript")]:
            response = await http.get(bridge.base_url + path)
            assert response.status == 200
            assert response.content_type == kind
            policy = response.headers["Content-Security-Policy"]
            assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        root = await http.get(bridge.base_url + "/", allow_redirects=False)
        assert (root.status, root.headers["Location"]) == (302, "/live")
        listed = await http.get(
            f"{bridge.base_url}/v1/calls", headers={"Authorization": f"Bearer {API_TOKEN}"}
        )
        assert json.loads(await listed.text())["calls"] == []
