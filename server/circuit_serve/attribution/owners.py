"""Owners of audit graphs: which tenants' completions a graph was computed from.

A graph computed by auditing a completion (`request_id` + `token_index`) shows that
completion's tokens, so only its tenant (or an admin) may fetch it by key. The owner is
recorded when the audit is accepted, before the graph exists, in a bounded in-process
map and, with Redis, in the set `<prefix>graph-owners:<key>` (same TTL as the graph
cache) so every replica answers GetGraph alike. Graphs with no recorded owner (computed
from a prompt or token ids the caller supplied) are readable by any `attribute` caller.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from circuit_serve.cache.redis_link import RedisLink, RedisUnavailable
from circuit_serve.domain.errors import BackendUnavailable
from circuit_serve.metrics.attribution import AttributionMetrics


class GraphOwners:
    def __init__(
        self,
        *,
        ttl_s: float,
        max_entries: int,
        metrics: AttributionMetrics,
        link: RedisLink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.metrics = metrics
        self.link = link
        self._clock = clock
        self._local: OrderedDict[str, tuple[set[str], float]] = OrderedDict()

    async def add(self, key: str, tenant: str) -> None:
        """Record `tenant` as an owner of graph `key`."""
        owners, _ = self._local.pop(key, (set(), 0.0))
        owners.add(tenant)
        self._local[key] = (owners, self._clock() + self.ttl_s)
        while len(self._local) > self.max_entries:
            self._local.popitem(last=False)
        if self.link is None:
            return
        name = self.link.key("graph-owners", key)
        px = max(1, int(self.ttl_s * 1000))

        async def put(r):
            async with r.pipeline(transaction=True) as p:
                await p.sadd(name, tenant).pexpire(name, px).execute()

        try:
            await self.link.call("graph_owner_put", put)
        except RedisUnavailable:
            self.metrics.completion_store_errors.labels("owner_put").inc()

    async def owners(self, key: str) -> set[str]:
        """The tenants owning `key` (empty: nobody, i.e. readable by any caller). Raises
        BackendUnavailable when Redis is configured but cannot say (never guesses "nobody")."""
        found: set[str] = set()
        local = self._local.get(key)
        if local is not None and self._clock() < local[1]:
            found |= local[0]
        if self.link is None:
            return found
        name = self.link.key("graph-owners", key)
        try:
            members = await self.link.call("graph_owner_get", lambda r: r.smembers(name))
        except RedisUnavailable:
            self.metrics.completion_store_errors.labels("owner_get").inc()
            if found:
                return found
            raise BackendUnavailable("cannot check who may read this graph while Redis is unreachable; retry") from None
        return found | {m.decode() if isinstance(m, bytes) else str(m) for m in members}
