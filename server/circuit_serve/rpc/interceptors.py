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
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from circuit_serve.domain.errors import CircuitError
from circuit_serve.metrics.rpc import RpcMetrics
from circuit_serve.rpc.status import status_for
from circuit_serve.rpc.wrapping import ALWAYS_ANSWERED, HandlerInterceptor, Layer, refusal, wrapped

log = logging.getLogger(__name__)

_BY_NUMBER = {c.value[0]: c.name for c in grpc.StatusCode}


class ServingInterceptor(HandlerInterceptor):
    """`draining()` true (shutting down): new calls, except health checks, get UNAVAILABLE."""

    def __init__(self, metrics: RpcMetrics, *, draining: Callable[[], bool] = lambda: False) -> None:
        self._metrics = metrics
        self._draining = draining

    def wrap(
        self, name: str, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        if handler.request_streaming:
            return handler  # client/bidi streaming (reflection): passed through untouched
        if self._draining() and not name.startswith(ALWAYS_ANSWERED):
            handler = refusal(handler, grpc.StatusCode.UNAVAILABLE, _SHUTTING_DOWN)
        return wrapped(handler, self._served(name), request_deserializer=_tolerant(handler.request_deserializer))

    def _served(self, name: str) -> Layer:
        """The layer that counts and times the call and turns what it raises into a status."""

        @contextlib.asynccontextmanager
        async def layer(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
            start = time.perf_counter()
            self._metrics.started(name)
            ended_early = False
            try:
                if isinstance(request, Undecodable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message(name))
                yield
            except (asyncio.CancelledError, GeneratorExit):
                ended_early = True  # the caller cancelled or its deadline passed; grpc closed the stream
                raise
            except BaseException as exc:  # noqa: BLE001 - _handle re-raises or aborts with a status
                await _handle(name, exc, context)
            finally:
                self._metrics.finished(name, _final_code(context, ended_early), time.perf_counter() - start)

        return layer


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
        return (
            f"request: {self.size} bytes that do not decode as the request message of {name}; "
            "send a message serialized from this service's .proto"
        )


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


_SHUTTING_DOWN = "the server is shutting down; retry on another replica"


def _final_code(context: grpc.aio.ServicerContext, ended_early: bool) -> str:
    if ended_early or context.cancelled():
        return grpc.StatusCode.CANCELLED.name
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):  # some grpcio versions return the raw status number
        return _BY_NUMBER.get(code, "UNKNOWN")
    return grpc.StatusCode.OK.name
