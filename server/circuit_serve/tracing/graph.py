"""The attribution graph: nodes, edge weights, settings and identities (no protobuf here).

Node order everywhere (the reference's): [selected features | error nodes, layer-major
(layer * n_pos + pos) | embeddings (pos) | logits]. Edges are stored as
`edges[row, col]` = direct effect of source `col` on target `row`, with

    rows    = [selected features (in `active_features` order) | logit targets]
    columns = [all active features | error nodes | embeddings]

which is at most selected-rows x all-columns. `compact_adjacency()` keeps only the selected
feature columns; `adjacency()` (dense N x N) exists only for the `.npz` export.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from circuit_serve.tracing.frontend import frontend_json
from circuit_serve.tracing.heads import HeadLoadings
from circuit_serve.tracing.prune import CompactLayout, PruneResult, graph_scores, prune_compact
from circuit_serve.tracing.qk import QKAttribution
from circuit_serve.tracing.settings import AttributionSettings


@dataclass
class AttributionGraph:
    prompt: str
    input_tokens: torch.Tensor  # (P,) long, BOS first
    input_token_strs: list[str]
    n_layers: int
    active_features: torch.Tensor  # (n_active, 3) long: layer, pos, feature
    activation_values: torch.Tensor  # (n_active,) float32
    selected_features: torch.Tensor  # (F,) long, sorted indices into active_features
    logit_token_ids: torch.Tensor  # (K,) long
    logit_contrast_ids: list[int | None]
    logit_labels: list[str]
    logit_probabilities: torch.Tensor  # (K,) float32
    edges: torch.Tensor  # (F + K, n_active + L*P + P) or compact (F + K, F + L*P + P) float32
    settings: AttributionSettings
    model_id: str = ""
    transcoder_id: str = ""
    scan: str | None = None
    model_name: str = ""
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    head_loadings: HeadLoadings | None = None  # kept edges split by attention head (opt-in)
    qk: list[QKAttribution] = field(default_factory=list)  # settings.qk_edges' scores split (opt-in)

    # -- sizes and offsets ----------------------------------------------------------------
    @property
    def n_pos(self) -> int:
        return len(self.input_tokens)

    @property
    def n_active(self) -> int:
        return len(self.active_features)

    @property
    def n_selected(self) -> int:
        return len(self.selected_features)

    @property
    def n_logits(self) -> int:
        return len(self.logit_token_ids)

    @property
    def layout(self) -> CompactLayout:
        return CompactLayout(self.n_selected, self.n_layers * self.n_pos, self.n_pos, self.n_logits)

    @property
    def error_offset(self) -> int:
        return self.n_selected

    @property
    def token_offset(self) -> int:
        return self.n_selected + self.n_layers * self.n_pos

    @property
    def logit_offset(self) -> int:
        return self.token_offset + self.n_pos

    @property
    def n_nodes(self) -> int:
        return self.logit_offset + self.n_logits

    # -- matrices -------------------------------------------------------------------------
    def compact_adjacency(self) -> torch.Tensor:
        """(F + K, F + L*P + P): rows [features | logits], columns [features | errors | embeddings]."""
        if self.n_selected == self.n_active or self.edges.shape[1] == self.layout.n_cols:
            return self.edges  # already compact (streamed rows, or every feature selected)
        rest = torch.arange(self.n_active, self.edges.shape[1], device=self.edges.device)
        cols = torch.cat([self.selected_features.to(self.edges.device), rest])
        return self.edges[:, cols]

    def adjacency(self) -> torch.Tensor:
        """Dense (N, N) adjacency in node order (rows = targets). Large; for export only."""
        N, F = self.n_nodes, self.n_selected
        A = torch.zeros(N, N, dtype=torch.float32)
        C = self.compact_adjacency().cpu()
        A[:F, : C.shape[1]] = C[:F]
        A[self.logit_offset :, : C.shape[1]] = C[F:]
        return A

    # -- pruning and scores ---------------------------------------------------------------
    def prune(
        self, node_threshold: float | None = None, edge_threshold: float | None = None, should_stop=None
    ) -> PruneResult:
        """`should_stop` is polled between pruning's steps (Cancelled when it says so)."""
        nt = self.settings.node_threshold if node_threshold is None else node_threshold
        et = self.settings.edge_threshold if edge_threshold is None else edge_threshold
        AttributionSettings(node_threshold=nt, edge_threshold=et).validate()
        return prune_compact(self.compact_adjacency(), self.layout, self.logit_probabilities, nt, et, should_stop)

    def scores(self) -> tuple[float, float]:
        """(replacement score, completeness score) of the unpruned graph."""
        return graph_scores(self.compact_adjacency(), self.layout, self.logit_probabilities)

    # -- node descriptions ----------------------------------------------------------------
    def node(self, i: int) -> tuple[str, int, int, int]:
        """(kind, layer, pos, index) of node i; kind in feature|error|embedding|logit."""
        if i < self.n_selected:
            layer, pos, feat = self.active_features[self.selected_features[i]].tolist()
            return "feature", layer, pos, feat
        if i < self.token_offset:
            layer, pos = divmod(i - self.n_selected, self.n_pos)
            return "error", layer, pos, -1
        if i < self.logit_offset:
            pos = i - self.token_offset
            return "embedding", -1, pos, int(self.input_tokens[pos])
        k = i - self.logit_offset
        return "logit", self.n_layers, self.n_pos - 1, int(self.logit_token_ids[k])

    # -- exports --------------------------------------------------------------------------
    def save_npz(self, path: str | Path) -> None:
        """The full unpruned graph in the reference's node order (dense N x N adjacency)."""
        np.savez_compressed(
            path,
            adjacency_matrix=self.adjacency().numpy(),
            active_features=self.active_features.cpu().numpy().astype(np.int64),
            activation_values=self.activation_values.float().cpu().numpy(),
            selected_features=self.selected_features.cpu().numpy().astype(np.int64),
            logit_token_ids=self.logit_token_ids.cpu().numpy().astype(np.int64),
            logit_probabilities=self.logit_probabilities.float().cpu().numpy(),
            input_tokens=self.input_tokens.cpu().numpy().astype(np.int64),
        )

    def to_frontend_json(
        self,
        *,
        slug: str = "graph",
        node_threshold: float | None = None,
        edge_threshold: float | None = None,
        labels: dict[tuple[int, int], str] | None = None,
        pruned: PruneResult | None = None,
    ) -> dict:
        """The pruned graph as the attribution-graph frontends read it (see frontend.py); `pruned`:
        this graph's prune() at these thresholds, when already computed."""
        nt = self.settings.node_threshold if node_threshold is None else node_threshold
        et = self.settings.edge_threshold if edge_threshold is None else edge_threshold
        pruned = pruned if pruned is not None else self.prune(nt, et)
        return frontend_json(self, pruned, slug=slug, labels=labels or {}, thresholds=(nt, et))

    def save_frontend_json(self, path: str | Path, **kw) -> None:
        Path(path).write_text(json.dumps(self.to_frontend_json(**kw), indent=1))
