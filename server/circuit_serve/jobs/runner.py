"""From a graph key to its bytes: cache, in-flight dedup, fleet queue or replica lock, worker pool.

For one request:
1. look the key up in the graph cache; a hit is the answer;
2. otherwise join (or start) the in-process computation of that key;
3. with a fleet queue (Redis): submit the job (or join the fleet's job of that key;
   jobs/fleet_queue.py) and relay its status from Redis every `poll_s` (queue position,
   the computing replica's phase and fraction) until it is done (the sections are read
   from the cache), failed or cancelled; the last local caller leaving withdraws this
   replica's interest (the job stops if nobody else waits and it is not background).
   When Redis does not answer, go on as without it (step 4), so a call never fails for it;
4. without one, the computation first takes the replica lock; if another replica holds
   it, poll the cache until its result appears, its lock is freed (then take
   it), or `lock_wait_s` passes (then compute anyway);
5. wait for a worker, run the engine work in a thread, export its stats,
   store the sections in the cache, release the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator

from circuit_serve.cache.graph_cache import GraphCache
from circuit_serve.cache.redis_link import RedisUnavailable
from circuit_serve.domain.errors import Cancelled, InvalidRequest, JobFailed
from circuit_serve.jobs.events import Finished, JobEvent, Queued, Running, Work
from circuit_serve.jobs.fleet_queue import REDIS_PATIENCE_S, FleetQueue
from circuit_serve.jobs.inflight import Emit, InFlight
from circuit_serve.jobs.pool import WorkerPool
from circuit_serve.jobs.replica_lock import HeldLock, NoLock, ReplicaLocks
from circuit_serve.jobs.stats_export import export_stats
from circuit_serve.jobs.status import CancelOutcome, JobSpec, JobStatus
from circuit_serve.metrics.attribution import AttributionMetrics

log = logging.getLogger(__name__)


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
        fleet: FleetQueue | None = None,
        replica: str = "",
        poll_s: float = 0.2,
    ) -> None:
        """`fleet`: the Redis queue shared by the replicas (None: this replica computes what it is
        asked, step 4); `replica`: this replica's name in job status."""
        self.cache = cache
        self.pool = pool
        self.locks = locks
        self.metrics = metrics
        self.inflight = InFlight(metrics)
        self.lock_wait_s = lock_wait_s
        self.lock_poll_s = lock_poll_s
        self.fleet = fleet
        self.replica = replica
        self.poll_s = poll_s
        self._fleet_waiting = 0  # this replica's callers' jobs waiting in the fleet queue

    async def stream(
        self,
        key: str,
        work: Work,
        *,
        timeout_s: float | None = None,
        tenant: str = "",
        spec: JobSpec | None = None,
    ) -> AsyncIterator[JobEvent | Finished]:
        """Progress events for `key`, ending with its `Finished` sections.

        `work` runs only if nobody (cache, another caller, another replica) has
        the graph. Raises `CapacityExceeded`, `DeadlineExceeded` (after
        `timeout_s`), or whatever the work raised. A computation started here waits in
        the pool's queue as `tenant`'s (callers joining it later are not charged). With a
        fleet queue, `spec` is what a worker on any replica needs to compute it.
        """
        cached = await self.cache.get(key)
        if cached is not None:
            yield Finished(cached, "cache")
            return

        async def produce(emit: Emit, stop: threading.Event) -> Finished:
            if self.fleet is not None and spec is not None:
                return await self._produce_fleet(spec, work, emit, stop)
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
                export_stats(self.metrics, computed.stats)
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

    # ------------------------------------------------------------------ 3. the fleet queue

    async def _produce_fleet(self, spec: JobSpec, work: Work, emit: Emit, stop: threading.Event) -> Finished:
        assert self.fleet is not None
        try:
            await self._submit(spec)
        except RedisUnavailable as exc:
            log.warning("fleet queue unavailable (%s); computing graph %s on this replica", exc, spec.key)
            return await self._produce(spec.key, work, emit, stop, spec.tenant)
        waiting = False
        last: JobEvent | None = None
        failing_since: float | None = None
        try:
            while True:
                if stop.is_set():  # every local caller left (a flag too: redis-py may swallow a cancellation)
                    raise asyncio.CancelledError
                try:
                    status = await self.fleet.status(spec.key)
                    failing_since = None
                except RedisUnavailable:
                    failing_since = failing_since or time.monotonic()
                    if time.monotonic() - failing_since < REDIS_PATIENCE_S:  # a slow moment, not an outage
                        await asyncio.sleep(self.poll_s)
                        continue
                    status = None
                if status is None:  # Redis lost it (or answers no more): never fail the call for that
                    log.warning("graph job %s vanished from the fleet queue; computing it here", spec.key)
                    return await self._produce(spec.key, work, emit, stop, spec.tenant)
                if waiting != (status.state == "queued"):
                    waiting = not waiting
                    self._count_waiting(1 if waiting else -1)
                event: JobEvent | None = None
                if status.state == "queued":
                    event = Queued(status.position)
                elif status.state == "running":
                    event = Running(status.phase or "starting", status.fraction)
                if event is not None:
                    if event != last:
                        emit(event)
                        last = event
                elif status.state == "done":
                    if not isinstance(last, Running):  # it ran between two polls: relay that it ran
                        emit(Running(status.phase or "done", 1.0))
                    sections = await self.cache.get(spec.key, record=False)
                    if sections is None:
                        return await self._produce(spec.key, work, emit, stop, spec.tenant)
                    return Finished(sections, "computed" if status.replica == self.replica else "replica")
                elif status.state == "cancelled":
                    raise Cancelled(f"the graph job was cancelled ({status.reason})")
                else:
                    kind = await self.fleet.error_kind(spec.key)
                    raise (InvalidRequest if kind == "invalid" else JobFailed)(status.reason)
                await asyncio.sleep(self.poll_s)
        finally:
            if waiting:
                self._count_waiting(-1)
            with contextlib.suppress(RedisUnavailable, asyncio.CancelledError):
                await asyncio.shield(self.fleet.leave(spec.key))

    async def _submit(self, spec: JobSpec) -> None:
        """Queue `spec` on the fleet; refused during the link's first pause after one failed call (a
        loaded moment, not an outage), it is tried once more when that pause ends, so that a slow
        Redis command does not send the graph around the fleet's queue and deduplication."""
        assert self.fleet is not None
        try:
            await self.fleet.submit(spec)
        except RedisUnavailable:
            wait = self.fleet.link.first_pause_left()
            if wait is None:
                raise
            await asyncio.sleep(wait)
            await self.fleet.submit(spec)

    def _count_waiting(self, change: int) -> None:
        self._fleet_waiting += change
        self.metrics.queue_depth.set(self.pool.queued + self._fleet_waiting)

    # ------------------------------------------------------------------ job status and cancel

    async def status(self, key: str) -> JobStatus | None:
        """The job of `key`: from the fleet when there is one, else this replica's own; None when
        nobody knows it."""
        if self.fleet is not None:
            try:
                found = await self.fleet.status(key)
            except RedisUnavailable:
                found = None
            if found is not None:
                return found
        event = self.inflight.last_event(key)
        if event is not None or key in self.inflight:
            if isinstance(event, Queued):
                return JobStatus(key, "queued", position=event.position, replica=self.replica)
            phase, fraction = (event.phase, event.fraction) if isinstance(event, Running) else ("starting", 0.0)
            return JobStatus(key, "running", phase=phase, fraction=fraction, replica=self.replica)
        if await self.cache.get(key, record=False) is not None:
            return JobStatus(key, "done")
        return None

    async def cancel(self, key: str, *, pinned: bool = False) -> CancelOutcome:
        """Stop the job of `key` unless another caller waits or it is a background job (`pinned`)."""
        if self.fleet is not None:
            try:
                outcome = await self.fleet.cancel(key)
            except RedisUnavailable:
                outcome = None
            if outcome is not None and (outcome.cancelled or key not in self.inflight):
                return outcome
        if key not in self.inflight:
            return CancelOutcome(False, "no such job running on this replica")
        if pinned:
            return CancelOutcome(False, "it is a background job: it finishes for whoever asks later")
        waiters = self.inflight.waiters(key)
        if waiters > 1:
            return CancelOutcome(False, f"{waiters} callers wait for this graph")
        self.inflight.stop(key)
        return CancelOutcome(True)
