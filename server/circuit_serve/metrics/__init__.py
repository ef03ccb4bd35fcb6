"""Prometheus metrics: one registry created at start-up and passed to each component.

Each component has its own metrics class in a module named for it (generation.py,
rpc.py, ...), constructed with the registry. `exporter.py` serves /metrics.
"""

from prometheus_client import CollectorRegistry


def new_registry() -> CollectorRegistry:
    """The process's registry, with the standard process and Python collectors."""
    from prometheus_client.gc_collector import GCCollector
    from prometheus_client.platform_collector import PlatformCollector
    from prometheus_client.process_collector import ProcessCollector

    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


__all__ = ["CollectorRegistry", "new_registry"]
