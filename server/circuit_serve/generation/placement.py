"""Where vLLM's engine-core process runs: `--engine-core-cpus`.

On vLLM's CPU build the engine core (scheduler) and its model worker are two processes that take
turns: while the worker runs a step the engine core waits for its result, and while the engine
core schedules the next step the worker waits for it. Both wait by spinning (`sched_yield` on a
shared-memory queue), so each keeps a core busy when idle. vLLM reserves a core for the engine
core beside the worker's (`VLLM_CPU_OMP_THREADS_BIND`); on a host where the server and its
clients need that core, placing the engine core on the worker's cores instead lets the two spin
into each other (each one's yield runs the other) and leaves the other cores to the server. Only
Linux places processes; elsewhere the option is refused (config/serve.py).
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)


def place_engine_core(llm: Any, cpus: frozenset[int]) -> None:
    """Put every thread of `llm`'s (a vLLM AsyncLLM) engine-core process(es) on `cpus` (threads they
    start later inherit it). The worker processes keep vLLM's placement."""
    manager = getattr(getattr(llm.engine_core, "resources", None), "engine_manager", None)
    pids = [p.pid for p in getattr(manager, "processes", ()) if p.pid is not None]
    if not pids:
        raise RuntimeError("vLLM runs its engine core in this process: --engine-core-cpus has nothing to place")
    for pid in pids:
        place_process(pid, cpus)
    log.info("vLLM engine core (pid %s) placed on CPUs %s", ", ".join(map(str, pids)), sorted(cpus))


def place_process(pid: int, cpus: frozenset[int]) -> None:
    """Every thread of process `pid` on `cpus` (`sched_setaffinity` on a pid sets one thread's)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:  # a thread that ended meanwhile
            pass
