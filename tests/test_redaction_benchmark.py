"""Smoke test: the redaction latency benchmark runs and reports both modes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_benchmark_smoke import run_benchmark


@pytest.mark.timeout(120)
def test_redaction_latency_benchmark_reports_the_added_latency(tmp_path: Path) -> None:
    result = run_benchmark(
        "redaction_latency.py", "--calls", "1", "--speed", "4", "--hold-ms", "1000", cwd=tmp_path
    )
    out = result.stdout
    # (at 4× real time the 1 s hold is shorter than the pause between the card's groups, so
    # only what does not depend on the hold is checked here; the README has real-time runs)
    assert "caller: [PCI] and [PCI]" in out and "agent: you're welcome goodbye" in out
    worst = re.search(r"worst end-of-speech → transcript: off ([\d.]+) s, on ([\d.]+) s", out)
    assert worst is not None, out
    # the held segments wait for the hold (1 s of wall time) at most, plus the usual
    assert float(worst.group(1)) < float(worst.group(2)) < float(worst.group(1)) + 2.0
