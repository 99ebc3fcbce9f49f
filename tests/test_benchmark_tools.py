"""The benchmark's own logic, without running a load: CPU caps on a fake cgroup tree, and
how the scaling benchmark judges a run and a ramp."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import scaling
from cpu_cap import CpuCap, CpuCapError


def fake_v1(root: Path) -> Path:
    cpu = root / "cpu"
    cpu.mkdir(parents=True)
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")
    return cpu


def test_cgroup_v1_cap_writes_period_quota_and_moves_the_process(tmp_path: Path) -> None:
    cpu = fake_v1(tmp_path)
    cap = CpuCap(0.35, root=tmp_path)
    group = cap.apply(4242)
    assert group.parent == cpu
    assert (group / "cpu.cfs_period_us").read_text() == "10000"
    assert (group / "cpu.cfs_quota_us").read_text() == "3500"
    assert (group / "cgroup.procs").read_text() == "4242"
    (group / "cpu.stat").write_text("nr_periods 200\nnr_throttled 50\nthrottled_time 1500000000\n")
    assert cap.throttled() == {4242: {"periods": 200, "throttled_periods": 50, "throttled_s": 1.5}}


def test_cgroup_v2_cap_writes_cpu_max(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory\n")
    cap = CpuCap(0.5, period_us=20_000, root=tmp_path)
    group = cap.apply(7)
    assert group.parent == tmp_path
    assert (group / "cpu.max").read_text() == "10000 20000"
    (group / "cpu.stat").write_text("nr_periods 10\nnr_throttled 4\nthrottled_usec 250000\n")
    assert cap.throttled()[7] == {"periods": 10, "throttled_periods": 4, "throttled_s": 0.25}


def test_remove_deletes_emptied_groups(tmp_path: Path) -> None:
    fake_v1(tmp_path)
    cap = CpuCap(1.0, root=tmp_path)
    group = cap.apply(1)
    for name in list(group.iterdir()):  # a real cgroup's files vanish with it
        name.unlink()
    cap.remove()
    assert not group.exists() and cap.groups == {}


def test_no_cpu_controller_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("memory pids\n")
    with pytest.raises(CpuCapError, match="no cgroup CPU controller"):
        CpuCap(0.5, root=tmp_path)
    fake_v1(tmp_path)
    with pytest.raises(CpuCapError, match="out of range"):
        CpuCap(0.0, root=tmp_path)


def test_a_failed_move_leaves_no_group_behind(tmp_path: Path) -> None:
    fake_v1(tmp_path)
    cap = CpuCap(0.5, root=tmp_path)
    group = tmp_path / "cpu" / f"callbridge-bench-{os.getpid()}-9"
    group.mkdir()
    (group / "cgroup.procs").mkdir()  # writing to it fails
    with pytest.raises(CpuCapError, match="cannot cap process 9"):
        cap.apply(9)
    assert cap.groups == {}


def result(*, lost: int = 0, failed: int = 0, lag: float | None = 1.0) -> dict[str, Any]:
    return {
        "frames": {"speech_lost": lost},
        "failed_calls": failed,
        "chunk_lag_live_ms": {"p50": lag},
    }


def test_keeps_up_needs_no_loss_no_failure_and_a_short_median_lag() -> None:
    assert scaling.keeps_up(result(), 10.0) == (True, "yes")
    assert scaling.keeps_up(result(lag=10.0), 10.0)[0]
    assert scaling.keeps_up(result(lag=10.1), 10.0) == (False, "lag p50 10.1 ms > 10")
    assert scaling.keeps_up(result(lag=None), 10.0)[0] is False
    assert scaling.keeps_up(result(lost=3), 10.0) == (False, "3 speech frames lost")
    assert scaling.keeps_up(result(failed=1, lost=3), 10.0) == (False, "1 calls failed")


def step(workers: int, calls: int, ok: bool, cpu: float = 0.003) -> dict[str, Any]:
    return {
        "workers": workers,
        "calls": calls,
        "keeps_up": ok,
        "result": {"cpu_s_per_call_s": cpu},
    }


def test_capacity_is_the_last_step_before_the_first_that_fell_behind() -> None:
    assert scaling.capacity([step(1, 70, True), step(1, 85, True), step(1, 100, False)]) == (
        85,
        True,
    )
    assert scaling.capacity([step(1, 100, False), step(1, 70, True)]) == (70, True)
    assert scaling.capacity([step(1, 70, False)]) == (None, True)
    assert scaling.capacity([step(1, 70, True), step(1, 85, True)]) == (85, False)


def test_summary_reports_the_scaling_ratio_and_per_call_cost() -> None:
    steps = [
        step(1, 70, True, 0.003), step(1, 85, True, 0.003), step(1, 100, False),
        step(2, 140, True, 0.0033), step(2, 170, False),
    ]  # fmt: skip
    lines = scaling.summary(steps, [1, 2], 0.35)
    assert (
        lines[0] == "capacity at 0.35 of a core per worker: 1 worker 85 calls, 2 workers 140 calls"
    )
    assert lines[1] == "scaling 1 → 2 workers: 1.65× the calls (linear: 2.00×)"
    assert "1.10 at 70/worker" in lines[2]
    unbounded = scaling.summary([step(1, 70, True), step(2, 140, True)], [1, 2], 0.35)
    assert "1 worker ≥ 70 calls" in unbounded[0] and "not measured" in unbounded[1]


def test_check_probes_that_groups_can_be_created(tmp_path: Path) -> None:
    cpu = fake_v1(tmp_path)
    CpuCap(0.5, root=tmp_path).check()
    assert [p.name for p in cpu.iterdir()] == ["cpu.cfs_quota_us"]  # the probe is gone
    (cpu / f"callbridge-bench-{os.getpid()}-probe").write_text("")  # mkdir there fails
    with pytest.raises(CpuCapError, match="cannot create a cgroup"):
        CpuCap(0.5, root=tmp_path).check()
