"""The engine against circuit-tracer 0.5.0's graphs (tests/fixtures/reference, see its README)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from circuit_serve.tracing import ReplacementModel
from circuit_serve.tracing.prune import influence, normalize_rows
from tests.tracing.tracing_helpers import FIXTURES

PROMPT = "The capital of France is"
FULL = [
    ("llama", "transcoders", "llama_plt"),
    ("llama", "clt", "llama_clt"),
    ("gemma2", "transcoders", "gemma2_plt"),
    ("gemma2", "clt", "gemma2_clt"),
]
LIMITED = [("llama", "transcoders", "llama_plt_sel", 120), ("gemma2", "transcoders", "gemma2_plt_sel", 100)]

_MODELS: dict = {}


def model(arch: str, tc: str) -> ReplacementModel:
    if (arch, tc) not in _MODELS:
        _MODELS[arch, tc] = ReplacementModel.from_pretrained(FIXTURES / arch / "model", FIXTURES / arch / tc)
    return _MODELS[arch, tc]


def ref(name: str):
    return np.load(FIXTURES / "ref" / f"{name}.npz")


@pytest.mark.parametrize("arch,tc,name", FULL)
def test_full_graph_matches_reference(arch, tc, name):
    rm, Z = model(arch, tc), ref(name)
    assert rm.tokenize(PROMPT) == Z["input_tokens"].tolist()
    g = rm.attribute(PROMPT)
    assert torch.equal(g.active_features, torch.from_numpy(Z["active_features"]))
    assert np.allclose(g.activation_values.numpy(), Z["activation_values"], atol=1e-5)
    assert g.logit_token_ids.tolist() == Z["logit_targets"].tolist()
    assert np.allclose(g.logit_probabilities.numpy(), Z["logit_probabilities"], atol=1e-6)
    assert g.selected_features.tolist() == Z["selected_features"].tolist()
    A, R = g.adjacency().numpy(), Z["adjacency_matrix"]
    assert A.shape == R.shape
    assert np.abs(A - R).max() <= 1e-4 * np.abs(R).max()
    pr = g.prune(float(Z["node_threshold"]), float(Z["edge_threshold"]))
    assert np.array_equal(pr.node_mask.numpy(), Z["node_mask"])
    assert np.array_equal(pr.dense_edge_mask(g.layout).numpy(), Z["edge_mask"])
    meta = json.loads(str(Z["meta_json"]))
    rep, comp = g.scores()
    assert abs(rep - meta["replacement_score"]) < 1e-5 and abs(comp - meta["completeness_score"]) < 1e-5


def _influence_on_logits(full_graph) -> torch.Tensor:
    """Influence of every active feature on the logits, from the full (all features) graph."""
    M = full_graph.compact_adjacency()
    lay = full_graph.layout
    infl = influence(normalize_rows(M), lay, lay.logit_weights(full_graph.logit_probabilities))
    return infl[: full_graph.n_selected]


@pytest.mark.parametrize("arch,tc,name,limit", LIMITED)
def test_limited_selection_against_reference(arch, tc, name, limit):
    rm, Z = model(arch, tc), ref(name)
    g = rm.attribute(PROMPT, max_feature_nodes=limit, batch_size=16)
    assert torch.equal(g.active_features, torch.from_numpy(Z["active_features"]))
    ours, theirs = set(g.selected_features.tolist()), set(Z["selected_features"].tolist())
    assert len(ours) == limit == len(theirs)
    shared = ours & theirs
    assert len(shared) >= 0.95 * len(theirs)
    # influence captured, measured on the full graph (every active feature a node)
    full = rm.attribute(PROMPT)
    infl = _influence_on_logits(full)
    captured_ours = float(infl[sorted(ours)].sum())
    captured_ref = float(infl[sorted(theirs)].sum())
    assert captured_ours >= captured_ref * (1 - 1e-6)
    # edges between shared nodes agree (same tolerance as the full graphs)
    A, R = g.adjacency().numpy(), Z["adjacency_matrix"]
    sel_o, sel_r = g.selected_features.tolist(), Z["selected_features"].tolist()
    F_o, F_r = len(sel_o), len(sel_r)
    common = sorted(shared)
    io = [sel_o.index(x) for x in common] + list(range(F_o, A.shape[0]))
    ir = [sel_r.index(x) for x in common] + list(range(F_r, R.shape[0]))
    sub_o, sub_r = A[np.ix_(io, io)], R[np.ix_(ir, ir)]
    assert np.abs(sub_o - sub_r).max() <= 1e-4 * np.abs(R).max()


def test_frontend_json_like_reference():
    rm = model("llama", "transcoders")
    g = rm.attribute(PROMPT)
    js = g.to_frontend_json(slug="llama_plt", labels={(0, 5): "a label"})
    theirs = json.loads((FIXTURES / "ref" / "llama_plt.json").read_text())
    ids = [n["node_id"] for n in js["nodes"]]
    assert len(ids) == len(set(ids)), "node ids must be unique"

    def key(n):  # identity of a node independent of id spelling
        return (n["feature_type"], n["layer"], n["ctx_idx"], n["feature"])

    assert sorted(map(key, js["nodes"])) == sorted(map(key, theirs["nodes"]))
    by_id_o = {n["node_id"]: key(n) for n in js["nodes"]}
    by_id_r = {n["node_id"]: key(n) for n in theirs["nodes"]}
    links_o = {(by_id_o[x["source"]], by_id_o[x["target"]]): x["weight"] for x in js["links"]}
    links_r = {(by_id_r[x["source"]], by_id_r[x["target"]]): x["weight"] for x in theirs["links"]}
    assert links_o.keys() == links_r.keys()
    scale = max(abs(w) for w in links_r.values())
    assert max(abs(links_o[k] - links_r[k]) for k in links_r) <= 1e-4 * scale
    for field in ("metadata", "qParams"):
        assert set(theirs[field]) <= set(js[field])
    assert set(theirs["nodes"][0]) <= set(js["nodes"][0])
    assert js["metadata"]["prompt_tokens"] == theirs["metadata"]["prompt_tokens"]


def test_npz_export_matches_reference_layout(tmp_path):
    rm, Z = model("gemma2", "transcoders"), ref("gemma2_plt")
    g = rm.attribute(PROMPT)
    g.save_npz(tmp_path / "g.npz")
    N = np.load(tmp_path / "g.npz")
    assert sorted(N.keys()) == sorted(
        [
            "adjacency_matrix",
            "active_features",
            "activation_values",
            "selected_features",
            "logit_token_ids",
            "logit_probabilities",
            "input_tokens",
        ]
    )
    assert N["adjacency_matrix"].shape == Z["adjacency_matrix"].shape
    assert np.abs(N["adjacency_matrix"] - Z["adjacency_matrix"]).max() <= 1e-4 * np.abs(Z["adjacency_matrix"]).max()
    assert N["logit_token_ids"].tolist() == Z["logit_targets"].tolist()
    assert N["input_tokens"].tolist() == Z["input_tokens"].tolist()
