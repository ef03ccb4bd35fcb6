"""`build_demo_model` installs the trained demo model by default; random weights stay available."""

from __future__ import annotations

import json

import pytest

from circuit_serve.demo import build_demo_model
from circuit_serve.demo.install import ASSETS, sha256, trained_assets_available

pytestmark = pytest.mark.skipif(not trained_assets_available(), reason="demo assets not committed yet")


def test_default_installs_the_trained_model_transcoders_and_labels(tmp_path):
    out = build_demo_model(tmp_path / "demo")
    manifest = json.loads((ASSETS / "manifest.json").read_text())
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert sha256(out / name) == manifest["files"][f"model/{name}"]
    assert sha256(out / "labels.json") == manifest["files"]["labels.json"]
    assert (out / "transcoders" / "config.yaml").is_file()
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_random_weights_on_request(tmp_path):
    out = build_demo_model(tmp_path / "random", random_weights=True)
    assert not (out / "transcoders").exists()
    assert (out / "model.safetensors").is_file()
