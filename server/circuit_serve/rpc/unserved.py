"""A service this replica does not serve (`--role attribution` has no vLLM): every method of it
answers FAILED_PRECONDITION with a message saying where to send the call instead."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import descriptor_pool


def add_to_server(service_name: str, server: grpc.aio.Server, message: str) -> str:
    """Register refusing handlers for every method of the service named `service_name` (its
    generated module imported already); return its full name."""
    service = descriptor_pool.Default().FindServiceByName(service_name)

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, message)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, message)
        yield  # pragma: no cover (an async generator: abort raises first)

    handlers = {}
    for method in service.methods:
        if method.client_streaming:
            raise RuntimeError(f"{method.full_name}: client streaming is not served here")
        make = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(refuse_stream if method.server_streaming else refuse)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    return service.full_name
