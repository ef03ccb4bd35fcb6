"""Random per-layer transcoders for any Llama-like model directory, in circuit-tracer's format.

    write_random_transcoders(model_dir, out_dir, d_transcoder=1024, seed=0)

JumpReLU features with thresholds set so that about `target_l0` features fire per token on
typical inputs (unit-norm encoder rows; thresholds from the expected pre-activation scale).
Deterministic for a given seed. Nothing is downloaded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def write_random_transcoders(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    d_transcoder: int = 1024,
    target_l0: int = 32,
    threshold: float | None = None,
    seed: int = 0,
) -> Path:
    """`threshold` (when given) replaces the estimate from `target_l0`: models whose residual
    stream is larger than the estimate assumes need it to fire as rarely as asked."""
    from statistics import NormalDist

    import torch
    from safetensors.torch import save_file

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    d, n_layers = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    # A unit-norm encoder row against an input of norm ~ sqrt(d) * s gives a pre-activation
    # ~ N(0, s^2); the threshold is the (1 - target_l0 / d_tc) quantile of that.
    z = NormalDist().inv_cdf(1 - min(target_l0 / d_transcoder, 0.5))
    for layer in range(n_layers):
        W_enc = torch.randn(d_transcoder, d, generator=g)
        W_enc /= W_enc.norm(dim=1, keepdim=True)
        W_dec = torch.randn(d_transcoder, d, generator=g) * (0.5 / math.sqrt(d))
        tensors = {
            "W_enc": W_enc.contiguous(),
            "W_dec": W_dec.contiguous(),
            "b_enc": torch.zeros(d_transcoder),
            "b_dec": torch.zeros(d),
            "activation_function.threshold": torch.full((d_transcoder,), z * 0.6 if threshold is None else threshold),
        }
        save_file(tensors, str(out / f"layer_{layer}.safetensors"))
    (out / "config.yaml").write_text(
        "model_kind: transcoder_set\n"
        "feature_input_hook: hook_resid_mid\n"
        "feature_output_hook: mlp.hook_out\n"
        f"scan: random-jumprelu-s{seed}\n"
    )
    return out
