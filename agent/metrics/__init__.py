"""Prometheus exposition: per-rule hit counters read from the kernel, and agent health.

The daemon wires it up like this::

    from sgagent.metrics import AgentStats, MetricsServer, build_registry

    stats = AgentStats(backend.name)
    registry = build_registry(stats, backend.counters)   # one kernel read per scrape
    with MetricsServer(registry, "127.0.0.1", 9469):
        ...  # stats.apply_finished(...), stats.source_up(...), ...

See docs/MONITORING.md for the metrics, the endpoint's options and example PromQL.
"""

from .collector import (CONTENT_TYPE, DEFAULT_LABELS, RULE_LABELS, AgentCollector,
                        KernelCollector, MetricsRegistry, MonotonicCounters, build_registry)
from .server import DEFAULT_ADDRESS, DEFAULT_PORT, MetricsServer
from .stats import APPLY_BUCKETS, AgentStats

__all__ = [
    "AgentStats", "build_registry", "MetricsServer", "MetricsRegistry",
    "KernelCollector", "AgentCollector", "MonotonicCounters",
    "DEFAULT_ADDRESS", "DEFAULT_PORT", "APPLY_BUCKETS", "CONTENT_TYPE",
    "RULE_LABELS", "DEFAULT_LABELS",
]
