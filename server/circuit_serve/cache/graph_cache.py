"""The content-addressed graph cache: entry format, size limit, TTL and metrics
on top of one backend (Redis or the in-process LRU).

Reads never fail a call: an absent, expired, corrupt or old-format entry, or a
backend that does not answer, is a miss (corrupt entries are deleted and
counted); writes that fail are counted and dropped. A hit returns exactly the
bytes that were stored.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from circuit_serve.cache import entry
from circuit_serve.cache.backends import CacheBackend
from circuit_serve.cache.redis_link import RedisUnavailable
from circuit_serve.metrics.attribution import AttributionMetrics

log = logging.getLogger(__name__)


class GraphCache:
    def __init__(
        self,
        backend: CacheBackend,
        *,
        graph_format: int,
        ttl_s: float,
        max_entry_bytes: int,
        metrics: AttributionMetrics,
        codec: entry.Codec = entry.Codec.STORED,
    ) -> None:
        self.backend = backend
        self.codec = codec
        self.graph_format = graph_format
        self.ttl_s = ttl_s
        self.max_entry_bytes = max_entry_bytes
        self.metrics = metrics
        metrics.init_backend(backend.name)

    @property
    def backend_name(self) -> str:
        return self.backend.name

    async def get(self, key: str, *, record: bool = True) -> dict[str, memoryview] | None:
        """The sections stored under `key` (read-only views, not copies), or None (a miss) for
        anything unusable.

        `record=False` (polling while another replica computes) leaves the hit and
        miss counters alone; errors and bad entries are always counted.
        """
        name = self.backend.name
        try:
            blob = await self.backend.get(key)
        except RedisUnavailable:
            self.metrics.cache_errors.labels(name, "get").inc()
            if record:
                self.metrics.cache_misses.labels(name).inc()
            return None
        if blob is None:
            if record:
                self.metrics.cache_misses.labels(name).inc()
            return None
        try:
            sections = entry.decode(key, blob, graph_format=self.graph_format)
        except entry.BadEntry as exc:
            log.warning("graph cache entry %s is unusable (%s); deleting it", key, exc)
            self.metrics.cache_bad_entries.labels(name).inc()
            if record:
                self.metrics.cache_misses.labels(name).inc()
            await self._delete(key)
            return None
        if record:
            self.metrics.cache_hits.labels(name).inc()
        self.metrics.cache_bytes.labels(name, "read").inc(len(blob))
        return sections

    async def put(self, key: str, sections: Mapping[str, bytes | memoryview]) -> bool:
        """Store `sections` under `key`; False when skipped (too large) or the backend failed."""
        name = self.backend.name
        blob = entry.encode(key, sections, graph_format=self.graph_format, codec=self.codec)
        if len(blob) > self.max_entry_bytes:
            log.info("graph %s not cached: %d bytes > max entry size %d", key, len(blob), self.max_entry_bytes)
            self.metrics.cache_skipped.labels(name, "too_large").inc()
            return False
        try:
            await self.backend.put(key, blob, self.ttl_s)
        except RedisUnavailable:
            self.metrics.cache_errors.labels(name, "put").inc()
            return False
        self.metrics.cache_bytes.labels(name, "written").inc(len(blob))
        return True

    async def _delete(self, key: str) -> None:
        try:
            await self.backend.delete(key)
        except RedisUnavailable:
            self.metrics.cache_errors.labels(self.backend.name, "delete").inc()
