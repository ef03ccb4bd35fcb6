"""Admission queue and worker pool for graph computations.

`workers` computations run at once (default one per device), each in its own
thread so the event loop (and streaming generation) keeps going; up to
`max_queued` more wait in FIFO order and hear their position whenever it
changes; beyond that a new computation is refused with `CapacityExceeded`. A
computation started for a named tenant may wait only while that tenant has fewer
than `max_queued_per_tenant` waiting, so one tenant cannot fill the queue (work
without a tenant, e.g. on a server without tokens, meets the global limit only).

The attribution service has one pool (graphs, exported as `circuit_attribution_*` metrics) and the
features service another (steered generations, `name="steering"`, no metrics of its own yet).

A caller that goes away while queued leaves the queue at once. A caller that
goes away while running sets the work's stop flag; the engine polls it at its
next batch boundary and returns, and only then is the worker given to the next
computation (a thread cannot be killed safely mid-matmul).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from circuit_serve.domain.errors import CapacityExceeded
from circuit_serve.jobs.events import Computed, JobEvent, Queued, Running, Work
from circuit_serve.metrics.attribution import AttributionMetrics

log = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class _Ticket:
    granted: asyncio.Future[None]
    on_event: Callable[[JobEvent], None]
    tenant: str = ""
    position: int = 0  # last position announced to the caller


class WorkerPool:
    def __init__(
        self,
        *,
        workers: int = 1,
        max_queued: int = 8,
        max_queued_per_tenant: int | None = None,
        metrics: AttributionMetrics | None,
        name: str = "attribution",
    ) -> None:
        """`name` is the queue's name in refusals and thread names; `metrics` None exports nothing."""
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if max_queued < 0:
            raise ValueError(f"max_queued must be >= 0, got {max_queued}")
        self.workers = workers
        self.max_queued = max_queued
        self.max_queued_per_tenant = max_queued if max_queued_per_tenant is None else max_queued_per_tenant
        self.metrics = metrics
        self.name = name
        self._free = workers
        self._waiting: deque[_Ticket] = deque()
        self._stops: set[threading.Event] = set()  # stop flags of the work running now
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return self.workers - self._free

    def queued_for(self, tenant: str) -> int:
        return sum(1 for t in self._waiting if t.tenant == tenant)

    async def run(
        self, work: Work, *, on_event: Callable[[JobEvent], None], stop: threading.Event, tenant: str = ""
    ) -> Computed:
        """Wait for a worker, run `work(progress, should_stop)` on it, return its result."""
        loop = asyncio.get_running_loop()
        await self._admit(loop, on_event, tenant)
        if self.metrics is not None:
            self.metrics.running.inc()
        on_event(Running("starting", 0.0))

        def progress(phase: str, fraction: float) -> None:
            try:
                loop.call_soon_threadsafe(on_event, Running(phase, min(max(float(fraction), 0.0), 1.0)))
            except RuntimeError:  # the loop closed under a shutting-down server
                pass

        self._stops.add(stop)
        future = loop.run_in_executor(self._executor, work, progress, stop.is_set)
        future.add_done_callback(lambda f: (self._stops.discard(stop), self._on_work_done(f)))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            stop.set()
            log.info("work abandoned by its callers; stopping at the next batch boundary")
            raise

    async def _admit(self, loop: asyncio.AbstractEventLoop, on_event: Callable[[JobEvent], None], tenant: str) -> None:
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        if len(self._waiting) >= self.max_queued:
            raise CapacityExceeded(
                f"{self.name} queue is full: {self.running} running and {len(self._waiting)} waiting "
                f"(limit {self.max_queued} waiting); retry later"
            )
        if tenant and self.queued_for(tenant) >= self.max_queued_per_tenant:
            raise CapacityExceeded(
                f"{self.name} queue: this tenant already has {self.queued_for(tenant)} graphs waiting "
                f"(limit {self.max_queued_per_tenant} per tenant); retry when one has started"
            )
        ticket = _Ticket(loop.create_future(), on_event, tenant)
        self._waiting.append(ticket)
        self._announce()
        queued_at = time.perf_counter()
        try:
            await ticket.granted
        except asyncio.CancelledError:
            if ticket in self._waiting:
                self._waiting.remove(ticket)
                self._announce()
            elif ticket.granted.done() and not ticket.granted.cancelled():
                self._release_slot()  # the slot was handed over just as the caller left
            raise
        finally:
            if self.metrics is not None:
                self.metrics.duration.labels("queued").observe(time.perf_counter() - queued_at)

    def _on_work_done(self, future: asyncio.Future) -> None:
        if not future.cancelled() and future.exception() is not None:
            pass  # retrieved here: callers that left early never look at it
        if self.metrics is not None:
            self.metrics.running.dec()
        self._release_slot()

    def _release_slot(self) -> None:
        self._free += 1
        while self._free > 0 and self._waiting:
            ticket = self._waiting.popleft()
            if ticket.granted.done():  # its caller was cancelled a moment ago
                continue
            self._free -= 1
            ticket.granted.set_result(None)
        self._announce()

    def _announce(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._waiting))
        for position, ticket in enumerate(self._waiting, start=1):
            if ticket.position != position:
                ticket.position = position
                ticket.on_event(Queued(position))

    def shutdown(self) -> None:
        """Stop taking work and ask running work to stop at its next batch boundary (the
        interpreter waits for worker threads at exit, so a long graph must not run on)."""
        for stop in list(self._stops):
            stop.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
