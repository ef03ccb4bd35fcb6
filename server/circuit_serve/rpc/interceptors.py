"""The server interceptor: per-RPC metrics, domain errors -> status codes, and a last resort.

Servicers do not catch anything. Here a `CircuitError` becomes its status code
(see `status.py`); anything unexpected is logged with the method and an error id
and becomes INTERNAL carrying only that id (never the exception's text), and the
server keeps serving. A request whose bytes do not decode as its message gets
INVALID_ARGUMENT (gRPC alone would answer UNKNOWN naming a Python exception class).
Every call is counted and timed by method and final status code.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from circuit_serve.domain.errors import CircuitError
from circuit_serve.metrics.rpc import RpcMetrics
from circuit_serve.rpc.status import status_for

log = logging.getLogger(__name__)

_BY_NUMBER = {c.value[0]: c.name for c in grpc.StatusCode}


class ServingInterceptor(grpc.aio.ServerInterceptor):
    """`draining()` true (shutting down): new calls, except health checks, get UNAVAILABLE."""

    def __init__(self, metrics: RpcMetrics, *, draining: Callable[[], bool] = lambda: False) -> None:
        self._metrics = metrics
        self._draining = draining

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method.rsplit("/", 2)[-2:]
        name = "/".join(method)  # "circuit.v1.Generation/Generate"
        if self._draining() and not name.startswith(_ALWAYS_ANSWERED):
            handler = _refusal(handler)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(name, handler.unary_unary),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(name, handler.unary_stream),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler  # client/bidi streaming: none yet; passed through untouched

    def _unary(self, name: str, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            self._metrics.started(name)
            ended_early = False
            try:
                if isinstance(request, Undecodable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message(name))
                return await behavior(request, context)
            except (asyncio.CancelledError, GeneratorExit):
                ended_early = True  # the caller cancelled or its deadline passed
                raise
            except BaseException as exc:  # noqa: BLE001 - _handle re-raises or aborts with a status
                await _handle(name, exc, context)
            finally:
                self._metrics.finished(name, _final_code(context, ended_early), time.perf_counter() - start)

        return wrapper

    def _stream(self, name: str, behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            start = time.perf_counter()
            self._metrics.started(name)
            ended_early = False
            try:
                if isinstance(request, Undecodable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message(name))
                async for response in behavior(request, context):
                    yield response
            except (asyncio.CancelledError, GeneratorExit):
                ended_early = True  # the caller cancelled or its deadline passed; grpc closed the stream
                raise
            except BaseException as exc:  # noqa: BLE001
                await _handle(name, exc, context)
            finally:
                self._metrics.finished(name, _final_code(context, ended_early), time.perf_counter() - start)

        return wrapper


async def _handle(name: str, exc: BaseException, context: grpc.aio.ServicerContext) -> None:
    """Abort the call with the right status (raises), or re-raise what is not ours to handle."""
    if isinstance(exc, grpc.aio.AbortError):
        raise exc  # the servicer already set a status
    if isinstance(exc, CircuitError):
        code, message = status_for(exc)
    elif isinstance(exc, Exception):
        error_id = uuid.uuid4().hex[:16]
        log.exception("unexpected error in %s (error id %s)", name, error_id)
        code = grpc.StatusCode.INTERNAL
        message = f"internal error in {name}; error id {error_id} (the server log has the details)"
    else:
        raise exc  # GeneratorExit, KeyboardInterrupt, SystemExit
    await context.abort(code, message)
    raise AssertionError("unreachable")  # context.abort raises


class Undecodable:
    """Stands in for a request whose bytes did not parse as its message type."""

    def __init__(self, size: int, error: Exception) -> None:
        self.size = size
        self.error = error

    def message(self, name: str) -> str:
        return (f"request: {self.size} bytes that do not decode as the request message of {name}; "
                "send a message serialized from this service's .proto")


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer` that returns `Undecodable` instead of raising (grpc would answer UNKNOWN)."""
    if deserializer is None:
        return None

    def parse(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:  # DecodeError, invalid UTF-8 in a string field, ...
            return Undecodable(len(raw), exc)

    return parse


_ALWAYS_ANSWERED = ("grpc.health.v1.Health/", "grpc.reflection.")
_SHUTTING_DOWN = "the server is shutting down; retry on another replica"


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The same method, answering UNAVAILABLE without running the servicer."""

    async def refuse_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAVAILABLE, _SHUTTING_DOWN)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNAVAILABLE, _SHUTTING_DOWN)
        yield  # makes this an async generator

    if handler.unary_unary:
        return handler._replace(unary_unary=refuse_unary)
    if handler.unary_stream:
        return handler._replace(unary_stream=refuse_stream)
    return handler


def _final_code(context: grpc.aio.ServicerContext, ended_early: bool) -> str:
    if ended_early or context.cancelled():
        return grpc.StatusCode.CANCELLED.name
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):  # some grpcio versions return the raw status number
        return _BY_NUMBER.get(code, "UNKNOWN")
    return grpc.StatusCode.OK.name
