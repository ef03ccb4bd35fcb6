"""The event loop's default executor with a bounded queue.

`asyncio.to_thread` (tokenizing, feature activations, file reads) runs on the loop's default
executor, whose stock queue has no bound: under a flood every request would wait its turn while
memory grows. Here at most `threads` jobs run and `max_queued` more wait; one more is refused at
once with `CapacityExceeded` (RESOURCE_EXHAUSTED), before it holds anything.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from circuit_serve.domain.errors import CapacityExceeded


class BoundedExecutor(ThreadPoolExecutor):
    def __init__(self, threads: int, max_queued: int, *, thread_name_prefix: str = "blocking") -> None:
        super().__init__(max_workers=threads, thread_name_prefix=thread_name_prefix)
        self.threads = threads
        self.max_queued = max_queued
        self._pending = 0  # submitted and not finished: running + waiting
        self._count_lock = threading.Lock()

    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        with self._count_lock:
            if self._pending >= self.threads + self.max_queued:
                raise CapacityExceeded(
                    f"the server's blocking-work queue is full ({self.threads} running, {self.max_queued} waiting); "
                    "retry later"
                )
            self._pending += 1
        try:
            future = super().submit(fn, *args, **kwargs)
        except BaseException:
            self._finished(None)
            raise
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _future: Future | None) -> None:
        with self._count_lock:
            self._pending -= 1
