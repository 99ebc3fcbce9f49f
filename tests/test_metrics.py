"""``GET /metrics`` through the real bridge: auth, what a call counts, isolation, off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from callbridge.config import MetricsSettings
from callbridge.metrics import degraded_kind
from callbridge.testing.scribe_emulator import ScribeEmulator
from callbridge.testing.twilio_simulator import SimulatorHandshakeError, TwilioCallSimulator
from callbridge.testing.webhook_receiver import WebhookReceiver
from tests.bridge_harness import API_TOKEN, bridge_settings, free_port, running_bridge
from tests.live_call import play_ended_call, started_call, two_party_call, wait_ended
from tests.metrics_scrape import Scrape, scrape
from tests.test_bridge_e2e import track

DEAD_TARGET = "http://127.0.0.1:9/hooks"  # nothing listens on the discard port


@pytest.fixture
async def emulator() -> AsyncIterator[ScribeEmulator]:
    async with ScribeEmulator(api_key="test-key", transcriber="tones") as emu:
        yield emu


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def figures_after_a_call(
    tmp_path: Path, emulator: ScribeEmulator, http: aiohttp.ClientSession
) -> Scrape:
    """A fresh bridge's scrape after the two-party call has ended."""
    async with running_bridge(bridge_settings(tmp_path, emulator.url, free_port())) as bridge:
        await play_ended_call(bridge)
        return await scrape(http, bridge.base_url)


async def test_metrics_need_an_api_token(
    tmp_path: Path, emulator: ScribeEmulator, http: aiohttp.ClientSession
) -> None:
    async with running_bridge(bridge_settings(tmp_path, emulator.url, free_port())) as bridge:
        url = f"{bridge.base_url}/metrics"
        assert (await http.get(url)).status == 401
        wrong = await http.get(url, headers={"Authorization": "Bearer nope"})
        assert wrong.status == 401
        assert (await wrong.json())["error"]["code"] == "unauthorized"
        assert "callbridge_build_info" in (await scrape(http, bridge.base_url)).families


async def test_a_call_and_its_webhooks_are_counted(
    tmp_path: Path, emulator: ScribeEmulator, http: aiohttp.ClientSession
) -> None:
    async with WebhookReceiver() as receiver:
        settings = bridge_settings(
            tmp_path, emulator.url, free_port(), webhook_urls=[receiver.url, DEAD_TARGET]
        )
        async with running_bridge(settings) as bridge:
            caller, agent = two_party_call()
            sim = await started_call(bridge)
            sent = await sim.send_frames(caller, agent, speed=0)
            before_end = await scrape(http, bridge.base_url)
            await sim.send_stop()
            await wait_ended(bridge, sim.call_sid)
            await receiver.wait_for(5, timeout=10)
            delivered = {"target": receiver.url, "outcome": "delivered"}
            for _ in range(100):  # until the deliveries and a loop-lag sample (every 0.25 s)
                after = await scrape(http, bridge.base_url)
                if (
                    after.value("callbridge_webhook_deliveries_total", delivered) == 5
                    and after.value("callbridge_event_loop_lag_seconds_count") > 0
                ):
                    break
                await asyncio.sleep(0.05)
            await sim.close()

    assert before_end.value("callbridge_live_calls") == 1
    assert after.value("callbridge_live_calls") == 0
    assert after.value("callbridge_calls_started_total") == 1
    assert after.value("callbridge_calls_ended_total", {"reason": "stop"}) == 1
    assert after.value("callbridge_segments_stored_total") == 3
    # every frame of both tracks, counted by the session and added once a second or at scrape
    assert after.value("callbridge_media_frames_total") == 2 * sent // 20
    assert after.value("callbridge_audio_lost_seconds_total") == 0
    assert after.matching("callbridge_calls_degraded_total") == {}

    live = {"target": receiver.url}
    assert after.value("callbridge_webhook_deliveries_total", delivered) == 5
    assert after.value("callbridge_webhook_delivery_latency_seconds_count", live) == 5
    assert 0 < after.value("callbridge_webhook_delivery_latency_seconds_sum", live) < 5
    assert after.value("callbridge_webhook_pending_deliveries", live) == 0
    assert after.value("callbridge_webhook_oldest_pending_age_seconds", live) == 0
    dead = {"target": DEAD_TARGET}
    assert after.value("callbridge_webhook_deliveries_total", {**dead, "outcome": "retried"}) > 0
    assert after.value("callbridge_webhook_pending_deliveries", dead) == 5
    assert after.value("callbridge_webhook_oldest_pending_age_seconds", dead) > 0

    assert after.value("callbridge_scribe_connections_total") == 1
    assert after.value("callbridge_scribe_reconnects_total") == 0
    assert after.matching("callbridge_scribe_errors_total") == {}
    commits = after.value("callbridge_scribe_commits_total")
    assert commits >= 3  # one per segment (the emulator answers each)
    assert after.value("callbridge_scribe_commit_latency_seconds_count") == commits
    assert after.value("callbridge_transcript_latency_seconds_count") == 3

    for operation, count in [
        ("call_started", 1),
        ("segment_committed", 3),
        ("call_ended", 1),
        ("mark_delivered", 5),
    ]:
        labels = {"operation": operation}
        assert after.value("callbridge_store_write_seconds_count", labels) == count, operation
    assert after.value("callbridge_event_loop_lag_seconds_count") > 0


async def test_latencies_measure_the_real_delays(
    tmp_path: Path, emulator: ScribeEmulator, http: aiohttp.ClientSession
) -> None:
    # In real time, with Scribe answering each commit 0.4 s late: commit → transcript takes
    # at least that, and end of speech → stored adds the turn decision (turn_end_ms 600).
    emulator.commit_delay_s = 0.4
    settings = bridge_settings(tmp_path, emulator.url, free_port())
    async with running_bridge(settings) as bridge:
        sim = bridge.simulator()
        await sim.run(inbound=track(2600, [(200, [500, 550, 600])], 5), speed=1.0)
        await wait_ended(bridge, sim.call_sid)
        figures = await scrape(http, bridge.base_url)
    commits = figures.value("callbridge_scribe_commit_latency_seconds_count")
    assert commits >= 1
    commit_mean = figures.value("callbridge_scribe_commit_latency_seconds_sum") / commits
    assert 0.4 <= commit_mean < 2.0
    assert figures.value("callbridge_transcript_latency_seconds_count") == 1
    stored_after = figures.value("callbridge_transcript_latency_seconds_sum")
    turn_end_s = settings.turns.turn_end_ms / 1000
    # (the end of speech is placed on the wall clock from the stream clock: a frame or two
    # of arrival jitter either way)
    assert turn_end_s + 0.4 - 0.1 <= stored_after < turn_end_s + 3.0
    le_750ms = figures.value("callbridge_transcript_latency_seconds_bucket", {"le": "0.75"})
    assert le_750ms == 0


async def test_scribe_failures_are_counted_by_kind(
    tmp_path: Path, emulator: ScribeEmulator, http: aiohttp.ClientSession
) -> None:
    emulator.refuse_connections(2, 503)
    emulator.fail_after_audio(1500, error_type="session_time_limit_exceeded", close_code=1011)
    figures = await figures_after_a_call(tmp_path, emulator, http)
    assert figures.value("callbridge_scribe_connections_total") == 2
    assert figures.value("callbridge_scribe_reconnects_total") == 1
    errors = figures.matching("callbridge_scribe_errors_total")
    limit = frozenset({("kind", "session_time_limit_exceeded"), ("retryable", "true")})
    assert errors.pop(limit) == 1
    assert sum(errors.values()) == 2  # the two refused handshakes, whatever their kind
    assert all(("retryable", "true") in labels for labels in errors)
    assert figures.matching("callbridge_calls_degraded_total") == {}


async def test_a_fatal_scribe_error_counts_a_degraded_call(
    tmp_path: Path, emulator: ScribeEmulator, http: aiohttp.ClientSession
) -> None:
    emulator.fail_after_audio(1500, error_type="input_error", close_code=1008)
    figures = await figures_after_a_call(tmp_path, emulator, http)
    fatal = {"kind": "input_error", "retryable": "false"}
    assert figures.value("callbridge_scribe_errors_total", fatal) == 1
    assert figures.value("callbridge_calls_degraded_total", {"reason": "scribe_input_error"}) == 1
    assert figures.value("callbridge_calls_ended_total", {"reason": "error"}) == 1


async def test_refused_media_sockets_are_counted_by_reason(
    tmp_path: Path, emulator: ScribeEmulator, http: aiohttp.ClientSession
) -> None:
    async with running_bridge(bridge_settings(tmp_path, emulator.url, free_port())) as bridge:
        forged = TwilioCallSimulator(
            bridge.ws_url, auth_token="not-twilio", public_url=bridge.settings.server.public_url
        )
        with pytest.raises(SimulatorHandshakeError):
            await forged.connect()
        tokenless = bridge.simulator(stream_secret=None)  # no cb_token for its call
        await tokenless.run(inbound=track(600, [], 1), speed=0, end="none")
        await tokenless.wait_closed()
        figures = await scrape(http, bridge.base_url)
    assert tokenless.close_code == 1008
    assert figures.value("callbridge_media_sockets_refused_total", {"reason": "signature"}) == 1
    assert figures.value("callbridge_media_sockets_refused_total", {"reason": "stream_token"}) == 1
    assert figures.value("callbridge_calls_started_total") == 0


async def test_two_applications_in_one_process_do_not_share_figures(
    tmp_path: Path, emulator: ScribeEmulator, http: aiohttp.ClientSession
) -> None:
    first = bridge_settings(tmp_path / "a", emulator.url, free_port())
    second = bridge_settings(tmp_path / "b", emulator.url, free_port())
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with running_bridge(first) as one, running_bridge(second) as other:
        caller, agent = two_party_call()
        sim = one.simulator()
        await sim.run(inbound=caller, outbound=agent, speed=0)
        await wait_ended(one, sim.call_sid)
        assert (await scrape(http, one.base_url)).value("callbridge_calls_started_total") == 1
        assert (await scrape(http, other.base_url)).value("callbridge_calls_started_total") == 0
    async with running_bridge(first) as again:  # a new application starts from zero
        assert (await scrape(http, again.base_url)).value("callbridge_calls_started_total") == 0


async def test_metrics_can_be_turned_off(
    tmp_path: Path, emulator: ScribeEmulator, http: aiohttp.ClientSession
) -> None:
    settings = bridge_settings(tmp_path, emulator.url, free_port())
    settings = settings.replace(metrics=MetricsSettings(enabled=False))
    async with running_bridge(settings) as bridge:
        caller, agent = two_party_call()
        sim = bridge.simulator()
        await sim.run(inbound=caller, outbound=agent, speed=0)
        await wait_ended(bridge, sim.call_sid)
        response = await http.get(
            f"{bridge.base_url}/metrics", headers={"Authorization": f"Bearer {API_TOKEN}"}
        )
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "metrics_disabled"
        assert len(await bridge.store.get_segments(sim.call_sid)) == 3  # the bridge still works


def test_degraded_reasons_become_a_bounded_label() -> None:
    assert degraded_kind("scribe quota_exceeded: no credits left") == "scribe_quota_exceeded"
    assert degraded_kind("scribe auth_error: bad key") == "scribe_auth_error"
    assert (
        degraded_kind("audio dropped: Scribe did not answer for longer than the buffer holds")
        == "audio_lost"
    )
    assert (
        degraded_kind("transcripts did not arrive before the drain timeout") == "transcript_timeout"
    )
    assert degraded_kind("transcriber failed: KeyError: 'x'") == "internal_error"
    assert degraded_kind("something new") == "other"
    assert degraded_kind("scribe a b/c: d") == "scribe_a_b_c"
