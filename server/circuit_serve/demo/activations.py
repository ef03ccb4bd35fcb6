"""MLP inputs and outputs of the demo model at the transcoder hooks, for training and evaluation.

For a Llama layer the transcoder reads `hook_resid_mid` (the residual stream after attention, i.e. the
input of `post_attention_layernorm`) and predicts `mlp.hook_out` (what the MLP adds to the residual
stream). Position 0 (BOS) is left out everywhere: the attribution engine zeroes features there.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

INPUT_HOOK = "hook_resid_mid"
OUTPUT_HOOK = "mlp.hook_out"


@contextmanager
def capture_mlp_io(model):
    """Yield (inputs, outputs): per-layer lists that fill with `(B, T, d)` tensors on each forward."""
    n = model.config.num_hidden_layers
    inputs: list[list[torch.Tensor]] = [[] for _ in range(n)]
    outputs: list[list[torch.Tensor]] = [[] for _ in range(n)]
    handles = []
    for li, layer in enumerate(model.model.layers):
        handles.append(
            layer.post_attention_layernorm.register_forward_hook(
                lambda m, args, out, li=li: inputs[li].append(args[0].detach())
            )
        )
        handles.append(layer.mlp.register_forward_hook(lambda m, args, out, li=li: outputs[li].append(out.detach())))
    try:
        yield inputs, outputs
    finally:
        for h in handles:
            h.remove()


@dataclass
class MlpData:
    """Per-layer MLP input `x[l]` and output `y[l]`, each `(N, d)`, and `answer` `(N,)` bool."""

    x: list[torch.Tensor]
    y: list[torch.Tensor]
    answer: torch.Tensor  # positions whose next token is a fact's attribute


@torch.no_grad()
def collect(model, rows: torch.Tensor, answer_next: torch.Tensor, chunk: int = 256) -> MlpData:
    """Run `rows` `(B, T)` through the model; keep positions 1.. of each row.

    `answer_next` `(B, T)` marks positions whose *next* token is an attribute (answer positions).
    """
    with capture_mlp_io(model) as (inputs, outputs):
        for start in range(0, rows.shape[0], chunk):
            model(input_ids=rows[start : start + chunk])
        xs = [torch.cat(v)[:, 1:].reshape(-1, v[0].shape[-1]) for v in inputs]
        ys = [torch.cat(v)[:, 1:].reshape(-1, v[0].shape[-1]) for v in outputs]
    return MlpData(xs, ys, answer_next[:, 1:].reshape(-1))


@torch.no_grad()
def mlp_inputs(model, rows: list[list[int]]) -> list[torch.Tensor]:
    """Per layer, MLP inputs `(sum of lengths - 1 each, d)` of `rows` (position 0 dropped)."""
    by_len: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_len.setdefault(len(r), []).append(i)
    per_row: list[list[torch.Tensor]] = [[None] * len(rows) for _ in range(model.config.num_hidden_layers)]
    with capture_mlp_io(model) as (inputs, _):
        for idx in by_len.values():
            for v in inputs:
                v.clear()
            model(input_ids=torch.tensor([rows[i] for i in idx]))
            for li, v in enumerate(inputs):
                for j, i in enumerate(idx):
                    per_row[li][i] = v[0][j, 1:]
    return [torch.cat(r) for r in per_row]
