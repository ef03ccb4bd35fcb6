"""Transcoder sets by Hugging Face repo id, in every published layout, from an offline hub cache.

The cache (tests/support/hub_cache.py) holds the reference fixtures' weights re-laid out as each
layout; loading by repo id must give the same graph as the same weights from a local directory
and, where circuit-tracer 0.5.0 reads the layout, the same graph as its committed fixture.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from circuit_serve.domain.errors import InvalidRequest
from circuit_serve.tracing import ReplacementModel, load_transcoders
from tests.support.hub_cache import add_repo
from tests.tracing.tracing_helpers import FIXTURES

PROMPT = "The capital of France is"
ROOT = Path(__file__).resolve().parents[2]
NPZ_PATH = "layer_{i}/width_128/average_l0_7/params.npz"


def _dir_files(d: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(d.iterdir()) if p.is_file()}


def _npz_bytes(layer_file: Path) -> bytes:
    """GemmaScope's params.npz of one circuit-tracer layer file (W_enc stored transposed)."""
    t = load_file(str(layer_file))
    buf = io.BytesIO()
    np.savez(
        buf,
        W_enc=t["W_enc"].T.contiguous().numpy(),
        W_dec=t["W_dec"].numpy(),
        b_enc=t["b_enc"].numpy(),
        b_dec=t["b_dec"].numpy(),
        threshold=t["activation_function.threshold"].numpy(),
    )
    return buf.getvalue()


def _config(src: Path, **extra) -> bytes:
    import yaml

    cfg = yaml.safe_load((src / "config.yaml").read_text())
    cfg.update(extra)
    return yaml.safe_dump(cfg).encode()


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """An HF_HOME whose hub cache holds every layout; huggingface_hub pointed at it, offline."""
    import huggingface_hub.constants as hc

    home = tmp_path_factory.mktemp("hf_home")
    hub_dir = home / "hub"
    llama, gemma = FIXTURES / "llama", FIXTURES / "gemma2"
    commits = {
        "llama-plt": add_repo(hub_dir, "test-org/llama-plt", _dir_files(llama / "transcoders")),
        "llama-clt": add_repo(hub_dir, "test-org/llama-clt", _dir_files(llama / "clt")),
        "gemma2-clt": add_repo(hub_dir, "test-org/gemma2-clt", _dir_files(gemma / "clt")),
        "llama-model": add_repo(hub_dir, "test-org/llama-model", _dir_files(llama / "model")),
    }
    # a subfolder of a repository, and a `transcoders:` list of paths relative to the config
    add_repo(
        hub_dir,
        "test-org/many-sets",
        {
            **{f"plt/{k}": v for k, v in _dir_files(llama / "transcoders").items()},
            "listed/config.yaml": _config(
                gemma / "transcoders", transcoders=[f"weights/tc{i}.safetensors" for i in range(3)]
            ),
            **{f"listed/weights/tc{i}.safetensors": gemma / "transcoders" / f"layer_{i}.safetensors" for i in range(3)},
        },
    )
    # GemmaScope: params.npz files in one repository, indexed by a config.yaml in another
    add_repo(
        hub_dir,
        "test-google/gemma-scope-tiny-pt-transcoders",
        {NPZ_PATH.format(i=i): _npz_bytes(gemma / "transcoders" / f"layer_{i}.safetensors") for i in range(3)},
    )
    uris = [f"hf://test-google/gemma-scope-tiny-pt-transcoders/{NPZ_PATH.format(i=i)}" for i in range(3)]
    commits["gemma-scope"] = add_repo(
        hub_dir, "test-org/gemma-scope-transcoders", {"config.yaml": _config(gemma / "transcoders", transcoders=uris)}
    )
    # TopK with circuit-tracer's keys
    add_repo(
        hub_dir,
        "test-org/llama-topk",
        {**_dir_files(llama / "transcoders"), "config.yaml": _config(llama / "transcoders", activation="topk", k=6)},
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hc, "HF_HUB_CACHE", str(hub_dir))
        mp.setattr(hc, "HF_HUB_OFFLINE", True)
        mp.setenv("HF_HOME", str(home))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield {"home": home, "commits": commits}


_MODELS: dict = {}


def rm_for(arch: str, tcs) -> ReplacementModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if arch not in _MODELS:
        d = FIXTURES / arch / "model"
        m = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32, attn_implementation="eager")
        _MODELS[arch] = (m, AutoTokenizer.from_pretrained(str(d)))
    m, tok = _MODELS[arch]
    return ReplacementModel.from_hf(m, tok, tcs, model_id=arch)


def graph(arch: str, tcs, **kw):
    return rm_for(arch, tcs).attribute(PROMPT, **kw)


def assert_same_graph(a, b) -> None:
    assert torch.equal(a.active_features, b.active_features)
    assert torch.equal(a.activation_values, b.activation_values)
    assert a.logit_token_ids.tolist() == b.logit_token_ids.tolist()
    assert a.selected_features.tolist() == b.selected_features.tolist()
    assert torch.equal(a.adjacency(), b.adjacency())


def assert_reference_graph(g, name: str) -> None:
    Z = np.load(FIXTURES / "ref" / f"{name}.npz")
    assert g.input_tokens.tolist() == Z["input_tokens"].tolist()
    assert torch.equal(g.active_features, torch.from_numpy(Z["active_features"]))
    assert np.allclose(g.activation_values.numpy(), Z["activation_values"], atol=1e-5)
    assert g.logit_token_ids.tolist() == Z["logit_targets"].tolist()
    A, R = g.adjacency().numpy(), Z["adjacency_matrix"]
    assert A.shape == R.shape and np.abs(A - R).max() <= 1e-4 * np.abs(R).max()
    pr = g.prune(float(Z["node_threshold"]), float(Z["edge_threshold"]))
    assert np.array_equal(pr.node_mask.numpy(), Z["node_mask"])
    assert np.array_equal(pr.dense_edge_mask(g.layout).numpy(), Z["edge_mask"])


# (repo spec, arch, local directory with the same weights, reference fixture or None)
LAYOUTS = [
    ("test-org/llama-plt", "llama", "llama/transcoders", "llama_plt"),  # layer_{i}.safetensors + W_skip
    ("test-org/many-sets/plt", "llama", "llama/transcoders", "llama_plt"),  # a subfolder
    ("test-org/many-sets/listed", "gemma2", "gemma2/transcoders", "gemma2_plt"),  # transcoders: relative paths
    ("test-org/gemma-scope-transcoders", "gemma2", "gemma2/transcoders", "gemma2_plt"),  # hf:// -> params.npz
    ("test-org/llama-clt", "llama", "llama/clt", "llama_clt"),  # CLT, ReLU
    ("test-org/gemma2-clt", "gemma2", "gemma2/clt", "gemma2_clt"),  # CLT, JumpReLU
]


@pytest.mark.parametrize("spec,arch,local,ref", LAYOUTS)
def test_repo_id_gives_the_local_and_the_reference_graph(hub, spec, arch, local, ref):
    by_id = load_transcoders(spec)
    g = graph(arch, by_id)
    assert_same_graph(g, graph(arch, load_transcoders(FIXTURES / local)))
    assert_reference_graph(g, ref)
    assert by_id.name == spec and by_id.revision and len(by_id.revision) == 40


def test_gemma_scope_npz_is_transposed_and_jumprelu(hub):
    tcs = load_transcoders("test-org/gemma-scope-transcoders")
    local = load_transcoders(FIXTURES / "gemma2" / "transcoders", lazy=False)
    assert tcs.activation == "jumprelu" and tcs.kind == "plt"
    for i in range(3):
        assert torch.equal(tcs.W_enc[i], local.W_enc[i]) and torch.equal(tcs.threshold[i], local.threshold[i])
    assert tcs.sources["W_enc.1"].endswith("layer_1/width_128/average_l0_7/params.npz")


def test_revision_pins_a_commit(hub):
    commit = hub["commits"]["llama-plt"]
    tcs = load_transcoders(f"test-org/llama-plt@{commit}")
    assert tcs.revision == commit
    assert tcs.identity == load_transcoders(FIXTURES / "llama" / "transcoders").identity
    with pytest.raises(InvalidRequest, match=r"test-org/llama-plt at revision v9.*not in the Hugging Face cache"):
        load_transcoders("test-org/llama-plt@v9")


def test_topk_with_the_reference_keys(hub, tmp_path):
    """`activation: topk` + `k` (circuit-tracer's keys) == `activation_function: topk` + `top_k`."""
    ours = tmp_path / "ours"
    ours.mkdir()
    for name, p in _dir_files(FIXTURES / "llama" / "transcoders").items():
        (ours / name).write_bytes(p.read_bytes())
    (ours / "config.yaml").write_bytes(_config(FIXTURES / "llama" / "transcoders", activation_function="topk", top_k=6))
    theirs = load_transcoders("test-org/llama-topk")
    assert theirs.activation == "topk" and theirs.top_k == 6
    g = graph("llama", theirs)
    assert_same_graph(g, graph("llama", load_transcoders(ours)))
    per_pos = torch.bincount(g.active_features[:, 0] * 100 + g.active_features[:, 1])
    assert int(per_pos.max()) <= 6


def test_clt_skip_is_applied_as_the_reference_orients_it(tmp_path):
    """CLT `W_skip_{i}` is applied as `x @ W_skip_i` (circuit-tracer's CrossLayerTranscoder)."""
    src, d = FIXTURES / "llama" / "clt", tmp_path / "clt_skip"
    d.mkdir()
    g = torch.Generator().manual_seed(3)
    skips = []
    for name, p in _dir_files(src).items():
        if name.startswith("W_enc_"):
            i = int(name.removeprefix("W_enc_").split(".")[0])
            t = load_file(str(p))
            t[f"W_skip_{i}"] = 0.2 * torch.randn(32, 32, generator=g)
            skips.append((i, t[f"W_skip_{i}"]))
            save_file(t, str(d / name))
        else:
            (d / name).write_bytes(p.read_bytes())
    tcs = load_transcoders(d)
    x = torch.randn(5, 32, generator=g)
    for i, S in skips:
        assert torch.allclose(tcs.skip(i, x), x @ S, atol=1e-6)
    # completeness and single edges of a CLT with skips: CASES["llama-clt-relu-skip"] in
    # test_tracing_identity.py


def test_lazy_decoders_give_the_eager_graph_and_hold_no_decoder(hub):
    for spec, arch in (("test-org/llama-plt", "llama"), ("test-org/llama-clt", "llama")):
        lazy, eager = load_transcoders(spec, lazy=True), load_transcoders(spec, lazy=False)
        assert lazy.lazy and not eager.lazy
        assert_same_graph(graph(arch, lazy), graph(arch, eager))
        dec = sum(w.numel() * 4 for w in eager.W_dec)
        assert eager.resident_bytes() - lazy.resident_bytes() == dec


def test_missing_repo_and_bad_spec_are_clear(hub, tmp_path):
    with pytest.raises(InvalidRequest, match=r"config.yaml of test-org/nothing-here.*HF_HUB_OFFLINE"):
        load_transcoders("test-org/nothing-here")
    with pytest.raises(InvalidRequest, match=r"neither a transcoder directory nor a Hugging Face repo id"):
        load_transcoders(tmp_path / "no-such-dir")


def test_shape_errors_name_the_file_and_tensor(tmp_path):
    d = tmp_path / "bad_npz"
    d.mkdir()
    layer = FIXTURES / "gemma2" / "transcoders" / "layer_0.safetensors"
    t = load_file(str(layer))
    np.savez(
        d / "p0.npz",
        W_enc=t["W_enc"].numpy(),
        W_dec=t["W_dec"].numpy(),
        b_enc=t["b_enc"].numpy(),
        b_dec=t["b_dec"].numpy(),
        threshold=t["activation_function.threshold"].numpy(),
    )
    (d / "config.yaml").write_text(
        "model_kind: transcoder_set\nfeature_input_hook: ln2.hook_normalized\n"
        "feature_output_hook: hook_mlp_out\ntranscoders: [p0.npz]\n"
    )
    with pytest.raises(InvalidRequest, match=r"p0\.npz: tensor W_dec has shape \(128, 32\), expected \(32, 128\)"):
        load_transcoders(d)  # W_enc not transposed: (F, d) read as (d, F)


def test_attribute_cli_by_repo_ids_offline(hub, tmp_path):
    """`circuit-serve attribute --model ORG/NAME --transcoders ORG/NAME` with HF_HOME + HF_HUB_OFFLINE=1."""
    env = {
        **os.environ,
        "HF_HOME": str(hub["home"]),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "server"), str(ROOT / "client"), str(ROOT)]),
    }
    env.pop("HF_HUB_CACHE", None)
    out = tmp_path / "g.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "circuit_serve.cli",
            "attribute",
            "--model",
            "test-org/llama-model",
            "--transcoders",
            "test-org/llama-plt",
            "--prompt",
            PROMPT,
            "--out",
            str(out),
            "--npz",
            str(tmp_path / "g.npz"),
            "--no-progress",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    A, R = (
        np.load(tmp_path / "g.npz")["adjacency_matrix"],
        np.load(FIXTURES / "ref" / "llama_plt.npz")["adjacency_matrix"],
    )
    assert A.shape == R.shape and np.abs(A - R).max() <= 1e-4 * np.abs(R).max()
    assert json.loads(out.read_text())["metadata"]["prompt_tokens"]
