"""Graph jobs: admission queue and workers, in-flight dedup, cross-replica locks."""

from circuit_serve.jobs.events import (
    Computed,
    Finished,
    GraphStats,
    JobEvent,
    Progress,
    Queued,
    Running,
    ShouldStop,
    Work,
)
from circuit_serve.jobs.inflight import InFlight
from circuit_serve.jobs.pool import WorkerPool
from circuit_serve.jobs.replica_lock import ReplicaLocks
from circuit_serve.jobs.runner import GraphJobs

__all__ = [
    "Computed",
    "Finished",
    "GraphJobs",
    "GraphStats",
    "InFlight",
    "JobEvent",
    "Progress",
    "Queued",
    "ReplicaLocks",
    "Running",
    "ShouldStop",
    "Work",
    "WorkerPool",
]
