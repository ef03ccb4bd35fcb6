"""Prometheus metrics of the attribution service (graph cache, jobs, graphs).

All collectors live in the registry passed in (never the global one); label
values that are known up front are created here so they show as 0 before use.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PHASES = ("queued", "forward", "attribution", "pruning", "serialize", "total")
_DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_SIZE_BUCKETS = (10, 30, 100, 300, 1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000, 3_000_000, 10_000_000)
_SCORE_BUCKETS = tuple(i / 20 for i in range(1, 21))
CACHE_OPS = ("get", "put", "delete")
FLEET_CLASSES = ("interactive", "background", "backfill")  # jobs/status.py CLASSES
FLEET_OUTCOMES = ("done", "failed", "cancelled", "reclaimed", "dead_lettered", "requeued")
OUTCOMES = ("ok", "cached", "invalid", "not_found", "capacity", "deadline", "cancelled", "unavailable", "error")


class AttributionMetrics:
    """Counters, gauges and histograms of Attribute/GetGraph, the cache and the job queue."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # ---- requests and work
        self.requests = Counter(
            "circuit_attribution_requests_total",
            "Attribute calls by outcome (cached = served from the graph cache).",
            ["outcome"],
            registry=registry,
        )
        for outcome in OUTCOMES:
            self.requests.labels(outcome)
        self.computations = Counter(
            "circuit_attribution_computations_total",
            "Graphs actually computed by the engine on this replica.",
            registry=registry,
        )
        self.dedup_joins = Counter(
            "circuit_attribution_dedup_joins_total",
            "Requests that joined an identical computation already in flight instead of starting one.",
            registry=registry,
        )
        self.replica_waits = Counter(
            "circuit_attribution_replica_waits_total",
            "Waits for another replica holding the graph's lock, by how they ended.",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("cached", "lock_freed", "timeout"):
            self.replica_waits.labels(outcome)
        self.queue_depth = Gauge(
            "circuit_attribution_queue_depth",
            "Graph computations admitted by this replica and waiting for a worker (with Redis: its "
            "callers' jobs waiting in the fleet queue; summed over replicas, the fleet's queue).",
            registry=registry,
        )
        self.running = Gauge(
            "circuit_attribution_running",
            "Graph computations running on a worker now.",
            registry=registry,
        )
        self.duration = Histogram(
            "circuit_attribution_duration_seconds",
            "Time per attribution phase (engine phases; queued = waiting for a worker; total = queued + computing).",
            ["phase"],
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        for phase in PHASES:
            self.duration.labels(phase)
        # ---- the fleet queue (with Redis; jobs/fleet_worker.py)
        self.fleet_queue_depth = Gauge(
            "circuit_attribution_fleet_queue_depth",
            "Graph jobs waiting for a worker across the fleet, by class (every replica reports the same "
            "value: aggregate with max, not sum).",
            ["class"],
            registry=registry,
        )
        self.fleet_jobs = Counter(
            "circuit_attribution_fleet_jobs_total",
            "Fleet jobs this replica's workers ended or handled, by outcome (reclaimed = taken over from a "
            "replica that stopped heartbeating; dead_lettered = handed out too often; requeued = left "
            "unacknowledged by a draining shutdown).",
            ["outcome"],
            registry=registry,
        )
        self.fleet_queued_seconds = Histogram(
            "circuit_attribution_fleet_queued_seconds",
            "Time from a job's submission (on any replica) to a worker of this replica taking it, by class.",
            ["class"],
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.replica_info = Gauge(
            "circuit_attribution_replica_info",
            "1, labelled with this replica's name (as job status shows it) and role.",
            ["replica", "role"],
            registry=registry,
        )
        for job_class in FLEET_CLASSES:
            self.fleet_queue_depth.labels(job_class)
            self.fleet_queued_seconds.labels(job_class)
        for outcome in FLEET_OUTCOMES:
            self.fleet_jobs.labels(outcome)
        # ---- graph sizes and quality
        self.graph_nodes = Histogram(
            "circuit_attribution_graph_nodes",
            "Nodes per graph before and after pruning.",
            ["stage"],
            buckets=_SIZE_BUCKETS,
            registry=registry,
        )
        self.graph_edges = Histogram(
            "circuit_attribution_graph_edges",
            "Non-zero edges per graph before and after pruning.",
            ["stage"],
            buckets=_SIZE_BUCKETS,
            registry=registry,
        )
        for stage in ("unpruned", "pruned"):
            self.graph_nodes.labels(stage)
            self.graph_edges.labels(stage)
        self.replacement_score = Histogram(
            "circuit_attribution_replacement_score",
            "Replacement score of computed graphs (share of influence through features, end to end).",
            buckets=_SCORE_BUCKETS,
            registry=registry,
        )
        self.completeness_score = Histogram(
            "circuit_attribution_completeness_score",
            "Completeness score of computed graphs (share of direct input not from error nodes).",
            buckets=_SCORE_BUCKETS,
            registry=registry,
        )
        # ---- graph cache
        self.cache_hits = Counter(
            "circuit_graph_cache_hits_total",
            "Graph cache lookups that found a valid entry.",
            ["backend"],
            registry=registry,
        )
        self.cache_misses = Counter(
            "circuit_graph_cache_misses_total",
            "Graph cache lookups that found nothing usable (absent, corrupt, or Redis unavailable).",
            ["backend"],
            registry=registry,
        )
        self.cache_errors = Counter(
            "circuit_graph_cache_errors_total",
            "Graph cache operations that failed because the backend did not answer.",
            ["backend", "op"],
            registry=registry,
        )
        self.cache_bad_entries = Counter(
            "circuit_graph_cache_bad_entries_total",
            "Corrupt or old-format entries found, deleted and recomputed.",
            ["backend"],
            registry=registry,
        )
        self.cache_skipped = Counter(
            "circuit_graph_cache_skipped_total",
            "Entries not stored, by reason (too_large = above the maximum entry size).",
            ["backend", "reason"],
            registry=registry,
        )
        self.cache_bytes = Counter(
            "circuit_graph_cache_bytes_total",
            "Compressed entry bytes read from and written to the graph cache.",
            ["backend", "direction"],
            registry=registry,
        )
        self.completion_store_errors = Counter(
            "circuit_served_completions_errors_total",
            "Served-completion store operations that fell back to memory because Redis did not answer.",
            ["op"],
            registry=registry,
        )
        for op in ("put", "get"):
            self.completion_store_errors.labels(op)

    def init_backend(self, backend: str) -> None:
        """Create the cache series of `backend` so they read 0 before first use."""
        self.cache_hits.labels(backend)
        self.cache_misses.labels(backend)
        self.cache_bad_entries.labels(backend)
        self.cache_skipped.labels(backend, "too_large")
        for op in CACHE_OPS:
            self.cache_errors.labels(backend, op)
        for direction in ("read", "written"):
            self.cache_bytes.labels(backend, direction)
