"""What a caller waiting for a graph sees: queue position, running progress, the result."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

# Called from the worker thread as the engine moves on: (phase name, fraction of that phase done).
Progress = Callable[[str, float], None]
# Polled by the engine at batch boundaries; True means "every caller left, stop".
ShouldStop = Callable[[], bool]


@dataclass(frozen=True, slots=True)
class Queued:
    """Admitted, waiting for a worker; position 1 runs next."""

    position: int


@dataclass(frozen=True, slots=True)
class Running:
    """On a worker (or waiting for another replica): phase name and fraction done in [0, 1]."""

    phase: str
    fraction: float


@dataclass(frozen=True, slots=True)
class GraphStats:
    """Plain numbers about one computed graph, exported as metrics by the job runner."""

    nodes_unpruned: int = 0
    nodes_pruned: int = 0
    edges_unpruned: int = 0
    edges_pruned: int = 0
    replacement_score: float | None = None
    completeness_score: float | None = None
    phase_seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Computed:
    """What a unit of engine work returns: the entry sections to cache and its stats."""

    sections: dict[str, bytes]
    stats: GraphStats | None = None


@dataclass(frozen=True, slots=True)
class Finished:
    """The graph's sections and where they came from."""

    sections: dict[str, bytes]
    source: Literal["cache", "computed", "replica"]


# One unit of engine work, run in a worker thread.
Work = Callable[[Progress, ShouldStop], Computed]

JobEvent = Queued | Running
