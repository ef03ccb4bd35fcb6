"""In-flight deduplication: identical concurrent requests share one computation.

The first caller for a key starts a producer task; later callers for the same
key join it (counted as dedup joins) and see the same progress events from the
latest one on, then the same result or error. A caller may leave at any time
(cancellation or its own deadline). When the last caller has left before the
result is ready, the producer is cancelled and its stop flag set, so the
engine stops at its next batch boundary; while anyone is still waiting, the
work goes on.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from circuit_serve.domain.errors import DeadlineExceeded
from circuit_serve.jobs.events import Finished, JobEvent
from circuit_serve.metrics.attribution import AttributionMetrics

Emit = Callable[[JobEvent], None]
# Produces the graph: gets an event sink and the stop flag; returns the finished result.
Producer = Callable[[Emit, threading.Event], Awaitable[Finished]]

_DONE = object()


@dataclass(eq=False)
class _Shared:
    key: str
    stop: threading.Event = field(default_factory=threading.Event)
    subscribers: set[asyncio.Queue] = field(default_factory=set)
    last_event: JobEvent | None = None
    task: asyncio.Task[Finished] | None = None

    def emit(self, event: JobEvent) -> None:
        self.last_event = event
        for queue in self.subscribers:
            queue.put_nowait(event)


class InFlight:
    def __init__(self, metrics: AttributionMetrics) -> None:
        self.metrics = metrics
        self._jobs: dict[str, _Shared] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._jobs

    def last_event(self, key: str) -> JobEvent | None:
        job = self._jobs.get(key)
        return job.last_event if job else None

    def stop(self, key: str) -> None:
        """Ask the computation of `key` to stop at its next batch boundary (CancelJob); its callers
        hear the engine's `Cancelled`."""
        job = self._jobs.get(key)
        if job is not None:
            job.stop.set()

    def waiters(self, key: str) -> int:
        job = self._jobs.get(key)
        return len(job.subscribers) if job else 0

    async def follow(
        self, key: str, produce: Producer, *, timeout_s: float | None = None
    ) -> AsyncIterator[JobEvent | Finished]:
        """Events of the (possibly shared) computation of `key`, then its `Finished` result.

        Raises what the producer raised, or `DeadlineExceeded` after `timeout_s`.
        Use under `contextlib.aclosing` so leaving early detaches at once.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        queue: asyncio.Queue = asyncio.Queue()
        job = self._jobs.get(key)
        if job is None:
            job = _Shared(key)
            job.subscribers.add(queue)
            self._jobs[key] = job
            job.task = asyncio.create_task(self._drive(job, produce), name=f"graph-{key[:12]}")
        else:
            self.metrics.dedup_joins.inc()
            job.subscribers.add(queue)
            if job.last_event is not None:
                queue.put_nowait(job.last_event)
        try:
            while True:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    raise DeadlineExceeded(f"the graph was not ready before the call's deadline ({timeout_s:.2f}s)")
                try:
                    item = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    raise DeadlineExceeded(
                        f"the graph was not ready before the call's deadline ({timeout_s:.2f}s)"
                    ) from None
                if item is _DONE:
                    break
                yield item
            assert job.task is not None and job.task.done()
            yield job.task.result()  # re-raises the producer's error for every waiter
        finally:
            job.subscribers.discard(queue)
            if not job.subscribers and job.task is not None and not job.task.done():
                job.stop.set()
                job.task.cancel()
                if self._jobs.get(key) is job:
                    del self._jobs[key]

    async def _drive(self, job: _Shared, produce: Producer) -> Finished:
        try:
            return await produce(job.emit, job.stop)
        finally:
            if self._jobs.get(job.key) is job:
                del self._jobs[job.key]
            for queue in job.subscribers:
                queue.put_nowait(_DONE)
