"""Engine API: bad input, targets, progress/cancel, memory, activations, loading errors."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from circuit_serve.domain.errors import Cancelled, InvalidRequest
from circuit_serve.tracing import Contrast, ReplacementModel, load_transcoders
from tests.tracing.tracing_helpers import FIXTURES, build_model, built_case, tiny_tokenizer

CASE = "llama-plt-relu-skip"


@pytest.fixture(scope="module")
def rm_tokens(case_dir):
    rm, _, tokens = built_case(CASE, case_dir)
    return rm, tokens


@pytest.fixture(scope="module")
def fixture_rm():
    return ReplacementModel.from_pretrained(FIXTURES / "llama" / "model", FIXTURES / "llama" / "transcoders")


# -- bad input: each names what to change ---------------------------------------------------


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt(fixture_rm, prompt):
    with pytest.raises(InvalidRequest, match="empty") as e:
        fixture_rm.attribute(prompt)
    assert e.value.field == "prompt"


def test_empty_token_ids(rm_tokens):
    rm, _ = rm_tokens
    with pytest.raises(InvalidRequest, match="empty"):
        rm.attribute([])
    with pytest.raises(InvalidRequest, match="empty"):
        rm.attribute([2])  # BOS alone


def test_prompt_too_long(rm_tokens):
    rm, _ = rm_tokens
    with pytest.raises(InvalidRequest, match="shorten") as e:
        rm.attribute([2] + [5] * 80)  # the tiny model has 64 positions
    assert e.value.field == "prompt"


def test_token_ids_outside_vocabulary(rm_tokens):
    rm, _ = rm_tokens
    with pytest.raises(InvalidRequest, match="vocabulary"):
        rm.attribute([2, 5, 10_000])


@pytest.mark.parametrize(
    "field,value",
    [
        ("node_threshold", 0.0),
        ("node_threshold", 1.5),
        ("edge_threshold", -0.1),
        ("edge_threshold", 2.0),
        ("desired_logit_prob", 0.0),
    ],
)
def test_thresholds_outside_unit_interval(rm_tokens, field, value):
    rm, tokens = rm_tokens
    with pytest.raises(InvalidRequest, match=r"\(0, 1\]") as e:
        rm.attribute(tokens, **{field: value})
    assert e.value.field == field


def test_prune_thresholds_checked(rm_tokens):
    rm, tokens = rm_tokens
    g = rm.attribute(tokens, max_n_logits=2)
    with pytest.raises(InvalidRequest, match="edge_threshold"):
        g.prune(0.8, 0.0)


@pytest.mark.parametrize(
    "field,value", [("max_feature_nodes", 0), ("max_feature_nodes", -3), ("batch_size", 0), ("max_n_logits", 0)]
)
def test_counts_at_least_one(rm_tokens, field, value):
    rm, tokens = rm_tokens
    with pytest.raises(InvalidRequest, match=">= 1") as e:
        rm.attribute(tokens, **{field: value})
    assert e.value.field == field


def test_transcoders_with_wrong_layer_count():
    model = build_model("llama", layers=2)
    tcs = load_transcoders(FIXTURES / "llama" / "transcoders")
    with pytest.raises(InvalidRequest, match="3 layers but .* has 2"):
        ReplacementModel.from_hf(model, tiny_tokenizer(96), tcs)


def test_transcoders_with_wrong_width():
    model = build_model("llama", d=48, layers=3)
    tcs = load_transcoders(FIXTURES / "llama" / "transcoders")
    with pytest.raises(InvalidRequest, match=r"layer_0\.safetensors: tensor W_enc has d_model 32 .* hidden size 48"):
        ReplacementModel.from_hf(model, tiny_tokenizer(96), tcs)


def test_transcoder_file_with_bad_tensor(tmp_path):
    d = tmp_path / "tc"
    shutil.copytree(FIXTURES / "llama" / "transcoders", d)
    sd = load_file(str(d / "layer_1.safetensors"))
    sd["b_dec"] = torch.zeros(31)
    save_file(sd, str(d / "layer_1.safetensors"))
    with pytest.raises(InvalidRequest, match=r"layer_1\.safetensors: tensor b_dec has shape \(31,\), expected \(32,\)"):
        load_transcoders(d)


def test_clt_file_with_bad_decoder(tmp_path):
    d = tmp_path / "clt"
    shutil.copytree(FIXTURES / "llama" / "clt", d)
    save_file({"W_dec_1": torch.zeros(128, 3, 32)}, str(d / "W_dec_1.safetensors"))
    with pytest.raises(
        InvalidRequest, match=r"W_dec_1\.safetensors: tensor W_dec_1 has shape \(128, 3, 32\), expected \(128, 2, 32\)"
    ):
        load_transcoders(d)


def test_over_memory_budget(rm_tokens):
    rm, tokens = rm_tokens
    old = rm.memory_budget_bytes
    rm.memory_budget_bytes = 10_000
    try:
        with pytest.raises(InvalidRequest, match="lower max_feature_nodes or shorten the prompt"):
            rm.attribute(tokens)
    finally:
        rm.memory_budget_bytes = old


# -- behaviour ------------------------------------------------------------------------------


def test_memory_estimate_grows_and_bounds_the_edge_matrix(rm_tokens):
    rm, tokens = rm_tokens
    g = rm.attribute(tokens)
    exact = rm.estimate_memory(len(tokens), g.settings, n_active=g.n_active, n_logits=g.n_logits)
    assert exact >= g.edges.numel() * 4
    assert g.edges.shape == (g.n_selected + g.n_logits, g.n_active + (g.n_layers + 1) * g.n_pos)
    assert rm.estimate_memory(40) > rm.estimate_memory(10)
    small = rm.attribute(tokens, max_feature_nodes=10)
    assert small.edges.shape[0] == 10 + small.n_logits


def test_feature_activations_are_the_graphs(rm_tokens):
    rm, tokens = rm_tokens
    g = rm.attribute(tokens)
    fa = rm.feature_activations(tokens)
    assert torch.equal(fa.indices, g.active_features)
    assert torch.equal(fa.values, g.activation_values)
    pos, feat, vals = fa.layer(1)
    assert (fa.indices[fa.layer_offsets[1] : fa.layer_offsets[2], 0] == 1).all() and len(pos) == len(vals)
    assert fa.to_sparse().shape == (g.n_layers, g.n_pos, rm.transcoders.d_transcoder)


def test_progress_and_timings(rm_tokens):
    rm, tokens = rm_tokens
    seen = []
    g = rm.attribute(tokens, batch_size=16, progress=lambda phase, frac: seen.append((phase, frac)))
    phases = [p for p, _ in seen]
    assert phases[0].startswith("1") and phases[-1].startswith("6") and seen[-1][1] == 1.0
    fr = [f for p, f in seen if p.startswith("5")]
    assert fr == sorted(fr) and fr[-1] == 1.0
    assert set(g.timings) == {"1_record", "2_features", "3_targets", "4_logit_rows", "5_feature_rows", "6_package"}


def test_should_stop_cancels(rm_tokens):
    rm, tokens = rm_tokens
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        rm.attribute(tokens, batch_size=8, should_stop=stop)


def test_explicit_and_contrast_targets(rm_tokens):
    rm, tokens = rm_tokens
    g = rm.attribute(tokens, targets=[7, Contrast(7, 11), (12, 13)])
    assert g.logit_token_ids.tolist() == [7, 7, 12]
    assert g.logit_contrast_ids == [None, 11, 13]
    M = g.compact_adjacency()
    F = g.n_selected
    # a contrast row is the difference of the two tokens' rows (demeaning cancels)
    g2 = rm.attribute(tokens, targets=[7, 11])
    M2 = g2.compact_adjacency()
    assert torch.allclose(M[F + 1], M2[F] - M2[F + 1], atol=1e-5)
    with pytest.raises(InvalidRequest, match="vocabulary"):
        rm.attribute(tokens, targets=[10_000])


def test_tokenize_prepends_bos_once(fixture_rm):
    ids = fixture_rm.tokenize("The capital")
    assert ids[0] == fixture_rm.tokenizer.bos_token_id and ids.count(ids[0]) == 1
    g = fixture_rm.attribute(ids, max_n_logits=1)
    assert g.input_tokens.tolist() == ids  # no second BOS
    assert fixture_rm.model_id and fixture_rm.transcoder_id and fixture_rm.model_id != fixture_rm.transcoder_id


def test_graph_node_ids_unique_with_layer0_collision_case(fixture_rm):
    # a layer-0 feature "0_{f}_{p}" and error node of layer f at position p collide in the reference
    g = fixture_rm.attribute("The capital of France is")
    js = g.to_frontend_json(node_threshold=1.0, edge_threshold=1.0)
    ids = [n["node_id"] for n in js["nodes"]]
    assert len(ids) == len(set(ids))
    assert any(n["feature_type"] == "mlp reconstruction error" for n in js["nodes"])


def test_bfloat16_runs_and_agrees_roughly():
    f32 = ReplacementModel.from_pretrained(FIXTURES / "gemma2" / "model", FIXTURES / "gemma2" / "transcoders")
    bf16 = ReplacementModel.from_pretrained(
        FIXTURES / "gemma2" / "model", FIXTURES / "gemma2" / "transcoders", dtype="bfloat16"
    )
    a, b = f32.attribute("The capital of France is"), bf16.attribute("The capital of France is")
    assert b.edges.dtype == torch.float32 and b.logit_token_ids[0] == a.logit_token_ids[0]
    assert abs(a.scores()[0] - b.scores()[0]) < 0.02


def test_wraps_a_model_loaded_with_sdpa_and_restores_it(fixture_rm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    F = FIXTURES / "llama"
    m = AutoModelForCausalLM.from_pretrained(F / "model", dtype=torch.float32, attn_implementation="sdpa")
    rm = ReplacementModel.from_hf(m, AutoTokenizer.from_pretrained(F / "model"), load_transcoders(F / "transcoders"))
    g = rm.attribute("The capital of France is")
    assert m.config._attn_implementation == "sdpa"
    ref = fixture_rm.attribute("The capital of France is")
    assert torch.allclose(g.adjacency(), ref.adjacency(), atol=1e-5)
