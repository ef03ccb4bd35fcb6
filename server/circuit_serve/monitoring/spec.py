"""What vLLM's worker needs to compute watched features: the monitor spec.

The server writes it once at start-up (a directory with `spec.json` and `spec.safetensors`)
and hands its path to vLLM through `hf_overrides` (`circuit_monitor`), so every process that
builds the model (the engine core runs in its own process) reads the same thing:

- `spec.json`: the column plan (see `columns`), the transcoder read point
  (`hook_resid_mid` | `ln2.hook_normalized` | `mlp.hook_in`), the activation (`relu` |
  `jumprelu` | `topk`) and `top_k`, the side channel's address, the transcoder output hook
  (`write_point`: where steering writes);
- `spec.safetensors`: the server watchlist's encoder rows `server_rows (n, d)`, their biases
  `server_bias (n,)`, thresholds `server_threshold (n,)` and feature indices `server_index (n,)`;
  for TopK sets also every layer's whole encoder `enc.{l} (d_tc, d)` and bias `enc_bias.{l}`
  (a TopK activation needs the layer's full pre-activation row).

Rows are the transcoder's own (unfolded); the worker folds a norm gain into them where the
read point needs it (see `taps`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from circuit_serve.domain.features import FeatureRef
from circuit_serve.monitoring.columns import ColumnPlan

SPEC_KEY = "circuit_monitor"  # the hf_overrides key vLLM's worker reads the spec path from


@dataclass
class MonitorSpec:
    plan: ColumnPlan
    read_point: str
    activation: str
    top_k: int | None
    d_model: int
    d_transcoder: int
    endpoint: str  # zmq address the worker pushes values to
    server_rows: torch.Tensor  # (n_server, d) float32
    server_bias: torch.Tensor  # (n_server,)
    server_threshold: torch.Tensor  # (n_server,); 0 for ReLU
    full_encoders: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # TopK: per layer (W, b)
    write_point: str = "hook_mlp_out"  # the transcoder's feature_output_hook (where steering adds its deltas)

    @classmethod
    def from_transcoders(
        cls, transcoders, server: Sequence[FeatureRef], *, request_slots: int, endpoint: str
    ) -> MonitorSpec:
        """The spec of a loaded `tracing.TranscoderSet` (PLT or CLT: both encode per layer)."""
        plan = ColumnPlan(transcoders.n_layers, tuple(server), request_slots)
        rows, bias, thr = encoder_rows(transcoders, server)
        full = []
        if transcoders.activation == "topk":
            full = [
                (transcoders.W_enc[layer].detach().float().cpu(), transcoders.b_enc[layer].detach().float().cpu())
                for layer in range(transcoders.n_layers)
            ]
        return cls(
            plan=plan,
            read_point=transcoders.feature_input_hook,
            activation=transcoders.activation,
            top_k=transcoders.top_k,
            d_model=transcoders.d_model,
            d_transcoder=transcoders.d_transcoder,
            endpoint=endpoint,
            server_rows=rows,
            server_bias=bias,
            server_threshold=thr,
            full_encoders=full,
            write_point=transcoders.feature_output_hook,
        )

    def save(self, directory: Path) -> Path:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        tensors = {
            "server_rows": self.server_rows.contiguous(),
            "server_bias": self.server_bias.contiguous(),
            "server_threshold": self.server_threshold.contiguous(),
        }
        for layer, (w, b) in enumerate(self.full_encoders):
            tensors[f"enc.{layer}"] = w.contiguous()
            tensors[f"enc_bias.{layer}"] = b.contiguous()
        save_file(tensors, str(directory / "spec.safetensors"))
        meta = {
            "plan": self.plan.to_json(),
            "read_point": self.read_point,
            "activation": self.activation,
            "top_k": self.top_k,
            "d_model": self.d_model,
            "d_transcoder": self.d_transcoder,
            "endpoint": self.endpoint,
            "write_point": self.write_point,
        }
        (directory / "spec.json").write_text(json.dumps(meta))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> MonitorSpec:
        from safetensors.torch import load_file

        directory = Path(directory)
        meta = json.loads((directory / "spec.json").read_text())
        t = load_file(str(directory / "spec.safetensors"))
        plan = ColumnPlan.from_json(meta["plan"])
        full = [(t[f"enc.{layer}"], t[f"enc_bias.{layer}"]) for layer in range(plan.n_layers) if f"enc.{layer}" in t]
        return cls(
            plan=plan,
            read_point=meta["read_point"],
            activation=meta["activation"],
            top_k=meta["top_k"],
            d_model=meta["d_model"],
            d_transcoder=meta["d_transcoder"],
            endpoint=meta["endpoint"],
            server_rows=t["server_rows"],
            server_bias=t["server_bias"],
            server_threshold=t["server_threshold"],
            full_encoders=full,
            write_point=meta.get("write_point", "hook_mlp_out"),
        )


def encoder_rows(transcoders, features: Sequence[FeatureRef]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(n, d)` encoder rows, `(n,)` biases and `(n,)` thresholds (0 without JumpReLU), float32."""
    d = transcoders.d_model
    if not features:
        return torch.zeros(0, d), torch.zeros(0), torch.zeros(0)
    rows = torch.stack([transcoders.W_enc[f.layer][f.index].detach().float().cpu() for f in features])
    bias = torch.stack([transcoders.b_enc[f.layer][f.index].detach().float().cpu() for f in features])
    if transcoders.activation == "jumprelu" and transcoders.threshold is not None:
        thr = torch.stack([transcoders.threshold[f.layer][f.index].detach().float().cpu() for f in features])
    else:
        thr = torch.zeros(len(features))
    return rows, bias, thr
