"""Generation metrics are vLLM's own: `vllm:*` names and `model_name`/`engine` labels, as vLLM records them.

vLLM's `PrometheusStatLogger` (the engine is given that class, `generation/stats.py`) records
every engine step into prometheus_client's default registry, and on start-up removes every
collector of that registry whose name starts with "vllm:" (so a second engine in one process
starts from zero). `VllmMetrics` serves those collectors inside our registry, read at scrape
time: one /metrics holds both, each series once. Nothing here copies or renames them.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

VLLM_PREFIX = "vllm:"


class VllmMetrics(Collector):
    """The `vllm:*` families of `source` (vLLM's registry: prometheus_client's default), in `registry`."""

    def __init__(self, registry: CollectorRegistry, source: CollectorRegistry = REGISTRY) -> None:
        self._source = source
        registry.register(self)  # no describe(): its names change as vLLM (re)registers

    def collect(self) -> Iterator[Metric]:
        for family in self._source.collect():
            if family.name.startswith(VLLM_PREFIX):
                yield family
