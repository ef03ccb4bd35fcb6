"""The channel (round robin, retries on UNAVAILABLE only) and the two drivers of the described calls.

Unary calls are retried by gRPC's own retry policy (service config). Streams are retried
here, before their first message arrives, with the same policy (`RETRY`): grpcio 1.85's retry
of a server-streaming call whose server shut down before its first message never ends, deadline
or not. Calls are balanced round robin over the target's addresses (`dns:///` or `ipv4:a,b`
targets). `ServiceClient` (blocking) and `AsyncServiceClient` (asyncio) are the bases of every
client; they make the calls that `_calls.py` describes, the one path of deadlines, retries and
error translation for all of them.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing, closing
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import grpc

from circuit_client._calls import Stream, T, Unary
from circuit_client.credentials import Credentials, open_channel
from circuit_client.errors import CircuitRpcError

DEFAULT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of UNAVAILABLE: gRPC's service-config policy for unary calls, the drivers' for streams."""

    max_attempts: int = 5  # gRPC caps attempts at 5
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    multiplier: float = 2.0

    def attempts(self, retries: int) -> int:
        return min(retries + 1, self.max_attempts)

    def pause(self, retry: int) -> float:
        """The wait before retry number `retry` (1, 2, ...): uniform up to the backoff, as gRPC's."""
        return random.uniform(0, min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (retry - 1)))

    def service_config(self, retries: int) -> dict[str, object]:
        return {
            "name": [{}],  # every method; the streaming ones are listed again without it (see _stream)
            "retryPolicy": {
                "maxAttempts": self.attempts(retries),
                "initialBackoff": f"{self.initial_backoff_s}s",
                "maxBackoff": f"{self.max_backoff_s}s",
                "backoffMultiplier": self.multiplier,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }


RETRY = RetryPolicy()


def streaming_methods() -> list[dict[str, str]]:
    """Every server-streaming method of circuit.v1, as service-config names."""
    from circuit_proto.v1 import attribution_pb2, features_pb2, generation_pb2

    return [
        {"service": service.full_name, "method": method.name}
        for module in (attribution_pb2, features_pb2, generation_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
        if method.server_streaming
    ]


def channel_options(retries: int) -> list[tuple[str, object]]:
    """Message size limits and the service config: round robin over every address the target
    resolves to (`dns:///host:port` gives one per A record, e.g. a Kubernetes headless Service;
    `ipv4:10.0.0.1:50051,10.0.0.2:50051` lists them), and retries of UNAVAILABLE when `retries` > 0
    (by gRPC for unary calls; streams are retried by the drivers)."""
    options: list[tuple[str, object]] = [
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
    ]
    config: dict[str, object] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if retries > 0:
        config["methodConfig"] = [RETRY.service_config(retries), {"name": streaming_methods()}]
    options += [("grpc.enable_retries", 1 if retries > 0 else 0), ("grpc.service_config", json.dumps(config))]
    return options


class _StreamAttempts:
    """A stream's attempts: each gets what is left of the call's deadline; UNAVAILABLE before the
    first message is retried after a pause (`RETRY`) while attempts and time are left."""

    def __init__(self, retries: int, deadline_s: float | None) -> None:
        self._retries = RETRY.attempts(retries) - 1  # at most
        self._retry = 0  # retries made
        self._end = None if deadline_s is None else time.monotonic() + deadline_s

    def timeout(self) -> float | None:
        return None if self._end is None else max(0.0, self._end - time.monotonic())

    def after(self, rpc: Stream[Any], err: grpc.RpcError, received: bool) -> float | None:
        """What follows `err` on an attempt (`received`: it had a message): the wait before the next
        attempt, None to ask the stream's fallback instead, or the call's CircuitRpcError (raised)."""
        if rpc.falls_back(err):
            return None
        if received or self._retry >= self._retries or err.code() != grpc.StatusCode.UNAVAILABLE:
            raise CircuitRpcError.from_rpc_error(err) from None
        self._retry += 1
        wait = RETRY.pause(self._retry)
        timeout = self.timeout()
        if timeout is not None and wait >= timeout:
            raise CircuitRpcError.from_rpc_error(err) from None
        return wait


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
        # Streams are retried as the channel's opener said: this client, the client whose channel
        # this is, or none (a grpc channel given: its own service config says what gRPC retries).
        self.retries = retries if self._own_channel else getattr(target, "retries", 0)
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

    1. The deadline is the call's `timeout`, else the client's (a stream's attempts share it).
    2. Every grpc.RpcError becomes a CircuitRpcError (UNAVAILABLE was retried: a unary call by the
       channel, a stream here before its first message).
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
        attempts = _StreamAttempts(self.retries, self._deadline(timeout))
        while True:
            call = self._method(rpc)(request, timeout=attempts.timeout())
            reader, received = rpc.reader(request), False
            try:
                for msg in call:
                    received = True
                    item = reader.feed(msg)
                    if item is not None:
                        yield item
                reader.done()
                return
            except grpc.RpcError as err:
                pause = attempts.after(rpc, err, received)
                if pause is None:
                    break
            finally:
                call.cancel()
            time.sleep(pause)
        yield self._ask(rpc.fallback, request, attempts.timeout())

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
        attempts = _StreamAttempts(self.retries, self._deadline(timeout))
        while True:
            call = self._method(rpc)(request, timeout=attempts.timeout())
            reader, received = rpc.reader(request), False
            try:
                async for msg in call:
                    received = True
                    item = reader.feed(msg)
                    if item is not None:
                        yield item
                reader.done()
                return
            except grpc.RpcError as err:
                pause = attempts.after(rpc, err, received)
                if pause is None:
                    break
            finally:
                call.cancel()
            await asyncio.sleep(pause)
        yield await self._ask(rpc.fallback, request, attempts.timeout())

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
