"""Pruning and scores on hand-built graphs whose influences are worked out by hand."""

from __future__ import annotations

import pytest
import torch

from circuit_serve.tracing.prune import CompactLayout, graph_scores, influence, normalize_rows, prune_compact

# nodes: f0 f1 f2 | e0 | t0 t1 | L0   (N = 7); compact rows [f0 f1 f2 | L0], columns [f0 f1 f2 e0 t0 t1]
LAYOUT = CompactLayout(n_features=3, n_errors=1, n_tokens=2, n_logits=1)
F0, F1, F2, E0, T0, T1, L0 = range(7)


def hand_graph() -> torch.Tensor:
    M = torch.zeros(4, 6)
    M[0, T0], M[0, F2] = 1.0, -1.0  # f0 <- t0, f2 (signs do not matter: |A| is used)
    M[1, T1], M[1, E0] = 2.0, 2.0  # f1 <- t1, e0
    M[2, T0] = 1.0  # f2 <- t0
    M[3, F0], M[3, F1] = 3.0, 1.0  # L0 <- f0, f1
    return M


PROBS = torch.tensor([1.0])


def test_influence_by_hand():
    infl = influence(normalize_rows(hand_graph()), LAYOUT, LAYOUT.logit_weights(PROBS))
    # L0 -> f0 .75, f1 .25; f0 -> t0 .375, f2 .375; f1 -> t1 .125, e0 .125; f2 -> t0 .375
    expect = torch.tensor([0.75, 0.25, 0.375, 0.125, 0.75, 0.125, 0.0])
    assert torch.allclose(infl, expect)


def test_node_threshold_drops_low_influence_nodes():
    # cumulative shares over 2.375 total: .316 .632 .789 .895 ... -> 0.8 keeps influence >= .25
    pr = prune_compact(hand_graph(), LAYOUT, PROBS, node_threshold=0.8, edge_threshold=0.98)
    assert pr.node_mask.tolist() == [True, True, True, False, True, True, True]  # e0 dropped
    # every remaining edge is kept at 0.98; the edge from the dropped error node is gone
    kept = {(r, c) for r, c in pr.edge_mask.nonzero().tolist()}
    assert kept == {(0, T0), (0, F2), (1, T1), (2, T0), (3, F0), (3, F1)}
    top_two = sorted(pr.cumulative_scores[[F0, T0]].tolist())  # tied at .75: ranks 1 and 2
    assert abs(top_two[0] - 0.75 / 2.375) < 1e-6 and abs(top_two[1] - 1.5 / 2.375) < 1e-6
    assert abs(float(pr.cumulative_scores[F2]) - 1.875 / 2.375) < 1e-6


def test_edge_threshold_then_dangling_nodes():
    # edge scores after node pruning: L0<-f0 .75, f0<-t0 .375, f0<-f2 .375, f2<-t0 .375, L0<-f1 .25, f1<-t1 .25
    # 0.7 of 2.375 keeps scores >= .375: f1 loses its outgoing edge and is dropped, with its input edge
    pr = prune_compact(hand_graph(), LAYOUT, PROBS, node_threshold=0.8, edge_threshold=0.7)
    assert pr.node_mask.tolist() == [True, False, True, False, True, True, True]
    kept = {(r, c) for r, c in pr.edge_mask.nonzero().tolist()}
    assert kept == {(0, T0), (0, F2), (2, T0), (3, F0)}
    assert not pr.all_edges_kept


def test_scores_by_hand():
    rep, comp = graph_scores(hand_graph(), LAYOUT, PROBS)
    # token influence .75 + .125, error influence .125
    assert abs(rep - 0.875 / 1.0) < 1e-6
    # non-error share per node: f1 row is half error, others 1; weights = influence + logit weight
    w = torch.tensor([0.75, 0.25, 0.375, 0.125, 0.75, 0.125, 1.0])
    nonerr = torch.tensor([1, 0.5, 1, 1, 1, 1, 1.0])
    assert abs(comp - float((w * nonerr).sum() / w.sum())) < 1e-6


@pytest.mark.parametrize("seed", range(3))
def test_influence_equals_matrix_series_on_random_dags(seed):
    g = torch.Generator().manual_seed(seed)
    lay = CompactLayout(n_features=12, n_errors=4, n_tokens=3, n_logits=2)
    N = lay.n_nodes
    dense = torch.zeros(N, N, dtype=torch.float64)
    # features feed only on earlier features, errors and tokens; logits on everything but logits
    for i in range(lay.n_features):
        dense[i, :i] = torch.randn(i, generator=g, dtype=torch.float64)
        dense[i, lay.n_features : lay.n_cols] = torch.randn(
            lay.n_cols - lay.n_features, generator=g, dtype=torch.float64
        )
    dense[lay.n_cols :, : lay.n_cols] = torch.randn(lay.n_logits, lay.n_cols, generator=g, dtype=torch.float64)
    dense *= torch.rand(N, N, generator=g, dtype=torch.float64) < 0.6
    probs = torch.tensor([0.7, 0.2])
    w = lay.logit_weights(probs).double()
    Ahat = dense.abs() / dense.abs().sum(1, keepdim=True).clamp(min=1e-10)
    series = w @ (torch.linalg.inv(torch.eye(N, dtype=torch.float64) - Ahat) - torch.eye(N, dtype=torch.float64))
    compact = dense[lay.row_nodes()][:, : lay.n_cols].float()
    got = influence(normalize_rows(compact), lay, lay.logit_weights(probs))
    assert torch.allclose(got.double(), series, atol=1e-5)
