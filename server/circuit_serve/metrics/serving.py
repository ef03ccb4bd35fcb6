"""Serving status as a metric: `circuit_serving{grpc_service}` is 1 while health says SERVING, else 0.

`grpc_service=""` is the overall status (Prometheus stores the empty label as no label). Not
`service`: Prometheus adds a `service` target label at scrape time, which would rename this one.
Set only by `rpc/health.py`, in the same call that sets grpc.health.v1, so metric and probes agree.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge


class ServingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.serving = Gauge(
            "circuit_serving",
            "1 while grpc.health.v1 answers SERVING for the service ('' = the whole server), else 0.",
            ["grpc_service"],
            registry=registry,
        )

    def set(self, service: str, serving: bool) -> None:
        self.serving.labels(service).set(1 if serving else 0)
