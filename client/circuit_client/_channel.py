"""Channel set-up shared by the sync and asyncio clients: retries on UNAVAILABLE only.

Retries use gRPC's own retry policy (service config), so they apply to every method
of every service, and a stream is retried only before its first message arrives.
"""

from __future__ import annotations

import json
from typing import Any, Self

import grpc

from circuit_client.credentials import Credentials, open_channel

DEFAULT_TIMEOUT_S = 60.0


def channel_options(retries: int) -> list[tuple[str, object]]:
    options: list[tuple[str, object]] = [
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
    ]
    if retries > 0:
        config = {
            "methodConfig": [{
                "name": [{}],  # every method
                "retryPolicy": {
                    "maxAttempts": min(retries + 1, 5),  # gRPC caps attempts at 5
                    "initialBackoff": "0.2s",
                    "maxBackoff": "5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }]
        }
        options += [("grpc.enable_retries", 1), ("grpc.service_config", json.dumps(config))]
    else:
        options.append(("grpc.enable_retries", 0))
    return options


def health_messages():
    """The grpc.health.v1 request/response classes (package grpcio-health-checking)."""
    try:
        from grpc_health.v1 import health_pb2
    except ImportError as exc:  # the client itself needs only grpcio and protobuf
        raise RuntimeError("health checks need the grpcio-health-checking package") from exc
    return health_pb2


class ServiceClient:
    """Base of the per-service sync clients: `target` is host:port (a channel is opened and
    owned, with TLS and a token as `credentials` say), a grpc.Channel, or a client whose
    `.channel` is shared (neither is closed here)."""

    def __init__(self, target: Any, *, timeout: float | None, retries: int,
                 credentials: Credentials | None = None) -> None:
        self._own_channel = isinstance(target, str)
        if isinstance(target, str):
            self.channel = open_channel(target, channel_options(retries), credentials, aio=False)
        else:
            self.channel = getattr(target, "channel", target)
        self.timeout = timeout

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._own_channel:
            self.channel.close()


class AsyncServiceClient:
    """asyncio twin of `ServiceClient` (a grpc.aio channel)."""

    def __init__(self, target: Any, *, timeout: float | None, retries: int,
                 credentials: Credentials | None = None) -> None:
        self._own_channel = isinstance(target, str)
        if isinstance(target, str):
            self.channel = open_channel(target, channel_options(retries), credentials, aio=True)
        else:
            self.channel = getattr(target, "channel", target)
        self.timeout = timeout

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_channel:
            await self.channel.close()
