"""The channel (round robin, retries on UNAVAILABLE only) and the two drivers of the described calls.

Retries use gRPC's own retry policy (service config), so they apply to every method
of every service, and a stream is retried only before its first message arrives. Calls
are balanced round robin over the target's addresses (`dns:///` or `ipv4:a,b` targets).
`ServiceClient` (blocking) and `AsyncServiceClient` (asyncio) are the bases of every
client; they make the calls that `_calls.py` describes, the one path of deadlines and
error translation for all of them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing, closing
from typing import Any, ClassVar, Self

import grpc

from circuit_client._calls import Stream, T, Unary
from circuit_client.credentials import Credentials, open_channel
from circuit_client.errors import CircuitRpcError

DEFAULT_TIMEOUT_S = 60.0


def channel_options(retries: int) -> list[tuple[str, object]]:
    """Message size limits and the service config: round robin over every address the target
    resolves to (`dns:///host:port` gives one per A record, e.g. a Kubernetes headless Service;
    `ipv4:10.0.0.1:50051,10.0.0.2:50051` lists them), and retries of UNAVAILABLE when `retries` > 0."""
    options: list[tuple[str, object]] = [
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
    ]
    config: dict[str, object] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if retries > 0:
        config["methodConfig"] = [
            {
                "name": [{}],  # every method
                "retryPolicy": {
                    "maxAttempts": min(retries + 1, 5),  # gRPC caps attempts at 5
                    "initialBackoff": "0.2s",
                    "maxBackoff": "5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    options += [("grpc.enable_retries", 1 if retries > 0 else 0), ("grpc.service_config", json.dumps(config))]
    return options


def health_messages():
    """The grpc.health.v1 request/response classes (package grpcio-health-checking)."""
    try:
        from grpc_health.v1 import health_pb2
    except ImportError as exc:  # the client itself needs only grpcio and protobuf
        raise RuntimeError("health checks need the grpcio-health-checking package") from exc
    return health_pb2


def health_stub(channel: Any) -> Any:
    """A grpc.health.v1.Health stub on `channel` (package grpcio-health-checking)."""
    health_messages()
    from grpc_health.v1 import health_pb2_grpc  # optional, as in health_messages

    return health_pb2_grpc.HealthStub(channel)


class _Client:
    """What both drivers share: the channel (opened and owned when `target` is host:port, with TLS
    and a token as `credentials` say; else a grpc channel or a client whose `.channel` is shared,
    neither closed here), the default deadline, and the stubs made on the channel."""

    _aio: ClassVar[bool]

    def __init__(
        self, target: Any, *, timeout: float | None, retries: int, credentials: Credentials | None = None
    ) -> None:
        self._own_channel = isinstance(target, str)
        if isinstance(target, str):
            self.channel = open_channel(target, channel_options(retries), credentials, aio=self._aio)
        else:
            self.channel = getattr(target, "channel", target)
        self.timeout = timeout
        self._stubs: dict[Callable[[Any], Any], Any] = {}

    def _deadline(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def _method(self, rpc: Unary | Stream) -> Any:
        """The stub's callable for `rpc` (one stub per kind, made on first use)."""
        stub = self._stubs.get(rpc.stub)
        if stub is None:
            stub = self._stubs[rpc.stub] = rpc.stub(self.channel)
        return getattr(stub, rpc.method)


class ServiceClient(_Client):
    """Base of the blocking clients and their driver: it makes the described calls (`_calls.py`).

    1. The deadline is the call's `timeout`, else the client's.
    2. Every grpc.RpcError becomes a CircuitRpcError (UNAVAILABLE was retried by the channel).
    3. A stream's messages go through its reader; leaving the stream early cancels the call.
    """

    _aio = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._own_channel:
            self.channel.close()

    def _unary(self, rpc: Unary[T], *args: Any, timeout: float | None = None, **kwargs: Any) -> T:
        return self._ask(rpc, rpc.request(*args, **kwargs), self._deadline(timeout))

    def _ask(self, rpc: Unary[T], request: Any, deadline: float | None) -> T:
        try:
            response = self._method(rpc)(request, timeout=deadline)
        except grpc.RpcError as err:
            raise CircuitRpcError.from_rpc_error(err) from None
        return rpc.result(request, response)

    def _stream(self, rpc: Stream[T], *args: Any, timeout: float | None = None, **kwargs: Any) -> Iterator[T]:
        request = rpc.request(*args, **kwargs)
        deadline = self._deadline(timeout)
        call = self._method(rpc)(request, timeout=deadline)
        reader = rpc.reader(request)
        try:
            for msg in call:
                item = reader.feed(msg)
                if item is not None:
                    yield item
            reader.done()
        except grpc.RpcError as err:
            if not rpc.falls_back(err):
                raise CircuitRpcError.from_rpc_error(err) from None
        else:
            return
        finally:
            call.cancel()
        yield self._ask(rpc.fallback, request, deadline)

    def _first(
        self,
        items: Iterator[T],
        missing: str,
        *,
        found: Callable[[T], bool] | None = None,
        on_item: Callable[[T], None] | None = None,
    ) -> T:
        """The first of `items` that is `found` (any, without it), each shown to `on_item` first;
        the stream is closed (so cancelled) after it; CircuitRpcError(INTERNAL, missing) if none is."""
        with closing(items):  # type: ignore[type-var]
            for item in items:
                if on_item is not None:
                    on_item(item)
                if found is None or found(item):
                    return item
        raise CircuitRpcError(grpc.StatusCode.INTERNAL, missing)


class AsyncServiceClient(_Client):
    """asyncio twin of `ServiceClient` (a grpc.aio channel): the same three steps."""

    _aio = True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_channel:
            await self.channel.close()

    async def _unary(self, rpc: Unary[T], *args: Any, timeout: float | None = None, **kwargs: Any) -> T:
        return await self._ask(rpc, rpc.request(*args, **kwargs), self._deadline(timeout))

    async def _ask(self, rpc: Unary[T], request: Any, deadline: float | None) -> T:
        try:
            response = await self._method(rpc)(request, timeout=deadline)
        except grpc.RpcError as err:
            raise CircuitRpcError.from_rpc_error(err) from None
        return rpc.result(request, response)

    async def _stream(
        self, rpc: Stream[T], *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> AsyncIterator[T]:
        request = rpc.request(*args, **kwargs)
        deadline = self._deadline(timeout)
        call = self._method(rpc)(request, timeout=deadline)
        reader = rpc.reader(request)
        try:
            async for msg in call:
                item = reader.feed(msg)
                if item is not None:
                    yield item
            reader.done()
        except grpc.RpcError as err:
            if not rpc.falls_back(err):
                raise CircuitRpcError.from_rpc_error(err) from None
        else:
            return
        finally:
            call.cancel()
        yield await self._ask(rpc.fallback, request, deadline)

    async def _first(
        self,
        items: AsyncIterator[T],
        missing: str,
        *,
        found: Callable[[T], bool] | None = None,
        on_item: Callable[[T], None] | None = None,
    ) -> T:
        async with aclosing(items):  # type: ignore[type-var]
            async for item in items:
                if on_item is not None:
                    on_item(item)
                if found is None or found(item):
                    return item
        raise CircuitRpcError(grpc.StatusCode.INTERNAL, missing)
