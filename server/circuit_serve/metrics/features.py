"""Prometheus metrics of watched features on monitored generation requests.

Every series of a watched feature carries the labels `feature` (its watchlist name) and `label`
(from the labels file, "" when it has none); they are created at start-up so dashboards show
every watched feature at 0 before traffic arrives.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram

from circuit_serve.domain.features import Action, MonitorReport, WatchedFeature

# Transcoder activations are non-negative and mostly O(0.1 .. 10).
_ACTIVATION_BUCKETS = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
_OVERHEAD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class FeatureMetrics:
    """Per watched feature: max-activation histogram, fired and action counters; monitoring overhead."""

    def __init__(self, registry: CollectorRegistry, watched: Sequence[WatchedFeature]) -> None:
        labels = ["feature", "label"]
        self.activation = Histogram(
            "circuit_watched_feature_max_activation",
            "Maximum activation of a watched feature over one monitored request (prompt and completion).",
            labels,
            buckets=_ACTIVATION_BUCKETS,
            registry=registry,
        )
        self.fired = Counter(
            "circuit_watched_feature_fired",
            "Monitored requests in which a watched feature went above its threshold.",
            labels,
            registry=registry,
        )
        self.actions = Counter(
            "circuit_watched_feature_actions",
            "Watchlist rule actions taken (record, flag, stop), by feature.",
            [*labels, "action"],
            registry=registry,
        )
        self.overhead = Histogram(
            "circuit_monitor_overhead_seconds",
            "Time a finished monitored request waited for the engine's last watched-feature values "
            "(the features themselves are computed inside vLLM's forward pass).",
            buckets=_OVERHEAD_BUCKETS,
            registry=registry,
        )
        self.monitored = Counter(
            "circuit_monitored_requests",
            "Generation requests that were monitored.",
            registry=registry,
        )
        for w in watched:
            self.activation.labels(w.name, w.label)
            self.fired.labels(w.name, w.label)
            for action in (Action.RECORD, Action.FLAG, Action.STOP):  # a watchlist cannot steer
                self.actions.labels(w.name, w.label, action.value)

    def observe(self, report: MonitorReport, overhead_s: float) -> None:
        """`monitor.MonitorSink`: one finished monitored request."""
        self.monitored.inc()
        self.overhead.observe(overhead_s)
        for r in report.features:
            w = r.watched
            self.activation.labels(w.name, w.label).observe(r.max_activation)
            if r.fired:
                self.fired.labels(w.name, w.label).inc()
                if w.action is not Action.STOP or report.stopped_by == w.name:
                    self.actions.labels(w.name, w.label, w.action.value).inc()


class SteerMetrics:
    """`Steer` calls by the engine that served them: `vllm` (inside vLLM's forward pass) or
    `replacement` (the replacement model, for what vLLM cannot serve)."""

    ENGINES = ("vllm", "replacement")

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "circuit_steer_requests",
            "Steer calls served, by the engine that generated them (vllm or replacement).",
            ["engine"],
            registry=registry,
        )
        for engine in self.ENGINES:
            self.calls.labels(engine)
