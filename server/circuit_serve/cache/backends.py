"""Where graph-cache entries live: an in-process LRU (the embedded default) or Redis.

Both store opaque entry bytes under a graph key with a time to live. The Redis
backend raises `RedisUnavailable` when Redis does not answer; `GraphCache`
turns that into a miss (or a skipped write) and counts it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from circuit_serve.cache.redis_link import RedisLink


class CacheBackend(Protocol):
    name: str

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, blob: bytes, ttl_s: float) -> None: ...

    async def delete(self, key: str) -> None: ...


class MemoryBackend:
    """Bounded LRU of entries in this process: evicts least recently used beyond `max_bytes`."""

    name = "memory"

    def __init__(self, max_bytes: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()  # key -> (blob, expires_at)
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    async def get(self, key: str) -> bytes | None:
        item = self._entries.get(key)
        if item is None:
            return None
        blob, expires_at = item
        if self._clock() >= expires_at:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return blob

    async def put(self, key: str, blob: bytes, ttl_s: float) -> None:
        if len(blob) > self.max_bytes:
            return
        self._drop(key)
        self._entries[key] = (blob, self._clock() + ttl_s)
        self._bytes += len(blob)
        while self._bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)

    async def delete(self, key: str) -> None:
        self._drop(key)

    def _drop(self, key: str) -> None:
        item = self._entries.pop(key, None)
        if item is not None:
            self._bytes -= len(item[0])


class RedisBackend:
    """Entries as Redis strings `<prefix>graph:<key>` with an expiry (PX)."""

    name = "redis"

    def __init__(self, link: RedisLink) -> None:
        self.link = link

    def _k(self, key: str) -> str:
        return self.link.key("graph", key)

    async def get(self, key: str) -> bytes | None:
        return await self.link.call("get", lambda r: r.get(self._k(key)))

    async def put(self, key: str, blob: bytes, ttl_s: float) -> None:
        await self.link.call("put", lambda r: r.set(self._k(key), blob, px=max(1, int(ttl_s * 1000))))

    async def delete(self, key: str) -> None:
        await self.link.call("delete", lambda r: r.delete(self._k(key)))
