"""Attention head loadings: each kept edge split by the attention head its path runs through.

An edge is a sum over paths through the frozen model between the source and the target; a
path crosses the residual stream (and transcoder skips) and, at some layers, one attention
head. The split (LocalReplacement.rows with streams = 1 + L H):

1. direct: the paths that cross no attention (the residual direct path, kept apart);
2. (layer, head): the paths whose attention hop nearest the source is that head.

The parts sum to the edge (to float32 rounding). For an edge whose paths cross at most one
attention layer (a source feature one layer below its target, or any source of a target in
layer 0-1), a head's part is exactly the change of the edge when that head's output is removed
from the frozen model; with several attention layers in between, paths through two heads count
for the one nearer the source.

Computed after pruning, only for the kept edges: for the targets with kept incoming edges, in
batches of targets (each target takes 1 + L H copies of its transposed pass).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from circuit_serve.tracing.local_model import LocalReplacement, check_stop

HEAD_THRESHOLD = 1e-3  # exports list a head's part above this share of the edge's sum of |parts|


@dataclass
class HeadLoadings:
    """Per kept edge (compact row, compact column): its direct part and its (L, H) head parts."""

    rows: torch.Tensor  # (E,) long, rows of the compact adjacency (targets)
    cols: torch.Tensor  # (E,) long, columns of the compact adjacency (sources)
    direct: torch.Tensor  # (E,) float32
    heads: torch.Tensor  # (E, L, H) float32

    def __len__(self) -> int:
        return len(self.rows)

    def index(self) -> dict[tuple[int, int], int]:
        """(compact row, compact column) -> position in these arrays."""
        return {(r, c): i for i, (r, c) in enumerate(zip(self.rows.tolist(), self.cols.tolist()))}

    def parts(self, i: int, threshold: float = HEAD_THRESHOLD) -> tuple[float, list[tuple[int, int, float]], float]:
        """Edge i as (direct, [(layer, head, weight)] with |weight| >= threshold x sum |parts|,
        strongest first, rest = the sum of the heads left out)."""
        h = self.heads[i]
        scale = float(self.direct[i].abs() + h.abs().sum())
        keep = torch.nonzero(h.abs() >= threshold * scale)
        listed = sorted(((int(a), int(b), float(h[a, b])) for a, b in keep.tolist()), key=lambda x: -abs(x[2]))
        rest = float(h.sum()) - sum(w for _, _, w in listed)
        return float(self.direct[i]), listed, rest


def split_rows(
    lrm: LocalReplacement, layers: torch.Tensor, positions: torch.Tensor, vectors: torch.Tensor, should_stop=None
) -> torch.Tensor:
    """(b, 1 + L H, n_cols): the rows of b targets (sorted by layer, descending) split by head."""
    J = 1 + lrm.n_layers * lrm.arch.n_heads
    b = len(layers)
    vec = torch.zeros(b, J, vectors.shape[1], device=lrm.device)
    vec[:, 0] = vectors.float()
    out = torch.zeros(b * J, lrm.n_cols, device=lrm.device)
    lrm.rows(
        layers.repeat_interleave(J),
        positions.repeat_interleave(J),
        vec.view(b * J, -1),
        out,
        should_stop,
        streams=J,
    )
    return out.view(b, J, lrm.n_cols)


def head_loadings(
    lrm: LocalReplacement,
    edge_mask: torch.Tensor,
    selected: torch.Tensor,
    target: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    chunk: int,
    should_stop=None,
) -> HeadLoadings:
    """Head loadings of the kept edges. edge_mask (F + K, F + L P + P) over the compact matrix;
    selected (F,) active index of each feature row; target(compact rows) -> (layers, positions,
    vectors) of those targets."""
    L, H = lrm.n_layers, lrm.arch.n_heads
    rows, cols = torch.nonzero(edge_mask.cpu(), as_tuple=True)
    # compact column -> column of lrm's rows: features by active index, then errors and embeddings
    to_lrm = torch.cat([selected.cpu(), torch.arange(lrm.n_active, lrm.n_cols)])
    direct = torch.zeros(len(rows))
    heads = torch.zeros(len(rows), L, H)
    per = max(1, chunk // (1 + L * H))
    targets = torch.unique(rows)
    for i in range(0, len(targets), per):
        check_stop(should_stop, "head loadings")
        tr = targets[i : i + per]
        layers, positions, vectors = target(tr)
        order = torch.argsort(layers, descending=True, stable=True)
        tr, layers, positions, vectors = tr[order], layers[order], positions[order], vectors[order]
        parts = split_rows(lrm, layers, positions, vectors, should_stop).cpu()  # (b, J, n_cols)
        where = {int(r): j for j, r in enumerate(tr.tolist())}
        sel = torch.nonzero(torch.isin(rows, tr)).flatten()
        b = torch.tensor([where[int(r)] for r in rows[sel].tolist()], dtype=torch.long)
        vals = parts[b, :, to_lrm[cols[sel]]]  # (e, J)
        direct[sel] = vals[:, 0]
        heads[sel] = vals[:, 1:].reshape(-1, L, H)
    return HeadLoadings(rows, cols, direct, heads)
