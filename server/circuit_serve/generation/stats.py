"""The stat logger the engine hands vLLM: vLLM's own Prometheus logger, unchanged.

vLLM reports each engine step (scheduler state, KV-cache usage, prefix-cache queries, token
counts, latencies of the requests that got tokens or finished) to its stat loggers. Its
`PrometheusStatLogger` records them under vLLM's names and labels (`vllm:*`, `model_name`,
`engine`) in prometheus_client's default registry; `metrics/generation.py` serves them on our
/metrics. Handing vLLM this class (rather than `disable_log_stats=False`) keeps vLLM's periodic
log lines off while the metrics stay on.
"""

from __future__ import annotations


def stat_loggers() -> list[type]:
    """The stat logger classes for `AsyncLLM.from_engine_args(..., stat_loggers=...)`."""
    from vllm.v1.metrics.loggers import PrometheusStatLogger

    return [PrometheusStatLogger]
