"""Node influence, pruning and graph scores on the compact adjacency.

Node order (N nodes): [features (F) | errors (E) | embeddings (T) | logits (K)]. Only feature and
logit nodes have incoming edges, so the graph is held as a compact matrix M of shape
(F + K, F + E + T): rows are [features | logits], columns every non-logit node. Never N x N.

1. Normalise: Â = |M| / row sums.
2. Influence: i = w Â + w Â² + ... with w the logit probabilities on the logit nodes (the walk
   ends because the graph is acyclic).
3. Nodes: keep the most influential until `node_threshold` of the total influence (embeddings
   and logits always kept); zero the dropped nodes' rows and columns.
4. Edges: score = Â' * (influence' + w) of the target node, recomputed on the pruned matrix;
   keep the highest scores until `edge_threshold` of the total.
5. Drop dangling nodes: features and errors without kept outgoing edges, features without kept
   incoming edges, until nothing changes.
6. Scores: replacement = token influence / (token + error influence); completeness = influence-
   weighted share of each node's normalised inputs that does not come from error nodes.

Thresholds follow the reference's rule exactly (cumulative share searched over all N x N
scores, zeros included), so masks agree with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuit_serve.domain.errors import Cancelled


@dataclass
class CompactLayout:
    n_features: int
    n_errors: int
    n_tokens: int
    n_logits: int

    @property
    def n_nodes(self) -> int:
        return self.n_features + self.n_errors + self.n_tokens + self.n_logits

    @property
    def n_cols(self) -> int:
        return self.n_features + self.n_errors + self.n_tokens

    def row_nodes(self, device=None) -> torch.Tensor:
        """(F + K,) node index of each compact row."""
        f = torch.arange(self.n_features, device=device)
        k = torch.arange(self.n_logits, device=device) + self.n_cols
        return torch.cat([f, k])

    def logit_weights(self, probs: torch.Tensor) -> torch.Tensor:
        w = torch.zeros(self.n_nodes, device=probs.device)
        w[self.n_cols :] = probs.float()
        return w


@dataclass
class PruneResult:
    node_mask: torch.Tensor  # (N,) bool
    edge_mask: torch.Tensor  # (F + K, F + E + T) bool over the compact matrix
    node_influence: torch.Tensor  # (N,)
    cumulative_scores: torch.Tensor  # (N,) cumulative influence share at each node's rank
    all_edges_kept: bool  # edge threshold fell to 0: every entry of the N x N mask is kept

    def dense_edge_mask(self, layout: CompactLayout) -> torch.Tensor:
        """(N, N) edge mask in the reference's layout (only for comparisons and export)."""
        N = layout.n_nodes
        if self.all_edges_kept:
            return torch.ones(N, N, dtype=torch.bool)
        out = torch.zeros(N, N, dtype=torch.bool)
        out[layout.row_nodes()[:, None], torch.arange(layout.n_cols)[None, :]] = self.edge_mask.cpu()
        return out


def normalize_rows(M: torch.Tensor) -> torch.Tensor:
    A = M.abs()
    return A / A.sum(dim=1, keepdim=True).clamp(min=1e-10)


def influence(Ahat: torch.Tensor, layout: CompactLayout, w: torch.Tensor, max_iter: int = 1000) -> torch.Tensor:
    """(N,) total influence w Â + w Â² + ... of every node (step 2)."""
    rows = layout.row_nodes(Ahat.device)
    N, C = layout.n_nodes, layout.n_cols
    cur = torch.zeros(N, device=Ahat.device)
    cur[:C] = w[rows] @ Ahat
    total = cur.clone()
    for _ in range(max_iter):
        if not cur.any():
            return total
        nxt = torch.zeros_like(cur)
        nxt[:C] = cur[rows] @ Ahat
        cur = nxt
        total += cur
    raise RuntimeError(f"influence did not converge in {max_iter} steps (the graph has a cycle)")


def threshold_value(scores: torch.Tensor, threshold: float, total_len: int) -> torch.Tensor:
    """Smallest kept score so that the kept scores hold `threshold` of the total.

    `scores` is a subset of a longer vector of `total_len` entries whose other entries are 0;
    the answer equals the one computed on the full vector. Scores are >= 0 (|weights| times
    influence).
    """
    flat = scores.flatten()
    positive = flat[flat > 0]  # scores are >= 0 and mostly 0 after node pruning: sort the rest
    # the same vector as sorting all of `flat` (zeros last), in a fraction of the time
    s = torch.cat([torch.sort(positive, descending=True).values, flat.new_zeros(len(flat) - len(positive))])
    cum = torch.cumsum(s, 0) / s.sum()
    idx = int(torch.searchsorted(cum, torch.tensor(threshold, dtype=cum.dtype, device=cum.device)))
    idx = min(idx, total_len - 1)
    return s[idx] if idx < len(s) else torch.zeros((), device=s.device)


def prune_compact(
    M: torch.Tensor,
    layout: CompactLayout,
    probs: torch.Tensor,
    node_threshold: float,
    edge_threshold: float,
    should_stop=None,
) -> PruneResult:
    """Steps 1-5 on the compact matrix M (F + K, F + E + T); `should_stop` polled between them."""

    def check(step: str) -> None:
        if should_stop is not None and should_stop():
            raise Cancelled(f"attribution was cancelled (pruning, {step})")

    F, E = layout.n_features, layout.n_errors
    N, C = layout.n_nodes, layout.n_cols
    rows = layout.row_nodes(M.device)
    w = layout.logit_weights(probs.to(M.device))

    node_infl = influence(normalize_rows(M), layout, w)
    check("node threshold")
    node_mask = node_infl >= threshold_value(node_infl, node_threshold, N)
    node_mask[F + E :] = True  # embeddings and logits

    check("pruned influence")
    P = M.clone()
    P[~node_mask[rows]] = 0
    P[:, ~node_mask[:C]] = 0
    Phat = normalize_rows(P)
    p_infl = influence(Phat, layout, w) + w
    check("edge scores")
    scores = Phat * p_infl[rows][:, None]
    thr = threshold_value(scores, edge_threshold, N * N)
    check("edge mask")
    edge_mask = scores >= thr
    all_kept = bool(thr <= 0)

    if not all_kept:
        old = node_mask.clone()
        while True:
            check("dangling nodes")
            node_mask[: F + E] &= edge_mask[:, : F + E].any(0)  # outgoing edges
            node_mask[:F] &= edge_mask[:F].any(1)  # incoming edges
            if torch.equal(node_mask, old):
                break
            old = node_mask.clone()
            edge_mask[~node_mask[rows]] = False
            edge_mask[:, ~node_mask[:C]] = False

    order = torch.sort(node_infl, descending=True)
    cum = torch.cumsum(order.values, 0) / order.values.sum()
    cumulative = torch.zeros_like(node_infl)
    cumulative[order.indices] = cum
    return PruneResult(node_mask.cpu(), edge_mask.cpu(), node_infl.cpu(), cumulative.cpu(), all_kept)


def graph_scores(M: torch.Tensor, layout: CompactLayout, probs: torch.Tensor) -> tuple[float, float]:
    """Step 6: (replacement score, completeness score)."""
    F, E, T = layout.n_features, layout.n_errors, layout.n_tokens
    rows = layout.row_nodes(M.device)
    w = layout.logit_weights(probs.to(M.device))
    Ahat = normalize_rows(M)
    infl = influence(Ahat, layout, w)
    tok = infl[F + E : F + E + T].sum()
    err = infl[F : F + E].sum()
    replacement = tok / (tok + err)
    non_error = torch.ones(layout.n_nodes, device=M.device)
    non_error[rows] = 1 - Ahat[:, F : F + E].sum(-1)
    out_infl = infl + w
    completeness = (non_error * out_infl).sum() / out_infl.sum()
    return float(replacement), float(completeness)
