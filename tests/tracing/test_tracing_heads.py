"""Head loadings: kept edges split by attention head (tracing/heads.py).

1. On every tiny case (random Llama, Gemma-2, Qwen3; PLTs and CLTs) and on the committed
   reference fixtures, each kept edge's direct part plus its head parts equals the edge within
   1e-5 (float32), on the streamed and the dense path.
2. An explicit intervention on the frozen model run by HF's modules: for kept edges whose paths
   cross one attention layer, each head's part equals the change of the edge when that head's
   output is removed (its frozen pattern zeroed), and the parts of every other layer are 0.
"""

from __future__ import annotations

import pytest
import torch

from circuit_serve.tracing import ReplacementModel
from tests.tracing.test_tracing_identity import _decoder_injection, _setup, _target_values
from tests.tracing.tracing_helpers import CASES, FIXTURES, built_case

TOL = 1e-5


def assert_sums(g) -> None:
    hl = g.head_loadings
    assert hl is not None and len(hl) == int(g.prune().edge_mask.sum()) > 0
    M = g.compact_adjacency()
    edge = M[hl.rows, hl.cols]
    total = hl.direct + hl.heads.sum((1, 2))
    assert (total - edge).abs().max() <= TOL * max(1.0, float(edge.abs().max()))
    assert hl.heads.abs().sum() > 0  # something does run through attention


@pytest.mark.parametrize("case", sorted(CASES))
def test_loadings_sum_to_edges_on_every_case(case, case_dir):
    rm, _, tokens = built_case(case, case_dir)
    assert_sums(rm.attribute(tokens, max_feature_nodes=20, batch_size=8, head_loadings=True, dense_rows=False))
    dense = rm.attribute(tokens, max_feature_nodes=20, batch_size=8, head_loadings=True, dense_rows=True)
    assert_sums(dense)


@pytest.mark.parametrize("arch,tc", [("llama", "clt"), ("gemma2", "transcoders")])
def test_loadings_sum_to_edges_on_fixtures(arch, tc):
    rm = ReplacementModel.from_pretrained(FIXTURES / arch / "model", FIXTURES / arch / tc)
    g = rm.attribute("The capital of France is", head_loadings=True)
    assert_sums(g)
    assert rm.attribute("The capital of France is").head_loadings is None  # opt-in


@pytest.mark.parametrize("case", ["llama-plt-relu-skip", "gemma2-plt-jumprelu", "qwen3-plt-topk"])
def test_a_heads_loading_is_the_edge_change_when_the_head_is_removed(case, case_dir):
    rm, fz, g, tcs, acts, const, L, P, d = _setup(
        case, case_dir, head_loadings=True, node_threshold=1.0, edge_threshold=1.0
    )
    hl, F, H = g.head_loadings, g.n_selected, rm.arch.n_heads
    clean = fz.clean
    all_feats = _decoder_injection(tcs, g.active_features, acts, L, P, d)
    errs = torch.zeros(L, P, d)
    for li in range(L):
        errs[li] = clean["y"][li] - tcs.b_dec[li].float() - all_feats.sum(0)[li]
        s = tcs.skip(li, clean["x_in"][li])
        if s is not None:
            errs[li] -= s
    errs[:, 0] = 0
    full = const + all_feats.sum(0) + errs

    def layer_of(col: int) -> int:  # the layer a source writes at (embeddings: -1)
        if col < F:
            return int(g.active_features[g.selected_features[col], 0])
        return (col - F) // P if col < F + L * P else -1

    # kept edges from a source to a feature target one attention layer above it
    picks = []
    for e in range(len(hl)):
        r, c = int(hl.rows[e]), int(hl.cols[e])
        if r < F and int(g.active_features[g.selected_features[r], 0]) == layer_of(c) + 1:
            picks.append(e)
    assert len(picks) >= 3
    picks = picks[:8]

    def edges_now() -> torch.Tensor:
        """The picked edges measured on the frozen model: target(all) - target(without the source)."""
        x0 = clean["x0"][None].repeat(len(picks) + 1, 1, 1).clone()
        inj = full[None].repeat(len(picks) + 1, 1, 1, 1).clone()
        for b, e in enumerate(picks, start=1):
            c = int(hl.cols[e])
            if c < F:
                inj[b] -= all_feats[g.selected_features[c]]
            elif c < F + L * P:
                layer, pos = divmod(c - F, P)
                inj[b, layer, pos] -= errs[layer, pos]
            else:
                x0[b, c - F - L * P] = 0
        xs, fs = fz.run(x0, inj)
        vals = _target_values(g, tcs, xs, fs, rm)
        return torch.stack([vals[0, int(hl.rows[e])] - vals[b, int(hl.rows[e])] for b, e in enumerate(picks, 1)])

    base = edges_now()
    M = g.compact_adjacency()
    assert torch.allclose(base, M[hl.rows[picks], hl.cols[picks]], atol=TOL)
    for e in picks:
        hop = layer_of(int(hl.cols[e])) + 1
        others = torch.cat([hl.heads[e, :hop], hl.heads[e, hop + 1 :]]).flatten()
        assert others.abs().max() <= TOL  # one attention layer on the way: only its heads
    layers_used = sorted({layer_of(int(hl.cols[e])) + 1 for e in picks})
    for hop in layers_used:
        for h in range(H):
            saved = clean["pattern"][hop]
            clean["pattern"][hop] = saved.clone()
            clean["pattern"][hop][h] = 0  # the head's output removed from the frozen model
            try:
                without = edges_now()
            finally:
                clean["pattern"][hop] = saved
            for b, e in enumerate(picks):
                if layer_of(int(hl.cols[e])) + 1 == hop:
                    assert abs(float(base[b] - without[b]) - float(hl.heads[e, hop, h])) <= TOL


def test_loadings_in_the_protobuf_graph_and_the_frontend_json(case_dir):
    from circuit_serve.rpc.convert_graph import graph_to_proto

    rm, _, tokens = built_case("llama-plt-relu-skip", case_dir)
    g = rm.attribute(tokens, head_loadings=True)
    pr = g.prune()
    msg = graph_to_proto(g, pr)
    hl = msg.head_loadings
    assert msg.settings.head_loadings and hl.n_heads == rm.arch.n_heads
    assert len(hl.edges) == len(msg.edges.weights) > 0  # every listed (kept) edge is split
    assert len(hl.offsets) == len(hl.edges) + 1 and hl.offsets[-1] == len(hl.heads) == len(hl.weights)
    assert len(hl.heads) < len(hl.edges) * g.n_layers * rm.arch.n_heads  # compact: small parts left out
    for i, e in enumerate(hl.edges):
        parts = hl.direct[i] + sum(hl.weights[hl.offsets[i] : hl.offsets[i + 1]]) + hl.rest[i]
        assert abs(parts - msg.edges.weights[e]) <= TOL * max(1.0, abs(msg.edges.weights[e]))
    js = g.to_frontend_json()
    split = [x for x in js["links"] if "head_loadings" in x]
    assert len(split) == len(js["links"])
    for x in split:
        h = x["head_loadings"]
        assert abs(h["direct"] + sum(w for _, _, w in h["heads"]) + h["rest"] - x["weight"]) <= TOL
    assert "head_loadings" not in json_links(rm.attribute(tokens).to_frontend_json())


def json_links(js: dict) -> set:
    return {k for x in js["links"] for k in x}
