"""Attribution graphs of the demo model recover the circuit planted in it (issue 6's check).

On held-out fact prompts the model answers correctly, the engine's pruned graph must route the
answer logit's strongest path through a fact-selective feature fed by the entity's embedding, and
removing those features must break the answer far more often than removing random ones.
"""

from __future__ import annotations

import json

import pytest
import torch

from circuit_serve.demo.install import ASSETS

MANIFEST = ASSETS / "manifest.json"
pytestmark = [
    pytest.mark.skipif(not MANIFEST.exists(), reason="demo assets not committed yet"),
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads(MANIFEST.read_text())


@pytest.fixture(scope="module")
def result(manifest):
    from circuit_serve.demo.circuit import measure_circuit

    torch.set_num_threads(1)
    return measure_circuit(ASSETS / "model", ASSETS / "transcoders", seed=manifest["seed"])


def test_circuit_recovery_and_ablation_rates(result):
    rates = result.rates()
    assert result.n_prompts >= 100
    assert rates["circuit_recovery_rate"] >= 0.8
    assert rates["ablation_dependence_rate"] >= 0.7
    assert rates["ablation_dependence_rate"] >= rates["ablation_control_rate"] + 0.5


def test_manifest_rates_come_from_the_same_computation(result, manifest):
    for key, value in result.rates().items():
        assert manifest[key] == pytest.approx(value, abs=0.02), key


def test_demo_feature_activations_match_the_engine(manifest):
    """The selectivity and ablation code encodes exactly as the engine does."""
    from circuit_serve.demo.circuit import final_activations
    from circuit_serve.demo.data import World
    from circuit_serve.demo.transcoders import load_transcoders
    from circuit_serve.tracing import ReplacementModel

    rm = ReplacementModel.from_pretrained(ASSETS / "model", ASSETS / "transcoders", dtype=torch.float32, device="cpu")
    prompt = World(manifest["seed"]).prompts("heldout_sentence")[0]
    ids = rm.tokenize(prompt.text)
    ours = final_activations(rm.model, load_transcoders(ASSETS / "transcoders"), [ids])[0]  # (L, F)
    fa = rm.feature_activations(ids)
    last = fa.indices[:, 1] == len(ids) - 1
    theirs = torch.zeros_like(ours)
    theirs[fa.indices[last, 0], fa.indices[last, 2]] = fa.values[last]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
