"""The shipped Grafana dashboard and Prometheus alert rules, against the real thing.

``promtool`` checks the rules and runs their unit tests (``prometheus_alerts_test.yml``); a
real Prometheus scrapes a real bridge (bearer token, the bridge's text format), loads the
rules and evaluates every dashboard and alert expression; and every metric they name is in
the bridge's own scrape, with the type the expression assumes.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from callbridge.testing.scribe_emulator import ScribeEmulator
from callbridge.testing.webhook_receiver import WebhookReceiver
from tests.bridge_harness import API_TOKEN, bridge_settings, free_port, running_bridge
from tests.live_call import two_party_call, wait_ended
from tests.metrics_scrape import Scrape, scrape

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "config" / "grafana-dashboard.json"
ALERTS = ROOT / "config" / "prometheus-alerts.yml"
ALERT_TESTS = Path(__file__).with_name("prometheus_alerts_test.yml")
METRIC = re.compile(r"\bcallbridge_[a-z0-9_]+\b")


def tool(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is missing: apt-get install -y prometheus (.ci/run does)"
    return found


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    return [
        target["expr"]
        for panel in panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]


def alert_expressions() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules_and_their_unit_tests_pass() -> None:
    promtool = tool("promtool")
    checked = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", ALERT_TESTS.name],
        cwd=ALERT_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # every alert has a unit test that fires it
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(ALERTS.read_text())["groups"]
        for rule in group["rules"]
    }
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert fired == alerts


def assert_in_scrape(name: str, scraped: Scrape) -> None:
    """``name`` as an expression uses it is a family of the scrape, of the right type."""
    types = {family.name: family.type for family in scraped.family_list}
    for suffix, kind in (("_bucket", "histogram"), ("_sum", "histogram"), ("_count", "histogram")):
        if name.endswith(suffix) and types.get(name.removesuffix(suffix)) == kind:
            return
    if name.endswith("_total") and types.get(name.removesuffix("_total")) == "counter":
        return
    assert types.get(name) == "gauge", f"{name} is not in the bridge's scrape (or not a gauge)"


@pytest.fixture
async def bridge_with_a_call(tmp_path: Path) -> AsyncIterator[tuple[str, Scrape]]:
    """A bridge that has carried a call, with a live and a dead webhook target."""
    async with (
        ScribeEmulator(api_key="test-key", transcriber="tones") as emulator,
        WebhookReceiver() as receiver,
    ):
        settings = bridge_settings(
            tmp_path,
            emulator.url,
            free_port(),
            webhook_urls=[receiver.url, "http://127.0.0.1:9/hooks"],
        )
        async with running_bridge(settings) as bridge, aiohttp.ClientSession() as http:
            caller, agent = two_party_call()
            sim = bridge.simulator()
            await sim.run(inbound=caller, outbound=agent, speed=0)
            await wait_ended(bridge, sim.call_sid)
            await receiver.wait_for(5, timeout=10)
            yield bridge.base_url, await scrape(http, bridge.base_url)


async def test_every_metric_the_dashboard_and_the_alerts_use_is_in_a_real_scrape(
    bridge_with_a_call: tuple[str, Scrape],
) -> None:
    _, scraped = bridge_with_a_call
    expressions = dashboard_expressions() + alert_expressions()
    named = {name for expr in expressions for name in METRIC.findall(expr)}
    assert len(named) >= 15
    for name in sorted(named):
        assert_in_scrape(name, scraped)


async def test_prometheus_scrapes_the_bridge_and_evaluates_every_expression(
    bridge_with_a_call: tuple[str, Scrape], tmp_path: Path
) -> None:
    base_url, _ = bridge_with_a_call
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(ALERTS)],
                "scrape_configs": [
                    {
                        "job_name": "callbridge",
                        "authorization": {"credentials": API_TOKEN},
                        "static_configs": [{"targets": [base_url.removeprefix("http://")]}],
                    }
                ],
            }
        )
    )
    proc = await asyncio.create_subprocess_exec(
        tool("prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:

            async def query(expr: str) -> list[dict[str, Any]]:
                async with http.get(f"{api}/query", params={"query": expr}) as response:
                    body = await response.json()
                assert body["status"] == "success", (expr, body)
                result: list[dict[str, Any]] = body["data"]["result"]
                return result

            # Scraped with the token, in the bridge's format: up, and our series there.
            for _ in range(300):
                try:
                    if await query('up{job="callbridge"} == 1') and await query(
                        "callbridge_calls_started_total"
                    ):
                        break
                except (aiohttp.ClientError, AssertionError):
                    pass
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("Prometheus never scraped the bridge")
            started = await query("sum(callbridge_calls_started_total)")
            assert float(started[0]["value"][1]) == 1
            # Every expression is valid PromQL over these series.
            for expr in dashboard_expressions() + alert_expressions():
                await query(expr.replace("$__rate_interval", "1m"))
            # The rules loaded and were evaluated without error.
            for _ in range(100):
                async with http.get(f"{api}/rules") as response:
                    groups = (await response.json())["data"]["groups"]
                rules = [rule for group in groups for rule in group["rules"]]
                if rules and all(rule.get("lastEvaluation", "").startswith("2") for rule in rules):
                    break
                await asyncio.sleep(0.1)
            assert len(rules) == len(alert_expressions())
            assert {rule["health"] for rule in rules} == {"ok"}, rules
    finally:
        proc.terminate()
        await proc.wait()
