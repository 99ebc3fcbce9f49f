"""The bridge's Prometheus metrics: definitions, the process monitor and ``GET /metrics``.

:mod:`~callbridge.metrics.definitions` defines every metric (one :class:`BridgeMetrics`
per application); :mod:`~callbridge.metrics.monitor` samples the process;
:mod:`~callbridge.metrics.exposition` serves the scrape; and
:mod:`~callbridge.metrics.multiprocess` lets ``serve --workers N`` report every worker in
one scrape.
"""

from callbridge.metrics.definitions import BridgeMetrics, degraded_kind

DISABLED = BridgeMetrics(enabled=False)
"""For components built without an application (unit tests): every metric a no-op."""

__all__ = ["DISABLED", "BridgeMetrics", "degraded_kind"]
