"""Transcoder training on toy data: both activations, the on-disk round trip, and the engine's loader."""

from __future__ import annotations

import pytest
import torch

from circuit_serve.demo.activations import MlpData
from circuit_serve.demo.transcoders import (
    TranscoderSettings,
    fvu_and_l0,
    load_transcoders,
    save_transcoders,
    train_transcoders,
)


def toy_data(n: int = 2048, d: int = 32, seed: int = 0) -> MlpData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.relu(x @ torch.randn(d, d, generator=g)) / d**0.5  # a small "MLP"
    return MlpData([x], [y], torch.rand(n, generator=g) < 0.1)


@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_train_save_load(tmp_path, activation):
    torch.set_num_threads(1)
    data = toy_data()
    s = TranscoderSettings(d_transcoder=64, k=4, steps=150, batch=128, activation=activation)
    (tc,) = train_transcoders(data, s, seed=0)
    fvu, l0 = fvu_and_l0(tc, data.x[0], data.y[0])
    assert fvu < 0.9 and 0 < l0 <= (4 if activation == "topk" else 16)
    save_transcoders([tc], tmp_path, scan="toy")
    (back,) = load_transcoders(tmp_path)
    torch.testing.assert_close(back.encode(data.x[0]), tc.encode(data.x[0]))

    from circuit_serve.tracing import load_transcoders as engine_load

    engine = engine_load(tmp_path, dtype=torch.float32, device="cpu")
    torch.testing.assert_close(engine.encode(0, data.x[0]), tc.encode(data.x[0]), atol=1e-5, rtol=1e-5)


def test_same_seed_same_weights():
    data = toy_data()
    s = TranscoderSettings(d_transcoder=64, k=4, steps=50, batch=128)
    a, b = train_transcoders(data, s, seed=1)[0], train_transcoders(data, s, seed=1)[0]
    assert torch.equal(a.W_enc, b.W_enc) and torch.equal(a.W_dec, b.W_dec)
