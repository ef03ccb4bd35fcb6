"""Channel set-up shared by the sync and asyncio clients: retries on UNAVAILABLE only.

Retries use gRPC's own retry policy (service config), so they apply to every method
of every service, and a stream is retried only before its first message arrives.
"""

from __future__ import annotations

import json

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
