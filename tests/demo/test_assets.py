"""The committed demo assets: the manifest's gates, file hashes, size, and that they load."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from circuit_serve.demo.install import ASSETS
from circuit_serve.demo.pipeline import file_hashes

MANIFEST = ASSETS / "manifest.json"
pytestmark = pytest.mark.skipif(not MANIFEST.exists(), reason="demo assets not committed yet")


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads(MANIFEST.read_text())


def test_accuracy_gates(manifest):
    assert manifest["heldout_sentence_accuracy"] >= 0.95
    assert manifest["heldout_template_accuracy"] >= 0.85
    assert 0.0 <= manifest["far_template_accuracy"] <= 1.0  # reported, not gated


def test_transcoder_gates(manifest):
    n_layers = json.loads((ASSETS / "model" / "config.json").read_text())["num_hidden_layers"]
    assert len(manifest["transcoder_fvu"]) == len(manifest["transcoder_l0"]) == n_layers
    assert all(f <= 0.05 for f in manifest["transcoder_fvu"])
    assert all(0 < n <= 16 for n in manifest["transcoder_l0"])


def test_circuit_keys_present(manifest):
    for key in ("circuit_recovery_rate", "ablation_dependence_rate", "ablation_control_rate"):
        assert key in manifest


def test_files_match_their_hashes_and_fit_the_budget(manifest):
    assert file_hashes(ASSETS) == manifest["files"]
    total = sum((ASSETS / name).stat().st_size for name in manifest["files"]) + MANIFEST.stat().st_size
    assert total <= 20 * 2**20


def test_model_and_tokenizer_load_with_transformers():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ASSETS / "model"))
    model = AutoModelForCausalLM.from_pretrained(str(ASSETS / "model"), dtype=torch.float32)
    cfg = model.config
    assert cfg.model_type == "llama" and cfg.tie_word_embeddings
    assert cfg.hidden_size // cfg.num_attention_heads in (32, 64, 80, 96, 112, 128)  # vLLM CPU head sizes
    ids = tok("The capital of").input_ids
    assert ids[0] == tok.bos_token_id and tok.convert_tokens_to_ids("<unk>") not in ids
    assert tok.all_special_ids == [tok.bos_token_id, tok.eos_token_id, tok.pad_token_id]


def test_transcoders_are_in_the_on_disk_format():
    tdir = ASSETS / "transcoders"
    cfg = yaml.safe_load((tdir / "config.yaml").read_text())
    assert cfg["model_kind"] == "transcoder_set"
    assert (cfg["feature_input_hook"], cfg["feature_output_hook"]) == ("hook_resid_mid", "mlp.hook_out")
    topk = cfg.get("activation_function") == "topk"
    assert not topk or cfg["top_k"] > 0
    layers = sorted(tdir.glob("layer_*.safetensors"))
    assert len(layers) == 4
    for path in layers:
        t = load_file(str(path))
        d_tc, d = t["W_enc"].shape
        assert t["W_dec"].shape == (d_tc, d) and t["b_enc"].shape == (d_tc,) and t["b_dec"].shape == (d,)
        assert topk or (t["activation_function.threshold"] > 0).all()


def test_the_engine_loads_the_transcoders():
    from circuit_serve.tracing import load_transcoders

    tcs = load_transcoders(ASSETS / "transcoders", dtype=torch.float32, device="cpu")
    assert tcs.d_transcoder == 1024


def test_labels_name_features_with_a_selectivity():
    labels = json.loads((ASSETS / "labels.json").read_text())
    fields = {"layer", "index", "label", "kind", "selectivity", "answer_share", "top"}
    assert labels and all(set(e) == fields for e in labels)
    assert all(0.0 <= e["selectivity"] <= 1.0 + 1e-9 and 0.0 <= e["answer_share"] <= 1.0 + 1e-9 for e in labels)
    kinds = {e["kind"] for e in labels}
    assert {"fact", "entity", "relation", "token", "before"} <= kinds  # every kind of label occurs
    prefix = {
        "fact": "fact: ",
        "entity": "entity: ",
        "relation": "relation: ",
        "answer_slot": "answer slot: ",
        "token": "token: ",
        "after": "after: ",
        "before": "before: ",
        "tokens": "tokens: ",
    }
    assert all(e["label"].startswith(prefix[e["kind"]]) for e in labels)
