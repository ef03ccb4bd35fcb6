"""grpc.health.v1 for the whole server: one state, answered on the event loop, mirrored in a metric.

    health = Health(ServingMetrics(registry))
    health.add_to_server(server)                     # the main port (TLS when configured)
    plain = await start_health_server(health, "0.0.0.0:50052")   # --health-port: health alone, plaintext
    await health.set(["", "circuit.v1.Generation"], serving=False)

1. The state lives in grpc.aio's `HealthServicer`, whose handlers run on the event loop: a loop
   that hangs stops answering, so a liveness probe fails (a thread-pool servicer would keep saying
   SERVING).
2. The same servicer object serves every port, so the plaintext health port (for the kubelet's
   gRPC probes, which speak no TLS) can never disagree with the main one.
3. Every change also sets `circuit_serving{grpc_service}` (1/0), in the same call.
4. `enter_graceful_shutdown` turns every service NOT_SERVING for good (later `set`s are ignored).
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from circuit_serve.metrics.serving import ServingMetrics

SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
_STATUS = {True: health_pb2.HealthCheckResponse.SERVING, False: health_pb2.HealthCheckResponse.NOT_SERVING}


class Health:
    def __init__(self, metrics: ServingMetrics) -> None:
        self.servicer = health.aio.HealthServicer()
        self._metrics = metrics
        self._known: set[str] = set()
        self._closed = False

    def add_to_server(self, server: grpc.aio.Server) -> str:
        """Serve this state on `server`; returns the health service's full name."""
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)
        return SERVICE_NAME

    async def set(self, services: Iterable[str], *, serving: bool) -> None:
        """Set each of `services` ("" = the whole server) SERVING or NOT_SERVING."""
        if self._closed:
            return
        for name in services:
            self._known.add(name)
            await self.servicer.set(name, _STATUS[serving])
            self._metrics.set(name, serving)

    async def enter_graceful_shutdown(self) -> None:
        self._closed = True
        await self.servicer.enter_graceful_shutdown()
        for name in self._known:
            self._metrics.set(name, False)


async def start_health_server(health_state: Health, address: str) -> tuple[grpc.aio.Server, int]:
    """A started plaintext grpc.aio server on `address` that serves grpc.health.v1 and nothing else."""
    server = grpc.aio.server()
    health_state.add_to_server(server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind the health port to {address}")
    await server.start()
    return server, port
