"""CPU quotas for benchmark processes: a fraction of a core each, through a cgroup.

On a machine with few cores the load generator and the fixtures compete with the server, so
two workers cannot each get a core of their own. Capping every worker at the same fraction
of a core instead (``cpu.cfs_quota_us`` under cgroup v1's ``cpu`` controller, ``cpu.max``
under cgroup v2) gives each one a fixed budget, whatever else runs: a worker that needs more
is throttled and falls behind, so the calls it can carry measure its capacity, and N workers
with the same cap should carry N times as many calls if nothing they share (the store, the
accept queue) limits them.

The period is short (10 ms by default) so that a throttled worker stalls for milliseconds,
not for most of the default 100 ms period. Linux only; it needs write access to the cgroup
tree (root in a container or a delegated subtree); :class:`CpuCapError` says what is
missing.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


class CpuCapError(RuntimeError):
    """The machine cannot cap processes' CPU (no writable cgroup CPU controller)."""


def _v1_cpu_root(root: Path) -> Path | None:
    for candidate in (root / "cpu", root / "cpu,cpuacct"):
        if (candidate / "cpu.cfs_quota_us").exists():
            return candidate
    return None


def _v2_root(root: Path) -> Path | None:
    controllers = root / "cgroup.controllers"
    if controllers.exists() and "cpu" in controllers.read_text().split():
        return root
    return None


@dataclass
class CpuCap:
    """One cgroup per capped process, each limited to ``cores`` (e.g. 0.35) of a core."""

    cores: float
    period_us: int = 10_000
    root: Path = CGROUP_ROOT
    groups: dict[int, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.01 <= self.cores <= 64:
            raise CpuCapError(f"a CPU cap of {self.cores} cores is out of range (0.01-64)")
        self._v1 = _v1_cpu_root(self.root)
        self._v2 = None if self._v1 is not None else _v2_root(self.root)
        if self._v1 is None and self._v2 is None:
            raise CpuCapError(
                f"no cgroup CPU controller under {self.root} (cgroup v1 'cpu' or v2 with 'cpu' "
                "in cgroup.controllers); --worker-cpu needs Linux cgroups"
            )

    def check(self) -> None:
        """Create and remove a probe group: :class:`CpuCapError` unless caps can be applied."""
        parent = self._v1 if self._v1 is not None else self._v2
        assert parent is not None
        probe = parent / f"callbridge-bench-{os.getpid()}-probe"
        try:
            probe.mkdir()
            probe.rmdir()
        except OSError as exc:
            raise CpuCapError(f"cannot create a cgroup under {parent}: {exc}") from None

    @property
    def quota_us(self) -> int:
        return max(1000, round(self.cores * self.period_us))

    def apply(self, pid: int) -> Path:
        """Move process ``pid`` (all its threads) into a new cgroup capped at ``cores``."""
        parent = self._v1 if self._v1 is not None else self._v2
        assert parent is not None
        group = parent / f"callbridge-bench-{os.getpid()}-{pid}"
        try:
            group.mkdir(exist_ok=True)
            if self._v1 is not None:
                (group / "cpu.cfs_period_us").write_text(str(self.period_us))
                (group / "cpu.cfs_quota_us").write_text(str(self.quota_us))
            else:
                (group / "cpu.max").write_text(f"{self.quota_us} {self.period_us}")
            (group / "cgroup.procs").write_text(str(pid))
        except OSError as exc:
            with contextlib.suppress(OSError):
                group.rmdir()
            raise CpuCapError(f"cannot cap process {pid} in {group}: {exc}") from None
        self.groups[pid] = group
        return group

    def throttled(self) -> dict[int, dict[str, float]]:
        """Per capped pid: periods run, periods throttled, and seconds spent throttled."""
        out: dict[int, dict[str, float]] = {}
        for pid, group in self.groups.items():
            stats: dict[str, int] = {}
            with contextlib.suppress(OSError):
                for line in (group / "cpu.stat").read_text().splitlines():
                    key, _, value = line.partition(" ")
                    stats[key] = int(value)
            throttled_s = (
                stats.get("throttled_time", 0) / 1e9  # v1: ns
                if self._v1 is not None
                else stats.get("throttled_usec", 0) / 1e6
            )
            out[pid] = {
                "periods": stats.get("nr_periods", 0),
                "throttled_periods": stats.get("nr_throttled", 0),
                "throttled_s": throttled_s,
            }
        return out

    def remove(self, timeout_s: float = 5.0) -> None:
        """Delete the groups (each must be empty: call once the capped processes exited)."""
        deadline = time.monotonic() + timeout_s
        for group in self.groups.values():
            while True:
                try:
                    group.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
        self.groups.clear()
