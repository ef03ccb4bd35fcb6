"""The one way this server wraps gRPC method handlers: every interceptor goes through here.

A *layer* is a per-call async context manager, `layer(request, context)`: what it does before
its `yield` runs before the servicer, what it does after (or in its `except`/`finally`) runs
when the call ends; an exception it raises (`context.abort`) becomes the call's status, and
one it raises before its `yield` means the servicer never runs. For a call:

1. `HandlerInterceptor.intercept_service` resolves the handler (`None`: no such method, passed
   on) and hands it to the subclass's `wrap(name, handler, details)` with the method's name
   as "circuit.v1.Generation/Generate";
2. the subclass returns the handler untouched, `wrapped(handler, layer)`, or
   `refusal(handler, code, message)`;
3. `wrapped` keeps the handler's kind and (de)serializers: a unary response is awaited inside
   the layer; a response stream is written inside it (`context.write`) and closed with it
   (`aclosing`), also when the caller cancels.

Health checks and reflection are answered whatever else holds (`ALWAYS_ANSWERED`).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc

HEALTH_PREFIX = "grpc.health.v1.Health/"
REFLECTION_PREFIX = "grpc.reflection."
ALWAYS_ANSWERED = (HEALTH_PREFIX, REFLECTION_PREFIX)

# A per-call wrapper: entered before the servicer runs, exited when the call ends.
Layer = Callable[[Any, grpc.aio.ServicerContext], AbstractAsyncContextManager[object]]


class HandlerInterceptor(grpc.aio.ServerInterceptor):
    """A server interceptor that wraps each resolved handler (`wrap`), written once."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return self.wrap(handler_call_details.method.lstrip("/"), handler, handler_call_details)

    def wrap(
        self, name: str, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        raise NotImplementedError


def wrapped(
    handler: grpc.RpcMethodHandler, layer: Layer, *, request_deserializer: Callable[[bytes], Any] | None = None
) -> grpc.RpcMethodHandler:
    """The same handler (same kind), each call run inside `layer(request, context)`;
    `request_deserializer`, when given, replaces the handler's."""

    def unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with layer(request, context):
                return await behavior(request, context)

        return run

    def stream(behavior: Callable[..., Any]) -> Callable[..., Awaitable[None]]:
        # A coroutine that writes (grpc's reader/writer form), not an async generator: when the
        # caller cancels, grpc cancels the task inside this frame, so the layer and the servicer's
        # stream are closed at once. An async generator would be left open by grpc's own
        # `async for` and closed only when the garbage collector reached it.
        if inspect.iscoroutinefunction(behavior):  # it writes already (a layer wrapped it)
            return unary(behavior)

        async def run(request: Any, context: grpc.aio.ServicerContext) -> None:
            async with layer(request, context), contextlib.aclosing(behavior(request, context)) as responses:
                async for response in responses:
                    await context.write(response)

        return run

    changes: dict[str, Any] = {}
    if request_deserializer is not None:
        changes["request_deserializer"] = request_deserializer
    if handler.unary_unary:
        return handler._replace(unary_unary=unary(handler.unary_unary), **changes)
    if handler.unary_stream:
        return handler._replace(unary_stream=stream(handler.unary_stream), **changes)
    if handler.stream_unary:
        return handler._replace(stream_unary=unary(handler.stream_unary), **changes)
    return handler._replace(stream_stream=stream(handler.stream_stream), **changes)


def refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """The same method, answering `code` without running the servicer (any of the four kinds)."""

    @contextlib.asynccontextmanager
    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        await context.abort(code, message)
        yield  # not reached: context.abort raises

    return wrapped(handler, refuse)
