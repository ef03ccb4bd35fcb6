"""HTTP front door metrics (the counterparts of `metrics/rpc.py`): requests and durations by route
and HTTP status, requests in flight by route."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from circuit_serve.metrics.rpc import DURATION_BUCKETS


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "circuit_http_requests",
            "Finished HTTP requests by route and status.",
            ["route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "circuit_http_request_duration_seconds",
            "HTTP request wall time (a stream: until its last event) by route and status.",
            ["route", "status"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "circuit_http_in_flight", "HTTP requests being handled now, by route.", ["route"], registry=registry
        )

    def started(self, route: str) -> None:
        self.in_flight.labels(route).inc()

    def finished(self, route: str, status: int, seconds: float) -> None:
        self.in_flight.labels(route).dec()
        self.requests.labels(route, str(status)).inc()
        self.duration.labels(route, str(status)).observe(seconds)
