"""The `GraphEngine` the service uses, over the tracing package's `ReplacementModel`.

`compute` runs in a worker thread: attribute (stopping when asked: the engine polls
inside each long phase, per layer and per influence iteration), prune, serialize the protobuf graph (with the serializer the RPC layer
passes in: this package knows no protobuf) and the frontend JSON, and collect
the graph's stats for the metrics.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence

import torch

from circuit_serve.attribution.types import GRAPH_JSON, GRAPH_PROTO, Target
from circuit_serve.domain.errors import Cancelled, InvalidRequest
from circuit_serve.jobs.events import Computed, GraphStats, Progress, ShouldStop
from circuit_serve.tracing import AttributionGraph, AttributionSettings, PruneResult, ReplacementModel

# (graph, its pruning) -> serialized circuit.v1.Graph
GraphSerializer = Callable[[AttributionGraph, PruneResult], bytes]


class TracingEngine:
    def __init__(
        self,
        model: ReplacementModel,
        *,
        serialize: GraphSerializer,
        graph_format: int,
        labels: Mapping[tuple[int, int], str] | None = None,
    ) -> None:
        """`labels`: feature labels, (layer, index) -> text, written as `clerp` in the frontend JSON."""
        self.model = model
        self.serialize = serialize
        self.graph_format = graph_format
        self.model_id = model.model_id
        self.transcoder_id = model.transcoder_id
        self.vocab_size = int(model.arch.lm_head.weight.shape[0])
        self.max_positions = int(model.max_prompt_tokens or 1 << 30)
        self.labels: dict[tuple[int, int], str] = dict(labels or {})
        self.labels_id = _labels_id(self.labels)  # the labels are written into the JSON, so part of the key

    def tokenize(self, prompt: str) -> list[int]:
        if not prompt.strip():
            raise InvalidRequest("the prompt is empty; give some text to attribute", field="prompt")
        return self.model.tokenize(prompt)

    def chat_tokens(self, messages) -> list[int]:
        return self.model.chat_tokens(messages)

    def prepare(self, token_ids: Sequence[int]) -> list[int]:
        ids, _ = self.model.check_tokens(list(token_ids))
        return ids.tolist()

    def compute(
        self,
        token_ids: Sequence[int],
        settings: AttributionSettings,
        targets: Sequence[Target] | None,
        progress: Progress,
        should_stop: ShouldStop,
        *,
        slug: str = "graph",
    ) -> Computed:
        graph = self.model.attribute(
            list(token_ids),
            max_n_logits=settings.max_n_logits,
            desired_logit_prob=settings.desired_logit_prob,
            max_feature_nodes=settings.max_feature_nodes,
            batch_size=settings.batch_size,
            node_threshold=settings.node_threshold,
            edge_threshold=settings.edge_threshold,
            head_loadings=settings.head_loadings,
            qk_edges=settings.qk_edges,
            targets=list(targets) if targets is not None else None,
            progress=progress,
            should_stop=should_stop,
        )

        def stop_point(step: str) -> None:
            if should_stop():
                raise Cancelled(f"attribution was cancelled (before {step})")

        stop_point("pruning")
        progress("serialize", 0.0)
        started = time.perf_counter()
        pruned = graph.prune(should_stop=should_stop)
        stop_point("serializing")
        graph_pb = self.serialize(graph, pruned)
        stop_point("the frontend JSON")
        graph_json = json.dumps(
            graph.to_frontend_json(slug=slug, labels=self.labels, pruned=pruned), separators=(",", ":")
        ).encode()
        sections = {GRAPH_PROTO: graph_pb, GRAPH_JSON: graph_json}
        stop_point("scoring")
        replacement, completeness = graph.scores()
        compact = graph.compact_adjacency()
        stats = GraphStats(
            nodes_unpruned=graph.n_nodes,
            nodes_pruned=int(pruned.node_mask.sum()),
            edges_unpruned=int(torch.count_nonzero(compact)),
            edges_pruned=int(torch.count_nonzero(compact * pruned.edge_mask.to(compact.device))),
            replacement_score=float(replacement),
            completeness_score=float(completeness),
            phase_seconds={**graph.timings, "serialize": time.perf_counter() - started},
        )
        progress("serialize", 1.0)
        return Computed(sections, stats)


def _labels_id(labels: Mapping[tuple[int, int], str]) -> str:
    """sha256 of the labels in a canonical order ("" when there are none)."""
    if not labels:
        return ""
    canonical = json.dumps(sorted([int(layer), int(i), str(t)] for (layer, i), t in labels.items()))
    return hashlib.sha256(canonical.encode()).hexdigest()
