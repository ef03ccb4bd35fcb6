"""Per-RPC metrics: calls and durations by method and status code."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)


class RpcMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "circuit_rpc_requests",
            "Finished RPCs by method and status code.",
            ["method", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "circuit_rpc_duration_seconds",
            "RPC wall time (a stream: until its last message) by method and code.",
            ["method", "code"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "circuit_rpc_in_flight",
            "RPCs being handled now, by method.",
            ["method"],
            registry=registry,
        )

    def started(self, method: str) -> None:
        self.in_flight.labels(method).inc()

    def finished(self, method: str, code: str, seconds: float) -> None:
        self.in_flight.labels(method).dec()
        self.calls.labels(method, code).inc()
        self.duration.labels(method, code).observe(seconds)
