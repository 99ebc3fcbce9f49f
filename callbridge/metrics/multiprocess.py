"""prometheus-client's multiprocess mode, for ``serve --workers N``.

When ``PROMETHEUS_MULTIPROC_DIR`` is set before prometheus-client is imported, every
process keeps its values in files there, named by its pid, and a scrape of any one of them
merges all the files (:func:`scrape_registry`). The process that starts the server owns the
directory (:class:`MetricsDirectory`): the parent of the workers takes a private temporary
one (or the one the environment names, which it empties first, so figures of an earlier run
never leak in) before it starts any worker, tells the library when a worker has died (its
live gauges, such as live calls, stop counting; its counters stay in the totals), and
removes a directory it made when it exits.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

ENV = "PROMETHEUS_MULTIPROC_DIR"
log = structlog.get_logger("callbridge.metrics")


def multiprocess_dir() -> str | None:
    """The directory this process's metrics live in, None when they live in memory."""
    return os.environ.get(ENV) or None


def scrape_registry(path: str) -> CollectorRegistry:
    """A registry that collects every process's figures from ``path``."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return registry


class MetricsDirectory:
    """The multiprocess directory of one server run (see the module docstring)."""

    def __init__(self, path: Path, *, owned: bool) -> None:
        self.path = path
        self.owned = owned

    @classmethod
    def prepare(cls) -> MetricsDirectory:
        """Empty the directory ``PROMETHEUS_MULTIPROC_DIR`` names, or make a private one
        and name it there; call before any process that records metrics starts."""
        named = multiprocess_dir()
        if named is not None:
            path = Path(named)
            path.mkdir(parents=True, exist_ok=True)
            for stale in path.glob("*.db"):
                stale.unlink()
            return cls(path, owned=False)
        path = Path(tempfile.mkdtemp(prefix="callbridge-metrics-"))
        os.environ[ENV] = str(path)
        return cls(path, owned=True)

    def process_died(self, pid: int | None) -> None:
        if pid is not None:
            mark_process_dead(pid, str(self.path))  # type: ignore[no-untyped-call]

    def close(self) -> None:
        if self.owned:
            shutil.rmtree(self.path, ignore_errors=True)
            if os.environ.get(ENV) == str(self.path):
                del os.environ[ENV]
