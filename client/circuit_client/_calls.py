"""Each RPC described once, for the blocking and the asyncio client alike.

A call is a `Unary` or a `Stream`: the generated stub it is made on and the stub's method,
how the client's arguments become the request, and how the answer becomes the client's
result. The service clients' methods are written once too, in a mixin per service
(`generation.GenerationCalls`, `attribution.AttributionCalls`, `features.FeaturesCalls`):
each hands its description and arguments to a driver, `_channel.ServiceClient` (blocking)
or `_channel.AsyncServiceClient` (asyncio), which makes the call. So a method returns its
result on a blocking client and an awaitable of it on an asyncio one (`Answer`), and a
stream is an iterator or an async iterator (`Items`), the way redis-py's command mixins
serve its two clients.

A stream's messages are read by a `Reader` made for the call's request: `feed` takes each
message and returns the item it completes (None while one is incomplete, as between the
chunks of a large attribution result), `done` raises if the stream ended inside an item.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import grpc

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

Answer = T | Awaitable[T]  # the result (blocking client) or an awaitable of it (asyncio client)
Items = Iterator[T] | AsyncIterator[T]  # a stream's items, iterated with `for` or `async for`


class Reader(Protocol[T_co]):
    def feed(self, msg: Any) -> T_co | None: ...

    def done(self) -> None: ...


class Each(Generic[T]):
    """The reader of a stream whose every message is one item."""

    def __init__(self, convert: Callable[[Any], T]) -> None:
        self._convert = convert

    def feed(self, msg: Any) -> T:
        return self._convert(msg)

    def done(self) -> None:
        pass


@dataclass(frozen=True)
class Unary(Generic[T]):
    stub: Callable[[Any], Any]  # the generated stub class (or a function of the channel giving one)
    method: str  # its attribute for this RPC, e.g. "Generate"
    request: Callable[..., Any]  # the client's arguments -> the request message
    result: Callable[[Any, Any], T]  # (request, response) -> what the client returns


@dataclass(frozen=True)
class Stream(Generic[T]):
    stub: Callable[[Any], Any]
    method: str
    request: Callable[..., Any]
    reader: Callable[[Any], Reader[T]]  # the request -> the reader of this call's messages
    fallback: Unary[T] | None = None  # asked with the same request where the server lacks `method`

    def falls_back(self, err: grpc.RpcError) -> bool:
        """Whether `err` ends this stream by asking `fallback` instead (UNIMPLEMENTED: an older server)."""
        return self.fallback is not None and err.code() == grpc.StatusCode.UNIMPLEMENTED
