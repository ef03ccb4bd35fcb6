"""The graph against ground truth from HF's own modules: completeness and single interventions.

For every target t (logit or selected feature): value_t = sum_s A[t, s] + C_t, where value_t comes
from the real forward pass and C_t (constants that are not nodes: b_dec, the MLP output at BOS,
unselected features) from the frozen model run by HF's modules. Single edges equal the change of
the target when the source is removed from the frozen model.
"""

from __future__ import annotations

import pytest
import torch

from tests.tracing.tracing_helpers import CASES, built_case

ATOL = 1e-5


def _feature_vectors(tcs, rec_x_in, P, L, d):
    """Independent activations and per-(layer,pos) decoder sums, from the test's clean pass."""
    acts = []
    for li in range(L):
        a = tcs.encode(li, rec_x_in[li]).float()
        a[0] = 0
        acts.append(a)
    return acts


def _decoder_injection(tcs, rows: torch.Tensor, acts, L, P, d) -> torch.Tensor:
    """(len(rows), L, P, d): what each feature (layer, pos, f) writes at the MLP outputs."""
    inj = torch.zeros(len(rows), L, P, d)
    for b, (layer, pos, f) in enumerate(rows.tolist()):
        W = tcs.decoder_rows(layer, torch.tensor([f]))[0].float()  # (T, d)
        for k in range(W.shape[0]):
            inj[b, layer + k, pos] += acts[layer][pos, f] * W[k]
    return inj


def _setup(case, root, **kw):
    rm, fz, tokens = built_case(case, root)
    g = rm.attribute(tokens, max_n_logits=4, desired_logit_prob=0.99, batch_size=24, **kw)
    tcs = rm.transcoders
    L, P, d = g.n_layers, g.n_pos, rm.arch.d_model
    clean = fz.clean
    acts = _feature_vectors(tcs, clean["x_in"], P, L, d)
    mine = torch.cat([torch.cat([torch.full((len(a.nonzero()), 1), li), a.nonzero()], 1) for li, a in enumerate(acts)])
    assert torch.equal(mine, g.active_features), "active features differ from an independent recomputation"
    # non-node constants at the MLP outputs: b_dec at pos >= 1, the whole MLP output (minus skip) at BOS
    const = torch.zeros(L, P, d)
    for li in range(L):
        const[li, 1:] = tcs.b_dec[li].float()
        skip0 = tcs.skip(li, clean["x_in"][li][:1])
        const[li, 0] = clean["y"][li][0] - (0 if skip0 is None else skip0[0])
    return rm, fz, g, tcs, acts, const, L, P, d


def _target_values(g, tcs, xins, final_h, rm) -> torch.Tensor:
    """(B, n_targets) values of the graph's targets: selected features' W_enc.x_in, then logits."""
    cols = []
    for idx in g.selected_features.tolist():
        layer, pos, f = g.active_features[idx].tolist()
        cols.append(xins[layer][:, pos] @ tcs.W_enc[layer][f].float())
    U = rm.arch.lm_head.weight.float()
    for t, c in zip(g.logit_token_ids.tolist(), g.logit_contrast_ids):
        v = U[t] - (U.mean(0) if c is None else U[c])
        cols.append(final_h[:, -1] @ v)
    return torch.stack(cols, 1)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("limit", [None, 40])
def test_completeness_identity(case, limit, case_dir):
    rm, fz, g, tcs, acts, const, L, P, d = _setup(case, case_dir, max_feature_nodes=limit)
    assert g.n_active > 60, "the tiny transcoders should have a fair number of active features"
    if limit is not None:
        assert g.n_selected == limit
    # true values from the clean (unfrozen) forward pass
    clean = fz.clean
    true = _target_values(g, tcs, [x[None] for x in clean["x_in"]], clean["final_hidden"][None], rm)[0]
    # C_t: constants + features left out by max_feature_nodes, through the frozen model
    unselected = sorted(set(range(g.n_active)) - set(g.selected_features.tolist()))
    inj = const[None].clone()
    if unselected:
        inj += _decoder_injection(tcs, g.active_features[unselected], acts, L, P, d).sum(0, keepdim=True)
    xins, fin = fz.run(torch.zeros(1, P, d), inj)
    C = _target_values(g, tcs, xins, fin, rm)[0]
    M = g.compact_adjacency()
    rows = M.sum(1)
    err = (true - (rows + C)).abs()
    assert err.max() <= ATOL, f"completeness violated by {err.max():.2e} (max |value| {true.abs().max():.2f})"
    # the frozen model with every node injected reproduces the real model
    err_vecs = g.edges.new_zeros(L, P, d)
    all_feats = _decoder_injection(tcs, g.active_features, acts, L, P, d).sum(0)
    for li in range(L):
        err_vecs[li] = clean["y"][li] - tcs.b_dec[li].float() - all_feats[li]
        s = tcs.skip(li, clean["x_in"][li])
        if s is not None:
            err_vecs[li] -= s
    err_vecs[:, 0] = 0
    xins_all, fin_all = fz.run(clean["x0"][None], (const + all_feats + err_vecs)[None])
    assert (fin_all[0] - clean["final_hidden"]).abs().max() < 1e-4


@pytest.mark.parametrize("case", list(CASES))
def test_single_edges_match_interventions(case, case_dir):
    rm, fz, g, tcs, acts, const, L, P, d = _setup(case, case_dir)
    clean = fz.clean
    all_feats = _decoder_injection(tcs, g.active_features, acts, L, P, d)  # (n_active, L, P, d)
    feat_sum = all_feats.sum(0)
    errs = torch.zeros(L, P, d)
    for li in range(L):
        errs[li] = clean["y"][li] - tcs.b_dec[li].float() - feat_sum[li]
        s = tcs.skip(li, clean["x_in"][li])
        if s is not None:
            errs[li] -= s
    errs[:, 0] = 0
    full_inj = const + feat_sum + errs
    x0 = clean["x0"]
    M = g.compact_adjacency()  # rows [features | logits], cols [features | errors | embeddings]
    F = g.n_selected
    # sources: the 6 strongest feature, error and embedding sources of a few targets, plus a random few
    gen = torch.Generator().manual_seed(0)
    rows = [F] + [F + 1] * (g.n_logits > 1) + torch.randint(0, F, (3,), generator=gen).tolist()
    checks = set()
    for r in rows:
        strongest = M[r].abs().argsort(descending=True)[:6].tolist()
        checks |= {(r, c) for c in strongest}
        checks |= {(r, int(c)) for c in torch.randint(0, M.shape[1], (4,), generator=gen)}
    checks = sorted(checks)
    # ablate each source from the full frozen model (batched)
    B = len(checks)
    x0b = x0[None].repeat(B, 1, 1)
    injb = full_inj[None].repeat(B, 1, 1, 1)
    for b, (_, c) in enumerate(checks):
        if c < F:
            injb[b] -= all_feats[g.selected_features[c]]
        elif c < F + L * P:
            layer, pos = divmod(c - F, P)
            injb[b, layer, pos] -= errs[layer, pos]
        else:
            x0b[b, c - F - L * P] = 0
    base_x, base_f = fz.run(x0[None], full_inj[None])
    base = _target_values(g, tcs, base_x, base_f, rm)[0]
    xs, fs = fz.run(x0b, injb)
    ablated = _target_values(g, tcs, xs, fs, rm)
    worst = 0.0
    for b, (r, c) in enumerate(checks):
        delta = base[r] - ablated[b, r]
        worst = max(worst, float((delta - M[r, c]).abs()))
    assert worst <= ATOL, f"edge differs from intervention by {worst:.2e}"
    assert any(M[r, c] != 0 for r, c in checks)
