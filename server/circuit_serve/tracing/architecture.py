"""Where the residual stream's pieces live in Hugging Face's Llama, Gemma-2 and Qwen3 modules.

One decoder layer, in the notation of the tracing package (x = residual stream, (P, d)):

    Llama / Qwen3:  x_mid = x + attn(norm1(x));           x' = x_mid + mlp(norm2(x_mid))
    Gemma-2:        x_mid = x + norm_pa(attn(norm1(x)));   x' = x_mid + norm_pf(mlp(norm2(x_mid)))

An RMSNorm is `x * r(x) * w` with `r(x) = 1 / sqrt(mean(x^2) + eps)` and `w = weight` (Llama,
Qwen3) or `1 + weight` (Gemma-2). The final norm feeds `lm_head`; Gemma-2 soft-caps the logits.
This module only names modules and reads their weights; it copies nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from circuit_serve.domain.errors import InvalidRequest

SUPPORTED = ("llama", "gemma2", "qwen3")


@dataclass
class LayerParts:
    attn: nn.Module  # has v_proj, o_proj
    norm1: nn.Module  # before attention
    norm2: nn.Module  # before the MLP (its input is x_mid)
    mlp: nn.Module
    norm_pa: nn.Module | None  # Gemma-2 post-attention norm
    norm_pf: nn.Module | None  # Gemma-2 post-feedforward norm


@dataclass
class Architecture:
    model_type: str
    layers: list[LayerParts]
    final_norm: nn.Module
    embed: nn.Module
    lm_head: nn.Module
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_model: int
    final_softcap: float | None
    max_positions: int
    rotary: nn.Module  # the model's rotary embedding: rotary(x, position_ids) -> (cos, sin)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def norm_weight(self, norm: nn.Module) -> torch.Tensor:
        """Effective elementwise weight w of an RMSNorm, (d,), in float32."""
        w = norm.weight.float()
        return 1.0 + w if self.model_type == "gemma2" else w

    @staticmethod
    def norm_eps(norm: nn.Module) -> float:
        for name in ("variance_epsilon", "eps"):
            if hasattr(norm, name):
                return float(getattr(norm, name))
        raise TypeError(f"cannot find the epsilon of {type(norm).__name__}")

    def norm_scale(self, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """r(x) = 1/sqrt(mean(x^2)+eps) in float32, (..., 1): the denominator we freeze."""
        x = x.float()
        return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.norm_eps(norm))


def describe(model: nn.Module) -> Architecture:
    """Map a loaded HF causal LM onto `Architecture`; InvalidRequest for unsupported models."""
    cfg = model.config
    mt = getattr(cfg, "model_type", None)
    if mt not in SUPPORTED:
        raise InvalidRequest(
            f"model_type {mt!r} is not supported for tracing; supported: {', '.join(SUPPORTED)}", field="model"
        )
    inner = model.model
    parts = []
    for layer in inner.layers:
        gemma = mt == "gemma2"
        parts.append(
            LayerParts(
                attn=layer.self_attn,
                norm1=layer.input_layernorm,
                norm2=layer.pre_feedforward_layernorm if gemma else layer.post_attention_layernorm,
                mlp=layer.mlp,
                norm_pa=layer.post_attention_layernorm if gemma else None,
                norm_pf=layer.post_feedforward_layernorm if gemma else None,
            )
        )
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return Architecture(
        model_type=mt,
        layers=parts,
        final_norm=inner.norm,
        embed=inner.embed_tokens,
        lm_head=model.lm_head,
        n_heads=cfg.num_attention_heads,
        n_kv_heads=getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
        head_dim=head_dim,
        d_model=cfg.hidden_size,
        final_softcap=getattr(cfg, "final_logit_softcapping", None),
        max_positions=int(getattr(cfg, "max_position_embeddings", 0) or 0),
        rotary=inner.rotary_emb,
    )
