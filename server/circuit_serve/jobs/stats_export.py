"""A computed graph's stats into the attribution metrics (sizes, scores, phase times)."""

from __future__ import annotations

from circuit_serve.jobs.events import GraphStats
from circuit_serve.metrics.attribution import AttributionMetrics


def export_stats(m: AttributionMetrics, stats: GraphStats) -> None:
    m.graph_nodes.labels("unpruned").observe(stats.nodes_unpruned)
    m.graph_nodes.labels("pruned").observe(stats.nodes_pruned)
    m.graph_edges.labels("unpruned").observe(stats.edges_unpruned)
    m.graph_edges.labels("pruned").observe(stats.edges_pruned)
    if stats.replacement_score is not None:
        m.replacement_score.observe(stats.replacement_score)
    if stats.completeness_score is not None:
        m.completeness_score.observe(stats.completeness_score)
    for phase, seconds in stats.phase_seconds.items():
        m.duration.labels(phase).observe(seconds)
