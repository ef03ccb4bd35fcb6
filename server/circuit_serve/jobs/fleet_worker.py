"""This replica's workers on the fleet queue: take graph jobs when free, compute, hand back.

Each worker slot loops:
1. while this replica is not draining and a worker is free, look at the class streams in
   priority order (interactive, background, backfill) with XREADGROUP (one entry, no blocking);
2. every quarter of `reclaim_s`, when nothing new is there, take over an entry idle past
   `reclaim_s` (XAUTOCLAIM: its replica died or hung); an entry delivered more than
   `max_deliveries` times goes to the dead-letter stream instead, its job FAILED with the reason;
3. `take` the job (jobs/fleet_queue.py): skip it when it was cancelled or already ended; answer it
   from the cache when another replica finished it meanwhile;
4. compute it on the worker pool; while it runs, write progress and read the cancel flag every
   `poll_s` (a cancel sets the stop flag, which the engine reads at its next batch boundary) and
   heartbeat every `heartbeat_s` (XCLAIM JUSTID, only while the entry is still ours: when another
   replica has reclaimed it, this one looked dead, so it stops and leaves the job to that one);
5. store the result in the cache, then mark the job done and acknowledge it (XACK + XDEL); a
   failure marks it failed (the engine's reason) and acknowledges it too: it is not retried.
   Redis calls that fail here are tried again for up to `REDIS_PATIENCE_S` (a loaded moment
   opens the link's breaker for a pause): a computed graph is not dropped for a moment's pause.

`drain(grace_s)` (SIGTERM) stops step 1 at once and gives running graphs `grace_s`; a graph still
running then is stopped and left unacknowledged, so another replica reclaims it (step 2).
A refresher writes the fleet-wide queue depth by class into the metrics every second.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from circuit_serve.cache.graph_cache import GraphCache
from circuit_serve.cache.redis_link import RedisUnavailable
from circuit_serve.domain.errors import Cancelled, CircuitError, InvalidRequest
from circuit_serve.jobs.events import JobEvent, Running, Work
from circuit_serve.jobs.fleet_queue import REDIS_PATIENCE_S, FleetQueue
from circuit_serve.jobs.pool import WorkerPool
from circuit_serve.jobs.stats_export import export_stats
from circuit_serve.jobs.status import CLASSES, JobSpec
from circuit_serve.metrics.attribution import AttributionMetrics

log = logging.getLogger(__name__)

NOT_CACHED = (
    "the graph could not be stored in the graph cache (larger than --graph-cache-max-entry-mib, or Redis "
    "failed), and fleet jobs hand their results over through it"
)


@dataclass(eq=False)
class _Job:
    job_class: str
    entry_id: str
    spec: JobSpec
    stop: threading.Event = field(default_factory=threading.Event)
    latest: tuple[str, float] = ("starting", 0.0)
    abandoned: bool = False  # drained: left for another replica
    lost: bool = False  # another replica reclaimed it (this one looked dead): stop, leave it to that one
    finished: bool = False  # ends the keeper (a flag: redis-py may swallow a task's cancellation)


class FleetWorkers:
    def __init__(
        self,
        *,
        queue: FleetQueue,
        pool: WorkerPool,
        cache: GraphCache,
        metrics: AttributionMetrics,
        replica: str,
        workers: int,
        poll_s: float,
        heartbeat_s: float,
        reclaim_s: float,
        max_deliveries: int,
    ) -> None:
        """`workers` 0: this replica computes no graph (`--role generation`)."""
        self.queue = queue
        self.pool = pool
        self.cache = cache
        self.metrics = metrics
        self.replica = replica
        self.work_for: Callable[[JobSpec], Work] | None = None
        self.workers = workers
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self.reclaim_ms = max(1, int(reclaim_s * 1000))
        self.max_deliveries = max_deliveries
        self._draining = False
        self._running: dict[str, _Job] = {}
        self._tasks: list[asyncio.Task] = []
        self._keepers: set[asyncio.Task] = set()
        self._next_reclaim = 0.0

    async def start(self, work_for: Callable[[JobSpec], Work]) -> None:
        """Start the worker loops; `work_for(spec)` is the engine work of a job (called once it is ours)."""
        self.work_for = work_for
        try:
            await self.queue.ensure_groups()
        except RedisUnavailable as exc:
            log.warning("fleet queue not reachable at start (%s); workers retry", exc)
        self._tasks = [asyncio.create_task(self._loop(i), name=f"fleet-worker-{i}") for i in range(self.workers)]
        self._tasks.append(asyncio.create_task(self._refresh_depths(), name="fleet-depths"))

    # ------------------------------------------------------------------ 1-2. find work

    async def _loop(self, slot: int) -> None:
        while not self._draining:
            try:
                found = await self._next()
            except RedisUnavailable:  # (a Redis that restarted empty is no failure: `read` remakes the group)
                await asyncio.sleep(self.poll_s * 5)
                continue
            if found is None:
                await asyncio.sleep(self.poll_s)
                continue
            await self._run(*found)

    async def _next(self) -> tuple[str, str, JobSpec, int] | None:
        for job_class in CLASSES:
            got = await self.queue.read(job_class, self.replica)
            if got is not None:
                return job_class, got[0], got[1], 1
        if time.monotonic() < self._next_reclaim:
            return None
        self._next_reclaim = time.monotonic() + self.reclaim_ms / 4000
        for job_class in CLASSES:
            got = await self.queue.reclaim(job_class, self.replica, self.reclaim_ms)
            if got is None:
                continue
            entry_id, spec, deliveries = got
            if spec is None:
                await self.queue.ack(job_class, entry_id)
                continue
            if deliveries > self.max_deliveries:
                reason = (
                    f"dead-lettered: handed to a worker {deliveries - 1} times and never finished "
                    f"(limit --job-max-deliveries {self.max_deliveries}); its workers died or hung"
                )
                log.error("graph job %s %s", spec.key, reason)
                await self.queue.dead_letter(entry_id, spec, deliveries - 1, reason)
                self.metrics.fleet_jobs.labels("dead_lettered").inc()
                continue
            log.warning("reclaimed graph job %s (delivery %d): its replica stopped heartbeating", spec.key, deliveries)
            self.metrics.fleet_jobs.labels("reclaimed").inc()
            return job_class, entry_id, spec, deliveries
        return None

    # ------------------------------------------------------------------ 3-5. run one job

    async def _run(self, job_class: str, entry_id: str, spec: JobSpec, deliveries: int) -> None:
        job = _Job(job_class, entry_id, spec)
        try:
            outcome = await self.queue.take(spec, self.replica, deliveries)
            if outcome != "run":
                await self.queue.ack(job_class, entry_id)
                return
            if await self.cache.get(spec.key, record=False) is not None:
                await self.queue.finish(spec, entry_id, "done", replica=self.replica)
                return
            queued_ms = time.time() * 1000 - int(entry_id.split("-")[0])
            self.metrics.fleet_queued_seconds.labels(job_class).observe(max(queued_ms, 0.0) / 1000)
            await self._compute(job)
        except RedisUnavailable as exc:
            log.warning("graph job %s: Redis failed (%s); the entry will be reclaimed", spec.key, exc)

    async def _compute(self, job: _Job) -> None:
        spec = job.spec
        self._running[spec.key] = job
        keeper = asyncio.create_task(self._keep(job), name=f"fleet-keep-{spec.key[:12]}")
        self._keepers.add(keeper)
        keeper.add_done_callback(self._keepers.discard)

        def on_event(event: JobEvent) -> None:
            if isinstance(event, Running):
                job.latest = (event.phase, event.fraction)

        try:
            try:
                assert self.work_for is not None
                work = self.work_for(spec)
                started = time.perf_counter()
                computed = await self.pool.run(work, on_event=on_event, stop=job.stop, tenant=spec.tenant)
            except Cancelled as exc:
                if job.lost:
                    log.warning("graph job %s: stopped here, another replica computes it now", spec.key)
                    return
                if job.abandoned:  # drained: another replica reclaims it
                    self.metrics.fleet_jobs.labels("requeued").inc()
                    await self.queue.requeued(spec.key, f"requeued: replica {self.replica} shut down while computing")
                    return
                await self._end(job, "cancelled", str(exc))
                return
            except CircuitError as exc:
                await self._end(job, "failed", str(exc), "invalid" if isinstance(exc, InvalidRequest) else "error")
                return
            except Exception as exc:
                log.exception("graph job %s failed", spec.key)
                await self._end(job, "failed", f"{type(exc).__name__}: {exc}", "error")
                return
            self.metrics.duration.labels("total").observe(time.perf_counter() - started)
            self.metrics.computations.inc()
            if computed.stats is not None:
                export_stats(self.metrics, computed.stats)
            await self._hand_over(job, computed.sections)
        finally:
            job.finished = True  # the keeper ends after its current sleep
            self._running.pop(spec.key, None)

    async def _hand_over(self, job: _Job, sections) -> None:
        """Step 5 for a computed graph: store it, then end its job `done`. A put that failed while the
        link pauses after a failed call is tried again for up to REDIS_PATIENCE_S (the graph took a
        worker's time; given up, its entry would be reclaimed and computed again); a put refused
        with the link up (larger than --graph-cache-max-entry-mib) fails the job at once."""
        deadline = time.monotonic() + REDIS_PATIENCE_S
        while not await self.cache.put(job.spec.key, sections):
            if self.queue.link.available or time.monotonic() >= deadline:
                await self._end(job, "failed", NOT_CACHED, "error")
                return
            await asyncio.sleep(self.poll_s)
        await self._end(job, "done")

    async def _end(self, job: _Job, state: str, reason: str = "", error: str = "") -> None:
        """Write the job's final state and acknowledge its entry, waiting out failing Redis calls for up
        to REDIS_PATIENCE_S; then `RedisUnavailable` (the entry is reclaimed later)."""
        self.metrics.fleet_jobs.labels(state).inc()
        deadline = time.monotonic() + REDIS_PATIENCE_S
        while True:
            try:
                await self.queue.finish(job.spec, job.entry_id, state, replica=self.replica, reason=reason, error=error)
                return
            except RedisUnavailable:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(self.poll_s)

    async def _keep(self, job: _Job) -> None:
        """Step 4: progress out, cancel in, heartbeat, until `_compute` marks the job finished."""
        next_beat = time.monotonic() + self.heartbeat_s
        while True:
            await asyncio.sleep(self.poll_s)
            if job.finished:
                return
            try:
                if await self.queue.progress(job.spec.key, self.replica, *job.latest):
                    job.stop.set()
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self.heartbeat_s
                    if not await self.queue.heartbeat(job.job_class, self.replica, job.entry_id):
                        job.lost = True
                        job.stop.set()
                        return
            except RedisUnavailable:
                continue

    async def _refresh_depths(self) -> None:
        while True:
            try:
                for job_class, depth in (await self.queue.depths()).items():
                    self.metrics.fleet_queue_depth.labels(job_class).set(depth)
            except RedisUnavailable:
                pass
            await asyncio.sleep(1.0)

    # ------------------------------------------------------------------ drain

    async def drain(self, grace_s: float) -> None:
        """Take no new job; let running ones finish within `grace_s`; stop the rest unacknowledged."""
        self._draining = True
        deadline = time.monotonic() + grace_s
        while self._running and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for job in list(self._running.values()):
            log.info("graph job %s still running at shutdown: left for another replica", job.spec.key)
            job.abandoned = True
            job.stop.set()
        stop_by = time.monotonic() + 5.0  # the engine stops at its next batch boundary
        while self._running and time.monotonic() < stop_by:
            await asyncio.sleep(0.05)

    def shutdown(self) -> None:
        self._draining = True
        for task in self._tasks:
            task.cancel()
