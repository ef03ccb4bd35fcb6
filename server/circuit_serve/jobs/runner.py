"""From a graph key to its bytes: cache, in-flight dedup, replica lock, worker pool.

For one request:
1. look the key up in the graph cache; a hit is the answer;
2. otherwise join (or start) the in-process computation of that key;
3. the computation first takes the replica lock; if another replica holds
   it, poll the cache until its result appears, its lock is freed (then take
   it), or `lock_wait_s` passes (then compute anyway);
4. wait for a worker, run the engine work in a thread, export its stats,
   store the sections in the cache, release the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator

from circuit_serve.cache.graph_cache import GraphCache
from circuit_serve.jobs.events import Finished, GraphStats, JobEvent, Running, Work
from circuit_serve.jobs.inflight import Emit, InFlight
from circuit_serve.jobs.pool import WorkerPool
from circuit_serve.jobs.replica_lock import HeldLock, NoLock, ReplicaLocks
from circuit_serve.metrics.attribution import AttributionMetrics


class GraphJobs:
    def __init__(
        self,
        *,
        cache: GraphCache,
        pool: WorkerPool,
        locks: ReplicaLocks,
        metrics: AttributionMetrics,
        lock_wait_s: float = 120.0,
        lock_poll_s: float = 0.25,
    ) -> None:
        self.cache = cache
        self.pool = pool
        self.locks = locks
        self.metrics = metrics
        self.inflight = InFlight(metrics)
        self.lock_wait_s = lock_wait_s
        self.lock_poll_s = lock_poll_s

    async def stream(
        self, key: str, work: Work, *, timeout_s: float | None = None, tenant: str = ""
    ) -> AsyncIterator[JobEvent | Finished]:
        """Progress events for `key`, ending with its `Finished` sections.

        `work` runs only if nobody (cache, another caller, another replica) has
        the graph. Raises `CapacityExceeded`, `DeadlineExceeded` (after
        `timeout_s`), or whatever the work raised. A computation started here waits in
        the pool's queue as `tenant`'s (callers joining it later are not charged).
        """
        cached = await self.cache.get(key)
        if cached is not None:
            yield Finished(cached, "cache")
            return

        async def produce(emit: Emit, stop: threading.Event) -> Finished:
            return await self._produce(key, work, emit, stop, tenant)

        async with contextlib.aclosing(self.inflight.follow(key, produce, timeout_s=timeout_s)) as events:
            async for event in events:
                yield event

    async def _produce(self, key: str, work: Work, emit: Emit, stop: threading.Event, tenant: str = "") -> Finished:
        lock = await self.locks.try_acquire(key)
        if lock is None:
            emit(Running("waiting_for_replica", 0.0))
            found, lock = await self._wait_for_replica(key)
            if found is not None:
                return Finished(found, "replica")
        try:
            if isinstance(lock, HeldLock):
                # another replica may have finished between our cache miss and taking its lock
                again = await self.cache.get(key, record=False)
                if again is not None:
                    return Finished(again, "replica")
            started = time.perf_counter()
            computed = await self.pool.run(work, on_event=emit, stop=stop, tenant=tenant)
            self.metrics.duration.labels("total").observe(time.perf_counter() - started)
            self.metrics.computations.inc()
            if computed.stats is not None:
                self._export(computed.stats)
            await self.cache.put(key, computed.sections)
            return Finished(computed.sections, "computed")
        finally:
            if lock is not None:
                await asyncio.shield(lock.release())

    async def _wait_for_replica(self, key: str) -> tuple[dict[str, bytes] | None, HeldLock | NoLock | None]:
        """(the other replica's result, None) or (None, a lock we now hold or None on timeout)."""
        deadline = time.monotonic() + self.lock_wait_s
        while time.monotonic() < deadline:
            await asyncio.sleep(self.lock_poll_s)
            found = await self.cache.get(key, record=False)
            if found is not None:
                self.metrics.replica_waits.labels("cached").inc()
                return found, None
            lock = await self.locks.try_acquire(key)
            if lock is not None:
                self.metrics.replica_waits.labels("lock_freed").inc()
                return None, lock
        self.metrics.replica_waits.labels("timeout").inc()
        return None, None

    def _export(self, stats: GraphStats) -> None:
        m = self.metrics
        m.graph_nodes.labels("unpruned").observe(stats.nodes_unpruned)
        m.graph_nodes.labels("pruned").observe(stats.nodes_pruned)
        m.graph_edges.labels("unpruned").observe(stats.edges_unpruned)
        m.graph_edges.labels("pruned").observe(stats.edges_pruned)
        if stats.replacement_score is not None:
            m.replacement_score.observe(stats.replacement_score)
        if stats.completeness_score is not None:
            m.completeness_score.observe(stats.completeness_score)
        for phase, seconds in stats.phase_seconds.items():
            m.duration.labels(phase).observe(seconds)
