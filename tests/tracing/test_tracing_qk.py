"""QK attribution (tracing/qk.py) against explicit computations with HF's own modules.

1. On a random Llama, Gemma-2 and Qwen3 (per-layer and cross-layer transcoders), for edges at
   every layer: the score equals scale * q . k recomputed from the query and key that the
   model's own attention receives (after its q/k projections, Qwen3's q_norm/k_norm and RoPE),
   and each side's contributions plus its constant term sum to it within 1e-5 (float32, relative).
2. An intervention in the frozen (linear) model, run by HF's modules: removing one feature's
   decoder output from the query position's residual changes the score by that feature's
   query-side contribution; the same at the key position for the key side.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch

from circuit_serve.domain.errors import InvalidRequest
from circuit_serve.tracing import AttributionSettings
from circuit_serve.tracing.qk import FEATURE
from tests.tracing.tracing_helpers import built_case

TOL = 1e-5
QK_CASES = [
    "llama-plt-relu-skip",
    "gemma2-plt-jumprelu",
    "qwen3-plt-topk",
    "gemma2-clt-jumprelu",
    "llama-clt-relu-skip",
]


def _edges(L: int, P: int) -> list[tuple[int, int, int, int]]:
    return [(li, h, q, k) for li in range(L) for h, q, k in ((0, P - 1, 0), (3, P - 1, P - 3), (1, 5, 5), (2, 7, 2))]


def _real_qk(model, tokens) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.nn.Module]]:
    """layer -> (query (H, P, dh), key (KV, P, dh), the attention module) as the model's eager
    attention function receives them (projected, normed where the family does, rotated)."""
    modeling = sys.modules[type(model).__module__]
    eager = modeling.eager_attention_forward
    seen: dict[int, tuple] = {}

    def grab(module, query, key, *args, **kw):
        seen[module.layer_idx] = (query[0].float().clone(), key[0].float().clone(), module)
        return eager(module, query, key, *args, **kw)

    modeling.eager_attention_forward = grab
    try:
        with torch.no_grad():
            model(input_ids=tokens[None])
    finally:
        modeling.eager_attention_forward = eager
    assert len(seen) == model.config.num_hidden_layers
    return seen


@pytest.mark.parametrize("case", QK_CASES)
def test_contributions_sum_to_the_explicit_score(case, case_dir):
    rm, fz, tokens = built_case(case, case_dir)
    L, P = rm.arch.n_layers, len(tokens)
    g = rm.attribute(tokens, max_feature_nodes=8, batch_size=16, qk_edges=_edges(L, P))
    real = _real_qk(rm.model, tokens)
    rep = rm.arch.n_heads // rm.arch.n_kv_heads
    assert len(g.qk) == len(_edges(L, P))
    for qa in g.qk:
        e = qa.edge
        q, k, attn = real[e.layer]
        explicit = float(attn.scaling) * float(q[e.head, e.query_pos] @ k[e.head // rep, e.key_pos])
        tol = TOL * max(1.0, abs(explicit))
        assert abs(qa.score - explicit) <= tol, (e, qa.score, explicit)
        for side in (qa.query, qa.key):
            assert abs(float(side.values.sum()) + side.constant - explicit) <= tol, (e, side.position)
        cap = getattr(attn, "attn_logit_softcapping", None)
        capped = cap * torch.tanh(torch.tensor(explicit / cap)).item() if cap else explicit
        assert abs(qa.capped - capped) <= tol
        assert (qa.query.kinds == FEATURE).any() or e.layer == 0 or e.query_pos == 0
        # the pairs are the strongest (query component, key component) products
        assert len(qa.pair_values) > 0 and bool((qa.pair_values.abs()[:-1] >= qa.pair_values.abs()[1:]).all())
    assert g.qk[0].query.name(0) == f"E_{int(tokens[P - 1])}_{P - 1}"  # the embedding comes first


def _decoder_output(rm, fz, layer: int, pos: int, src: int, f: int, upto: int) -> torch.Tensor:
    """(d,) what feature (src, pos, f) writes into the residual stream below layer `upto`,
    computed independently: activation from the clean transcoder input, decoder rows, and
    Gemma-2's frozen post-feedforward norm where the transcoder writes before it."""
    tcs, clean = rm.transcoders, fz.clean
    a = tcs.encode(src, clean["x_in"][src]).float()[pos, f]
    rows = tcs.decoder_rows(src, torch.tensor([f]))[0].float()  # (T, d)
    out = torch.zeros(rm.arch.d_model)
    for k in range(rows.shape[0]):
        m = src + k
        if m >= upto:
            break
        v = a * rows[k]
        if fz.gemma and tcs.feature_output_hook == "mlp.hook_out":
            norm = rm.model.model.layers[m].post_feedforward_layernorm
            v = v * clean["scale"][id(norm)][pos] * (1 + norm.weight.float())
        out += v
    return out


def _frozen_score(rm, fz, resid, layer, head, pos, x: torch.Tensor, other: torch.Tensor, side: str) -> float:
    """scale * Q(x) . other (side "q") or scale * other . K(x) (side "k"): x (d,) the residual at
    `pos` entering `layer`, mapped by the layer's own modules with every norm denominator frozen
    at its clean value (input norm; Qwen3 q_norm / k_norm); resid: the clean residuals."""
    mod = sys.modules[type(rm.model).__module__]
    layer_mod = rm.model.model.layers[layer]
    attn, n1 = layer_mod.self_attn, layer_mod.input_layernorm
    dh, H, KV = rm.arch.head_dim, rm.arch.n_heads, rm.arch.n_kv_heads
    w1 = n1.weight.float() + (1.0 if fz.gemma else 0.0)
    normed = x * fz.clean["scale"][id(n1)][pos] * w1
    with torch.no_grad():
        clean_in = resid[layer][pos] * fz.clean["scale"][id(n1)][pos] * w1
        proj, heads, row = (attn.q_proj, H, head) if side == "q" else (attn.k_proj, KV, head // (H // KV))
        y = proj(normed).view(heads, dh)[row]
        y_clean = proj(clean_in).view(heads, dh)[row]
        qk_norm = getattr(attn, f"{side}_norm", None)
        if qk_norm is not None:  # frozen at the clean query / key
            eps = qk_norm.variance_epsilon
            y = y * torch.rsqrt(y_clean.pow(2).mean() + eps) * qk_norm.weight.float()
        cos, sin = rm.model.model.rotary_emb(y[None, None], torch.tensor([[pos]]))
        y = mod.apply_rotary_pos_emb(y[None, None], y[None, None], cos, sin)[0][0, 0]
    return float(attn.scaling) * float(y @ other)


def _clean_residuals(rm, tokens) -> list[torch.Tensor]:
    """Per layer (P, d): the real residual entering it (input norm's input)."""
    out = []
    hs = [
        layer.input_layernorm.register_forward_pre_hook(lambda m, a: out.append(a[0][0].float()))
        for layer in rm.model.model.layers
    ]
    try:
        with torch.no_grad():
            rm.model(input_ids=tokens[None])
    finally:
        for h in hs:
            h.remove()
    return out


@pytest.mark.parametrize("case", QK_CASES)
def test_a_features_contribution_is_the_score_change_when_it_is_removed(case, case_dir):
    rm, fz, tokens = built_case(case, case_dir)
    L, P = rm.arch.n_layers, len(tokens)
    resid = _clean_residuals(rm, tokens)
    real = _real_qk(rm.model, tokens)
    rep = rm.arch.n_heads // rm.arch.n_kv_heads
    edges = [(L - 1, 1, P - 1, P - 4), (L - 1, 2, 6, 3), (1, 0, P - 2, 4)]
    g = rm.attribute(tokens, max_feature_nodes=8, batch_size=16, qk_edges=edges)
    checked = 0
    for qa in g.qk:
        e = qa.edge
        q, k, _ = real[e.layer]
        q_vec, k_vec = q[e.head, e.query_pos], k[e.head // rep, e.key_pos]
        for side, vec_other, name in ((qa.query, k_vec, "q"), (qa.key, q_vec, "k")):
            feats = torch.nonzero(side.kinds == FEATURE).flatten()
            top = feats[torch.argsort(side.values[feats].abs(), descending=True)][:3]
            x = resid[e.layer][side.position]
            clean = _frozen_score(rm, fz, resid, e.layer, e.head, side.position, x, vec_other, name)
            for i in top.tolist():
                src, f = int(side.layers[i]), int(side.index[i])
                v = _decoder_output(rm, fz, e.layer, side.position, src, f, e.layer)
                removed = _frozen_score(rm, fz, resid, e.layer, e.head, side.position, x - v, vec_other, name)
                assert clean - removed == pytest.approx(float(side.values[i]), rel=1e-4, abs=TOL), (e, name, i)
                checked += 1
    assert checked >= 6


def test_qk_edges_are_validated(case_dir):
    rm, _, tokens = built_case("llama-plt-relu-skip", case_dir)
    L, H, P = rm.arch.n_layers, rm.arch.n_heads, len(tokens)
    for bad, words in [
        ([(L, 0, 3, 1)], "layer"),
        ([(0, H, 3, 1)], "head"),
        ([(0, 0, P, 1)], "query_pos"),
        ([(0, 0, 2, 3)], "key_pos"),
        ([(0, 0, 2)], "four integers"),
        ([(0, 0, 2, 1)] * 17, "at most 16"),
    ]:
        with pytest.raises(InvalidRequest, match=words) as err:
            rm.attribute(tokens, max_feature_nodes=4, qk_edges=bad)
        assert err.value.field == "qk_edges"
    assert rm.attribute(tokens, max_feature_nodes=4).qk == []  # opt-in
    # a fleet job's payload carries the settings as JSON: lists come back as the same tuples
    s = AttributionSettings(qk_edges=[[1, 0, 5, 2], (0, 3, 4, 4)]).validate()
    assert AttributionSettings(**json.loads(json.dumps(s.as_dict()))) == s
    assert s.qk_edges == ((1, 0, 5, 2), (0, 3, 4, 4))


def test_qk_in_the_protobuf_graph_and_the_frontend_json(case_dir):
    from circuit_proto.v1 import graph_pb2 as pb
    from circuit_serve.rpc.convert_graph import graph_from_proto, graph_to_proto

    rm, _, tokens = built_case("gemma2-clt-jumprelu", case_dir)
    P = len(tokens)
    edges = [(2, 1, P - 1, 0), (1, 3, 6, 4)]
    g = rm.attribute(tokens, max_feature_nodes=8, qk_edges=edges)
    msg = graph_to_proto(g, g.prune())
    assert [(m.edge.layer, m.edge.head, m.edge.query_pos, m.edge.key_pos) for m in msg.qk] == edges
    assert graph_from_proto(graph_to_proto(g)).settings.qk_edges == tuple(edges)
    js = json.loads(json.dumps(g.to_frontend_json()))
    assert [(x["layer"], x["head"], x["query_pos"], x["key_pos"]) for x in js["qk"]] == edges
    for m, x, qa in zip(msg.qk, js["qk"], g.qk):
        assert m.score == pytest.approx(qa.score) and x["score"] == qa.score
        for side, jside, full in ((m.query, x["query"], qa.query), (m.key, x["key"], qa.key)):
            listed = sum(c.contribution for c in side.components)
            assert listed + side.rest + side.constant == pytest.approx(m.score, abs=TOL * max(1.0, abs(m.score)))
            assert side.n_components == len(full) and 0 < len(side.components) <= len(full)
            assert [c.node_id for c in side.components] == [c[0] for c in jside["components"]]
            w = [abs(c.contribution) for c in side.components]
            assert w == sorted(w, reverse=True)
            kinds = {c.kind for c in side.components}
            assert kinds <= set(range(1, 6)) and pb.QK_COMPONENT_KIND_UNSPECIFIED not in kinds
        assert list(m.pair_weights) == pytest.approx(qa.pair_values.tolist())
        for i, j in zip(m.pair_query, m.pair_key):  # pairs point at listed components
            assert i < len(m.query.components) and j < len(m.key.components)
        assert [p[:2] for p in x["pairs"]] == [
            [m.query.components[i].node_id, m.key.components[j].node_id] for i, j in zip(m.pair_query, m.pair_key)
        ]
    assert "qk" not in rm.attribute(tokens, max_feature_nodes=8).to_frontend_json()
