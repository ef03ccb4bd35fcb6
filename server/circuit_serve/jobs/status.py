"""What the fleet knows about one graph job: its state, progress, class, and what a worker needs.

A job is named by its graph key (content addressed, so one key is one job). Its status lives in
Redis (jobs/fleet_queue.py) so that any replica answers for it; without Redis, this replica's
in-flight table stands in (jobs/runner.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
FINAL_STATES: frozenset[str] = frozenset({"done", "failed", "cancelled"})

# Queue classes, the order in which a free worker looks at them.
CLASSES: tuple[str, ...] = ("interactive", "background", "backfill")
JobClass = Literal["interactive", "background", "backfill"]


@dataclass(frozen=True, slots=True)
class JobStatus:
    key: str
    state: JobState
    position: int = 0  # queued: 1 = next to run across the fleet
    phase: str = ""  # running: the engine phase
    fraction: float = 0.0  # running: share of the phase done, [0, 1]
    replica: str = ""  # who computes (or computed) it
    reason: str = ""  # failed / cancelled: why
    job_class: str = "interactive"
    deliveries: int = 0  # times a worker was handed the job

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


@dataclass(frozen=True, slots=True)
class JobSpec:
    """Everything a worker on any replica needs to compute the graph: `payload` is the
    attribution service's (token ids, settings, targets as JSON), opaque to the queue."""

    key: str
    payload: dict[str, Any]
    tenant: str = ""
    job_class: str = "interactive"
    background: bool = False  # finish it even when every caller has left


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    cancelled: bool
    reason: str = ""
    status: JobStatus | None = field(default=None)
