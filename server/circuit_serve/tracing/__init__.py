"""Tracing engine: attribution graphs on a Hugging Face model with transcoders (no protobuf).

The method (server/docs/design.md, "The attribution method"; Ameisen et al. 2025, "Circuit Tracing"):

1. Replace each MLP by its transcoder plus a constant error term; freeze the prompt's
   attention patterns and normalisation denominators. What remains is linear in feature
   activations, errors and embeddings (local_model.py).
2. Rows of the graph come from batched transposed passes through that linear model: a target's
   input vector (encoder row or demeaned unembedding column) is carried down the residual
   stream and contracted with each source's output vector (attribution.py).
3. Prune by cumulative influence on the logits; score how much flows through features rather
   than errors (prune.py).

Public API (keep stable; other engines and the RPC layer build on it):

    load_transcoders(path, *, dtype, device) -> TranscoderSet
    ReplacementModel.from_pretrained(model_dir, transcoders, *, dtype, device,
                                     memory_budget_bytes=None, expected_l0=256,
                                     max_prompt_tokens=None)
    ReplacementModel.from_hf(model, tokenizer, transcoders, *, model_id=None, ...)
    rm.tokenize(prompt) -> list[int]                 # BOS first, as generation tokenizes
    rm.attribute(tokens_or_prompt, *, max_n_logits=10, desired_logit_prob=0.95,
                 max_feature_nodes=None, batch_size=256, targets=None,
                 progress=None, should_stop=None,
                 node_threshold=0.8, edge_threshold=0.98, head_loadings=False,
                 qk_edges=()) -> AttributionGraph
        targets: None (top tokens) | [token_id | Contrast(a, b) | (a, b), ...]
        qk_edges: [(layer, head, query_pos, key_pos), ...] -> graph.qk, one QKAttribution each
        (qk.py: the edge's pre-softmax score split by the residual components at both positions)
        progress(phase: str, fraction: float); should_stop() -> bool, checked at batch
        boundaries (raises circuit_serve.domain.errors.Cancelled)
    rm.feature_activations(tokens_or_prompt) -> FeatureActivations  # same values as graphs
    rm.estimate_memory(n_tokens, settings=None, *, n_active=None) -> int (bytes)
    rm.model_id, rm.transcoder_id                    # sha256 of weight files
    graph.prune(node_threshold=None, edge_threshold=None) -> PruneResult
    graph.scores() -> (replacement_score, completeness_score)
    graph.to_frontend_json(*, slug, node_threshold=None, edge_threshold=None, labels=None)
    graph.save_npz(path)                             # reference node order, dense N x N

Errors are circuit_serve.domain.errors: InvalidRequest (bad prompt, settings, transcoders that do not
fit the model, a request over the memory budget), Cancelled.
"""

from circuit_serve.tracing.graph import AttributionGraph
from circuit_serve.tracing.prune import CompactLayout, PruneResult, graph_scores, prune_compact
from circuit_serve.tracing.replacement import FeatureActivations, ReplacementModel
from circuit_serve.tracing.settings import AttributionSettings
from circuit_serve.tracing.targets import Contrast
from circuit_serve.tracing.transcoders import TranscoderSet, load_transcoders

__all__ = [
    "AttributionGraph",
    "AttributionSettings",
    "CompactLayout",
    "Contrast",
    "FeatureActivations",
    "PruneResult",
    "ReplacementModel",
    "TranscoderSet",
    "graph_scores",
    "load_transcoders",
    "prune_compact",
]
